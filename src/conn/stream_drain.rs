//! What the process's drain ([`crate::drain`]) does to a [`HeadDeadline`] connection:
//! a read that has to wait registers the task and ends the stream when the drain says
//! so, an h2c peek ends with the drain too, and while draining a connection shut down
//! after an answer lingers before it is closed (see the module docs of `stream`).

use super::{HeadDeadline, Phase};
use crate::drain::{Stage, QUIET};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

/// While draining, how long a connection Pingora closes after an answer keeps reading
/// (and dropping) what its client still sends, until the client ends its side.
pub const LINGERING_CLOSE: Duration = Duration::from_secs(1);

/// Reads a lingering close makes in a row before letting other tasks run.
const READS_PER_POLL: usize = 16;

/// Where the connection is in its close (see [`HeadDeadline::poll_linger`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shut {
    /// Not shut down.
    Open,
    /// The write side is shut; reading what the client still sends until then.
    Lingering(Instant),
    /// Shut down.
    Done,
}

impl HeadDeadline {
    /// A read has to wait: register with the drain, and end the stream if the drain
    /// says so (see the module docs); `Pending` otherwise.
    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tracked.park(cx.waker()) {
            Stage::Ending if self.phase == Phase::Body || self.head_bytes > 0 => {
                self.phase = Phase::Ended;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "shutdown_timeout over: connection ended",
                )))
            }
            Stage::Ending => {
                self.phase = Phase::Ended;
                Poll::Ready(Ok(()))
            }
            Stage::Closing if self.phase == Phase::Idle => {
                // Not under a next request its client may be sending right now.
                if self.poll_timer(cx, self.idle_since + QUIET).is_pending() {
                    return Poll::Pending;
                }
                log::debug!(
                    "connection {} idle between requests while draining: closed",
                    self.inner.id()
                );
                self.phase = Phase::Ended;
                Poll::Ready(Ok(()))
            }
            _ => Poll::Pending,
        }
    }

    /// One read of `Peek::try_peek` into `chunk`: as a head read, it ends when the drain
    /// ends everything, and (with a `deadline`) when the head deadline passes.
    pub(super) fn poll_peek(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut [u8],
        deadline: Option<Instant>,
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => return Poll::Ready(Ok(buf.filled().len())),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if self.tracked.park(cx.waker()) == Stage::Ending {
            self.phase = Phase::Ended;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "shutdown_timeout over: connection ended",
            )));
        }
        match deadline {
            Some(d) if self.poll_timer(cx, d).is_ready() => {
                self.head_bytes = self.peeked.len();
                log::debug!(
                    "connection {} sent {} of the bytes peeked at within header_timeout",
                    self.inner.id(),
                    self.head_bytes,
                );
                Poll::Ready(Err(self.timed_out()))
            }
            _ => Poll::Pending,
        }
    }

    /// The write side is shut: while draining, read and drop what the client still sends
    /// until it ends its side, or for [`LINGERING_CLOSE`] (`Ready` then). A connection
    /// closed with bytes unread, or receiving bytes once closed, is reset by the kernel,
    /// which throws away what of the answer it still holds (RFC 9112 §9.6).
    pub(super) fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let until = match self.shut {
            Shut::Open => {
                if self.phase == Phase::Ended || !self.tracked.drain().is_draining() {
                    self.shut = Shut::Done;
                    return Poll::Ready(Ok(()));
                }
                let until = Instant::now() + LINGERING_CLOSE;
                self.shut = Shut::Lingering(until);
                until
            }
            Shut::Lingering(until) => until,
            Shut::Done => return Poll::Ready(Ok(())),
        };
        let mut sink = [0u8; 1024];
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                // The client ended its side (or is gone).
                Poll::Ready(_) => {
                    self.shut = Shut::Done;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {
                    if self.poll_timer(cx, until).is_ready() {
                        self.shut = Shut::Done;
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
            }
        }
        // A client still sending: let other tasks run, the timer bounds it.
        if Instant::now() >= until {
            self.shut = Shut::Done;
            return Poll::Ready(Ok(()));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
