//! The per-request context: the config snapshot the request started with and the facts
//! phases share (client IP, request id, route, identity, upstream state). Plugins read
//! request facts through it rather than re-parsing headers.

use crate::identity::Identity;
use crate::reply::ErrorCode;
use crate::runtime::{Route, Runtime};
use crate::template::Facts;
use crate::upstream::{InFlight, Pool};
use http::HeaderValue;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Upstream-side state of one request.
#[derive(Default)]
pub struct UpstreamState {
    /// The pool the route sends to.
    pub pool: Option<Arc<Pool>>,
    /// The target currently in use, counted in flight.
    pub current: Option<InFlight>,
    /// Targets already tried (for retries).
    pub tried: Vec<usize>,
    /// Connection attempts made so far.
    pub attempts: u32,
    /// When the first target was chosen.
    pub started: Option<Instant>,
    /// When the upstream response head arrived or the attempt ended.
    pub finished: Option<Instant>,
}

/// Everything one request carries between phases.
pub struct RequestCtx {
    /// The config snapshot for this request's whole life.
    pub rt: Arc<Runtime>,
    /// When the request started.
    pub start: Instant,
    /// The resolved client IP (first untrusted hop).
    pub client_ip: Option<IpAddr>,
    /// Whether the direct peer is a trusted proxy.
    pub peer_trusted: bool,
    /// Empty until assigned; a header value so that sending it is a reference-count bump.
    request_id: HeaderValue,
    /// The `traceparent` to send upstream, when the request_id plugin runs.
    pub traceparent: Option<HeaderValue>,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// The authenticated identity.
    pub identity: Option<Identity>,
    /// Upstream state.
    pub upstream: UpstreamState,
    /// The error code of a reply moat made, for logs and metrics.
    pub reply_code: Option<ErrorCode>,
    /// Encodings and levels a `compression` plugin chose for this response (set once).
    pub compression: std::sync::OnceLock<
        std::sync::Arc<[(pingora_core::protocols::http::compression::Algorithm, u32)]>,
    >,
    /// The body limit for this request (route's, else the server's).
    pub body_limit: u64,
    /// Request body bytes seen so far.
    pub body_seen: u64,
    /// A signed body held back until its digest is checked (HMAC, long or chunked bodies).
    pub held_body: Option<Box<crate::auth::held_body::HeldBody>>,
    /// The reply for a refusal decided while proxying (a held body that failed its
    /// digest), sent by `fail_to_proxy` instead of the generic error.
    pub pending_reply: Option<crate::reply::Reply>,
    /// The request's chunked body is malformed in the bytes read with its head: it is
    /// refused (`400`) before anything else, and its connection closed.
    pub malformed_body: Option<crate::slowloris::Malformed>,
    /// Whether the response is one moat made itself (error, `respond`, redirect, preflight).
    pub own_response: bool,
    /// The rate-limit outcome for the access log, when a limiter ran.
    pub ratelimit: Option<&'static str>,
    /// Limiter state: `RateLimit-*` headers to send, concurrency slots held (released
    /// when the context drops, however the request ended).
    pub limits: crate::limit::ReqLimits,
    /// The connection was taken over by a relay task (an upgrade moat relays itself, see
    /// `proxy::upgrade`): that task logs the request; Pingora's `logging` must not.
    pub detached: bool,
    /// `moat_connections_active`, decremented when the request ends.
    active: Option<prometheus::IntGauge>,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let Some(g) = &self.active {
            g.dec();
        }
    }
}

impl RequestCtx {
    /// A fresh context on snapshot `rt`.
    pub fn new(rt: Arc<Runtime>) -> RequestCtx {
        RequestCtx {
            rt,
            start: Instant::now(),
            client_ip: None,
            peer_trusted: false,
            request_id: HeaderValue::from_static(""),
            traceparent: None,
            route: None,
            identity: None,
            upstream: UpstreamState::default(),
            reply_code: None,
            own_response: false,
            compression: std::sync::OnceLock::new(),
            body_limit: u64::MAX,
            body_seen: 0,
            held_body: None,
            pending_reply: None,
            malformed_body: None,
            ratelimit: None,
            limits: Default::default(),
            detached: false,
            active: None,
        }
    }

    /// Count this request in `gauge` until the context drops.
    pub fn track_active(&mut self, gauge: &prometheus::IntGauge) {
        gauge.inc();
        self.active = Some(gauge.clone());
    }

    /// This request's id, generated on first use unless a plugin set one.
    pub fn request_id(&mut self) -> &str {
        self.assign_request_id();
        self.request_id_if_set()
    }

    /// Give the request an id (a new ULID) unless it has one.
    pub fn assign_request_id(&mut self) {
        if self.request_id.is_empty() {
            self.request_id = crate::util::id::ulid_value();
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
    pub fn set_request_id(&mut self, id: HeaderValue) {
        self.request_id = id;
    }

    /// The matched route's name, or empty.
    pub fn route_name(&self) -> &str {
        self.route.as_deref().map(|r| &*r.name).unwrap_or("")
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
