//! `server.limits` and route `max_body` through the real binary: 414, 431, 413.

use crate::harness::{request, send_raw, Moat, Upstream};

fn config(up: &Upstream) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: small\n    match: {{ path_prefix: /small }}\n    upstream: app\n    max_body: 1KiB\n  - name: big\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address()
    )
}

#[test]
fn request_limits_answer_414_431_413() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));
    let long = format!("/{}", "a".repeat(9 * 1024));
    let r = request(m.port, "GET", &long, &[], b"");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (414, Some("URI_TOO_LONG"))
    );

    let many: Vec<(String, String)> = (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = request(m.port, "GET", "/x", &refs, b"");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (431, Some("HEADERS_TOO_LARGE"))
    );
    let big = "v".repeat(40 * 1024);
    let r = request(m.port, "GET", "/x", &[("x-big", big.as_str())], b"");
    assert_eq!(r.status, 431);

    // Declared body over the route's 1 KiB: refused before anything goes upstream.
    let r = request(m.port, "POST", "/small/upload", &[], &vec![b'x'; 2048]);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
    // Under it: forwarded.
    assert_eq!(
        request(m.port, "POST", "/small/upload", &[], &vec![b'x'; 512]).status,
        200
    );
    // A chunked body counted as it streams.
    let mut raw = b"POST /small/stream HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'y'; 512]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let out = send_raw(m.port, &raw);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(up.traffic().iter().all(|r| r.body.len() <= 1024));
    // The server default (10 MiB) applies elsewhere.
    assert_eq!(
        request(m.port, "POST", "/other", &[], &vec![b'x'; 100 * 1024]).status,
        200
    );
}

#[test]
fn configured_server_limits() {
    let up = Upstream::start("app");
    let dir = crate::harness::moat::temp_dir("limits");
    let (port, admin) = (crate::harness::free_port(), crate::harness::free_port());
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/p.pid\n  upgrade_sock: {d}/u.sock\n  limits: {{ max_header_bytes: 2KiB, max_headers: 20, max_body: 4KiB, idle_timeout: 5s }}\nlisteners: [{{ name: p, address: \"127.0.0.1:{port}\" }}]\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\n{}",
        config(&up),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);
    let many: Vec<(String, String)> = (0..21).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(request(m.port, "GET", "/x", &refs, b"").status, 431);
    let big = "v".repeat(3 * 1024);
    assert_eq!(
        request(m.port, "GET", "/x", &[("x-big", big.as_str())], b"").status,
        431
    );
    assert_eq!(
        request(m.port, "POST", "/other", &[], &vec![b'x'; 5 * 1024]).status,
        413
    );
    assert_eq!(
        request(m.port, "POST", "/other", &[], &vec![b'x'; 3 * 1024]).status,
        200
    );
    // The route's own max_body (1 KiB) still wins over the server's.
    assert_eq!(
        request(m.port, "POST", "/small/x", &[], &vec![b'x'; 2 * 1024]).status,
        413
    );
}
