//! One upstream pool: its targets, the balancing algorithm, outlier state and how to
//! connect. Built once per config generation; a pool whose definition did not change can be
//! carried over to the next generation with its health state (reload).
//!
//! Selection skips targets that are unhealthy (active checks), ejected (passive checks) or
//! already tried by this request (retries). When every target is out, there is no target.

use crate::config::model::{Balance, UpstreamConfig};
use crate::metrics::Metrics;
use crate::template::Template;
use futures::FutureExt;
use once_cell::sync::Lazy;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};
use prometheus::{Histogram, IntCounter, IntGauge};
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Milliseconds since the first call: a cheap monotonic clock for ejection deadlines.
fn clock_ms() -> u64 {
    static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// One target and its live state.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight.
    pub weight: usize,
    /// `ip:port`, for metrics, logs and status.
    pub label: String,
    backend: Backend,
    inflight: AtomicUsize,
    failures: AtomicU32,
    ejected_until: AtomicU64,
    /// Whether active checks report it healthy: a copy of the load balancer's state
    /// (there it is a hash-map lookup by a SipHash of the backend), refreshed after every
    /// round of checks, read on the request path.
    ready: AtomicBool,
    /// `moat_upstream_target_healthy` for this target.
    pub healthy_gauge: IntGauge,
}

impl Target {
    fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }
    /// [`Target::ejected`] reading the clock only for a target that was ever ejected.
    fn ejected_now(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > clock_ms()
    }
    /// Requests in flight to this target.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Hash(LoadBalancer<Consistent>),
    /// Power of two choices over in-flight counts; the balancer only keeps health.
    Least(LoadBalancer<RoundRobin>),
}

/// TLS settings for connections to the pool.
pub struct PeerTls {
    /// SNI and the name verified in the certificate.
    pub sni: String,
    /// Verify the certificate chain and name.
    pub verify: bool,
    /// Extra trusted CAs.
    pub ca: Option<Arc<CaType>>,
    /// The CA file's bytes, to notice a changed file on reload.
    pub ca_pem: Option<Vec<u8>>,
}

/// Settings for building a pool, resolved from its config.
pub struct PoolSettings {
    pub name: String,
    pub targets: Vec<(SocketAddr, usize)>,
    pub balance: Balance,
    pub hash_key: Option<Template>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: u32,
    pub outlier: Option<(u32, Duration)>,
    pub tls: Option<PeerTls>,
    /// Speak HTTP/2 to the targets (`http2: true`).
    pub http2: bool,
    pub health: Option<(
        Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync>,
        Duration,
    )>,
    /// Failed probes that take a target out (`unhealthy_after`).
    pub unhealthy_after: usize,
    /// The config it came from, to decide reuse on reload.
    pub definition: UpstreamConfig,
}

/// An upstream pool.
pub struct Pool {
    /// The pool's name.
    pub name: Arc<str>,
    selector: Selector,
    /// Round robin only: target indexes, each repeated by its weight (config order), and
    /// the turn counter: the first choice of a selection without building Pingora's
    /// selection iterator (see [`Pool::select`]).
    rr_order: Box<[u32]>,
    rr_next: AtomicUsize,
    /// Targets in config order.
    pub targets: Vec<Target>,
    /// Target index by address (for pools too large for a linear scan).
    by_addr: HashMap<SocketAddr, usize>,
    hash_key: Option<Template>,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// Retries on another target.
    pub retries: u32,
    outlier: Option<(u32, Duration)>,
    tls: Option<PeerTls>,
    http2: bool,
    health_interval: Option<Duration>,
    unhealthy_after: usize,
    health_started: AtomicBool,
    /// The config this pool was built from.
    pub definition: UpstreamConfig,
    /// Set when a newer generation stopped using this pool (its health loop then ends).
    retired: AtomicBool,
    /// `moat_upstream_request_duration_seconds{upstream}`.
    pub duration: Histogram,
    errors: ErrorCounters,
}

/// Pre-resolved `moat_upstream_errors_total{upstream,kind}` counters.
struct ErrorCounters {
    connect: IntCounter,
    timeout: IntCounter,
    no_target: IntCounter,
    response_5xx: IntCounter,
    other: IntCounter,
}

/// Kinds of upstream failure, as counted in `moat_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Could not connect (refused, reset during connect...).
    Connect,
    /// Connect, read or write timed out.
    Timeout,
    /// No healthy target to send to.
    NoTarget,
    /// The target answered 5xx.
    Response5xx,
    /// Anything else after the request was sent.
    Other,
}

fn build_lb<S>(backends: &BTreeSet<Backend>) -> LoadBalancer<S>
where
    S: pingora_load_balancing::selection::BackendSelection + 'static,
    S::Iter: pingora_load_balancing::selection::BackendIter,
{
    let lb = LoadBalancer::from_backends(Backends::new(discovery::Static::new(backends.clone())));
    // Static discovery completes immediately.
    let _ = lb.update().now_or_never();
    lb
}

impl Pool {
    /// Build a pool. Health checks are attached but not started: see
    /// [`crate::upstream::health::start`].
    pub fn new(s: PoolSettings, metrics: &Metrics) -> Result<Pool, String> {
        let mut targets = Vec::with_capacity(s.targets.len());
        let mut set = BTreeSet::new();
        let mut by_addr = HashMap::with_capacity(s.targets.len());
        for (i, (addr, weight)) in s.targets.iter().enumerate() {
            let backend = Backend::new_with_weight(&addr.to_string(), *weight)
                .map_err(|e| format!("target {addr}: {e}"))?;
            set.insert(backend.clone());
            by_addr.insert(*addr, i);
            let label = addr.to_string();
            let healthy_gauge = metrics
                .target_healthy
                .with_label_values(&[s.name.as_str(), label.as_str()]);
            healthy_gauge.set(1);
            targets.push(Target {
                addr: *addr,
                weight: *weight,
                label,
                backend,
                inflight: AtomicUsize::new(0),
                failures: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
                ready: AtomicBool::new(true),
                healthy_gauge,
            });
        }
        let rr_order = match s.balance {
            Balance::RoundRobin => (0..targets.len())
                .flat_map(|i| std::iter::repeat_n(i as u32, targets[i].weight))
                .collect(),
            _ => Box::default(),
        };
        let mut selector = match s.balance {
            Balance::RoundRobin => Selector::RoundRobin(build_lb(&set)),
            Balance::Random => Selector::Random(build_lb(&set)),
            Balance::ConsistentHash => Selector::Hash(build_lb(&set)),
            Balance::LeastRequests => Selector::Least(build_lb(&set)),
        };
        let mut health_interval = None;
        if let Some((check, interval)) = s.health {
            health_interval = Some(interval);
            match &mut selector {
                Selector::RoundRobin(lb) | Selector::Least(lb) => lb.set_health_check(check),
                Selector::Random(lb) => lb.set_health_check(check),
                Selector::Hash(lb) => lb.set_health_check(check),
            }
        }
        let name = s.name.as_str();
        let err = |kind: &str| metrics.upstream_errors.with_label_values(&[name, kind]);
        let pool = Pool {
            errors: ErrorCounters {
                connect: err("connect"),
                timeout: err("timeout"),
                no_target: err("no_healthy_target"),
                response_5xx: err("response_5xx"),
                other: err("other"),
            },
            duration: metrics.upstream_duration.with_label_values(&[name]),
            name: Arc::from(name),
            selector,
            rr_order,
            rr_next: AtomicUsize::new(0),
            targets,
            by_addr,
            hash_key: s.hash_key,
            connect_timeout: s.connect_timeout,
            read_timeout: s.read_timeout,
            retries: s.retries,
            outlier: s.outlier,
            tls: s.tls,
            http2: s.http2,
            health_interval,
            unhealthy_after: s.unhealthy_after.max(1),
            health_started: AtomicBool::new(false),
            definition: s.definition,
            retired: AtomicBool::new(false),
        };
        pool.refresh_ready();
        Ok(pool)
    }

    /// Copy the load balancer's health of every target into [`Target`]'s `ready`.
    fn refresh_ready(&self) {
        for t in &self.targets {
            let ready = match &self.selector {
                Selector::RoundRobin(lb) | Selector::Least(lb) => lb.backends().ready(&t.backend),
                Selector::Random(lb) => lb.backends().ready(&t.backend),
                Selector::Hash(lb) => lb.backends().ready(&t.backend),
            };
            t.ready.store(ready, Ordering::Relaxed);
        }
    }

    /// How long a read from a target may wait (`read_timeout`); also the idle limit of an
    /// upgraded connection moat relays.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The consistent-hash key template, when the pool hashes.
    pub fn hash_key(&self) -> Option<&Template> {
        self.hash_key.as_ref()
    }

    /// Whether active checks report the target healthy (as of their last round).
    pub fn target_healthy(&self, idx: usize) -> bool {
        self.targets[idx].ready.load(Ordering::Relaxed)
    }

    /// Whether passive checks have ejected the target right now.
    pub fn target_ejected(&self, idx: usize) -> bool {
        self.targets[idx].ejected(clock_ms())
    }

    /// The index of the target a backend stands for.
    fn index_of(&self, b: &Backend) -> Option<usize> {
        let addr = b.addr.as_inet()?;
        if self.targets.len() <= 16 {
            self.targets.iter().position(|t| t.addr == *addr)
        } else {
            self.by_addr.get(addr).copied()
        }
    }

    /// Choose a target not in `exclude`; `key` is the hash key (ignored unless hashing).
    pub fn select(&self, key: &[u8], exclude: &[usize]) -> Option<usize> {
        if self.targets.len() == 1 {
            // Every algorithm picks the only target, when it may take requests.
            return self.usable(0, exclude).then_some(0);
        }
        if !self.rr_order.is_empty() {
            // Round robin's turn, as Pingora's weighted round robin takes it (the next
            // slot of the weight-expanded list); when that target may not take the
            // request, Pingora's selection below chooses as it did before.
            let turn = self.rr_next.fetch_add(1, Ordering::Relaxed) % self.rr_order.len();
            let i = self.rr_order[turn] as usize;
            if self.usable(i, exclude) {
                return Some(i);
            }
        }
        let now = clock_ms();
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && self
                    .index_of(b)
                    .is_some_and(|i| !exclude.contains(&i) && !self.targets[i].ejected(now))
        };
        let max = 256;
        let chosen = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, max, accept),
            Selector::Random(lb) => lb.select_with(key, max, accept),
            Selector::Hash(lb) => lb.select_with(key, max, accept),
            Selector::Least(_) => return self.least_requests(exclude),
        };
        chosen.and_then(|b| self.index_of(&b))
    }

    fn usable(&self, i: usize, exclude: &[usize]) -> bool {
        !exclude.contains(&i) && self.target_healthy(i) && !self.targets[i].ejected_now()
    }

    /// Power of two choices: two random usable targets, the one with fewer in-flight
    /// requests per unit of weight wins.
    fn least_requests(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.targets.len();
        let mut rng = rand::thread_rng();
        let first_usable = |start: usize, skip: Option<usize>| {
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| Some(i) != skip && self.usable(i, exclude))
        };
        let a = first_usable(rng.gen_range(0..n), None)?;
        let Some(b) = first_usable(rng.gen_range(0..n), Some(a)) else {
            return Some(a);
        };
        let load = |i: usize| {
            self.targets[i].inflight() as u128 * 1_000_000 / self.targets[i].weight.max(1) as u128
        };
        Some(if load(b) < load(a) { b } else { a })
    }

    /// Whether some target other than those in `exclude` could take a request now.
    pub fn has_candidate(&self, exclude: &[usize]) -> bool {
        (0..self.targets.len()).any(|i| self.usable(i, exclude))
    }

    /// Count a request in flight to target `idx` until the guard drops.
    pub fn begin(self: &Arc<Self>, idx: usize) -> InFlight {
        self.targets[idx].inflight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            pool: Arc::clone(self),
            idx,
        }
    }

    /// The peer to connect to for target `idx`. On an `http2` pool the peer speaks HTTP/2
    /// (see [`set_http2`]), except for `upgrade` requests (WebSocket...): Pingora cannot
    /// carry an HTTP/1.1 upgrade over HTTP/2 (no RFC 8441 extended CONNECT to upstreams),
    /// so those go to the target over HTTP/1.1.
    pub fn peer(&self, idx: usize, upgrade: bool) -> Box<HttpPeer> {
        let t = &self.targets[idx];
        let (tls, sni) = match &self.tls {
            Some(tls) => (true, tls.sni.clone()),
            None => (false, String::new()),
        };
        let mut p = HttpPeer::new(t.addr, tls, sni);
        p.options.connection_timeout = Some(self.connect_timeout);
        p.options.read_timeout = Some(self.read_timeout);
        // No write timeout: a slow upstream reader is bounded by the read timeout of the
        // response, and a timer per write costs measurable CPU per request.
        p.options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(tls) = &self.tls {
            p.options.verify_cert = tls.verify;
            p.options.verify_hostname = tls.verify;
            p.options.ca = tls.ca.clone();
        }
        if self.http2 && !upgrade {
            set_http2(&mut p.options, self.tls.is_some());
        }
        Box::new(p)
    }

    /// Record the outcome of a request to target `idx` for passive outlier detection and
    /// metrics. `failure` is `None` on success.
    pub fn report(&self, idx: usize, failure: Option<FailureKind>) {
        if let Some(kind) = failure {
            self.count_error(kind);
        }
        let Some((threshold, eject_for)) = self.outlier else {
            return;
        };
        let t = &self.targets[idx];
        match failure {
            None => {
                if t.failures.load(Ordering::Relaxed) != 0 {
                    t.failures.store(0, Ordering::Relaxed);
                }
            }
            Some(_) => {
                let n = t.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let now = clock_ms();
                let others_in = self
                    .targets
                    .iter()
                    .enumerate()
                    .any(|(i, o)| i != idx && !o.ejected(now));
                // Never eject the last target still in: a pool-wide blip must not turn
                // into `eject_for` of certain 503s.
                if n >= threshold && others_in {
                    t.failures.store(0, Ordering::Relaxed);
                    t.ejected_until
                        .store(now + eject_for.as_millis() as u64, Ordering::Relaxed);
                    log::warn!(
                        "upstream {} target {} ejected for {:?} after {n} consecutive failures",
                        self.name,
                        t.label,
                        eject_for
                    );
                }
            }
        }
    }

    /// Count an upstream error of `kind`.
    pub fn count_error(&self, kind: FailureKind) {
        match kind {
            FailureKind::Connect => &self.errors.connect,
            FailureKind::Timeout => &self.errors.timeout,
            FailureKind::NoTarget => &self.errors.no_target,
            FailureKind::Response5xx => &self.errors.response_5xx,
            FailureKind::Other => &self.errors.other,
        }
        .inc();
    }

    /// Run one pass of active health checks over every target, in parallel.
    pub async fn check_health(&self) {
        match &self.selector {
            Selector::RoundRobin(lb) | Selector::Least(lb) => {
                lb.backends().run_health_check(true).await
            }
            Selector::Random(lb) => lb.backends().run_health_check(true).await,
            Selector::Hash(lb) => lb.backends().run_health_check(true).await,
        }
        self.refresh_ready();
    }

    /// Probe every target until a dead one would be marked down (`unhealthy_after` passes
    /// back to back), so a new pool takes traffic only on targets that answer.
    pub async fn prime_health(&self) {
        if self.health_interval.is_none() {
            return;
        }
        for _ in 0..self.unhealthy_after {
            self.check_health().await;
        }
    }

    /// The active-check interval, when the pool has checks.
    pub fn health_interval(&self) -> Option<Duration> {
        self.health_interval
    }

    /// Whether a reload could carry this pool over unchanged: same definition and same
    /// CA file contents (certificates referenced by file are re-read on reload).
    pub fn reusable_for(&self, def: &UpstreamConfig, ca_pem: Option<&[u8]>) -> bool {
        self.definition == *def && self.tls.as_ref().and_then(|t| t.ca_pem.as_deref()) == ca_pem
    }

    /// Mark the pool as no longer used by the live generation.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether [`Pool::retire`] was called.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Mark the health loop as started; false if it already was.
    pub fn claim_health_loop(&self) -> bool {
        !self.health_started.swap(true, Ordering::AcqRel)
    }
}

/// Most concurrent requests (streams) moat opens on one HTTP/2 connection to a target; the
/// target's own `SETTINGS_MAX_CONCURRENT_STREAMS` lowers it. More requests open more
/// connections.
pub const H2_MAX_STREAMS: usize = 100;

/// Make a peer speak HTTP/2: over TLS, offer `h2` and `http/1.1` by ALPN (the target
/// chooses; one that only speaks HTTP/1.1 still works); without TLS, h2c with prior
/// knowledge (there is nothing to negotiate with, so the target must speak h2c).
pub fn set_http2(options: &mut PeerOptions, tls: bool) {
    if tls {
        options.set_http_version(2, 1);
    } else {
        options.set_http_version(2, 2);
    }
    options.max_h2_streams = H2_MAX_STREAMS;
}

/// Counts one request in flight to a target; dropping it ends the count.
pub struct InFlight {
    pool: Arc<Pool>,
    idx: usize,
}

impl InFlight {
    /// The target's index in its pool.
    pub fn index(&self) -> usize {
        self.idx
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.targets[self.idx]
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
