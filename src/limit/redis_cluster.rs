//! The Redis Cluster side of the limiters' client (`redis.cluster`): the seed URLs are
//! only a way in; the slot map comes from `CLUSTER SLOTS`. It is always fetched by a
//! background task that no caller's timeout cancels: first on the first call (callers
//! wait for it within their own `redis.timeout`), then again when a node fails, stops
//! answering (a call times out) or is skipped by its open breaker, a `MOVED` arrives or
//! the cluster says `CLUSTERDOWN` — at most once per [`REFRESH_EVERY`] — and every
//! [`REFRESH_PERIOD`] while calls keep coming (checked by the calls: nothing runs for an
//! idle or dropped client). A refresh asks the known masters then the seeds, starting the
//! next one whenever the previous has not answered within a quarter of `redis.timeout`
//! (each given the whole `redis.timeout`), and takes the first map: a seed that drops
//! packets only delays it (see [`super::redis_discovery`]). Each call goes to the master owning the slot of its key (see
//! [`super::redis::Request::key`]), on that node's own connection pool and breaker, so a
//! failed master only affects the keys of its slots. `MOVED` updates the map and retries
//! on the new owner, `ASK` retries once on the target after `ASKING`; at most
//! [`MAX_REDIRECTS`] hops, all within the call's `redis.timeout`. Nodes learnt from the
//! map log in with the credentials of the seed of the same address, else of the first
//! seed.

use super::redis::{exec, RedisError, Request, Value};
use super::redis_discovery::ask_slots;
use super::redis_node::{Breaker, Endpoint, Node};
use super::redis_slots::{host_of, key_slot, parse_redirect, SlotRange, SLOTS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Redirections followed by one call (a `MOVED` then an `ASK` during a migration).
pub const MAX_REDIRECTS: usize = 3;
/// Least time between two background refreshes of the slot map.
pub const REFRESH_EVERY: Duration = Duration::from_millis(100);
/// Longest time a client in use keeps a slot map without asking for it again.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(15);
const NO_NODE: u16 = u16::MAX;

/// Which master serves each slot.
struct SlotMap {
    /// Index in `nodes` per slot, [`NO_NODE`] when unassigned.
    slots: Vec<u16>,
    nodes: Vec<Arc<Node>>,
}

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap {
            slots: vec![NO_NODE; SLOTS],
            nodes: Vec::new(),
        }
    }

    fn node(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = *self.slots.get(usize::from(slot))?;
        self.nodes.get(usize::from(i))
    }

    /// The same map with `slot` served by `node`.
    fn with(&self, slot: u16, node: &Arc<Node>) -> SlotMap {
        let mut nodes = self.nodes.clone();
        let i = match nodes.iter().position(|n| Arc::ptr_eq(n, node)) {
            Some(i) => i,
            None => {
                nodes.push(Arc::clone(node));
                nodes.len() - 1
            }
        };
        let mut slots = self.slots.clone();
        if let (Some(s), Ok(i)) = (slots.get_mut(usize::from(slot)), u16::try_from(i)) {
            *s = i;
        }
        SlotMap { slots, nodes }
    }
}

struct Inner {
    seeds: Vec<Endpoint>,
    /// Every node in use, by address (pools and breakers survive map refreshes).
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    map: RwLock<Arc<SlotMap>>,
    /// Guards the first discovery: while the seeds fail, calls are skipped like a node's.
    discovery: Arc<Breaker>,
    /// A refresh task is running (one at a time).
    refreshing: AtomicBool,
    /// When the latest refresh started (ms since `epoch`, 0 before the first).
    last_refresh_ms: AtomicU64,
    /// Sent when a refresh ends: its error, `None` when it installed a map.
    done: tokio::sync::watch::Sender<Option<String>>,
    epoch: Instant,
    timeout: Duration,
}

/// A client of one Redis Cluster.
pub struct ClusterClient {
    inner: Arc<Inner>,
}

impl ClusterClient {
    /// Seeds from `urls` (no I/O). Errors are operator messages naming the entry.
    pub fn new(urls: &[String], timeout: Duration) -> Result<ClusterClient, String> {
        if urls.is_empty() {
            return Err("list at least one node".into());
        }
        let seeds = urls
            .iter()
            .enumerate()
            .map(|(i, u)| seed(u).map_err(|e| format!("entry {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClusterClient {
            inner: Arc::new(Inner {
                seeds,
                nodes: Mutex::new(HashMap::new()),
                map: RwLock::new(Arc::new(SlotMap::empty())),
                discovery: Arc::new(Breaker::new()),
                refreshing: AtomicBool::new(false),
                last_refresh_ms: AtomicU64::new(0),
                done: tokio::sync::watch::channel(None).0,
                epoch: Instant::now(),
                timeout,
            }),
        })
    }

    /// Run `req` on the master of its key's slot. `used` is left naming the breaker of
    /// the node the call depends on when it ends, so the caller can record the outcome
    /// even when the call is cut short by the timeout (none while the first slot map is
    /// awaited: the discovery task records its own outcome).
    pub async fn call(
        &self,
        req: &Request<'_>,
        used: &mut Option<Arc<Breaker>>,
    ) -> Result<Value, RedisError> {
        let inner = &self.inner;
        let map = inner.map_or_discover().await?;
        inner.refresh_if_old();
        let slot = req.key().map(key_slot);
        let first = match slot {
            Some(s) => map.node(s),
            None => map.nodes.first(),
        };
        let Some(first) = first else {
            inner.stale();
            return Err(RedisError::Io(format!(
                "no master serves slot {}",
                slot.unwrap_or(0)
            )));
        };
        let mut node = Arc::clone(first);
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            if !node.breaker.admit() {
                // It keeps failing: it may be gone, its slots served by another master.
                inner.stale();
                return Err(RedisError::Open);
            }
            *used = Some(Arc::clone(&node.breaker));
            let reply = match exec(&node, req, asking).await {
                Ok(r) => r,
                Err(e) => {
                    inner.stale();
                    return Err(e);
                }
            };
            let msg = match reply {
                Ok(v) => return Ok(v),
                Err(msg) => msg,
            };
            let Some(to) = parse_redirect(&msg, host_of(&node.endpoint.addr)) else {
                if msg.starts_with("CLUSTERDOWN") {
                    inner.stale();
                }
                return Err(RedisError::Reply(msg));
            };
            // The node answered: it is healthy, the key lives elsewhere.
            node.breaker.success();
            let target = inner.node_for(&to.addr);
            if to.moved {
                inner.moved(to.slot, &target);
            }
            asking = !to.moved;
            node = target;
        }
        Err(RedisError::Reply("too many cluster redirections".into()))
    }

    /// A call ran out of `redis.timeout`: its master may have stopped answering (a host
    /// down or cut off drops packets, no error ever comes), and its slots be served by
    /// another one now. Refreshes the map in the background (rate-limited).
    pub fn timed_out(&self) {
        self.inner.stale();
    }
}

/// A seed endpoint: Redis Cluster has database 0 only.
fn seed(url: &str) -> Result<Endpoint, String> {
    let mut e = Endpoint::parse(url)?;
    match e.db {
        None | Some(0) => e.db = None,
        Some(_) => return Err("Redis Cluster has database 0 only".into()),
    }
    Ok(e)
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn current(&self) -> Arc<SlotMap> {
        match self.map.read() {
            Ok(m) => Arc::clone(&m),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn install(&self, map: SlotMap) {
        match self.map.write() {
            Ok(mut m) => *m = Arc::new(map),
            Err(p) => *p.into_inner() = Arc::new(map),
        }
    }

    /// The node at `addr`, created (no I/O) when new.
    fn node_for(&self, addr: &str) -> Arc<Node> {
        let mut nodes = match self.nodes.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let n = nodes.entry(addr.to_string()).or_insert_with(|| {
            let endpoint = match self.seeds.iter().find(|s| s.addr == addr) {
                Some(s) => s.clone(),
                None => Endpoint {
                    addr: addr.to_string(),
                    auth: self.seeds.first().and_then(|s| s.auth.clone()),
                    db: None,
                },
            };
            Arc::new(Node::new(endpoint))
        });
        Arc::clone(n)
    }

    /// The map, discovered first (waiting for the discovery under way, or starting one)
    /// when still empty. The discovery runs in its own task: a caller's timeout ends the
    /// wait, not the discovery.
    async fn map_or_discover(self: &Arc<Self>) -> Result<Arc<SlotMap>, RedisError> {
        let map = self.current();
        if !map.nodes.is_empty() {
            return Ok(map);
        }
        // Subscribe before looking again: a refresh ending from now on wakes us.
        let mut done = self.done.subscribe();
        let map = self.current();
        if !map.nodes.is_empty() {
            return Ok(map);
        }
        if !self.refreshing.swap(true, Ordering::AcqRel) {
            // None under way: start one, unless the seeds keep failing.
            let admitted = match tokio::runtime::Handle::try_current() {
                Ok(rt) if self.discovery.admit() => Some(rt),
                _ => None,
            };
            let Some(rt) = admitted else {
                self.refreshing.store(false, Ordering::Release);
                return Err(RedisError::Open);
            };
            self.spawn_refresh(&rt, Some(Arc::clone(&self.discovery)));
        }
        if done.changed().await.is_err() {
            return Err(RedisError::Io("cluster client dropped".into()));
        }
        let map = self.current();
        if !map.nodes.is_empty() {
            return Ok(map);
        }
        let why = done.borrow().clone().unwrap_or_default();
        Err(RedisError::Io(format!("slot map discovery failed: {why}")))
    }

    /// `slot` moved to `node`: route it there now, and refresh the whole map soon.
    fn moved(self: &Arc<Self>, slot: u16, node: &Arc<Node>) {
        let map = self.current().with(slot, node);
        self.install(map);
        self.stale();
    }

    /// Refresh the map when the latest refresh is [`REFRESH_PERIOD`] old.
    fn refresh_if_old(self: &Arc<Self>) {
        let last = self.last_refresh_ms.load(Ordering::Acquire);
        if self.now_ms().saturating_sub(last) >= REFRESH_PERIOD.as_millis() as u64 {
            self.stale();
        }
    }

    /// The map may be wrong: refresh it in the background (at most once per
    /// [`REFRESH_EVERY`], one refresh at a time; not before the first map, which the
    /// calls ask for themselves).
    fn stale(self: &Arc<Self>) {
        let now = self.now_ms();
        let last = self.last_refresh_ms.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < REFRESH_EVERY.as_millis() as u64 {
            return;
        }
        if self.current().nodes.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.spawn_refresh(&rt, None);
    }

    /// Run [`Inner::refresh`] in a task (the caller holds `refreshing`), recording its
    /// outcome on `breaker` and waking the callers waiting for it.
    fn spawn_refresh(self: &Arc<Self>, rt: &tokio::runtime::Handle, breaker: Option<Arc<Breaker>>) {
        self.last_refresh_ms
            .store(self.now_ms().max(1), Ordering::Release);
        let me = Arc::clone(self);
        rt.spawn(async move {
            let r = me.refresh().await;
            if let Some(b) = breaker {
                match r {
                    Ok(()) => b.success(),
                    Err(_) => b.failure(),
                }
            }
            let err = r.err().map(|e| {
                log::warn!("redis cluster: slot map refresh failed: {e:?}");
                format!("{e:?}")
            });
            me.refreshing.store(false, Ordering::Release);
            me.done.send_replace(err);
        });
    }

    /// Ask `CLUSTER SLOTS` to the known masters (those whose breaker is closed first),
    /// then to the seeds (see [`ask_slots`]), and install the first map given.
    async fn refresh(&self) -> Result<(), RedisError> {
        let map = self.current();
        let (closed, open): (Vec<_>, Vec<_>) = map.nodes.iter().partition(|n| !n.breaker.is_open());
        let mut candidates: Vec<Arc<Node>> = closed.into_iter().chain(open).cloned().collect();
        for s in &self.seeds {
            let n = self.node_for(&s.addr);
            if !candidates.iter().any(|c| Arc::ptr_eq(c, &n)) {
                candidates.push(n);
            }
        }
        let ranges = ask_slots(candidates, self.timeout).await?;
        self.install_ranges(&ranges);
        Ok(())
    }

    fn install_ranges(&self, ranges: &[SlotRange]) {
        let mut map = SlotMap::empty();
        for r in ranges {
            let node = self.node_for(&r.addr);
            let i = match map.nodes.iter().position(|n| Arc::ptr_eq(n, &node)) {
                Some(i) => i,
                None => {
                    map.nodes.push(node);
                    map.nodes.len() - 1
                }
            };
            let Ok(i) = u16::try_from(i) else { continue };
            for s in &mut map.slots[usize::from(r.start)..=usize::from(r.end)] {
                *s = i;
            }
        }
        // Forget the nodes that left (their idle connections close).
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.retain(|addr, n| {
                self.seeds.iter().any(|s| &s.addr == addr)
                    || map.nodes.iter().any(|m| Arc::ptr_eq(m, n))
            });
        }
        self.install(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds() {
        let d = Duration::from_millis(50);
        assert!(ClusterClient::new(&[], d).is_err());
        let ok = [
            "redis://:pw@127.0.0.1:7000".to_string(),
            "redis://h:7001/0".into(),
        ];
        let c = ClusterClient::new(&ok, d).unwrap();
        assert_eq!(c.inner.seeds[1].db, None);
        // A learnt node logs in like the first seed, a seed like itself.
        let n = c.inner.node_for("10.0.0.5:7005");
        assert_eq!(n.endpoint.auth, Some((None, "pw".into())));
        assert_eq!(c.inner.node_for("h:7001").endpoint.auth, None);
        assert!(Arc::ptr_eq(&n, &c.inner.node_for("10.0.0.5:7005")));
        let e = ClusterClient::new(&[ok[0].clone(), "redis://h:1/3".into()], d);
        assert_eq!(
            e.err().as_deref(),
            Some("entry 1: Redis Cluster has database 0 only")
        );
        assert!(ClusterClient::new(&["http://h".to_string()], d).is_err());
    }

    #[test]
    fn map_from_ranges_and_moved() {
        let c =
            ClusterClient::new(&["redis://127.0.0.1:7000".to_string()], Duration::ZERO).unwrap();
        let i = &c.inner;
        let r = |start, end, addr: &str| SlotRange {
            start,
            end,
            addr: addr.into(),
        };
        i.install_ranges(&[
            r(0, 8000, "127.0.0.1:7000"),
            r(8001, 16383, "127.0.0.1:7001"),
        ]);
        let m = i.current();
        assert_eq!(m.nodes.len(), 2);
        let addr = |m: &SlotMap, s| m.node(s).map(|n| n.endpoint.addr.clone());
        assert_eq!(addr(&m, 0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(addr(&m, 12182).as_deref(), Some("127.0.0.1:7001"));
        let moved = m.with(12182, &i.node_for("127.0.0.1:7002"));
        assert_eq!(addr(&moved, 12182).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(addr(&moved, 12183).as_deref(), Some("127.0.0.1:7001"));
        // A node no longer in the map is forgotten, seeds are kept.
        i.install_ranges(&[r(0, 16383, "127.0.0.1:7001")]);
        let known: Vec<String> = i.nodes.lock().unwrap().keys().cloned().collect();
        assert_eq!(known.len(), 2, "{known:?}");
        assert_eq!(addr(&i.current(), 5).as_deref(), Some("127.0.0.1:7001"));
    }

    #[tokio::test]
    async fn a_map_in_use_is_refreshed_periodically() {
        // Port 1: the refresh fails at once, only its start matters here.
        let mut c =
            ClusterClient::new(&["redis://127.0.0.1:1".to_string()], Duration::ZERO).unwrap();
        let i = Arc::get_mut(&mut c.inner).unwrap();
        i.epoch -= REFRESH_PERIOD * 2;
        let i = &c.inner;
        let r = |start, end| SlotRange {
            start,
            end,
            addr: "127.0.0.1:1".into(),
        };
        i.install_ranges(&[r(0, 16383)]);
        i.last_refresh_ms.store(1, Ordering::Release);
        let mut done = i.done.subscribe();
        i.refresh_if_old();
        let started = i.last_refresh_ms.load(Ordering::Acquire);
        assert!(started >= REFRESH_PERIOD.as_millis() as u64, "{started}");
        done.changed().await.unwrap();
        // Recent: not again.
        i.refresh_if_old();
        assert_eq!(i.last_refresh_ms.load(Ordering::Acquire), started);
    }
}
