//! Asking several servers the same question (a Redis Cluster's `CLUSTER SLOTS`, a
//! Sentinel's master), hedged so that a server that never answers (down host, dropped
//! packets) only delays the answer of the next one instead of using up the whole budget.

use super::node::Node;
use super::RedisError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Least wait before the next node is asked when the previous has not answered.
const HEDGE_MIN: Duration = Duration::from_millis(5);

/// The first answer `ask` gets from `nodes`, asked in order. Each node has the whole
/// `timeout`; the next one is asked as soon as the previous fails, or has not answered
/// within a quarter of `timeout` (at least [`HEDGE_MIN`]), the earlier ones still being
/// waited for. The error is the last node's when none answers.
pub async fn first_answer<T, F, Fut>(
    nodes: Vec<Arc<Node>>,
    timeout: Duration,
    ask: F,
) -> Result<T, RedisError>
where
    T: Send + 'static,
    F: Fn(Arc<Node>) -> Fut,
    Fut: Future<Output = Result<T, RedisError>> + Send + 'static,
{
    let hedge = (timeout / 4).max(HEDGE_MIN);
    let mut left = nodes.into_iter();
    // Dropped on return: the questions still out are abandoned.
    let mut asking = tokio::task::JoinSet::new();
    let mut last = RedisError::Io("no node to ask".into());
    loop {
        if let Some(n) = left.next() {
            let question = ask(n);
            asking.spawn(async move {
                match tokio::time::timeout(timeout, question).await {
                    Ok(r) => r,
                    Err(_) => Err(RedisError::Timeout),
                }
            });
        }
        let joined = if left.as_slice().is_empty() {
            asking.join_next().await
        } else {
            match tokio::time::timeout(hedge, asking.join_next()).await {
                Ok(j) => j,
                Err(_) => continue, // no answer yet: ask the next one too
            }
        };
        let Some(joined) = joined else {
            return Err(last);
        };
        match joined {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = e,
            Err(e) => last = RedisError::Io(format!("question task: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::node::{Endpoint, Request};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn node(addr: std::net::SocketAddr) -> Arc<Node> {
        let endpoint = Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
            login: redis::RedisConnectionInfo::default().set_skip_set_lib_name(),
        };
        Arc::new(Node::new(endpoint, None, Duration::from_secs(5)))
    }

    /// A server that answers every read with `reply`.
    async fn answering(reply: &'static [u8]) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        let _ = s.write_all(reply).await;
                    }
                });
            }
        });
        addr
    }

    async fn ping(n: Arc<Node>) -> Result<redis::Value, RedisError> {
        let ping = redis::cmd("PING");
        n.exec(&Request::Command(&ping), false)
            .await
            .map_err(RedisError::from)
    }

    #[tokio::test]
    async fn a_silent_node_only_delays_the_next_one() {
        // Accepted by the kernel, never answered.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = answering(b"+PONG\r\n").await;
        let t = Instant::now();
        let nodes = vec![node(silent.local_addr().unwrap()), node(good)];
        let v = first_answer(nodes, Duration::from_secs(2), ping)
            .await
            .unwrap();
        let took = t.elapsed();
        assert_eq!(v, redis::Value::SimpleString("PONG".into()));
        assert!(
            took >= Duration::from_millis(500),
            "{took:?}: asked at once"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{took:?}: waited for the silent one"
        );
        // Only silent nodes: the whole timeout, then its error.
        let t = Instant::now();
        let nodes = vec![node(silent.local_addr().unwrap())];
        let e = first_answer(nodes, Duration::from_millis(200), ping).await;
        assert!(matches!(e, Err(RedisError::Timeout)), "{e:?}");
        assert!(t.elapsed() >= Duration::from_millis(200));
        // A failing node: the next one is asked at once.
        let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = refused.local_addr().unwrap();
        drop(refused);
        let t = Instant::now();
        let v = first_answer(vec![node(gone), node(good)], Duration::from_secs(2), ping).await;
        assert!(v.is_ok(), "{v:?}");
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
}
