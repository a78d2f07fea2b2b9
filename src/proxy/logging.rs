//! The end of every request: metrics and the access-log line.

use super::Moat;
use crate::access_log::Record;
use crate::ctx::RequestCtx;
use crate::template::request_host;
use pingora_proxy::Session;

impl Moat {
    /// Record metrics and write the access log for a finished request.
    pub(super) fn finish(&self, session: &Session, ctx: &mut RequestCtx, status: u16) {
        let elapsed = ctx.start.elapsed();
        let req = session.req_header();
        let route = ctx.route.clone();
        let route_name = route.as_deref().map(|r| &*r.name);
        let status_code = http::StatusCode::from_u16(status).ok();
        let status_s = status_code.as_ref().map(|s| s.as_str()).unwrap_or("0");
        self.metrics
            .requests
            .with_label_values(&[route_name.unwrap_or(""), req.method.as_str(), status_s])
            .inc();
        match route.as_deref() {
            Some(r) => r.duration.observe(elapsed.as_secs_f64()),
            None => self
                .metrics
                .request_duration
                .with_label_values(&[""])
                .observe(elapsed.as_secs_f64()),
        }
        let up = &ctx.upstream;
        let upstream_ms = up.started.map(|s| {
            let d = up
                .finished
                .unwrap_or_else(std::time::Instant::now)
                .duration_since(s);
            if let Some(pool) = &up.pool {
                pool.duration.observe(d.as_secs_f64());
            }
            d.as_secs_f64() * 1000.0
        });
        let Some(log) = &self.access_log else {
            return;
        };
        ctx.assign_request_id();
        let up = &ctx.upstream;
        let target = match (&up.pool, &up.current) {
            (Some(pool), Some(cur)) => pool.targets.get(cur.index()).map(|t| t.label.as_str()),
            _ => None,
        };
        let rec = Record {
            ts: std::time::SystemTime::now(),
            request_id: ctx.request_id_if_set(),
            client_ip: ctx.client_ip,
            method: req.method.as_str(),
            host: request_host(req),
            path: req.uri.path(),
            status,
            bytes_sent: session.body_bytes_sent(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream: up.pool.as_deref().map(|p| &*p.name),
            upstream_target: target,
            upstream_duration_ms: upstream_ms,
            route: route_name,
            consumer: ctx.identity.as_ref().map(|i| &*i.consumer_id),
            auth_method: ctx.identity.as_ref().map(|i| i.method),
            ratelimit: ctx.ratelimit,
        };
        log.write(rec.to_line());
    }
}
