//! `request_id`: decides whose `X-Request-ID` is kept (`trust_incoming`: `false` nobody's,
//! `true` a peer's in `server.trusted_proxies`, `any` anyone's; kept only when it is
//! `[A-Za-z0-9._-]{1,128}`, else the request gets a new ULID), and propagates W3C
//! `traceparent`, generating one when the client sent none (or a malformed one). Every
//! request has an id with or without this plugin: moat sends it upstream and echoes it on
//! every response (`proxy`), so without the plugin the client's id is never kept and no
//! `traceparent` is added.
//!
//! In `global_plugins`, the id is decided before anything is answered (the proxy calls
//! [`decide`] with its setting first thing), so the answers given before the plugins run
//! (`431`, `414`, a malformed body's `400`, `redirect_https`, CORS preflights) carry the
//! kept id too; a route's own `request_id` decides again when its chain runs.

use super::{Flow, Phases, Plugin, UpstreamHead};
use crate::config::model::{RequestIdConfig, TrustIncoming};
use crate::ctx::RequestCtx;
use crate::util::id;
use async_trait::async_trait;
use http::HeaderName;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The compiled plugin.
pub struct RequestId {
    trust: TrustIncoming,
}

/// Decide `ctx`'s request id under `trust`: the client's well-formed `X-Request-ID` when
/// `trust` admits the direct peer (`ctx.peer_trusted` must be set already), else a new
/// ULID — replacing a client's id an earlier decision kept under a wider trust (a global
/// `any` narrowed by a route's `false`), keeping a ULID already made.
pub fn decide(trust: TrustIncoming, req: &RequestHeader, ctx: &mut RequestCtx) {
    let incoming = req
        .headers
        .get(&id::X_REQUEST_ID)
        .filter(|v| id::valid_request_id(v.as_bytes()));
    let Some(v) = incoming else {
        ctx.assign_request_id();
        return;
    };
    let keep = match trust {
        TrustIncoming::Nobody => false,
        TrustIncoming::TrustedProxies => ctx.peer_trusted,
        TrustIncoming::Any => true,
    };
    if keep {
        ctx.set_request_id(v.clone());
    } else if ctx.request_id_value() == v {
        ctx.set_request_id(id::ulid_value());
    } else {
        ctx.assign_request_id();
    }
}

impl RequestId {
    /// Build from config.
    pub fn new(c: &RequestIdConfig) -> RequestId {
        RequestId {
            trust: c.trust_incoming,
        }
    }

    /// The request phase without a session, for tests and reuse.
    pub fn on_request(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        decide(self.trust, req, ctx);
        ctx.plugins.traceparent = Some(match req.headers.get(&TRACEPARENT) {
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
            ..Phases::default()
        }
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        self.on_request(session.req_header(), ctx);
        Flow::Continue
    }

    fn upstream_request(&self, _req: &RequestHeader, ctx: &RequestCtx, up: &mut UpstreamHead) {
        if let Some(tp) = &ctx.plugins.traceparent {
            up.headers.insert(TRACEPARENT.clone(), tp.clone());
        }
    }
}

impl super::CompilePlugin for crate::config::model::RequestIdConfig {
    fn compile_plugin(
        &self,
        _here: &str,
        _env: &super::CompileEnv,
        _errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        Some(std::sync::Arc::new(RequestId::new(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(id) = id {
            r.insert_header("X-Request-ID", id).unwrap();
        }
        r
    }

    fn decided(trust: TrustIncoming, peer_trusted: bool, id: Option<&str>) -> String {
        let mut ctx = RequestCtx::new();
        ctx.peer_trusted = peer_trusted;
        decide(trust, &req(id), &mut ctx);
        ctx.request_id_if_set().to_string()
    }

    fn is_ulid(s: &str) -> bool {
        s.len() == id::ULID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    #[test]
    fn whose_id_is_kept() {
        use TrustIncoming::*;
        for (trust, peer_trusted, kept) in [
            (Nobody, false, false),
            (Nobody, true, false),
            (TrustedProxies, false, false),
            (TrustedProxies, true, true),
            (Any, false, true),
            (Any, true, true),
        ] {
            let got = decided(trust, peer_trusted, Some("abc"));
            if kept {
                assert_eq!(got, "abc", "{trust:?} peer_trusted={peer_trusted}");
            } else {
                assert!(
                    is_ulid(&got),
                    "{trust:?} peer_trusted={peer_trusted}: {got}"
                );
            }
            // Malformed or absent: a new id, whoever sent it.
            assert!(is_ulid(&decided(trust, peer_trusted, Some("a b"))));
            assert!(is_ulid(&decided(trust, peer_trusted, None)));
        }
    }

    #[test]
    fn a_narrower_decision_replaces_a_kept_id_and_keeps_a_made_one() {
        let mut ctx = RequestCtx::new();
        let r = req(Some("client-7"));
        decide(TrustIncoming::Any, &r, &mut ctx);
        assert_eq!(ctx.request_id_if_set(), "client-7");
        decide(TrustIncoming::Nobody, &r, &mut ctx);
        let made = ctx.request_id_if_set().to_string();
        assert!(is_ulid(&made), "{made}");
        decide(TrustIncoming::Nobody, &r, &mut ctx);
        assert_eq!(ctx.request_id_if_set(), made, "deciding again keeps it");
    }
}
