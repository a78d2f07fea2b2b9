//! One Redis server as the client sees it: where it is and how to log in ([`Endpoint`]),
//! its one connection, and its [`Breaker`].
//!
//! The connection is the `redis` crate's `MultiplexedConnection` (every call of the
//! process pipelined on one socket; the crate does the RESP codec and the login: `AUTH`
//! or `HELLO`, `SELECT`, `CLIENT SETINFO`), over a stream moat opens itself — TCP, then
//! TLS with the connector of `redis.tls` when on — and wraps in [`Guarded`], which bounds
//! what a reply may make moat hold (see [`super::guard`]). The crate's own connection
//! helpers open their sockets themselves, which would leave the replies unbounded.
//!
//! Connecting runs in its own task, shared by every call that needs it meanwhile and not
//! cancelled by their `redis.timeout`; it gives up after [`connect_bound`]. A connection
//! is replaced on the next call (the host name resolved again) when:
//! - the server closed it, or its stream failed (marked dead by the stream): a restarted
//!   Redis costs no failed call;
//! - the server answered `READONLY`, `LOADING` or `MASTERDOWN`: a demoted primary, say,
//!   whose name now points at the new one;
//! - the node's breaker opened ([`Pass::failed`]): calls went unanswered, as on a dead host
//!   or a blackholed path, which TCP alone notices only after minutes. An idle connection
//!   is checked by TCP keepalive ([`KEEPALIVE_IDLE`]).
//!
//! A call whose command went out is never sent again (Redis may have run it); a call cut
//! short before its command left is dropped by the crate unsent.
//!
//! Credentials are sent only after the TLS handshake has checked the server's certificate
//! (with TLS on), and are never logged.

use super::breaker::{Breaker, Ticket};
use super::guard::Guarded;
use super::script::Script;
use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, RedisConnectionInfo, RedisFuture, ServerErrorKind, Value,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where a server is and how to log in.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Database, credentials and client name, as the crate sends them on connect.
    pub login: RedisConnectionInfo,
}

impl Endpoint {
    /// `host:port` (`[v6]:port` for IPv6): no credentials, safe to log.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

/// `host:port`, bracketing an IPv6 host.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The longest a connection attempt (TCP, TLS, login) may take: `redis.timeout`, but at
/// least a second, so a connection that needs a few round trips to a distant server is
/// made even with a short `redis.timeout` (calls waiting for it still end at theirs).
pub fn connect_bound(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1))
}

/// How long a connection may stay idle before TCP checks the server is still there.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// Between keepalive probes; 3 unanswered ones drop the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// A connection and the flag its stream raises when it can carry nothing more.
#[derive(Clone)]
struct Live {
    conn: MultiplexedConnection,
    dead: Arc<AtomicBool>,
}

type Connecting = Shared<BoxFuture<'static, Result<Live, String>>>;

enum Slot {
    Idle,
    Connecting(Connecting),
    Ready(Live),
}

/// One server: its endpoint, connection and breaker.
pub struct Node {
    pub endpoint: Endpoint,
    /// `endpoint.addr()`, computed once.
    pub addr: String,
    /// Its breaker (shared so a call can blame the node it was talking to).
    pub breaker: Arc<Breaker>,
    tls: Option<Arc<tokio_native_tls::TlsConnector>>,
    bound: Duration,
    slot: Mutex<Slot>,
}

impl Node {
    /// A node with no connection yet; connections use `tls` when given and give up after
    /// `bound`.
    pub fn new(
        endpoint: Endpoint,
        tls: Option<Arc<tokio_native_tls::TlsConnector>>,
        bound: Duration,
    ) -> Node {
        Node {
            addr: endpoint.addr(),
            endpoint,
            breaker: Arc::new(Breaker::new()),
            tls,
            bound,
            slot: Mutex::new(Slot::Idle),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live connection, or the one being made (started here when none is, or when
    /// the last attempt failed with no call left waiting for it).
    async fn conn(&self) -> Result<Live, String> {
        let attempt = {
            let mut slot = self.slot();
            match &*slot {
                Slot::Ready(l) if !l.dead.load(Ordering::Acquire) => return Ok(l.clone()),
                Slot::Connecting(c) if !matches!(c.peek(), Some(Err(_))) => c.clone(),
                _ => {
                    let c = self.start_connect();
                    *slot = Slot::Connecting(c.clone());
                    c
                }
            }
        };
        let r = attempt.clone().await;
        let mut slot = self.slot();
        if matches!(&*slot, Slot::Connecting(c) if c.ptr_eq(&attempt)) {
            *slot = match &r {
                Ok(l) => Slot::Ready(l.clone()),
                Err(_) => Slot::Idle,
            };
        }
        r.map_err(|why| format!("connect failed: {why}"))
    }

    /// Drop the connection (calls under way keep it until they end): the next call
    /// connects again.
    pub fn disconnect(&self) {
        let mut slot = self.slot();
        if matches!(&*slot, Slot::Ready(_)) {
            *slot = Slot::Idle;
        }
    }

    fn start_connect(&self) -> Connecting {
        let (endpoint, tls, bound) = (self.endpoint.clone(), self.tls.clone(), self.bound);
        let task = tokio::spawn(async move {
            match tokio::time::timeout(bound, connect(&endpoint, tls.as_deref())).await {
                Ok(r) => r,
                Err(_) => Err("timed out".to_string()),
            }
        });
        async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }
            .boxed()
            .shared()
    }

    /// Run `req` on this node (right after `ASKING` when `asking`). Server errors (`MOVED`,
    /// `NOSCRIPT`...) come back as [`Failure::Call`] errors of kind `Server`.
    pub async fn exec(&self, req: &Request<'_>, asking: bool) -> Result<Value, Failure> {
        let Live { mut conn, dead } = self.conn().await.map_err(Failure::Unreachable)?;
        let r = match (req, asking) {
            (Request::Eval(script, call), false) => script.run(&mut conn, call).await,
            (Request::Eval(script, call), true) => script.run(&mut Asking(&mut conn), call).await,
            (Request::Command(cmd), false) => cmd.query_async(&mut conn).await,
            (Request::Command(cmd), true) => cmd.query_async(&mut Asking(&mut conn)).await,
        };
        if let Err(e) = &r {
            if e.is_unrecoverable_error() || cannot_serve(e) {
                dead.store(true, Ordering::Release);
            }
        }
        r.map_err(Failure::Call)
    }
}

/// Whether `e` says the server cannot serve for now (`READONLY`: a demoted primary;
/// `LOADING`; `MASTERDOWN`): a new connection may reach one that can.
pub fn cannot_serve(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown
        )
    )
}

/// Why a call on a node failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection (connect, TLS or login failed): nothing was sent.
    Unreachable(String),
    /// The crate's error: the server's error reply, or the connection failed after the
    /// command may have left.
    Call(redis::RedisError),
}

/// A call admitted by a node's breaker. Its outcome is recorded once, by
/// [`Pass::answered`] or [`Pass::failed`]; a pass dropped without one (the call was
/// cancelled: its request went away) gives the breaker's probe back.
pub struct Pass {
    node: Arc<Node>,
    ticket: Option<Ticket>,
}

impl Pass {
    /// Admit a call to `node`, unless its breaker is open.
    pub fn admit(node: &Arc<Node>) -> Option<Pass> {
        let ticket = node.breaker.admit()?;
        Some(Pass {
            node: Arc::clone(node),
            ticket: Some(ticket),
        })
    }

    /// The server answered (an error reply included).
    pub fn answered(mut self) {
        if self.ticket.take().is_some() {
            self.node.breaker.success();
        }
    }

    /// No answer (or one saying the server cannot serve). When that opens the breaker,
    /// the connection is dropped, so the probe that follows connects afresh.
    pub fn failed(mut self) {
        if self.ticket.take().is_some() && self.node.breaker.failure() {
            self.node.disconnect();
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.node.breaker.abandon(t);
        }
    }
}

/// The nodes a client has met, by address, all connecting with the same TLS settings: a
/// node keeps its connection and breaker while it stays in use.
pub struct Nodes {
    tls: Option<Arc<tokio_native_tls::TlsConnector>>,
    bound: Duration,
    by_addr: Mutex<HashMap<String, Arc<Node>>>,
}

impl Nodes {
    /// No node yet; connections use `tls` when given and give up after `bound`.
    pub fn new(tls: Option<Arc<tokio_native_tls::TlsConnector>>, bound: Duration) -> Nodes {
        Nodes {
            tls,
            bound,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// A node for `endpoint` (no I/O); the one met before at its address when there is.
    pub fn get(&self, endpoint: Endpoint) -> Arc<Node> {
        let mut nodes = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let n = nodes
            .entry(endpoint.addr())
            .or_insert_with(|| Arc::new(Node::new(endpoint, self.tls.clone(), self.bound)));
        Arc::clone(n)
    }

    /// Forget the nodes `keep` refuses (their connections close once unused).
    pub fn retain(&self, mut keep: impl FnMut(&str, &Arc<Node>) -> bool) {
        let mut nodes = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|addr, n| keep(addr, n));
    }

    /// How many nodes are known.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.by_addr.lock().map(|n| n.len()).unwrap_or(0)
    }
}

/// A byte stream to a server: TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// Open a connection to `e`: TCP, TLS when `tls`, the guard, then the crate's login.
async fn connect(
    e: &Endpoint,
    tls: Option<&tokio_native_tls::TlsConnector>,
) -> Result<Live, String> {
    let tcp = open_tcp(&e.host, e.port)
        .await
        .map_err(|err| err.kind().to_string())?;
    let dead = Arc::new(AtomicBool::new(false));
    // The crate's own response timeout (500 ms by default) is off: every call is bounded
    // by `redis.timeout` by the client, and connecting by `connect_bound`.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let stream: Box<dyn Stream> = match tls {
        Some(tls) => Box::new(
            tls.connect(&e.host, tcp)
                .await
                .map_err(|err| format!("TLS: {err}"))?,
        ),
        None => Box::new(tcp),
    };
    let stream = Guarded::new(stream, Arc::clone(&dead));
    let (conn, driver) = MultiplexedConnection::new_with_config(&e.login, stream, config)
        .await
        .map_err(|err| err.to_string())?;
    let flag = Arc::clone(&dead);
    tokio::spawn(async move {
        driver.await;
        flag.store(true, Ordering::Release);
    });
    Ok(Live { conn, dead })
}

/// A TCP connection to `host:port` (the name resolved now), without Nagle's delay and with
/// keepalive on (a socket option that cannot be set leaves the connection usable).
async fn open_tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(3);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    Ok(tcp)
}

/// One call, before it is routed.
pub enum Request<'a> {
    /// A script call built by [`Script::call`].
    Eval(&'a Script, &'a Cmd),
    /// A plain command.
    Command(&'a Cmd),
}

impl Request<'_> {
    /// The key that routes the call in a cluster: a script's first key (`EVALSHA sha
    /// numkeys key ...`), a command's second word (`SET key ...`); `None` (any master)
    /// without one.
    pub fn key(&self) -> Option<&[u8]> {
        fn word(cmd: &Cmd, i: usize) -> Option<&[u8]> {
            match cmd.args_iter().nth(i) {
                Some(redis::Arg::Simple(b)) => Some(b),
                _ => None,
            }
        }
        match self {
            Request::Eval(_, call) if word(call, 2) == Some(b"0") => None,
            Request::Eval(_, call) => word(call, 3),
            Request::Command(cmd) => word(cmd, 1),
        }
    }
}

/// A connection whose every command is sent right after `ASKING` (which holds for the
/// next command only), in one write so no other call of the multiplexed connection can
/// come between them.
struct Asking<'c>(&'c mut MultiplexedConnection);

impl ConnectionLike for Asking<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("ASKING").add_command(cmd.clone());
            let mut replies = self.0.req_packed_commands(&p, 1, 1).await?;
            replies
                .pop()
                .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no reply")))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::IntoConnectionInfo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn node(addr: std::net::SocketAddr) -> Node {
        let info = format!("redis://{addr}").into_connection_info().unwrap();
        let endpoint = Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
            login: info.redis_settings().clone().set_skip_set_lib_name(),
        };
        Node::new(endpoint, None, Duration::from_secs(2))
    }

    /// A server answering `+PONG` to every command of every connection, counting them.
    async fn ponger() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let first = n.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    // The first connection is closed by the server after one reply.
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        let replies = buf[..k].iter().filter(|&&b| b == b'*').count();
                        let _ = s.write_all(&b"+PONG\r\n".repeat(replies)).await;
                        if first {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_before_use() {
        let (addr, accepted) = ponger().await;
        let n = node(addr);
        let ping = redis::cmd("PING");
        let v = n.exec(&Request::Command(&ping), false).await.unwrap();
        assert_eq!(v, Value::SimpleString("PONG".into()));
        // The server closed that one: the stream saw it, the next call reconnects.
        let closed = async {
            while !matches!(&*n.slot(), Slot::Ready(l) if l.dead.load(Ordering::Acquire)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap();
        for _ in 0..3 {
            n.exec(&Request::Command(&ping), false).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn asking_goes_in_the_same_write() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let n = node(l.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while !got.ends_with(b"k\r\n") {
                let k = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..k]);
            }
            s.write_all(b"+OK\r\n$1\r\nv\r\n").await.unwrap();
            got
        });
        let mut get = redis::cmd("GET");
        get.arg("k");
        let v = n.exec(&Request::Command(&get), true).await.unwrap();
        assert_eq!(v, Value::BulkString(b"v".to_vec()));
        let sent = server.await.unwrap();
        assert_eq!(
            sent,
            b"*1\r\n$6\r\nASKING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }

    #[tokio::test]
    async fn connections_are_kept_alive() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = open_tcp("127.0.0.1", l.local_addr().unwrap().port())
            .await
            .unwrap();
        let s = socket2::SockRef::from(&tcp);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert!(tcp.nodelay().unwrap());
    }

    #[test]
    fn routing_keys() {
        let s = Script::new("return 1");
        let call = s.call(&["a", "b"], 1);
        assert_eq!(Request::Eval(&s, &call).key(), Some(&b"a"[..]));
        let call = s.call(&[], ("x", 2));
        assert_eq!(Request::Eval(&s, &call).key(), None);
        let mut set = redis::cmd("SET");
        set.arg("k").arg(1);
        assert_eq!(Request::Command(&set).key(), Some(&b"k"[..]));
        assert_eq!(Request::Command(&redis::cmd("PING")).key(), None);
    }
}
