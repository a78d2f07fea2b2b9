//! A signed request body held back until its `Digest` is checked.
//!
//! An HMAC-signed request whose body cannot be read before proxying (larger than
//! [`super::signed::HMAC_MAX_BODY`], or chunked) is verified in two steps: its signed head
//! first (in the request phase, so a bad signature never reaches an upstream), then its
//! body as it streams in. The body is kept in moat, never forwarded, until the last byte
//! has arrived and its SHA-256 matches the signed `Digest`; only then does the upstream
//! receive it, in one piece. A mismatch ends the upstream exchange before any body byte
//! was sent (the upstream sees a request head and a closed connection) and the client
//! gets the usual 401. The server's or route's `max_body` bounds what is held (413 past
//! it), so at most `max_body` bytes are buffered per such request.

use super::hmac;
use crate::reply::Reply;
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;

/// The held body of one request and what to answer if its digest does not match.
pub struct HeldBody {
    digest: String,
    buf: BytesMut,
    refusal: Reply,
    failures: IntCounter,
}

impl HeldBody {
    /// Hold a body that must match `digest` (the request's `Digest` value); `refusal` is
    /// answered and `failures` counted when it does not.
    pub fn new(digest: String, refusal: Reply, failures: IntCounter) -> HeldBody {
        HeldBody {
            digest,
            buf: BytesMut::new(),
            refusal,
            failures,
        }
    }

    /// Take the chunk in `body` (leaving an empty one, which Pingora does not forward);
    /// at `end`, put the whole body back if it matches its digest, or return the refusal.
    pub fn filter(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), Reply> {
        if let Some(chunk) = body.as_mut() {
            self.buf.extend_from_slice(chunk);
            *chunk = Bytes::new();
        }
        if !end {
            return Ok(());
        }
        if !hmac::digest_matches(&self.digest, &self.buf) {
            self.failures.inc();
            return Err(self.refusal.clone());
        }
        *body = Some(std::mem::take(&mut self.buf).freeze());
        Ok(())
    }

    /// Forget what was held: the body is sent again from its start (a retry on another
    /// target replays it from Pingora's retry buffer).
    pub fn restart(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ErrorCode;

    fn held(body: &[u8]) -> HeldBody {
        HeldBody::new(
            hmac::digest_header(body),
            Reply::error(ErrorCode::Unauthorized, "invalid request signature"),
            IntCounter::new("t", "t").unwrap(),
        )
    }

    #[test]
    fn body_is_released_whole_only_when_its_digest_matches() {
        let mut h = held(b"hello world");
        let mut c = Some(Bytes::from_static(b"hello "));
        h.filter(&mut c, false).unwrap();
        assert_eq!(c.as_deref(), Some(&b""[..]), "nothing forwarded early");
        let mut c = Some(Bytes::from_static(b"world"));
        h.filter(&mut c, false).unwrap();
        let mut end = None;
        h.filter(&mut end, true).unwrap();
        assert_eq!(end.as_deref(), Some(&b"hello world"[..]));
    }

    #[test]
    fn last_chunk_may_carry_the_end() {
        let mut h = held(b"abc");
        let mut c = Some(Bytes::from_static(b"abc"));
        h.filter(&mut c, true).unwrap();
        assert_eq!(c.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn mismatch_is_refused_and_counted() {
        let mut h = held(b"signed");
        let mut c = Some(Bytes::from_static(b"tampered"));
        h.filter(&mut c, false).unwrap();
        let mut end = None;
        let r = h.filter(&mut end, true);
        assert!(r.is_err());
        assert!(end.is_none(), "nothing released");
        assert_eq!(h.failures.get(), 1);
    }

    #[test]
    fn restart_forgets_a_replayed_prefix() {
        let mut h = held(b"abc");
        let mut c = Some(Bytes::from_static(b"ab"));
        h.filter(&mut c, false).unwrap();
        h.restart();
        let mut c = Some(Bytes::from_static(b"abc"));
        h.filter(&mut c, true).unwrap();
        assert_eq!(c.as_deref(), Some(&b"abc"[..]));
    }
}
