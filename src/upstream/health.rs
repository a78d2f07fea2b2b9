//! Active health checks: building Pingora's HTTP/TCP checks from config and running one
//! background loop per pool, every `interval`, checking all targets in parallel. A loop
//! holds only a weak reference, so it ends by itself when its pool is dropped (after a
//! reload removed it).

use super::pool::Pool;
use crate::config::model::HealthCheckConfig;
use async_trait::async_trait;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{
    HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck,
};
use pingora_load_balancing::Backend;
use prometheus::IntGaugeVec;
use std::sync::Arc;
use std::time::Duration;

/// Default probe interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Sets `moat_upstream_target_healthy` when a target flips.
struct GaugeObserver {
    upstream: String,
    gauge: IntGaugeVec,
}

#[async_trait]
impl HealthObserve for GaugeObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let label = target.addr.to_string();
        self.gauge
            .with_label_values(&[self.upstream.as_str(), label.as_str()])
            .set(healthy as i64);
    }
}

/// TLS used by probes to a TLS upstream: the pool's own settings.
pub type ProbeTls<'a> = Option<&'a super::pool::PeerTls>;

/// Build the check for a pool from its `health_check:` settings. HTTP probes to an
/// `http2` pool speak HTTP/2 as its requests do (h2 by ALPN over TLS, h2c otherwise).
pub fn build(
    upstream: &str,
    hc: &HealthCheckConfig,
    tls: ProbeTls,
    http2: bool,
    gauge: &IntGaugeVec,
) -> Result<(Box<dyn HealthCheck + Send + Sync>, Duration), String> {
    let timeout = hc.timeout.map(|d| d.get()).unwrap_or(DEFAULT_TIMEOUT);
    let interval = hc.interval.map(|d| d.get()).unwrap_or(DEFAULT_INTERVAL);
    let healthy_after = hc.healthy_after.unwrap_or(2).max(1) as usize;
    let unhealthy_after = hc.unhealthy_after.unwrap_or(3).max(1) as usize;
    let observer = || -> Box<dyn HealthObserve + Send + Sync> {
        Box::new(GaugeObserver {
            upstream: upstream.to_string(),
            gauge: gauge.clone(),
        })
    };
    let check: Box<dyn HealthCheck + Send + Sync> = if let Some(http) = &hc.http {
        let host = http
            .host
            .clone()
            .or_else(|| tls.map(|t| t.sni.clone()).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "localhost".to_string());
        let mut c = HttpHealthCheck::new(&host, tls.is_some());
        let mut req = RequestHeader::build("GET", http.path.as_bytes(), None)
            .map_err(|e| format!("health_check.http.path: {e}"))?;
        if http2 && tls.is_none() {
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
        c.consecutive_success = healthy_after;
        c.consecutive_failure = unhealthy_after;
        c.peer_template.options.connection_timeout = Some(timeout);
        c.peer_template.options.read_timeout = Some(timeout);
        if http2 {
            super::pool::set_http2(&mut c.peer_template.options, tls.is_some());
        }
        if let Some(t) = tls {
            c.peer_template.sni = t.sni.clone();
            c.peer_template.options.verify_cert = t.verify;
            c.peer_template.options.verify_hostname = t.verify;
            c.peer_template.options.ca = t.ca.clone();
        }
        c.health_changed_callback = Some(observer());
        Box::new(c)
    } else {
        let mut c = match tls {
            Some(t) => TcpHealthCheck::new_tls(&t.sni),
            None => TcpHealthCheck::new(),
        };
        c.consecutive_success = healthy_after;
        c.consecutive_failure = unhealthy_after;
        c.peer_template.options.connection_timeout = Some(timeout);
        if let Some(t) = tls {
            c.peer_template.sni = t.sni.clone();
            c.peer_template.options.verify_cert = t.verify;
            c.peer_template.options.verify_hostname = t.verify;
            c.peer_template.options.ca = t.ca.clone();
        }
        c.health_changed_callback = Some(observer());
        c
    };
    Ok((check, interval))
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
