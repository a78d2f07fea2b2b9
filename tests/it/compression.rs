//! Response compression through the real binary: gzip by Accept-Encoding for listed
//! types, never for event streams, tiny bodies or already-encoded responses.

use crate::harness::{request, Behavior, Moat, Upstream};
use std::io::Read;

fn body() -> Vec<u8> {
    (0..8000)
        .map(|i| b"moat compresses text "[i % 21])
        .collect()
}

#[test]
fn gzip_by_accept_encoding_and_type() {
    let up = Upstream::start("app");
    up.set(Behavior {
        body: body(),
        ..Behavior::default()
    });
    let m = Moat::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: app\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - compression: {{ algorithms: [gzip], level: 6, content_types: [text/plain], min_size: 1KiB }}\n  - name: tiny\n    match: {{ path: /tiny }}\n    respond: {{ body: small, headers: {{ content-type: text/plain }} }}\n    plugins:\n      - compression: {{ algorithms: [gzip] }}\n",
        up.address()
    ));
    // The harness upstream answers text/plain: compressed when the client accepts gzip.
    let r = request(m.port, "GET", "/a", &[("Accept-Encoding", "gzip, br")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        r.headers
    );
    assert!(r.body.len() < 8000 / 4, "{} bytes", r.body.len());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, body());
    assert!(r.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("vary")
        && v.to_ascii_lowercase().contains("accept-encoding")));
    // No Accept-Encoding: identity.
    let r = request(m.port, "GET", "/a", &[], b"");
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, body());
    // Tiny bodies are not worth it.
    let r = request(m.port, "GET", "/tiny", &[("Accept-Encoding", "gzip")], b"");
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.text(), "small");
}
