//! Forwarding hygiene through the real binary: X-Forwarded-* with trusted and untrusted
//! peers, hop-by-hop stripping, forged identity headers, header templates and injection.

use crate::harness::{request, Moat, Upstream};

fn proxy_config(up: &Upstream, plugins: &str) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: app\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n{plugins}",
        up.address()
    )
}

#[test]
fn untrusted_peer_cannot_forge_forwarding_headers() {
    let up = Upstream::start("app");
    // No trusted proxies: the direct peer (127.0.0.1) is the client.
    let m = Moat::start(&proxy_config(&up, "      - request_id: {}\n"));
    let r = request(
        m.port,
        "GET",
        "/x",
        &[
            ("Host", "api.example.com"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example.com"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Consumer-ID", "admin"),
            ("X-Consumer-Tier", "enterprise"),
            ("X-Auth-Method", "jwt"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let got = up.last();
    assert_eq!(got.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(got.all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(got.all("x-forwarded-proto"), ["http"]);
    assert_eq!(got.all("x-forwarded-host"), ["api.example.com"]);
    for h in [
        "forwarded",
        "x-consumer-id",
        "x-consumer-tier",
        "x-auth-method",
    ] {
        assert!(got.header(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(got.header("host"), Some("api.example.com"));
    assert_eq!(got.header("x-request-id").map(|v| v.len()), Some(26));
    assert!(got
        .header("traceparent")
        .is_some_and(|t| t.starts_with("00-")));
}

#[test]
fn trusted_peer_chain_is_believed() {
    let up = Upstream::start("app");
    let m = Moat::start_with(
        &proxy_config(
            &up,
            "      - headers:\n          request:\n            set: { x-client: \"{{client_ip}}\" }\n",
        ),
        &["127.0.0.0/8", "10.0.0.0/8"],
        &[],
    );
    request(
        m.port,
        "GET",
        "/x",
        &[
            ("X-Forwarded-For", "203.0.113.7, 10.1.1.1"),
            ("X-Forwarded-Proto", "https"),
        ],
        b"",
    );
    let got = up.last();
    assert_eq!(
        got.all("x-forwarded-for"),
        ["203.0.113.7, 10.1.1.1, 127.0.0.1"]
    );
    assert_eq!(got.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(got.header("x-client"), Some("203.0.113.7"));
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let up = Upstream::start("app");
    let m = Moat::start(&proxy_config(&up, "      - request_id: {}\n"));
    let r = request(
        m.port,
        "GET",
        "/x",
        &[
            ("Connection", "close, x-secret-hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "something"),
            ("X-Normal", "kept"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    for h in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            got.header(h).is_none(),
            "{h} was forwarded: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header("x-normal"), Some("kept"));
}

#[test]
fn header_templates_and_injection_attempts() {
    let up = Upstream::start("app");
    let plugins = r#"      - request_id: { trust_incoming: any }
      - headers:
          request:
            set: { x-route: "{{route}}", x-rid: "{{request_id}}", x-agent: "ua={{header.user-agent}}", x-path: "{{path}}", x-consumer: "{{consumer.id}}" }
            add: { x-tag: "b" }
            remove: [cookie]
          response:
            set: { cache-control: no-store, x-echo: "{{header.x-echo}}" }
            remove: [x-upstream]
"#;
    let m = Moat::start(&proxy_config(&up, plugins));
    let r = request(
        m.port,
        "GET",
        "/a%0d%0aX-Injected:%20yes",
        &[
            ("User-Agent", "tester"),
            ("X-Request-ID", "trace-42"),
            ("Cookie", "session=secret"),
            ("X-Tag", "a"),
            ("X-Consumer", "forged"),
            ("X-Echo", "hello"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-echo"), Some("hello"));
    assert!(r.header("x-upstream").is_none());
    assert!(r.header("x-injected").is_none());
    let got = up.last();
    assert_eq!(got.header("x-route"), Some("app"));
    assert_eq!(got.header("x-rid"), Some("trace-42"));
    assert_eq!(got.header("x-agent"), Some("ua=tester"));
    assert_eq!(got.header("x-path"), Some("/a%0d%0aX-Injected:%20yes"));
    assert!(got.header("x-injected").is_none());
    assert!(got.header("cookie").is_none());
    assert!(
        got.header("x-consumer").is_none(),
        "set with an empty value removes the client copy"
    );
    assert_eq!(got.all("x-tag"), ["a", "b"]);

    // A malformed incoming request id is replaced, never echoed.
    let r = request(
        m.port,
        "GET",
        "/b",
        &[("X-Request-ID", "bad id with spaces")],
        b"",
    );
    assert_eq!(r.header("x-request-id").map(|v| v.len()), Some(26));

    // A raw CR inside a header value is refused by the parser: 400, never forwarded.
    up.clear();
    let out = crate::harness::send_raw(
        m.port,
        b"GET /c HTTP/1.1\r\nHost: h\r\nX-Echo: a\rX-Injected: yes\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(up.traffic().is_empty());
}

/// Headers frameworks (Spring's ForwardedHeaderFilter, Symfony's trusted headers, IIS
/// rewrite modules, Rack and Rails, client-IP libraries) read to rebuild the request's
/// URL, scheme, prefix or client: an untrusted client must not set them.
const FRAMEWORK_HEADERS: &[(&str, &str)] = &[
    ("X-Forwarded-Port", "1"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "evil.example.com"),
    ("X-Original-URL", "/admin/users"),
    ("X-Rewrite-URL", "/admin/users"),
    ("X-Original-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Url-Scheme", "https"),
    ("Front-End-Https", "on"),
    ("X-Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("X-Forwarded-Uri", "/admin/users"),
    ("X-Forwarded-Path", "/admin/users"),
    ("X-Host", "evil.example.com"),
];

#[test]
fn untrusted_peer_cannot_forge_framework_forwarding_headers() {
    let up = Upstream::start("app");
    let m = Moat::start(&proxy_config(&up, "      - request_id: {}\n"));
    let r = request(m.port, "GET", "/x", FRAMEWORK_HEADERS, b"");
    assert_eq!(r.status, 200);
    let got = up.last();
    // X-Forwarded-Port is moat's own: the port the client connected to.
    assert_eq!(got.all("x-forwarded-port"), [m.port.to_string()]);
    for (h, _) in &FRAMEWORK_HEADERS[1..] {
        assert!(
            got.header(h).is_none(),
            "{h} reached the upstream: {:?}",
            got.headers
        );
    }

    // From a trusted proxy they are its to set, and kept (X-Forwarded-Port with them, as
    // X-Forwarded-Proto and -Host are); without one, moat sets the port.
    let up = Upstream::start("app");
    let m = Moat::start_with(
        &proxy_config(&up, "      - request_id: {}\n"),
        &["127.0.0.0/8"],
        &[],
    );
    request(m.port, "GET", "/x", FRAMEWORK_HEADERS, b"");
    let got = up.last();
    for (h, v) in FRAMEWORK_HEADERS {
        assert_eq!(got.all(h), [*v], "{h}");
    }
    request(m.port, "GET", "/x", &[], b"");
    assert_eq!(up.last().all("x-forwarded-port"), [m.port.to_string()]);
}

/// Names with `_` where `-` is expected: upstreams that fold `_` into `-` (CGI-style
/// `HTTP_X_...` variables: gunicorn before 22, uWSGI, Rack) would read them as the headers
/// moat strips. moat refuses them, over HTTP/1.1 and HTTP/2 alike, before any upstream.
const UNDERSCORED: &[(&str, &str)] = &[
    ("X_Original_URL", "/admin"),
    ("X_Forwarded_Prefix", "/admin"),
    ("X_Consumer_ID", "acme"),
    ("x_auth_method", "jwt"),
    ("X-Forwarded_Host", "evil.example.com"),
    ("X-Real-IP_", "6.6.6.6"),
    ("_forwarded", "for=6.6.6.6"),
];

#[test]
fn header_names_with_underscores_are_refused_over_http1_and_http2() {
    let up = Upstream::start("app");
    let dir = crate::harness::moat::temp_dir("underscores");
    let (port, admin) = (crate::harness::free_port(), crate::harness::free_port());
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\n    http2: true\nadmin:\n  address: 127.0.0.1:{admin}\n{}",
        proxy_config(&up, "      - request_id: {}\n"),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);
    for (name, value) in UNDERSCORED {
        let r = request(m.port, "GET", "/x", &[(name, value)], b"");
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "BAD_REQUEST", "{name}");
        assert!(r.text().contains("underscore"), "{}", r.text());
        assert_eq!(h2c_status(m.port, name, value), 400, "{name} over HTTP/2");
    }
    assert!(up.traffic().is_empty(), "{:?}", up.traffic());
    // The same names with `-` are served (and stripped as usual).
    assert_eq!(h2c_status(m.port, "x-original-url", "/admin"), 200);
    assert!(up.last().header("x-original-url").is_none());
}

/// The status of one h2c (prior knowledge) request to `/x` carrying `name: value`.
fn h2c_status(port: u16, name: &str, value: &str) -> u16 {
    let req = http::Request::get("http://api.example.com/x")
        .header(name.to_ascii_lowercase(), value)
        .body(())
        .unwrap();
    crate::http2::h2c_exchange(port, vec![(req, b"")])[0].0
}

#[test]
fn x_forwarded_port_is_the_port_of_the_listener_each_client_used() {
    let up = Upstream::start("app");
    let dir = crate::harness::moat::temp_dir("ports");
    let (a, b, admin) = (
        crate::harness::free_port(),
        crate::harness::free_port(),
        crate::harness::free_port(),
    );
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: a\n    address: 127.0.0.1:{a}\n  - name: b\n    address: 127.0.0.1:{b}\n    http2: true\nadmin:\n  address: 127.0.0.1:{admin}\n{}",
        proxy_config(&up, "      - request_id: {}\n"),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, a, admin, dir, &[]);
    for port in [a, b, a] {
        let r = request(port, "GET", "/x", &[("X-Forwarded-Port", "1")], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(up.last().all("x-forwarded-port"), [port.to_string()]);
    }
    drop(m);
}
