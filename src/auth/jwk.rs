//! JWT verification keys: the algorithms moat accepts, JWK / JWKS documents, PEM public
//! keys and HS* secrets, decoded once into `openssl` keys. A key is only ever used with
//! the algorithm family it belongs to (RSA keys for RS/PS, P-256 for ES256, P-384 for
//! ES384, Ed25519 for EdDSA, secrets for HS*), which rules out key-confusion attacks.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Rsa;
use std::collections::HashMap;
use std::sync::Arc;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;
/// Smallest HS* secret accepted, in bytes (RFC 7518 §3.2: at least the hash size of HS256).
pub const MIN_HMAC_SECRET: usize = 32;
/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A JWS algorithm moat implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    /// Parse the exact (case-sensitive) JOSE name; `none` and anything else is refused.
    pub fn parse(s: &str) -> Option<Alg> {
        use Alg::*;
        Some(match s {
            "RS256" => RS256,
            "RS384" => RS384,
            "RS512" => RS512,
            "PS256" => PS256,
            "PS384" => PS384,
            "PS512" => PS512,
            "ES256" => ES256,
            "ES384" => ES384,
            "EdDSA" => EdDSA,
            "HS256" => HS256,
            "HS384" => HS384,
            "HS512" => HS512,
            _ => return None,
        })
    }

    /// True for HS*.
    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    /// The digest of the algorithm (none for EdDSA).
    pub fn digest(self) -> Option<openssl::hash::MessageDigest> {
        use openssl::hash::MessageDigest as M;
        use Alg::*;
        match self {
            RS256 | PS256 | ES256 | HS256 => Some(M::sha256()),
            RS384 | PS384 | ES384 | HS384 => Some(M::sha384()),
            RS512 | PS512 | HS512 => Some(M::sha512()),
            EdDSA => None,
        }
    }
}

/// Decoded key material.
pub enum Material {
    /// An RSA public key (RS*, PS*).
    Rsa(PKey<Public>),
    /// An EC public key on P-256 or P-384 (ES256, ES384), with its curve.
    Ec(EcKey<Public>, Nid),
    /// An Ed25519 public key (EdDSA).
    Ed25519(PKey<Public>),
    /// An HS* secret.
    Hmac(Vec<u8>),
}

/// One verification key.
pub struct Jwk {
    /// `kid`, when the source names keys.
    pub kid: Option<String>,
    /// `alg` the key is restricted to, when the JWK says.
    pub alg: Option<Alg>,
    /// The key.
    pub material: Material,
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        use Alg::*;
        match (&self.material, alg) {
            (Material::Rsa(_), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => true,
            (Material::Ec(_, nid), ES256) => *nid == Nid::X9_62_PRIME256V1,
            (Material::Ec(_, nid), ES384) => *nid == Nid::SECP384R1,
            (Material::Ed25519(_), EdDSA) => true,
            (Material::Hmac(_), HS256 | HS384 | HS512) => true,
            _ => false,
        }
    }
}

/// A set of keys, looked up by `kid`.
#[derive(Default)]
pub struct KeySet {
    /// Every key, in document order.
    pub keys: Vec<Arc<Jwk>>,
    by_kid: HashMap<String, Arc<Jwk>>,
}

impl KeySet {
    /// Build from keys (a later duplicate `kid` is ignored).
    pub fn new(keys: Vec<Jwk>) -> KeySet {
        let keys: Vec<Arc<Jwk>> = keys.into_iter().map(Arc::new).collect();
        let mut by_kid = HashMap::new();
        for k in &keys {
            if let Some(kid) = &k.kid {
                by_kid.entry(kid.clone()).or_insert_with(|| Arc::clone(k));
            }
        }
        KeySet { keys, by_kid }
    }

    /// The key named `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<Jwk>> {
        self.by_kid.get(kid)
    }

    /// True when some key has a `kid` (a PEM key or an HS* secret has none, and a
    /// token's `kid` is then ignored rather than refused).
    pub fn has_kids(&self) -> bool {
        !self.by_kid.is_empty()
    }

    /// A fingerprint of the kids, to notice rotations.
    pub fn kids(&self) -> Vec<Option<String>> {
        self.keys.iter().map(|k| k.kid.clone()).collect()
    }
}

fn b64_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Vec<u8>, String> {
    let s = obj
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("missing `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("`{name}` is not base64url"))
}

/// Decode one JWK object. Keys not meant for signatures (`use` other than `sig`) or of
/// an unsupported type are refused with a reason.
pub fn parse_jwk(v: &serde_json::Value) -> Result<Jwk, String> {
    let obj = v.as_object().ok_or("a JWK must be an object")?;
    if obj.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return Err("not a signing key (`use`)".into());
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`kid` must be a string".into()),
    };
    let alg = match obj.get("alg").and_then(|a| a.as_str()) {
        Some(a) => Some(Alg::parse(a).ok_or_else(|| format!("unsupported alg `{a}`"))?),
        None => None,
    };
    let kty = obj.get("kty").and_then(|k| k.as_str()).unwrap_or("");
    let crv = obj.get("crv").and_then(|k| k.as_str()).unwrap_or("");
    let err = |e: openssl::error::ErrorStack| format!("invalid key: {e}");
    let material = match kty {
        "RSA" => {
            let n = BigNum::from_slice(&b64_field(obj, "n")?).map_err(err)?;
            let e = BigNum::from_slice(&b64_field(obj, "e")?).map_err(err)?;
            let rsa = Rsa::from_public_components(n, e).map_err(err)?;
            rsa_material(PKey::from_rsa(rsa).map_err(err)?)?
        }
        "EC" => {
            let nid = match crv {
                "P-256" => Nid::X9_62_PRIME256V1,
                "P-384" => Nid::SECP384R1,
                other => return Err(format!("unsupported curve `{other}`")),
            };
            let group = EcGroup::from_curve_name(nid).map_err(err)?;
            let x = BigNum::from_slice(&b64_field(obj, "x")?).map_err(err)?;
            let y = BigNum::from_slice(&b64_field(obj, "y")?).map_err(err)?;
            let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y).map_err(err)?;
            key.check_key().map_err(err)?;
            Material::Ec(key, nid)
        }
        "OKP" if crv == "Ed25519" => {
            let x = b64_field(obj, "x")?;
            Material::Ed25519(PKey::public_key_from_raw_bytes(&x, Id::ED25519).map_err(err)?)
        }
        other => return Err(format!("unsupported key type `{other}` `{crv}`")),
    };
    Ok(Jwk { kid, alg, material })
}

fn rsa_material(pk: PKey<Public>) -> Result<Material, String> {
    if pk.bits() < MIN_RSA_BITS {
        return Err(format!("RSA key shorter than {MIN_RSA_BITS} bits"));
    }
    Ok(Material::Rsa(pk))
}

/// Decode a JWKS document (`{"keys": [...]}`). Unusable keys are skipped; a document
/// with no usable key is an error.
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
    let keys: Vec<Jwk> = list.iter().filter_map(|k| parse_jwk(k).ok()).collect();
    if keys.is_empty() {
        return Err("no usable signing key".into());
    }
    Ok(KeySet::new(keys))
}

/// Decode a PEM public key (or the key of a PEM certificate).
pub fn parse_pem(text: &[u8]) -> Result<KeySet, String> {
    let pk = match PKey::public_key_from_pem(text) {
        Ok(k) => k,
        Err(_) => openssl::x509::X509::from_pem(text)
            .and_then(|c| c.public_key())
            .map_err(|_| "not a PEM public key or certificate".to_string())?,
    };
    let material = match pk.id() {
        Id::RSA => rsa_material(pk)?,
        Id::EC => {
            let ec = pk.ec_key().map_err(|e| e.to_string())?;
            let nid = ec
                .group()
                .curve_name()
                .filter(|n| *n == Nid::X9_62_PRIME256V1 || *n == Nid::SECP384R1)
                .ok_or("unsupported curve (P-256 and P-384 only)")?;
            Material::Ec(ec, nid)
        }
        Id::ED25519 => Material::Ed25519(pk),
        _ => return Err("unsupported key type".into()),
    };
    Ok(KeySet::new(vec![Jwk {
        kid: None,
        alg: None,
        material,
    }]))
}

/// An HS* secret as a one-key set.
pub fn hmac_set(secret: Vec<u8>) -> Result<KeySet, String> {
    if secret.len() < MIN_HMAC_SECRET {
        return Err(format!(
            "the secret must be at least {MIN_HMAC_SECRET} bytes"
        ));
    }
    Ok(KeySet::new(vec![Jwk {
        kid: None,
        alg: None,
        material: Material::Hmac(secret),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::EcKey;
    use openssl::pkey::PKey;

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn rsa_ec_okp_jwks() {
        let rsa = Rsa::generate(2048).unwrap();
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        let ed = PKey::generate_ed25519().unwrap();
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec()), "alg": "RS256", "use": "sig"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())},
            {"kty": "OKP", "kid": "d", "crv": "Ed25519", "x": b64(&ed.raw_public_key().unwrap())},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "o", "k": "c2VjcmV0"},
        ]});
        let set = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 3);
        let r = set.by_kid("r").unwrap();
        assert!(r.fits(Alg::RS256) && !r.fits(Alg::PS256) && !r.fits(Alg::HS256));
        let e = set.by_kid("e").unwrap();
        assert!(e.fits(Alg::ES256) && !e.fits(Alg::ES384) && !e.fits(Alg::RS256));
        assert!(set.by_kid("d").unwrap().fits(Alg::EdDSA));
        assert!(set.by_kid("enc").is_none());
    }

    #[test]
    fn refusals() {
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_jwks(b"not json").is_err());
        let small = Rsa::generate(1024).unwrap();
        let pem = small.public_key_to_pem().unwrap();
        assert!(parse_pem(&pem).is_err());
        assert!(hmac_set(b"short".to_vec()).is_err());
        assert!(Alg::parse("none").is_none());
        assert!(Alg::parse("hs256").is_none());
    }

    #[test]
    fn pem_keys() {
        let rsa = Rsa::generate(2048).unwrap();
        let set = parse_pem(&rsa.public_key_to_pem().unwrap()).unwrap();
        assert!(set.keys[0].fits(Alg::PS512));
        let group = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
        let ec = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let set = parse_pem(&ec.public_key_to_pem().unwrap()).unwrap();
        assert!(set.keys[0].fits(Alg::ES384) && !set.keys[0].fits(Alg::ES256));
    }
}
