//! JWT (JWS compact form) verification through `jsonwebtoken`, with moat's own strictness
//! as a thin layer where the crate is lenient:
//! - before it ([`decode_header`]): a size bound; exactly three segments; a header that is
//!   a JSON object without duplicate keys (two parsers must never disagree on `alg`),
//!   whose `alg` is in the provider's allowlist, whose `kid` is a short string, and
//!   without `crit` (the crate accepts `crit: ["b64"]`; moat implements no JWS extension);
//! - the crate ([`verify`], [`jsonwebtoken::decode`]): base64url, the signature with the
//!   key moat chose (never one named by `jku`, `x5u`, `x5c` or `jwk`: keys only ever come
//!   from the provider's configured source), `exp` present, `iss` and `aud` when
//!   configured; the claims are read into an object that refuses duplicate keys;
//! - after it ([`check_claims`]): `exp` and `nbf` against moat's clock with the leeway
//!   (the crate reads the system clock itself, while the verified-token cache needs the
//!   same `now` for both), `iat` a number when present, `iss` a single string.

use super::jwk::{Alg, Key};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
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

/// Check `token`'s form and header against `allowed`, before any key or signature work.
pub fn decode_header(token: &str, allowed: &[Alg]) -> Result<Header, JwtError> {
    if token.len() > MAX_TOKEN_BYTES || token.is_empty() {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let json = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    let header = serde_json::from_slice::<StrictObject>(&json)
        .map_err(|_| JwtError::Malformed)?
        .0;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a,
        _ => return Err(JwtError::Malformed),
    };
    let alg = super::jwk::parse_alg(alg)
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
    Ok(Header { alg, kid })
}

/// Make aws-lc `jsonwebtoken`'s crypto provider for the process (once; later calls and an
/// earlier choice are left alone). With `aws_lc_rs` as its only backend feature the crate
/// picks it by itself, but a binary built on moat whose other crates also enable
/// `rust_crypto` would leave it two, and the crate then panics at its first use. A custom
/// binary that wants another provider installs it before compiling moat's runtime (the
/// first one installed stays; `install_default` returns an error to a later caller).
pub fn install_backend() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
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

/// What the crate checks for tokens signed with `alg` under `rules`: the signature, `exp`
/// present, `iss` and `aud`. Times are left to [`check_claims`].
///
/// The crate checks `aud` and `iss` only when the token carries them: a rule moat sets is
/// also made a required claim, so a token without `aud` (or with `"aud": null`) is refused
/// by a provider with `audiences`, and one without `iss` by a provider with `issuer`.
pub fn validation(alg: Alg, rules: &ClaimRules) -> Validation {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = !rules.audiences.is_empty();
    if v.validate_aud {
        v.set_audience(&rules.audiences);
        v.required_spec_claims.insert("aud".to_string());
    }
    if let Some(iss) = &rules.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".to_string());
    }
    v
}

/// Verify `token` (whose header passed [`decode_header`] with `alg`) with `key`; its claims.
/// A key of another family than `alg` is a bad signature, never an attempt.
pub fn verify(
    token: &str,
    alg: Alg,
    key: &Key,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtError> {
    if !key.fits(alg) {
        return Err(JwtError::BadSignature);
    }
    jsonwebtoken::decode::<StrictObject>(token, &key.decoding, validation)
        .map(|data| data.claims.0)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => JwtError::Algorithm,
            ErrorKind::MissingRequiredClaim(_)
            | ErrorKind::InvalidClaimFormat(_)
            | ErrorKind::InvalidIssuer
            | ErrorKind::InvalidAudience
            | ErrorKind::InvalidSubject => JwtError::Claims,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            _ => JwtError::Malformed,
        })
}

fn numeric(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// Check the time claims at `now`, and that `iss` is one string; returns `exp` (UNIX
/// seconds). `iss` and `aud` values were matched by the crate.
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
    if rules.issuer.is_some() && !claims.get("iss").is_some_and(Value::is_string) {
        return Err(JwtError::Claims);
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
