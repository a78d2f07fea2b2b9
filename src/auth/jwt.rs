//! JWT (JWS compact form) decoding and verification with `openssl`: strict parsing (three
//! base64url segments, JSON objects without duplicate keys, a size bound), the provider's
//! algorithm allowlist, signature checks per algorithm family (ECDSA signatures checked
//! for length and for `r`, `s` in `[1, n-1]`), and claim checks (`exp` required, `nbf`,
//! `iss`, `aud`, leeway). `jku`, `x5u`, `x5c` and `jwk` headers are ignored: keys only
//! ever come from the provider's configured source. A `crit` header is refused, since
//! moat implements no JWS extension.

use super::jwk::{Alg, Jwk, Material};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::hash;
use openssl::pkey::PKey;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use serde_json::{Map, Value};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `kid` accepted.
pub const MAX_KID_LEN: usize = 256;

/// Why a token was refused: a short category, safe for logs, metrics and bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not a well-formed JWS (segments, base64, JSON, header fields, size).
    Malformed,
    /// `alg` outside the provider's allowlist.
    Algorithm,
    /// No key with this `kid` (or none fitting the algorithm).
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` passed (beyond the leeway).
    Expired,
    /// `nbf` in the future (beyond the leeway).
    NotYetValid,
    /// `exp` missing or not a number, or `iss` / `aud` wrong.
    Claims,
    /// The provider has no key set yet (fail closed: 503).
    NoKeys,
}

impl JwtError {
    /// The metric / log reason.
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed",
            JwtError::Algorithm => "algorithm",
            JwtError::UnknownKey => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Claims => "claims",
            JwtError::NoKeys => "no_keys",
        }
    }
}

/// The JOSE header fields moat uses.
#[derive(Debug, Clone)]
pub struct Header {
    /// The algorithm (already checked against the allowlist).
    pub alg: Alg,
    /// The key id.
    pub kid: Option<String>,
}

/// A decoded, not yet verified token.
pub struct Decoded<'a> {
    /// The header.
    pub header: Header,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'a [u8],
    /// The raw signature.
    pub signature: Vec<u8>,
    /// The claims.
    pub claims: Map<String, Value>,
}

/// A JSON object that refuses duplicate keys at its top level (where a duplicate would
/// let two parsers disagree on `alg`, `exp` or `sub`).
struct StrictObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<StrictObject, A::Error> {
                let mut out = Map::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v: Value = m.next_value()?;
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                }
                Ok(StrictObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn b64(seg: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(seg).map_err(|_| JwtError::Malformed)
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, JwtError> {
    serde_json::from_slice::<StrictObject>(bytes)
        .map(|o| o.0)
        .map_err(|_| JwtError::Malformed)
}

/// Decode `token` and check its header against `allowed`.
pub fn decode<'a>(token: &'a str, allowed: &[Alg]) -> Result<Decoded<'a>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES || token.is_empty() {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = object(&b64(h)?)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a,
        _ => return Err(JwtError::Malformed),
    };
    let alg = Alg::parse(alg)
        .filter(|a| allowed.contains(a))
        .ok_or(JwtError::Algorithm)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_KID_LEN => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    if header.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    let signature = b64(s)?;
    if signature.is_empty() {
        return Err(JwtError::BadSignature);
    }
    let claims = object(&b64(p)?)?;
    Ok(Decoded {
        header: Header { alg, kid },
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
        claims,
    })
}

/// Verify `sig` over `input` with `key` under `alg`. The caller checked `key.fits(alg)`.
pub fn verify_signature(alg: Alg, key: &Jwk, input: &[u8], sig: &[u8]) -> bool {
    if !key.fits(alg) {
        return false;
    }
    verify_inner(alg, &key.material, input, sig).unwrap_or(false)
}

fn verify_inner(
    alg: Alg,
    key: &Material,
    input: &[u8],
    sig: &[u8],
) -> Result<bool, openssl::error::ErrorStack> {
    use Alg::*;
    match (key, alg) {
        (Material::Rsa(pk), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => {
            let Some(md) = alg.digest() else {
                return Ok(false);
            };
            if sig.len() != pk.size() {
                return Ok(false);
            }
            let mut v = Verifier::new(md, pk)?;
            if matches!(alg, PS256 | PS384 | PS512) {
                v.set_rsa_padding(Padding::PKCS1_PSS)?;
                v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                v.set_rsa_mgf1_md(md)?;
            }
            v.update(input)?;
            v.verify(sig)
        }
        (Material::Ec(ec, _), ES256 | ES384) => {
            let Some(md) = alg.digest() else {
                return Ok(false);
            };
            let n = if alg == ES256 { 32 } else { 48 };
            if sig.len() != 2 * n {
                return Ok(false);
            }
            let r = BigNum::from_slice(&sig[..n])?;
            let s = BigNum::from_slice(&sig[n..])?;
            let mut order = BigNum::new()?;
            let mut ctx = BigNumContext::new()?;
            ec.group().order(&mut order, &mut ctx)?;
            let zero = BigNum::new()?;
            for x in [&r, &s] {
                if *x <= zero || *x >= order {
                    return Ok(false);
                }
            }
            let digest = hash(md, input)?;
            EcdsaSig::from_private_components(r, s)?.verify(&digest, ec)
        }
        (Material::Ed25519(pk), EdDSA) => {
            let mut v = Verifier::new_without_digest(pk)?;
            v.verify_oneshot(sig, input)
        }
        (Material::Hmac(secret), HS256 | HS384 | HS512) => {
            let Some(md) = alg.digest() else {
                return Ok(false);
            };
            let pk = PKey::hmac(secret)?;
            let mut signer = Signer::new(md, &pk)?;
            let mac = signer.sign_oneshot_to_vec(input)?;
            Ok(mac.len() == sig.len() && openssl::memcmp::eq(&mac, sig))
        }
        _ => Ok(false),
    }
}

/// Claim rules of a provider.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// `aud` must name one of these, when any.
    pub audiences: Vec<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway: i64,
}

fn numeric(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// Check the time and identity claims at `now`; returns `exp` (UNIX seconds).
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: i64,
) -> Result<i64, JwtError> {
    let exp = claims
        .get("exp")
        .and_then(numeric)
        .ok_or(JwtError::Claims)?;
    if (now as f64) > exp + rules.leeway as f64 {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric(nbf).ok_or(JwtError::Claims)?;
        if ((now + rules.leeway) as f64) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = claims.get("iat") {
        numeric(iat).ok_or(JwtError::Claims)?;
    }
    if let Some(iss) = &rules.issuer {
        if claims.get("iss").and_then(|v| v.as_str()) != Some(iss.as_str()) {
            return Err(JwtError::Claims);
        }
    }
    if !rules.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str())
                .any(|a| rules.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Claims);
        }
    }
    Ok(exp.floor() as i64)
}

/// Scopes from a claim: a space-separated string or an array of strings.
pub fn scopes(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}
