//! JWT verification keys: JWK / JWKS documents, PEM public keys and HS* secrets, read with
//! `jsonwebtoken`'s types (its [`Jwk`](jsonwebtoken::jwk::Jwk) and PEM readers) and kept
//! as its [`DecodingKey`]s. moat's policy on top:
//! - a key is only ever used with the algorithm family it belongs to (RSA keys for RS/PS,
//!   P-256 for ES256, P-384 for ES384, Ed25519 for EdDSA, secrets for HS*), and with the
//!   one algorithm its JWK names, if it names one: no key-confusion attack;
//! - RSA moduli from 2048 to 8192 bits with an odd exponent from 3 to 2^33 − 1 (what the
//!   verification backend, aws-lc, implements), EC points valid on their curve (checked by
//!   aws-lc itself, the library that verifies), Ed25519 keys of 32 bytes (aws-lc checks only
//!   their length: a bad point loads and then fails every token), HS* secrets of at least
//!   32 bytes: all checked when the keys load, so a key that could never verify is refused
//!   there with its reason rather than failing every token;
//! - keys not meant for signatures (`use` other than `sig`) and secret (`oct`) keys are
//!   skipped in a JWKS (a JWKS is public; an HS* secret comes only from `secret_env`).

use aws_lc_rs::signature::{self as lc, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk as JwkDoc, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// A JWS algorithm: `jsonwebtoken`'s, which implements every one moat accepts.
pub use jsonwebtoken::Algorithm as Alg;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (the most aws-lc verifies with).
pub const MAX_RSA_BITS: usize = 8192;
/// Smallest HS* secret accepted, in bytes (RFC 7518 §3.2: at least the hash size of HS256).
pub const MIN_HMAC_SECRET: usize = 32;
/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Every algorithm moat verifies: all that `jsonwebtoken` implements.
pub const ALGORITHMS: [Alg; 12] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::EdDSA,
    Alg::HS256,
    Alg::HS384,
    Alg::HS512,
];

/// The algorithm of an exact (case-sensitive) JOSE name; `none` and every name
/// `jsonwebtoken` does not implement give `None`. (An [`Alg`]'s `Debug` form is its name.)
pub fn parse_alg(name: &str) -> Option<Alg> {
    name.parse().ok().filter(|a| ALGORITHMS.contains(a))
}

/// What a key is, hence which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// RSA public key: RS*, PS*.
    Rsa,
    /// EC public key on P-256: ES256.
    P256,
    /// EC public key on P-384: ES384.
    P384,
    /// Ed25519 public key: EdDSA.
    Ed25519,
    /// HS* secret.
    Secret,
}

/// One verification key.
pub struct Key {
    /// `kid`, when the source names keys.
    pub kid: Option<String>,
    /// The one algorithm the key is restricted to, when its JWK says.
    pub alg: Option<Alg>,
    /// What the key is.
    pub family: Family,
    /// The key, decoded once, as the JWT library uses it.
    pub decoding: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        use Alg::*;
        match self.family {
            Family::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Family::P256 => alg == ES256,
            Family::P384 => alg == ES384,
            Family::Ed25519 => alg == EdDSA,
            Family::Secret => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// A set of keys, looked up by `kid`.
#[derive(Default)]
pub struct KeySet {
    /// Every key, in document order.
    pub keys: Vec<Arc<Key>>,
    by_kid: HashMap<String, Arc<Key>>,
    fingerprint: [u8; 32],
}

impl KeySet {
    /// Build from keys (a later duplicate `kid` is ignored).
    pub fn new(keys: Vec<Key>) -> KeySet {
        let keys: Vec<Arc<Key>> = keys.into_iter().map(Arc::new).collect();
        let mut by_kid = HashMap::new();
        for k in &keys {
            if let Some(kid) = &k.kid {
                by_kid.entry(kid.clone()).or_insert_with(|| Arc::clone(k));
            }
        }
        let fingerprint = fingerprint(&keys);
        KeySet {
            keys,
            by_kid,
            fingerprint,
        }
    }

    /// SHA-256 of every key's `kid`, algorithm, family and key material, in document
    /// order (which decides the keys tried for a token without `kid`): two sets with the
    /// same fingerprint verify exactly the same tokens, however their documents were
    /// formatted.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The key named `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<Key>> {
        self.by_kid.get(kid)
    }

    /// True when some key has a `kid` (a PEM key or an HS* secret has none, and a
    /// token's `kid` is then ignored rather than refused).
    pub fn has_kids(&self) -> bool {
        !self.by_kid.is_empty()
    }
}

/// See [`KeySet::fingerprint`]. Every field is length-prefixed, so no two different sets
/// feed the hash the same bytes.
fn fingerprint(keys: &[Arc<Key>]) -> [u8; 32] {
    use jsonwebtoken::DecodingKeyKind;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    for k in keys {
        field(&[u8::from(k.kid.is_some())]);
        field(k.kid.as_deref().unwrap_or_default().as_bytes());
        field(format!("{:?}/{:?}", k.alg, k.family).as_bytes());
        match k.decoding.kind() {
            DecodingKeyKind::SecretOrDer(b) => field(b),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                field(n);
                field(e);
            }
        }
    }
    h.finalize().into()
}

/// A base64url field (a trailing `=` padding is tolerated, as some issuers write it).
fn b64(value: &str, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| format!("`{name}` is not base64url"))
}

/// An EC coordinate of `size` bytes; a shorter one (its leading zeros dropped) is padded.
fn coordinate(value: &str, name: &str, size: usize) -> Result<Vec<u8>, String> {
    let raw = b64(value, name)?;
    if raw.len() > size {
        return Err(format!("`{name}` is longer than the curve's {size} bytes"));
    }
    let mut out = vec![0; size - raw.len()];
    out.extend_from_slice(&raw);
    Ok(out)
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// An RSA key from its big-endian modulus and exponent, within moat's bounds.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, String> {
    let (n, e) = (strip_zeros(n), strip_zeros(e));
    let Some(first) = n.first() else {
        return Err("empty RSA modulus".into());
    };
    let bits = n.len() * 8 - first.leading_zeros() as usize;
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA key shorter than {MIN_RSA_BITS} bits"));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!("RSA key longer than {MAX_RSA_BITS} bits"));
    }
    let exponent = (e.len() <= 8).then(|| e.iter().fold(0u64, |v, b| v << 8 | u64::from(*b)));
    if !exponent.is_some_and(|x| x % 2 == 1 && (3..1 << 33).contains(&x)) {
        return Err("RSA exponent must be odd, from 3 to 2^33 - 1".into());
    }
    RsaPublicKeyComponents { n, e }
        .to_parsed_public_key(&lc::RSA_PKCS1_2048_8192_SHA256)
        .map_err(|e| format!("invalid RSA key: {e}"))?;
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

/// Whether aws-lc reads `point` as a valid public key of `family` (on its curve).
fn valid_point(family: Family, point: &[u8]) -> bool {
    let alg: &'static dyn lc::VerificationAlgorithm = match family {
        Family::P256 => &lc::ECDSA_P256_SHA256_FIXED,
        Family::P384 => &lc::ECDSA_P384_SHA384_FIXED,
        Family::Ed25519 => &lc::ED25519,
        Family::Rsa | Family::Secret => return false,
    };
    UnparsedPublicKey::new(alg, point).parse().is_ok()
}

/// A key from the JWT library's JWK form, under moat's policy. `raw` is the same JWK as
/// JSON when there is one, for error messages.
fn from_doc(doc: &JwkDoc, raw: Option<&serde_json::Value>) -> Result<Key, String> {
    let field = |name: &str| {
        raw.and_then(|v| v.get(name))
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
    match &doc.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signing key (`use`)".into()),
    }
    let alg = match doc.common.key_algorithm {
        None => None,
        Some(a) => Some(
            Alg::try_from(a)
                .ok()
                .filter(|a| ALGORITHMS.contains(a))
                .ok_or_else(|| format!("unsupported alg `{}`", field("alg")))?,
        ),
    };
    let (family, decoding) = match &doc.algorithm {
        AlgorithmParameters::RSA(p) => (Family::Rsa, rsa_key(&b64(&p.n, "n")?, &b64(&p.e, "e")?)?),
        AlgorithmParameters::EllipticCurve(p) => {
            let (family, size) = match p.curve {
                EllipticCurve::P256 => (Family::P256, 32),
                EllipticCurve::P384 => (Family::P384, 48),
                _ => return Err(format!("unsupported curve `{}`", field("crv"))),
            };
            let mut point = vec![4u8];
            point.extend(coordinate(&p.x, "x", size)?);
            point.extend(coordinate(&p.y, "y", size)?);
            if !valid_point(family, &point) {
                return Err("the point is not on its curve".into());
            }
            (family, DecodingKey::from_ec_der(&point))
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            let x = b64(&p.x, "x")?;
            if x.len() != 32 {
                return Err("an Ed25519 key is 32 bytes".into());
            }
            if !valid_point(Family::Ed25519, &x) {
                return Err("not a valid Ed25519 point".into());
            }
            (Family::Ed25519, DecodingKey::from_ed_der(&x))
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("secret (`oct`) keys are not taken from a JWKS".into())
        }
        _ => {
            return Err(format!(
                "unsupported or incomplete key (kty `{}`, crv `{}`)",
                field("kty"),
                field("crv")
            ))
        }
    };
    Ok(Key {
        kid: doc.common.key_id.clone(),
        alg,
        family,
        decoding,
    })
}

/// Decode one JWK object. Keys not meant for signatures (`use` other than `sig`), of an
/// unsupported type, or outside the bounds above are refused with a reason.
pub fn parse_jwk(v: &serde_json::Value) -> Result<Key, String> {
    if !v.is_object() {
        return Err("a JWK must be an object".into());
    }
    let doc = JwkDoc::deserialize(v).map_err(|e| format!("not a JWK: {e}"))?;
    from_doc(&doc, Some(v))
}

/// Decode a JWKS document (`{"keys": [...]}`). Unusable keys are skipped; a document
/// with no usable key is an error (with the first key's reason).
pub fn parse_jwks(text: &[u8]) -> Result<KeySet, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err("JWKS document too large".into());
    }
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no `keys` array")?;
    let mut first_refusal = None;
    let keys: Vec<Key> = list
        .iter()
        .filter_map(|k| {
            parse_jwk(k)
                .map_err(|e| first_refusal.get_or_insert(e))
                .ok()
        })
        .collect();
    if keys.is_empty() {
        return Err(match first_refusal {
            Some(why) => format!("no usable signing key (the first: {why})"),
            None => "no usable signing key".into(),
        });
    }
    Ok(KeySet::new(keys))
}

/// Decode a PEM public key (or the key of a PEM certificate): RSA, EC P-256/P-384 or
/// Ed25519, read by the JWT library and checked as a JWK would be.
pub fn parse_pem(text: &[u8]) -> Result<KeySet, String> {
    super::jwt::install_backend();
    let key = DecodingKey::from_rsa_pem(text)
        .or_else(|_| DecodingKey::from_ec_pem(text))
        .or_else(|_| DecodingKey::from_ed_pem(text))
        .map_err(|_| "not a PEM public key or certificate (RSA, EC or Ed25519)".to_string())?;
    let doc = JwkDoc::from_decoding_key(&key, None).map_err(|e| format!("invalid key: {e}"))?;
    Ok(KeySet::new(vec![from_doc(&doc, None)?]))
}

/// An HS* secret as a one-key set.
pub fn hmac_set(secret: Vec<u8>) -> Result<KeySet, String> {
    if secret.len() < MIN_HMAC_SECRET {
        return Err(format!(
            "the secret must be at least {MIN_HMAC_SECRET} bytes"
        ));
    }
    let decoding = DecodingKey::from_secret(&secret).map_err(|e| e.to_string())?;
    Ok(KeySet::new(vec![Key {
        kid: None,
        alg: None,
        family: Family::Secret,
        decoding,
    }]))
}

#[cfg(test)]
#[path = "jwk_tests.rs"]
mod tests;
