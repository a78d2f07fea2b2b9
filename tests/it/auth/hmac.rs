//! HMAC signatures: signing, tampering, skew, replay, digests, and the Python reference fixture.

#[allow(unused_imports)]
use super::*;

pub(crate) const SECRET: &str = "s3cr3t-for-tests-only";

fn hmac_moat(up: &Upstream, skew: &str) -> Moat {
    let body = format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: acme\n    hmac:\n      - {{ key_id: acme-svc, secret_env: MOAT_IT_HMAC }}\nroutes:\n  - name: signed\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ clock_skew: {skew}, require_digest: true, replay_window: 300s }}, hide_credentials: true }}\n  - name: loose\n    match: {{ path_prefix: /loose }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac] }}\n",
        up.address()
    );
    Moat::start_with(&body, &[], &[("MOAT_IT_HMAC", SECRET)])
}

/// Headers from `moat sign` (the binary), as (name, value).
pub(crate) fn moat_sign(
    method: &str,
    url: &str,
    extra: &[&str],
    body: Option<&[u8]>,
    alg: &str,
) -> Vec<(String, String)> {
    // A path is signed for `Host: localhost`, what the harness's client sends.
    let url = if url.starts_with('/') {
        format!("http://localhost{url}")
    } else {
        url.to_string()
    };
    let dir = temp_dir("sign");
    let mut cmd = std::process::Command::new(bin());
    cmd.args([
        "sign",
        "--key-id",
        "acme-svc",
        "--secret-env",
        "MOAT_IT_HMAC",
        "--algorithm",
        alg,
    ]);
    for h in extra {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        let f = dir.join("body");
        std::fs::write(&f, b).unwrap();
        cmd.arg("--body-file").arg(f);
    }
    let out = cmd
        .arg(method)
        .arg(&url)
        .env("MOAT_IT_HMAC", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

pub(crate) fn send(
    m: &Moat,
    method: &str,
    path: &str,
    h: &[(String, String)],
    body: &[u8],
) -> Response {
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    request(m.port, method, path, &hs, body)
}

fn replace(h: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case(name) {
                (k.clone(), value.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

#[test]
fn hmac_signed_requests_and_tampering() {
    let up = Upstream::start("app");
    let m = hmac_moat(&up, "300s");
    let body: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let h = moat_sign(
        "POST",
        "/api/orders?x=1&y=2",
        &["X-Tenant: blue"],
        Some(&body),
        "hmac-sha256",
    );
    let r = send(&m, "POST", "/api/orders?x=1&y=2", &h, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    assert_eq!(got.body, body, "the signed body must arrive intact");
    assert_eq!(got.all("x-consumer-id"), ["acme"]);
    assert_eq!(got.all("x-auth-method"), ["hmac"]);
    assert!(got.header("authorization").is_none());
    // Replay of the same signed request.
    assert_refused(
        &send(&m, "POST", "/api/orders?x=1&y=2", &h, &body),
        401,
        "replay",
    );
    // A second signature (a different signed nonce: the same second would sign the same).
    let h2 = moat_sign(
        "POST",
        "/api/orders?x=1&y=2",
        &["X-Tenant: blue", "X-Nonce: 2"],
        Some(&body),
        "hmac-sha256",
    );
    // Tampering: method, path, query, each signed header, one body byte.
    assert_refused(
        &send(&m, "PUT", "/api/orders?x=1&y=2", &h2, &body),
        401,
        "method",
    );
    assert_refused(
        &send(&m, "POST", "/api/orderz?x=1&y=2", &h2, &body),
        401,
        "path",
    );
    assert_refused(
        &send(&m, "POST", "/api/orders?x=1&y=3", &h2, &body),
        401,
        "query",
    );
    assert_refused(
        &send(
            &m,
            "POST",
            "/api/orders?x=1&y=2",
            &replace(&h2, "x-tenant", "red"),
            &body,
        ),
        401,
        "x-tenant",
    );
    let other_date = format_http_date(now_secs() - 5);
    assert_refused(
        &send(
            &m,
            "POST",
            "/api/orders?x=1&y=2",
            &replace(&h2, "date", &other_date),
            &body,
        ),
        401,
        "date",
    );
    let other_digest = moat::auth::hmac::digest_header(b"other");
    assert_refused(
        &send(
            &m,
            "POST",
            "/api/orders?x=1&y=2",
            &replace(&h2, "digest", &other_digest),
            &body,
        ),
        401,
        "digest header",
    );
    let mut flipped = body.clone();
    flipped[31_337] ^= 1;
    assert_refused(
        &send(&m, "POST", "/api/orders?x=1&y=2", &h2, &flipped),
        401,
        "body byte",
    );
    // The untampered request still passes after all that.
    assert_eq!(
        send(&m, "POST", "/api/orders?x=1&y=2", &h2, &body).status,
        200
    );
    // Missing digest on a body while required.
    let nd = moat_sign("POST", "/api/x", &[], None, "hmac-sha256");
    assert_refused(&send(&m, "POST", "/api/x", &nd, b"abc"), 401, "no digest");
    // Algorithms: sha384/512 accepted, sha1 refused.
    for alg in ["hmac-sha384", "hmac-sha512"] {
        let h = moat_sign("GET", "/api/g", &[], None, alg);
        assert_eq!(send(&m, "GET", "/api/g", &h, b"").status, 200, "{alg}");
    }
    let h = moat_sign("GET", "/api/g", &[], None, "hmac-sha256");
    let sha1 = replace(
        &h,
        "authorization",
        &h.iter()
            .find(|(k, _)| k == "Authorization")
            .unwrap()
            .1
            .replace("hmac-sha256", "hmac-sha1"),
    );
    assert_refused(&send(&m, "GET", "/api/g", &sha1, b""), 401, "sha1");
    // Date outside the skew, and date not signed.
    let old = format_http_date(now_secs() - 400);
    let sig = sign_manual(
        "GET /api/g HTTP/1.1",
        &[("date", &old), ("host", "localhost")],
        "date request-line host",
    );
    assert_refused(
        &send(
            &m,
            "GET",
            "/api/g",
            &[("Date".into(), old.clone()), ("Authorization".into(), sig)],
            b"",
        ),
        401,
        "skew",
    );
    let now = format_http_date(now_secs());
    let sig = sign_manual(
        "GET /api/g HTTP/1.1",
        &[("host", "localhost")],
        "request-line host",
    );
    assert_refused(
        &send(
            &m,
            "GET",
            "/api/g",
            &[("Date".into(), now.clone()), ("Authorization".into(), sig)],
            b"",
        ),
        401,
        "date unsigned",
    );
    let sig = sign_manual("", &[("date", &now), ("host", "localhost")], "date host");
    assert_refused(
        &send(
            &m,
            "GET",
            "/api/g",
            &[("Date".into(), now), ("Authorization".into(), sig)],
            b"",
        ),
        401,
        "request-line unsigned",
    );
    for text in [m.access_log(), m.logs()] {
        assert!(
            !text.contains(SECRET) && !text.contains("signature="),
            "secret in logs"
        );
    }
    let n =
        m.metric("moat_auth_failures_total{method=\"hmac\",reason=\"replay\",route=\"signed\"}");
    assert_eq!(n, Some(1.0));
}

/// Signed bodies longer than the pre-read size (or chunked) are held back until their
/// digest matches: the upstream never receives a body that fails it, and `max_body` bounds
/// what is held.
#[test]
fn long_and_chunked_signed_bodies_are_held_until_their_digest_matches() {
    let up = Upstream::start("app");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: acme\n    hmac:\n      - {{ key_id: acme-svc, secret_env: MOAT_IT_HMAC }}\nroutes:\n  - name: signed\n    match: {{ path_prefix: /api }}\n    upstream: app\n    max_body: 2MiB\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ require_digest: true, replay_window: 300s }} }}\n",
        up.address()
    );
    let m = Moat::start_with(&body, &[], &[("MOAT_IT_HMAC", SECRET)]);
    // 1.5 MiB, signed: arrives whole.
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let h = moat_sign("POST", "/api/big", &[], Some(&big), "hmac-sha256");
    let r = send(&m, "POST", "/api/big", &h, &big);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, big, "the signed body must arrive intact");
    // The same size with one byte changed: 401, and no request with a body upstream.
    let h = moat_sign(
        "POST",
        "/api/big",
        &["X-Nonce: 2"],
        Some(&big),
        "hmac-sha256",
    );
    let mut tampered = big.clone();
    tampered[1_000_000] ^= 1;
    let before = up.traffic().len();
    assert_refused(
        &send(&m, "POST", "/api/big", &h, &tampered),
        401,
        "tampered",
    );
    assert_eq!(
        up.traffic().len(),
        before,
        "a tampered body reached the upstream"
    );
    let n =
        m.metric("moat_auth_failures_total{method=\"hmac\",reason=\"digest\",route=\"signed\"}");
    assert_eq!(n, Some(1.0));
    // Over the route's max_body: 413 (Content-Length known up front).
    let huge = vec![b'x'; 2_200_000];
    let h = moat_sign(
        "POST",
        "/api/big",
        &["X-Nonce: 3"],
        Some(&huge),
        "hmac-sha256",
    );
    assert_refused(
        &send(&m, "POST", "/api/big", &h, &huge),
        413,
        "over max_body",
    );
    assert_eq!(up.traffic().len(), before);
    // Chunked bodies: held the same way, whatever their size.
    let chunked = |h: &[(String, String)], parts: &[&[u8]]| {
        // `h` holds the signed Host.
        let mut raw =
            b"POST /api/chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                .to_vec();
        for (k, v) in h {
            raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        for p in parts {
            raw.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
            raw.extend_from_slice(p);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        crate::harness::client::parse_all(&crate::harness::send_raw(m.port, &raw))
    };
    let small: &[u8] = b"hello, chunked world";
    let h = moat_sign("POST", "/api/chunked", &[], Some(small), "hmac-sha256");
    let rs = chunked(&h, &[&small[..5], &small[5..]]);
    assert_eq!(rs.first().map(|r| r.status), Some(200), "{rs:?}");
    assert_eq!(up.last().body, small);
    let h = moat_sign(
        "POST",
        "/api/chunked",
        &["X-Nonce: 4"],
        Some(small),
        "hmac-sha256",
    );
    let before = up.traffic().len();
    let rs = chunked(&h, &[&small[..5], b"HELLO"]);
    assert_eq!(rs.first().map(|r| r.status), Some(401), "{rs:?}");
    assert_eq!(
        up.traffic().len(),
        before,
        "a tampered chunked body reached the upstream"
    );
    let over: Vec<u8> = vec![b'y'; 1024 * 1024];
    let h = moat_sign(
        "POST",
        "/api/chunked",
        &["X-Nonce: 5"],
        Some(&[&over[..], &over[..], &over[..5]].concat()),
        "hmac-sha256",
    );
    let rs = chunked(&h, &[&over, &over, &over[..5]]);
    assert_eq!(rs.first().map(|r| r.status), Some(413), "{rs:?}");
    assert_eq!(up.traffic().len(), before);
}

pub(crate) fn sign_manual(request_line: &str, headers: &[(&str, &str)], list: &str) -> String {
    let mut parts = Vec::new();
    for n in list.split(' ') {
        if n == "request-line" {
            parts.push(request_line.to_string());
        } else {
            let v = headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| *v)
                .unwrap_or("");
            parts.push(format!("{n}: {v}"));
        }
    }
    let mac = moat::auth::hmac::compute(
        moat::auth::hmac::HmacAlg::Sha256,
        SECRET.as_bytes(),
        parts.join("\n").as_bytes(),
    )
    .unwrap();
    use base64::Engine;
    format!(
        "hmac username=\"acme-svc\", algorithm=\"hmac-sha256\", headers=\"{list}\", signature=\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

#[test]
fn hmac_python_reference_fixture_is_accepted() {
    // An independent signer (Python's stdlib) signs a request through moat. The fixture
    // file holds its output for a fixed date (checked by the unit tests against moat's
    // verifier, and here against the script); moat's clock skew is at most an hour, so
    // the request sent is signed now by the same script.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hmac_reference.py"
    );
    let run = |date: Option<&str>| {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(script);
        if let Some(d) = date {
            cmd.env("HMAC_REFERENCE_DATE", d);
        }
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(fixed) = run(None) else {
        eprintln!(
            "python3 is not available: the reference signer is checked by the unit tests only"
        );
        return;
    };
    let expected = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hmac_reference.expected"
    ))
    .unwrap();
    assert_eq!(fixed, expected, "the script and its fixture agree");
    let up = Upstream::start("app");
    let m = hmac_moat(&up, "300s");
    let now = moat::auth::dates::format_http_date(now_secs());
    let text = run(Some(&now)).expect("the script signs a given date");
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap()
            .to_string()
    };
    assert_eq!(get("date"), now);
    let h = vec![
        ("Host".to_string(), get("host")),
        ("Date".to_string(), get("date")),
        ("Digest".to_string(), get("digest")),
        ("X-Tenant".to_string(), get("x-tenant")),
        ("Authorization".to_string(), get("authorization")),
    ];
    let body = b"{\"name\":\"moat\"}";
    let r = send(&m, "POST", "/api/users?limit=10&q=a%20b", &h, body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, body);
    assert_refused(
        &send(&m, "POST", "/api/users?limit=10&q=a%20b", &h, body),
        401,
        "fixture replay",
    );
}
