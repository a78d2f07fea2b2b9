//! `X-Request-ID` on every response moat sends — proxied answers (the upstream's own id
//! replaced), its own errors, `respond` and `redirect` routes, preflights, CONNECT's 405,
//! over HTTP/1.1 and HTTP/2 — with or without the `request_id` plugin; the same id goes
//! upstream, into error bodies and the access log. The plugin only decides whose id is kept
//! (`trust_incoming`: false, true = trusted proxies only, any) and adds `traceparent`; set
//! globally, its decision comes before any answer. The one exception, Pingora's own `400`
//! for a head it cannot parse, is asserted as it is. WebSocket answers: `websocket.rs`.

use crate::harness::{request, send_raw, Behavior, Moat, Response, Upstream};
use std::time::Duration;

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

/// A CORS preflight to `/cors` from `https://a.example`, with `extra` header.
fn preflight(port: u16, extra: Option<(&str, &str)>) -> Response {
    let mut headers = vec![
        ("Origin", "https://a.example"),
        ("Access-Control-Request-Method", "GET"),
    ];
    headers.extend(extra);
    request(port, "OPTIONS", "/cors", &headers, b"")
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
    up.set(Behavior {
        headers: vec![("X-Request-ID".into(), "from-upstream".into())],
        ..Behavior::default()
    });
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
    up.set(Behavior::default());

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
    let r = preflight(m.port, None);
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

/// `global_plugins: [request_id: {trust_incoming: TRUST}]` in front of `up`, with a CORS
/// route and a small body limit; `trusted` lists `server.trusted_proxies`.
fn with_plugin(up: &Upstream, trust: &str, trusted: &[&str]) -> Moat {
    Moat::start_with(
        &format!(
            "global_plugins:\n  - request_id: {{ trust_incoming: {trust} }}\n\
             upstreams:\n  app: {{ targets: [\"{}\"] }}\n\
             routes:\n  - name: app\n    match: {{ path_prefix: /app }}\n    upstream: app\n\
             \x20 - name: cors\n    match: {{ path_prefix: /cors }}\n    upstream: app\n    plugins:\n      - cors: {{ origins: [\"https://a.example\"], methods: [GET] }}\n",
            up.address()
        ),
        trusted,
        &[],
    )
}

/// The id the client sent and the proxy kept, asserting it reached the upstream.
fn kept(m: &Moat, up: &Upstream, id: &str) -> bool {
    let r = request(m.port, "GET", "/app", &[("X-Request-ID", id)], b"");
    assert_eq!(r.status, 200);
    let echoed = r.header("x-request-id").unwrap_or_default().to_string();
    assert_eq!(up.last().all("x-request-id"), [echoed.as_str()]);
    if echoed == id {
        return true;
    }
    assert!(is_ulid(&echoed), "{echoed}");
    false
}

#[test]
fn trust_incoming_true_keeps_the_id_of_trusted_proxies_only() {
    let up = Upstream::start("app");
    // No trusted proxy: any client's id is replaced (an Internet client does not choose the
    // id upstreams log and deduplicate by).
    let m = with_plugin(&up, "true", &[]);
    assert!(!kept(&m, &up, "trace-42.a_b"));
    assert!(
        up.last().header("traceparent").is_some(),
        "the plugin adds traceparent"
    );
    drop(m);
    // The peer is a trusted proxy: its id is kept, when well-formed.
    let m = with_plugin(&up, "true", &["127.0.0.1/32"]);
    assert!(kept(&m, &up, "trace-42.a_b"));
    assert!(!kept(&m, &up, "a b"));
    let r = request(m.port, "GET", "/nowhere", &[("X-Request-ID", "t-404")], b"");
    assert_eq!(r.header("x-request-id"), Some("t-404"));
    assert_eq!(r.json()["error"]["request_id"], "t-404");
}

#[test]
fn trust_incoming_any_keeps_every_clients_id_and_false_none() {
    let up = Upstream::start("app");
    let m = with_plugin(&up, "any", &[]);
    assert!(kept(&m, &up, "trace-42"));
    assert!(!kept(&m, &up, "a b"));
    // The effective config shows it as written.
    let cfg = m.admin_get("/config").json();
    assert_eq!(
        cfg["global_plugins"][0]["request_id"]["trust_incoming"],
        "any"
    );
    drop(m);
    let m = with_plugin(&up, "false", &["127.0.0.1/32"]);
    assert!(!kept(&m, &up, "trace-42"));
}

/// The id a trusted proxy sent is decided before moat answers anything, so the answers
/// given before the plugins run carry it too.
#[test]
fn answers_before_the_plugins_carry_the_kept_id() {
    let up = Upstream::start("app");
    let m = with_plugin(&up, "true", &["127.0.0.1/32"]);
    let id = ("X-Request-ID", "proxy-id-1");
    // 431: too many headers.
    let many: Vec<(String, String)> = (0..110).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let mut headers: Vec<(&str, &str)> =
        many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.push(id);
    let r = request(m.port, "GET", "/app", &headers, b"");
    assert_eq!(r.status, 431);
    assert_eq!(r.header("x-request-id"), Some("proxy-id-1"));
    assert_eq!(r.json()["error"]["request_id"], "proxy-id-1");
    // 414: a request target over 8 KiB.
    let long = format!("/app/{}", "a".repeat(9000));
    let r = request(m.port, "GET", &long, &[id], b"");
    assert_eq!(r.status, 414);
    assert_eq!(r.header("x-request-id"), Some("proxy-id-1"));
    // 400: a malformed chunked body, refused before anything else.
    let out = send_raw(
        m.port,
        b"POST /app HTTP/1.1\r\nHost: a\r\nX-Request-ID: proxy-id-1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    let r = &crate::harness::client::parse_all(&out)[0];
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("proxy-id-1"));
    // A CORS preflight, answered before any other plugin.
    let r = preflight(m.port, Some(id));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-request-id"), Some("proxy-id-1"));
}

/// CONNECT: moat tunnels nothing. The contract's 405 (JSON body, the id, a log line), and
/// the connection closed, so bytes sent after the head (a tunnel's) are never read as a
/// request.
#[test]
fn connect_gets_the_contracts_405_and_the_connection_closes() {
    let up = Upstream::start("app");
    let m = Moat::start(&format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\n\
         routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address()
    ));
    let started = std::time::Instant::now();
    let out = send_raw(
        m.port,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGET /app HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the connection was not closed"
    );
    let answers = crate::harness::client::parse_all(&out);
    assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(&out));
    let r = &answers[0];
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(r.json()["error"]["request_id"], echoed(r).as_str());
    assert!(r.header("server").is_none(), "{:?}", r.headers);
    assert!(up.traffic().is_empty(), "nothing reached the upstream");
    let lines = m.access_lines(1);
    assert_eq!(lines[0]["method"], "CONNECT");
    assert_eq!(lines[0]["status"], 405);
    assert_eq!(lines[0]["request_id"], r.json()["error"]["request_id"]);
}

/// The one answer still not moat's own: a request head Pingora cannot parse gets
/// Pingora's bare `400` (no JSON body, no `X-Request-ID`, no access-log line), sent before
/// any hook of moat's runs (README, "Request ids"). Asserted as it is, so that a change
/// (a Pingora upgrade, or moat answering it) is noticed and the README updated.
#[test]
fn a_head_pingora_cannot_parse_gets_pingoras_bare_400() {
    let m = Moat::start(
        "access_log: { path: stdout }\nroutes:\n  - name: r\n    respond: { body: ok }\n",
    );
    let out = send_raw(
        m.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
    );
    let answers = crate::harness::client::parse_all(&out);
    assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(&out));
    let r = &answers[0];
    assert_eq!(r.status, 400);
    assert_eq!(r.header("server"), Some("Pingora"));
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(r.header("x-request-id").is_none(), "{:?}", r.headers);
    // A good request after it is logged; the bad one never was.
    assert_eq!(request(m.port, "GET", "/", &[], b"").status, 200);
    let lines = m.access_lines(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
}

/// HTTP/2 (h2c with prior knowledge): the id on proxied answers and moat's own.
#[test]
fn http2_responses_carry_the_id() {
    let up = Upstream::start("app");
    let dir = crate::harness::moat::temp_dir("h2id");
    let (port, admin) = (crate::harness::free_port(), crate::harness::free_port());
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\n    http2: true\nadmin:\n  address: 127.0.0.1:{admin}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: app\n    match: {{ path_prefix: /app }}\n    upstream: app\n",
        up.address(),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);
    let get = |path: &str| {
        let req = http::Request::builder()
            .uri(format!("http://h2.example.com{path}"))
            .body(())
            .unwrap();
        (req, &b""[..])
    };
    let got = crate::http2::h2c_exchange_heads(m.port, vec![get("/app/x"), get("/nowhere")]);
    let id_of = |h: &http::HeaderMap| {
        let all: Vec<&str> = h
            .get_all("x-request-id")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(all.len(), 1, "{h:?}");
        assert!(is_ulid(all[0]), "{all:?}");
        all[0].to_string()
    };
    let (status, heads, _) = &got[0];
    assert_eq!(*status, 200);
    assert_eq!(up.last().all("x-request-id"), [id_of(heads).as_str()]);
    let (status, heads, body) = &got[1];
    assert_eq!(*status, 404);
    let body: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(body["error"]["request_id"], id_of(heads).as_str());
    drop(m);
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
