//! Asking a Redis Cluster for its slot map: `CLUSTER SLOTS` to a list of candidate nodes,
//! hedged so that a node that never answers (down host, dropped packets) only delays the
//! answer of the next one instead of using up the whole budget.

use super::redis::RedisError;
use super::redis_node::{call, Node};
use super::redis_slots::{host_of, parse_slots, SlotRange};
use std::sync::Arc;
use std::time::Duration;

/// Least wait before the next node is asked when the previous has not answered.
const HEDGE_MIN: Duration = Duration::from_millis(5);

/// The first non-empty `CLUSTER SLOTS` map given by `nodes`, asked in order. Each node
/// has the whole `timeout`; the next one is asked as soon as the previous fails, or has
/// not answered within a quarter of `timeout` (at least [`HEDGE_MIN`]), the earlier
/// ones still being waited for. The error is the last node's when none gives a map.
pub async fn ask_slots(
    nodes: Vec<Arc<Node>>,
    timeout: Duration,
) -> Result<Vec<SlotRange>, RedisError> {
    let hedge = (timeout / 4).max(HEDGE_MIN);
    let mut left = nodes.into_iter();
    // Dropped on return: the questions still out are abandoned.
    let mut asking = tokio::task::JoinSet::new();
    let mut last = RedisError::Io("no node to ask".into());
    loop {
        if let Some(n) = left.next() {
            asking.spawn(async move {
                match tokio::time::timeout(timeout, slots_of(&n)).await {
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
            Ok(Ok(ranges)) if !ranges.is_empty() => return Ok(ranges),
            Ok(Ok(_)) => last = RedisError::Reply("CLUSTER SLOTS: no slot assigned".into()),
            Ok(Err(e)) => last = e,
            Err(e) => last = RedisError::Io(format!("CLUSTER SLOTS task: {e}")),
        }
    }
}

/// `CLUSTER SLOTS` asked to `node`.
async fn slots_of(node: &Node) -> Result<Vec<SlotRange>, RedisError> {
    let mut conn = node.conn().await?;
    let v = call(&mut conn, &[b"CLUSTER", b"SLOTS"]).await?;
    node.put_back(conn);
    let v = v.map_err(RedisError::Reply)?;
    parse_slots(&v, host_of(&node.endpoint.addr)).map_err(RedisError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::redis_node::Endpoint;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn node(addr: std::net::SocketAddr) -> Arc<Node> {
        Arc::new(Node::new(
            Endpoint::parse(&format!("redis://{addr}")).unwrap(),
        ))
    }

    /// A server that answers each connection's first command with `reply`.
    async fn answering(reply: &'static [u8]) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(reply).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_silent_node_only_delays_the_next_one() {
        // Accepted by the kernel, never answered.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let map = b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n";
        let good = answering(map).await;
        let t = Instant::now();
        let nodes = vec![node(silent.local_addr().unwrap()), node(good)];
        let ranges = ask_slots(nodes, Duration::from_secs(2)).await.unwrap();
        let took = t.elapsed();
        assert_eq!(ranges.len(), 1);
        assert_eq!((ranges[0].start, ranges[0].end), (0, 16383));
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
        let e = ask_slots(nodes, Duration::from_millis(200)).await;
        assert!(matches!(e, Err(RedisError::Timeout)), "{e:?}");
        assert!(t.elapsed() >= Duration::from_millis(200));
        // A failing node: the next one is asked at once.
        let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = refused.local_addr().unwrap();
        drop(refused);
        let t = Instant::now();
        let ranges = ask_slots(vec![node(gone), node(good)], Duration::from_secs(2)).await;
        assert_eq!(ranges.unwrap().len(), 1);
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
}
