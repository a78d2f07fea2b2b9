//! [`HeadDeadline`]: a downstream connection whose request heads must arrive whole within
//! a time limit.
//!
//! Pingora times each read of a request head on its own, so a client sending a byte now
//! and then keeps a connection forever (slowloris). This wrapper times the whole head:
//!
//! - The first head is timed from the moment the connection is handed over (after the
//!   TLS handshake on TLS listeners). A head not complete by then fails the read with
//!   `TimedOut`, and Pingora closes the connection; if nothing at all was sent, the read
//!   ends the stream instead (Pingora closes it quietly, as an idle keep-alive one).
//! - Once the blank line ending the head was read, reads are not timed: a body (however
//!   slow) or an upgraded connection (WebSocket after `101`) is none of its business.
//! - When the request is over and Pingora keeps the connection for the next one,
//!   [`HeadDeadline::next_head`] is called: the connection may then wait for its next
//!   request as long as the keep-alive idle timeout the proxy set for it
//!   ([`HeadDeadline::set_idle_timeout`], `server.limits.idle_timeout`), after which the
//!   stream ends (Pingora closes it quietly, as a client that went away); the next head is
//!   timed from its first byte.
//! - The proxy calls [`HeadDeadline::head_parsed`] when Pingora has parsed a head, which
//!   ends the timing whatever the scanner saw: it covers a head Pingora took (in part or
//!   whole) from bytes read with the previous request (HTTP/1.1 pipelining, which
//!   moat's proxy turns on), and any disagreement between the scanner
//!   and Pingora's parser.
//!
//! - It counts the connection in the process's drain ([`crate::drain`]; a TLS
//!   connection, counted by its socket since its accept, is then no longer counted
//!   there, see [`crate::conn::limit::handed_over`]) and, whenever a read has to wait,
//!   registers the task to wake when the drain moves on: once the listeners stopped
//!   (`Closing`), a connection waiting between requests with no byte of a next one ends
//!   (the stream ends, and Pingora closes it quietly) once it has been idle for
//!   [`crate::drain::QUIET`] (a next request arriving before that is read as usual);
//!   once `shutdown_timeout` is over (`Ending`), any read that has to wait fails with
//!   `ConnectionAborted` (the stream simply ends if no byte of a head was sent), which
//!   Pingora takes as the client gone: the request ends between two writes. A
//!   connection waiting for its first head (an h2c one peeking at its preface
//!   included), or with a head or body arriving, is read as usual until then. While
//!   draining, a connection Pingora shuts down after an answer first reads and drops
//!   what its client still sends, for up to a second (`drain::LINGERING_CLOSE`, see
//!   `poll_shutdown`).
//!
//! It also follows the connection's message framing ([`Framing`]) so that chunked request
//! bodies are validated on the bytes read: a malformed one found among bytes read with
//! the head is reported by [`HeadDeadline::head_parsed`] (the proxy answers `400` and
//! closes); one found in a later read fails that read with `InvalidData` carrying the
//! [`Malformed`] (Pingora aborts the request, the proxy answers `400` if it can, and the
//! connection is closed), as does every read after it.
//!
//! Cost on the hot path: no allocation per read and no timer per request. One timer per
//! connection serves both limits and stays registered: it is created when a head read or
//! a keep-alive wait first has to wait, and when it fires the deadline that applies then
//! is checked again and the timer moved to it (a wait that began later than the timer was
//! set gets its full time). Pingora's own keep-alive timeout would register and cancel a
//! timer for every request. Reads after the head only check a flag and account for the
//! bytes in the framing (skipping a length costs nothing; only chunked bodies are read
//! byte by byte, outside their chunk data). Everything else is passed through to the
//! wrapped stream.

use super::chunked::Malformed;
use super::framing::{Body, Framing};
use super::scan::HeadScan;
use super::Policy;
use crate::drain::Tracked;
use async_trait::async_trait;
use drain::Shut;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a head that must be complete by `deadline`.
    Head,
    /// Between requests: the next byte read starts a head (and its deadline).
    Idle,
    /// The head was read; reads are not timed.
    Body,
    /// The deadline passed: the stream has ended.
    Ended,
}

/// Values of [`HeadDeadline::told`].
const NOTHING: u8 = 0;
const NEXT_HEAD: u8 = 1;
const HEAD_PARSED: u8 = 2;

/// A [`Stream`] whose request heads are timed as a whole (see the module docs).
pub struct HeadDeadline {
    inner: Stream,
    phase: Phase,
    scan: HeadScan,
    /// Bytes of the current head read so far (0: nothing sent yet).
    head_bytes: usize,
    deadline: Instant,
    /// The connection's one timer (see the module docs), created when a head read or a
    /// keep-alive wait first has to wait; it may be set earlier than the deadline that
    /// applies, never later.
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the current keep-alive wait began (phase `Idle`).
    idle_since: Instant,
    /// The keep-alive idle timeout in seconds (0: none), set by the proxy per request.
    idle_secs: AtomicU32,
    /// What the request loop said last ([`HeadDeadline::next_head`] or
    /// [`HeadDeadline::head_parsed`], which only have `&self`): `NOTHING`, `NEXT_HEAD` or
    /// `HEAD_PARSED`, taken by the next read.
    told: AtomicU8,
    /// Bytes [`Peek::try_peek`] read and the next reads hand out again (h2c services peek
    /// at a connection's first 24 bytes); not scanned until then.
    peeked: Vec<u8>,
    /// The connection's message framing. Reads reach it without locking
    /// (`Mutex::get_mut`); only [`HeadDeadline::head_parsed`], once per request, locks.
    framing: Mutex<Framing>,
    /// The connection, counted in the process's drain, which is reached through the
    /// service's policy (the limit, the counters).
    tracked: Tracked<Arc<Policy>>,
    /// Where the connection is in its close (see `drain`).
    shut: Shut,
}

/// The HTTP/2 connection preface a client sends on an h2c (prior knowledge) connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl HeadDeadline {
    /// Wrap `inner`, timing its first request head from now: it must be complete within
    /// `policy.limit`.
    pub fn new(inner: Stream, policy: Arc<Policy>) -> HeadDeadline {
        let mut framing = Framing::default();
        if inner.selected_alpn_proto() == Some(ALPN::H2) {
            // HTTP/2 has its own framing.
            framing.stop();
        }
        // Connections open at once have different descriptors: they spread the drain's
        // waker registry.
        let hint = inner.id().unsigned_abs() as usize;
        let tracked = Tracked::new(policy, hint);
        // Counted here from now on: a TLS connection, counted by its socket since before
        // its handshake, stops being counted there (after this count, never to 0 between).
        crate::conn::limit::handed_over(&inner);
        HeadDeadline {
            inner,
            phase: Phase::Head,
            scan: HeadScan::default(),
            head_bytes: 0,
            deadline: Instant::now() + tracked.holder().limit,
            tracked,
            shut: Shut::Open,
            sleep: None,
            idle_since: Instant::now(),
            idle_secs: AtomicU32::new(0),
            told: AtomicU8::new(NOTHING),
            peeked: Vec::new(),
            framing: Mutex::new(framing),
        }
    }

    /// The wrapped stream, bytes read by [`Peek::try_peek`] not handed out yet (they come
    /// before anything read from the stream), and the connection's place in the drain
    /// (held through the drain itself from here on).
    pub fn into_parts(self) -> (Stream, Vec<u8>, Tracked) {
        (self.inner, self.peeked, self.tracked.detach())
    }

    /// What every connection of the service shares.
    fn policy(&self) -> &Policy {
        self.tracked.holder()
    }

    /// The request on this connection is over and the connection waits for the next one:
    /// the next head is timed from its first byte.
    pub fn next_head(&self) {
        self.told.store(NEXT_HEAD, Ordering::Relaxed);
    }

    /// Pingora has parsed the current request's head: reads are no longer timed, until
    /// [`HeadDeadline::next_head`].
    ///
    /// `body` is what follows the head, as the parsed head says: the bytes already read
    /// after the head are checked against it at once. An error means they hold a
    /// malformed chunked body (or the body is chunked and the connection's framing could
    /// not be followed): the request must be refused and the connection closed.
    pub fn head_parsed(&self, body: Body) -> Result<(), Malformed> {
        self.told.store(HEAD_PARSED, Ordering::Relaxed);
        self.framing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .head_parsed(body)
    }

    /// The connection switched protocols (`101`): its bytes are no longer HTTP/1
    /// messages, and their framing is not followed any more.
    pub fn protocol_switched(&self) {
        self.framing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
    }

    /// Account for `fresh`, bytes one read handed out, in the connection's framing.
    fn frame(&mut self, fresh: &[u8]) -> io::Result<()> {
        let framing = self.framing.get_mut().unwrap_or_else(|e| e.into_inner());
        framing.feed(fresh).map_err(|e| {
            log::debug!("connection {}: {e}", self.inner.id());
            io::Error::new(io::ErrorKind::InvalidData, e)
        })
    }

    /// After this request, wait at most `secs` seconds for the next one (0: no limit).
    /// The proxy sets it for every request, so a reload's new value applies from the
    /// next request on; Pingora's own keep-alive timeout is then left off.
    pub fn set_idle_timeout(&self, secs: u32) {
        self.idle_secs.store(secs, Ordering::Relaxed);
    }

    /// Account for `fresh`, the bytes one read added while a head was incomplete.
    fn head_read(&mut self, fresh: &[u8]) -> io::Result<()> {
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.scan = HeadScan::default();
            self.head_bytes = 0;
            self.deadline = Instant::now() + self.policy().limit;
        }
        self.head_bytes += fresh.len();
        if self.scan.feed(fresh).is_some() {
            // The timer stays: if it fires before the next wait, it wakes the task once
            // for nothing, which costs less than a new timer for the next wait.
            self.phase = Phase::Body;
            return Ok(());
        }
        if Instant::now() >= self.deadline {
            return Err(self.timed_out());
        }
        Ok(())
    }

    /// Poll the connection's timer towards `deadline`: `Ready` once it has passed. The
    /// timer is moved only when it would fire late (or fired early), so a wait whose
    /// deadline is after the timer's costs nothing until the timer fires.
    fn poll_timer(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline: on to this one (registers the timer again).
            sleep.as_mut().reset(deadline);
        }
    }

    /// The keep-alive wait has to wait: `Ready` (the stream ends) once the idle timeout
    /// has passed with nothing sent.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let secs = *self.idle_secs.get_mut();
        if secs == 0 {
            return Poll::Pending;
        }
        let deadline = self.idle_since + Duration::from_secs(u64::from(secs));
        if self.poll_timer(cx, deadline).is_pending() {
            return Poll::Pending;
        }
        log::debug!(
            "connection {} idle for {secs}s between requests: closed",
            self.inner.id()
        );
        self.phase = Phase::Ended;
        Poll::Ready(Ok(()))
    }

    /// The head read has to wait: `Ready` with the read's outcome once the deadline has
    /// passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_timer(cx, self.deadline).is_pending() {
            return Poll::Pending;
        }
        if self.head_bytes == 0 {
            // Nothing sent: end the stream, as an idle connection is ended.
            log::debug!(
                "connection {} sent no request within header_timeout",
                self.inner.id()
            );
            self.policy().no_request.inc();
            self.phase = Phase::Ended;
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(Err(self.timed_out()))
    }

    /// Count the timeout and end the stream: the error is returned once, then reads end.
    fn timed_out(&mut self) -> io::Error {
        if self.head_bytes == 0 {
            self.policy().no_request.inc();
        } else {
            self.policy().partial_head.inc();
        }
        self.phase = Phase::Ended;
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request head not complete within header_timeout ({:?}, {} bytes read)",
                self.policy().limit,
                self.head_bytes
            ),
        )
    }
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The last word wins: calls come in order from the connection's own task.
        let told = std::mem::replace(this.told.get_mut(), NOTHING);
        if this.phase != Phase::Ended {
            match told {
                NEXT_HEAD => {
                    this.phase = Phase::Idle;
                    this.idle_since = Instant::now();
                }
                HEAD_PARSED => this.phase = Phase::Body,
                _ => {}
            }
        }
        if this.phase == Phase::Ended {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            let fresh = &buf.filled()[before..];
            this.frame(fresh)?;
            if this.phase == Phase::Body {
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(this.head_read(fresh));
        }
        if this.phase == Phase::Body {
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            match read {
                Poll::Ready(Ok(())) => this.frame(&buf.filled()[before..])?,
                Poll::Pending => return this.poll_drain(cx),
                Poll::Ready(Err(_)) => {}
            }
            return read;
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.frame(fresh)?;
                Poll::Ready(this.head_read(fresh))
            }
            Poll::Pending => match this.poll_drain(cx) {
                Poll::Pending if this.phase == Phase::Head => this.poll_deadline(cx),
                Poll::Pending if this.phase == Phase::Idle => this.poll_idle(cx),
                other => other,
            },
            other => other,
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// Shuts the write side, then lingers while draining (see
    /// `HeadDeadline::poll_linger`): Pingora shuts a connection down this way before
    /// closing it after an answer it does not keep alive, and while draining many answers
    /// close their connections, some with requests pipelined behind them.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut == Shut::Open {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        }
        this.poll_linger(cx)
    }
}

/// As for the streams Pingora wraps: the write side shut, errors logged (and the linger
/// while draining, see `poll_shutdown`).
#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(self).await {
            log::debug!("connection {}: shutdown: {e}", self.inner.id());
        }
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Pingora's h2c services peek at a connection's first 24 bytes (the length of the HTTP/2
/// preface) before choosing HTTP/2 or HTTP/1. The wait is bounded by the head deadline: a
/// connection that has not sent 24 bytes by then (idle, a head dribbled, or a whole
/// request shorter than that) fails the peek with `TimedOut`, and Pingora drops it; so is
/// it by the drain's end (`ConnectionAborted`). The bytes are read here and handed out
/// again by the next reads, which scan them as usual.
#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // Only a head still to come is bounded (Pingora peeks before the first one).
        let deadline = match self.phase {
            Phase::Ended => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "connection ended by header_timeout",
                ))
            }
            Phase::Body | Phase::Idle if self.peeked.is_empty() => {
                return self.inner.try_peek(buf).await
            }
            Phase::Body | Phase::Idle => None,
            Phase::Head => Some(self.deadline),
        };
        let mut chunk = [0u8; 64];
        while self.peeked.len() < buf.len() {
            let want = (buf.len() - self.peeked.len()).min(chunk.len());
            match std::future::poll_fn(|cx| self.poll_peek(cx, &mut chunk[..want], deadline))
                .await?
            {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed while peeking",
                    ))
                }
                n => self.peeked.extend_from_slice(&chunk[..n]),
            }
        }
        buf.copy_from_slice(&self.peeked[..buf.len()]);
        if self.peeked.starts_with(H2_PREFACE) {
            // Pingora will take this connection as HTTP/2, which has its own framing.
            self.framing
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .stop();
        }
        Ok(true)
    }
}

#[path = "stream_drain.rs"]
mod drain;

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
