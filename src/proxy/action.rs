//! The replies of `respond` and `redirect` routes, rendered from their compiled templates:
//! literal headers built at load, templated values escaped for where they land (the body
//! for its content type, chosen at load; a `Location` as a URL).

use crate::ctx::RequestCtx;
use crate::reply::{ErrorCode, Reply};
use crate::runtime::{Action, RespondValue};
use crate::template::Context;
use bytes::Bytes;
use http::HeaderValue;
use pingora_http::RequestHeader;

/// Build the reply of a `respond` or `redirect` route.
pub(super) fn reply(action: &Action, req: &RequestHeader, ctx: &RequestCtx) -> Reply {
    let facts = ctx.facts(req);
    match action {
        Action::Respond(r) => {
            let mut headers = Vec::with_capacity(r.headers.len());
            for h in &r.headers {
                let t = match &h.value {
                    RespondValue::Fixed(v) => {
                        headers.push((h.name.clone(), v.clone()));
                        continue;
                    }
                    RespondValue::Template(t) => t,
                };
                // A templated `Location` is a URL, escaped as a redirect's.
                let ctx = if h.name == http::header::LOCATION {
                    Context::Url
                } else {
                    Context::Raw
                };
                let mut v = Vec::new();
                if !t.render_in(&facts, &mut v, ctx) {
                    return Reply::error(ErrorCode::BadRequest, "cannot build the redirect target");
                }
                if crate::util::http::safe_header_value(&v) {
                    if let Ok(v) = HeaderValue::from_bytes(&v) {
                        headers.push((h.name.clone(), v));
                    }
                }
            }
            // The body's values are escaped for its content type (JSON, HTML...).
            let mut body = Vec::new();
            r.body.render_in(&facts, &mut body, r.body_context);
            Reply::raw(r.status, headers, Bytes::from(body))
        }
        Action::Redirect(r) => {
            let mut to = Vec::new();
            let built = r.to.render_in(&facts, &mut to, Context::Url);
            match HeaderValue::from_bytes(&to) {
                Ok(v) if built && crate::util::http::safe_header_value(&to) => {
                    Reply::raw(r.status, vec![(http::header::LOCATION, v)], Bytes::new())
                }
                _ => Reply::error(ErrorCode::BadRequest, "cannot build the redirect target"),
            }
        }
        Action::Upstream(_) => Reply::error(ErrorCode::InternalError, "internal error"),
    }
}
