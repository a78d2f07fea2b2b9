//! The shutdown signals Pingora's main loop waits for, mapped to the contract:
//! `SIGTERM` and `SIGINT` stop fast (Pingora's default would drain on `SIGTERM` as for
//! `SIGQUIT`), `SIGQUIT` drains and hands the sockets to a new process (graceful upgrade)
//! with moat's own sequence ([`crate::drain::sequence`]), which replaces Pingora's; a
//! `SIGTERM` or `SIGINT` during it stops at once. A second `SIGQUIT` changes nothing (the
//! sockets are offered once, when the first comes): it is logged, and the drain goes on.
//!
//! Pingora registers these in its main thread as soon as the services are started, so a
//! `SIGTERM` that arrives right after the listeners opened is not missed by a background
//! task that has not run yet.

use crate::drain::sequence::Sequence;
use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// moat's [`ShutdownSignalWatch`] (see the module docs).
pub struct MoatSignals {
    /// What SIGQUIT runs before the process stops.
    pub on_quit: Sequence,
}

#[async_trait]
impl ShutdownSignalWatch for MoatSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install the SIGQUIT/SIGTERM/SIGINT handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => {}
            _ = term.recv() => {
                log::info!("SIGTERM: stopping now");
                return ShutdownSignal::FastShutdown;
            }
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        let drained = self.on_quit.run();
        tokio::pin!(drained);
        loop {
            tokio::select! {
                // Drained: Pingora's "graceful terminate" now only stops the runtimes (its
                // grace period is 0, see `server::server_conf`).
                _ = &mut drained => return ShutdownSignal::GracefulTerminate,
                _ = quit.recv() => log::warn!(
                    "SIGQUIT again: ignored, the drain goes on (the listening sockets were offered once, at the first SIGQUIT; a new process started since does not get them)"
                ),
                _ = term.recv() => {
                    log::info!("SIGTERM while draining: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}
