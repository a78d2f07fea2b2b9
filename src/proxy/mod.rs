//! The one `ProxyHttp` implementation. Each phase takes what it needs from the request's
//! snapshot of the runtime (`ctx.rt`, see [`ProxyCtx`]) and walks the compiled chain;
//! nothing is looked up by name on the request path.

mod action;
mod ctx;
pub mod failure;
pub mod forwarding;
mod logging;
pub mod path;
mod request;
pub mod request_checks;
mod upgrade;
mod upstream_head;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::reply::Reply;
use crate::runtime::SharedRuntime;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub use ctx::ProxyCtx;
use request::Admitted;

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

/// Tell Pingora's compression module what the `compression` plugin decided for this
/// response: its algorithms and levels, or off.
fn apply_compression(session: &mut Session, ctx: &ProxyCtx) {
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
    if let Some(levels) = ctx.compression() {
        for (alg, level) in levels.iter() {
            c.adjust_algorithm_level(*alg, *level);
        }
    }
}

impl Moat {
    /// Send a reply moat made, after the response-phase plugins ran on it.
    async fn send_reply(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
        reply: Reply,
    ) -> Result<()> {
        settle_request_body(session).await;
        let (mut head, body) = reply.build(ctx.request_id())?;
        ctx.answer.code = reply.code;
        ctx.own_response = true;
        ctx.chain()
            .run_response(session.req_header(), &ctx.req, &mut head);
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
    /// Boxed: Pingora keeps the context (600 bytes) in several places of each request's
    /// future, which is copied whole when it is boxed (`async_trait`); with a pointer
    /// there instead, that copy is ~1.75 KB smaller (an allocation costs less than the
    /// bytes it saves copying: docs/performance.md, "Issue 17").
    type CTX = Box<ProxyCtx>;

    fn new_ctx(&self) -> Box<ProxyCtx> {
        let mut ctx = Box::new(ProxyCtx::new(self.runtime.load_full()));
        ctx.track_active(&self.metrics.connections_active);
        ctx
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        let idle = ctx.rt.request_bounds.idle_timeout_secs;
        let body = crate::conn::Body::of(session.req_header());
        let parsed = crate::conn::head_parsed(session.stream(), idle, body);
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): requests a client sends before reading
        // earlier responses are served in order (Pingora 0.9.1 parses the next one only
        // once this one is over); the framing of every request body on the connection is
        // followed by its HeadDeadline, so bytes after a body are only ever a next head.
        session.as_mut().set_pipelining_enabled(true);
        // Pingora turns keep-alive off for `Connection: close`, HTTP/1.0 without
        // keep-alive, and both Transfer-Encoding and Content-Length (RFC 9112 §6.1: close
        // after answering). That decision stands: what follows is never read as a request.
        let pingora_closes = session.as_mut().get_keepalive().is_none();
        ctx.body.malformed = parsed.malformed;
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let reply = match self.admit(session, ctx).await? {
            Admitted::Reply(reply) => reply,
            Admitted::Proxy => return Ok(false),
            Admitted::Upgrade => return self.relay_upgrade(session, ctx).await,
        };
        self.send_reply(session, ctx, reply).await?;
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body.seen += b.len() as u64;
            if ctx.body.seen > ctx.body.limit {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        let (chain, req) = ctx.chain_and_req();
        if let Err(reply) = chain.run_request_body(body, end_of_stream, req) {
            let status = reply.status;
            ctx.answer.pending = Some(reply);
            return Error::e_explain(ErrorType::HTTPStatus(status), "request body refused");
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.upstream.pool.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this route");
        };
        let key = match pool.hash_key() {
            Some(t) => t.render_to_vec(&ctx.facts(session.req_header())),
            None => Vec::new(),
        };
        let Some(idx) = ctx.upstream.next_target(&pool, &key) else {
            pool.count_error(crate::upstream::pool::FailureKind::NoTarget);
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy target");
        };
        if ctx.upstream.attempts > 1 {
            // A retry sends the body again from its start (Pingora's retry buffer).
            ctx.body.seen = 0;
            ctx.restart_body();
        }
        Ok(pool.peer(idx, session.is_upgrade_req()))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some((pool, target)) = ctx.upstream.target() {
            pool.report(target, Some(failure::failure_kind(&e)));
            e.set_retry(ctx.upstream.may_retry(pool));
        }
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        let upstream_side = e.esource() == &pingora_error::ErrorSource::Upstream;
        if let Some((pool, target)) = ctx.upstream.target() {
            if upstream_side {
                pool.report(target, Some(failure::failure_kind(&e)));
            }
            // After the request was sent, only idempotent requests whose body is still
            // fully buffered may go to another target.
            let retry = upstream_side
                && session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated()
                && ctx.upstream.may_retry(pool);
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
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        upstream_head::prepare(up, session, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some((pool, target)) = ctx.upstream.target() {
            let failed = resp.status.is_server_error();
            pool.report(
                target,
                failed.then_some(crate::upstream::pool::FailureKind::Response5xx),
            );
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // The client's bytes are the new protocol's from here on, not HTTP/1 messages.
            crate::conn::protocol_switched(session.stream());
        }
        if resp.status == http::StatusCode::NO_CONTENT {
            // RFC 9110 §8.6: no Content-Length on a 204 (an upstream that sends one would
            // make careful clients wait for a body that never comes).
            let _ = resp.remove_header(&http::header::CONTENT_LENGTH);
        }
        ctx.chain()
            .run_response(session.req_header(), &ctx.req, resp);
        apply_compression(session, ctx);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
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
        let reply = match ctx.answer.pending.take() {
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

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        if ctx.answer.detached {
            // A relayed upgrade: its task logs the request when the connection ends.
            return;
        }
        ctx.upstream.finished.get_or_insert_with(Instant::now);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| ctx.answer.code.map(|c| c.status()))
            .unwrap_or(0);
        self.finish(session, ctx, status);
    }

    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        logging::summary(session.req_header(), &ctx.req)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        // Client-side noise (resets, bad requests) is counted in metrics, not logged.
        e.esource() == &pingora_error::ErrorSource::Downstream
    }
}
