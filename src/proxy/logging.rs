//! The end of every request: metrics and the access-log line. Requests Pingora carries
//! end in `Moat::finish`; upgraded connections moat relays itself end when their
//! [`Finish`] guard drops (however the relay task ends, cancelled included). Also the
//! request summary Pingora puts in its own error and warning lines ([`summary`]).

use super::{Moat, ProxyCtx};
use crate::access_log::{AccessLog, Record};
use crate::ctx::RequestCtx;
use crate::metrics::Metrics;
use crate::util::http::request_host;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::sync::Arc;

impl Moat {
    /// Record metrics and write the access log for a finished request.
    pub(super) fn finish(&self, session: &Session, ctx: &mut ProxyCtx, status: u16) {
        let sent = session.body_bytes_sent();
        record(
            &self.metrics,
            self.access_log.as_ref(),
            session.req_header(),
            ctx,
            status,
            sent,
        );
    }
}

/// How Pingora's error and warning lines (`Fail to proxy: ...`) describe a request:
/// method, path, host, route and request id, never the query string. Pingora's default
/// prints the raw request target, so a credential carried as `?api_key=` or
/// `?access_token=` would reach stderr on every upstream failure; moat drops the whole
/// query rather than redacting known parameter names (a credential parameter can have any
/// name: `token_from: "query:NAME"`, or one the upstream reads itself). `?…` marks that
/// there was one. The request id ties the line to its access-log line.
pub(super) fn summary(req: &RequestHeader, ctx: &RequestCtx) -> String {
    let query = if req.uri.query().is_some() {
        "?…"
    } else {
        ""
    };
    let id = match ctx.request_id_if_set() {
        "" => "-",
        id => id,
    };
    format!(
        "{} {}{query}, Host: {}, route: {}, request_id: {id}",
        req.method,
        req.uri.path(),
        request_host(req),
        ctx.route_name(),
    )
}

/// What a relayed connection logs when it ends: its request's context (moved out of
/// Pingora's, so limiter slots, the in-flight count and `moat_connections_active` last as
/// long as the connection) and a small copy of its request line.
pub(super) struct Finish {
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    /// Method, path and `Host` of the request (not the whole parsed head, which keeps
    /// the connection's header buffer alive).
    req: RequestHeader,
    ctx: ProxyCtx,
    /// The status to log (0: nothing reached the client).
    pub status: u16,
    /// Bytes sent to the client after the response head, besides `relayed`.
    pub bytes_sent: u64,
    /// What the relay moved (`b_to_a`: upstream to client).
    pub relayed: super::upgrade::relay::Traffic,
}

impl Finish {
    /// Log `req` with `status` when this guard drops.
    pub(super) fn new(moat: &Moat, req: RequestHeader, ctx: ProxyCtx, status: u16) -> Finish {
        Finish {
            metrics: Arc::clone(&moat.metrics),
            access_log: moat.access_log.clone(),
            req,
            ctx,
            status,
            bytes_sent: 0,
            relayed: Default::default(),
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.ctx
            .upstream
            .finished
            .get_or_insert_with(std::time::Instant::now);
        record(
            &self.metrics,
            self.access_log.as_ref(),
            &self.req,
            &mut self.ctx,
            self.status,
            usize::try_from(self.bytes_sent.saturating_add(self.relayed.b_to_a))
                .unwrap_or(usize::MAX),
        );
    }
}

/// Count the request in the metrics and write its access-log line.
fn record(
    metrics: &Metrics,
    access_log: Option<&AccessLog>,
    req: &RequestHeader,
    ctx: &mut ProxyCtx,
    status: u16,
    bytes_sent: usize,
) {
    let elapsed = ctx.start.elapsed();
    let route = ctx.route.as_deref();
    let route_name = route.map(|r| &*r.name);
    let status_code = http::StatusCode::from_u16(status).ok();
    let status_s = status_code.as_ref().map(|s| s.as_str()).unwrap_or("0");
    let method = req.method.as_str();
    match route {
        Some(r) => {
            r.requests.inc(method, status, status_s);
            r.duration.observe(elapsed.as_secs_f64());
        }
        None => {
            metrics
                .requests
                .with_label_values(&["", method, status_s])
                .inc();
            metrics
                .request_duration
                .with_label_values(&[""])
                .observe(elapsed.as_secs_f64());
        }
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
    let Some(log) = access_log else {
        return;
    };
    ctx.req.assign_request_id();
    let up = &ctx.upstream;
    let target = up
        .target()
        .and_then(|(pool, i)| pool.targets.get(i))
        .map(|t| t.label.as_str());
    let rec = Record {
        ts: std::time::SystemTime::now(),
        request_id: ctx.request_id_if_set(),
        client_ip: ctx.client_ip,
        method: req.method.as_str(),
        host: request_host(req),
        path: req.uri.path(),
        status,
        bytes_sent,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        upstream: up.pool.as_deref().map(|p| &*p.name),
        upstream_target: target,
        upstream_duration_ms: upstream_ms,
        route: route_name,
        consumer: ctx.identity.as_ref().map(|i| &*i.consumer_id),
        auth_method: ctx.identity.as_ref().map(|i| i.method),
        ratelimit: ctx.ratelimit_outcome(),
    };
    log.write(rec.to_line());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_never_carries_the_query() {
        let mut ctx = RequestCtx::new();
        let mut req = RequestHeader::build("GET", b"/a/b?api_key=SECRET&x=1", None).unwrap();
        req.insert_header("Host", "api.example.com:8080").unwrap();
        assert_eq!(
            summary(&req, &ctx),
            "GET /a/b?…, Host: api.example.com, route: , request_id: -"
        );
        ctx.set_request_id(http::HeaderValue::from_static("rid-1"));
        let req = RequestHeader::build("POST", b"/plain", None).unwrap();
        assert_eq!(
            summary(&req, &ctx),
            "POST /plain, Host: , route: , request_id: rid-1"
        );
    }
}
