//! `request_id`: gives every request an `X-Request-ID` (kept from the client when
//! `trust_incoming` is set and the value is `[A-Za-z0-9._-]{1,128}`, else a new ULID),
//! sends it upstream and echoes it in the response. Also propagates W3C `traceparent`,
//! generating one when the client sent none (or a malformed one).

use super::{Flow, Phases, Plugin, ResponseHead};
use crate::config::model::RequestIdConfig;
use crate::ctx::RequestCtx;
use crate::util::id;
use async_trait::async_trait;
use http::HeaderValue;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

const X_REQUEST_ID: &str = "x-request-id";
const TRACEPARENT: &str = "traceparent";
static X_REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(X_REQUEST_ID);

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
        let incoming = req.headers.get(X_REQUEST_ID).map(|v| v.as_bytes());
        match incoming {
            Some(v) if self.trust_incoming && id::valid_request_id(v) => {
                ctx.set_request_id(String::from_utf8_lossy(v).into_owned());
            }
            _ => {
                ctx.request_id();
            }
        }
        let tp = req.headers.get(TRACEPARENT).map(|v| v.as_bytes());
        ctx.traceparent = Some(match tp {
            Some(v) if id::valid_traceparent(v) => String::from_utf8_lossy(v).into_owned(),
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
            response: true,
        }
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        self.on_request(session.req_header(), ctx);
        Flow::Continue
    }

    fn upstream_request(&self, _req: &RequestHeader, ctx: &RequestCtx, up: &mut RequestHeader) {
        if let Ok(v) = HeaderValue::from_str(ctx.request_id_if_set()) {
            let _ = up.insert_header(X_REQUEST_ID, v);
        }
        if let Some(tp) = ctx
            .traceparent
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            let _ = up.insert_header(TRACEPARENT, tp);
        }
    }

    fn response(&self, _req: &RequestHeader, ctx: &RequestCtx, resp: &mut ResponseHead) {
        if let Ok(v) = HeaderValue::from_str(ctx.request_id_if_set()) {
            resp.headers.insert(X_REQUEST_ID_NAME.clone(), v);
        }
    }
}
