//! Small helpers with no better home: HTTP token and header checks, heads as plugins edit
//! them, time formatting, request ids, rate-limited log lines and SHA-256.

pub mod head;
pub mod http;
pub mod id;
pub(crate) mod log_every;
#[cfg(test)]
pub mod proptest;
pub mod time;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
