//! `request_id`: decides whether the client's `X-Request-ID` is kept (with
//! `trust_incoming`, when it is `[A-Za-z0-9._-]{1,128}`; else the request gets a new ULID),
//! and propagates W3C `traceparent`, generating one when the client sent none (or a
//! malformed one). Every request has an id with or without this plugin: moat sends it
//! upstream and echoes it on every response (`proxy`), so without the plugin the client's
//! id is never kept and no `traceparent` is added.

use super::{Flow, Phases, Plugin, UpstreamHead};
use crate::config::model::RequestIdConfig;
use crate::ctx::RequestCtx;
use crate::util::id;
use async_trait::async_trait;
use http::HeaderName;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The compiled plugin.
pub struct RequestId {
    trust_incoming: bool,
}

impl RequestId {
    /// Build from config.
    pub fn new(c: &RequestIdConfig) -> RequestId {
        RequestId {
            trust_incoming: c.trust_incoming,
        }
    }

    /// The request phase without a session, for tests and reuse.
    pub fn on_request(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        match req.headers.get(&id::X_REQUEST_ID) {
            Some(v) if self.trust_incoming && id::valid_request_id(v.as_bytes()) => {
                ctx.set_request_id(v.clone());
            }
            _ => ctx.assign_request_id(),
        }
        ctx.traceparent = Some(match req.headers.get(&TRACEPARENT) {
            Some(v) if id::valid_traceparent(v.as_bytes()) => v.clone(),
            _ => id::new_traceparent(),
        });
    }
}

#[async_trait]
impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        "request_id"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            upstream_request: true,
            response: false,
        }
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        self.on_request(session.req_header(), ctx);
        Flow::Continue
    }

    fn upstream_request(&self, _req: &RequestHeader, ctx: &RequestCtx, up: &mut UpstreamHead) {
        if let Some(tp) = &ctx.traceparent {
            up.headers.insert(TRACEPARENT.clone(), tp.clone());
        }
    }
}
