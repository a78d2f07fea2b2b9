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
#[path = "hmac_tests.rs"]
mod tests;
