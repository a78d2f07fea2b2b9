//! Active health checks: building Pingora's HTTP/TCP checks from config and running one
//! background loop per pool, every `interval`, checking all targets in parallel. A loop
//! holds only a weak reference, so it ends by itself when its pool is dropped (after a
//! reload removed it).

use super::pool::Pool;
use crate::config::model::{HealthCheckConfig, HttpCheckConfig};
use async_trait::async_trait;
use pingora_core::upstreams::peer::PeerOptions;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{
    HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck,
};
use pingora_load_balancing::Backend;
use prometheus::IntGauge;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

/// Default probe interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The health gauges of a pool's targets by address: the pool's own handles
/// ([`Target::healthy_gauge`](super::pool::Target)), given to its probe's observer once the
/// pool is built ([`TargetGauges::fill`]); probes start only after that.
#[derive(Clone, Default)]
pub struct TargetGauges(Arc<OnceLock<HashMap<SocketAddr, IntGauge>>>);

impl TargetGauges {
    /// Take `pool`'s gauge handles (once).
    pub fn fill(&self, pool: &Pool) {
        let gauges = pool
            .targets
            .iter()
            .map(|t| (t.addr, t.healthy_gauge.clone()))
            .collect();
        let _ = self.0.set(gauges);
    }
}

/// Sets `moat_upstream_target_healthy` when a target flips.
struct GaugeObserver(TargetGauges);

#[async_trait]
impl HealthObserve for GaugeObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let gauge = target.addr.as_inet().and_then(|a| self.0 .0.get()?.get(a));
        if let Some(g) = gauge {
            g.set(healthy as i64);
        }
    }
}

/// TLS used by probes to a TLS upstream: the pool's own settings.
pub type ProbeTls<'a> = Option<&'a super::pool::PeerTls>;

/// A probe's settings, with their defaults.
struct Probe<'a> {
    tls: ProbeTls<'a>,
    http2: bool,
    timeout: Duration,
    healthy_after: usize,
    unhealthy_after: usize,
    gauges: &'a TargetGauges,
}

/// Build the check for a pool from its `health_check:` settings (checked by the upstreams
/// pass). HTTP probes to an `http2` pool speak HTTP/2 as its requests do (h2 by ALPN over
/// TLS, h2c otherwise). Flips set the pool's target gauges (see [`TargetGauges`]).
pub fn build(
    hc: &HealthCheckConfig,
    tls: ProbeTls,
    http2: bool,
    gauges: &TargetGauges,
) -> Result<(Box<dyn HealthCheck + Send + Sync>, Duration), String> {
    let probe = Probe {
        tls,
        http2,
        timeout: hc.timeout.map(|d| d.get()).unwrap_or(DEFAULT_TIMEOUT),
        healthy_after: hc.healthy_after.unwrap_or(2).max(1) as usize,
        unhealthy_after: hc.unhealthy_after.unwrap_or(3).max(1) as usize,
        gauges,
    };
    let interval = hc.interval.map(|d| d.get()).unwrap_or(DEFAULT_INTERVAL);
    let check: Box<dyn HealthCheck + Send + Sync> = match &hc.http {
        Some(http) => Box::new(http_check(http, &probe)?),
        None => tcp_check(&probe),
    };
    Ok((check, interval))
}

/// An HTTP probe: `GET path` with the pool's `Host`, expecting one status.
fn http_check(http: &HttpCheckConfig, probe: &Probe) -> Result<HttpHealthCheck, String> {
    let tls = probe.tls;
    let host = http
        .host
        .clone()
        .or_else(|| tls.map(|t| t.sni.clone()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string());
    let mut c = HttpHealthCheck::new(&host, tls.is_some());
    let mut req = RequestHeader::build("GET", http.path.as_bytes(), None)
        .map_err(|e| format!("health_check.http.path: {e}"))?;
    if probe.http2 && tls.is_none() {
        // Over h2c the URI carries scheme and authority, so the probe's `:scheme` is
        // `http` (Pingora's HTTP/2 client otherwise says `https`).
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(host.as_str())
            .path_and_query(http.path.as_str())
            .build()
            .map_err(|e| format!("health_check.http: {e}"))?;
        req.set_uri(uri);
    }
    req.insert_header("Host", host.as_str())
        .map_err(|e| format!("health_check.http.host: {e}"))?;
    req.insert_header("User-Agent", "moat-health-check")
        .map_err(|e| format!("health_check: {e}"))?;
    c.req = req;
    let expect = http.expect_status.unwrap_or(200);
    c.validator = Some(Box::new(move |resp| {
        if resp.status.as_u16() == expect {
            Ok(())
        } else {
            pingora_error::Error::e_explain(
                pingora_error::ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                format!("status {} (want {expect})", resp.status.as_u16()),
            )
        }
    }));
    c.consecutive_success = probe.healthy_after;
    c.consecutive_failure = probe.unhealthy_after;
    c.peer_template.options.read_timeout = Some(probe.timeout);
    if probe.http2 {
        super::pool::set_http2(&mut c.peer_template.options, tls.is_some());
    }
    peer(
        &mut c.peer_template.sni,
        &mut c.peer_template.options,
        probe,
    );
    c.health_changed_callback = Some(Box::new(GaugeObserver(probe.gauges.clone())));
    Ok(c)
}

/// A TCP probe (a TLS handshake too with `tls:`).
fn tcp_check(probe: &Probe) -> Box<TcpHealthCheck> {
    let mut c = match probe.tls {
        Some(t) => TcpHealthCheck::new_tls(&t.sni),
        None => TcpHealthCheck::new(),
    };
    c.consecutive_success = probe.healthy_after;
    c.consecutive_failure = probe.unhealthy_after;
    peer(
        &mut c.peer_template.sni,
        &mut c.peer_template.options,
        probe,
    );
    c.health_changed_callback = Some(Box::new(GaugeObserver(probe.gauges.clone())));
    c
}

/// The connect timeout and the pool's TLS settings on a probe's peer.
fn peer(sni: &mut String, options: &mut PeerOptions, probe: &Probe) {
    options.connection_timeout = Some(probe.timeout);
    if let Some(t) = probe.tls {
        sni.clone_from(&t.sni);
        options.verify_cert = t.verify;
        options.verify_hostname = t.verify;
        options.ca = t.ca.clone();
    }
}

/// Start the health loop of `pool` on the current Tokio runtime, once per pool.
pub fn start(pool: &Arc<Pool>) {
    let Some(interval) = pool.health_interval() else {
        return;
    };
    if !pool.claim_health_loop() {
        return;
    }
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        loop {
            let Some(pool) = weak.upgrade() else {
                return;
            };
            if pool.is_retired() {
                return;
            }
            pool.check_health().await;
            drop(pool);
            tokio::time::sleep(interval).await;
        }
    });
}
