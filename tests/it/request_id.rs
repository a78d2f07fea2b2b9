//! `X-Request-ID` on every response moat sends — proxied answers, its own errors, `respond`
//! and `redirect` routes, preflights — with or without the `request_id` plugin; the same id
//! goes upstream, into error bodies and the access log. The plugin only decides whether a
//! client's id is kept (and adds `traceparent`). WebSocket answers: `websocket.rs`.

use crate::harness::{request, Behavior, Moat, Response, Upstream};

/// A ULID as moat makes them: 26 Crockford base32 characters.
fn is_ulid(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))
}

/// The echoed id, asserting there is exactly one and it is a fresh ULID.
fn echoed(r: &Response) -> String {
    let all: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        all.len(),
        1,
        "one X-Request-ID on {} {:?}",
        r.status,
        r.headers
    );
    assert!(is_ulid(all[0]), "{all:?}");
    all[0].to_string()
}

/// No `request_id` plugin anywhere; every kind of answer moat gives.
fn config(up: &Upstream) -> String {
    format!(
        "access_log: {{ path: stdout }}\n\
         upstreams:\n  app: {{ targets: [\"{up}\"] }}\n  down: {{ targets: [\"127.0.0.1:1\"], retries: 0 }}\n\
         consumers:\n  - id: c\n    api_keys: [{{ sha256: {hash} }}]\n\
         routes:\n\
         \x20 - name: app\n    match: {{ path_prefix: /app }}\n    upstream: app\n    max_body: 8\n\
         \x20 - name: down\n    match: {{ path_prefix: /down }}\n    upstream: down\n\
         \x20 - name: hello\n    match: {{ path: /hello, methods: [GET] }}\n    respond: {{ body: \"id {{{{request_id}}}}\" }}\n\
         \x20 - name: old\n    match: {{ path_prefix: /old }}\n    redirect: {{ to: /new, status: 301 }}\n\
         \x20 - name: private\n    match: {{ path_prefix: /private }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [api_key] }}\n\
         \x20 - name: limited\n    match: {{ path_prefix: /limited }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 1/m }}\n\
         \x20 - name: cors\n    match: {{ path_prefix: /cors }}\n    upstream: app\n    plugins:\n      - cors: {{ origins: [\"https://a.example\"], methods: [GET] }}\n",
        up = up.address(),
        // sha256("key-1")
        hash = "be2974546978e3739e6d6da85c4be9f334ce32df2b9fd4b6ff1b55c0d57e9d44",
    )
}

#[test]
fn every_response_carries_the_id_without_the_plugin() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));

    // Proxied: a generated id (the client's is not trusted without the plugin), the same
    // one upstream; the upstream's own X-Request-ID is replaced.
    up.set(Behavior::default());
    let r = request(
        m.port,
        "GET",
        "/app/x",
        &[("X-Request-ID", "client-1")],
        b"",
    );
    assert_eq!(r.status, 200);
    let id = echoed(&r);
    assert_eq!(up.last().all("x-request-id"), [id.as_str()]);

    // moat's own answers, each with the id its body or log names.
    let cases: [(&str, &str, &[u8], u16); 5] = [
        ("GET", "/nowhere", b"", 404),
        ("DELETE", "/hello", b"", 405),
        ("POST", "/app/x", b"123456789", 413),
        ("GET", "/private/x", b"", 401),
        ("GET", "/down/x", b"", 502),
    ];
    for (method, path, body, status) in cases {
        let r = request(m.port, method, path, &[], body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let id = echoed(&r);
        assert_eq!(
            r.json()["error"]["request_id"],
            id.as_str(),
            "{method} {path}"
        );
    }
    let many: Vec<(String, String)> = (0..110).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = request(m.port, "GET", "/app/x", &many, b"");
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["request_id"], echoed(&r).as_str());

    // A limited route: the 429 and the answer before it.
    let first = request(m.port, "GET", "/limited", &[], b"");
    assert_eq!(first.status, 200);
    assert_eq!(
        up.last().header("x-request-id"),
        Some(echoed(&first).as_str())
    );
    let refused = request(m.port, "GET", "/limited", &[], b"");
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.json()["error"]["request_id"],
        echoed(&refused).as_str()
    );

    // respond (the template sees the id too) and redirect routes.
    let r = request(m.port, "GET", "/hello", &[], b"");
    assert_eq!(r.text(), format!("id {}", echoed(&r)));
    let r = request(m.port, "GET", "/old/a", &[], b"");
    assert_eq!(r.status, 301);
    echoed(&r);

    // A CORS preflight, answered before any other plugin.
    let r = request(
        m.port,
        "OPTIONS",
        "/cors",
        &[
            ("Origin", "https://a.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    echoed(&r);

    // The access log names the id each response carried.
    let lines = m.access_lines(1);
    let logged: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    assert!(logged.contains(&id.as_str()), "{logged:?}");
    assert!(logged.iter().all(|l| is_ulid(l)), "{logged:?}");
}

#[test]
fn the_plugin_decides_whether_the_clients_id_is_kept() {
    let up = Upstream::start("app");
    let body = |trust: bool| {
        format!(
            "global_plugins:\n  - request_id: {{ trust_incoming: {trust} }}\n\
             upstreams:\n  app: {{ targets: [\"{}\"] }}\n\
             routes:\n  - name: app\n    match: {{ path_prefix: /app }}\n    upstream: app\n",
            up.address()
        )
    };
    let m = Moat::start(&body(true));
    let r = request(
        m.port,
        "GET",
        "/app",
        &[("X-Request-ID", "trace-42.a_b")],
        b"",
    );
    assert_eq!(r.header("x-request-id"), Some("trace-42.a_b"));
    let got = up.last();
    assert_eq!(got.all("x-request-id"), ["trace-42.a_b"]);
    assert!(
        got.header("traceparent").is_some(),
        "the plugin adds traceparent"
    );
    // Not well-formed: replaced.
    let r = request(m.port, "GET", "/app", &[("X-Request-ID", "a b")], b"");
    let id = echoed(&r);
    assert_eq!(up.last().all("x-request-id"), [id.as_str()]);
    // An unrouted request's 404 keeps it too.
    let r = request(m.port, "GET", "/nowhere", &[("X-Request-ID", "t-404")], b"");
    assert_eq!(r.header("x-request-id"), Some("t-404"));
    assert_eq!(r.json()["error"]["request_id"], "t-404");
    drop(m);

    let m = Moat::start(&body(false));
    let r = request(m.port, "GET", "/app", &[("X-Request-ID", "trace-42")], b"");
    let id = echoed(&r);
    assert_eq!(up.last().all("x-request-id"), [id.as_str()]);
}

/// On a route whose response phase has plugins (the head is moved out and edited), the id
/// is set before them: a `headers` plugin sees it and may still remove it.
#[test]
fn response_plugins_run_after_the_id_is_set() {
    let up = Upstream::start("app");
    let m = Moat::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\n\
         routes:\n\
         \x20 - name: a\n    match: {{ path_prefix: /a }}\n    upstream: app\n    plugins:\n      - headers: {{ response: {{ set: {{ x-served-by: moat }} }} }}\n\
         \x20 - name: b\n    match: {{ path_prefix: /b }}\n    upstream: app\n    plugins:\n      - headers: {{ response: {{ remove: [x-request-id] }} }}\n",
        up.address()
    ));
    let r = request(m.port, "GET", "/a", &[], b"");
    assert_eq!(r.header("x-served-by"), Some("moat"));
    assert_eq!(up.last().header("x-request-id"), Some(echoed(&r).as_str()));
    let r = request(m.port, "GET", "/b", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("x-request-id").is_none(), "{:?}", r.headers);
}
