//! Connection floods: `server.limits.max_connections_per_ip` and
//! `server.limits.max_connections`. A connection over either limit is closed at accept,
//! with nothing sent; it is counted in `moat_connections_refused_total{reason}` and logged
//! at most once a second.
//!
//! - [`Limiter`] counts open connections: one process-wide atomic, and per client address
//!   a map in 64 shards, each behind its own mutex (an entry is removed when its count
//!   returns to 0, so the map holds only addresses with open connections). An IPv6 client
//!   is counted by its prefix (`server.limits.per_ip_v6_prefix`, default /64: one client
//!   commonly holds a whole /64). Peers in `server.trusted_proxies` (a load balancer in
//!   front of moat carries many clients) count towards `max_connections` only.
//! - A connection takes a [`Slot`] as soon as moat sees it, and the slot rides on the
//!   socket itself (see `accept`), so it is given back when the socket is closed, however
//!   the connection ends: HTTP/1 keep-alive, HTTP/2, a WebSocket relayed outside Pingora's
//!   request loop, a TLS handshake that fails or times out. On a TLS listener the slot is
//!   taken before the handshake, so connections stalled in it count.
//! - Pingora's connection filter ([`accept::Filter`]) refuses a connection from an address
//!   (or in a process) already at its limit right at `accept()`, before a task is spawned
//!   for it.
//!
//! Both limits are process-level: they are read at start, and a reload that changes them is
//! refused (as every `server:` change).

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::{canonical, CidrSet};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub mod accept;

pub use accept::{handed_over, service, ConnLimit};

const SHARDS: usize = 64;

/// Default `server.limits.per_ip_v6_prefix`.
pub const DEFAULT_V6_PREFIX: u8 = 64;

/// Open-connection counts and the limits they are held to.
pub struct Limiter {
    per_ip: Option<u32>,
    /// The mask an IPv6 address is counted under (`per_ip_v6_prefix`).
    v6_mask: u128,
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
        let prefix = u32::from(l.per_ip_v6_prefix.unwrap_or(DEFAULT_V6_PREFIX)).min(128);
        Some(Arc::new(Limiter {
            per_ip: l.max_connections_per_ip,
            v6_mask: u128::MAX.checked_shl(128 - prefix).unwrap_or(0),
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

    /// The key a per-IP count applies to (`None`: unknown or trusted): the address, or
    /// for IPv6 its `per_ip_v6_prefix` network.
    fn counted_ip(&self, peer: Option<IpAddr>) -> Option<IpAddr> {
        let ip = canonical(peer?);
        if self.per_ip.is_none() || self.trusted.contains(ip) {
            return None;
        }
        Some(match ip {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & self.v6_mask).into()),
            v4 => v4,
        })
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
            return Err(self.refuse(Refused::Total, peer, None));
        }
        let ip = self.counted_ip(peer);
        if let (Some(ip), Some(max)) = (ip, self.per_ip) {
            let mut shard = self.lock(ip);
            let n = shard.entry(ip).or_insert(0);
            if *n >= max {
                drop(shard);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(self.refuse(Refused::PerIp, peer, Some(ip)));
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
            self.refuse(Refused::Total, peer, None);
            return false;
        }
        if let (Some(ip), Some(max)) = (self.counted_ip(peer), self.per_ip) {
            if self.lock(ip).get(&ip).is_some_and(|n| *n >= max) {
                self.refuse(Refused::PerIp, peer, Some(ip));
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

    /// Count a refusal; log it unless one was logged this second. `key`: what the
    /// per-IP count is kept under (the address, or an IPv6 client's network).
    fn refuse(&self, why: Refused, peer: Option<IpAddr>, key: Option<IpAddr>) -> Refused {
        match why {
            Refused::PerIp => self.refused_per_ip.inc(),
            Refused::Total => self.refused_total.inc(),
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        if now > last
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Taken whole: another thread's refusals counted meanwhile go in this message
            // or the next, never twice, and the count never wraps.
            let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
            let from = peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
            let limit = match why {
                Refused::PerIp => {
                    let whom = match key {
                        Some(IpAddr::V6(net)) => format!("{net}/{}", self.v6_mask.count_ones()),
                        _ => from.clone(),
                    };
                    format!(
                        "server.limits.max_connections_per_ip ({}) reached for {whom}",
                        self.per_ip.unwrap_or(0)
                    )
                }
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
    fn ipv6_clients_are_counted_by_prefix() {
        let l = limiter("max_connections_per_ip: 2", "");
        // One /64 is one client, whatever its interface identifiers.
        let a = l.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = l.acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            l.acquire(ip("2001:db8:1:2:abcd::3")).unwrap_err(),
            Refused::PerIp
        );
        assert!(!l.admits(ip("2001:db8:1:2::77")));
        let _c = l.acquire(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(l.tracked_addresses(), 2);
        drop(a);
        assert!(l.admits(ip("2001:db8:1:2::77")));
        // IPv4 (mapped or not) stays per address.
        let _d = l.acquire(ip("::ffff:10.0.0.1")).unwrap();
        let _e = l.acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(l.tracked_addresses(), 4);

        let l = limiter("max_connections_per_ip: 1, per_ip_v6_prefix: 128", "");
        let _a = l.acquire(ip("2001:db8::1")).unwrap();
        let _b = l.acquire(ip("2001:db8::2")).unwrap();
        let l = limiter("max_connections_per_ip: 1, per_ip_v6_prefix: 48", "");
        let _a = l.acquire(ip("2001:db8:0:1::1")).unwrap();
        assert!(l.acquire(ip("2001:db8:0:ffff::1")).is_err());
        assert!(l.acquire(ip("2001:db8:1::1")).is_ok());
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
