//! HMAC's safe defaults (README, "Security defaults"): with nothing but `methods: [hmac]`
//! a replayed signature is refused, a body needs a signed `Digest`, `host` must be signed
//! (so a signature made for one virtual host is refused on another), and the credential
//! never reaches the upstream; `replay_window: 0s` turns replay protection off.

use super::hmac::{moat_sign, send, sign_manual, SECRET};
#[allow(unused_imports)]
use super::*;

fn defaults_moat(up: &Upstream) -> Moat {
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: acme\n    hmac:\n      - {{ key_id: acme-svc, secret_env: MOAT_IT_HMAC }}\nroutes:\n  - name: defaults\n    match: {{ path_prefix: /d }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac] }}\n  - name: noreplay\n    match: {{ path_prefix: /n }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ replay_window: 0s }} }}\n",
        up.address()
    );
    Moat::start_with(&body, &[], &[("MOAT_IT_HMAC", SECRET)])
}

fn failures(m: &Moat, route: &str, reason: &str) -> Option<f64> {
    m.metric(&format!(
        "moat_auth_failures_total{{method=\"hmac\",reason=\"{reason}\",route=\"{route}\"}}"
    ))
}

#[test]
fn hmac_defaults_refuse_replays_unsigned_bodies_and_unsigned_hosts() {
    let up = Upstream::start("app");
    let m = defaults_moat(&up);
    // `moat sign` signs the host of the URL (and prints the Host header to send).
    let h = moat_sign("GET", "http://localhost/d/x", &[], None, "hmac-sha256");
    let host = h.iter().find(|(k, _)| k == "Host").map(|(_, v)| v.as_str());
    assert_eq!(host, Some("localhost"), "{h:?}");
    assert!(
        h.iter()
            .any(|(k, v)| k == "Authorization" && v.contains("headers=\"date request-line host\"")),
        "{h:?}"
    );
    let r = send(&m, "GET", "/d/x", &h, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // hide_credentials is on by default: the signature never reaches the upstream.
    assert!(up.last().header("authorization").is_none());
    assert_eq!(up.last().all("x-consumer-id"), ["acme"]);
    // Replay protection is on by default.
    assert_refused(&send(&m, "GET", "/d/x", &h, b""), 401, "replay");
    assert_eq!(failures(&m, "defaults", "replay"), Some(1.0));
    // A body needs a signed Digest by default.
    let nd = moat_sign(
        "POST",
        "http://localhost/d/post",
        &["X-Nonce: 1"],
        None,
        "hmac-sha256",
    );
    assert_refused(&send(&m, "POST", "/d/post", &nd, b"abc"), 401, "no digest");
    assert_eq!(failures(&m, "defaults", "digest"), Some(1.0));
    let wd = moat_sign(
        "POST",
        "http://localhost/d/post",
        &["X-Nonce: 2"],
        Some(b"abc"),
        "hmac-sha256",
    );
    assert_eq!(send(&m, "POST", "/d/post", &wd, b"abc").status, 200);
    // `host` must be among the signed headers (enforce_headers: [host]).
    let now = format_http_date(now_secs());
    let no_host = sign_manual("GET /d/y HTTP/1.1", &[("date", &now)], "date request-line");
    let hs = |auth: &str, host: &str| {
        vec![
            ("Host".to_string(), host.to_string()),
            ("Date".to_string(), now.clone()),
            ("Authorization".to_string(), auth.to_string()),
        ]
    };
    assert_refused(
        &send(&m, "GET", "/d/y", &hs(&no_host, "a.example"), b""),
        401,
        "host not signed",
    );
    assert_eq!(failures(&m, "defaults", "unsigned_header"), Some(1.0));
    // A signature made for one virtual host does not verify on another.
    let for_a = sign_manual(
        "GET /d/z HTTP/1.1",
        &[("date", &now), ("host", "a.example")],
        "date request-line host",
    );
    assert_refused(
        &send(&m, "GET", "/d/z", &hs(&for_a, "b.example"), b""),
        401,
        "other host",
    );
    assert_eq!(failures(&m, "defaults", "bad_signature"), Some(1.0));
    assert_eq!(
        send(&m, "GET", "/d/z", &hs(&for_a, "a.example"), b"").status,
        200
    );
    // `replay_window: 0s` turns replay protection off explicitly.
    let h = moat_sign("GET", "http://localhost/n/x", &[], None, "hmac-sha256");
    for _ in 0..2 {
        assert_eq!(send(&m, "GET", "/n/x", &h, b"").status, 200);
    }
    // The challenge names what to sign.
    let r = send(&m, "GET", "/d/x", &[], b"");
    assert_eq!(
        r.header("www-authenticate"),
        Some("hmac realm=\"moat\", headers=\"date request-line host digest\"")
    );
}

/// An HTTP/2 request has no `Host` header: its signed `host` is the `:authority`.
#[test]
fn hmac_over_http2_signs_the_authority_as_host() {
    let up = Upstream::start("app");
    let dir = temp_dir("hmac-h2");
    let (port, admin) = (crate::harness::free_port(), crate::harness::free_port());
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\n    http2: true\nadmin:\n  address: 127.0.0.1:{admin}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: acme\n    hmac: [{{ key_id: acme-svc, secret_env: MOAT_IT_HMAC }}]\nroutes:\n  - name: signed\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac] }}\n",
        up.address(),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[("MOAT_IT_HMAC", SECRET)]);
    let now = format_http_date(now_secs());
    let signed_for = |host: &str, path: &str| {
        let auth = sign_manual(
            &format!("GET {path} HTTP/2.0"),
            &[("date", &now), ("host", host)],
            "date request-line host",
        );
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("http://h2c.example.com{path}"))
            .header("date", now.as_str())
            .header("authorization", auth)
            .body(())
            .unwrap();
        (req, &b""[..])
    };
    let got = crate::http2::h2c_exchange(
        m.port,
        vec![
            signed_for("h2c.example.com", "/api/a"),
            signed_for("other.example.com", "/api/b"),
        ],
    );
    let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 401], "{got:?}");
    assert_eq!(up.last().target, "/api/a");
}
