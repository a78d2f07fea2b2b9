//! A bound on what a Redis server can make moat hold: every connection's byte stream passes
//! through [`Guarded`], which follows the RESP framing of the replies (RESP2 and RESP3)
//! exactly as the `redis` crate's parser does, and fails the connection as soon as a reply
//! breaks a limit, before the parser buffers it. The crate's parser never preallocates a
//! claimed length, but it has no limit of its own: a server answering `$1099511627776` and
//! then streaming bytes, an endless line, or an array of millions of `_` would grow its
//! memory for as long as the bytes come.
//!
//! The scanner must see the same reply boundaries as the parser, or a server could hide a
//! reply from it (inside what the scanner takes for a string's bytes). So it is stricter
//! than the parser wherever they could differ, and refuses rather than guesses:
//! - a line ends at CRLF only (the parser's rule); a CR or LF anywhere else in a line is
//!   refused (Redis never sends one: it replaces them in error messages);
//! - a length is digits, or `-1` for a null string (`$`), array (`*`), set (`~`) or push
//!   (`>`) only: the parser reads `!-1` or `=-1` as a string of `usize::MAX` bytes;
//! - a string's bytes end with CRLF.
//!
//! Limits (moat's own replies are a few dozen bytes; the largest legitimate one is a big
//! Redis Cluster's `CLUSTER SLOTS`, hundreds of KiB):
//! - a line (status, error, number, or the header of a string or aggregate) holds at most
//!   [`MAX_LINE`] bytes;
//! - a whole reply, nested values included, holds at most [`MAX_REPLY`] bytes and
//!   [`MAX_VALUES`] values (each parsed value costs the parser tens of bytes, so bytes
//!   alone do not bound its memory): a string or an aggregate that claims more than what is
//!   left is refused on its header, without waiting for its bytes;
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
/// Most values in one reply, nested values and attributes included. The `CLUSTER SLOTS` of
/// a cluster whose 16384 slots all lie in separate ranges, each master with one replica,
/// holds about 213,000; moat's own replies hold a handful.
pub const MAX_VALUES: u64 = 256 * 1024;
/// Fewest bytes a value takes on the wire (`_\r\n`).
const MIN_VALUE: u64 = 3;

/// Where the scanner is inside the current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a value's type byte.
    Start,
    /// Inside the line of a value of type `kind`: its bytes so far (type byte included),
    /// whether the last one was a CR, and for a length line the number so far, whether it
    /// has a digit yet and whether it is negative.
    Line {
        kind: u8,
        len: u64,
        cr: bool,
        num: u64,
        digits: bool,
        neg: bool,
    },
    /// Inside a string's bytes: how many are left before its CRLF.
    Body(u64),
    /// After a string's bytes: expecting its CR (`false`) or its LF (`true`).
    BodyEnd(bool),
}

/// Follows the framing of a reply stream and checks the limits.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Values still expected before the current reply is complete (0 between replies).
    pending: u64,
    /// Bytes of the current reply so far.
    used: u64,
    /// Values of the current reply finished so far.
    values: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Start,
            pending: 0,
            used: 0,
            values: 0,
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

/// Types whose length may be `-1` (null); the parser reads `-1` as `usize::MAX` for the
/// others, or fails.
fn may_be_null(kind: u8) -> bool {
    matches!(kind, b'$' | b'*' | b'~' | b'>')
}

impl Scanner {
    /// Check the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while let Some(&first) = data.first() {
            let used = match self.state {
                State::Body(left) => self.body(left, data.len())?,
                State::BodyEnd(lf) => self.body_end(lf, first)?,
                State::Start => self.start(first)?,
                State::Line { .. } => self.line(data)?,
            };
            data = &data[used..];
        }
        Ok(())
    }

    /// Inside a string's body, `left` bytes to go, `available` in hand: bytes used.
    fn body(&mut self, left: u64, available: usize) -> Result<usize, &'static str> {
        let n = left.min(available as u64);
        self.take(n)?;
        self.state = match left - n {
            0 => State::BodyEnd(false),
            rest => State::Body(rest),
        };
        Ok(n as usize)
    }

    /// The CR (`lf` false) or LF (`lf` true) after a string's body: one byte used.
    fn body_end(&mut self, lf: bool, first: u8) -> Result<usize, &'static str> {
        if first != if lf { b'\n' } else { b'\r' } {
            return Err("string not ended by CRLF");
        }
        self.take(1)?;
        if lf {
            self.state = State::Start;
            self.value_done();
        } else {
            self.state = State::BodyEnd(true);
        }
        Ok(1)
    }

    /// A value's type byte: one byte used.
    fn start(&mut self, first: u8) -> Result<usize, &'static str> {
        if !(is_line(first) || is_string(first) || is_aggregate(first)) {
            return Err("not a RESP reply");
        }
        if self.pending == 0 {
            // A new reply.
            (self.pending, self.used, self.values) = (1, 0, 0);
        }
        self.take(1)?;
        self.state = State::Line {
            kind: first,
            len: 1,
            cr: false,
            num: 0,
            digits: false,
            neg: false,
        };
        Ok(1)
    }

    /// The rest of a value's first line (a simple value, or a length) from `data`: bytes
    /// used. The line may end in a later read; its state is kept until then.
    fn line(&mut self, data: &[u8]) -> Result<usize, &'static str> {
        let State::Line {
            kind,
            mut len,
            mut cr,
            mut num,
            mut digits,
            mut neg,
        } = self.state
        else {
            return Err("reply guard out of step");
        };
        let plain = is_line(kind);
        let mut i = 0;
        let ended = loop {
            let Some(&b) = data.get(i) else { break false };
            i += 1;
            len += 1;
            match b {
                b'\n' if cr => break true,
                _ if cr => return Err("CR or LF inside a reply line"),
                b'\r' => cr = true,
                b'\n' => return Err("CR or LF inside a reply line"),
                _ if plain => {}
                b'0'..=b'9' => {
                    num = num.saturating_mul(10).saturating_add(u64::from(b - b'0'));
                    digits = true;
                }
                b'-' if len == 2 => neg = true,
                _ => return Err("bad length in reply"),
            }
        };
        if len > MAX_LINE {
            return Err("reply line too long");
        }
        self.take(i as u64)?;
        if !ended {
            self.state = State::Line {
                kind,
                len,
                cr,
                num,
                digits,
                neg,
            };
            return Ok(i);
        }
        self.state = State::Start;
        if plain {
            self.value_done();
        } else if !digits || (neg && !(num == 1 && may_be_null(kind))) {
            return Err("bad length in reply");
        } else if neg {
            self.value_done(); // a null
        } else {
            self.header_done(kind, num)?;
        }
        Ok(i)
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

    /// The header of a string or aggregate of type `kind` and length `n` ended.
    fn header_done(&mut self, kind: u8, n: u64) -> Result<(), &'static str> {
        if is_string(kind) {
            if n.saturating_add(2) > self.room() {
                return Err("reply too large");
            }
            self.state = match n {
                0 => State::BodyEnd(false),
                n => State::Body(n),
            };
            return Ok(());
        }
        let children = if matches!(kind, b'%' | b'|') {
            n.saturating_mul(2)
        } else {
            n
        };
        let pending = self.pending.saturating_add(children);
        if pending.saturating_mul(MIN_VALUE) > self.room() {
            return Err("reply too large");
        }
        // Every value still to come was counted in `pending` by a header: checking here
        // bounds the whole reply.
        if self.values.saturating_add(pending) > MAX_VALUES {
            return Err("reply has too many values");
        }
        if kind == b'|' {
            // An attribute annotates the value after it, still pending.
            self.values += 1;
            self.pending = pending;
        } else {
            self.pending = pending;
            self.value_done();
        }
        Ok(())
    }

    fn value_done(&mut self) {
        self.values += 1;
        self.pending = self.pending.saturating_sub(1);
    }

    /// Whether the bytes so far end exactly at the end of a reply (or none came yet).
    #[cfg(test)]
    fn between_replies(&self) -> bool {
        self.state == State::Start && self.pending == 0
    }
}
#[cfg(test)]
mod agreement;

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
            b":-42\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$0\r\n\r\n",
            b"$5\r\nhello\r\n",
            b"$4\r\n\r\n\r\n\r\n",
            b"*4\r\n:1\r\n:9\r\n:1000\r\n:0\r\n",
            b"*2\r\n*3\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n*0\r\n",
            b"%1\r\n+server\r\n$5\r\nredis\r\n_\r\n#t\r\n,1.5\r\n(12345\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$2\r\nok\r\n>2\r\n+message\r\n$1\r\nx\r\n",
            b"=7\r\ntxt:abc\r\n!3\r\nERR\r\n~1\r\n:1\r\n~-1\r\n>-1\r\n",
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
            assert!(s.between_replies());
        }
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

    /// Where the scanner and the crate's parser could see different reply boundaries: the
    /// scanner refuses.
    #[test]
    fn framing_the_parser_reads_otherwise_is_refused() {
        // The parser ends a line at CRLF only: `+x\n$4194290\r\n` is one simple string to
        // it, a reply and then a 4 MiB string (whose bytes nobody checks) to a scanner that
        // ends lines at LF.
        let lf = Err("CR or LF inside a reply line");
        assert_eq!(check(b"+x\n$4194290\r\n"), lf);
        assert_eq!(check_bytewise(b"+x\n$4194290\r\n"), lf);
        assert_eq!(check(b"-ERR a\rb\r\n"), lf);
        assert_eq!(check(b"$3\n"), lf);
        assert_eq!(check(b":1\r\r\n"), lf);
        // The parser reads `!-1` and `=-1` as strings of usize::MAX bytes, and fails on a
        // negative map or attribute; only `-1`, and only where it means null, passes.
        let bad = Err("bad length in reply");
        for r in [
            &b"!-1\r\n"[..],
            b"=-1\r\n",
            b"%-1\r\n",
            b"|-1\r\n",
            b"$-2\r\n",
            b"$-0\r\n",
            b"*-0\r\n",
            b"*--1\r\n",
            b"$1-\r\n",
            b"$\r\n",
            b"*\r\n",
            b"$ 1\r\n",
            b"$+1\r\n",
        ] {
            assert_eq!(check(r), bad, "{}", String::from_utf8_lossy(r));
        }
        // A string's bytes end with CRLF.
        assert_eq!(check(b"$1\r\nxyz\r\n"), Err("string not ended by CRLF"));
        assert_eq!(check(b"$0\r\n\n"), Err("string not ended by CRLF"));
    }

    #[test]
    fn values_are_capped() {
        // A million nulls fit in 4 MiB but would cost the parser ~60 MB of values.
        assert_eq!(check(b"*1000000\r\n"), Err("reply has too many values"));
        assert_eq!(check(b"%500000\r\n"), Err("reply has too many values"));
        // Claimed little by little, by nested arrays.
        let mut s = Scanner::default();
        let per = 1000u64;
        assert_eq!(
            s.feed(format!("*{}\r\n", MAX_VALUES / per + 1).as_bytes()),
            Ok(())
        );
        let inner = format!("*{}\r\n{}", per - 1, "_\r\n".repeat(per as usize - 1));
        let mut r = Ok(());
        for _ in 0..=MAX_VALUES / per {
            r = s.feed(inner.as_bytes());
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err("reply has too many values"));
        // Just below the limit is fine.
        let mut ok = format!("*{}\r\n", MAX_VALUES - 1).into_bytes();
        ok.extend("_\r\n".repeat(MAX_VALUES as usize - 1).as_bytes());
        assert_eq!(check(&ok), Ok(()));
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
