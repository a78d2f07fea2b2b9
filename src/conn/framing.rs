//! Following the HTTP/1 message framing of a client connection, to validate chunked
//! request bodies on the bytes actually read (see [`super::chunked`] for why).
//!
//! Why here: [`super::HeadDeadline`] sees every byte Pingora reads from the client, in
//! order, and already finds where each request head ends. Pingora hands moat only the
//! decoded body, so the chunk framing it accepted cannot be checked later.
//!
//! [`Framing`] walks the byte stream message by message: a head (found by [`HeadScan`]),
//! then its body, then the next head. How long a body is depends on the head, which only
//! Pingora parses, so when a head ends the bytes after it (read in the same read, or
//! pipelined) are kept until the proxy says what body follows ([`Framing::head_parsed`],
//! called for every request before its body is read): none, a length, or chunked. From
//! then on a length is skipped, a chunked body is validated as it arrives, and its end is
//! where the next head begins (HTTP/1.1 pipelining).
//!
//! Kept bytes are few: Pingora parses a head as soon as the read holding its end is
//! done, so they are the rest of that read (at most a body read when requests are
//! pipelined). They live in one buffer per connection, reused; past [`PENDING_LIMIT`] the
//! connection is no longer followed. Nothing is followed after a protocol switch
//! ([`Framing::stop`]: `101`, HTTP/2) or once the framing is lost: a chunked request
//! arriving then is refused, as it cannot be validated.

use super::chunked::{Chunked, Fed, Malformed};
use super::scan::HeadScan;

/// Most bytes kept after a head before its framing is known (see the module docs).
pub const PENDING_LIMIT: usize = 128 * 1024;
/// Kept-byte buffers larger than this are shrunk back after use.
const PENDING_KEEP: usize = 16 * 1024;

/// The body that follows a request head, as the proxy read it from the parsed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (neither `Content-Length` nor `Transfer-Encoding`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Not known: the connection is no longer followed.
    Unknown,
}

impl Body {
    /// The body of `req` as Pingora 0.9 frames it once it has accepted the head: a
    /// `Transfer-Encoding` is chunked (Pingora refuses any other final coding, and drops a
    /// `Content-Length` next to it), else `Content-Length` (duplicates and lists Pingora
    /// accepts are identical values), else nothing.
    pub fn of(req: &pingora_http::RequestHeader) -> Body {
        if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
            return Body::Chunked;
        }
        let Some(cl) = req.headers.get(http::header::CONTENT_LENGTH) else {
            return Body::Empty;
        };
        let first = cl
            .as_bytes()
            .split(|b| *b == b',')
            .next()
            .unwrap_or_default();
        match std::str::from_utf8(first).map(|s| s.trim().parse::<u64>()) {
            Ok(Ok(0)) => Body::Empty,
            Ok(Ok(n)) => Body::Length(n),
            _ => Body::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head.
    Head(HeadScan),
    /// A head ended; the bytes after it are kept until its body is known.
    Pending,
    /// In a body of known length: bytes still to come.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunked),
    /// Not followed any more.
    Stopped,
    /// A chunked body was malformed: every read fails.
    Failed(Malformed),
}

/// The framing of one client connection (see the module docs).
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// Bytes after a head whose body is not known yet.
    pending: Vec<u8>,
}

impl Default for Framing {
    fn default() -> Framing {
        Framing {
            state: State::Head(HeadScan::default()),
            pending: Vec::new(),
        }
    }
}

impl Framing {
    /// Account for `bytes`, the next bytes read from the client. Fails once a chunked
    /// body is malformed (and from then on).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        let used = self.advance(bytes)?;
        if self.state == State::Pending && used < bytes.len() {
            let rest = &bytes[used..];
            if self.pending.len() + rest.len() > PENDING_LIMIT {
                log::debug!("over {PENDING_LIMIT} bytes after a head: framing not followed");
                self.stop();
            } else {
                self.pending.extend_from_slice(rest);
            }
        }
        Ok(())
    }

    /// The head that ended last is followed by `body`: check the bytes kept since, and
    /// follow the body from there. Fails if they hold a malformed chunked body, or if
    /// the body is chunked and the framing is not followed (so it cannot be validated).
    pub fn head_parsed(&mut self, body: Body) -> Result<(), Malformed> {
        match self.state {
            State::Pending => {}
            State::Failed(e) => return Err(e),
            _ => {
                // Lost (or stopped): nothing after this can be placed.
                self.stop();
                return match body {
                    Body::Chunked => Err(Malformed("connection framing not followed")),
                    _ => Ok(()),
                };
            }
        }
        self.state = match body {
            Body::Empty => State::Head(HeadScan::default()),
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Chunked(Chunked::default()),
            Body::Unknown => {
                self.stop();
                return Ok(());
            }
        };
        let mut kept = std::mem::take(&mut self.pending);
        let used = self.advance(&kept)?;
        if self.state == State::Pending {
            // Another whole head among the kept bytes: keep what follows it.
            kept.drain(..used);
        } else {
            kept.clear();
        }
        if kept.capacity() > PENDING_KEEP && kept.len() <= PENDING_KEEP {
            kept.shrink_to(PENDING_KEEP);
        }
        self.pending = kept;
        Ok(())
    }

    /// Whether the connection is still followed (not stopped).
    #[cfg(test)]
    pub(crate) fn followed(&self) -> bool {
        self.state != State::Stopped
    }

    /// Stop following the connection (a protocol switch, or framing lost).
    pub fn stop(&mut self) {
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Stopped;
        }
        self.pending = Vec::new();
    }

    /// Walk `bytes` until they end or a head ends with its body unknown (state
    /// `Pending`): how many bytes were walked.
    fn advance(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match &mut self.state {
                State::Head(scan) => match scan.feed(rest) {
                    Some(n) => {
                        at += n;
                        self.state = State::Pending;
                        return Ok(at);
                    }
                    None => return Ok(bytes.len()),
                },
                State::Pending => return Ok(at),
                State::Length(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    at += take;
                    // `take` is at most `left`.
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::Head(HeadScan::default());
                    }
                }
                State::Chunked(c) => match c.feed(rest) {
                    Ok(Fed::More) => return Ok(bytes.len()),
                    Ok(Fed::End(n)) => {
                        at += n;
                        self.state = State::Head(HeadScan::default());
                    }
                    Err(e) => {
                        self.state = State::Failed(e);
                        self.pending = Vec::new();
                        return Err(e);
                    }
                },
                State::Stopped => return Ok(bytes.len()),
                State::Failed(e) => return Err(*e),
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
#[path = "framing_prop.rs"]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut Framing, pieces: &[&str], bodies: &[Body]) -> Result<(), Malformed> {
        let mut bodies = bodies.iter();
        for p in pieces {
            f.feed(p.as_bytes())?;
            while f.state == State::Pending {
                let Some(b) = bodies.next() else { break };
                f.head_parsed(*b)?;
            }
        }
        Ok(())
    }

    const GET: &str = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn pipelined_messages_are_followed_through_every_framing() {
        let chunked = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cl = "POST /l HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
        let stream = format!("{GET}{cl}hello{chunked}5\r\nhello\r\n0\r\n\r\n{GET}");
        let bodies = [Body::Empty, Body::Length(5), Body::Chunked, Body::Empty];
        // In one piece, and split at every byte.
        let mut f = Framing::default();
        assert_eq!(run(&mut f, &[&stream], &bodies), Ok(()));
        assert_eq!(f.state, State::Head(HeadScan::default()));
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut f = Framing::default();
            assert_eq!(run(&mut f, &[a, b], &bodies), Ok(()), "cut at {cut}");
            assert_eq!(f.state, State::Head(HeadScan::default()), "cut at {cut}");
        }
    }

    #[test]
    fn a_malformed_body_in_the_head_read_fails_head_parsed() {
        let mut f = Framing::default();
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            f.feed(format!("{head}5\r\nhelloXX0\r\n\r\n").as_bytes()),
            Ok(())
        );
        assert!(f.head_parsed(Body::Chunked).is_err());
        assert!(f.feed(b"more").is_err(), "failure sticks");
    }

    #[test]
    fn a_malformed_body_read_later_fails_the_read() {
        let mut f = Framing::default();
        f.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe")
            .expect("head");
        f.head_parsed(Body::Chunked).expect("fine so far");
        f.feed(b"llo\r\n").expect("still fine");
        assert!(f.feed(b"\r\n").is_err(), "empty size line");
    }

    #[test]
    fn a_pipelined_malformed_body_is_caught_after_a_good_one() {
        let bad =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX\r\n\r\n";
        let mut f = Framing::default();
        let stream = format!("{GET}{bad}");
        assert!(run(&mut f, &[&stream], &[Body::Empty, Body::Chunked]).is_err());
    }

    #[test]
    fn lost_or_stopped_framing_refuses_chunked_bodies_only() {
        let mut f = Framing::default();
        f.feed(b"GET / HTTP/1.1\r\n").expect("partial head");
        // Pingora parsed a head the scanner has not seen end.
        assert_eq!(f.head_parsed(Body::Empty), Ok(()));
        assert!(f.head_parsed(Body::Chunked).is_err());
        let mut f = Framing::default();
        f.feed(GET.as_bytes()).expect("head");
        f.stop();
        assert_eq!(f.feed(b"\x00\x01 anything\r\n\r\n"), Ok(()));
        assert!(f.pending.is_empty());
    }

    #[test]
    fn kept_bytes_are_bounded() {
        let mut f = Framing::default();
        f.feed(GET.as_bytes()).expect("head");
        f.feed(&vec![b'x'; PENDING_LIMIT + 1])
            .expect("not an error");
        assert_eq!(f.state, State::Stopped);
        assert!(f.pending.capacity() == 0);
    }

    #[test]
    fn body_of_parsed_heads() {
        let req = |headers: &[(&str, &str)]| {
            let mut r = pingora_http::RequestHeader::build("POST", b"/", None).expect("req");
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).expect("header");
            }
            r
        };
        assert_eq!(Body::of(&req(&[])), Body::Empty);
        assert_eq!(Body::of(&req(&[("content-length", "0")])), Body::Empty);
        assert_eq!(
            Body::of(&req(&[("content-length", "12")])),
            Body::Length(12)
        );
        assert_eq!(
            Body::of(&req(&[("content-length", "7, 7")])),
            Body::Length(7)
        );
        assert_eq!(Body::of(&req(&[("content-length", "x")])), Body::Unknown);
        let te = [("transfer-encoding", "chunked"), ("content-length", "3")];
        assert_eq!(Body::of(&req(&te)), Body::Chunked);
    }
}
