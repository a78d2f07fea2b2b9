//! CORS and security headers through the real binary.

use crate::harness::{request, Moat, Upstream};

fn config(up: &Upstream) -> String {
    format!(
        r#"consumers:
  - id: acme
    api_keys: [ {{ sha256: 6ffaa1168c04b66dba59cfa8ca7ab07a772698cbc90da7db9d2c7e2610783972 }} ]
global_plugins:
  - security_headers: {{ hsts: 600, remove: [x-upstream] }}
upstreams:
  app: {{ targets: ["{a}"] }}
routes:
  - name: api
    match: {{ path_prefix: /api, methods: [GET, POST] }}
    upstream: app
    plugins:
      - auth: {{ methods: [api_key] }}
      - cors:
          origins: [https://app.example.com]
          methods: [GET, POST]
          headers: [authorization, content-type, x-api-key]
          expose_headers: [x-request-id]
          credentials: true
          max_age: 10m
"#,
        a = up.address()
    )
}

#[test]
fn cors_preflights_and_actual_requests() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));
    // A preflight for a route whose methods exclude OPTIONS and whose auth runs first:
    // answered by moat, 204, nothing upstream, no credentials needed.
    let pre = request(
        m.port,
        "OPTIONS",
        "/api/things",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type, x-api-key"),
        ],
        b"",
    );
    assert_eq!(pre.status, 204, "{}", pre.text());
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(pre.header("access-control-max-age"), Some("600"));
    assert!(pre
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    assert!(up.traffic().is_empty());

    // Suffix and substring tricks, null, and a disallowed method: no allow headers.
    for (origin, method) in [
        ("https://app.example.com.evil.com", "GET"),
        ("https://evilapp.example.com", "GET"),
        ("null", "GET"),
        ("https://app.example.com", "DELETE"),
    ] {
        let r = request(
            m.port,
            "OPTIONS",
            "/api/things",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
            ],
            b"",
        );
        // DELETE matches no route at all (405); the others reach the cors plugin (204).
        let want = if method == "DELETE" { 405 } else { 204 };
        assert_eq!(r.status, want, "{origin} {method}");
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin} {method}"
        );
        assert!(r.header("access-control-allow-methods").is_none());
    }
    assert!(up.traffic().is_empty());

    // Actual requests: the allowed origin is echoed with credentials; others are not.
    let key = ("x-api-key", "test-key-for-edge-headers");
    let r = request(
        m.port,
        "GET",
        "/api/x",
        &[("Origin", "https://app.example.com"), key],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("vary") && v.contains("Origin")));
    let r = request(
        m.port,
        "GET",
        "/api/x",
        &[("Origin", "https://evil.example.com"), key],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    // Without credentials the route still refuses.
    assert_eq!(
        request(
            m.port,
            "GET",
            "/api/x",
            &[("Origin", "https://app.example.com")],
            b""
        )
        .status,
        401
    );
}

#[test]
fn security_headers_on_proxied_and_own_responses() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));
    let r = request(
        m.port,
        "GET",
        "/api/x",
        &[("x-api-key", "test-key-for-edge-headers")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=600; includeSubDomains")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(r.header("x-upstream").is_none(), "removed");
    assert!(
        r.header("content-security-policy").is_none(),
        "the upstream's page decides its CSP"
    );
    // moat's own answers (a 404 here) carry the restrictive CSP too.
    let r = request(m.port, "GET", "/nowhere", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}
