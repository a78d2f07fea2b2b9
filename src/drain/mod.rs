//! Graceful shutdown and handover (SIGQUIT): what every connection of the process sees of
//! it, and the sequence that moves it on ([`sequence`]).
//!
//! A [`Drain`] goes through four [`Stage`]s:
//!
//! 1. `Serving`.
//! 2. `Draining` (SIGQUIT): `/readyz` answers 503 and every response closes its
//!    connection, while the listeners keep accepting (`server.grace_period`, and at
//!    least until Pingora has offered the listening sockets to a new process).
//! 3. `Closing`: the listeners stop accepting ([`Drain::accept_watch`] turns true, which
//!    Pingora's accept loops and HTTP sessions take as their shutdown signal, through
//!    [`Stoppable`]). A connection already accepted is still read and answered: one
//!    waiting for its first request keeps waiting for it (bounded by `header_timeout`);
//!    one idle between requests, with no byte of a next request, is ended once it has
//!    been idle for [`QUIET`] (a client answered a moment before may have its next
//!    request on the way: it is read and answered, with `Connection: close`). Requests in
//!    flight go on, WebSockets keep relaying.
//! 4. `Ending` (`server.shutdown_timeout` after `Closing`, unless nothing was left
//!    before): what is still open ends: relayed WebSockets get a close frame (1001
//!    "going away") at a frame boundary, a request still reading from its client or
//!    streaming a response is cut between two writes (a chunked response ends after a
//!    whole chunk), a connection still waiting for a head (or a TLS ClientHello) is
//!    closed.
//!
//! Connections and relays hold a [`Tracked`]: it counts them (the process exits once none
//! is left) and registers the task to wake when the stage changes, so that idle
//! connections, waiting on a socket that will never speak, see it at once. A connection
//! holds one from its accept: a TLS connection's rides on its socket through its
//! handshake (`conn::limit::accept`) until moat's connection wrapper (`conn`) takes
//! over the count.
//!
//! HTTP/2 connections are told at `Draining` ([`Drain::draining_watch`], which the
//! connection wrapper gives Pingora's HTTP sessions as their shutdown signal): a graceful
//! GOAWAY, after which the streams in flight finish, as HTTP/1 clients are told by
//! `Connection: close`.
//!
//! Pingora's own shutdown notice (`http_cleanup`) is not used: it drops every HTTP/1
//! connection waiting for a request head, including one accepted a moment before whose
//! request is on its way (that connection would be closed unanswered).
//!
//! Cost per connection (the wrapper of every accepted connection holds a [`Tracked`]):
//! one uncontended atomic add and subtract on a counter alone on its cache line, and, if
//! the connection ever waits, one lock of a shard of the waker registry to take a place
//! and one to give it back (see `wakers`); waiting again costs a comparison. The stage a
//! waiting read checks sits on a line nothing writes while serving.

pub mod sequence;
mod service;
mod wakers;

pub use service::Stoppable;

use crossbeam_utils::CachePadded;
use pingora_core::server::{ListenFds, ShutdownWatch};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use wakers::{Slot, Wakers};

/// Once the listeners stopped, how long a connection must have been idle between
/// requests before it is ended: a client answered a moment before the stop may have its
/// next request on the way (a `POST` lost that way is not sent again by the client).
pub const QUIET: Duration = Duration::from_secs(1);

/// Where the process is in its shutdown (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stage {
    /// Serving normally.
    Serving = 0,
    /// SIGQUIT received: still accepting; responses close their connections.
    Draining = 1,
    /// No longer accepting: idle connections end, the rest finishes.
    Closing = 2,
    /// `shutdown_timeout` is over: everything still open ends now.
    Ending = 3,
}

impl Stage {
    fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::Serving,
            1 => Stage::Draining,
            2 => Stage::Closing,
            _ => Stage::Ending,
        }
    }
}

/// The process's shutdown state, shared by every connection (see the module docs).
pub struct Drain {
    /// Read by every read that has to wait; written only when the stage changes.
    stage: AtomicU8,
    /// `stage >= Draining`, read on every request (`Connection: close`, `/readyz`).
    draining: AtomicBool,
    /// What the listening services take as their shutdown signal (`Closing`).
    accept: watch::Sender<bool>,
    /// What HTTP sessions take as their shutdown signal (`Draining`).
    told: watch::Sender<bool>,
    /// Connections and relays alive: written as each starts and ends, so on a cache line
    /// of its own (away from `stage`).
    live: CachePadded<AtomicUsize>,
    /// Notified when `live` drops to 0.
    emptied: Notify,
    wakers: Wakers,
    /// Pingora's table of listening sockets, to hand over (see [`Stoppable`]).
    fds: Mutex<Option<ListenFds>>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("stage", &self.stage())
            .field("live", &self.live())
            .finish()
    }
}

impl Drain {
    /// A process serving normally.
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain {
            stage: AtomicU8::new(Stage::Serving as u8),
            draining: AtomicBool::new(false),
            accept: watch::channel(false).0,
            told: watch::channel(false).0,
            live: CachePadded::new(AtomicUsize::new(0)),
            emptied: Notify::new(),
            wakers: Wakers::new(),
            fds: Mutex::new(None),
        })
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    /// Whether SIGQUIT was received: responses close their connections, `/readyz` is 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The shutdown signal for listening services: turns true when they must stop
    /// accepting (`Closing`). See [`Stoppable`].
    pub fn accept_watch(&self) -> ShutdownWatch {
        subscribe(&self.accept)
    }

    /// The shutdown signal for HTTP sessions: turns true at `Draining`, when clients are
    /// told to go (HTTP/2 connections get a graceful GOAWAY, HTTP/1 ones are not kept
    /// alive). Not for accept loops: see [`Drain::accept_watch`].
    pub fn draining_watch(&self) -> ShutdownWatch {
        subscribe(&self.told)
    }

    /// Keep Pingora's table of listening sockets (the same for every service).
    fn keep_fds(&self, fds: &ListenFds) {
        let mut kept = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        kept.get_or_insert_with(|| Arc::clone(fds));
    }

    /// Pingora's table of listening sockets, once a service started.
    fn listen_fds(&self) -> Option<ListenFds> {
        self.fds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections and relays alive.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Count a connection (or relay) until the returned guard drops; `hint` spreads the
    /// guards over the waker registry's shards (the connection's file descriptor).
    pub fn track(self: &Arc<Self>, hint: usize) -> Tracked {
        Tracked::new(Arc::clone(self), hint)
    }

    /// Move on to `stage` (never back) and wake every waiting connection and relay.
    fn advance(&self, stage: Stage) {
        if stage >= Stage::Draining {
            self.draining.store(true, Ordering::Release);
            self.told.send_replace(true);
        }
        // Before the wake-ups (the registry's locks order it before any read of it by a
        // task registering after them; a task registered before is woken).
        self.stage.fetch_max(stage as u8, Ordering::AcqRel);
        if stage >= Stage::Closing {
            self.accept.send_replace(true);
        }
        self.wakers.wake_all();
    }

    /// SIGQUIT: start draining (still accepting).
    pub fn start_draining(&self) {
        self.advance(Stage::Draining);
    }

    /// Stop accepting; idle connections end.
    pub fn stop_accepting(&self) {
        self.advance(Stage::Closing);
    }

    /// End everything still open.
    pub fn end(&self) {
        self.advance(Stage::Ending);
    }

    /// Wait until no connection or relay is left.
    pub async fn emptied(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A receiver of `sender` whose first wait sees a value already true (a SIGQUIT right at
/// start).
fn subscribe(sender: &watch::Sender<bool>) -> ShutdownWatch {
    let mut watch = sender.subscribe();
    if *watch.borrow() {
        watch.mark_changed();
    }
    watch
}

/// How a [`Tracked`] reaches its [`Drain`]: through a pointer its owner holds anyway (a
/// connection's wrapper holds its service's policy), so that counting a connection takes
/// no reference count of the drain's own.
pub trait Holder {
    /// The drain.
    fn drain(&self) -> &Arc<Drain>;
}

impl Holder for Arc<Drain> {
    fn drain(&self) -> &Arc<Drain> {
        self
    }
}

/// A connection or relay counted by its [`Drain`] (see [`Drain::track`]), reached
/// through `H`; also its place among the tasks woken when the stage changes.
#[derive(Debug)]
pub struct Tracked<H: Holder = Arc<Drain>> {
    holder: H,
    hint: usize,
    slot: Slot,
}

impl<H: Holder> Tracked<H> {
    /// Count a connection in `holder`'s drain until the guard drops; `hint` spreads the
    /// guards over the waker registry's shards (the connection's file descriptor).
    pub fn new(holder: H, hint: usize) -> Tracked<H> {
        // Only the decrement to 0 has to be ordered (see `Drop`).
        holder.drain().live.fetch_add(1, Ordering::Relaxed);
        Tracked {
            holder,
            hint,
            slot: Slot::default(),
        }
    }

    /// What the drain is reached through.
    pub fn holder(&self) -> &H {
        &self.holder
    }

    /// The drain.
    pub fn drain(&self) -> &Drain {
        self.holder.drain()
    }

    /// The same connection counted through the drain itself, for a task that outlives
    /// what `H` belongs to (a relayed WebSocket outlives its wrapper). This guard can go:
    /// the count never drops to 0 in between.
    pub fn detach(&self) -> Tracked {
        Tracked::new(Arc::clone(self.holder.drain()), self.hint)
    }

    /// The task is about to wait with `waker`: it is woken when the stage changes from
    /// now on. Returns the stage, read after registering (a change in between is not
    /// missed: either it is seen here, or the wake-up comes).
    pub fn park(&mut self, waker: &Waker) -> Stage {
        let drain = self.holder.drain();
        drain.wakers.register(&mut self.slot, waker, self.hint);
        drain.stage()
    }
}

impl<H: Holder> Drop for Tracked<H> {
    fn drop(&mut self) {
        let drain = self.holder.drain();
        drain.wakers.unregister(&mut self.slot);
        // Release: what this connection did comes before the wait for 0 ending.
        if drain.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            drain.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stages_move_forward_and_emptied_waits_for_the_last_guard() {
        let d = Drain::new();
        let mut accept = d.accept_watch();
        let mut told = d.draining_watch();
        assert_eq!(d.stage(), Stage::Serving);
        assert!(!d.is_draining() && !*told.borrow());
        d.start_draining();
        assert!(d.is_draining());
        assert!(told.has_changed().unwrap_or(false) && *told.borrow_and_update());
        assert!(!*accept.borrow());
        // A watch taken later sees it at once.
        assert!(d.draining_watch().has_changed().unwrap_or(false));
        d.stop_accepting();
        assert_eq!(d.stage(), Stage::Closing);
        assert!(accept.has_changed().unwrap_or(false) && *accept.borrow_and_update());
        d.start_draining();
        assert_eq!(d.stage(), Stage::Closing, "never back");

        let (a, b) = (d.track(1), d.track(2));
        assert_eq!(d.live(), 2);
        let waiter = tokio::spawn({
            let d = Arc::clone(&d);
            async move { d.emptied().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("emptied")
            .expect("task");
        assert_eq!(d.live(), 0);
    }

    #[tokio::test]
    async fn a_parked_task_is_woken_by_the_next_stage() {
        let d = Drain::new();
        let mut t = d.track(0);
        let task = tokio::spawn(async move {
            std::future::poll_fn(|cx| match t.park(cx.waker()) {
                Stage::Ending => std::task::Poll::Ready(()),
                _ => std::task::Poll::Pending,
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        d.stop_accepting();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        d.end();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(d.live(), 0);
    }
}
