//! HMAC (RFC 2104) over SHA-256/384/512: the `hmac` crate with `sha2`. Checking a MAC is
//! constant-time (`verify_slice`, through `subtle`), so a signature's timing tells an
//! attacker nothing about how much of it was right.

use super::hmac::HmacAlg;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

/// A MAC of type `M` keyed with `key` that has read `data`. HMAC takes keys of any length,
/// so this is never `None` in practice.
fn fed<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Option<M> {
    let mut m = <M as KeyInit>::new_from_slice(key).ok()?;
    m.update(data);
    Some(m)
}

fn tag_of<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    fed::<M>(key, data)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default()
}

fn check<M: Mac + KeyInit>(key: &[u8], data: &[u8], sig: &[u8]) -> bool {
    fed::<M>(key, data).is_some_and(|m| m.verify_slice(sig).is_ok())
}

/// The HMAC of `data` under `key`.
pub fn tag(alg: HmacAlg, key: &[u8], data: &[u8]) -> Vec<u8> {
    match alg {
        HmacAlg::Sha256 => tag_of::<Hmac<Sha256>>(key, data),
        HmacAlg::Sha384 => tag_of::<Hmac<Sha384>>(key, data),
        HmacAlg::Sha512 => tag_of::<Hmac<Sha512>>(key, data),
    }
}

/// Whether `sig` is the HMAC of `data` under `key` (constant-time comparison; a
/// signature of another length is refused).
pub fn verify(alg: HmacAlg, key: &[u8], data: &[u8], sig: &[u8]) -> bool {
    match alg {
        HmacAlg::Sha256 => check::<Hmac<Sha256>>(key, data, sig),
        HmacAlg::Sha384 => check::<Hmac<Sha384>>(key, data, sig),
        HmacAlg::Sha512 => check::<Hmac<Sha512>>(key, data, sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(k: &[u8], d: &[u8]) -> Vec<u8> {
        tag(HmacAlg::Sha256, k, d)
    }
    fn sha384(k: &[u8], d: &[u8]) -> Vec<u8> {
        tag(HmacAlg::Sha384, k, d)
    }
    fn sha512(k: &[u8], d: &[u8]) -> Vec<u8> {
        tag(HmacAlg::Sha512, k, d)
    }

    // RFC 4231 test cases 2 (short key) and 6 (key longer than the block).
    #[test]
    fn rfc4231_vectors() {
        let (k, d) = (
            b"Jefe".as_slice(),
            b"what do ya want for nothing?".as_slice(),
        );
        assert_eq!(
            hex::encode(sha256(k, d)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(sha384(k, d)),
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
             8e2240ca5e69e2c78b3239ecfab21649"
        );
        assert_eq!(
            hex::encode(sha512(k, d)),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        let long_key = [0xaau8; 131];
        let d = b"Test Using Larger Than Block-Size Key - Hash Key First";
        assert_eq!(
            hex::encode(sha256(&long_key, d)),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(
            hex::encode(sha512(&long_key, d)),
            "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352\
             6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"
        );
    }

    #[test]
    fn verify_accepts_the_tag_only() {
        for alg in [HmacAlg::Sha256, HmacAlg::Sha384, HmacAlg::Sha512] {
            let t = tag(alg, b"key", b"data");
            assert!(verify(alg, b"key", b"data", &t));
            let mut bad = t.clone();
            bad[0] ^= 1;
            assert!(!verify(alg, b"key", b"data", &bad));
            assert!(!verify(alg, b"key", b"data", &t[..t.len() - 1]));
            assert!(!verify(alg, b"other", b"data", &t));
            assert!(!verify(alg, b"key", b"data", &[]));
        }
    }
}
