//! The request phase (`request_filter`) in named steps: screen the request (client
//! address, request id, malformed body, head limits, path normalization), answer a
//! `redirect_https` listener, route, run the chain's early request plugins (a CORS
//! preflight is answered there) then its request plugins, check the body length, then
//! the route's action.

use super::{action, forwarding, path, peer_ip, request_checks, upgrade, Moat, ProxyCtx};
use crate::plugin::Flow;
use crate::reply::{ErrorCode, Reply};
use crate::router::{RouteMatch, Router};
use crate::runtime::{Action, Route, Runtime};
use crate::util::http::{is_preflight, request_host};
use bytes::Bytes;
use http::HeaderValue;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::borrow::Cow;
use std::sync::Arc;

/// What the request phase decided.
pub(super) enum Admitted {
    /// Answer with this reply (sent by the caller, through the response plugins).
    Reply(Reply),
    /// Proxy the request upstream (Pingora's path).
    Proxy,
    /// Relay the WebSocket upgrade moat serves itself (`upgrade`).
    Upgrade,
}

impl Moat {
    /// Run the request phase's steps on `session` in order; the first that answers wins.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
    ) -> Result<Admitted> {
        let rt = Arc::clone(&ctx.rt);
        if let Some(reply) = screen(session, ctx, &rt)? {
            return Ok(Admitted::Reply(reply));
        }
        let req = session.req_header();
        let host = host_of(req);
        if let Some(reply) = redirect_https(session, &host, &rt) {
            return Ok(Admitted::Reply(reply));
        }
        let found = lookup(&rt.router, req, &host);
        let route = match found {
            RouteMatch::Found(i) => rt.routes.get(i),
            _ => None,
        };
        if let Some(r) = route {
            ctx.set_route(r);
        }
        let chain = super::ctx::chain_of(&rt, route.map(|r| &**r));
        if let Some(reply) = chain.run_early_request(session.req_header()) {
            return Ok(Admitted::Reply(reply));
        }
        for p in &chain.request {
            if let Flow::Reply(reply) = p.request(session, &mut ctx.req).await {
                return Ok(Admitted::Reply(reply));
            }
        }
        // Every request has an id from here on (the request_id plugin may have kept the
        // client's): sent upstream, echoed on the response, in templates and the log.
        ctx.assign_request_id();
        let max_body = route.and_then(|r| r.max_body);
        ctx.body.limit = max_body.unwrap_or(rt.request_bounds.max_body);
        if let Some(reply) = request_checks::check_length(session.req_header(), ctx.body.limit) {
            return Ok(Admitted::Reply(reply));
        }
        let Some(route) = route else {
            return Ok(Admitted::Reply(unrouted(session.req_header(), found)));
        };
        Ok(act(session, ctx, route))
    }
}

/// The first step, before routing: the client address (and whether its peer is trusted),
/// the request id a global `request_id` plugin keeps (so every answer carries it), a
/// malformed chunked body or a head over the limits (the refusal), and the path
/// normalized in place.
fn screen(session: &mut Session, ctx: &mut ProxyCtx, rt: &Runtime) -> Result<Option<Reply>> {
    let (client, trusted) =
        forwarding::client_ip(peer_ip(session), session.req_header(), &rt.trusted_proxies);
    ctx.client_ip = client;
    ctx.peer_trusted = trusted;
    if let Some(trust) = rt.request_id_trust {
        crate::plugin::request_id::decide(trust, session.req_header(), ctx);
    }
    let refusal = match ctx.body.malformed {
        Some(e) => Some(Reply::error(ErrorCode::BadRequest, e.to_string())),
        None => request_checks::check_head(session.req_header(), &rt.request_bounds),
    };
    if refusal.is_some() {
        return Ok(refusal);
    }
    if let Some(p) = path::normalize(session.req_header().uri.path()) {
        let target = path::with_query(p, session.req_header().uri.query());
        session.req_header_mut().set_raw_path(target.as_bytes())?;
    }
    Ok(None)
}

/// The request's host as routes name it: lower case, without a trailing dot (copied only
/// when it has either).
fn host_of(req: &RequestHeader) -> Cow<'_, str> {
    let raw = request_host(req);
    if raw.bytes().any(|b| b.is_ascii_uppercase()) || raw.ends_with('.') {
        Cow::Owned(raw.trim_end_matches('.').to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    }
}

/// The answer of a plain listener with `redirect_https`, when the request came in on one.
fn redirect_https(session: &Session, host: &str, rt: &Runtime) -> Option<Reply> {
    if rt.redirect_https.is_empty() {
        return None;
    }
    let local = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port());
    let https = local.and_then(|p| rt.redirect_https.get(&p))?;
    Some(redirect_to_https(
        session.req_header(),
        host,
        *https,
        &rt.router,
    ))
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

/// The route of `req` on `host`. A CORS preflight asks about the method it names: when
/// its own `OPTIONS` finds no route, it is routed as that method (its answer is the
/// route's early request phase: the `cors` plugin).
fn lookup(router: &Router, req: &RequestHeader, host: &str) -> RouteMatch {
    let found = router.lookup(host, req.uri.path(), &req.method, &req.headers);
    if !matches!(found, RouteMatch::Found(_)) && is_preflight(req) {
        let asked = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
        if let Some(m) = asked {
            if let f @ RouteMatch::Found(_) = router.lookup(host, req.uri.path(), &m, &req.headers)
            {
                return f;
            }
        }
    }
    found
}

/// The answer to a request no route took: 405 with `Allow` when a route serves the path
/// with other methods, else 404.
fn unrouted(req: &RequestHeader, found: RouteMatch) -> Reply {
    match found {
        RouteMatch::MethodNotAllowed(allow) => {
            let msg = format!("method {} not allowed here", req.method);
            let r = Reply::error(ErrorCode::MethodNotAllowed, msg);
            match HeaderValue::from_str(&allow) {
                Ok(v) => r.with_header(http::header::ALLOW, v),
                Err(_) => r,
            }
        }
        _ => Reply::error(ErrorCode::NotFound, "no route matches this request"),
    }
}

/// The route's action: upstream (proxied, or relayed when it is an upgrade moat relays),
/// or an answer moat makes.
fn act(session: &mut Session, ctx: &mut ProxyCtx, route: &Route) -> Admitted {
    match &route.action {
        Action::Upstream(pool) => {
            ctx.upstream.pool = Some(Arc::clone(pool));
            if upgrade::eligible(session, ctx) {
                Admitted::Upgrade
            } else {
                Admitted::Proxy
            }
        }
        action => Admitted::Reply(action::reply(action, session.req_header(), ctx)),
    }
}
