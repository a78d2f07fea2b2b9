//! Connection floods: `server.limits.max_connections_per_ip` and
//! `server.limits.max_connections`. A connection over either limit is closed at accept,
//! with nothing sent; it is counted in `moat_connections_refused_total{reason}` and logged
//! at most once a second.
//!
//! - [`Limiter`] counts open connections: one process-wide atomic, and per client address
//!   a map in 64 shards, each behind its own mutex (an entry is removed when its count
//!   returns to 0, so the map holds only addresses with open connections). Peers in
//!   `server.trusted_proxies` (a load balancer in front of moat carries many clients) count
//!   towards `max_connections` only.
//! - [`ConnLimit`] wraps a listening service's application: each connection it is handed
//!   takes a [`Slot`] or is dropped (closed), and travels inside a [`Counted`] stream that
//!   holds the slot, so it is given back when the socket is dropped, however the connection
//!   ends: HTTP/1 keep-alive, HTTP/2 (the stream lives in the h2 connection), a WebSocket
//!   relayed outside Pingora's request loop (the relay owns the stream).
//! - [`Filter`], Pingora's connection filter, refuses a new connection from an address (or
//!   in a process) already at its limit right at `accept()`, before a TLS handshake is
//!   spent on it. It only reads the counts: connections still in their TLS handshake are
//!   not counted (Pingora bounds a handshake to 60 s); [`ConnLimit`] decides.
//!
//! Both limits are process-level: they are read at start, and a reload that changes them is
//! refused (as every `server:` change).

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::{canonical, CidrSet};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod counted;

pub use counted::Counted;

const SHARDS: usize = 64;

/// Open-connection counts and the limits they are held to.
pub struct Limiter {
    per_ip: Option<u32>,
    total: Option<u32>,
    /// Addresses exempt from `per_ip` (`server.trusted_proxies`).
    trusted: CidrSet,
    open: AtomicUsize,
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    refused_per_ip: IntCounter,
    refused_total: IntCounter,
    /// Seconds since `started` when the last refusal was logged (+1: 0 is "never").
    logged_at: AtomicU64,
    /// Refusals since the last one logged.
    unlogged: AtomicU64,
    started: Instant,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address already has `max_connections_per_ip` open.
    PerIp,
    /// The process already has `max_connections` open.
    Total,
}

impl Limiter {
    /// The limiter `cfg.server.limits` asks for; `None` when it sets neither limit.
    pub fn from_config(cfg: &Config, metrics: &Metrics) -> Option<Arc<Limiter>> {
        let l = cfg.server.limits.as_ref()?;
        if l.max_connections_per_ip.is_none() && l.max_connections.is_none() {
            return None;
        }
        let reason = |r: &str| metrics.connections_refused.with_label_values(&[r]);
        Some(Arc::new(Limiter {
            per_ip: l.max_connections_per_ip,
            total: l.max_connections,
            trusted: CidrSet::parse(&cfg.server.trusted_proxies).unwrap_or_default(),
            open: AtomicUsize::new(0),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused_per_ip: reason("per_ip"),
            refused_total: reason("total"),
            logged_at: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// The address a per-IP count applies to (`None`: unknown or trusted).
    fn counted_ip(&self, peer: Option<IpAddr>) -> Option<IpAddr> {
        let ip = canonical(peer?);
        (self.per_ip.is_some() && !self.trusted.contains(ip)).then_some(ip)
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let bits = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let b = u128::from(v6);
                (b as u64) ^ ((b >> 64) as u64)
            }
        };
        // Fibonacci hashing: the top bits of the product spread nearby addresses.
        let i = bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros());
        &self.shards[i as usize]
    }

    fn lock(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // A panic while holding a shard cannot leave a count half-written.
        self.shard(ip).lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot for a connection from `peer`, or refuse it (counted and logged).
    pub fn acquire(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Refused> {
        let total = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if self.total.is_some_and(|max| total > max as usize) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(Refused::Total, peer));
        }
        let ip = self.counted_ip(peer);
        if let (Some(ip), Some(max)) = (ip, self.per_ip) {
            let mut shard = self.lock(ip);
            let n = shard.entry(ip).or_insert(0);
            if *n >= max {
                drop(shard);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(self.refuse(Refused::PerIp, peer));
            }
            *n += 1;
        }
        Ok(Slot {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Whether a connection from `peer` would get a slot now (counts only what is
    /// refused; nothing is taken).
    pub fn admits(&self, peer: Option<IpAddr>) -> bool {
        if self
            .total
            .is_some_and(|max| self.open.load(Ordering::Acquire) >= max as usize)
        {
            self.refuse(Refused::Total, peer);
            return false;
        }
        if let (Some(ip), Some(max)) = (self.counted_ip(peer), self.per_ip) {
            if self.lock(ip).get(&ip).is_some_and(|n| *n >= max) {
                self.refuse(Refused::PerIp, peer);
                return false;
            }
        }
        true
    }

    /// Open connections now (all addresses).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Addresses with at least one open connection counted per address.
    pub fn tracked_addresses(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut shard = self.lock(ip);
            if let Some(n) = shard.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    shard.remove(&ip);
                }
            }
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Count a refusal; log it unless one was logged this second.
    fn refuse(&self, why: Refused, peer: Option<IpAddr>) -> Refused {
        match why {
            Refused::PerIp => self.refused_per_ip.inc(),
            Refused::Total => self.refused_total.inc(),
        }
        let unlogged = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        if now > last
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged.fetch_sub(unlogged, Ordering::Relaxed);
            let from = peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
            let limit = match why {
                Refused::PerIp => format!(
                    "server.limits.max_connections_per_ip ({}) reached for {from}",
                    self.per_ip.unwrap_or(0)
                ),
                Refused::Total => format!(
                    "server.limits.max_connections ({}) reached",
                    self.total.unwrap_or(0)
                ),
            };
            log::warn!(
                "connection from {from} closed at accept: {limit}; {unlogged} refused since \
                 the last such message (logged at most once a second; every one is counted \
                 in moat_connections_refused_total)"
            );
        }
        why
    }
}

/// One open connection's place in the counts, given back when dropped.
pub struct Slot {
    limiter: Arc<Limiter>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(self.ip);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("ip", &self.ip).finish()
    }
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

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
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
            // A stream handed back for reuse already holds its slot.
            Some(l) if !stream.as_any().is::<Counted>() => {
                // Refused: dropping the stream closes the connection.
                let slot = l.acquire(peer_ip(&stream)).ok()?;
                Box::new(Counted::new(stream, slot))
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

    fn limiter(limits: &str, trusted: &str) -> Arc<Limiter> {
        let cfg = crate::config::load::parse(&format!(
            "server: {{ trusted_proxies: [{trusted}], limits: {{ {limits} }} }}\n"
        ))
        .unwrap();
        Limiter::from_config(&cfg, &Metrics::new().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_ip_counts_come_and_go() {
        let l = limiter("max_connections_per_ip: 2", "");
        let a = l.acquire(ip("10.0.0.1")).unwrap();
        let b = l.acquire(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(l.acquire(ip("10.0.0.1")).unwrap_err(), Refused::PerIp);
        assert!(!l.admits(ip("10.0.0.1")));
        let c = l.acquire(ip("10.0.0.2")).unwrap();
        assert_eq!((l.open(), l.tracked_addresses()), (3, 2));
        drop(a);
        assert!(l.admits(ip("10.0.0.1")));
        drop((b, c));
        assert_eq!((l.open(), l.tracked_addresses()), (0, 0));
        assert_eq!(l.refused_per_ip.get(), 2);
        // Unknown addresses count towards the total only.
        let _u = l.acquire(None).unwrap();
        assert_eq!((l.open(), l.tracked_addresses()), (1, 0));
    }

    #[test]
    fn total_cap_and_trusted_peers() {
        let l = limiter(
            "max_connections: 3, max_connections_per_ip: 1",
            "\"10.0.0.0/8\"",
        );
        let held: Vec<Slot> = (0..3).map(|_| l.acquire(ip("10.1.1.1")).unwrap()).collect();
        assert_eq!(
            l.tracked_addresses(),
            0,
            "trusted peers are not counted per address"
        );
        assert_eq!(l.acquire(ip("192.0.2.1")).unwrap_err(), Refused::Total);
        assert!(!l.admits(ip("192.0.2.1")));
        assert_eq!(l.open(), 3);
        drop(held);
        assert_eq!(l.open(), 0);
        assert_eq!(l.refused_total.get(), 2);
    }

    #[test]
    fn no_limits_no_limiter() {
        let cfg = crate::config::load::parse("server: { limits: { max_body: 1MiB } }\n").unwrap();
        assert!(Limiter::from_config(&cfg, &Metrics::new().unwrap()).is_none());
    }

    #[test]
    fn concurrent_acquire_and_release_balance() {
        let l = limiter("max_connections_per_ip: 1000", "");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    for i in 0..2000u32 {
                        let a = IpAddr::from([10, t, (i % 7) as u8, 1]);
                        drop(l.acquire(Some(a)).unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((l.open(), l.tracked_addresses()), (0, 0));
    }
}
