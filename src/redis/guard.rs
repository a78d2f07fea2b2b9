//! A bound on what a Redis server can make moat hold: every connection's byte stream passes
//! through [`Guarded`], which follows the RESP framing of the replies (RESP2 and RESP3) and
//! fails the connection as soon as a reply breaks a limit, before the `redis` crate's parser
//! buffers it. The crate's parser never preallocates a claimed length, but it has no limit
//! of its own: a server answering `$1099511627776` and then streaming bytes, or an endless
//! line, would grow its buffer for as long as the bytes come.
//!
//! Limits (moat's own replies are a few dozen bytes; the largest legitimate one is a big
//! Redis Cluster's `CLUSTER SLOTS`, hundreds of KiB):
//! - a line (status, error, number, or the header of a string or aggregate) holds at most
//!   [`MAX_LINE`] bytes;
//! - a whole reply, nested values included, holds at most [`MAX_REPLY`] bytes: a string or
//!   an aggregate that claims more than what is left is refused on its header, without
//!   waiting for its bytes;
//! - the first byte of every value must be a RESP type; anything else is garbage.
//!
//! A violation is an `InvalidData` read error: the connection is dead, every call on it
//! fails (`on_redis_error` applies) and the next call connects again. The stream also
//! raises its `dead` flag when it ends or fails, so a connection the server closed is never
//! handed out again.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest line, CRLF included.
pub const MAX_LINE: u64 = 64 * 1024;
/// Largest reply, every nested value included.
pub const MAX_REPLY: u64 = 4 * 1024 * 1024;
/// Fewest bytes a value takes on the wire (`_\r\n`).
const MIN_VALUE: u64 = 3;

/// Where the scanner is inside the current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a value's type byte.
    Start,
    /// Inside a line of type `kind`: its length so far, and for length lines the number
    /// read so far and its sign.
    Line {
        kind: u8,
        len: u64,
        num: u64,
        neg: bool,
    },
    /// Inside a string's bytes: how many are left, CRLF included.
    Body(u64),
}

/// Follows the framing of a reply stream and checks the limits.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Values still expected before the current reply is complete (0 between replies).
    pending: u64,
    /// Bytes of the current reply so far.
    used: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Start,
            pending: 0,
            used: 0,
        }
    }
}

/// Types whose line is the whole value.
fn is_line(kind: u8) -> bool {
    matches!(kind, b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(')
}

/// Types whose line is a string's length.
fn is_string(kind: u8) -> bool {
    matches!(kind, b'$' | b'!' | b'=')
}

/// Types whose line counts the values that follow.
fn is_aggregate(kind: u8) -> bool {
    matches!(kind, b'*' | b'~' | b'>' | b'%' | b'|')
}

impl Scanner {
    /// Check the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while !data.is_empty() {
            match self.state {
                State::Body(left) => {
                    let n = left.min(data.len() as u64);
                    self.take(n)?;
                    data = &data[n as usize..];
                    self.state = State::Body(left - n);
                    if left == n {
                        self.state = State::Start;
                        self.value_done();
                    }
                }
                State::Start => {
                    let kind = data[0];
                    if !(is_line(kind) || is_string(kind) || is_aggregate(kind)) {
                        return Err("not a RESP reply");
                    }
                    if self.pending == 0 {
                        // A new reply.
                        (self.pending, self.used) = (1, 0);
                    }
                    self.take(1)?;
                    data = &data[1..];
                    self.state = State::Line {
                        kind,
                        len: 1,
                        num: 0,
                        neg: false,
                    };
                }
                State::Line {
                    kind,
                    len,
                    mut num,
                    mut neg,
                } => {
                    let end = memchr::memchr(b'\n', data);
                    let chunk = &data[..end.map_or(data.len(), |i| i + 1)];
                    let len = len + chunk.len() as u64;
                    if len > MAX_LINE {
                        return Err("reply line too long");
                    }
                    self.take(chunk.len() as u64)?;
                    data = &data[chunk.len()..];
                    if !is_line(kind) {
                        for &b in chunk {
                            match b {
                                b'0'..=b'9' => {
                                    num = num.saturating_mul(10).saturating_add(u64::from(b - b'0'))
                                }
                                b'-' if num == 0 && !neg => neg = true,
                                b'\r' | b'\n' => {}
                                _ => return Err("bad length in reply"),
                            }
                        }
                    }
                    if end.is_none() {
                        self.state = State::Line {
                            kind,
                            len,
                            num,
                            neg,
                        };
                        continue;
                    }
                    self.state = State::Start;
                    self.header_done(kind, if neg { None } else { Some(num) })?;
                }
            }
        }
        Ok(())
    }

    /// Count `n` more bytes of the current reply.
    fn take(&mut self, n: u64) -> Result<(), &'static str> {
        self.used += n;
        if self.used > MAX_REPLY {
            return Err("reply too large");
        }
        Ok(())
    }

    /// Bytes the current reply may still take.
    fn room(&self) -> u64 {
        MAX_REPLY.saturating_sub(self.used)
    }

    /// A line of type `kind` ended; `num` is its number (`None`: negative, i.e. null).
    fn header_done(&mut self, kind: u8, num: Option<u64>) -> Result<(), &'static str> {
        match num {
            _ if is_line(kind) => self.value_done(),
            None => self.value_done(), // a null string or aggregate
            Some(n) if is_string(kind) => {
                if n.saturating_add(2) > self.room() {
                    return Err("reply too large");
                }
                self.state = State::Body(n + 2);
            }
            Some(n) => {
                let values = if matches!(kind, b'%' | b'|') {
                    n.saturating_mul(2)
                } else {
                    n
                };
                let pending = self.pending.saturating_add(values);
                if pending.saturating_mul(MIN_VALUE) > self.room() {
                    return Err("reply too large");
                }
                // An attribute annotates the value after it: it is not a value itself.
                self.pending = if kind == b'|' { pending } else { pending - 1 };
                if self.pending == 0 {
                    self.used = 0;
                }
            }
        }
        Ok(())
    }

    fn value_done(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        if self.pending == 0 {
            self.used = 0;
        }
    }
}

/// A stream whose reads are checked by a [`Scanner`]; raises `dead` when it ends or fails.
pub struct Guarded<S> {
    inner: S,
    scanner: Scanner,
    dead: Arc<AtomicBool>,
}

impl<S> Guarded<S> {
    /// Wrap `inner`; `dead` is raised once the stream can carry nothing more.
    pub fn new(inner: S, dead: Arc<AtomicBool>) -> Guarded<S> {
        Guarded {
            inner,
            scanner: Scanner::default(),
            dead,
        }
    }

    fn die<T>(&self, e: io::Error) -> Poll<io::Result<T>> {
        self.dead.store(true, Ordering::Release);
        Poll::Ready(Err(e))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let room = buf.remaining();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => me.die(e),
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() && room > 0 {
                    me.dead.store(true, Ordering::Release);
                }
                match me.scanner.feed(new) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(why) => {
                        buf.set_filled(before);
                        log::warn!("redis: connection dropped: {why}");
                        me.die(io::Error::new(io::ErrorKind::InvalidData, why))
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_write(cx, data) {
            Poll::Ready(Err(e)) => me.die(e),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => me.die(e),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.dead.store(true, Ordering::Release);
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8]) -> Result<(), &'static str> {
        Scanner::default().feed(bytes)
    }

    /// The same bytes fed one at a time.
    fn check_bytewise(bytes: &[u8]) -> Result<(), &'static str> {
        let mut s = Scanner::default();
        bytes.chunks(1).try_for_each(|b| s.feed(b))
    }

    #[test]
    fn replies_moat_gets_pass() {
        let ok: &[&[u8]] = &[
            b"+OK\r\n",
            b"-NOSCRIPT No matching script\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$5\r\nhello\r\n",
            b"*4\r\n:1\r\n:9\r\n:1000\r\n:0\r\n",
            b"*2\r\n*3\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n*0\r\n",
            b"%1\r\n+server\r\n$5\r\nredis\r\n_\r\n#t\r\n,1.5\r\n(12345\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$2\r\nok\r\n>2\r\n+message\r\n$1\r\nx\r\n",
            b"=7\r\ntxt:abc\r\n!3\r\nERR\r\n~1\r\n:1\r\n",
        ];
        for r in ok {
            assert_eq!(check(r), Ok(()), "{}", String::from_utf8_lossy(r));
            assert_eq!(check_bytewise(r), Ok(()), "{}", String::from_utf8_lossy(r));
        }
        // Many replies in a row: each one's size counts on its own.
        let mut s = Scanner::default();
        let big = format!(
            "${}\r\n{}\r\n",
            MAX_REPLY - 20,
            "x".repeat((MAX_REPLY - 20) as usize)
        );
        for _ in 0..3 {
            assert_eq!(s.feed(big.as_bytes()), Ok(()));
        }
        assert_eq!((s.pending, s.used), (0, 0));
    }

    #[test]
    fn hostile_replies_fail_on_their_header() {
        for r in [
            &b"$1099511627776\r\n"[..],
            b"$9223372036854775807\r\n",
            b"$99999999999999999999999999\r\n",
            b"*9223372036854775807\r\n",
            b"%4611686018427387904\r\n",
            b"*2\r\n$4194304\r\n",
            b"*1000000000\r\n",
        ] {
            assert_eq!(
                check(r),
                Err("reply too large"),
                "{}",
                String::from_utf8_lossy(r)
            );
        }
        assert_eq!(check(b"\x00\x01garbage"), Err("not a RESP reply"));
        assert_eq!(check(b"HTTP/1.1 200 OK\r\n"), Err("not a RESP reply"));
        assert_eq!(check(b"$12x\r\n"), Err("bad length in reply"));
        assert_eq!(check(b"*2\r\n:1\r\n?garbage"), Err("not a RESP reply"));
    }

    #[test]
    fn lines_are_capped() {
        let mut line = b"+".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_LINE as usize));
        assert_eq!(check(&line), Err("reply line too long"));
        assert_eq!(check_bytewise(&line), Err("reply line too long"));
        let mut s = Scanner::default();
        assert_eq!(s.feed(&line[..1000]), Ok(()), "a prefix is fine");
        let mut ok = b"-".to_vec();
        ok.extend(std::iter::repeat_n(b'e', MAX_LINE as usize - 3));
        ok.extend(b"\r\n");
        assert_eq!(check(&ok), Ok(()));
    }

    #[test]
    fn nested_replies_count_as_one() {
        // 3 × 1.5 MiB strings in one array: over the limit by the third.
        let part = 3 * 512 * 1024;
        let mut s = Scanner::default();
        assert_eq!(s.feed(b"*3\r\n"), Ok(()));
        let body = format!("${part}\r\n{}\r\n", "y".repeat(part));
        assert_eq!(s.feed(body.as_bytes()), Ok(()));
        assert_eq!(s.feed(body.as_bytes()), Ok(()));
        assert_eq!(s.feed(body.as_bytes()), Err("reply too large"));
    }

    #[tokio::test]
    async fn a_guarded_stream_fails_and_says_dead() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let dead = Arc::new(AtomicBool::new(false));
        let mut g = Guarded::new(client, Arc::clone(&dead));
        server.write_all(b":1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(g.read(&mut buf).await.unwrap(), 4);
        assert!(!dead.load(Ordering::Acquire));
        server.write_all(b"$1099511627776\r\n").await.unwrap();
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(dead.load(Ordering::Acquire));
        // End of stream marks it dead too.
        let (client, server) = tokio::io::duplex(64);
        let dead = Arc::new(AtomicBool::new(false));
        let mut g = Guarded::new(client, Arc::clone(&dead));
        drop(server);
        assert_eq!(g.read(&mut buf).await.unwrap(), 0);
        assert!(dead.load(Ordering::Acquire));
    }
}
