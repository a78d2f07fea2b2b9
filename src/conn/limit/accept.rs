//! Where connections meet the [`Limiter`] and the drain in a listening service, before
//! moat's connection wrapper has them, and the bound on a TLS client's first flight.
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
//! - A TLS connection is counted in the process's drain ([`crate::drain`]) from the same
//!   moment, with the same ride: a graceful shutdown does not end while a connection
//!   accepted before the listeners stopped is still in its handshake (a client whose
//!   ClientHello was lost and is sent again a second later, a slow mobile network). Once
//!   the handshake is over, moat's connection wrapper counts the connection itself and
//!   calls [`handed_over`], which drops the socket's count; a handshake that fails drops
//!   it with the socket. On a plain listener nothing is read before the wrapper has the
//!   connection: it counts it from there.
//! - [`BeforeTls`] also bounds the wait for a TLS client's first record (its ClientHello)
//!   to `server.limits.header_timeout`: without it, a connection that never sends one
//!   would hold its socket (and its slot, and a drain) for the 60 s Pingora allows a
//!   whole handshake. The wait also ends when the drain reaches its end
//!   (`shutdown_timeout` over), as a plain connection still waiting for its first request
//!   does. The rest of the handshake keeps Pingora's 60 s bound.

use super::{Limiter, Slot};
use crate::drain::{Drain, Stage, Tracked};
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::{ConnectionFilter, Listeners, PreTlsProcess};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::SslStream;
use pingora_core::protocols::{GetSocketDigest, Stream, UniqueID};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::{Tracer, Tracing};
use pingora_error::{Error, ErrorType};
use prometheus::IntCounter;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A listening service named `name` running `app`, its connections held to `limiter`
/// when there is one, a TLS client's first record awaited for `hello_within` at most, and
/// TLS connections counted in `drain` from before their handshake. Add its listeners with
/// `add_tcp` / `add_tls_with_settings` as usual.
pub fn service<A>(
    name: &str,
    app: A,
    limiter: Option<Arc<Limiter>>,
    hello_within: Duration,
    drain: &Arc<Drain>,
    metrics: &Metrics,
) -> Service<ConnLimit<A>> {
    let mut listeners = Listeners::new();
    listeners.set_pre_tls_callback(Arc::new(BeforeTls {
        limiter: limiter.clone(),
        hello_within,
        drain: Arc::clone(drain),
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

/// What rides on a downstream L4 stream (see the module docs): the connection's slot, and
/// on a TLS listener its count in the drain until [`handed_over`]. A copy holds neither:
/// both belong to the one connection.
#[derive(Debug)]
struct Held {
    _slot: Option<Slot>,
    /// Taken (and dropped) once moat's wrapper counts the connection.
    accepted: Mutex<Option<Tracked>>,
}

impl Held {
    fn boxed(slot: Option<Slot>, accepted: Option<Tracked>) -> Tracer {
        Tracer(Box::new(Held {
            _slot: slot,
            accepted: Mutex::new(accepted),
        }))
    }
}

impl Tracing for Held {
    /// Called by [`handed_over`] (Pingora calls it for upstream connections only): the
    /// connection is established and counted by moat's wrapper, the socket no longer
    /// counts it.
    fn on_connected(&self) {
        let accepted = self
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(accepted);
    }
    fn on_disconnected(&self) {}
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Held {
            _slot: None,
            accepted: Mutex::new(None),
        })
    }
}

/// The client address of `stream`, if known.
fn peer(stream: &L4Stream) -> Option<IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

/// Take a slot for `stream` and hang it on the stream, unless it holds one already.
/// `false`: refused (counted and logged by the limiter); the caller closes the stream.
fn hold(limiter: &Arc<Limiter>, stream: &mut L4Stream) -> bool {
    if stream.tracer.is_some() {
        return true;
    }
    match limiter.acquire(peer(stream)) {
        Ok(slot) => {
            stream.tracer = Some(Held::boxed(Some(slot), None));
            true
        }
        Err(_) => false,
    }
}

/// The TLS connection on `stream` has been handed to moat's wrapper, which counts it in
/// the drain from now on: its socket's count (see the module docs) goes. Call it once the
/// wrapper counts the connection, so that the drain's count never passes through 0 in
/// between. Nothing for any other stream.
pub fn handed_over(stream: &Stream) {
    if let Some(tls) = stream.as_any().downcast_ref::<SslStream<L4Stream>>() {
        release(tls.get_ref());
    }
}

/// Drop the drain count riding on `l4`, if any (its slot stays).
fn release(l4: &L4Stream) {
    if let Some(t) = &l4.tracer {
        t.0.on_connected();
    }
}

/// What a TLS listener does between accept and handshake: count the connection in the
/// drain, take its slot, then wait (bounded) for the client's first record; both then
/// ride on the stream.
struct BeforeTls {
    limiter: Option<Arc<Limiter>>,
    hello_within: Duration,
    drain: Arc<Drain>,
    /// `moat_header_timeouts_total{kind="tls_hello"}`.
    timeouts: IntCounter,
}

#[async_trait]
impl PreTlsProcess for BeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_error::Result<()> {
        // The connection's task has just started: counted from here (see the module docs).
        let mut accepted = self.drain.track(stream.id().unsigned_abs() as usize);
        let slot = match &self.limiter {
            None => None,
            Some(l) => match l.acquire(peer(stream)) {
                Ok(slot) => Some(slot),
                Err(_) => return Error::e_explain(
                    ErrorType::Custom("connection limit"),
                    "closed before the TLS handshake: a server.limits connection limit is reached",
                ),
            },
        };
        let hello = {
            // Woken when the drain moves on; over once it ends.
            let ending = std::future::poll_fn(|cx| match accepted.park(cx.waker()) {
                Stage::Ending => Poll::Ready(()),
                _ => Poll::Pending,
            });
            tokio::select! {
                biased;
                hello = tokio::time::timeout(self.hello_within, first_record(stream)) => Some(hello),
                () = ending => None,
            }
        };
        match hello {
            Some(Ok(Ok(()))) => {
                stream.tracer = Some(Held::boxed(slot, Some(accepted)));
                Ok(())
            }
            Some(Ok(Err(e))) => {
                Error::e_because(ErrorType::ReadError, "reading the ClientHello", e)
            }
            Some(Err(_)) => {
                self.timeouts.inc();
                Error::e_explain(
                    ErrorType::ReadTimedout,
                    "no TLS ClientHello within server.limits.header_timeout",
                )
            }
            None => Error::e_explain(
                ErrorType::ConnectionClosed,
                "no TLS ClientHello before server.shutdown_timeout was over",
            ),
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
        f.write_str("conn::limit::Filter")
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

    fn before_tls(limiter: Option<Arc<Limiter>>, hello_within: Duration) -> BeforeTls {
        BeforeTls {
            limiter,
            hello_within,
            drain: Drain::new(),
            timeouts: Metrics::new()
                .unwrap()
                .header_timeouts
                .with_label_values(&["tls_hello"]),
        }
    }

    /// A ClientHello-shaped record of 10 bytes.
    fn hello_record() -> Vec<u8> {
        let mut record = vec![22, 3, 1, 0, 10];
        record.extend_from_slice(b"0123456789");
        record
    }

    #[tokio::test]
    async fn a_tls_connection_counts_in_the_drain_from_accept_until_handed_over_or_closed() {
        use tokio::io::AsyncWriteExt;
        for limits in [None, Some(limiter("max_connections: 5"))] {
            let hook = before_tls(limits.clone(), Duration::from_secs(5));
            let open = || limits.as_ref().map_or(0, |l| l.open());
            // Handed over after its handshake: the socket's count goes, its slot stays.
            let (mut s, mut c) = pair().await;
            c.write_all(&hello_record()).await.unwrap();
            hook.process(&mut s).await.unwrap();
            assert_eq!(hook.drain.live(), 1);
            release(&s);
            assert_eq!(hook.drain.live(), 0);
            release(&s);
            assert_eq!(hook.drain.live(), 0, "released once");
            assert_eq!(open(), usize::from(limits.is_some()));
            drop(s);
            assert_eq!(open(), 0);
            // Its handshake failed: both go with the socket.
            let (mut s, mut c) = pair().await;
            c.write_all(&hello_record()).await.unwrap();
            hook.process(&mut s).await.unwrap();
            drop(s.tracer.clone());
            assert_eq!(
                (hook.drain.live(), open()),
                (1, usize::from(limits.is_some()))
            );
            drop(s);
            assert_eq!((hook.drain.live(), open()), (0, 0));
            // Counted while it waits for its ClientHello, which comes late.
            let (mut s, mut c) = pair().await;
            let drain = Arc::clone(&hook.drain);
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(drain.live(), 1, "counted while waiting");
                drain.stop_accepting();
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.write_all(&hello_record()).await.unwrap();
                c
            });
            hook.process(&mut s).await.expect("read after the stop");
            drop(late.await.unwrap());
            drop(s);
            assert_eq!(hook.drain.live(), 0);
        }
    }

    #[tokio::test]
    async fn handing_a_tls_stream_over_drops_the_count_its_socket_held() {
        use pingora_core::tls::ssl::{Ssl, SslContext, SslMethod};
        use tokio::io::AsyncWriteExt;
        let hook = before_tls(None, Duration::from_secs(5));
        let (mut s, mut c) = pair().await;
        c.write_all(&hello_record()).await.unwrap();
        hook.process(&mut s).await.unwrap();
        // What Pingora hands the application after the handshake (not needed here).
        let ctx = SslContext::builder(SslMethod::tls()).unwrap().build();
        let tls: Stream = Box::new(SslStream::new(Ssl::new(&ctx).unwrap(), s).unwrap());
        assert_eq!(hook.drain.live(), 1);
        handed_over(&tls);
        assert_eq!(hook.drain.live(), 0);
        // A plain stream carries no count.
        let l = limiter("max_connections: 5");
        let (mut s, _c) = pair().await;
        assert!(hold(&l, &mut s));
        handed_over(&(Box::new(s) as Stream));
        assert_eq!(l.open(), 0);
    }

    #[tokio::test]
    async fn the_wait_for_a_client_hello_ends_at_its_timeout_or_at_the_end_of_the_drain() {
        let l = limiter("max_connections: 5");
        let hook = before_tls(Some(Arc::clone(&l)), Duration::from_millis(200));
        let (mut s, _c) = pair().await;
        let started = tokio::time::Instant::now();
        assert!(hook.process(&mut s).await.is_err());
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(hook.timeouts.get(), 1);
        assert_eq!((hook.drain.live(), l.open()), (0, 0), "nothing rides on it");
        assert!(s.tracer.is_none());

        let hook = before_tls(Some(Arc::clone(&l)), Duration::from_secs(30));
        let (mut s, _c) = pair().await;
        let drain = Arc::clone(&hook.drain);
        let ender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drain.stop_accepting();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(drain.live(), 1, "still waiting once the listeners stopped");
            drain.end();
        });
        let waited = tokio::time::timeout(Duration::from_secs(5), hook.process(&mut s));
        assert!(waited.await.expect("ended with the drain").is_err());
        ender.await.unwrap();
        assert_eq!((hook.drain.live(), l.open()), (0, 0));
        assert_eq!(hook.timeouts.get(), 0, "not a timeout");
    }

    #[tokio::test]
    async fn the_first_record_is_awaited_whole_then_read_again() {
        use tokio::io::AsyncWriteExt;
        // A ClientHello-shaped record, then what follows it.
        let record = hello_record();
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
