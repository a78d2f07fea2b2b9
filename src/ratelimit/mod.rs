//! Limiters shared by the `rate_limit`, `quota` and `concurrency` plugins: what a limit is
//! keyed on ([`KeySource`]), the per-request state the plugins leave in the context
//! ([`ReqLimits`]: the `RateLimit-*` headers to send and the concurrency slots held), and
//! the [`Registry`] that carries limiter state across reloads.
//!
//! Keys and their fallback: `consumer` (the authenticated consumer id), `ip` (the client IP
//! after `trusted_proxies`, so a spoofed `X-Forwarded-For` from an untrusted peer changes
//! nothing), `route` (the route name), `header:NAME`, `claim:NAME`. A request without the
//! key's value is never unlimited: it is counted in the bucket of its client IP (kept apart
//! from real values by a prefix), or in one shared `unknown` bucket when even that is
//! missing. Consumer ids, header and claim values over 128 bytes are keyed by their
//! SHA-256 (Redis keys stay short whatever a client or a token carries).

pub mod algo;
pub mod cluster;
pub mod fast;
pub mod fast_bucket;
pub(crate) mod lease;
pub mod store;

use crate::config::error::ConfigErrors;
use crate::template::Facts;
use http::HeaderName;
use std::any::Any;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// A limiter's name in Redis keys: 12 hex digits of the SHA-256 of its fingerprint (its
/// place in the config and its settings), the same on every instance with the same config.
pub fn limiter_id(fingerprint: &str) -> String {
    hex::encode(&crate::util::sha256(fingerprint.as_bytes())[..6])
}

/// What a limiter counts by.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The authenticated consumer id.
    Consumer,
    /// The resolved client IP.
    Ip,
    /// The route's name.
    Route,
    /// A request header's value.
    Header(HeaderName),
    /// A verified JWT claim.
    Claim(String),
}

const LONG: usize = 128;

impl KeySource {
    /// Parse `consumer | ip | route | header:NAME | claim:NAME`.
    /// Parse the key written at `path`, recording the error there.
    pub fn compile(s: &str, path: &str, errs: &mut ConfigErrors) -> Option<KeySource> {
        KeySource::parse(s).map_err(|e| errs.push(path, e)).ok()
    }

    /// Parse `consumer`, `ip`, `route`, `header:NAME` or `claim:NAME`.
    pub fn parse(s: &str) -> Result<KeySource, String> {
        let bad = || format!("`{s}`: expected consumer, ip, route, header:NAME or claim:NAME");
        Ok(match s {
            "consumer" => KeySource::Consumer,
            "ip" => KeySource::Ip,
            "route" => KeySource::Route,
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    KeySource::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| bad())?)
                } else if let Some(c) = s.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                    KeySource::Claim(c.to_string())
                } else {
                    return Err(bad());
                }
            }
        })
    }

    /// This request's key (from the facts of `f`), written into `out` (cleared first).
    pub fn extract(&self, f: &Facts, out: &mut String) {
        out.clear();
        let found = match self {
            KeySource::Consumer => f
                .identity
                .as_ref()
                .map(|i| push_value(out, i.consumer_id.as_bytes())),
            KeySource::Ip => f.client_ip.map(|ip| crate::net::push_ip(out, ip)),
            KeySource::Route => (!f.route.is_empty()).then(|| out.push_str(f.route)),
            KeySource::Header(h) => f
                .req
                .headers
                .get(h)
                .filter(|v| !v.is_empty())
                .map(|v| push_value(out, v.as_bytes())),
            KeySource::Claim(c) => f
                .identity
                .as_ref()
                .and_then(|i| i.claims.as_ref())
                .and_then(|m| m.get(c))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => {
                        push_value(out, s.as_bytes());
                        Some(())
                    }
                    serde_json::Value::Number(n) => {
                        let _ = write!(out, "{n}");
                        Some(())
                    }
                    serde_json::Value::Bool(b) => {
                        let _ = write!(out, "{b}");
                        Some(())
                    }
                    _ => None,
                }),
        };
        if found.is_none() {
            out.clear();
            match f.client_ip {
                Some(ip) => {
                    let _ = write!(out, "\0ip:{ip}");
                }
                None => out.push_str("\0unknown"),
            }
        }
    }
}

fn push_value(out: &mut String, v: &[u8]) {
    if v.len() > LONG {
        out.push_str(&hex::encode(crate::util::sha256(v)));
    } else {
        out.push_str(&String::from_utf8_lossy(v));
    }
}

/// The `RateLimit-*` values to send: those of the most restrictive limiter that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// `RateLimit-Limit`.
    pub limit: u64,
    /// `RateLimit-Remaining`.
    pub remaining: u64,
    /// `RateLimit-Reset`, seconds.
    pub reset: u64,
}

/// Limiter state of one request, dropped with its context.
#[derive(Default)]
pub struct ReqLimits {
    /// Headers for the response, when a rate limiter ran.
    pub headers: Option<RateHeaders>,
    /// Concurrency slots held until the request ends.
    pub held: Vec<store::Held>,
    /// Cluster concurrency leases held until the request ends.
    pub leases: Vec<lease::Lease>,
}

impl ReqLimits {
    /// Keep `h` if it is more restrictive than what is noted (fewer remaining, then the
    /// later reset).
    pub fn note(&mut self, h: RateHeaders) {
        match &self.headers {
            Some(o)
                if (o.remaining, std::cmp::Reverse(o.reset))
                    <= (h.remaining, std::cmp::Reverse(h.reset)) => {}
            _ => self.headers = Some(h),
        }
    }
}

type Shared = Arc<dyn Any + Send + Sync>;

/// Limiter state by plugin fingerprint (its config path and settings), so a reload keeps
/// the counters of every limiter whose settings and place did not change. A generation's
/// registry holds only its own limiters; state of removed or changed ones is dropped with
/// the previous generation.
#[derive(Default)]
pub struct Registry {
    previous: Mutex<HashMap<String, Shared>>,
    current: Mutex<HashMap<String, Shared>>,
}

impl Registry {
    /// A registry for a new generation that may reuse `previous`'s state.
    pub fn inherit(previous: Option<&Registry>) -> Registry {
        let prev = previous
            .map(|p| p.current.lock().map(|m| m.clone()).unwrap_or_default())
            .unwrap_or_default();
        Registry {
            previous: Mutex::new(prev),
            current: Mutex::default(),
        }
    }

    /// The state for `fingerprint`: the previous generation's if it had one of type `T`,
    /// else `make()`.
    pub fn get_or_make<T: Any + Send + Sync>(
        &self,
        fingerprint: String,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let old = self
            .previous
            .lock()
            .ok()
            .and_then(|m| m.get(&fingerprint).cloned())
            .and_then(|a| a.downcast::<T>().ok());
        let state = old.unwrap_or_else(|| Arc::new(make()));
        if let Ok(mut m) = self.current.lock() {
            m.insert(fingerprint, Arc::clone(&state) as Shared);
        }
        state
    }

    /// Forget the previous generation's state once compiling is done.
    pub fn finish(&self) {
        if let Ok(mut m) = self.previous.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::RequestCtx;
    use pingora_http::RequestHeader;

    #[test]
    fn registry_keeps_unchanged_state() {
        let a = Registry::inherit(None);
        let s1 = a.get_or_make("p|x".into(), || 7u32);
        a.finish();
        let b = Registry::inherit(Some(&a));
        assert!(Arc::ptr_eq(&s1, &b.get_or_make("p|x".into(), || 8u32)));
        assert_eq!(*b.get_or_make("p|y".into(), || 9u32), 9);
        b.finish();
        drop(a);
        let c = Registry::inherit(Some(&b));
        assert_eq!(*c.get_or_make("p|x".into(), || 1u32), 7);
    }

    #[test]
    fn key_sources_parse() {
        assert!(matches!(KeySource::parse("ip"), Ok(KeySource::Ip)));
        assert!(matches!(
            KeySource::parse("header:X-Tenant"),
            Ok(KeySource::Header(_))
        ));
        assert!(matches!(
            KeySource::parse("claim:org"),
            Ok(KeySource::Claim(_))
        ));
        assert!(KeySource::parse("header:").is_err());
        assert!(KeySource::parse("cookie:x").is_err());
    }

    #[test]
    fn long_consumer_ids_are_keyed_by_their_hash() {
        // Regression: header values over 128 bytes were hashed, consumer ids (a JWT's
        // claim) went whole into keys.
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut ctx = RequestCtx::new();
        let key = |id: &str, ctx: &mut RequestCtx| {
            ctx.identity = Some(crate::identity::Identity {
                consumer_id: Arc::from(id),
                consumer_header: http::HeaderValue::from_static("x"),
                tier: None,
                method: "jwt",
                claims: None,
            });
            let mut out = String::new();
            KeySource::Consumer.extract(&ctx.facts(&req), &mut out);
            out
        };
        assert_eq!(key("corp:alice", &mut ctx), "corp:alice");
        let long = format!("corp:{}", "a".repeat(300));
        let hashed = key(&long, &mut ctx);
        assert_eq!(hashed.len(), 64);
        assert_eq!(hashed, hex::encode(crate::util::sha256(long.as_bytes())));
    }

    #[test]
    fn most_restrictive_headers_win() {
        let mut l = ReqLimits::default();
        l.note(RateHeaders {
            limit: 10,
            remaining: 5,
            reset: 3,
        });
        l.note(RateHeaders {
            limit: 100,
            remaining: 50,
            reset: 1,
        });
        assert_eq!(l.headers.map(|h| h.limit), Some(10));
        l.note(RateHeaders {
            limit: 2,
            remaining: 0,
            reset: 9,
        });
        assert_eq!(l.headers.map(|h| h.limit), Some(2));
    }
}
