//! The consumers store: `consumers:` compiled for lookups on the request path. API keys
//! are indexed by the SHA-256 of the key (the config never holds a key), each with its
//! scopes and expiry; HMAC credentials by `key_id`, with the secret read from the
//! environment once, at compile time, and the credential's replay memory (one per secret:
//! see `auth::replay`).

use super::dates;
use super::replay::{LocalReplay, ReplaySet};
use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::Config;
use crate::util::sha256;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;

/// An identity credentials resolve to.
#[derive(Debug)]
pub struct Consumer {
    /// `consumers[].id`.
    pub id: Arc<str>,
    /// The id as the `X-Consumer-ID` value (validation refuses ids that are not one).
    pub header: HeaderValue,
    /// `consumers[].tier`.
    pub tier: Option<Arc<str>>,
    /// `consumers[].jwt_providers`: providers whose tokens may name this consumer.
    pub jwt_providers: Box<[String]>,
}

/// One API key (known only by its hash).
#[derive(Debug)]
pub struct ApiKey {
    /// Who it belongs to.
    pub consumer: Arc<Consumer>,
    /// Scopes granted to requests made with this key.
    pub scopes: Arc<[String]>,
    /// UNIX seconds after which the key is refused.
    pub expires: Option<i64>,
}

/// One HMAC credential.
pub struct HmacKey {
    /// Who it belongs to.
    pub consumer: Arc<Consumer>,
    /// The shared secret (never printed).
    pub secret: Vec<u8>,
    /// Its replay memory on this instance, shared with every credential holding the same
    /// secret (a request signed for one verifies under the other's key id).
    pub replay: Arc<ReplaySet>,
    /// Its replay set's name in Redis: the `key_id` of the first credential in the file
    /// with this secret.
    pub replay_name: Arc<str>,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKey")
            .field("consumer", &self.consumer.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why an API key was refused (a short category, safe to log and count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No consumer has this key (unknown or revoked).
    Unknown,
    /// The key's `expires` has passed.
    Expired,
}

/// The compiled `consumers:`.
#[derive(Debug, Default)]
pub struct ConsumerStore {
    by_id: HashMap<String, Arc<Consumer>>,
    api_keys: HashMap<[u8; 32], ApiKey>,
    hmac: HashMap<String, HmacKey>,
}

impl ConsumerStore {
    /// Compile `cfg.consumers`, recording problems not already reported by validation
    /// (unparsable `expires`); HMAC credentials take their replay memory from `replay`.
    pub fn compile(cfg: &Config, replay: &LocalReplay, errs: &mut ConfigErrors) -> ConsumerStore {
        let mut store = ConsumerStore::default();
        // SHA-256 of each secret → the replay set's name (its first credential's key id).
        let mut names: HashMap<[u8; 32], Arc<str>> = HashMap::new();
        for (i, c) in cfg.consumers.iter().enumerate() {
            let p = index("consumers", i);
            let Ok(header) = HeaderValue::from_str(&c.id) else {
                continue; // reported by validation
            };
            let consumer = Arc::new(Consumer {
                id: Arc::from(c.id.as_str()),
                header,
                tier: c.tier.as_deref().map(Arc::from),
                jwt_providers: c.jwt_providers.clone().into(),
            });
            store.by_id.insert(c.id.clone(), Arc::clone(&consumer));
            for (j, k) in c.api_keys.iter().enumerate() {
                let kp = index(&join(&p, "api_keys"), j);
                let expires = match &k.expires {
                    Some(s) => {
                        match dates::parse_rfc3339(s) {
                            Some(t) => Some(t),
                            None => {
                                errs.push(
                                join(&kp, "expires"),
                                format!("`{s}` is not an RFC 3339 time such as 2027-12-31T00:00:00Z"),
                            );
                                None
                            }
                        }
                    }
                    None => None,
                };
                let mut hash = [0u8; 32];
                if hex::decode_to_slice(k.sha256.to_ascii_lowercase(), &mut hash).is_err() {
                    continue; // reported by validation
                }
                store.api_keys.insert(
                    hash,
                    ApiKey {
                        consumer: Arc::clone(&consumer),
                        scopes: k.scopes.clone().into(),
                        expires,
                    },
                );
            }
            for h in &c.hmac {
                // An unset variable is reported by validation.
                if let Some(secret) = std::env::var_os(&h.secret_env).filter(|v| !v.is_empty()) {
                    let secret = secret.into_encoded_bytes();
                    let id = sha256(&secret);
                    let name = names
                        .entry(id)
                        .or_insert_with(|| Arc::from(h.key_id.as_str()));
                    store.hmac.insert(
                        h.key_id.clone(),
                        HmacKey {
                            consumer: Arc::clone(&consumer),
                            secret,
                            replay: replay.set(id),
                            replay_name: Arc::clone(name),
                        },
                    );
                }
            }
        }
        store
    }

    /// The consumer with this id.
    pub fn consumer(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.by_id.get(id)
    }

    /// The consumer with this id if it lists `provider` in its `jwt_providers` (the one a
    /// token of a `consumer_map: consumers` provider may name).
    pub fn jwt_consumer(&self, provider: &str, id: &str) -> Option<&Arc<Consumer>> {
        self.by_id
            .get(id)
            .filter(|c| c.jwt_providers.iter().any(|p| p == provider))
    }

    /// Look an API key up by its hash; refuse unknown and expired keys.
    pub fn api_key(&self, key: &str, now: i64) -> Result<&ApiKey, KeyRefusal> {
        let entry = self
            .api_keys
            .get(&sha256(key.as_bytes()))
            .ok_or(KeyRefusal::Unknown)?;
        match entry.expires {
            Some(t) if now >= t => Err(KeyRefusal::Expired),
            _ => Ok(entry),
        }
    }

    /// The HMAC credential with this `key_id`.
    pub fn hmac_key(&self, key_id: &str) -> Option<&HmacKey> {
        self.hmac.get(key_id)
    }

    /// True when an HMAC credential exists (for tests and benches).
    pub fn has_hmac(&self) -> bool {
        !self.hmac.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn api_keys_by_hash_with_expiry() {
        let h = hex::encode(sha256(b"secret-key"));
        let old = hex::encode(sha256(b"old-key"));
        let c = cfg(&format!(
            "consumers:\n  - id: acme\n    tier: gold\n    api_keys:\n      - {{ sha256: {h}, scopes: [a, b] }}\n      - {{ sha256: {old}, expires: 2020-01-01T00:00:00Z }}\n"
        ));
        let mut errs = ConfigErrors::default();
        let s = ConsumerStore::compile(&c, &LocalReplay::new(), &mut errs);
        assert!(errs.is_empty());
        let k = s.api_key("secret-key", dates::now_secs()).unwrap();
        assert_eq!(&*k.consumer.id, "acme");
        assert_eq!(k.consumer.tier.as_deref(), Some("gold"));
        assert_eq!(&*k.scopes, ["a".to_string(), "b".to_string()]);
        assert_eq!(
            s.api_key("old-key", dates::now_secs()).unwrap_err(),
            KeyRefusal::Expired
        );
        assert_eq!(s.api_key("nope", 0).unwrap_err(), KeyRefusal::Unknown);
        assert!(s.consumer("acme").is_some());
    }

    #[test]
    fn bad_expiry_is_a_config_error() {
        let h = hex::encode(sha256(b"k"));
        let c = cfg(&format!(
            "consumers:\n  - id: a\n    api_keys:\n      - {{ sha256: {h}, expires: next-tuesday }}\n"
        ));
        let mut errs = ConfigErrors::default();
        ConsumerStore::compile(&c, &LocalReplay::new(), &mut errs);
        assert_eq!(errs.0[0].path, "consumers[0].api_keys[0].expires");
    }

    #[test]
    fn hmac_secret_from_env_never_printed() {
        std::env::set_var("MOAT_TEST_CONSUMER_SECRET", "s3cr3t-value");
        let c = cfg("consumers:\n  - id: a\n    hmac:\n      - { key_id: k1, secret_env: MOAT_TEST_CONSUMER_SECRET }\n");
        let mut errs = ConfigErrors::default();
        let s = ConsumerStore::compile(&c, &LocalReplay::new(), &mut errs);
        let k = s.hmac_key("k1").unwrap();
        assert_eq!(k.secret, b"s3cr3t-value");
        assert!(!format!("{k:?}").contains("s3cr3t"));
    }

    #[test]
    fn credentials_sharing_a_secret_share_one_replay_memory() {
        std::env::set_var("MOAT_TEST_SHARED_SECRET", "shared-s3cr3t");
        std::env::set_var("MOAT_TEST_SHARED_SECRET_2", "shared-s3cr3t");
        std::env::set_var("MOAT_TEST_OWN_SECRET", "own-s3cr3t");
        let c = cfg("consumers:\n  - id: a\n    hmac:\n      - { key_id: a1, secret_env: MOAT_TEST_OWN_SECRET }\n      - { key_id: a2, secret_env: MOAT_TEST_SHARED_SECRET }\n  - id: b\n    hmac:\n      - { key_id: b1, secret_env: MOAT_TEST_SHARED_SECRET_2 }\n");
        let replay = LocalReplay::new();
        let s = ConsumerStore::compile(&c, &replay, &mut ConfigErrors::default());
        let [a1, a2, b1] = ["a1", "a2", "b1"].map(|k| s.hmac_key(k).unwrap());
        assert!(Arc::ptr_eq(&a2.replay, &b1.replay));
        assert_eq!((&*a2.replay_name, &*b1.replay_name), ("a2", "a2"));
        assert!(!Arc::ptr_eq(&a1.replay, &a2.replay));
        assert_eq!(&*a1.replay_name, "a1");
        // The next generation gets the same memories.
        let again = ConsumerStore::compile(&c, &replay, &mut ConfigErrors::default());
        assert!(Arc::ptr_eq(
            &again.hmac_key("a1").unwrap().replay,
            &a1.replay
        ));
        assert_eq!(replay.sets(), 2);
    }
}
