//! Token and key helpers for tests, benchmarks and tooling: generate signing keys with
//! their public JWK, and sign JWTs with any supported algorithm (or forge raw ones). Not
//! used on the request path.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::{hash, MessageDigest};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer};
use serde_json::{json, Value};

/// A key that signs tokens.
pub enum SigningKey {
    /// RSA, EC or Ed25519 private key.
    Private(PKey<Private>),
    /// An HS* secret.
    Secret(Vec<u8>),
}

/// base64url without padding.
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A 2048-bit RSA key and its public JWK named `kid`.
pub fn rsa(kid: &str) -> Result<(SigningKey, Value), openssl::error::ErrorStack> {
    let rsa = Rsa::generate(2048)?;
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig",
        "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
    Ok((SigningKey::Private(PKey::from_rsa(rsa)?), jwk))
}

/// A P-256 (`es384` false) or P-384 key and its public JWK.
pub fn ec(kid: &str, es384: bool) -> Result<(SigningKey, Value), openssl::error::ErrorStack> {
    let (nid, crv, n) = if es384 {
        (Nid::SECP384R1, "P-384", 48)
    } else {
        (Nid::X9_62_PRIME256V1, "P-256", 32)
    };
    let group = EcGroup::from_curve_name(nid)?;
    let key = EcKey::generate(&group)?;
    let mut ctx = BigNumContext::new()?;
    let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
    key.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)?;
    let jwk = json!({"kty": "EC", "kid": kid, "crv": crv,
        "x": b64(&x.to_vec_padded(n)?), "y": b64(&y.to_vec_padded(n)?)});
    Ok((SigningKey::Private(PKey::from_ec_key(key)?), jwk))
}

/// An Ed25519 key and its public JWK.
pub fn ed25519(kid: &str) -> Result<(SigningKey, Value), openssl::error::ErrorStack> {
    let key = PKey::generate_ed25519()?;
    let jwk = json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(&key.raw_public_key()?)});
    Ok((SigningKey::Private(key), jwk))
}

/// A JWKS document of `keys`.
pub fn jwks(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// Assemble `header.claims.signature` from raw JSON texts and signature bytes.
pub fn raw(header: &str, claims: &str, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(claims.as_bytes()),
        b64(sig)
    )
}

/// Sign `header` (its `alg` picks the algorithm) and `claims` with `key`.
pub fn sign(key: &SigningKey, header: &Value, claims: &Value) -> Result<String, String> {
    let alg = header["alg"].as_str().ok_or("header without alg")?;
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign_bytes(key, alg, input.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// Sign with `alg` and an optional `kid`.
pub fn token(
    key: &SigningKey,
    alg: &str,
    kid: Option<&str>,
    claims: &Value,
) -> Result<String, String> {
    let mut h = json!({"alg": alg, "typ": "JWT"});
    if let Some(k) = kid {
        h["kid"] = json!(k);
    }
    sign(key, &h, claims)
}

fn md_for(alg: &str) -> MessageDigest {
    if alg.ends_with("384") {
        MessageDigest::sha384()
    } else if alg.ends_with("512") {
        MessageDigest::sha512()
    } else {
        MessageDigest::sha256()
    }
}

/// The raw JWS signature of `input`.
pub fn sign_bytes(
    key: &SigningKey,
    alg: &str,
    input: &[u8],
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let md = md_for(alg);
    match key {
        SigningKey::Secret(s) => {
            let pk = PKey::hmac(s)?;
            Signer::new(md, &pk)?.sign_oneshot_to_vec(input)
        }
        SigningKey::Private(pk) if alg == "EdDSA" => {
            Signer::new_without_digest(pk)?.sign_oneshot_to_vec(input)
        }
        SigningKey::Private(pk) if alg.starts_with("ES") => {
            let ec = pk.ec_key()?;
            let n = if alg == "ES384" { 48 } else { 32 };
            let sig = EcdsaSig::sign(&hash(md, input)?, &ec)?;
            let mut out = sig.r().to_vec_padded(n)?;
            out.extend(sig.s().to_vec_padded(n)?);
            Ok(out)
        }
        SigningKey::Private(pk) => {
            let mut s = Signer::new(md, pk)?;
            if alg.starts_with("PS") {
                s.set_rsa_padding(Padding::PKCS1_PSS)?;
                s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                s.set_rsa_mgf1_md(md)?;
            }
            s.update(input)?;
            s.sign_to_vec()
        }
    }
}
