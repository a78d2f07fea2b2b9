//! The request head moat sends upstream, built the same way for Pingora's proxy path
//! (`upstream_request_filter`) and for upgrades moat relays itself (`upgrade`): forwarding
//! headers, the route's path rewrite, then the `upstream_request` plugins.

use super::{chain_of, forwarding, is_tls, peer_ip};
use crate::ctx::RequestCtx;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// Turn `up` (a copy of the client's request head, hop-by-hop headers already handled)
/// into the head sent upstream: forwarding headers, rewrite, `upstream_request` plugins.
pub(super) fn prepare(up: &mut RequestHeader, session: &Session, ctx: &RequestCtx) -> Result<()> {
    rebuild_with_forwarding(up, session, ctx)?;
    if let Some(rw) = ctx.route.as_deref().and_then(|r| r.rewrite.as_ref()) {
        if let Some(new_path) = rw.apply(up.uri.path()) {
            let target = match up.uri.query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            up.set_raw_path(target.as_bytes())?;
        }
    }
    chain_of(ctx).run_upstream_request(session.req_header(), ctx, up)
}

/// Replace the upstream request head with a copy carrying the forwarding headers.
///
/// Pingora parses a request into header maps sized exactly to it and keeps a second map
/// for header-name case; adding the four forwarding headers to those grows and rehashes
/// both (measured: most of moat's added CPU per request). The copy is one map, reserved
/// once, so header names go upstream in lower case (as over HTTP/2, and as Envoy sends
/// them); values, order of repeated headers and the request target are kept.
fn rebuild_with_forwarding(
    up: &mut RequestHeader,
    session: &Session,
    ctx: &RequestCtx,
) -> Result<()> {
    // The head is moved out (not cloned) and comes back without its case map.
    let from_uri = up
        .uri
        .path_and_query()
        .map(|p| p.as_str().as_bytes())
        .unwrap_or_default();
    let raw_path = (up.raw_path() != from_uri).then(|| up.raw_path().to_vec());
    let end = up.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(up, placeholder));
    forwarding::apply(
        &mut parts.headers,
        parts.uri.authority().map(|a| a.as_str()),
        peer_ip(session),
        ctx.client_ip,
        ctx.peer_trusted,
        is_tls(session),
    );
    *up = RequestHeader::from(parts);
    if let Some(raw) = raw_path {
        up.set_raw_path(&raw)?;
    }
    if let Some(end) = end {
        up.set_send_end_stream(end);
    }
    Ok(())
}
