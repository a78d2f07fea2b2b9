//! One Redis server as the limiters' client sees it: where it is and how to log in (parsed
//! from a `redis://[user:password@]host:port[/db]` URL), a small pool of RESP connections
//! (tokio `TcpStream`s) and a [`Breaker`]. The RESP reader accepts nested arrays (e.g.
//! `CLUSTER SLOTS` replies). Credentials are never logged.

use super::redis::{RedisError, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker skips Redis before probing.
pub const OPEN_FOR: Duration = Duration::from_millis(500);
/// Idle connections kept per server.
const MAX_IDLE: usize = 32;
/// Deepest array nesting accepted in a reply.
const MAX_DEPTH: usize = 8;

/// Where a server is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` (`[v6]:port` for IPv6).
    pub addr: String,
    /// `AUTH [user] password`, sent on connect.
    pub auth: Option<(Option<String>, String)>,
    /// `SELECT db`, sent on connect.
    pub db: Option<u32>,
}

impl Endpoint {
    /// Parse `redis://[user:password@]host[:port][/db]` (port 6379 by default). Errors are
    /// operator messages and never repeat the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("expected redis://[user:password@]host:port[/db]")?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((cred, r)) => {
                let (user, pass) = match cred.split_once(':') {
                    Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), p.to_string()),
                    None => (None, cred.to_string()),
                };
                (Some((user, pass)), r)
            }
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, None),
            Some((h, d)) => (
                h,
                Some(d.parse::<u32>().map_err(|_| "bad database number")?),
            ),
            None => (rest, None),
        };
        if hostport.is_empty() {
            return Err("the url names no host".into());
        }
        let has_port = match hostport.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => hostport.contains(':'),
        };
        let addr = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        Ok(Endpoint { addr, auth, db })
    }
}

/// A connection: RESP over TCP.
pub type Conn = BufReader<TcpStream>;

/// One server: its endpoint, idle connections and breaker.
pub struct Node {
    /// Where it is.
    pub endpoint: Endpoint,
    /// Its breaker (shared so a call can blame the node it was talking to).
    pub breaker: std::sync::Arc<Breaker>,
    idle: Mutex<Vec<Conn>>,
}

impl Node {
    /// A node with no connection yet.
    pub fn new(endpoint: Endpoint) -> Node {
        Node {
            endpoint,
            breaker: std::sync::Arc::new(Breaker::new()),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection still open, or a new one (logged in, database selected).
    ///
    /// Idle connections the server has closed meanwhile (it restarted, or dropped idle
    /// clients) are found before anything is sent on them and thrown away: a command is
    /// never sent on them, so it never fails for that reason (and never needs a retry).
    /// A connection that fails after the command went out is not retried: Redis may have
    /// run it (a limiter would count twice), and the call fails like any other.
    pub async fn conn(&self) -> Result<Conn, RedisError> {
        while let Some(c) = self.pop_idle() {
            if still_open(&c) {
                return Ok(c);
            }
        }
        self.connect().await
    }

    fn pop_idle(&self) -> Option<Conn> {
        self.idle.lock().ok().and_then(|mut v| v.pop())
    }

    /// Keep `conn` for later (its last reply was read in full).
    pub fn put_back(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let s = TcpStream::connect(&self.endpoint.addr).await.map_err(io)?;
        let _ = s.set_nodelay(true);
        let mut conn = BufReader::new(s);
        if let Some((user, pass)) = &self.endpoint.auth {
            let mut cmd: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = user {
                cmd.push(u.as_bytes());
            }
            cmd.push(pass.as_bytes());
            call(&mut conn, &cmd).await?.map_err(RedisError::Reply)?;
        }
        if let Some(db) = self.endpoint.db {
            let d = db.to_string();
            call(&mut conn, &[b"SELECT", d.as_bytes()])
                .await?
                .map_err(RedisError::Reply)?;
        }
        Ok(conn)
    }
}

/// Skips a server that keeps failing: after [`TRIP_AFTER`] consecutive failures calls are
/// refused for [`OPEN_FOR`], then one probe call at a time decides whether it is back.
pub struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go out now (claims the single probe when half open). Every
    /// admitted call must end in [`Breaker::success`] or [`Breaker::failure`].
    pub fn admit(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        self.now_ms() >= until && !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Whether calls are being skipped (claims nothing).
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    /// The server answered.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// The call failed.
    pub fn failure(&self) {
        let f = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if f >= TRIP_AFTER || self.probing.load(Ordering::Acquire) {
            let until = self.now_ms() + OPEN_FOR.as_millis() as u64;
            self.open_until_ms.store(until.max(1), Ordering::Release);
        }
        self.probing.store(false, Ordering::Release);
    }
}

/// Whether an idle connection can carry a command: nothing is buffered and the socket has
/// nothing to read (a closed one reads end of file or an error; unsolicited bytes would
/// put replies out of step). One non-blocking read, no waiting.
fn still_open(conn: &Conn) -> bool {
    if !conn.buffer().is_empty() {
        return false;
    }
    let mut byte = [0u8; 1];
    matches!(conn.get_ref().try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn io(e: std::io::Error) -> RedisError {
    RedisError::Io(e.kind().to_string())
}

/// Send one command; the outer error is the connection's, the inner one Redis's reply
/// (the first error found, the reply being read in full so the connection stays usable).
pub async fn call(conn: &mut Conn, args: &[&[u8]]) -> Result<Result<Value, String>, RedisError> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    conn.get_mut().write_all(&out).await.map_err(io)?;
    read_reply(conn).await
}

/// Read one reply, arrays nested up to [`MAX_DEPTH`] included.
async fn read_reply(conn: &mut Conn) -> Result<Result<Value, String>, RedisError> {
    let mut error: Option<String> = None;
    // Arrays being filled: items still expected, items so far.
    let mut open: Vec<(usize, Vec<Value>)> = Vec::new();
    loop {
        let mut v = match read_scalar(conn).await? {
            Reply::Value(v) => v,
            Reply::Error(e) => {
                error.get_or_insert(e);
                Value::Nil
            }
            Reply::Array(0) => Value::Array(Vec::new()),
            Reply::Array(n) if open.len() < MAX_DEPTH => {
                open.push((n, Vec::with_capacity(n.min(64))));
                continue;
            }
            Reply::Array(_) => return Err(RedisError::Io("reply nested too deep".into())),
        };
        // Place `v` in its array, closing every array it completes.
        loop {
            let Some((left, items)) = open.last_mut() else {
                return Ok(match error {
                    Some(e) => Err(e),
                    None => Ok(v),
                });
            };
            items.push(v);
            *left -= 1;
            if *left > 0 {
                break;
            }
            let Some((_, done)) = open.pop() else { break };
            v = Value::Array(done);
        }
    }
}

enum Reply {
    Value(Value),
    Error(String),
    Array(usize),
}

async fn read_scalar(conn: &mut Conn) -> Result<Reply, RedisError> {
    let mut line = Vec::with_capacity(32);
    let n = conn.read_until(b'\n', &mut line).await.map_err(io)?;
    if n < 3 || !line.ends_with(b"\r\n") {
        return Err(RedisError::Io("connection closed".into()));
    }
    let body = String::from_utf8_lossy(&line[1..n - 2]).into_owned();
    let num = || {
        body.parse::<i64>()
            .map_err(|_| RedisError::Io("bad reply".into()))
    };
    Ok(match line[0] {
        b'+' => Reply::Value(Value::Bytes(body.into_bytes())),
        b'-' => Reply::Error(body),
        b':' => Reply::Value(Value::Int(num()?)),
        b'$' => match num()? {
            len if len < 0 => Reply::Value(Value::Nil),
            len => {
                let mut buf = vec![0u8; len as usize + 2];
                conn.read_exact(&mut buf).await.map_err(io)?;
                buf.truncate(len as usize);
                Reply::Value(Value::Bytes(buf))
            }
        },
        b'*' => match num()? {
            len if len < 0 => Reply::Value(Value::Nil),
            len => Reply::Array(len as usize),
        },
        _ => return Err(RedisError::Io("bad reply".into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn urls() {
        let e = Endpoint::parse("redis://:s3cret@10.0.0.1:7000/2").unwrap();
        assert_eq!((e.addr.as_str(), e.db), ("10.0.0.1:7000", Some(2)));
        assert_eq!(e.auth, Some((None, "s3cret".into())));
        let e = Endpoint::parse("redis://u:p@cache").unwrap();
        assert_eq!((e.addr.as_str(), e.db), ("cache:6379", None));
        assert_eq!(e.auth, Some((Some("u".into()), "p".into())));
        assert_eq!(Endpoint::parse("redis://[::1]").unwrap().addr, "[::1]:6379");
        assert_eq!(
            Endpoint::parse("redis://[::1]:7000/").unwrap().addr,
            "[::1]:7000"
        );
        assert!(Endpoint::parse("http://x").is_err());
        assert!(Endpoint::parse("redis://h:1/x").is_err());
        assert!(Endpoint::parse("redis:///0").is_err());
    }

    #[test]
    fn breaker_opens_then_probes_once() {
        let mut b = Breaker::new();
        b.epoch -= Duration::from_secs(10);
        for _ in 0..TRIP_AFTER {
            assert!(b.admit());
            b.failure();
        }
        assert!(!b.admit() && b.is_open());
        b.open_until_ms.store(1, Ordering::Release); // pretend the pause is over
        assert!(b.admit());
        assert!(!b.admit(), "a single probe at a time");
        b.success();
        assert!(b.admit() && b.admit() && !b.is_open());
    }

    #[tokio::test]
    async fn idle_connections_closed_by_the_server_are_replaced() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let node = Node::new(Endpoint::parse(&format!("redis://{addr}")).unwrap());
        let conn = node.conn().await.unwrap();
        let (first, _) = l.accept().await.unwrap();
        assert!(still_open(&conn));
        node.put_back(conn);
        drop(first); // the server goes away: its end closes
        let mut closed = false;
        for _ in 0..100 {
            let c = node.pop_idle().unwrap();
            closed = !still_open(&c);
            node.put_back(c);
            if closed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(closed, "the closed end never showed");
        // The dead idle connection is skipped: a new one is made.
        let conn = node.conn().await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), l.accept()).await;
        assert!(accepted.is_ok(), "no new connection");
        assert!(still_open(&conn));
        assert!(node.pop_idle().is_none());
    }

    /// Feed `bytes` to the reader through a real socket pair.
    async fn read(bytes: &'static [u8]) -> Result<Result<Value, String>, RedisError> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(bytes).await.unwrap();
        });
        let mut conn = BufReader::new(TcpStream::connect(addr).await.unwrap());
        server.await.unwrap();
        read_reply(&mut conn).await
    }

    #[tokio::test]
    async fn nested_replies() {
        let v = read(b"*2\r\n*3\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n*0\r\n")
            .await
            .unwrap()
            .unwrap();
        let b = |s: &str| Value::Bytes(s.as_bytes().to_vec());
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Array(vec![
                    Value::Int(0),
                    Value::Int(5460),
                    Value::Array(vec![b("127.0.0.1"), Value::Int(7000)]),
                ]),
                Value::Array(vec![]),
            ])
        );
        assert_eq!(read(b"$-1\r\n").await.unwrap(), Ok(Value::Nil));
        let e = read(b"*2\r\n-ERR one\r\n:1\r\n").await.unwrap();
        assert_eq!(e, Err("ERR one".to_string()));
        assert!(read(b"*1\r\n").await.is_err(), "closed mid-reply");
    }
}
