//! Unit tests of key loading: JWKS documents (RSA, EC, OKP; what is skipped and why),
//! PEM keys and certificates, the bounds on each key type, and algorithm names.

use super::*;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// The affine coordinates of a fresh key on `nid`, `n` bytes each.
fn ec_xy(nid: Nid, n: i32) -> (Vec<u8>, Vec<u8>) {
    let group = EcGroup::from_curve_name(nid).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let mut ctx = BigNumContext::new().unwrap();
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    (x.to_vec_padded(n).unwrap(), y.to_vec_padded(n).unwrap())
}

#[test]
fn rsa_ec_okp_jwks() {
    let rsa = Rsa::generate(2048).unwrap();
    let (x, y) = ec_xy(Nid::X9_62_PRIME256V1, 32);
    let ed = PKey::generate_ed25519().unwrap();
    let doc = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "r", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec()), "alg": "RS256", "use": "sig"},
        {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&x), "y": b64(&y)},
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
    assert!(parse_alg("none").is_none());
    assert!(parse_alg("hs256").is_none());
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
    let ed = PKey::generate_ed25519().unwrap();
    let set = parse_pem(&ed.public_key_to_pem().unwrap()).unwrap();
    assert!(set.keys[0].fits(Alg::EdDSA));
}

#[test]
fn pem_certificate_key() {
    use openssl::x509::{X509Name, X509};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_text("CN", "issuer.test").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
    let later = openssl::asn1::Asn1Time::days_from_now(1).unwrap();
    b.set_not_before(&now).unwrap();
    b.set_not_after(&later).unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let set = parse_pem(&b.build().to_pem().unwrap()).unwrap();
    assert!(set.keys[0].fits(Alg::RS256));
}

/// Each refusal of a single JWK, with its reason.
#[test]
fn jwk_refusals_say_why() {
    let rsa = |bits: u32| {
        let k = Rsa::generate(bits).unwrap();
        (b64(&k.n().to_vec()), b64(&k.e().to_vec()))
    };
    let (n, e) = rsa(2048);
    let (n512, e512) = (
        b64(&Rsa::generate(512).unwrap().n().to_vec()),
        b64(&[1, 0, 1]),
    );
    let (x, y) = ec_xy(Nid::X9_62_PRIME256V1, 32);
    let (x5, y5) = ec_xy(Nid::SECP521R1, 66);
    let mut off = y.clone();
    off[31] ^= 1;
    let cases = [
        (serde_json::json!([1]), "must be an object"),
        (
            serde_json::json!({"kty": "RSA", "n": n, "e": e, "use": "enc"}),
            "not a signing key",
        ),
        (
            serde_json::json!({"kty": "RSA", "n": n, "e": e, "alg": "ES512"}),
            "unsupported alg `ES512`",
        ),
        (
            serde_json::json!({"kty": "RSA", "n": n512, "e": e512}),
            "shorter than 2048 bits",
        ),
        (
            serde_json::json!({"kty": "RSA", "n": "AA", "e": e.clone()}),
            "empty RSA modulus",
        ),
        (
            serde_json::json!({"kty": "RSA", "n": "", "e": e.clone()}),
            "empty RSA modulus",
        ),
        (
            serde_json::json!({"kty": "RSA", "n": n, "e": b64(&[2])}),
            "exponent",
        ),
        (
            serde_json::json!({"kty": "RSA", "n": "!!", "e": e}),
            "`n` is not base64url",
        ),
        (
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&x), "y": b64(&off)}),
            "not on its curve",
        ),
        (
            serde_json::json!({"kty": "EC", "crv": "P-521", "x": b64(&x5), "y": b64(&y5)}),
            "unsupported curve `P-521`",
        ),
        (
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 33]), "y": b64(&y)}),
            "longer than the curve",
        ),
        (
            serde_json::json!({"kty": "EC", "crv": "secp256k1", "x": b64(&x), "y": b64(&y)}),
            "kty `EC`, crv `secp256k1`",
        ),
        (
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&x)}),
            "incomplete",
        ),
        (
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[7; 31])}),
            "32 bytes",
        ),
        (
            serde_json::json!({"kty": "OKP", "crv": "Ed448", "x": b64(&[7; 57])}),
            "crv `Ed448`",
        ),
        (
            serde_json::json!({"kty": "oct", "k": b64(&[7; 32])}),
            "`oct`",
        ),
        (
            serde_json::json!({"kty": "RSA", "kid": 7, "n": n, "e": e}),
            "not a JWK",
        ),
    ];
    for (jwk, why) in cases {
        let err = parse_jwk(&jwk).err().unwrap_or_default();
        assert!(err.contains(why), "{jwk}: {err:?}, expected {why:?}");
    }
    // An 8,200-bit modulus (its size is checked before anything else).
    let err = parse_jwk(&serde_json::json!({"kty": "RSA", "n": b64(&[0xc5; 1025]), "e": e}));
    let err = err.err().unwrap_or_default();
    assert!(err.contains("longer than 8192"), "{err}");
}

#[test]
fn lenient_encodings_still_read() {
    // A padded base64url field and an EC coordinate without its leading zero byte.
    let (n, e) = {
        let k = Rsa::generate(2048).unwrap();
        (k.n().to_vec(), k.e().to_vec())
    };
    let padded = format!("{}==", b64(&n));
    let k = parse_jwk(&serde_json::json!({"kty": "RSA", "n": padded, "e": b64(&e)})).unwrap();
    assert_eq!(k.family, Family::Rsa);
    let (mut x, mut y) = ec_xy(Nid::X9_62_PRIME256V1, 32);
    while x[0] != 0 {
        (x, y) = ec_xy(Nid::X9_62_PRIME256V1, 32);
    }
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&x[1..]), "y": b64(&y)});
    assert_eq!(parse_jwk(&jwk).unwrap().family, Family::P256);
}

#[test]
fn a_jwk_alg_restricts_its_key() {
    let k = Rsa::generate(2048).unwrap();
    let jwk = serde_json::json!({"kty": "RSA", "alg": "PS384", "n": b64(&k.n().to_vec()), "e": b64(&k.e().to_vec())});
    let key = parse_jwk(&jwk).unwrap();
    assert!(key.fits(Alg::PS384) && !key.fits(Alg::RS256) && !key.fits(Alg::PS256));
}

#[test]
fn algorithm_names() {
    for a in ALGORITHMS {
        assert_eq!(parse_alg(&format!("{a:?}")), Some(a));
    }
    for refused in ["none", "ES512", "ES256K", "Ed25519", "rs256", ""] {
        assert_eq!(parse_alg(refused), None, "{refused}");
    }
}

#[test]
fn a_jwks_without_usable_keys_says_why() {
    let doc = serde_json::json!({"keys": [{"kty": "oct", "k": b64(&[7; 32])}]});
    let err = parse_jwks(doc.to_string().as_bytes())
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("no usable signing key") && err.contains("`oct`"),
        "{err}"
    );
}
