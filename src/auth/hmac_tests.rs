//! Unit tests of the HMAC scheme: parsing, the signing string, the Python reference
//! fixture, digests, dates and how long the replay guard remembers a signature.

use super::*;
use crate::auth::dates::{format_http_date, now_secs};
use crate::auth::replay::{LocalReplay, ReplayGuard, Signature, Use};

fn fixture() -> (String, String) {
    let text = include_str!("../../tests/fixtures/hmac_reference.expected");
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap()
            .to_string()
    };
    (get("authorization"), get("digest"))
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

#[test]
fn parses_authorization() {
    let a = parse_authorization(
        "hmac username=\"k1\", algorithm=\"hmac-sha512\", headers=\"Date request-line\", signature=\"AAAA\"",
    )
    .unwrap();
    assert_eq!(a.key_id, "k1");
    assert_eq!(a.alg, HmacAlg::Sha512);
    assert_eq!(a.headers, ["date", "request-line"]);
    assert_eq!(a.signature, [0, 0, 0]);
    for bad in [
        "hmac username=\"k\", algorithm=\"hmac-sha1\", headers=\"date\", signature=\"AAAA\"",
        "hmac username=\"k\", username=\"j\", algorithm=\"hmac-sha256\", headers=\"date\", signature=\"AAAA\"",
        "hmac username=\"k\", algorithm=\"hmac-sha256\", headers=\"date\"",
        "hmac username=k, algorithm=\"hmac-sha256\", headers=\"date\", signature=\"AAAA\"",
        "hmac username=\"k\", algorithm=\"hmac-sha256\", headers=\"date\", signature=\"!!\"",
        "Bearer abc",
        "hmac",
    ] {
        assert!(parse_authorization(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_authorization(
            "hmac username=\"k\", algorithm=\"hmac-sha1\", headers=\"date\", signature=\"AAAA\""
        )
        .unwrap_err(),
        HmacError::Algorithm
    );
}

#[test]
fn python_reference_fixture_verifies() {
    let (authz, digest) = fixture();
    let body = b"{\"name\":\"moat\"}";
    assert!(digest_matches(&digest, body));
    assert_eq!(digest_header(body), digest);
    let req = request(
        "POST",
        "/api/users?limit=10&q=a%20b",
        &[
            ("Host", "api.example.com"),
            ("Date", "Sat, 23 Nov 2024 07:00:00 GMT"),
            ("Digest", &digest),
            ("X-Tenant", "blue"),
            ("Authorization", &authz),
        ],
    );
    let a = parse_authorization(&authz).unwrap();
    let s = signing_string(&a.headers, &request_line(&req), |n| single_header(&req, n)).unwrap();
    assert!(verify_mac(
        a.alg,
        b"s3cr3t-for-tests-only",
        s.as_bytes(),
        &a.signature
    ));
    assert!(!verify_mac(a.alg, b"wrong", s.as_bytes(), &a.signature));
    // Tampering with the method, the path, the host or a signed header breaks it.
    for (m, t, host, tenant) in [
        (
            "PUT",
            "/api/users?limit=10&q=a%20b",
            "api.example.com",
            "blue",
        ),
        (
            "POST",
            "/api/users?limit=11&q=a%20b",
            "api.example.com",
            "blue",
        ),
        (
            "POST",
            "/api/users?limit=10&q=a%20b",
            "api.example.org",
            "blue",
        ),
        (
            "POST",
            "/api/users?limit=10&q=a%20b",
            "api.example.com",
            "red",
        ),
    ] {
        let r = request(
            m,
            t,
            &[
                ("Host", host),
                ("Date", "Sat, 23 Nov 2024 07:00:00 GMT"),
                ("Digest", &digest),
                ("X-Tenant", tenant),
            ],
        );
        let s = signing_string(&a.headers, &request_line(&r), |n| single_header(&r, n)).unwrap();
        assert!(!verify_mac(
            a.alg,
            b"s3cr3t-for-tests-only",
            s.as_bytes(),
            &a.signature
        ));
    }
    // Date check: the fixture's date is far in the past.
    assert_eq!(
        check_date(&a, &req, now_secs(), 300).unwrap_err(),
        HmacError::Date
    );
    assert!(check_date(&a, &req, 1_732_345_200 + 299, 300).is_ok());
}

#[test]
fn digests_and_headers() {
    assert!(!digest_matches("SHA-256=AAAA", b"x"));
    assert!(!digest_matches("MD5=abc", b"x"));
    assert!(digest_matches(
        &format!("md5=x, {}", digest_header(b"x")),
        b"x"
    ));
    assert!(!digest_matches(&digest_header(b"x"), b"y"));
    let r = request("GET", "/", &[("x-a", "1"), ("x-a", "2")]);
    assert_eq!(single_header(&r, "x-a").unwrap_err(), HmacError::Malformed);
    assert_eq!(single_header(&r, "x-b").unwrap_err(), HmacError::Malformed);
}

#[test]
fn date_must_be_signed() {
    let now = now_secs();
    let d = format_http_date(now);
    let r = request("GET", "/", &[("Date", &d), ("X-Date", &d)]);
    let a = |h: &str| HmacAuthorization {
        key_id: "k".into(),
        alg: HmacAlg::Sha256,
        headers: h.split(' ').map(String::from).collect(),
        signature: vec![],
    };
    assert_eq!(
        check_date(&a("request-line"), &r, now, 300).unwrap_err(),
        HmacError::Unsigned
    );
    assert!(check_date(&a("request-line x-date"), &r, now, 300).is_ok());
    assert!(check_date(&a("date request-line"), &r, now + 200, 300).is_ok());
    assert_eq!(
        check_date(&a("date request-line"), &r, now + 400, 300).unwrap_err(),
        HmacError::Date
    );
}

#[tokio::test]
async fn replay_remembered_while_the_date_is_accepted() {
    // Regression: the guard remembered a signature for `replay_window` from first use only,
    // so with replay_window <= clock_skew (the reference config has 300s and 300s) the same
    // request was accepted again once the window passed while its date was still in skew.
    let k = [9u8; 16];
    let (t, skew) = (1_000_000, 300);
    let d = format_http_date(t);
    let r = request("GET", "/", &[("Date", &d)]);
    let a = HmacAuthorization {
        key_id: "k".into(),
        alg: HmacAlg::Sha256,
        headers: vec!["date".into(), "request-line".into()],
        signature: vec![],
    };
    for window in [60, 300] {
        let g = LocalReplay::new();
        let set = g.set([1; 32]);
        let sig = |ttl| Signature {
            set: &set,
            name: "k",
            key: k,
            ttl,
            capacity: 100,
            margin: skew,
            on_redis_error: crate::config::model::ReplayOnRedisError::Local,
        };
        assert_eq!(check_date(&a, &r, t, skew), Ok(t));
        let first = g.first_use(sig(replay_ttl(window, t, skew, t)), t).await;
        assert_eq!(first, Use::First);
        let later = t + skew;
        assert!(
            check_date(&a, &r, later, skew).is_ok(),
            "date still accepted"
        );
        let ttl = replay_ttl(window, t, skew, later);
        let again = g.first_use(sig(ttl), later).await;
        assert_eq!(again, Use::Replay, "window {window}: replay");
        assert!(check_date(&a, &r, later + 1, skew).is_err());
    }
    // A date signed ahead of the receiver's clock is remembered until it leaves the skew.
    assert_eq!(replay_ttl(60, t + 250, skew, t), 551);
    assert_eq!(replay_ttl(600, t, skew, t), 600);
}
