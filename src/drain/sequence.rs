//! What happens after SIGQUIT, and when (`docs/operations.md` has the operator's view):
//!
//! 1. At once: [`Drain::start_draining`] (`/readyz` 503, responses close their
//!    connections, HTTP/2 clients get a GOAWAY), and the listening sockets are offered
//!    to a new process on `server.upgrade_sock` with Pingora's own handover
//!    (`Fds::send_to_sock`: a new process waiting there takes them at once; with none,
//!    Pingora retries for ~5 s before giving up; with one slow to take them, it polls
//!    for up to 10 s more). Both processes accept from here on. The offer is made once.
//! 2. `grace_period` after the signal (and not before the offer is over):
//!    [`Drain::stop_accepting`]. The old listeners close in this process (a new process
//!    holding the sockets goes on accepting); connections already accepted are served.
//! 3. As soon as no connection is left, the sequence is over. A connection counts from
//!    its task's first step: on a TLS listener before its handshake
//!    (`conn::limit::accept`), so that one whose ClientHello comes late is waited for (at
//!    most `header_timeout` after its accept if it never comes); on a plain one when
//!    moat's wrapper gets it, with nothing read before. "No connection left" is checked
//!    from [`SETTLE`] after the stop, so that a connection accepted at the last moment
//!    whose task has not started yet is not missed. Otherwise, once `shutdown_timeout`
//!    has passed since the stop, [`Drain::end`] ends what is left, and the process waits
//!    at most [`LINGER`] more for the WebSocket close handshakes and the connections
//!    being cut.
//! 4. The sequence returns and Pingora stops the runtimes, giving their tasks at most
//!    1 s (moat sets Pingora's own grace period to 0: this sequence replaces it).
//!
//! Pingora's own SIGQUIT path is not used: it stops accepting a fixed 5 s after the
//! handover (`CLOSE_TIMEOUT`, a constant), then waits `grace_period_seconds` whatever is
//! in flight, then drops every task (WebSockets included, without a close frame).

use super::Drain;
use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// Default `server.grace_period`: how long an instance keeps accepting after SIGQUIT.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Default `server.shutdown_timeout`: how long what is in flight gets once the instance
/// stopped accepting.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Once the listeners stopped, how long before "no connection left" ends the drain: the
/// time a connection accepted last has for its task to start (and be counted).
pub const SETTLE: Duration = Duration::from_secs(1);
/// After [`Drain::end`], how long the WebSocket close handshakes (and connections being
/// cut) get before the process stops.
pub const LINGER: Duration = Duration::from_secs(2);

/// The SIGQUIT sequence of one process.
#[derive(Debug, Clone)]
pub struct Sequence {
    drain: Arc<Drain>,
    /// `server.grace_period`.
    pub grace: Duration,
    /// `server.shutdown_timeout`.
    pub shutdown: Duration,
    /// `server.upgrade_sock` (as Pingora's `ServerConf` has it).
    pub upgrade_sock: String,
}

impl Sequence {
    /// The sequence for `drain`, timed as `cfg.server` says.
    pub fn new(drain: Arc<Drain>, cfg: &Config, upgrade_sock: String) -> Sequence {
        Sequence {
            drain,
            grace: cfg
                .server
                .grace_period
                .map_or(DEFAULT_GRACE_PERIOD, |d| d.get()),
            shutdown: cfg
                .server
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.get()),
            upgrade_sock,
        }
    }

    /// Run the whole sequence (see the module docs); returns when the process may stop.
    pub async fn run(&self) {
        let start = Instant::now();
        let drain = &self.drain;
        drain.start_draining();
        log::info!(
            "SIGQUIT: draining (/readyz 503, responses close their connections); offering the listening sockets on {}",
            self.upgrade_sock
        );
        self.hand_over().await;
        sleep_until(start + self.grace).await;
        drain.stop_accepting();
        log::info!(
            "stopped accepting; {} connection(s) left, given up to {:?}",
            drain.live(),
            self.shutdown
        );
        let stopped = Instant::now();
        let settled = async {
            sleep(SETTLE).await;
            drain.emptied().await
        };
        if timeout(self.shutdown, settled).await.is_ok() || drain.live() == 0 {
            // Pingora then logs a graceful stop as it would for its own SIGTERM.
            log::info!("drained {:?} after the stop: stopping", stopped.elapsed());
            return;
        }
        log::info!(
            "shutdown_timeout ({:?}) over: ending the {} connection(s) left (WebSockets get close 1001)",
            self.shutdown,
            drain.live()
        );
        drain.end();
        if timeout(LINGER, drain.emptied()).await.is_err() {
            log::warn!(
                "{} connection(s) still open {LINGER:?} after the end: cut",
                drain.live()
            );
        }
    }

    /// Offer the listening sockets to a new process (Pingora's handover, which blocks
    /// while it retries): when this returns, they were sent, or could not be. The offer
    /// runs in a thread of its own, which a SIGTERM meanwhile does not wait for (a
    /// runtime's blocking task would hold the exit up).
    async fn hand_over(&self) {
        let Some(fds) = self.drain.listen_fds() else {
            return;
        };
        let path = self.upgrade_sock.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("moat-handover".into())
            .spawn(move || {
                let fds = fds.lock();
                let sent = if fds.is_empty() {
                    Ok(None)
                } else {
                    fds.send_to_sock(path.as_str())
                        .map(Some)
                        .map_err(|e| e.to_string())
                };
                let _ = tx.send(sent);
            });
        if let Err(e) = spawned {
            log::error!("cannot hand the listening sockets over: {e}");
            return;
        }
        match rx.await {
            Ok(Ok(None)) => log::info!("no listening sockets to hand over"),
            Ok(Ok(Some(n))) => log::info!("listening sockets handed over ({n} bytes sent)"),
            Ok(Err(e)) => log::info!("no new process took the listening sockets ({e})"),
            Err(_) => log::error!("handing the listening sockets over failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Stage;
    use super::*;
    use crate::config::load::parse;

    fn sequence(server: &str) -> Sequence {
        let text = format!(
            "server: {{ {server} }}\nlisteners: [{{ name: a, address: \"127.0.0.1:1\" }}]\n"
        );
        let cfg = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        Sequence::new(Drain::new(), &cfg, "/nonexistent/moat-test.sock".into())
    }

    #[test]
    fn timing_follows_the_config() {
        let s = sequence("");
        assert_eq!(
            (s.grace, s.shutdown),
            (DEFAULT_GRACE_PERIOD, DEFAULT_SHUTDOWN_TIMEOUT)
        );
        let s = sequence("grace_period: 250ms, shutdown_timeout: 3s");
        assert_eq!(
            (s.grace, s.shutdown),
            (Duration::from_millis(250), Duration::from_secs(3))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_the_grace_period_and_ends_what_outlives_shutdown_timeout() {
        let s = sequence("grace_period: 2s, shutdown_timeout: 5s");
        let drain = Arc::clone(&s.drain);
        let mut accept = drain.accept_watch();
        let conn = drain.track(0);
        let run = tokio::spawn(async move { s.run().await });
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(drain.stage(), Stage::Draining);
        assert!(!*accept.borrow_and_update());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(drain.stage(), Stage::Closing);
        assert!(*accept.borrow_and_update());
        tokio::time::sleep(Duration::from_millis(4800)).await;
        assert_eq!(drain.stage(), Stage::Closing);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(drain.stage(), Stage::Ending);
        drop(conn);
        tokio::time::timeout(Duration::from_millis(10), run)
            .await
            .expect("over once the last connection ended")
            .expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn ends_early_when_nothing_is_left() {
        let s = sequence("grace_period: 0s, shutdown_timeout: 30s");
        let drain = Arc::clone(&s.drain);
        let conn = drain.track(0);
        let started = Instant::now();
        let run = tokio::spawn(async move { s.run().await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(conn);
        tokio::time::timeout(Duration::from_secs(1), run)
            .await
            .expect("over")
            .expect("task");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(drain.stage(), Stage::Closing, "nothing was cut");
    }
}
