//! The one `ProxyHttp` implementation. Each phase takes what it needs from the request's
//! snapshot of the runtime (`ctx.rt`) and walks the compiled chain; nothing is looked up
//! by name on the request path.

mod action;
pub mod failure;
pub mod forwarding;
pub mod limits;
mod logging;
pub mod path;
mod upgrade;
mod upstream_head;

use crate::access_log::AccessLog;
use crate::ctx::RequestCtx;
use crate::metrics::Metrics;
use crate::plugin::{Chain, Flow};
use crate::reply::{ErrorCode, Reply};
use crate::router::RouteMatch;
use crate::runtime::{Action, SharedRuntime};
use crate::template::request_host;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The proxy.
pub struct Moat {
    /// The live runtime.
    pub runtime: SharedRuntime,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The access log, when configured.
    pub access_log: Option<AccessLog>,
    /// The process's shutdown state: once draining (SIGQUIT), answers close their
    /// connections, so clients move to the new process during a graceful upgrade instead
    /// of idling on this one; relayed WebSockets are ended by it.
    pub drain: Arc<crate::drain::Drain>,
    /// Connects to upstreams for the WebSocket upgrades moat relays itself (see
    /// `upgrade`); everything else goes through Pingora's own connector.
    pub connector: Arc<pingora_core::connectors::TransportConnector>,
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Largest unread request body moat reads and discards to keep a connection alive after
/// answering a request itself; past it (or for chunked bodies, `Expect: 100-continue`, or
/// a slow client) the connection is closed instead, so unread bytes are never parsed as a
/// request.
pub const DRAIN_LIMIT: u64 = 64 * 1024;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn settle_request_body(session: &mut Session) {
    if session.as_mut().is_body_done() {
        return;
    }
    let req = session.req_header();
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drainable = req.headers.get(http::header::EXPECT).is_none()
        && req.headers.get(http::header::TRANSFER_ENCODING).is_none()
        && length.is_some_and(|n| n <= DRAIN_LIMIT);
    let drained = drainable
        && matches!(
            tokio::time::timeout(DRAIN_TIMEOUT, session.as_mut().drain_request_body()).await,
            Ok(Ok(()))
        );
    if !drained {
        session.set_keepalive(None);
    }
}

/// The answer of a `redirect_https` listener: 308 to the same host and URI on the HTTPS
/// port, only for a host a route names (a forged `Host` never ends up in `Location`).
fn redirect_to_https(
    req: &RequestHeader,
    host: &str,
    port: u16,
    router: &crate::router::Router,
) -> Reply {
    if !router.names_host(host) {
        return Reply::error(ErrorCode::NotFound, "no route serves this host");
    }
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match HeaderValue::from_str(&format!("https://{authority}{target}")) {
        Ok(v) => Reply::raw(308, vec![(http::header::LOCATION, v)], Bytes::new()),
        Err(_) => Reply::error(ErrorCode::BadRequest, "cannot build the redirect target"),
    }
}

/// Tell Pingora's compression module what the `compression` plugin decided for this
/// response: its algorithms and levels, or off.
fn apply_compression(session: &mut Session, ctx: &RequestCtx) {
    if !ctx.rt.compression_used {
        return;
    }
    let Some(c) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    else {
        return;
    };
    if !c.is_header_phase() {
        return;
    }
    c.adjust_level(0);
    if let Some(levels) = ctx.compression.get() {
        for (alg, level) in levels.iter() {
            c.adjust_algorithm_level(*alg, *level);
        }
    }
}

/// The chain that applies to this request: the route's, or the global one.
fn chain_of(ctx: &RequestCtx) -> &Chain {
    match ctx.route.as_deref() {
        Some(r) => &r.chain,
        None => &ctx.rt.global_chain,
    }
}

impl Moat {
    /// Send a reply moat made, after the response-phase plugins ran on it.
    async fn send_reply(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: Reply,
    ) -> Result<()> {
        settle_request_body(session).await;
        let (mut head, body) = reply.build(ctx.request_id())?;
        ctx.reply_code = reply.code;
        ctx.own_response = true;
        let route = ctx.route.clone();
        let rt = Arc::clone(&ctx.rt);
        let chain = route
            .as_deref()
            .map(|r| &r.chain)
            .unwrap_or(&rt.global_chain);
        chain.run_response(session.req_header(), ctx, &mut head);
        apply_compression(session, ctx);
        let head_only = body.is_empty() || session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(head), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Moat {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new(self.runtime.load_full());
        ctx.track_active(&self.metrics.connections_active);
        ctx
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let idle = ctx.rt.request_limits.idle_timeout_secs;
        let body = crate::slowloris::Body::of(session.req_header());
        let parsed = crate::slowloris::head_parsed(session.stream(), idle, body);
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): requests a client sends before reading
        // earlier responses are served in order (Pingora 0.9.1 parses the next one only
        // once this one is over); the framing of every request body on the connection is
        // followed by its HeadDeadline, so bytes after a body are only ever a next head.
        session.as_mut().set_pipelining_enabled(true);
        // Pingora turns keep-alive off for `Connection: close`, HTTP/1.0 without
        // keep-alive, and both Transfer-Encoding and Content-Length (RFC 9112 §6.1: close
        // after answering). That decision stands: what follows is never read as a request.
        let pingora_closes = session.as_mut().get_keepalive().is_none();
        ctx.malformed_body = parsed.malformed;
        // A refused CONNECT closes too: its client may already be sending tunnel bytes.
        let connect = session.req_header().method == http::Method::CONNECT;
        if parsed.malformed.is_some() || connect || self.drain.is_draining() {
            session.set_keepalive(None);
        } else if !pingora_closes {
            // With a HeadDeadline, it times the keep-alive wait (Pingora's timer would
            // cost a timer per request); 0 = no timer of Pingora's own.
            session.set_keepalive(Some(if parsed.timed_here { 0 } else { idle }));
        }
        if ctx.rt.compression_used {
            // Pingora's module reads Accept-Encoding only while enabled: enable it now, and
            // let the response phase decide per response (see apply_compression).
            if let Some(c) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
            {
                c.adjust_level(1);
            }
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let rt = Arc::clone(&ctx.rt);
        let (client, trusted) =
            forwarding::client_ip(peer_ip(session), session.req_header(), &rt.trusted_proxies);
        ctx.client_ip = client;
        ctx.peer_trusted = trusted;
        // The id first: every answer from here on carries the one a global request_id kept.
        if let Some(trust) = rt.request_id_trust {
            crate::plugin::request_id::decide(trust, session.req_header(), ctx);
        }
        let refusal = match ctx.malformed_body {
            Some(e) => Some(Reply::error(ErrorCode::BadRequest, e.to_string())),
            None => limits::check_head(session.req_header(), &rt.request_limits),
        };
        if let Some(reply) = refusal {
            self.send_reply(session, ctx, reply).await?;
            return Ok(true);
        }

        if let Some(p) = path::normalize(session.req_header().uri.path()) {
            let target = match session.req_header().uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            session.req_header_mut().set_raw_path(target.as_bytes())?;
        }

        let req = session.req_header();
        let raw_host = request_host(req);
        let lowered;
        let host = if raw_host.bytes().any(|b| b.is_ascii_uppercase()) || raw_host.ends_with('.') {
            lowered = raw_host.trim_end_matches('.').to_ascii_lowercase();
            lowered.as_str()
        } else {
            raw_host
        };
        if !rt.redirect_https.is_empty() {
            let local = session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port());
            if let Some(https) = local.and_then(|p| rt.redirect_https.get(&p)) {
                let reply = redirect_to_https(req, host, *https, &rt.router);
                self.send_reply(session, ctx, reply).await?;
                return Ok(true);
            }
        }
        let preflight = crate::plugin::cors::is_preflight(req);
        let mut found = rt
            .router
            .lookup(host, req.uri.path(), &req.method, &req.headers);
        if preflight && !matches!(found, RouteMatch::Found(_)) {
            // A preflight asks about the method it names: route it as that method.
            let asked = req
                .headers
                .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
            if let Some(m) = asked {
                if let f @ RouteMatch::Found(_) =
                    rt.router.lookup(host, req.uri.path(), &m, &req.headers)
                {
                    found = f;
                }
            }
        }
        if let RouteMatch::Found(i) = found {
            ctx.route = rt.routes.get(i).cloned();
        }
        let route = ctx.route.clone();
        let chain = route
            .as_deref()
            .map(|r| &r.chain)
            .unwrap_or(&rt.global_chain);
        if preflight {
            // CORS preflights carry no credentials: answered before any other plugin.
            let answer = chain
                .response
                .iter()
                .find_map(|p| p.preflight(session.req_header()));
            if let Some(reply) = answer {
                self.send_reply(session, ctx, reply).await?;
                return Ok(true);
            }
        }
        for p in &chain.request {
            if let Flow::Reply(reply) = p.request(session, ctx).await {
                self.send_reply(session, ctx, reply).await?;
                return Ok(true);
            }
        }
        // Every request has an id from here on (the request_id plugin may have kept the
        // client's): sent upstream, echoed on the response, in templates and the log.
        ctx.assign_request_id();
        if let Some(r) = route.as_deref() {
            ctx.body_limit = r.max_body.unwrap_or(rt.request_limits.max_body);
        } else {
            ctx.body_limit = rt.request_limits.max_body;
        }
        if let Some(reply) = limits::check_length(session.req_header(), ctx.body_limit) {
            self.send_reply(session, ctx, reply).await?;
            return Ok(true);
        }
        let Some(route) = route else {
            let req = session.req_header();
            let reply = match found {
                RouteMatch::MethodNotAllowed(allow) => {
                    let msg = format!("method {} not allowed here", req.method);
                    let r = Reply::error(ErrorCode::MethodNotAllowed, msg);
                    match HeaderValue::from_str(&allow) {
                        Ok(v) => r.with_header(http::header::ALLOW, v),
                        Err(_) => r,
                    }
                }
                _ => Reply::error(ErrorCode::NotFound, "no route matches this request"),
            };
            self.send_reply(session, ctx, reply).await?;
            return Ok(true);
        };
        match &route.action {
            Action::Upstream(pool) => {
                ctx.upstream.pool = Some(Arc::clone(pool));
                if upgrade::eligible(session, ctx) {
                    return self.relay_upgrade(session, ctx).await;
                }
                Ok(false)
            }
            action => {
                let reply = action::reply(action, session.req_header(), ctx);
                self.send_reply(session, ctx, reply).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > ctx.body_limit {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        if let Some(held) = ctx.held_body.as_mut() {
            if let Err(reply) = held.filter(body, end_of_stream) {
                ctx.pending_reply = Some(reply);
                return Error::e_explain(ErrorType::HTTPStatus(401), "signed body digest mismatch");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.upstream.pool.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this route");
        };
        let key = match pool.hash_key() {
            Some(t) => t.render_to_vec(&ctx.facts(session.req_header())),
            None => Vec::new(),
        };
        let Some(idx) = pool.select(&key, &ctx.upstream.tried) else {
            pool.count_error(crate::upstream::pool::FailureKind::NoTarget);
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy target");
        };
        ctx.upstream.tried.push(idx);
        ctx.upstream.attempts += 1;
        if ctx.upstream.attempts > 1 {
            // A retry sends the body again from its start (Pingora's retry buffer).
            ctx.body_seen = 0;
            if let Some(held) = ctx.held_body.as_mut() {
                held.restart();
            }
        }
        ctx.upstream.current = Some(pool.begin(idx));
        ctx.upstream.started.get_or_insert_with(Instant::now);
        Ok(pool.peer(idx, session.is_upgrade_req()))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(cur)) = (&ctx.upstream.pool, &ctx.upstream.current) {
            pool.report(cur.index(), Some(failure::failure_kind(&e)));
            let retry =
                ctx.upstream.attempts <= pool.retries && pool.has_candidate(&ctx.upstream.tried);
            e.set_retry(retry);
        }
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let upstream_side = e.esource() == &pingora_error::ErrorSource::Upstream;
        if let (Some(pool), Some(cur)) = (&ctx.upstream.pool, &ctx.upstream.current) {
            if upstream_side {
                pool.report(cur.index(), Some(failure::failure_kind(&e)));
            }
            // After the request was sent, only idempotent requests whose body is still
            // fully buffered may go to another target.
            let retry = upstream_side
                && session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated()
                && ctx.upstream.attempts <= pool.retries
                && pool.has_candidate(&ctx.upstream.tried);
            e.set_retry(retry);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_head::prepare(up, session, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(pool), Some(cur)) = (&ctx.upstream.pool, &ctx.upstream.current) {
            let failed = resp.status.is_server_error();
            pool.report(
                cur.index(),
                failed.then_some(crate::upstream::pool::FailureKind::Response5xx),
            );
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // The client's bytes are the new protocol's from here on, not HTTP/1 messages.
            crate::slowloris::protocol_switched(session.stream());
        }
        if resp.status == http::StatusCode::NO_CONTENT {
            // RFC 9110 §8.6: no Content-Length on a 204 (an upstream that sends one would
            // make careful clients wait for a body that never comes).
            let _ = resp.remove_header(&http::header::CONTENT_LENGTH);
        }
        chain_of(ctx).run_response(session.req_header(), ctx, resp);
        apply_compression(session, ctx);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(code) = failure::classify(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_some() {
            // Headers already went out: nothing to add; the connection must close.
            return FailToProxy {
                error_code: code.status(),
                can_reuse_downstream: false,
            };
        }
        let malformed = failure::malformed_body(e);
        let reply = match ctx.pending_reply.take() {
            Some(r) => r,
            None if malformed.is_some() => {
                let msg = malformed.map(|m| m.to_string()).unwrap_or_default();
                Reply::error(code, msg)
            }
            None => {
                let upstream = ctx.upstream.pool.as_deref().map(|p| p.name.clone());
                Reply::error(code, failure::message(code, upstream.as_deref()))
            }
        };
        let sent = self.send_reply(session, ctx, reply).await.is_ok();
        FailToProxy {
            error_code: code.status(),
            // A request refused before reaching an upstream keeps its connection.
            // Never after a malformed body: its connection's framing is lost.
            can_reuse_downstream: sent
                && code.status() < 500
                && ctx.upstream.started.is_none()
                && malformed.is_none(),
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.detached {
            // A relayed upgrade: its task logs the request when the connection ends.
            return;
        }
        ctx.upstream.finished.get_or_insert_with(Instant::now);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| ctx.reply_code.map(|c| c.status()))
            .unwrap_or(0);
        self.finish(session, ctx, status);
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        logging::summary(session.req_header(), ctx)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // Client-side noise (resets, bad requests) is counted in metrics, not logged.
        e.esource() == &pingora_error::ErrorSource::Downstream
    }
}
