//! Lua scripts, called by their SHA-1 (`EVALSHA`); when the server does not have the
//! script (`NOSCRIPT`: a restarted server, a new cluster node, a failover) the same call
//! goes again as `EVAL` with the script's text, which also loads it for the next calls:
//! two round trips, against three for the `redis` crate's `Script` (`EVALSHA`,
//! `SCRIPT LOAD`, `EVALSHA`).
//!
//! A call is one `Cmd` built once ([`Script::call`]): keys and arguments are written
//! straight into it (numbers formatted in place), and a cluster redirection sends the same
//! command again.

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind, ToRedisArgs, Value};

/// A Lua script and its SHA-1.
pub struct Script {
    code: String,
    sha: String,
}

impl Script {
    /// Prepare `text`.
    pub fn new(text: &str) -> Script {
        Script {
            code: text.to_string(),
            sha: redis::Script::new(text).get_hash().to_string(),
        }
    }

    /// `EVALSHA <sha> <number of keys> <keys> <args>`; `args` may be one value, a tuple of
    /// values of any types, or a slice.
    pub fn call(&self, keys: &[&str], args: impl ToRedisArgs) -> Cmd {
        let words = 3 + keys.len() + args.num_of_args();
        let bytes = 16 + self.sha.len() + keys.iter().map(|k| k.len()).sum::<usize>() + 64;
        let mut cmd = Cmd::with_capacity(words, bytes);
        cmd.arg("EVALSHA")
            .arg(&self.sha)
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        cmd
    }

    /// `call` (built by [`Script::call`]) as `EVAL` with the script's text.
    fn by_text(&self, call: &Cmd) -> Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(&self.code);
        for word in call.args_iter().skip(2) {
            if let redis::Arg::Simple(b) = word {
                eval.arg(b);
            }
        }
        eval
    }

    /// Send `call` on `conn`, again by text on `NOSCRIPT`.
    pub(super) async fn run(
        &self,
        conn: &mut impl ConnectionLike,
        call: &Cmd,
    ) -> RedisResult<Value> {
        match call.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.by_text(call).query_async(conn).await
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(cmd: &Cmd) -> String {
        String::from_utf8(cmd.get_packed_command()).unwrap()
    }

    #[test]
    fn calls_by_sha_then_by_text() {
        let s = Script::new("return KEYS[1]");
        assert_eq!(s.sha, "4a2267357833227dd98abdedb8cf24b15a986445");
        let call = s.call(&["k"], ("a", 42u64, -1i64));
        assert_eq!(
            text(&call),
            "*7\r\n$7\r\nEVALSHA\r\n$40\r\n4a2267357833227dd98abdedb8cf24b15a986445\r\n\
             $1\r\n1\r\n$1\r\nk\r\n$1\r\na\r\n$2\r\n42\r\n$2\r\n-1\r\n"
        );
        assert_eq!(
            text(&s.by_text(&call)),
            "*7\r\n$4\r\nEVAL\r\n$14\r\nreturn KEYS[1]\r\n\
             $1\r\n1\r\n$1\r\nk\r\n$1\r\na\r\n$2\r\n42\r\n$2\r\n-1\r\n"
        );
        let members = ["m1".to_string(), "m2".to_string()];
        let call = s.call(&["k"], (7u64, &members[..]));
        assert_eq!(call.args_iter().count(), 7);
    }

    #[tokio::test]
    async fn noscript_costs_one_more_round_trip() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            for reply in [&b"-NOSCRIPT No matching script\r\n"[..], b":7\r\n"] {
                let n = c.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                c.write_all(reply).await.unwrap();
            }
            seen
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let info = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
        let (mut conn, driver) = redis::aio::MultiplexedConnection::new_with_config(
            &info,
            tcp,
            redis::AsyncConnectionConfig::new(),
        )
        .await
        .unwrap();
        tokio::spawn(driver);
        let s = Script::new("return 7");
        let v = s
            .run(&mut conn, &s.call(&["k"], &[] as &[&str]))
            .await
            .unwrap();
        assert_eq!(v, Value::Int(7));
        let seen = server.await.unwrap();
        assert!(seen[0].contains("EVALSHA"), "{seen:?}");
        assert!(seen[1].contains("EVAL\r\n$8\r\nreturn 7"), "{seen:?}");
    }
}
