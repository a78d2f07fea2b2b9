//! Verifying an HMAC-signed request on the request path: the `Authorization: hmac` value,
//! the credential, the signed-header rules, the date, the signature, the body `Digest`
//! and the replay guard, in that order (the replay guard only records requests whose
//! signature passed, so forged requests cannot fill it). A held-back body (below) is
//! checked after the replay guard has recorded its signature: a replayed head with a
//! junk body is refused, and also burns that signature — which only someone able to
//! see the original request, already sent, can do.
//!
//! Bodies: when the request carries `Digest`, its body must match it before the upstream
//! sees a byte of it. A body of known length up to [`HMAC_MAX_BODY`] is read here, before
//! anything reaches the upstream, and checked; Pingora then forwards it from its retry
//! buffer ([`enable_retry_buffering`], 64 KiB in Pingora 0.9). A longer or chunked body
//! is held back as it streams in (`auth::held_body`, bounded by `max_body`) and released
//! to the upstream only once its digest matches; [`Verified::held_digest`] says so.
//!
//! [`enable_retry_buffering`]: pingora_core::protocols::http::ServerSession::enable_retry_buffering

use super::consumers::{Consumer, ConsumerStore};
use super::credentials::{self, Found};
use super::hmac::{self, HmacError};
use super::replay::{ReplayGuard, Signature, Use, REPLAY_CAPACITY};
use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{HmacAuthConfig, ReplayOnRedisError};
use crate::reply::{ErrorCode, Reply};
use bytes::BytesMut;
use http::HeaderValue;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// Largest signed body read before proxying (Pingora's request retry-buffer size); longer
/// ones are held back while streaming.
pub const HMAC_MAX_BODY: usize = 64 * 1024;
/// Time allowed to receive a signed body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The `hmac` settings of an `auth` plugin.
#[derive(Debug, Clone)]
pub struct HmacSettings {
    /// Allowed distance between the signed date and now, seconds.
    pub skew: i64,
    /// A request with a body must carry a signed `Digest`.
    pub require_digest: bool,
    /// Refuse a signature seen within this many seconds (`None`: replay protection off).
    pub replay_window: Option<i64>,
    /// Lower-case names that must be among the signed headers.
    pub enforce: Vec<String>,
    /// Live signatures remembered per credential; past it, [`Refused::Full`].
    pub replay_capacity: usize,
    /// What to do when Redis cannot answer the replay check.
    pub replay_on_redis_error: ReplayOnRedisError,
}

/// Largest `clock_skew` and `replay_window`: a signed request is good for at most twice
/// this, and the replay memory holds every signature that long.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

impl HmacSettings {
    /// An `auth` plugin's `hmac:` settings (`path`: where they are), with moat's defaults:
    /// `require_digest` true (serde's), replay protection over the clock skew (`0s` turns
    /// it off; a part of a second counts as one), `enforce_headers` `[host]`. `clock_skew`
    /// is 1s to [`MAX_WINDOW`], `replay_window` 0s or up to [`MAX_WINDOW`].
    pub fn compile(h: Option<&HmacAuthConfig>, path: &str, errs: &mut ConfigErrors) -> Self {
        let skew = match h.and_then(|h| h.clock_skew).map(|d| d.get()) {
            None => hmac::DEFAULT_CLOCK_SKEW,
            Some(d) if d >= Duration::from_secs(1) && d <= MAX_WINDOW => d.as_secs() as i64,
            Some(_) => {
                errs.push(join(path, "clock_skew"), "must be between 1s and 1h");
                hmac::DEFAULT_CLOCK_SKEW
            }
        };
        HmacSettings {
            skew,
            require_digest: h.is_none_or(|h| h.require_digest),
            replay_window: match h.and_then(|h| h.replay_window).map(|d| d.get()) {
                None => Some(skew),
                Some(d) if d.is_zero() => None,
                Some(d) if d <= MAX_WINDOW => Some(d.as_millis().div_ceil(1000) as i64),
                Some(_) => {
                    errs.push(
                        join(path, "replay_window"),
                        "must be at most 1h (0s turns replay protection off)",
                    );
                    None
                }
            },
            enforce: match h.and_then(|h| h.enforce_headers.as_ref()) {
                None => hmac::DEFAULT_ENFORCE_HEADERS.map(String::from).to_vec(),
                Some(list) => enforce_headers(list, &join(path, "enforce_headers"), errs),
            },
            replay_capacity: match h.and_then(|h| h.replay_capacity) {
                None => REPLAY_CAPACITY,
                Some(0) => {
                    errs.push(join(path, "replay_capacity"), "must be at least 1");
                    1
                }
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            },
            replay_on_redis_error: h.map(|h| h.replay_on_redis_error).unwrap_or_default(),
        }
    }
}

/// The lower-case names of `enforce_headers`, each a header name or `request-line`.
fn enforce_headers(list: &[String], path: &str, errs: &mut ConfigErrors) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let name = h.trim().to_ascii_lowercase();
        if name != "request-line" && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(
                index(path, i),
                format!("`{h}` is not a header name (or request-line)"),
            );
        } else if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// `WWW-Authenticate: hmac realm="moat", headers="date request-line ... digest"`: what a
/// client must sign, the `enforce` headers included.
pub fn challenge(enforce: &[String]) -> HeaderValue {
    let mut names = vec!["date", "request-line"];
    names.extend(
        enforce
            .iter()
            .map(String::as_str)
            .filter(|h| !["date", "request-line", "digest"].contains(h)),
    );
    names.push("digest");
    HeaderValue::from_str(&format!(
        "hmac realm=\"moat\", headers=\"{}\"",
        names.join(" ")
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("hmac realm=\"moat\""))
}

/// Why a signed request was refused.
pub enum Refused {
    /// The signature scheme refused it (401).
    Signature(HmacError),
    /// The body could not be checked (413 too large, 408 too slow, 400 unreadable).
    Body(Reply),
    /// The signature is good but its credential has `replay_capacity` live signatures
    /// already (503); the oldest expires in `retry_after` seconds.
    Full { retry_after: i64 },
    /// The signature is good but Redis could not say whether it is a replay, and
    /// `replay_on_redis_error` is `deny` (503).
    ReplayUnavailable,
}

impl From<HmacError> for Refused {
    fn from(e: HmacError) -> Self {
        Refused::Signature(e)
    }
}

/// A signed request that passed.
pub struct Verified {
    /// The consumer the key belongs to.
    pub consumer: Arc<Consumer>,
    /// The `Digest` the body must still match while it streams (a body not read yet:
    /// chunked, or longer than [`HMAC_MAX_BODY`]).
    pub held_digest: Option<String>,
}

/// Verify the signed request in `session` whose Authorization value is `value`.
pub async fn verify(
    session: &mut Session,
    value: &str,
    s: &HmacSettings,
    consumers: &ConsumerStore,
    replay: &dyn ReplayGuard,
    now: i64,
) -> Result<Verified, Refused> {
    let auth = hmac::parse_authorization(value)?;
    // HTTP/2 bodies may come with neither Content-Length nor Transfer-Encoding.
    let body_follows = !session.as_mut().is_body_empty();
    let req = session.req_header();
    let key = consumers
        .hmac_key(&auth.key_id)
        .ok_or(HmacError::UnknownKey)?;
    let signed = |n: &str| auth.headers.iter().any(|h| h == n);
    if !signed("request-line") || !s.enforce.iter().all(|h| signed(h)) {
        return Err(HmacError::Unsigned.into());
    }
    let digest = match credentials::header(req, "digest") {
        Found::None => None,
        Found::One(d) => Some(d.into_owned()),
        Found::Many => return Err(HmacError::Digest.into()),
    };
    if digest.is_some() && !signed("digest") {
        return Err(HmacError::Unsigned.into());
    }
    let has_body = body_follows
        || req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || content_length(req).is_some_and(|n| n > 0);
    if s.require_digest && has_body && digest.is_none() {
        return Err(HmacError::Digest.into());
    }
    let signed_at = hmac::check_date(&auth, req, now, s.skew)?;
    let line = hmac::request_line(req);
    let sstr = hmac::signing_string(&auth.headers, &line, |n| hmac::single_header(req, n))?;
    if !hmac::verify_mac(auth.alg, &key.secret, sstr.as_bytes(), &auth.signature) {
        return Err(HmacError::BadSignature.into());
    }
    let mut held_digest = None;
    if let Some(d) = digest {
        let small = content_length(req).is_some_and(|n| n <= HMAC_MAX_BODY as u64);
        if small && !req.headers.contains_key(http::header::TRANSFER_ENCODING) {
            let body = read_body(session, HMAC_MAX_BODY)
                .await
                .map_err(Refused::Body)?;
            if !hmac::digest_matches(&d, &body) {
                return Err(HmacError::Digest.into());
            }
        } else {
            held_digest = Some(d);
        }
    }
    if let Some(w) = s.replay_window {
        let sig = Signature {
            set: &key.replay,
            name: &key.replay_name,
            key: hmac::replay_key(&auth),
            ttl: hmac::replay_ttl(w, signed_at, s.skew, now),
            capacity: s.replay_capacity,
            margin: s.skew,
            on_redis_error: s.replay_on_redis_error,
        };
        match replay.first_use(sig, now).await {
            Use::First => {}
            Use::Replay => return Err(HmacError::Replay.into()),
            Use::Full { retry_after } => return Err(Refused::Full { retry_after }),
            Use::Unavailable => return Err(Refused::ReplayUnavailable),
        }
    }
    Ok(Verified {
        consumer: Arc::clone(&key.consumer),
        held_digest,
    })
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Read the whole request body, at most `limit` bytes, keeping it in Pingora's retry
/// buffer so it is still forwarded upstream.
async fn read_body(session: &mut Session, limit: usize) -> Result<bytes::Bytes, Reply> {
    let too_large = || {
        Reply::error(
            ErrorCode::PayloadTooLarge,
            format!("a signed body is limited to {limit} bytes"),
        )
    };
    if content_length(session.req_header()).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    session.as_mut().enable_retry_buffering();
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(BODY_READ_TIMEOUT, session.as_mut().read_request_body()).await {
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Err(_)) => {
                return Err(Reply::error(
                    ErrorCode::BadRequest,
                    "cannot read the request body",
                ))
            }
            Err(_) => {
                return Err(Reply::error(
                    ErrorCode::RequestTimeout,
                    "request body not received in time",
                ))
            }
        }
    }
}
