//! Downstream connections: everything moat does to a client connection below the HTTP
//! request, in one place.
//!
//! - this file and `stream`: the head deadline (`server.limits.header_timeout`, below),
//!   the wrapper every accepted connection runs in;
//! - `scan`, `framing`, `chunked`: the HTTP/1 head scanner, the framing follower and the
//!   chunked-body validator the wrapper runs over the bytes it reads (request smuggling);
//! - [`limit`]: connection floods (`max_connections`, `max_connections_per_ip`), refused
//!   at accept.
//!
//! `server.limits.header_timeout`: every HTTP/1 request head must arrive whole within a
//! time limit, or the connection is closed (slowloris protection).
//!
//! Pingora 0.9 has no hook for this (it times each read of a head on its own), so moat
//! wraps the proxy application in two layers:
//!
//! - [`HeadTimeout`], the [`ServerApp`] the listening service runs, wraps each accepted
//!   connection (after the TLS handshake, which Pingora bounds by 60 s itself) in a
//!   [`HeadDeadline`] and hands it to the application.
//! - [`NextHead`] sits between Pingora's HTTP/1 keep-alive loop and the proxy: when a
//!   request is over and its connection is kept for the next one, it tells the
//!   connection's [`HeadDeadline`] to time the next head from its first byte (and the
//!   wait for it by the keep-alive idle timeout, which the wrapper keeps instead of
//!   Pingora: one timer per connection instead of one per request).
//! - The proxy calls [`head_parsed`] once Pingora has parsed a head, so what follows is
//!   never timed as a head even when the scanner did not see the head end (bytes carried
//!   over from the previous request).
//!
//! The same wrapper carries the process's graceful shutdown ([`crate::drain`]): each
//! [`HeadDeadline`] is counted in the drain and ends its connection as the drain says
//! (between requests once the listeners stopped, at once when `shutdown_timeout` is
//! over), which is why Pingora's own shutdown notice is not passed on (see
//! [`HeadTimeout`]'s `cleanup`). [`HeadTimeout`] gives the HTTP sessions the drain's
//! [`Drain::draining_watch`] as their shutdown signal, so that HTTP/2 clients get a
//! GOAWAY as soon as SIGQUIT comes (HTTP/1 ones get `Connection: close` from the proxy).
//!
//! The same wrapper validates chunked request bodies (the `chunked` and `framing`
//! modules): Pingora 0.9's chunk parser is lenient, and whatever moat accepts must not be
//! read differently further on (request smuggling). [`head_parsed`] tells the proxy when
//! the bytes already read hold a malformed chunked body; a later malformed read fails.
//!
//! HTTP/2 connections (by ALPN on TLS, or with prior knowledge on h2c listeners) are
//! wrapped too: their connection preface (`PRI * HTTP/2.0` and an empty line) counts as
//! the head, so it must arrive within the limit, after which nothing is timed (h2 has its
//! own framing; an idle h2 connection is closed by Pingora's `h2_idle_timeout`). On h2c
//! listeners Pingora first peeks at 24 bytes to tell h2 from HTTP/1; that wait is bounded
//! by the same deadline (see [`HeadDeadline`]'s `Peek`).

mod chunked;
mod framing;
pub mod limit;
mod scan;
mod stream;

pub use chunked::{Chunked, Fed, Malformed};
pub use framing::{Body, Framing};
pub use scan::HeadScan;
pub use stream::HeadDeadline;

use crate::config::Config;
use crate::drain::{Drain, Holder, Tracked};
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

/// What [`head_parsed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The connection has a [`HeadDeadline`]: it keeps the keep-alive idle timeout
    /// itself, and Pingora's own should be left off (see [`HeadDeadline`]'s docs).
    pub timed_here: bool,
    /// The request's chunked body is malformed in the bytes already read (or cannot be
    /// validated): refuse it with `400` and close the connection.
    pub malformed: Option<Malformed>,
}

/// Pingora has parsed a request head read from `stream` (the downstream connection of an
/// HTTP/1 request; `None` for HTTP/2), followed by `body`: its head deadline, if it has
/// one, stops timing reads, the body's framing is checked from here on, and after this
/// request the connection waits at most `idle_secs` for the next one. The proxy calls
/// this first thing for every request (`early_request_filter`).
pub fn head_parsed(stream: Option<&Stream>, idle_secs: u64, body: Body) -> Parsed {
    match stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()) {
        Some(d) => {
            d.set_idle_timeout(u32::try_from(idle_secs).unwrap_or(u32::MAX));
            Parsed {
                timed_here: true,
                malformed: d.head_parsed(body).err(),
            }
        }
        None => Parsed {
            timed_here: false,
            malformed: None,
        },
    }
}

/// The HTTP/1 connection `stream` switched protocols (a `101` went out): its framing is
/// no longer followed.
pub fn protocol_switched(stream: Option<&Stream>) {
    if let Some(d) = stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()) {
        d.protocol_switched();
    }
}

/// `stream` out of its [`HeadDeadline`] (for a connection that will carry no more request
/// heads: an upgraded one), with the bytes the deadline peeked and must be read first, and
/// the connection's place in the drain (`None` for a stream not wrapped, which comes back
/// as is). `None` only if the unwrapping fails.
pub fn into_inner(stream: Stream) -> Option<(Stream, Vec<u8>, Option<Tracked>)> {
    if !stream.as_any().is::<HeadDeadline>() {
        return Some((stream, Vec::new(), None));
    }
    let d = stream.into_any().downcast::<HeadDeadline>().ok()?;
    let (stream, peeked, tracked) = d.into_parts();
    Some((stream, peeked, Some(tracked)))
}

/// `header_timeout` when the config does not set one (as in the reference config).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured `server.limits.header_timeout`, or the default.
pub fn header_timeout(cfg: &Config) -> Duration {
    cfg.server
        .limits
        .as_ref()
        .and_then(|l| l.header_timeout)
        .map_or(DEFAULT_HEADER_TIMEOUT, |d| d.get())
}

/// What every [`HeadDeadline`] of a service shares: the limit, what to count, and the
/// process's drain.
#[derive(Debug)]
pub struct Policy {
    /// The time a whole request head may take.
    pub limit: Duration,
    /// Connections closed with a head begun but not finished in time.
    pub partial_head: IntCounter,
    /// Connections closed because they sent nothing in time.
    pub no_request: IntCounter,
    /// The process's shutdown state: every connection is counted in it, and ends as it
    /// says (see [`HeadDeadline`]).
    pub drain: Arc<Drain>,
}

/// Each connection's [`HeadDeadline`] holds its service's policy: the drain is reached
/// through it.
impl Holder for Arc<Policy> {
    fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }
}

impl Policy {
    /// `limit`, counted in `moat_header_timeouts_total{kind}`, for connections of `drain`.
    pub fn new(limit: Duration, metrics: &Metrics, drain: &Arc<Drain>) -> Policy {
        let kind = |k: &str| metrics.header_timeouts.with_label_values(&[k]);
        Policy {
            limit,
            partial_head: kind("partial_head"),
            no_request: kind("no_request"),
            drain: Arc::clone(drain),
        }
    }
}

/// The listening service's application: `app` with every HTTP/1 request head (and every
/// HTTP/2 connection preface) limited by a [`Policy`].
pub struct HeadTimeout<A> {
    app: Arc<NextHead<A>>,
    /// The HTTP sessions' shutdown signal: true from `Draining` on.
    told: ShutdownWatch,
    policy: Arc<Policy>,
}

impl<A> HeadTimeout<A> {
    /// Limit the request heads `app` reads as `policy` says.
    pub fn new(app: A, policy: Policy) -> HeadTimeout<A> {
        HeadTimeout {
            app: Arc::new(NextHead {
                inner: Arc::new(app),
            }),
            told: policy.drain.draining_watch(),
            policy: Arc::new(policy),
        }
    }
}

#[async_trait]
impl<A> ServerApp for HeadTimeout<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// The connection goes to the application wrapped, with the drain's
    /// [`Drain::draining_watch`] as its shutdown signal rather than the listener's
    /// (`_stop`, true only once the listeners stop): Pingora sends an HTTP/2 client a
    /// graceful GOAWAY when the signal turns, and no longer keeps HTTP/1 connections
    /// alive (which the proxy already stopped doing at `Draining`).
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _stop: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = Box::new(HeadDeadline::new(stream, Arc::clone(&self.policy)));
        self.app.process_new(stream, &self.told).await
    }

    /// Nothing: Pingora's `http_cleanup`, which the wrapped application would run now
    /// (the listeners stopped), drops every HTTP/1 connection waiting for a request
    /// head, a connection accepted a moment ago whose request is on its way included.
    /// Each [`HeadDeadline`] ends its connection as the drain says instead.
    async fn cleanup(&self) {}
}

/// An [`HttpServerApp`] passing everything to `inner`, and re-arming the head deadline of
/// connections kept alive for another request.
pub struct NextHead<A> {
    inner: Arc<A>,
}

#[async_trait]
impl<A> HttpServerApp for NextHead<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let reused = self.inner.process_new_http(session, shutdown).await?;
        let (stream, settings) = reused.consume();
        if let Some(d) = stream.as_any().downcast_ref::<HeadDeadline>() {
            d.next_head();
        }
        Some(ReusedHttpStream::new(stream, settings))
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        Arc::clone(&self.inner)
            .process_custom_session(stream, shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::validate::validate;
    use crate::config::{load::parse, ConfigErrors};

    fn config(limits: &str) -> Config {
        let text = format!("server: {{ limits: {{ {limits} }} }}\nlisteners: [{{ name: a, address: \"127.0.0.1:1\" }}]\n");
        parse(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(cfg: &Config) -> Vec<String> {
        let mut errs = ConfigErrors::default();
        validate(cfg, &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn header_timeout_default_and_configured() {
        assert_eq!(header_timeout(&config("")), DEFAULT_HEADER_TIMEOUT);
        let cfg = config("header_timeout: 3s");
        assert_eq!(header_timeout(&cfg), Duration::from_secs(3));
        assert!(
            !errors(&cfg).iter().any(|e| e.contains("header_timeout")),
            "{:?}",
            errors(&cfg)
        );
        let e = errors(&config("header_timeout: 500ms"));
        assert!(
            e.contains(&"server.limits.header_timeout: must be at least 1s".to_string()),
            "{e:?}"
        );
    }
}
