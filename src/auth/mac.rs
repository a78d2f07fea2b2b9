//! HMAC (RFC 2104) over SHA-256/384/512 from the `sha2` crate. OpenSSL 3's `PKey::hmac` +
//! `Signer` fetches its algorithm through the provider machinery on every call, which
//! cost more than the rest of a signed request's checks; this is two hash passes.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// HMAC of `data` under `key` with hash `D`, whose block is `block` bytes.
fn hmac<D: Digest>(block: usize, key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > block {
        D::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
    let inner = D::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    D::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// HMAC-SHA256.
pub fn sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::<Sha256>(64, key, data)
}

/// HMAC-SHA384.
pub fn sha384(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::<Sha384>(128, key, data)
}

/// HMAC-SHA512.
pub fn sha512(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::<Sha512>(128, key, data)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
