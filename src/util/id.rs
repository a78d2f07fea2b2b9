//! Request ids (ULIDs: 48 bits of milliseconds and 80 random bits, Crockford base32, 26
//! characters, sortable by time) and W3C `traceparent` values.

use http::{HeaderName, HeaderValue};
use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The request id's header, sent upstream and echoed on every response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Length of a ULID's text.
pub const ULID_LEN: usize = 26;

/// A new ULID written into `out` (no allocation).
pub fn ulid_into(out: &mut [u8; ULID_LEN]) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut rnd = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut rnd);
    let r = rnd.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128);
    // 128 bits in 26 characters of 5 bits: the first character carries the top 3 bits.
    let mut v: u128 = ((ms & ((1 << 48) - 1)) << 80) | r;
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(v & 0x1f) as usize];
        v >>= 5;
    }
}

/// A new ULID.
pub fn ulid() -> String {
    let mut out = [0u8; ULID_LEN];
    ulid_into(&mut out);
    out.iter().map(|&b| b as char).collect()
}

/// A new ULID as a header value: one allocation, holding the text and its reference count,
/// so the clones that go upstream and into the response allocate nothing more (a value
/// copied from a slice would allocate again at its first clone).
pub fn ulid_value() -> HeaderValue {
    let mut out = [0u8; ULID_LEN];
    ulid_into(&mut out);
    // Crockford characters are always a valid value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static(ZERO_ULID))
}

const ZERO_ULID: &str = "00000000000000000000000000";

fn push_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 0xf) as usize];
    }
}

/// A new `traceparent`: version 00, random trace and span ids, sampled.
pub fn new_traceparent() -> HeaderValue {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    // "00-" 32 hex "-" 16 hex "-01": 55 bytes.
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    push_hex(&mut out[3..35], &b[..16]);
    push_hex(&mut out[36..52], &b[16..]);
    // Hex digits and dashes are always a valid value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a client-sent request id may be kept: `[A-Za-z0-9._-]{1,128}`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether a `traceparent` is well-formed (version 00 layout, non-zero ids).
pub fn valid_traceparent(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() < 4 {
        return false;
    }
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
        && (parts[0] != "00" || parts.len() == 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_shape() {
        let a = ulid();
        assert_eq!(a.len(), 26);
        assert!(valid_request_id(a.as_bytes()));
        assert!(a.starts_with('0'));
        assert_ne!(a, ulid());
        let v = ulid_value();
        assert_eq!(v.len(), 26);
        assert!(v.as_bytes().iter().all(|b| CROCKFORD.contains(b)));
        // Sortable by time: the first 10 characters are the milliseconds.
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let decoded = v.as_bytes()[..10].iter().fold(0u128, |acc, c| {
            (acc << 5) | CROCKFORD.iter().position(|x| x == c).unwrap() as u128
        });
        assert!(decoded <= ms && ms - decoded < 60_000, "{decoded} vs {ms}");
    }

    #[test]
    fn request_id_rules() {
        assert!(valid_request_id(b"abc-DEF_1.2"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a\r\nb"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }

    #[test]
    fn traceparent_rules() {
        let t = new_traceparent();
        assert_eq!(t.len(), 55);
        assert!(valid_traceparent(t.as_bytes()), "{t:?}");
        assert_ne!(t, new_traceparent());
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(b"garbage"));
    }
}
