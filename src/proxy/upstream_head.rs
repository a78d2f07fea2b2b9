//! The request head moat sends upstream, built the same way for Pingora's proxy path
//! (`upstream_request_filter`) and for upgrades moat relays itself (`upgrade`): forwarding
//! headers and `X-Request-ID`, the route's path rewrite, then the `upstream_request` plugins.

use super::{forwarding, is_tls, peer_ip, ProxyCtx};
use crate::util::head;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// Turn `up` (a copy of the client's request head, hop-by-hop headers already handled)
/// into the head sent upstream: forwarding headers and the request id, rewrite,
/// `upstream_request` plugins.
///
/// Pingora parses a request into header maps sized exactly to it and keeps a second map
/// for header-name case; adding headers to those grows and rehashes both. The head is
/// moved out once ([`head::edit_request`]) into one map with room reserved, edited by all
/// three steps, and put back without the case map, so header names go upstream in lower
/// case (as over HTTP/2, and as Envoy sends them); values, order of repeated headers and
/// the raw request target are kept.
pub(super) fn prepare(up: &mut RequestHeader, session: &Session, ctx: &ProxyCtx) -> Result<()> {
    let (peer, tls) = (peer_ip(session), is_tls(session));
    let rewrite = ctx.route().and_then(|r| r.rewrite.as_ref());
    let req = session.req_header();
    let port = ctx.rt.listener_ports.value(|| {
        session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port())
    });
    head::edit_request(up, |h| {
        let parts: &mut http::request::Parts = h;
        forwarding::apply(
            &mut parts.headers,
            parts.uri.authority().map(|a| a.as_str()),
            peer,
            ctx.client_ip,
            ctx.peer_trusted,
            tls,
            port,
        );
        let id = ctx.request_id_value();
        if !id.is_empty() {
            // Replaces the client's copy (the same value when the request_id plugin kept it).
            parts
                .headers
                .insert(crate::util::id::X_REQUEST_ID, id.clone());
        }
        if let Some(new_path) = rewrite.and_then(|rw| rw.apply(h.uri.path())) {
            let target = super::path::with_query(new_path, h.uri.query());
            h.set_target(target.into_bytes());
        }
        ctx.chain().run_upstream_request(req, &ctx.req, h);
    })
}
