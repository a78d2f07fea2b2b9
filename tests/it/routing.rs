//! Routing through the real binary: precedence, rewrite, respond, redirect, 404/405.

use crate::harness::{request, Moat, Upstream};

fn config(up: &Upstream) -> String {
    format!(
        r#"upstreams:
  app: {{ targets: ["{a}"] }}
routes:
  - name: regex
    match: {{ path_regex: "^/api/.*$" }}
    upstream: app
  - name: api
    match: {{ path_prefix: /api }}
    upstream: app
  - name: users
    match: {{ path_prefix: /api/users, methods: [GET, POST] }}
    upstream: app
    rewrite: {{ strip_prefix: /api, add_prefix: /v2 }}
  - name: me
    match: {{ path: /api/users/me }}
    upstream: app
  - name: boosted
    match: {{ path_regex: "^/api/boost" }}
    priority: 10
    upstream: app
  - name: tenant
    match: {{ hosts: ["*.tenants.example.com"], path_prefix: / }}
    respond: {{ status: 200, body: "tenant {{{{host}}}}" }}
  - name: exact-tenant
    match: {{ hosts: [vip.tenants.example.com] }}
    respond: {{ status: 200, body: "vip" }}
  - name: versioned
    match: {{ path: /v, headers: {{ x-api-version: "2" }} }}
    respond: {{ status: 200, body: "v2" }}
  - name: old
    match: {{ path_prefix: /old }}
    redirect: {{ to: "https://new.example.com{{{{uri}}}}", status: 308 }}
  - name: teapot
    match: {{ path: /teapot }}
    respond: {{ status: 418, headers: {{ x-kind: "tea-{{{{method}}}}" }}, body: "short and stout" }}
"#,
        a = up.address()
    )
}

#[test]
fn precedence_rewrite_and_actions() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));

    // exact > longest prefix > shorter prefix > regex; explicit priority first.
    let cases = [
        ("/api/users/me", "/api/users/me"),
        ("/api/users/7?x=1", "/v2/users/7?x=1"),
        ("/api/users", "/v2/users"),
        ("/api/usersx", "/api/usersx"),
        ("/api/other", "/api/other"),
        ("/api/boost/x", "/api/boost/x"),
        ("/api/users/../users/9", "/v2/users/9"),
    ];
    for (path, upstream_saw) in cases {
        let r = request(m.port, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(up.last().target, upstream_saw, "{path}");
    }

    // Host routing: exact host beats wildcard; wildcard needs a subdomain.
    let r = request(
        m.port,
        "GET",
        "/x",
        &[("Host", "vip.tenants.example.com")],
        b"",
    );
    assert_eq!(r.text(), "vip");
    let r = request(
        m.port,
        "GET",
        "/x",
        &[("Host", "Acme.Tenants.example.com:8080")],
        b"",
    );
    assert_eq!(r.text(), "tenant acme.tenants.example.com");
    let r = request(m.port, "GET", "/x", &[("Host", "tenants.example.com")], b"");
    assert_eq!(r.status, 404);

    // Header condition.
    assert_eq!(
        request(m.port, "GET", "/v", &[("x-api-version", "2")], b"").text(),
        "v2"
    );
    assert_eq!(
        request(m.port, "GET", "/v", &[("x-api-version", "3")], b"").status,
        404
    );

    // Redirect with the original URI; respond with templated headers.
    let r = request(m.port, "GET", "/old/a?b=1", &[], b"");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://new.example.com/old/a?b=1")
    );
    let r = request(m.port, "POST", "/teapot", &[], b"");
    assert_eq!(
        (r.status, r.header("x-kind"), r.text().as_str()),
        (418, Some("tea-POST"), "short and stout")
    );
}

#[test]
fn not_found_and_method_not_allowed_bodies() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));
    let r = request(m.port, "GET", "/nothing/here", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"]["code"], "NOT_FOUND");
    assert_eq!(j["error"]["request_id"].as_str().map(|s| s.len()), Some(26));
    assert!(j["error"]["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // /api/users allows GET and POST; DELETE falls to /api (any method) — so use a path
    // only the method-restricted route matches via exact precedence: none. Use a fresh
    // moat with a single restricted route instead.
    drop(m);
    let m = Moat::start(
        "routes:\n  - name: only-get\n    match: { path_prefix: /r, methods: [GET, PUT] }\n    respond: { body: ok }\n",
    );
    let r = request(m.port, "DELETE", "/r/1", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
    assert_eq!(r.json()["error"]["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(request(m.port, "HEAD", "/r/1", &[], b"").status, 200);
}

#[test]
fn errors_keep_the_connection_alive() {
    let m =
        Moat::start("routes:\n  - name: a\n    match: { path: /a }\n    respond: { body: ok }\n");
    // Several requests on one connection: errors do not close it.
    let mut c = crate::harness::client::Conn::open(m.port);
    let statuses: Vec<u16> = ["/x", "/a", "/y", "/a"]
        .iter()
        .map(|p| c.get(p).map(|r| r.status).unwrap_or(0))
        .collect();
    assert_eq!(statuses, [404, 200, 404, 200]);
    // A POST with an unread body answered 404 keeps the connection usable too.
    let r = c.exchange(b"POST /nope HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.map(|r| r.status), Some(404));
    assert_eq!(c.get("/a").map(|r| r.status), Some(200));
}
