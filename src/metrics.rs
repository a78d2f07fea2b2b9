//! Prometheus metrics with the contract's names, in a registry owned by the process (not a
//! global), so tests can build their own. Hot-path handles are resolved once per route or
//! upstream at compile time where the labels allow, or on first use and then kept where
//! a label varies per request ([`RouteRequests`], [`Decisions`]).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};

/// Every metric moat exports.
pub struct Metrics {
    registry: Registry,
    /// `moat_http_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `moat_http_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `moat_upstream_request_duration_seconds{upstream}`.
    pub upstream_duration: HistogramVec,
    /// `moat_upstream_target_healthy{upstream,target}`.
    pub target_healthy: IntGaugeVec,
    /// `moat_upstream_errors_total{upstream,kind}`.
    pub upstream_errors: IntCounterVec,
    /// `moat_auth_failures_total{route,method,reason}`.
    pub auth_failures: IntCounterVec,
    /// `moat_ratelimit_decisions_total{route,plugin,result}`.
    pub ratelimit_decisions: IntCounterVec,
    /// `moat_redis_errors_total`.
    pub redis_errors: IntCounter,
    /// `moat_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `moat_config_generation`.
    pub config_generation: IntGauge,
    /// `moat_connections_active`.
    pub connections_active: IntGauge,
    /// `moat_header_timeouts_total{kind}` (an addition to the contract's metrics).
    pub header_timeouts: IntCounterVec,
    /// `moat_connections_refused_total{reason}` (an addition: connections closed at
    /// accept by `server.limits.max_connections_per_ip` or `max_connections`).
    pub connections_refused: IntCounterVec,
    /// `moat_auth_replay_fallback_total{action}` (an addition: HMAC replay checks Redis
    /// could not answer, by what `hmac.replay_on_redis_error` did: local or deny).
    pub replay_fallback: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Create and register every metric (and process metrics on Linux).
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<HistogramVec> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let requests = counter(
            "moat_http_requests_total",
            "HTTP requests answered, by route, method and status",
            &["route", "method", "status"],
        )?;
        let request_duration = histogram(
            "moat_http_request_duration_seconds",
            "Time from request start to the end of the response",
            &["route"],
        )?;
        let upstream_duration = histogram(
            "moat_upstream_request_duration_seconds",
            "Time from choosing an upstream target to the end of its response",
            &["upstream"],
        )?;
        let target_healthy = IntGaugeVec::new(
            Opts::new(
                "moat_upstream_target_healthy",
                "1 when the target passes active health checks",
            ),
            &["upstream", "target"],
        )?;
        registry.register(Box::new(target_healthy.clone()))?;
        let upstream_errors = counter(
            "moat_upstream_errors_total",
            "Upstream failures by kind",
            &["upstream", "kind"],
        )?;
        let auth_failures = counter(
            "moat_auth_failures_total",
            "Rejected credentials by route, method and reason",
            &["route", "method", "reason"],
        )?;
        let ratelimit_decisions = counter(
            "moat_ratelimit_decisions_total",
            "Limiter decisions by route, plugin and result",
            &["route", "plugin", "result"],
        )?;
        let redis_errors = IntCounter::new("moat_redis_errors_total", "Failed Redis commands")?;
        registry.register(Box::new(redis_errors.clone()))?;
        let config_reloads = counter(
            "moat_config_reloads_total",
            "Config reloads by result",
            &["result"],
        )?;
        let config_generation =
            IntGauge::new("moat_config_generation", "Generation of the live config")?;
        registry.register(Box::new(config_generation.clone()))?;
        let connections_active =
            IntGauge::new("moat_connections_active", "Downstream requests in progress")?;
        registry.register(Box::new(connections_active.clone()))?;
        let header_timeouts = counter(
            "moat_header_timeouts_total",
            "Connections closed by server.limits.header_timeout: partial_head (a request \
             head begun but not finished in time) or no_request (nothing sent)",
            &["kind"],
        )?;
        let connections_refused = counter(
            "moat_connections_refused_total",
            "Connections closed at accept by a connection limit: per_ip \
             (server.limits.max_connections_per_ip) or total (server.limits.max_connections)",
            &["reason"],
        )?;
        let replay_fallback = counter(
            "moat_auth_replay_fallback_total",
            "HMAC replay checks Redis could not answer, by what hmac.replay_on_redis_error \
             did: local (this instance's memory decided alone) or deny (503)",
            &["action"],
        )?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            target_healthy,
            upstream_errors,
            auth_failures,
            ratelimit_decisions,
            redis_errors,
            config_reloads,
            config_generation,
            connections_active,
            header_timeouts,
            connections_refused,
            replay_fallback,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Methods whose `moat_http_requests_total` handles a route keeps ([`RouteRequests`]).
const HOT_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
/// Statuses whose `moat_http_requests_total` handles a route keeps ([`RouteRequests`]).
const HOT_STATUSES: [u16; 15] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504,
];

/// `moat_http_requests_total` for one route: the handles of the (method, status) pairs
/// most requests have ([`HOT_METHODS`] x [`HOT_STATUSES`]), each resolved on its first use
/// (a series appears when first counted, as with `with_label_values`) and kept as long as
/// the route (one config generation). Other pairs take the vector's lookup, which hashes
/// the three labels (SipHash) under a lock: the cost this saves on every request.
pub struct RouteRequests {
    vec: IntCounterVec,
    route: Arc<str>,
    /// `HOT_METHODS.len() * HOT_STATUSES.len()` cells, method-major.
    hot: Box<[OnceLock<IntCounter>]>,
}

impl RouteRequests {
    /// The counters of `route` in `vec` (nothing is created before it is counted).
    pub fn new(vec: &IntCounterVec, route: Arc<str>) -> RouteRequests {
        RouteRequests {
            vec: vec.clone(),
            route,
            hot: (0..HOT_METHODS.len() * HOT_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Count one request: `status_label` is `status` as the label shows it.
    pub fn inc(&self, method: &str, status: u16, status_label: &str) {
        let slot = HOT_METHODS
            .iter()
            .position(|m| *m == method)
            .zip(HOT_STATUSES.iter().position(|s| *s == status))
            .and_then(|(m, s)| self.hot.get(m * HOT_STATUSES.len() + s));
        let labels = [&*self.route, method, status_label];
        match slot {
            Some(cell) => cell
                .get_or_init(|| self.vec.with_label_values(&labels))
                .inc(),
            None => self.vec.with_label_values(&labels).inc(),
        }
    }
}

/// Results a limiter counts, in [`Decisions`]' cell order.
const DECISION_RESULTS: [&str; 3] = ["allowed", "limited", "error"];

/// `moat_ratelimit_decisions_total` for one limiter plugin instance (its `plugin` label
/// fixed): the handles of its results under the first route it counts for, resolved on
/// first use; a plugin of one route (the common case) never looks the vector up again. A
/// global plugin counting under other routes takes the vector's lookup for those.
pub struct Decisions {
    vec: IntCounterVec,
    plugin: &'static str,
    route: OnceLock<Box<str>>,
    hot: [OnceLock<IntCounter>; DECISION_RESULTS.len()],
}

impl Decisions {
    /// The decisions of the plugin labelled `plugin` in `vec`.
    pub fn new(vec: &IntCounterVec, plugin: &'static str) -> Decisions {
        Decisions {
            vec: vec.clone(),
            plugin,
            route: OnceLock::new(),
            hot: Default::default(),
        }
    }

    /// Count one decision (`result`: `allowed`, `limited` or `error`) under `route`.
    pub fn inc(&self, route: &str, result: &str) {
        let labels = [route, self.plugin, result];
        let cell = DECISION_RESULTS
            .iter()
            .position(|r| *r == result)
            .filter(|_| &**self.route.get_or_init(|| route.into()) == route)
            .and_then(|i| self.hot.get(i));
        match cell {
            Some(cell) => cell
                .get_or_init(|| self.vec.with_label_values(&labels))
                .inc(),
            None => self.vec.with_label_values(&labels).inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, series: &str) -> String {
        let text = String::from_utf8(m.render()).unwrap();
        text.lines()
            .find(|l| l.starts_with(series))
            .map(|l| l[series.len()..].trim().to_string())
            .unwrap_or_else(|| "absent".into())
    }

    /// Cached handles count into the same series as the vector, create a series only
    /// when first counted, and every pair (cached or not) is counted.
    #[test]
    fn route_requests_count_like_the_vector() {
        let m = Metrics::new().unwrap();
        let r = RouteRequests::new(&m.requests, Arc::from("r"));
        let ok = "moat_http_requests_total{method=\"GET\",route=\"r\",status=\"200\"}";
        assert_eq!(count(&m, ok), "absent");
        r.inc("GET", 200, "200");
        r.inc("GET", 200, "200");
        m.requests.with_label_values(&["r", "GET", "200"]).inc();
        assert_eq!(count(&m, ok), "3");
        // Outside the hot pairs: an unusual status, an extension method.
        r.inc("GET", 418, "418");
        r.inc("PURGE", 200, "200");
        r.inc("OPTIONS", 504, "504");
        for (series, n) in [
            ("{method=\"GET\",route=\"r\",status=\"418\"}", "1"),
            ("{method=\"PURGE\",route=\"r\",status=\"200\"}", "1"),
            ("{method=\"OPTIONS\",route=\"r\",status=\"504\"}", "1"),
            ("{method=\"POST\",route=\"r\",status=\"200\"}", "absent"),
        ] {
            assert_eq!(
                count(&m, &format!("moat_http_requests_total{series}")),
                n,
                "{series}"
            );
        }
    }

    /// The first route's results are cached; another route's are still counted apart.
    #[test]
    fn decisions_count_per_route() {
        let m = Metrics::new().unwrap();
        let d = Decisions::new(&m.ratelimit_decisions, "rate_limit");
        d.inc("a", "allowed");
        d.inc("a", "allowed");
        d.inc("b", "allowed");
        d.inc("a", "limited");
        d.inc("b", "error");
        d.inc("a", "other");
        let series = |route: &str, result: &str| {
            format!(
                "moat_ratelimit_decisions_total{{plugin=\"rate_limit\",result=\"{result}\",route=\"{route}\"}}"
            )
        };
        assert_eq!(count(&m, &series("a", "allowed")), "2");
        assert_eq!(count(&m, &series("b", "allowed")), "1");
        assert_eq!(count(&m, &series("a", "limited")), "1");
        assert_eq!(count(&m, &series("b", "error")), "1");
        assert_eq!(count(&m, &series("a", "other")), "1");
        assert_eq!(count(&m, &series("a", "error")), "absent");
    }

    #[test]
    fn names_are_exported() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["r", "GET", "200"]).inc();
        m.request_duration.with_label_values(&["r"]).observe(0.001);
        m.upstream_duration.with_label_values(&["u"]).observe(0.001);
        m.target_healthy
            .with_label_values(&["u", "127.0.0.1:1"])
            .set(1);
        m.upstream_errors.with_label_values(&["u", "connect"]).inc();
        m.auth_failures
            .with_label_values(&["r", "jwt", "expired"])
            .inc();
        m.ratelimit_decisions
            .with_label_values(&["r", "rate_limit", "allowed"])
            .inc();
        m.redis_errors.inc();
        m.config_reloads.with_label_values(&["ok"]).inc();
        m.config_generation.set(1);
        m.connections_active.set(0);
        m.connections_refused.with_label_values(&["per_ip"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "moat_http_requests_total{method=\"GET\",route=\"r\",status=\"200\"} 1",
            "moat_http_request_duration_seconds_bucket",
            "moat_upstream_request_duration_seconds_bucket",
            "moat_upstream_target_healthy",
            "moat_upstream_errors_total",
            "moat_auth_failures_total",
            "moat_ratelimit_decisions_total",
            "moat_redis_errors_total 1",
            "moat_config_reloads_total",
            "moat_config_generation 1",
            "moat_connections_active 0",
            "moat_connections_refused_total{reason=\"per_ip\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
