//! HMAC request signing, compatible with Kong's hmac-auth clients (see the contract):
//! `Authorization: hmac username="<key_id>", algorithm="hmac-sha256",
//! headers="date request-line digest", signature="<base64>"`.
//!
//! The signing string is the listed headers in order, each `name: value` (lower-case
//! name), joined by `\n`; `request-line` contributes `METHOD /path?query HTTP/1.1`.
//! moat's rules on top of the scheme:
//! - algorithms hmac-sha256/384/512 only (hmac-sha1 refused);
//! - `request-line` must be signed (so method, path and query cannot be changed), and
//!   `x-date` or `date` must be signed and within `clock_skew`;
//! - a `Digest` header, when sent, must be signed and match the body (`SHA-256=`); with
//!   `require_digest` (the default) a request with a body must carry one;
//! - the headers of `enforce_headers` (default `host`, so a signature made for one virtual
//!   host does not verify on another) must be signed;
//! - every signed header must appear exactly once (`host` of an HTTP/2 request is its
//!   `:authority`);
//! - signatures compare in constant time; replays are refused through a
//!   [`super::replay::ReplayGuard`].

use crate::util::sha256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pingora_http::RequestHeader;
use subtle::ConstantTimeEq;

/// Default `clock_skew`, seconds.
pub const DEFAULT_CLOCK_SKEW: i64 = 300;
/// Default `enforce_headers`: the host, so a signature holds for one virtual host only.
pub const DEFAULT_ENFORCE_HEADERS: [&str; 1] = ["host"];

/// Why an HMAC request was refused: a short category, safe to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacError {
    /// The Authorization value or a signed header is malformed, missing or repeated.
    Malformed,
    /// An algorithm other than hmac-sha256/384/512.
    Algorithm,
    /// No credential with this key id.
    UnknownKey,
    /// `request-line`, `date`/`x-date`, `digest` or a header of `enforce_headers` is not
    /// among the signed headers.
    Unsigned,
    /// The date is missing, unparsable or outside the clock skew.
    Date,
    /// The signature does not match.
    BadSignature,
    /// The Digest is missing (when required), malformed or does not match the body.
    Digest,
    /// This signature was already used within the replay window.
    Replay,
}

impl HmacError {
    /// The metric / log reason.
    pub fn reason(self) -> &'static str {
        match self {
            HmacError::Malformed => "malformed",
            HmacError::Algorithm => "algorithm",
            HmacError::UnknownKey => "unknown_key",
            HmacError::Unsigned => "unsigned_header",
            HmacError::Date => "date",
            HmacError::BadSignature => "bad_signature",
            HmacError::Digest => "digest",
            HmacError::Replay => "replay",
        }
    }
}

/// An HMAC algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HmacAlg {
    /// Parse `hmac-sha256` etc.; sha1 and others are refused.
    pub fn parse(s: &str) -> Option<HmacAlg> {
        match s.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(HmacAlg::Sha256),
            "hmac-sha384" => Some(HmacAlg::Sha384),
            "hmac-sha512" => Some(HmacAlg::Sha512),
            _ => None,
        }
    }

    /// The name as written in the header.
    pub fn name(self) -> &'static str {
        match self {
            HmacAlg::Sha256 => "hmac-sha256",
            HmacAlg::Sha384 => "hmac-sha384",
            HmacAlg::Sha512 => "hmac-sha512",
        }
    }
}

/// A parsed `Authorization: hmac ...` value.
#[derive(Debug, Clone)]
pub struct HmacAuthorization {
    /// `username`: the credential's key id.
    pub key_id: String,
    /// `algorithm`.
    pub alg: HmacAlg,
    /// `headers`, lower-cased, in order.
    pub headers: Vec<String>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Whether an Authorization value uses the hmac scheme.
pub fn is_hmac_scheme(value: &str) -> bool {
    value
        .get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("hmac "))
}

/// Parse an `Authorization: hmac k="v", ...` value.
pub fn parse_authorization(value: &str) -> Result<HmacAuthorization, HmacError> {
    if !is_hmac_scheme(value) {
        return Err(HmacError::Malformed);
    }
    let mut rest = value[5..].trim();
    let (mut user, mut alg, mut headers, mut sig) = (None, None, None, None);
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or(HmacError::Malformed)?;
        let name = rest[..eq].trim().to_ascii_lowercase();
        let after = rest[eq + 1..].trim_start();
        let after = after.strip_prefix('"').ok_or(HmacError::Malformed)?;
        let end = after.find('"').ok_or(HmacError::Malformed)?;
        let v = &after[..end];
        rest = after[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(HmacError::Malformed);
        }
        let slot = match name.as_str() {
            "username" | "keyid" => &mut user,
            "algorithm" => &mut alg,
            "headers" => &mut headers,
            "signature" => &mut sig,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(HmacError::Malformed);
        }
    }
    let (Some(user), Some(alg), Some(headers), Some(sig)) = (user, alg, headers, sig) else {
        return Err(HmacError::Malformed);
    };
    if user.is_empty() {
        return Err(HmacError::Malformed);
    }
    let alg = HmacAlg::parse(alg).ok_or(HmacError::Algorithm)?;
    let headers: Vec<String> = headers
        .split_ascii_whitespace()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let signature = STANDARD.decode(sig).map_err(|_| HmacError::Malformed)?;
    Ok(HmacAuthorization {
        key_id: user.to_string(),
        alg,
        headers,
        signature,
    })
}

/// Build the signing string of `names` from a header lookup and the request line.
pub fn signing_string(
    names: &[String],
    request_line: &str,
    mut header: impl FnMut(&str) -> Result<String, HmacError>,
) -> Result<String, HmacError> {
    let mut parts = Vec::with_capacity(names.len());
    for n in names {
        if n == "request-line" {
            parts.push(request_line.to_string());
        } else {
            parts.push(format!("{n}: {}", header(n)?));
        }
    }
    Ok(parts.join("\n"))
}

/// `METHOD /path?query HTTP/1.1` of `req`, the path as the client sent it.
pub fn request_line(req: &RequestHeader) -> String {
    format!(
        "{} {} {:?}",
        req.method.as_str(),
        String::from_utf8_lossy(req.raw_path()),
        req.version
    )
}

/// The single value of header `name` in `req` (a repeated header is refused). `host` of a
/// request without a `Host` header (HTTP/2) is its `:authority`.
pub fn single_header(req: &RequestHeader, name: &str) -> Result<String, HmacError> {
    let mut it = req.headers.get_all(name).iter();
    let (Some(v), None) = (it.next(), it.next()) else {
        if name == "host" && !req.headers.contains_key(http::header::HOST) {
            if let Some(a) = req.uri.authority() {
                return Ok(a.as_str().to_string());
            }
        }
        return Err(HmacError::Malformed);
    };
    v.to_str()
        .map(|s| s.trim().to_string())
        .map_err(|_| HmacError::Malformed)
}

/// HMAC of `data` under `secret`.
pub fn compute(alg: HmacAlg, secret: &[u8], data: &[u8]) -> Result<Vec<u8>, HmacError> {
    Ok(super::mac::tag(alg, secret, data))
}

/// Constant-time check of `sig` against the HMAC of `data`.
pub fn verify_mac(alg: HmacAlg, secret: &[u8], data: &[u8], sig: &[u8]) -> bool {
    super::mac::verify(alg, secret, data, sig)
}

/// `SHA-256=<base64>` of `body`.
pub fn digest_header(body: &[u8]) -> String {
    format!("SHA-256={}", STANDARD.encode(sha256(body)))
}

/// Whether a `Digest` value carries a `SHA-256=` entry matching `body` (constant time).
/// Other algorithms in the list are ignored; without a SHA-256 entry it fails.
pub fn digest_matches(value: &str, body: &[u8]) -> bool {
    let want = sha256(body);
    let mut found = false;
    for part in value.split(',') {
        let Some((alg, b64)) = part.trim().split_once('=') else {
            continue;
        };
        if alg.trim().eq_ignore_ascii_case("sha-256") {
            match STANDARD.decode(b64.trim()) {
                Ok(got) if bool::from(got.as_slice().ct_eq(want.as_slice())) => found = true,
                _ => return false,
            }
        }
    }
    found
}

/// Which date header a signed request relies on, checked against `now` and `skew`; the
/// signed time (UNIX seconds).
pub fn check_date(
    auth: &HmacAuthorization,
    req: &RequestHeader,
    now: i64,
    skew: i64,
) -> Result<i64, HmacError> {
    let name = ["x-date", "date"]
        .into_iter()
        .find(|n| auth.headers.iter().any(|h| h == n))
        .ok_or(HmacError::Unsigned)?;
    let v = single_header(req, name).map_err(|_| HmacError::Date)?;
    let t = super::dates::parse_http_date(&v).ok_or(HmacError::Date)?;
    if (t - now).abs() > skew {
        return Err(HmacError::Date);
    }
    Ok(t)
}

/// How long (seconds from `now`) the replay guard must remember a request signed at
/// `signed_at`: the configured `window`, and at least until the signed date falls outside
/// the clock skew (a shorter memory would let the same request be replayed while its date
/// is still accepted).
pub fn replay_ttl(window: i64, signed_at: i64, skew: i64, now: i64) -> i64 {
    window.max(signed_at.saturating_add(skew).saturating_sub(now) + 1)
}

/// The replay key of a verified request: a hash of its signature alone. The key id is
/// not signed, so it is left out: a request signed with a secret is one signature under
/// every key id holding that secret (they share one replay memory).
pub fn replay_key(auth: &HmacAuthorization) -> super::replay::SigKey {
    let mut key = [0u8; 16];
    key.copy_from_slice(&sha256(&auth.signature)[..16]);
    key
}

#[cfg(test)]
mod tests {
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
        let s =
            signing_string(&a.headers, &request_line(&req), |n| single_header(&req, n)).unwrap();
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
            let s =
                signing_string(&a.headers, &request_line(&r), |n| single_header(&r, n)).unwrap();
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
}
