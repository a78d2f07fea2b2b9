//! Relaying an upgraded WebSocket connection between the client and the upstream, both
//! ways, until both sides are done.
//!
//! An idle relay holds no buffer: reads go into one scratch buffer per thread (64 KiB,
//! which also lets a read bypass the 64 KiB buffer Pingora keeps in front of a plain TCP
//! client connection), and the bytes are written on at once; only what a write could not
//! take yet is copied to the heap, and reading that direction stops until it is written.
//!
//! Half close: end of stream from one side shuts the other side's write half down (after
//! what is pending was written); the relay ends when both directions have ended, on the
//! first error either way, or after `idle` with no byte moved in either direction.
//!
//! When the process stops (its drain reaches `Ending`, see [`crate::drain`]), the relay
//! closes the WebSocket itself, both ways: each direction is relayed up to the end of the
//! frame in progress ([`Frames`] follows where frames end, without holding them), then a
//! close frame with status 1001 "going away" goes out instead of what follows (masked
//! toward the upstream, as a client's frames must be; not at all in a direction that
//! already carried its sender's own close), and what the peer sends after is read and
//! dropped. When a peer answers with its own close frame (or ends its
//! stream), the other side's write half is shut; the relay ends when both did, or after
//! [`CLOSE_WAIT`], whichever comes first.

use super::frames::{going_away, Frames};
use crate::drain::{Stage, Tracked};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Size of the per-thread scratch buffer reads go into.
pub const SCRATCH: usize = 64 * 1024;

/// Reads (each followed by a write) one direction makes in a row before letting the
/// other direction and other tasks run.
const READS_PER_POLL: usize = 16;

/// When the process stops: how long the close frames and the peers' answers get before
/// the relay ends anyway (less than the drain's own wait, `drain::sequence::LINGER`).
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides ended their streams.
    Closed,
    /// Nothing moved for the idle limit.
    Idle,
    /// A read or write failed (`ErrorKind` of the first error).
    Error(io::ErrorKind),
    /// The process stopped: close frames were sent (see the module docs).
    GoingAway,
}

/// Bytes a relay moved so far (updated as they move, so a relay dropped midway, at
/// shutdown, still leaves its count behind).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes from `a` to `b`.
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
}

/// Where one direction is in moat's own close (when the process stops).
#[derive(Default)]
enum Closing {
    /// Not closing.
    #[default]
    No,
    /// This close frame goes out at the next frame boundary.
    Wanted(Vec<u8>),
    /// The close frame went out (or was queued): what the source sends is dropped.
    Sent,
}

/// One direction's state.
#[derive(Default)]
struct Half {
    /// Bytes read but not written yet, from `pos` on.
    pending: Vec<u8>,
    pos: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The source ended its stream.
    read_done: bool,
    /// The destination's write half was shut down.
    shut: bool,
    /// Where the frames of what was read end.
    frames: Frames,
    closing: Closing,
}

impl Half {
    fn done(&self) -> bool {
        self.read_done && self.shut
    }

    /// Close this direction with `frame` at its next frame boundary.
    fn close_with(&mut self, frame: Vec<u8>) {
        if !self.done() {
            self.closing = Closing::Wanted(frame);
        }
    }

    /// This direction reached the frame boundary its close waited for: queue the close
    /// frame, unless `peer_closed` (the source's own close frame went through whole: a
    /// second close is forbidden, RFC 6455 §5.5.1). Either way, the source is dropped
    /// from here on.
    fn close_due(&mut self, peer_closed: bool) {
        if let Closing::Wanted(frame) = std::mem::replace(&mut self.closing, Closing::Sent) {
            if !peer_closed {
                self.pending.extend_from_slice(&frame);
            }
        }
    }

    /// Move bytes from `src` to `dst` until either would block. `Ready(Ok(moved))` when
    /// this direction has ended (or used its turn: then it woke the task), `Pending` when
    /// it waits; `moved` says whether any byte went through either way.
    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        scratch: &mut [u8],
        bytes: &mut u64,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        let mut reads = 0;
        loop {
            std::task::ready!(self.poll_written(cx, dst, moved))?;
            if matches!(self.closing, Closing::Wanted(_)) && self.frames.at_boundary() {
                // Everything read was written and ends a frame: the close goes next.
                self.close_due(self.frames.closed());
                continue;
            }
            if matches!(self.closing, Closing::Sent) && self.frames.closed() {
                // The source answered (or sent) a close: nothing more to read from it.
                self.read_done = true;
            }
            if self.read_done {
                if !self.shut {
                    match Pin::new(&mut *dst).poll_shutdown(cx) {
                        // A peer already gone cannot be told more: this side is done.
                        Poll::Ready(_) => self.shut = true,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let n = buf.filled().len();
            if n == 0 {
                self.read_done = true;
                continue;
            }
            *moved = true;
            self.pass_on(cx, dst, &scratch[..n], bytes)?;
        }
    }

    /// Write out what is pending, then flush: `Ready(Ok(()))` once all of it went.
    fn poll_written<D>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        D: AsyncWrite + Unpin,
    {
        while self.pos < self.pending.len() {
            match Pin::new(&mut *dst).poll_write(cx, &self.pending[self.pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    self.unflushed = true;
                    *moved = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.pending.is_empty() {
            // Written out: give the memory back while the connection idles.
            self.pending = Vec::new();
            self.pos = 0;
        }
        if self.unflushed {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Pass on `read`, just read from the source: all of it, up to the end of the frame in
    /// progress when a close is wanted, nothing once it was sent (the rest is dropped, but
    /// its frames are followed, to see a close). What `dst` does not take at once is kept
    /// pending.
    fn pass_on<D>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
        read: &[u8],
        bytes: &mut u64,
    ) -> io::Result<()>
    where
        D: AsyncWrite + Unpin,
    {
        let forward = match self.closing {
            Closing::No => self.frames.advance(read, false),
            Closing::Wanted(_) => self.frames.advance(read, true),
            Closing::Sent => 0,
        };
        let peer_closed = self.frames.closed();
        self.frames.advance(&read[forward..], false);
        *bytes += forward as u64;
        let mut off = 0;
        while off < forward {
            match Pin::new(&mut *dst).poll_write(cx, &read[off..forward]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(k)) => {
                    off += k;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if off < forward {
            self.pending.extend_from_slice(&read[off..forward]);
            self.pos = 0;
        }
        if forward < read.len() {
            // A frame ended inside this read: the close goes right after it.
            self.close_due(peer_closed);
        }
        Ok(())
    }
}

/// Relay between `client` and `upstream`, a WebSocket connection, until both directions
/// ended, an error, `idle` without a byte moving, or the process stopping (see the module
/// docs); `traffic` counts the bytes as they go (`a_to_b`: client to upstream).
/// `frames` follow each direction (client to upstream, upstream to client) from where
/// the relay starts; `tracked` is the connection's place in the process's drain.
pub async fn relay<A, B>(
    client: &mut A,
    upstream: &mut B,
    idle: Duration,
    traffic: &mut Traffic,
    tracked: &mut Tracked,
    frames: (Frames, Frames),
) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut ab = Half {
        frames: frames.0,
        ..Half::default()
    };
    let mut ba = Half {
        frames: frames.1,
        ..Half::default()
    };
    let mut last = Instant::now();
    // Once the process stops: when the relay ends whatever the peers do.
    let mut closing_until: Option<Instant> = None;
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    poll_fn(|cx| {
        if closing_until.is_none() && tracked.park(cx.waker()) == Stage::Ending {
            ab.close_with(going_away(Some(rand::random())));
            ba.close_with(going_away(None));
            let until = Instant::now() + CLOSE_WAIT;
            closing_until = Some(until);
            if sleep.deadline() > until {
                sleep.as_mut().reset(until);
            }
        }
        let mut moved = false;
        let result = step_with_scratch(
            cx,
            (client, upstream),
            (&mut ab, &mut ba),
            traffic,
            &mut moved,
        );
        if let Poll::Ready(end) = result {
            return Poll::Ready(match end {
                End::Closed if closing_until.is_some() => End::GoingAway,
                other => other,
            });
        }
        if moved {
            last = Instant::now();
        }
        while sleep.as_mut().poll(cx).is_ready() {
            let deadline = closing_until.map_or(last + idle, |c| c.min(last + idle));
            if Instant::now() >= deadline {
                return Poll::Ready(if closing_until.is_some() {
                    End::GoingAway
                } else {
                    End::Idle
                });
            }
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Poll both directions once.
/// [`step`] with this thread's scratch buffer (or, only if a stream's poll ran another
/// relay on this thread, a small one on the stack).
fn step_with_scratch<A, B>(
    cx: &mut Context<'_>,
    streams: (&mut A, &mut B),
    halves: (&mut Half, &mut Half),
    traffic: &mut Traffic,
    moved: &mut bool,
) -> Poll<End>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    SCRATCH_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < SCRATCH {
                scratch.resize(SCRATCH, 0);
            }
            step(cx, streams, halves, &mut scratch, traffic, moved)
        }
        Err(_) => {
            let mut small = [0u8; 4096];
            step(cx, streams, halves, &mut small, traffic, moved)
        }
    })
}

fn step<A, B>(
    cx: &mut Context<'_>,
    (a, b): (&mut A, &mut B),
    (ab, ba): (&mut Half, &mut Half),
    scratch: &mut [u8],
    traffic: &mut Traffic,
    moved: &mut bool,
) -> Poll<End>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if !ab.done() {
        if let Poll::Ready(Err(e)) = ab.poll(cx, a, b, scratch, &mut traffic.a_to_b, moved) {
            return Poll::Ready(End::Error(e.kind()));
        }
    }
    if !ba.done() {
        if let Poll::Ready(Err(e)) = ba.poll(cx, b, a, scratch, &mut traffic.b_to_a, moved) {
            return Poll::Ready(End::Error(e.kind()));
        }
    }
    if ab.done() && ba.done() {
        return Poll::Ready(End::Closed);
    }
    Poll::Pending
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
