//! The consumers store: `consumers:` compiled for lookups on the request path. API keys
//! are indexed by the SHA-256 of the key (the config never holds a key), each with its
//! scopes and expiry; HMAC credentials by `key_id`, with the secret read from the
//! environment once, at compile time.

use super::dates;
use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::Config;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// An identity credentials resolve to.
#[derive(Debug)]
pub struct Consumer {
    /// `consumers[].id`.
    pub id: Arc<str>,
    /// `consumers[].tier`.
    pub tier: Option<Arc<str>>,
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

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl ConsumerStore {
    /// Compile `cfg.consumers`, recording problems not already reported by validation
    /// (unparsable `expires`).
    pub fn compile(cfg: &Config, errs: &mut ConfigErrors) -> ConsumerStore {
        let mut store = ConsumerStore::default();
        for (i, c) in cfg.consumers.iter().enumerate() {
            let p = index("consumers", i);
            let consumer = Arc::new(Consumer {
                id: Arc::from(c.id.as_str()),
                tier: c.tier.as_deref().map(Arc::from),
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
                    store.hmac.insert(
                        h.key_id.clone(),
                        HmacKey {
                            consumer: Arc::clone(&consumer),
                            secret: secret.into_encoded_bytes(),
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
        let s = ConsumerStore::compile(&c, &mut errs);
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
        ConsumerStore::compile(&c, &mut errs);
        assert_eq!(errs.0[0].path, "consumers[0].api_keys[0].expires");
    }

    #[test]
    fn hmac_secret_from_env_never_printed() {
        std::env::set_var("MOAT_TEST_CONSUMER_SECRET", "s3cr3t-value");
        let c = cfg("consumers:\n  - id: a\n    hmac:\n      - { key_id: k1, secret_env: MOAT_TEST_CONSUMER_SECRET }\n");
        let mut errs = ConfigErrors::default();
        let s = ConsumerStore::compile(&c, &mut errs);
        let k = s.hmac_key("k1").unwrap();
        assert_eq!(k.secret, b"s3cr3t-value");
        assert!(!format!("{k:?}").contains("s3cr3t"));
    }
}
