//! A compiled JWT provider (`jwt_providers.NAME`): its key set, claim rules and verified-
//! token cache, and for `jwks_url` the fetching policy. A token's consumer is
//! `NAME:VALUE` of its `consumer_claim` (a namespace per provider, apart from
//! `consumers:`), or the bare value with `consumer_map: consumers`, which the auth plugin
//! then looks up among the configured consumers.
//!
//! Fetching:
//! - a background loop ([`spawn_refresh`]) fetches at start and every `jwks_refresh`
//!   (every `jwks_cooldown` while no key set was ever obtained), holding only a `Weak`
//!   reference so it ends with its config generation;
//! - a token naming an unknown `kid` (or arriving before any key set) triggers at most one
//!   inline refetch per `jwks_cooldown`, single-flight, so a storm of random kids costs
//!   one fetch;
//! - a failed fetch keeps the last good set; with no set at all requests fail closed
//!   ([`JwtError::NoKeys`], answered 503).
//!
//! Verified tokens are cached until their `exp` (never longer), keyed by a foldhash of the
//! token under a per-process random seed; each entry keeps its token and a hit counts only
//! when the token is the same, so a hash collision is a miss, never a wrong identity (and
//! only verified tokens are ever stored). Per 700-byte token: SHA-256 cost ~25k
//! instructions, SipHash ~1.7k, foldhash ~0.2k. The cache is
//! cleared whenever the key set changes — a fetch that returns the same keys (same
//! [`KeySet::fingerprint`]) changes nothing and keeps it — and each entry carries the
//! key-set generation it was verified under, so a verification racing a rotation cannot
//! leave a token signed by a removed key in the cache.

use super::cache::{ExpiringCache, Key};
use super::jwk::{self, Alg, KeySet};
use super::jwt::{self, ClaimRules, JwtError};
use crate::config::error::{join, ConfigErrors};
use crate::config::model::{ConsumerMap, JwtProviderConfig};
use arc_swap::ArcSwapOption;
use foldhash::quality::RandomState;
use http::HeaderValue;
use jsonwebtoken::Validation;
use serde_json::{Map, Value};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default `jwks_refresh`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
/// Default `jwks_cooldown`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Timeout of one JWKS fetch (connect, TLS, request and body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Verified tokens kept per provider.
pub const CACHE_CAPACITY: usize = 10_000;
/// Keys tried for a token without `kid`.
const MAX_KEYS_WITHOUT_KID: usize = 4;
/// Longest `consumer_claim` value accepted, bytes (a longer one is refused: it would be a
/// consumer id in headers, logs and limiter keys).
pub const MAX_CONSUMER_CLAIM: usize = 256;

/// A verified token: what requests need from it.
#[derive(Debug)]
pub struct Verified {
    /// All claims.
    pub claims: Arc<Map<String, Value>>,
    /// `exp`, UNIX seconds.
    pub exp: i64,
    /// The consumer id: `PROVIDER:VALUE` of `consumer_claim`, or the bare value with
    /// `consumer_map: consumers` (then a `consumers:` id to look up).
    pub subject: Arc<str>,
    /// `subject` as the `X-Consumer-ID` value, for a namespaced provider (`None` with
    /// `consumer_map: consumers`: the consumer's own is sent).
    pub subject_header: Option<HeaderValue>,
    /// Scopes (from `scopes_claim`).
    pub scopes: Arc<[String]>,
}

/// A verified token in the cache.
#[derive(Clone)]
struct Cached {
    /// The key-set generation it was verified under.
    generation: u64,
    verified: Arc<Verified>,
    /// The token itself: a hit must be the same token, not just the same hash.
    token: Arc<str>,
}

/// One provider.
pub struct JwtProvider {
    /// `jwt_providers` key.
    pub name: String,
    algs: Vec<Alg>,
    /// What `jsonwebtoken` checks, per allowed algorithm (in the order of `algs`).
    validations: Vec<Validation>,
    rules: ClaimRules,
    consumer_claim: String,
    scopes_claim: String,
    /// What `consumer_claim` names.
    pub consumer_map: ConsumerMap,
    url: Option<String>,
    keys: ArcSwapOption<KeySet>,
    cache: ExpiringCache<Cached>,
    /// Keys the token cache's hash (random per process).
    hasher: RandomState,
    generation: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    refresh: Duration,
    cooldown: Duration,
    fetches: AtomicU64,
}

impl JwtProvider {
    /// Compile one provider; keys from files and the environment are loaded now, a
    /// `jwks_url` is only checked (fetched later by [`spawn_refresh`] or on demand).
    pub fn compile(
        name: &str,
        c: &JwtProviderConfig,
        errs: &mut ConfigErrors,
    ) -> Option<JwtProvider> {
        let path = join("jwt_providers", name);
        let algs: Vec<Alg> = c
            .algorithms
            .iter()
            .filter_map(|a| jwk::parse_alg(a))
            .collect();
        let mut keys = None;
        let mut load = |what: &str, r: Result<KeySet, String>| match r {
            Ok(k) => keys = Some(k),
            Err(e) => errs.push(join(&path, what), e),
        };
        if let Some(f) = &c.jwks_file {
            if let Ok(text) = std::fs::read(f) {
                load("jwks_file", jwk::parse_jwks(&text));
            }
        } else if let Some(f) = &c.public_key_file {
            if let Ok(text) = std::fs::read(f) {
                load("public_key_file", jwk::parse_pem(&text));
            }
        } else if let Some(v) = &c.secret_env {
            if let Some(s) = std::env::var_os(v).filter(|s| !s.is_empty()) {
                load("secret_env", jwk::hmac_set(s.into_encoded_bytes()));
            }
        } else if let Some(u) = &c.jwks_url {
            if let Err(e) = super::fetch::check_url(u) {
                errs.push(join(&path, "jwks_url"), e);
            }
        }
        let mut p = JwtProvider::new(
            name,
            algs,
            ClaimRules {
                issuer: c.issuer.clone(),
                audiences: c.audiences.clone(),
                leeway: c.leeway.map(|d| d.get().as_secs() as i64).unwrap_or(0),
            },
        );
        p.url = c.jwks_url.clone();
        p.keys = ArcSwapOption::from(keys.map(Arc::new));
        if let Some(cc) = &c.consumer_claim {
            p.consumer_claim = cc.clone();
        }
        if let Some(sc) = &c.scopes_claim {
            p.scopes_claim = sc.clone();
        }
        p.consumer_map = c.consumer_map;
        p.refresh = c
            .jwks_refresh
            .map(|d| d.get())
            .unwrap_or(DEFAULT_REFRESH)
            .max(Duration::from_secs(1));
        p.cooldown = c.jwks_cooldown.map(|d| d.get()).unwrap_or(DEFAULT_COOLDOWN);
        Some(p)
    }

    /// A provider with fixed `keys` (tests, benches); `sub` names the consumer and
    /// `scope` holds scopes.
    pub fn new(name: &str, algs: Vec<Alg>, rules: ClaimRules) -> JwtProvider {
        jwt::install_backend();
        JwtProvider {
            name: name.to_string(),
            validations: algs.iter().map(|a| jwt::validation(*a, &rules)).collect(),
            algs,
            rules,
            consumer_claim: "sub".into(),
            scopes_claim: "scope".into(),
            consumer_map: ConsumerMap::Namespaced,
            url: None,
            keys: ArcSwapOption::empty(),
            cache: ExpiringCache::new(CACHE_CAPACITY),
            hasher: RandomState::default(),
            generation: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            refresh: DEFAULT_REFRESH,
            cooldown: DEFAULT_COOLDOWN,
            fetches: AtomicU64::new(0),
        }
    }

    /// Install `keys` and clear the token cache, unless they are the keys at hand
    /// ([`KeySet::fingerprint`]): then nothing changes and cached tokens stay. True when
    /// the set changed.
    pub fn set_keys(&self, keys: KeySet) -> bool {
        let current = self.keys.load();
        if current
            .as_ref()
            .is_some_and(|k| k.fingerprint() == keys.fingerprint())
        {
            return false;
        }
        self.keys.store(Some(Arc::new(keys)));
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
        true
    }

    /// JWKS fetches attempted so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Verify `token` with the keys at hand (no fetching), using the cache.
    pub fn verify_sync(&self, token: &str, now: i64) -> Result<Arc<Verified>, JwtError> {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let key = self.token_key(token);
        // Read before the keys are loaded: `set_keys` stores the keys, then bumps it.
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(c) = self.cache.get(&key, now) {
            if c.generation == generation && *c.token == *token {
                return Ok(c.verified);
            }
        }
        let v = Arc::new(self.verify_uncached(token, now)?);
        if v.exp > now {
            let entry = Cached {
                generation,
                verified: Arc::clone(&v),
                token: Arc::from(token),
            };
            self.cache.insert(key, entry, v.exp, now);
        }
        Ok(v)
    }

    /// The cache key of `token`: its foldhash under this provider's random seed, and its
    /// length. Not collision-resistant, and it need not be: entries keep their token.
    fn token_key(&self, token: &str) -> Key {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&self.hasher.hash_one(token.as_bytes()).to_le_bytes());
        k[8..16].copy_from_slice(&(token.len() as u64).to_le_bytes());
        k
    }

    /// Full verification without the cache (benches compare it with the cached path).
    pub fn verify_uncached(&self, token: &str, now: i64) -> Result<Verified, JwtError> {
        let h = jwt::decode_header(token, &self.algs)?;
        let validation = self
            .algs
            .iter()
            .position(|a| *a == h.alg)
            .and_then(|i| self.validations.get(i))
            .ok_or(JwtError::Algorithm)?;
        let keys = self.keys.load_full().ok_or(JwtError::NoKeys)?;
        let claims = match h.kid.as_ref().filter(|_| keys.has_kids()) {
            Some(kid) => {
                let k = keys.by_kid(kid).ok_or(JwtError::UnknownKey)?;
                jwt::verify(token, h.alg, k, validation)?
            }
            None => {
                // Without a kid, the first few keys of the algorithm's family are tried;
                // the first whose signature verifies decides.
                let mut result = Err(JwtError::UnknownKey);
                for k in keys
                    .keys
                    .iter()
                    .filter(|k| k.fits(h.alg))
                    .take(MAX_KEYS_WITHOUT_KID)
                {
                    result = jwt::verify(token, h.alg, k, validation);
                    if !matches!(result, Err(JwtError::BadSignature)) {
                        break;
                    }
                }
                result?
            }
        };
        let exp = jwt::check_claims(&claims, &self.rules, now)?;
        // Empty, too long, or holding a control character (it could not be sent as
        // X-Consumer-ID): refused.
        let value = match claims.get(&self.consumer_claim) {
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= MAX_CONSUMER_CLAIM
                    && crate::util::http::safe_header_value(s.as_bytes()) =>
            {
                s.clone()
            }
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(JwtError::Claims),
        };
        let (subject, subject_header): (Arc<str>, _) = match self.consumer_map {
            ConsumerMap::Namespaced => {
                let id = format!("{}:{value}", self.name);
                let header = HeaderValue::from_str(&id).map_err(|_| JwtError::Claims)?;
                (Arc::from(id), Some(header))
            }
            ConsumerMap::Consumers => (Arc::from(value), None),
        };
        let scopes = jwt::scopes(&claims, &self.scopes_claim).into();
        Ok(Verified {
            claims: Arc::new(claims),
            exp,
            subject,
            subject_header,
            scopes,
        })
    }

    /// Verify `token`; an unknown `kid` (or no key set yet) may trigger one refetch,
    /// subject to the cooldown.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Arc<Verified>, JwtError> {
        match self.verify_sync(token, now) {
            Err(e @ (JwtError::UnknownKey | JwtError::NoKeys)) if self.url.is_some() => {
                if self.refetch().await {
                    self.verify_sync(token, now)
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    fn cooldown_passed(&self) -> bool {
        let last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| t.elapsed() >= self.cooldown)
    }

    fn mark_attempt(&self) {
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// One refetch if the cooldown allows; true when the caller should look again. A fetch
    /// already in flight (the refresh loop's, or another request's) is waited for rather
    /// than repeated, so a request arriving while the first key set loads is not refused.
    async fn refetch(&self) -> bool {
        let _g = self.fetch_lock.lock().await;
        if !self.cooldown_passed() {
            // Someone fetched within the cooldown (perhaps while this one waited).
            return true;
        }
        self.mark_attempt();
        self.fetch_now().await
    }

    /// Fetch and install the JWKS; false on failure (the last good set stays).
    async fn fetch_now(&self) -> bool {
        let Some(url) = &self.url else {
            return false;
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let got = super::fetch::get(url, FETCH_TIMEOUT, jwk::MAX_JWKS_BYTES)
            .await
            .and_then(|body| jwk::parse_jwks(&body));
        match got {
            Ok(set) => {
                let n = set.keys.len();
                if self.set_keys(set) {
                    log::info!("jwt provider `{}`: key set updated ({n} keys)", self.name);
                }
                true
            }
            Err(e) => {
                let kept = if self.keys.load().is_some() {
                    "keeping the last good key set"
                } else {
                    "no key set yet: its routes answer 503"
                };
                log::warn!(
                    "jwt provider `{}`: JWKS fetch failed: {e}; {kept}",
                    self.name
                );
                false
            }
        }
    }
}

/// Start the refresh loop of a `jwks_url` provider on the current tokio runtime. It holds
/// a `Weak` reference and ends once the provider (its config generation) is dropped.
pub fn spawn_refresh(p: &Arc<JwtProvider>) {
    if p.url.is_none() {
        return;
    }
    let weak = Arc::downgrade(p);
    tokio::spawn(async move {
        loop {
            let wait = {
                let Some(p) = weak.upgrade() else {
                    break;
                };
                let ok = {
                    let _g = p.fetch_lock.lock().await;
                    p.mark_attempt();
                    p.fetch_now().await
                };
                if ok {
                    p.refresh
                } else {
                    p.cooldown.max(Duration::from_secs(1)).min(p.refresh)
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
}

#[cfg(test)]
#[path = "provider_tests.rs"]
mod tests;
