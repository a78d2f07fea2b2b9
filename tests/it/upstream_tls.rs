//! TLS to upstreams: verified against a configured CA and the SNI name, or unverified.

use crate::harness::moat::temp_dir;
use crate::harness::tls::{ca, leaf, TlsUpstream};
use crate::harness::{request, Moat};

fn body(port: u16, tls: &str) -> String {
    format!(
        "upstreams:\n  secure: {{ targets: [\"127.0.0.1:{port}\"], retries: 0, tls: {tls} }}\nroutes:\n  - name: s\n    match: {{ path_prefix: / }}\n    upstream: secure\n"
    )
}

#[test]
fn verified_tls_upstream() {
    let dir = temp_dir("uptls");
    let authority = ca();
    let (ca_file, _) = authority.write(&dir, "ca");
    let server = leaf(&authority, &["users.internal"]);
    let up = TlsUpstream::start(&server);

    let ok = Moat::start(&body(
        up.port,
        &format!(
            "{{ sni: users.internal, verify: true, ca_file: \"{}\" }}",
            ca_file.display()
        ),
    ));
    let r = request(ok.port, "GET", "/x", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "tls-ok"));

    // The certificate does not name `other.internal`: refused, never sent.
    let before = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    let wrong = Moat::start(&body(
        up.port,
        &format!(
            "{{ sni: other.internal, verify: true, ca_file: \"{}\" }}",
            ca_file.display()
        ),
    ));
    let r = request(wrong.port, "GET", "/x", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), before);

    // Without the CA, verification fails; with verify: false it goes through.
    let no_ca = Moat::start(&body(up.port, "{ sni: users.internal, verify: true }"));
    assert_eq!(request(no_ca.port, "GET", "/x", &[], b"").status, 502);
    let unverified = Moat::start(&body(up.port, "{ sni: users.internal, verify: false }"));
    assert_eq!(request(unverified.port, "GET", "/x", &[], b"").status, 200);
    let _ = std::fs::remove_dir_all(dir);
}
