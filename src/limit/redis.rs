//! A small Redis client for cluster-scope limits (`redis.url`, one server): RESP over a
//! tokio `TcpStream`, a few pooled connections, Lua scripts called by their SHA
//! (`EVALSHA`, falling back to `EVAL` — which caches the script — on `NOSCRIPT`), every
//! call bounded by `redis.timeout` as a whole (connect, retry and reply included), and a
//! breaker: after [`TRIP_AFTER`] consecutive failures calls are skipped for [`OPEN_FOR`],
//! then one probe call at a time decides whether Redis is back. Each failed call counts
//! in `moat_redis_errors_total`. Nothing connects before the first call, so `moat check`
//! never needs Redis. The URL (which may hold a password) is never logged.

use crate::config::model::RedisConfig;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker skips Redis before probing.
pub const OPEN_FOR: Duration = Duration::from_millis(500);
const MAX_IDLE: usize = 32;
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
}

/// Why a call failed.
#[derive(Debug)]
pub enum RedisError {
    /// The breaker is open: Redis was not called.
    Open,
    /// No answer within `redis.timeout`.
    Timeout,
    /// Connection or protocol failure.
    Io(String),
    /// Redis answered with an error.
    Reply(String),
}

/// A Lua script and its SHA-1.
pub struct Script {
    text: &'static str,
    sha: String,
}

impl Script {
    /// Prepare `text`.
    pub fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: hex::encode(openssl::sha::sha1(text.as_bytes())),
        }
    }
}

struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go out now.
    fn admit(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        self.now_ms() >= until && !self.probing.swap(true, Ordering::AcqRel)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    fn failure(&self) {
        let f = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if f >= TRIP_AFTER || self.probing.load(Ordering::Acquire) {
            let until = self.now_ms() + OPEN_FOR.as_millis() as u64;
            self.open_until_ms.store(until.max(1), Ordering::Release);
        }
        self.probing.store(false, Ordering::Release);
    }
}

/// The client shared by every cluster-scope limiter of a config.
pub struct Redis {
    addr: String,
    auth: Option<(Option<String>, String)>,
    db: Option<u32>,
    timeout: Duration,
    /// Prefix of every key (`redis.key_prefix`, default `moat:`).
    pub prefix: String,
    idle: Mutex<Vec<BufReader<TcpStream>>>,
    breaker: Breaker,
    errors: IntCounter,
}

type Conn = BufReader<TcpStream>;

impl Redis {
    /// Build from `redis:` (no I/O). Errors are operator messages.
    pub fn new(c: &RedisConfig, errors: IntCounter) -> Result<Redis, String> {
        let url = c
            .url
            .as_deref()
            .ok_or("give url (cluster is not supported yet)")?;
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
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        if hostport.is_empty() {
            return Err("the url names no host".into());
        }
        Ok(Redis {
            addr,
            auth,
            db,
            timeout: c.timeout.map(|d| d.get()).unwrap_or(DEFAULT_TIMEOUT),
            prefix: c.key_prefix.clone().unwrap_or_else(|| "moat:".into()),
            idle: Mutex::new(Vec::new()),
            breaker: Breaker {
                failures: AtomicU32::new(0),
                open_until_ms: AtomicU64::new(0),
                probing: AtomicBool::new(false),
                epoch: Instant::now(),
            },
            errors,
        })
    }

    /// Run `script` with `keys` and `args`, bounded by the timeout and the breaker.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, RedisError> {
        self.guarded(self.eval_inner(script, keys, args)).await
    }

    /// Run one plain command (e.g. `SET k v NX PX ms`), bounded like [`Redis::eval`].
    pub async fn command(&self, args: &[&[u8]]) -> Result<Value, RedisError> {
        self.guarded(async {
            let mut conn = self.conn().await?;
            let v = call(&mut conn, args).await?;
            self.put_back(conn);
            v.map_err(RedisError::Reply)
        })
        .await
    }

    async fn guarded(
        &self,
        f: impl std::future::Future<Output = Result<Value, RedisError>>,
    ) -> Result<Value, RedisError> {
        if !self.breaker.admit() {
            return Err(RedisError::Open);
        }
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::Timeout),
        };
        match &r {
            Ok(_) => self.breaker.success(),
            Err(e) => {
                self.errors.inc();
                self.breaker.failure();
                log::warn!("redis call failed: {e:?}");
            }
        }
        r
    }

    async fn eval_inner(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, RedisError> {
        let mut conn = self.conn().await?;
        let n = keys.len().to_string();
        let mut cmd: Vec<&[u8]> = vec![b"EVALSHA", script.sha.as_bytes(), n.as_bytes()];
        cmd.extend(keys.iter().map(|k| k.as_bytes()));
        cmd.extend(args.iter().map(|a| a.as_bytes()));
        let mut v = call(&mut conn, &cmd).await?;
        if matches!(&v, Err(e) if e.starts_with("NOSCRIPT")) {
            cmd[0] = b"EVAL";
            cmd[1] = script.text.as_bytes();
            v = call(&mut conn, &cmd).await?;
        }
        self.put_back(conn);
        v.map_err(RedisError::Reply)
    }

    async fn conn(&self) -> Result<Conn, RedisError> {
        match self.idle.lock().ok().and_then(|mut v| v.pop()) {
            Some(c) => Ok(c),
            None => self.connect().await,
        }
    }

    fn put_back(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let s = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| RedisError::Io(e.kind().to_string()))?;
        let _ = s.set_nodelay(true);
        let mut conn = BufReader::new(s);
        if let Some((user, pass)) = &self.auth {
            let mut cmd: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = user {
                cmd.push(u.as_bytes());
            }
            cmd.push(pass.as_bytes());
            call(&mut conn, &cmd).await?.map_err(RedisError::Reply)?;
        }
        if let Some(db) = self.db {
            let d = db.to_string();
            call(&mut conn, &[b"SELECT", d.as_bytes()])
                .await?
                .map_err(RedisError::Reply)?;
        }
        Ok(conn)
    }
}

fn io(e: std::io::Error) -> RedisError {
    RedisError::Io(e.kind().to_string())
}

/// Send one command; the outer error is the connection's, the inner one Redis's reply.
async fn call(conn: &mut Conn, args: &[&[u8]]) -> Result<Result<Value, String>, RedisError> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    conn.get_mut().write_all(&out).await.map_err(io)?;
    match read_scalar(conn).await? {
        Reply::Value(v) => Ok(Ok(v)),
        Reply::Error(e) => Ok(Err(e)),
        Reply::Array(n) => {
            let mut items = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                match read_scalar(conn).await? {
                    Reply::Value(v) => items.push(v),
                    Reply::Error(e) => return Ok(Err(e)),
                    Reply::Array(_) => return Err(RedisError::Io("nested array".into())),
                }
            }
            Ok(Ok(Value::Array(items)))
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

    fn cfg(url: &str) -> RedisConfig {
        RedisConfig {
            url: Some(url.into()),
            cluster: None,
            timeout: None,
            key_prefix: None,
        }
    }

    #[test]
    fn urls() {
        let c = IntCounter::new("x", "x").unwrap();
        let r = Redis::new(&cfg("redis://:s3cret@10.0.0.1:7000/2"), c.clone()).unwrap();
        assert_eq!((r.addr.as_str(), r.db), ("10.0.0.1:7000", Some(2)));
        assert_eq!(r.auth, Some((None, "s3cret".into())));
        let r = Redis::new(&cfg("redis://cache"), c.clone()).unwrap();
        assert_eq!(
            (r.addr.as_str(), r.db, r.prefix.as_str()),
            ("cache:6379", None, "moat:")
        );
        assert!(Redis::new(&cfg("http://x"), c.clone()).is_err());
        assert!(Redis::new(&cfg("redis://h:1/x"), c).is_err());
    }

    #[test]
    fn breaker_opens_then_probes_once() {
        let b = Breaker {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now() - Duration::from_secs(10),
        };
        for _ in 0..TRIP_AFTER {
            assert!(b.admit());
            b.failure();
        }
        assert!(!b.admit());
        b.open_until_ms.store(1, Ordering::Release); // pretend the pause is over
        assert!(b.admit());
        assert!(!b.admit(), "a single probe at a time");
        b.success();
        assert!(b.admit() && b.admit());
    }
}
