//! The Redis Cluster side of the client (`redis.cluster`): the seed URLs are only a way
//! in; the slot map comes from `CLUSTER SLOTS`, kept up to date by a [`Topology`] (first
//! on the first call, then after a failed node, a call that timed out or was skipped by
//! an open breaker, a `MOVED` or a `CLUSTERDOWN`, at most every 100 ms, and every 15 s
//! while calls keep coming). A refresh asks the known masters then the seeds, hedged (see
//! [`super::discovery`]): a seed that drops packets only delays it.
//!
//! Each call goes to the master owning the slot of its key (see [`Request::key`]), on that
//! node's own connection and breaker, so a failed master only affects the keys of its
//! slots. `MOVED` updates the map and retries on the new owner, `ASK` retries once on the
//! target after `ASKING`; at most [`MAX_REDIRECTS`] hops, all within the call's
//! `redis.timeout`. Nodes learnt from the map log in like the seed of the same address,
//! else like the first seed, over the same TLS settings: with TLS on, a node named by a
//! redirection or the map gets credentials only after its certificate passed the checks.
//!
//! A map naming more than [`MAX_MASTERS`] masters, or more ranges than slots, is refused
//! (the map in use is kept): building it costs a hash lookup per range.
//!
//! Why not the `redis` crate's own cluster client (`cluster-async`, 1.8): it sends a call
//! again after a timeout or a connection lost after sending, so a limiter's `EVALSHA` may
//! count twice; redirections and I/O retries share one counter; a timeout never refreshes
//! its map (a master that stops answering keeps its slots, even once they moved); a
//! refresh holds a write lock while it asks the nodes one by one, then PINGs them all;
//! `SCRIPT LOAD` must succeed on every node, so with one master stopped a script cannot be
//! loaded on a slot's new owner; and it opens its sockets itself (the reply guard could
//! only be plugged in through a hidden generic with global state). See the README,
//! "Building blocks and choices", for the crate's lines. This module keeps only the
//! routing; connections and the protocol are the crate's.

use super::discovery::first_answer;
use super::node::{join_host_port, Endpoint, Failure, Node, Nodes, Pass, Request};
use super::slots::{key_slot, parse_slots, redirect, SlotRange, SLOTS};
use super::topology::{Refresh, Topology};
use super::{from_crate, RedisError, Value};
use futures::FutureExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Redirections followed by one call (a `MOVED` then an `ASK` during a migration).
pub const MAX_REDIRECTS: usize = 3;
/// Most masters a slot map may name (Redis Cluster is designed for up to 1000 nodes): a
/// `CLUSTER SLOTS` naming more is refused, and the map in use kept.
pub const MAX_MASTERS: usize = 2048;
const NO_NODE: u16 = u16::MAX;

/// Which master serves each slot.
struct SlotMap {
    /// Index in `nodes` per slot, [`NO_NODE`] when unassigned.
    slots: Vec<u16>,
    nodes: Vec<Arc<Node>>,
}

impl SlotMap {
    fn node(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = *self.slots.get(usize::from(slot))?;
        self.nodes.get(usize::from(i))
    }

    /// The same map with `slot` served by `node` (unchanged if that would make more than
    /// [`MAX_MASTERS`]).
    fn with(&self, slot: u16, node: &Arc<Node>) -> SlotMap {
        let mut map = SlotMap {
            slots: self.slots.clone(),
            nodes: self.nodes.clone(),
        };
        let i = match map.nodes.iter().position(|n| Arc::ptr_eq(n, node)) {
            Some(i) => i,
            None if map.nodes.len() < MAX_MASTERS => {
                map.nodes.push(Arc::clone(node));
                map.nodes.len() - 1
            }
            None => return map,
        };
        if let (Some(s), Ok(i)) = (map.slots.get_mut(usize::from(slot)), u16::try_from(i)) {
            *s = i;
        }
        map
    }
}

struct Inner {
    seeds: Vec<Endpoint>,
    timeout: Duration,
    /// Every node in use (connections and breakers survive map refreshes).
    nodes: Nodes,
    map: Arc<Topology<SlotMap>>,
}

/// A client of one Redis Cluster.
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// A client knowing `seeds` (no I/O); connections use `tls` when given.
    pub fn new(
        seeds: Vec<Endpoint>,
        tls: Option<Arc<tokio_native_tls::TlsConnector>>,
        timeout: Duration,
    ) -> Cluster {
        Cluster {
            inner: Arc::new(Inner {
                seeds,
                timeout,
                nodes: Nodes::new(tls, super::node::connect_bound(timeout)),
                map: Arc::default(),
            }),
        }
    }

    /// Run `req` on the master of its key's slot. `used` is left holding the pass of the
    /// node the call depends on when it ends, so the caller can record the outcome even
    /// when the call is cut short by the timeout (none while the first slot map is
    /// awaited: the discovery task records its own outcome).
    pub async fn call(
        &self,
        req: &Request<'_>,
        used: &mut Option<Pass>,
    ) -> Result<Value, RedisError> {
        let inner = &self.inner;
        let map = inner.map.for_call(|| inner.refresher()).await?;
        let slot = req.key().map(key_slot);
        let first = match slot {
            Some(s) => map.node(s),
            None => map.nodes.first(),
        };
        let Some(first) = first else {
            self.stale();
            return Err(RedisError::Unreachable(format!(
                "no master serves slot {}",
                slot.unwrap_or(0)
            )));
        };
        let mut node = Arc::clone(first);
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let Some(pass) = Pass::admit(&node) else {
                // It keeps failing: it may be gone, its slots served by another master.
                self.stale();
                return Err(RedisError::Open);
            };
            *used = Some(pass);
            let e = match node.exec(req, asking).await {
                Ok(v) => return Ok(v),
                Err(Failure::Call(e)) => e,
                Err(unreachable) => {
                    self.stale();
                    return Err(unreachable.into());
                }
            };
            let Some(to) = redirect(&e, &node.endpoint.host) else {
                let e = from_crate(e);
                if !matches!(e, RedisError::Reply(_)) {
                    // No answer, or the node cannot serve (the cluster says its map
                    // changed, a demoted master...).
                    self.stale();
                }
                return Err(e);
            };
            // The node answered: it is healthy, the key lives elsewhere.
            if let Some(pass) = used.take() {
                pass.answered();
            }
            let target = inner.node_for(&to.host, to.port);
            if to.moved {
                if let Some(m) = inner.map.current() {
                    inner.map.install(m.with(to.slot, &target));
                }
                self.stale();
            }
            asking = !to.moved;
            node = target;
        }
        Err(RedisError::Reply("too many cluster redirections".into()))
    }

    /// The slot map may be wrong (a call failed or ran out of `redis.timeout`: its master
    /// may have stopped answering, its slots be served by another one now): refresh it in
    /// the background (rate-limited).
    pub fn stale(&self) {
        self.inner.map.stale(|| self.inner.refresher());
    }
}

impl Inner {
    /// The node at `host:port`, created (no I/O) when new: it logs in like the seed of
    /// the same address, else like the first seed.
    fn node_for(&self, host: &str, port: u16) -> Arc<Node> {
        let addr = join_host_port(host, port);
        let login = match self.seeds.iter().find(|s| s.addr() == addr) {
            Some(seed) => seed.login.clone(),
            None => self
                .seeds
                .first()
                .map(|s| s.login.clone())
                .unwrap_or_default(),
        };
        self.nodes.get(Endpoint {
            host: host.to_string(),
            port,
            login,
        })
    }

    fn refresher(self: &Arc<Self>) -> Refresh<SlotMap> {
        let me = Arc::clone(self);
        async move { me.refresh().await }.boxed()
    }

    /// Ask `CLUSTER SLOTS` to the known masters (those whose breaker is closed first),
    /// then to the seeds, and build the map of the first answer.
    async fn refresh(&self) -> Result<SlotMap, RedisError> {
        let mut candidates: Vec<Arc<Node>> = Vec::new();
        if let Some(map) = self.map.current() {
            let (closed, open): (Vec<_>, Vec<_>) =
                map.nodes.iter().partition(|n| !n.breaker.is_open());
            candidates.extend(closed.into_iter().chain(open).cloned());
        }
        for s in &self.seeds {
            let n = self.node_for(&s.host, s.port);
            if !candidates.iter().any(|c| Arc::ptr_eq(c, &n)) {
                candidates.push(n);
            }
        }
        let ranges = first_answer(candidates, self.timeout, slots_of).await?;
        self.map_of(&ranges).map_err(RedisError::Io)
    }

    /// The map of `ranges` (at most [`MAX_MASTERS`] distinct masters); the nodes that are
    /// in neither the map nor the seeds are forgotten.
    fn map_of(&self, ranges: &[SlotRange]) -> Result<SlotMap, String> {
        let mut slots = vec![NO_NODE; SLOTS];
        let mut masters: Vec<(&str, u16)> = Vec::new();
        let mut index: HashMap<(&str, u16), u16> = HashMap::new();
        for r in ranges {
            let at = (r.host.as_str(), r.port);
            let i = match index.get(&at) {
                Some(&i) => i,
                None if masters.len() < MAX_MASTERS => {
                    let i = masters.len() as u16; // < MAX_MASTERS < NO_NODE
                    masters.push(at);
                    index.insert(at, i);
                    i
                }
                None => return Err(format!("CLUSTER SLOTS: more than {MAX_MASTERS} masters")),
            };
            slots[usize::from(r.start)..=usize::from(r.end)].fill(i);
        }
        let nodes: Vec<Arc<Node>> = masters
            .iter()
            .map(|&(host, port)| self.node_for(host, port))
            .collect();
        // Forget the nodes that left (their connections close).
        let keep: HashSet<String> = self
            .seeds
            .iter()
            .map(Endpoint::addr)
            .chain(nodes.iter().map(|n| n.addr.clone()))
            .collect();
        self.nodes.retain(|addr, _| keep.contains(addr));
        Ok(SlotMap { slots, nodes })
    }
}

/// `CLUSTER SLOTS` asked to `node`; an empty map is no answer.
async fn slots_of(node: Arc<Node>) -> Result<Vec<SlotRange>, RedisError> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    let v = node.exec(&Request::Command(&cmd), false).await?;
    let ranges = parse_slots(&v, &node.endpoint.host).map_err(RedisError::Io)?;
    if ranges.is_empty() {
        return Err(RedisError::Reply("CLUSTER SLOTS: no slot assigned".into()));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::IntoConnectionInfo;

    fn seed(url: &str) -> Endpoint {
        let info = url.into_connection_info().unwrap();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            panic!()
        };
        Endpoint {
            host,
            port,
            login: info.redis_settings().clone(),
        }
    }

    #[test]
    fn learnt_nodes_log_in_like_their_seed_or_the_first() {
        let c = Cluster::new(
            vec![seed("redis://:pw@127.0.0.1:7000"), seed("redis://h:7001")],
            None,
            Duration::from_millis(50),
        );
        let i = &c.inner;
        let n = i.node_for("10.0.0.5", 7005);
        assert_eq!(n.endpoint.login.password(), Some("pw"));
        assert_eq!(i.node_for("h", 7001).endpoint.login.password(), None);
        assert!(Arc::ptr_eq(&n, &i.node_for("10.0.0.5", 7005)));
        assert_eq!(i.node_for("::1", 7).addr, "[::1]:7");
    }

    #[test]
    fn map_from_ranges_and_moved() {
        let c = Cluster::new(vec![seed("redis://127.0.0.1:7000")], None, Duration::ZERO);
        let i = &c.inner;
        let r = |start, end, port| SlotRange {
            start,
            end,
            host: "127.0.0.1".into(),
            port,
        };
        let m = i.map_of(&[r(0, 8000, 7000), r(8001, 16383, 7001)]).unwrap();
        assert_eq!(m.nodes.len(), 2);
        let addr = |m: &SlotMap, s| m.node(s).map(|n| n.addr.clone());
        assert_eq!(addr(&m, 0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(addr(&m, 12182).as_deref(), Some("127.0.0.1:7001"));
        let moved = m.with(12182, &i.node_for("127.0.0.1", 7002));
        assert_eq!(addr(&moved, 12182).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(addr(&moved, 12183).as_deref(), Some("127.0.0.1:7001"));
        // A node no longer in the map is forgotten, seeds are kept.
        let m = i.map_of(&[r(0, 16383, 7001)]).unwrap();
        assert_eq!(i.nodes.count(), 2);
        assert_eq!(addr(&m, 5).as_deref(), Some("127.0.0.1:7001"));
    }

    #[test]
    fn a_map_naming_too_many_masters_is_refused() {
        let c = Cluster::new(vec![seed("redis://127.0.0.1:7000")], None, Duration::ZERO);
        let i = &c.inner;
        // One master per slot, each at its own address (a hostile CLUSTER SLOTS).
        let ranges: Vec<SlotRange> = (0..SLOTS as u16)
            .map(|s| SlotRange {
                start: s,
                end: s,
                host: format!("10.0.{}.{}", s / 256, s % 256),
                port: 7000,
            })
            .collect();
        let e = i.map_of(&ranges).err();
        assert_eq!(e.as_deref(), Some("CLUSTER SLOTS: more than 2048 masters"));
        assert_eq!(i.nodes.count(), 0, "no node made for a refused map");
        // Up to the limit it is a map; a MOVED to one more master leaves it as it is.
        let m = i.map_of(&ranges[..MAX_MASTERS]).unwrap();
        assert_eq!(m.nodes.len(), MAX_MASTERS);
        let moved = m.with(0, &i.node_for("10.9.9.9", 7000));
        assert_eq!(moved.nodes.len(), MAX_MASTERS);
        assert_eq!(
            moved.node(0).map(|n| n.addr.as_str()),
            Some("10.0.0.0:7000")
        );
    }
}
