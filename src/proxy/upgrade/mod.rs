//! WebSocket upgrades relayed by moat itself, outside Pingora's proxy loop.
//!
//! Pingora keeps ~56 KiB per upgraded connection for its whole life (read and body
//! buffers, the proxy future, channels; docs/performance.md "Idle WebSockets"). So once
//! `request_filter` has routed an HTTP/1.1 `Upgrade: websocket` request and every
//! request-phase plugin accepted it, moat takes the connection over:
//!
//! 1. The upstream head is built as for any request (`upstream_head::prepare`, after the
//!    hop-by-hop handling Pingora's standard policy gives a WebSocket upgrade); the target
//!    is chosen, counted and reported as `upstream_peer` / `fail_to_connect` do, retrying
//!    another target while the pool allows. Failing before an answer: moat's usual
//!    502/503/504 JSON reply.
//! 2. A non-101 answer (401, 426, 5xx...) goes to the client through Pingora's session
//!    (response plugins, body by its framing), then the connection closes.
//! 3. A 101 goes through the response plugins; then the client connection is detached
//!    from Pingora's session (a [`Detached`] stand-in is left behind, Pingora finishes
//!    that one and ends its connection task), the 101 is written, and a task relays both
//!    ways ([`relay`]) with no buffer held while idle. The request is logged and counted
//!    when that task ends ([`Finish`]), with the upstream's status. The relay stays
//!    counted in the process's drain (the connection's place moves to it): when the
//!    process stops, it closes the WebSocket with a close frame each way.
//!
//! Bytes the client sent after its head before seeing the 101 (it should wait, RFC 6455
//! §4.1) are not dropped: they go to the upstream right after the 101, before relaying.

mod body;
mod detached;
mod frames;
mod head;
pub mod relay;

use super::logging::Finish;
use super::{apply_compression, failure, upstream_head, Moat, ProxyCtx};
use crate::ctx::RequestCtx;
use crate::drain::Tracked;
use crate::reply::{ErrorCode, Reply};
use crate::upstream::pool::FailureKind;
use bytes::BytesMut;
use detached::Detached;
use http::{header, HeaderValue};
use pingora_core::protocols::http::v1::client::http_req_header_to_wire;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Whether moat relays this request's upgrade itself: a WebSocket upgrade on an HTTP/1.1
/// client connection, without a body, that does not ask to close the connection.
/// Everything else stays on Pingora's proxy path.
pub(super) fn eligible(session: &mut Session, ctx: &RequestCtx) -> bool {
    let req = session.req_header();
    if !head::is_websocket(req) {
        return false;
    }
    let closes = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
    session.downstream_session.as_http1().is_some()
        && !closes
        && !ctx.holds_body()
        && session.downstream_session.is_body_empty()
}

/// An upstream connection that answered the upgrade request.
struct Answered {
    stream: Stream,
    resp: ResponseHeader,
    /// Bytes read after the response head.
    rest: BytesMut,
}

impl Moat {
    /// Serve the upgrade request of `session` (see the module docs). Always answers:
    /// `Ok(true)` for Pingora (the response was sent, or the connection is now moat's).
    pub(super) async fn relay_upgrade(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
    ) -> Result<bool> {
        let Some(pool) = ctx.upstream.pool.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this route");
        };
        let mut req = session.req_header().clone();
        if let Err(why) = head::sanitize(&mut req) {
            let reply = Reply::error(ErrorCode::BadRequest, why);
            self.send_reply(session, ctx, reply).await?;
            return Ok(true);
        }
        upstream_head::prepare(&mut req, session, ctx)?;
        let Some(wire) = http_req_header_to_wire(&req) else {
            let reply = Reply::error(ErrorCode::BadRequest, "invalid request target");
            self.send_reply(session, ctx, reply).await?;
            return Ok(true);
        };
        drop(req);
        let key = match pool.hash_key() {
            Some(t) => t.render_to_vec(&ctx.facts(session.req_header())),
            None => Vec::new(),
        };
        let answered = loop {
            let Some(idx) = ctx.upstream.next_target(&pool, &key) else {
                pool.count_error(FailureKind::NoTarget);
                session.set_keepalive(None);
                let code = ErrorCode::ServiceUnavailable;
                let reply = Reply::error(code, failure::message(code, Some(&pool.name)));
                self.send_reply(session, ctx, reply).await?;
                return Ok(true);
            };
            match self.ask(&pool.peer(idx, true), &wire).await {
                Ok(a) => {
                    let failed = a.resp.status.is_server_error();
                    pool.report(idx, failed.then_some(FailureKind::Response5xx));
                    break a;
                }
                Err(e) => {
                    pool.report(idx, Some(failure::failure_kind(&e)));
                    if ctx.upstream.may_retry(&pool) {
                        continue;
                    }
                    log::warn!("upgrade to upstream `{}` failed: {e}", pool.name);
                    // As after any failed upstream attempt (`fail_to_proxy`): close.
                    session.set_keepalive(None);
                    let code = failure::classify(&e).unwrap_or(ErrorCode::BadGateway);
                    let reply = Reply::error(code, failure::message(code, Some(&pool.name)));
                    self.send_reply(session, ctx, reply).await?;
                    return Ok(true);
                }
            }
        };
        let timeout = pool.read_timeout();
        if answered.resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            self.switch(session, ctx, answered, timeout).await;
        } else {
            self.refused(session, ctx, answered, timeout).await?;
        }
        Ok(true)
    }

    /// Connect to `peer`, send the request head `wire` and read the response head, within
    /// the peer's connect and read timeouts.
    async fn ask(&self, peer: &HttpPeer, wire: &[u8]) -> Result<Answered> {
        let mut stream = self
            .connector
            .new_stream(peer)
            .await
            .map_err(|e| e.into_up())?;
        let limit = peer.options.read_timeout.unwrap_or(Duration::from_secs(60));
        let mut rest = BytesMut::with_capacity(1024);
        let exchange = async {
            stream
                .write_all(wire)
                .await
                .or_err(ErrorType::WriteError, "sending the upgrade request")?;
            stream
                .flush()
                .await
                .or_err(ErrorType::WriteError, "sending the upgrade request")?;
            head::read_response(&mut stream, &mut rest).await
        };
        let resp = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(e.into_up()),
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "waiting for the upgrade response",
                )
                .into_up())
            }
        };
        Ok(Answered { stream, resp, rest })
    }

    /// The upstream refused the upgrade: pass its answer on, then close the connection.
    async fn refused(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
        answered: Answered,
        timeout: Duration,
    ) -> Result<()> {
        let Answered {
            mut stream,
            mut resp,
            rest,
        } = answered;
        let framing =
            body::framing(&session.req_header().method, &resp).map_err(|e| e.into_up())?;
        for name in ["connection", "keep-alive", "proxy-connection", "upgrade"] {
            let _ = resp.remove_header(name);
        }
        if resp.status == http::StatusCode::NO_CONTENT {
            let _ = resp.remove_header(&header::CONTENT_LENGTH);
        }
        ctx.chain()
            .run_response(session.req_header(), &ctx.req, &mut resp);
        session.set_keepalive(None);
        apply_compression(session, ctx);
        let empty = framing == body::Framing::Empty;
        session.write_response_header(Box::new(resp), empty).await?;
        if empty {
            return Ok(());
        }
        body::forward(session, &mut stream, rest, framing, timeout).await
    }

    /// The upstream switched protocols: answer the client and relay the connection in a
    /// task of its own.
    async fn switch(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
        answered: Answered,
        idle: Duration,
    ) {
        let Answered {
            stream: mut up,
            mut resp,
            rest,
        } = answered;
        for name in ["content-length", "transfer-encoding"] {
            let _ = resp.remove_header(name);
        }
        ctx.chain()
            .run_response(session.req_header(), &ctx.req, &mut resp);
        let line = request_line(session.req_header());
        let detached = detach(session).await;
        // From here on the request is this function's: Pingora must not log it again.
        let rt = Arc::clone(&ctx.rt);
        let owned = std::mem::replace(ctx, ProxyCtx::new(rt));
        ctx.answer.detached = true;
        let mut finish = Finish::new(self, line, owned, 0);
        let Some((mut down, early, tracked)) = detached else {
            log::debug!("upgraded client connection could not be taken over");
            return;
        };
        let mut tracked =
            tracked.unwrap_or_else(|| self.drain.track(down.id().unsigned_abs() as usize));
        let mut head = head::response_to_wire(&resp);
        drop(resp);
        head.extend_from_slice(&rest);
        let greet = async {
            down.write_all(&head).await?;
            down.flush().await?;
            if !early.is_empty() {
                up.write_all(&early).await?;
                up.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(idle, greet).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::debug!("writing the 101 to the client: {e}");
                return;
            }
            Err(_) => return,
        }
        finish.status = 101;
        finish.bytes_sent = rest.len() as u64;
        // The relay follows the frames from here: after what was just sent each way.
        let mut frames = (frames::Frames::default(), frames::Frames::default());
        frames.0.advance(&early, false);
        frames.1.advance(&rest, false);
        drop((head, rest, early));
        tokio::spawn(async move {
            // The whole guard moves in (not just a field): it logs when this task ends, or
            // when it is dropped as the process stops.
            let mut finish = finish;
            let end = relay::relay(
                &mut down,
                &mut up,
                idle,
                &mut finish.relayed,
                &mut tracked,
                frames,
            )
            .await;
            log::debug!(
                "upgraded connection ended ({end:?}): {} bytes up, {} down",
                finish.relayed.a_to_b,
                finish.relayed.b_to_a
            );
        });
    }
}

/// Take the client connection out of `session`, leaving a [`Detached`] stand-in: the
/// stream (out of moat's head-deadline wrapper, which has nothing left to time), the
/// bytes already read past the request head, and the connection's place in the drain.
/// `None` if Pingora would not give it up.
async fn detach(session: &mut Session) -> Option<(Stream, BytesMut, Option<Tracked>)> {
    let stand_in = ServerSession::new_http1(Box::new(Detached));
    let mut real = std::mem::replace(&mut *session.downstream_session, stand_in);
    // Reuse hands back the stream and, with pipelining on, what was read past the head.
    real.set_keepalive(Some(0));
    real.set_pipelining_enabled(true);
    let (stream, prefix) = real.finish().await.ok().flatten()?.into_parts();
    let (stream, peeked, tracked) = crate::conn::into_inner(stream)?;
    let mut early = BytesMut::from(&peeked[..]);
    if let Some(p) = prefix {
        early.extend_from_slice(&p);
    }
    Some((stream, early, tracked))
}

/// What the access log needs of `req` (method, path, host), copied so the parsed head
/// and the buffer its values point into can go.
fn request_line(req: &RequestHeader) -> RequestHeader {
    let mut line =
        RequestHeader::build_no_case(req.method.clone(), req.uri.path().as_bytes(), Some(1))
            .unwrap_or_else(|_| RequestHeader::from(http::Request::new(()).into_parts().0));
    let host = req
        .headers
        .get(header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    if let Some(v) = host.and_then(|h| HeaderValue::from_bytes(h).ok()) {
        let _ = line.insert_header(header::HOST, v);
    }
    line
}
