//! [`Stoppable`]: a listening service that stops accepting when moat's drain says so.
//!
//! Pingora gives every service the same shutdown signal, broadcast by its main loop. moat
//! runs its own SIGQUIT sequence ([`sequence`](super::sequence)) and lets Pingora
//! broadcast only at its very end, so the wrapped service is given the drain's watch
//! ([`Drain::accept_watch`]) as its shutdown signal instead: its accept loops stop, and
//! its HTTP sessions stop keeping connections alive, when the sequence says so
//! (`server.grace_period`). The wrapper also keeps Pingora's table of listening sockets,
//! which the sequence hands over to a new process (with Pingora's own function).

use super::Drain;
use async_trait::async_trait;
use pingora_core::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora_core::services::Service;
use std::sync::Arc;
use std::time::Duration;

/// `inner`, started with the drain's watch as its shutdown signal.
pub struct Stoppable<S> {
    inner: S,
    drain: Arc<Drain>,
}

impl<S> Stoppable<S> {
    /// Run `inner` until `drain` stops accepting.
    pub fn new(inner: S, drain: Arc<Drain>) -> Stoppable<S> {
        Stoppable { inner, drain }
    }
}

#[async_trait]
impl<S: Service> Service for Stoppable<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        _pingora_shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(fds) = &fds {
            // The same table Pingora would hand over on SIGQUIT: the drain does it.
            self.drain.keep_fds(fds);
        }
        let stop = self.drain.accept_watch();
        self.inner.start_service(fds, stop, listeners_per_fd).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
