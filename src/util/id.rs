//! Request ids (ULIDs: 48 bits of milliseconds and 80 random bits, Crockford base32, 26
//! characters, sortable by time) and W3C `traceparent` values.

use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new ULID.
pub fn ulid() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut rnd = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut rnd);
    let r = rnd.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128);
    let v: u128 = ((ms & ((1 << 48) - 1)) << 80) | r;
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as i32;
        let idx = if shift >= 0 {
            (v >> shift) & 0x1f
        } else {
            (v << (-shift)) & 0x1f
        };
        *slot = CROCKFORD[idx as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a client-sent request id may be kept: `[A-Za-z0-9._-]{1,128}`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new `traceparent`: version 00, random trace and span ids, sampled.
pub fn new_traceparent() -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    format!("00-{}-{}-01", hex::encode(&b[..16]), hex::encode(&b[16..]))
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
        assert!(valid_traceparent(t.as_bytes()), "{t}");
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
