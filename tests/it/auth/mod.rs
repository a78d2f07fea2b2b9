//! Authentication and authorization through the real binary: the JWT attack catalogue,
//! JWKS fetching (down at start, down later, rotation, kid storms), API keys, HMAC
//! signing (tampering, skew, replay, digest, the Python interop fixture, body forwarding),
//! scopes and the IP filter. Every refusal must be 401/403 (or 503 for no keys), never 500,
//! and no credential may appear in logs or bodies.

//!
//! Split by credential kind: `jwt`, `keys` (API keys and `moat keygen`), `hmac`, `ip`.

pub(crate) use crate::harness::moat::{bin, temp_dir};
pub(crate) use crate::harness::{request, wait_until, Behavior, Moat, Response, Upstream};
pub(crate) use moat::auth::dates::{format_http_date, now_secs};
pub(crate) use moat::auth::testkit::{self, b64, SigningKey};
pub(crate) use serde_json::json;
pub(crate) use std::time::Duration;

mod hmac;
mod hmac_defaults;
mod hmac_replay;
mod ip;
mod jwt;
mod jwt_identity;
mod keys;

pub(crate) fn claims(exp_in: i64, scope: &str) -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": now_secs() + exp_in, "scope": scope})
}

pub(crate) fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

pub(crate) fn get(m: &Moat, path: &str, headers: &[(&str, &str)]) -> Response {
    request(m.port, "GET", path, headers, b"")
}

pub(crate) fn assert_refused(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v = r.json();
    let code = match status {
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        503 => "SERVICE_UNAVAILABLE",
        413 => "PAYLOAD_TOO_LARGE",
        _ => "",
    };
    assert_eq!(v["error"]["code"], code, "{what}");
    if status == 401 {
        assert!(
            r.header("www-authenticate").is_some(),
            "{what}: no WWW-Authenticate"
        );
    }
}
