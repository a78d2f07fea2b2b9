//! Where connections meet the [`Limiter`] in a listening service, and the bound on a TLS
//! client's first flight.
//!
//! - [`Filter`], Pingora's connection filter, runs at `accept()`: a connection from an
//!   address (or in a process) already at its limit is closed there. It only reads the
//!   counts.
//! - The slot itself is taken as soon as the connection's task starts, before anything
//!   is read from it: on a TLS listener by [`BeforeTls`] (Pingora's pre-TLS hook, which
//!   runs before the handshake), on a plain one by [`ConnLimit`] (the application Pingora
//!   hands a new connection to). A burst from one address can pass the filter together
//!   (it reads counts the burst has not taken yet); the connections over the limit are then
//!   closed there, still before their TLS handshake (Pingora logs each as a handshake
//!   error).
//! - The slot rides on Pingora's L4 stream, in its `tracer` field: Pingora uses that
//!   field for upstream connections only, and drops it with the socket. A downstream
//!   connection's slot is thus given back exactly when its socket is closed, wherever the
//!   stream went (Pingora's HTTP/1 loop, an HTTP/2 connection, a WebSocket relay, a failed
//!   or timed-out handshake), at the cost of one small allocation per connection.
//! - [`BeforeTls`] also bounds the wait for a TLS client's first record (its ClientHello)
//!   to `server.limits.header_timeout`: without it, a connection that never sends one
//!   would hold its socket (and its slot) for the 60 s Pingora allows a whole handshake.
//!   The rest of the handshake keeps Pingora's 60 s bound.

use super::{Limiter, Slot};
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::{ConnectionFilter, Listeners, PreTlsProcess};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::{Tracer, Tracing};
use pingora_error::{Error, ErrorType};
use prometheus::IntCounter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A listening service named `name` running `app`, its connections held to `limiter`
/// when there is one, a TLS client's first record awaited for `hello_within` at most.
/// Add its listeners with `add_tcp` / `add_tls_with_settings` as usual.
pub fn service<A>(
    name: &str,
    app: A,
    limiter: Option<Arc<Limiter>>,
    hello_within: Duration,
    metrics: &Metrics,
) -> Service<ConnLimit<A>> {
    let mut listeners = Listeners::new();
    listeners.set_pre_tls_callback(Arc::new(BeforeTls {
        limiter: limiter.clone(),
        hello_within,
        timeouts: metrics.header_timeouts.with_label_values(&["tls_hello"]),
    }));
    let filter = limiter.clone().map(Filter);
    let mut svc =
        Service::with_listeners(name.to_string(), listeners, ConnLimit::new(app, limiter));
    if let Some(f) = filter {
        svc.set_connection_filter(Arc::new(f));
    }
    svc
}

/// A slot riding on an L4 stream (see the module docs). A copy holds no slot: the place
/// belongs to the one connection.
#[derive(Debug)]
struct Held {
    _slot: Option<Slot>,
}

impl Tracing for Held {
    fn on_connected(&self) {}
    fn on_disconnected(&self) {}
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Held { _slot: None })
    }
}

/// Take a slot for `stream` and hang it on the stream, unless it holds one already.
/// `false`: refused (counted and logged by the limiter); the caller closes the stream.
fn hold(limiter: &Arc<Limiter>, stream: &mut L4Stream) -> bool {
    if stream.tracer.is_some() {
        return true;
    }
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    match limiter.acquire(peer) {
        Ok(slot) => {
            stream.tracer = Some(Tracer(Box::new(Held { _slot: Some(slot) })));
            true
        }
        Err(_) => false,
    }
}

/// What a TLS listener does between accept and handshake: take the connection's slot,
/// then wait (bounded) for the client's first record.
struct BeforeTls {
    limiter: Option<Arc<Limiter>>,
    hello_within: Duration,
    /// `moat_header_timeouts_total{kind="tls_hello"}`.
    timeouts: IntCounter,
}

#[async_trait]
impl PreTlsProcess for BeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_error::Result<()> {
        if let Some(l) = &self.limiter {
            if !hold(l, stream) {
                return Error::e_explain(
                    ErrorType::Custom("connection limit"),
                    "closed before the TLS handshake: a server.limits connection limit is reached",
                );
            }
        }
        match tokio::time::timeout(self.hello_within, first_record(stream)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Error::e_because(ErrorType::ReadError, "reading the ClientHello", e),
            Err(_) => {
                self.timeouts.inc();
                Error::e_explain(
                    ErrorType::ReadTimedout,
                    "no TLS ClientHello within server.limits.header_timeout",
                )
            }
        }
    }
}

/// The longest TLS record (2^14 bytes of plaintext, and the 2048 bytes RFC 5246 lets a
/// record's expansion add).
const MAX_RECORD: usize = (1 << 14) + 2048;

/// Read the first TLS record (5-byte header, then its body) and put it back for the
/// handshake to read. Anything that is not a handshake record is put back as soon as that
/// is clear: OpenSSL refuses it.
async fn first_record(stream: &mut L4Stream) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    if head[0] != 22 || len > MAX_RECORD {
        stream.rewind(&head);
        return Ok(());
    }
    let mut record = vec![0u8; 5 + len];
    record[..5].copy_from_slice(&head);
    let got = stream.read_exact(&mut record[5..]).await;
    stream.rewind(&record);
    got.map(|_| ())
}

/// A listening service's application with connection limits in front (none: `inner` as
/// is).
pub struct ConnLimit<A> {
    inner: Arc<A>,
    limiter: Option<Arc<Limiter>>,
}

impl<A> ConnLimit<A> {
    /// `inner`, its connections held to `limiter` when there is one.
    pub fn new(inner: A, limiter: Option<Arc<Limiter>>) -> ConnLimit<A> {
        ConnLimit {
            inner: Arc::new(inner),
            limiter,
        }
    }
}

#[async_trait]
impl<A> ServerApp for ConnLimit<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = match &self.limiter {
            // A plain connection, as accepted: its slot is taken here. A TLS one took its
            // slot before the handshake (`BeforeTls`), on the L4 stream inside.
            Some(l) if stream.as_any().is::<L4Stream>() => {
                let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
                // Refused: dropping the stream closes the connection.
                if !hold(l, &mut l4) {
                    return None;
                }
                l4
            }
            _ => stream,
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Pingora's accept-time filter over a [`Limiter`] (see the module docs).
#[derive(Clone)]
pub struct Filter(pub Arc<Limiter>);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("conn_limit::Filter")
    }
}

#[async_trait]
impl ConnectionFilter for Filter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        self.0.admits(addr.map(|a| a.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limits: &str) -> Arc<Limiter> {
        let cfg =
            crate::config::load::parse(&format!("server: {{ limits: {{ {limits} }} }}\n")).unwrap();
        Limiter::from_config(&cfg, &Metrics::new().unwrap()).unwrap()
    }

    /// Both ends of a loopback TCP connection: moat's side as an L4 stream.
    async fn pair() -> (L4Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        (L4Stream::from(server), client)
    }

    #[tokio::test]
    async fn a_slot_rides_on_the_stream_until_the_socket_goes() {
        let l = limiter("max_connections: 1");
        let (mut a, _ca) = pair().await;
        let (mut b, _cb) = pair().await;
        assert!(hold(&l, &mut a));
        assert!(hold(&l, &mut a), "a stream holding its slot keeps it");
        assert_eq!(l.open(), 1);
        assert!(!hold(&l, &mut b), "the process is at its limit");
        assert!(b.tracer.is_none());
        // A copy of the tracer (Pingora never makes one downstream) holds no place.
        drop(a.tracer.clone());
        assert_eq!(l.open(), 1);
        drop(a);
        assert_eq!(l.open(), 0);
        assert!(hold(&l, &mut b));
    }

    #[tokio::test]
    async fn the_first_record_is_awaited_whole_then_read_again() {
        use tokio::io::AsyncWriteExt;
        // A ClientHello-shaped record of 10 bytes, then what follows it.
        let mut record = vec![22, 3, 1, 0, 10];
        record.extend_from_slice(b"0123456789");
        let (mut s, mut c) = pair().await;
        c.write_all(&record[..9]).await.unwrap();
        let wait = tokio::time::timeout(Duration::from_millis(200), first_record(&mut s));
        assert!(wait.await.is_err(), "a partial record is waited for");
        let (mut s, mut c) = pair().await;
        c.write_all(&record).await.unwrap();
        c.write_all(b"next").await.unwrap();
        first_record(&mut s).await.unwrap();
        let mut back = vec![0u8; record.len() + 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back[..record.len()], &record[..]);
        assert_eq!(&back[record.len()..], b"next");
        // Not a TLS handshake record: put back at once, OpenSSL refuses it.
        let (mut s, mut c) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        first_record(&mut s).await.unwrap();
        let mut back = [0u8; 16];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"GET / HTTP/1.1\r\n");
    }
}
