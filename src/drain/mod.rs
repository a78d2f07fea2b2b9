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
//!    one idle between requests, with no byte of a next request, is ended. Requests in
//!    flight go on, WebSockets keep relaying.
//! 4. `Ending` (`server.shutdown_timeout` after `Closing`, unless nothing was left
//!    before): what is still open ends: relayed WebSockets get a close frame (1001
//!    "going away") at a frame boundary, a request still reading from its client or
//!    streaming a response is cut between two writes (a chunked response ends after a
//!    whole chunk), a connection still waiting for a head is closed.
//!
//! Connections and relays hold a [`Tracked`]: it counts them (the process exits once none
//! is left) and registers the task to wake when the stage changes, so that idle
//! connections, waiting on a socket that will never speak, see it at once.
//!
//! Pingora's own shutdown notice (`http_cleanup`) is not used: it drops every HTTP/1
//! connection waiting for a request head, including one accepted a moment before whose
//! request is on its way (that connection would be closed unanswered).

pub mod sequence;
mod service;
mod wakers;

pub use service::Stoppable;

use pingora_core::server::{ListenFds, ShutdownWatch};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use tokio::sync::{watch, Notify};
use wakers::{Slot, Wakers};

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
    stage: AtomicU8,
    /// `stage >= Draining`, read on every request (`Connection: close`, `/readyz`).
    draining: AtomicBool,
    /// What the listening services take as their shutdown signal.
    accept: watch::Sender<bool>,
    /// Connections and relays alive.
    live: AtomicUsize,
    /// Notified when `live` drops to 0.
    emptied: Notify,
    /// Shard hint for the next [`Tracked`].
    next: AtomicUsize,
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
            live: AtomicUsize::new(0),
            emptied: Notify::new(),
            next: AtomicUsize::new(0),
            wakers: Wakers::new(),
            fds: Mutex::new(None),
        })
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::SeqCst))
    }

    /// Whether SIGQUIT was received: responses close their connections, `/readyz` is 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The shutdown signal for listening services: turns true when they must stop
    /// accepting (`Closing`). See [`Stoppable`].
    pub fn accept_watch(&self) -> ShutdownWatch {
        let mut watch = self.accept.subscribe();
        if *watch.borrow() {
            // Already stopped (a SIGQUIT right at start): the first wait must see it.
            watch.mark_changed();
        }
        watch
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
        self.live.load(Ordering::SeqCst)
    }

    /// Count a connection (or relay) until the returned guard drops.
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.live.fetch_add(1, Ordering::SeqCst);
        Tracked {
            drain: Arc::clone(self),
            hint: self.next.fetch_add(1, Ordering::Relaxed),
            slot: Slot::default(),
        }
    }

    /// Move on to `stage` (never back) and wake every waiting connection and relay.
    fn advance(&self, stage: Stage) {
        if stage >= Stage::Draining {
            self.draining.store(true, Ordering::SeqCst);
        }
        self.stage.fetch_max(stage as u8, Ordering::SeqCst);
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

/// A connection or relay counted by its [`Drain`] (see [`Drain::track`]); also its place
/// among the tasks woken when the stage changes.
#[derive(Debug)]
pub struct Tracked {
    drain: Arc<Drain>,
    hint: usize,
    slot: Slot,
}

impl Tracked {
    /// The task is about to wait with `waker`: it is woken when the stage changes from
    /// now on. Returns the stage, read after registering (a change in between is not
    /// missed: either it is seen here, or the wake-up comes).
    pub fn park(&mut self, waker: &Waker) -> Stage {
        self.drain.wakers.register(&mut self.slot, waker, self.hint);
        self.drain.stage()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drain.wakers.unregister(&mut self.slot);
        if self.drain.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drain.emptied.notify_waiters();
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
        assert_eq!(d.stage(), Stage::Serving);
        assert!(!d.is_draining());
        d.start_draining();
        assert!(d.is_draining());
        assert!(!*accept.borrow());
        d.stop_accepting();
        assert_eq!(d.stage(), Stage::Closing);
        assert!(accept.has_changed().unwrap_or(false) && *accept.borrow_and_update());
        d.start_draining();
        assert_eq!(d.stage(), Stage::Closing, "never back");

        let (a, b) = (d.track(), d.track());
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
        let mut t = d.track();
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
