//! The per-request context plugins see: the facts phases share (client IP, request id,
//! route name, identity) and the state plugins keep for the request. Plugins read request
//! facts through it rather than re-parsing headers. The proxy wraps it with the config
//! snapshot, the route and the upstream state (`proxy::ProxyCtx`).

use crate::identity::Identity;
use crate::template::Facts;
use http::HeaderValue;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// What plugins see of one request, between phases: its facts (read through the
/// accessors below) and the built-in plugins' own state (`PluginState`, one slot per
/// plugin).
pub struct RequestCtx {
    /// When the request started.
    pub(crate) start: Instant,
    /// The resolved client IP (first untrusted hop).
    pub(crate) client_ip: Option<IpAddr>,
    /// Whether the direct peer is a trusted proxy.
    pub(crate) peer_trusted: bool,
    /// Empty until assigned; a header value so that sending it is a reference-count bump.
    /// Marked sensitive once assigned: HTTP/2 sends a never-repeating value as a
    /// never-indexed literal instead of looking it up in, and inserting it into, the
    /// connection's HPACK table (where it would evict entries that do repeat); HTTP/1
    /// ignores the flag.
    request_id: HeaderValue,
    /// The matched route's name.
    route_name: Option<Arc<str>>,
    /// The authenticated identity.
    pub(crate) identity: Option<Identity>,
    /// Whether the response is one moat made itself (error, `respond`, redirect, preflight).
    pub(crate) own_response: bool,
    /// The built-in plugins' state for this request.
    pub(crate) plugins: PluginState,
    /// `moat_connections_active`, decremented when the request ends.
    active: Option<prometheus::IntGauge>,
}

/// The built-in plugins' per-request state: one plain field per plugin that keeps any.
#[derive(Default)]
pub(crate) struct PluginState {
    /// `request_id`: the `traceparent` to send upstream.
    pub(crate) traceparent: Option<HeaderValue>,
    /// `auth`: a signed body held back until its digest is checked (HMAC, long or chunked
    /// bodies).
    pub(crate) held_body: Option<Box<crate::auth::held_body::HeldBody>>,
    /// `rate_limit`, `quota`, `concurrency`: the outcome for the access log, when a limiter
    /// ran.
    pub(crate) ratelimit: Option<&'static str>,
    /// `rate_limit`, `quota`, `concurrency`: `RateLimit-*` headers to send, concurrency
    /// slots held (released when the context drops, however the request ended).
    pub(crate) limits: crate::ratelimit::ReqLimits,
    /// `compression`: the encodings and levels chosen for this response (set once).
    pub(crate) compression:
        std::sync::OnceLock<Arc<[(pingora_core::protocols::http::compression::Algorithm, u32)]>>,
}

impl Default for RequestCtx {
    fn default() -> RequestCtx {
        RequestCtx::new()
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let Some(g) = &self.active {
            g.dec();
        }
    }
}

impl RequestCtx {
    /// A fresh context.
    pub fn new() -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            client_ip: None,
            peer_trusted: false,
            request_id: HeaderValue::from_static(""),
            route_name: None,
            identity: None,
            own_response: false,
            plugins: PluginState::default(),
            active: None,
        }
    }

    /// The request body is sent again from its start (a retry to another target): plugins
    /// that follow it start over.
    pub(crate) fn restart_body(&mut self) {
        if let Some(held) = self.plugins.held_body.as_mut() {
            held.restart();
        }
    }

    /// Whether a plugin holds the request body back (an upgrade then stays on Pingora's
    /// path).
    pub(crate) fn holds_body(&self) -> bool {
        self.plugins.held_body.is_some()
    }

    /// The encodings and levels the `compression` plugin chose for this response, if any.
    pub(crate) fn compression(
        &self,
    ) -> Option<&Arc<[(pingora_core::protocols::http::compression::Algorithm, u32)]>> {
        self.plugins.compression.get()
    }

    /// The rate-limit outcome for the access log, when a limiter ran.
    pub(crate) fn ratelimit_outcome(&self) -> Option<&'static str> {
        self.plugins.ratelimit
    }

    /// When the request started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The resolved client IP (first untrusted hop), once the request phase began.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    /// Whether the direct peer is in `server.trusted_proxies`.
    pub fn peer_trusted(&self) -> bool {
        self.peer_trusted
    }

    /// The authenticated identity (consumer, tier, method, claims), once `auth` ran.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Whether the response is one moat made itself (error, `respond`, redirect,
    /// preflight) rather than the upstream's.
    pub fn own_response(&self) -> bool {
        self.own_response
    }

    /// Count this request in `gauge` until the context drops.
    pub(crate) fn track_active(&mut self, gauge: &prometheus::IntGauge) {
        gauge.inc();
        self.active = Some(gauge.clone());
    }

    /// This request's id, generated on first use unless a plugin set one.
    pub fn request_id(&mut self) -> &str {
        self.assign_request_id();
        self.request_id_if_set()
    }

    /// Give the request an id (a new ULID) unless it has one.
    pub(crate) fn assign_request_id(&mut self) {
        if self.request_id.is_empty() {
            self.set_request_id(crate::util::id::ulid_value());
        }
    }

    /// The id if one was assigned, else empty.
    pub fn request_id_if_set(&self) -> &str {
        // Always visible ASCII: a ULID, or an incoming id checked by the request_id plugin.
        self.request_id.to_str().unwrap_or("")
    }

    /// The id as a header value (empty when none was assigned).
    pub fn request_id_value(&self) -> &HeaderValue {
        &self.request_id
    }

    /// Set the id (the request_id plugin keeps a trusted incoming one, already checked
    /// against `[A-Za-z0-9._-]{1,128}`).
    pub(crate) fn set_request_id(&mut self, mut id: HeaderValue) {
        id.set_sensitive(true);
        self.request_id = id;
    }

    /// The matched route's name, or empty.
    pub fn route_name(&self) -> &str {
        self.route_name.as_deref().unwrap_or("")
    }

    /// Record the matched route's name.
    pub(crate) fn set_route_name(&mut self, name: &Arc<str>) {
        self.route_name = Some(Arc::clone(name));
    }

    /// Template facts for `req` (the client's request) in this context.
    pub fn facts<'a>(&'a self, req: &'a RequestHeader) -> Facts<'a> {
        Facts {
            req,
            client_ip: self.client_ip,
            request_id: self.request_id_if_set(),
            route: self.route_name(),
            identity: self.identity.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every id a request carries is marked sensitive (HTTP/2 then never indexes it in
    /// HPACK), the ones moat makes and the ones it keeps; the value is unchanged.
    #[test]
    fn request_ids_are_sensitive() {
        let mut ctx = RequestCtx::new();
        assert_eq!(ctx.request_id_if_set(), "");
        ctx.assign_request_id();
        assert_eq!(ctx.request_id_if_set().len(), 26);
        assert!(ctx.request_id_value().is_sensitive());
        ctx.set_request_id(HeaderValue::from_static("client-id-1"));
        assert!(ctx.request_id_value().is_sensitive());
        assert_eq!(ctx.request_id_value(), "client-id-1");
    }
}
