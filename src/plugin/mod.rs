//! Plugins: the closed registry (`config::model::PluginConfig`) compiled into runtime
//! objects implementing [`Plugin`], one method per phase with no-op defaults.
//!
//! Phases, in request order:
//! - [`Plugin::request`]: after routing (or on an unrouted request, for global plugins
//!   only), before the action; may answer the request itself with [`Flow::Reply`].
//! - [`Plugin::upstream_request`]: edits the request head sent upstream, as an
//!   [`UpstreamHead`].
//! - [`Plugin::response`]: edits every response head sent downstream, the upstream's and
//!   the ones moat makes (errors, `respond`, redirects), as a [`ResponseHead`] (plain
//!   `http` parts: see [`head`] for why), after moat set `X-Request-ID` on it.
//!
//! A plugin states the phases it implements with [`Plugin::phases`], so a route's chain only
//! calls what does something. Custom plugins implement the same trait (see `plugins/`).

pub mod auth;
pub mod compression;
pub mod concurrency;
pub mod cors;
pub mod head;
pub mod headers;
pub mod ip_filter;
pub mod rate_limit;
pub mod registry;
pub mod request_id;
pub mod security_headers;

use crate::config::error::{join, ConfigErrors};
use crate::config::model::PluginConfig;
use crate::ctx::RequestCtx;
use crate::reply::Reply;
use async_trait::async_trait;
pub use head::{ResponseHead, UpstreamHead};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::sync::Arc;

/// What the request phase decided.
pub enum Flow {
    /// Go on with the next plugin, then the route's action.
    Continue,
    /// Answer the request with this reply; nothing after runs.
    Reply(Reply),
}

/// The phases a plugin takes part in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Calls [`Plugin::request`].
    pub request: bool,
    /// Calls [`Plugin::upstream_request`].
    pub upstream_request: bool,
    /// Calls [`Plugin::response`].
    pub response: bool,
}

/// A compiled plugin. Implementations are immutable and shared by every request of a
/// config generation.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The plugin's config name.
    fn name(&self) -> &'static str;

    /// Which phases this plugin implements; others are never called.
    fn phases(&self) -> Phases;

    /// Inspect the request; return [`Flow::Reply`] to answer it here.
    async fn request(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Edit the head sent upstream (write `upstream.headers` directly, with names built
    /// once). `req` is the client's request as received.
    fn upstream_request(
        &self,
        _req: &RequestHeader,
        _ctx: &RequestCtx,
        _upstream: &mut UpstreamHead,
    ) {
    }

    /// Answer a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) before any request phase runs; `None` to let it
    /// through. Called only on preflights, on plugins with a response phase.
    fn preflight(&self, _req: &RequestHeader) -> Option<Reply> {
        None
    }

    /// Edit a response head before it goes downstream: write `resp.headers` directly,
    /// with names built once (`HeaderName::from_static`, or parsed at compile time).
    fn response(&self, _req: &RequestHeader, _ctx: &RequestCtx, _resp: &mut ResponseHead) {}
}

/// The plugins of one route (global ones first), split by phase.
#[derive(Clone, Default)]
pub struct Chain {
    /// Plugins with a request phase, in order.
    pub request: Vec<Arc<dyn Plugin>>,
    /// Plugins with an upstream-request phase, in order.
    pub upstream_request: Vec<Arc<dyn Plugin>>,
    /// Plugins with a response phase, in order.
    pub response: Vec<Arc<dyn Plugin>>,
}

impl Chain {
    /// Build from plugins in run order.
    pub fn new(plugins: &[Arc<dyn Plugin>]) -> Chain {
        let mut c = Chain::default();
        for p in plugins {
            let ph = p.phases();
            if ph.request {
                c.request.push(Arc::clone(p));
            }
            if ph.upstream_request {
                c.upstream_request.push(Arc::clone(p));
            }
            if ph.response {
                c.response.push(Arc::clone(p));
            }
        }
        c
    }

    /// Run the upstream-request phase on `up`, a head already moved out for editing
    /// (see [`head::edit_request`]; the proxy moves it out once for the forwarding
    /// headers, the rewrite and these plugins together).
    pub fn run_upstream_request(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        up: &mut UpstreamHead,
    ) {
        for p in &self.upstream_request {
            p.upstream_request(req, ctx, up);
        }
    }

    /// Run the response phase on `resp`, a head about to go downstream (the upstream's or
    /// one moat made; every such head goes through here): `X-Request-ID` set to the
    /// request's id (replacing an upstream's), with or without plugins, then the plugins,
    /// which may still change or remove it. Without plugins the head keeps its header-name
    /// case (Pingora's `insert_header`: the id costs one insert, not a moved-out head).
    pub fn run_response(&self, req: &RequestHeader, ctx: &RequestCtx, resp: &mut ResponseHeader) {
        let id = ctx.request_id_value();
        if self.response.is_empty() {
            if !id.is_empty() {
                // Fails only on an invalid name, and this one is valid.
                let _ = resp.insert_header("X-Request-ID", id.clone());
            }
            return;
        }
        head::edit_response(resp, |h| {
            if !id.is_empty() {
                h.headers.insert(crate::util::id::X_REQUEST_ID, id.clone());
            }
            for p in &self.response {
                p.response(req, ctx, h);
            }
        });
    }
}

/// What plugins may use beyond their own settings when they compile: the generation's
/// shared, already-compiled parts.
pub struct CompileEnv<'a> {
    /// Consumers, JWT providers and the HMAC replay guard.
    pub auth: &'a crate::auth::AuthState,
    /// Metrics (counters plugins increment).
    pub metrics: &'a crate::metrics::Metrics,
    /// Plugins registered by a custom build.
    pub extensions: &'a registry::Extensions,
    /// Limiter state, carried over from the previous generation when unchanged.
    pub limits: &'a crate::limit::Registry,
    /// The Redis client when `redis:` is configured (cluster-scope limits).
    pub redis: Option<&'a Arc<crate::redis::Redis>>,
}

/// Compile one plugin config found at `path`.
pub fn compile(
    cfg: &PluginConfig,
    path: &str,
    env: &CompileEnv,
    errs: &mut ConfigErrors,
) -> Option<Arc<dyn Plugin>> {
    let here = join(path, cfg.name());
    match cfg {
        PluginConfig::RequestId(c) => Some(Arc::new(request_id::RequestId::new(c))),
        PluginConfig::Headers(c) => {
            headers::Headers::compile(c, &here, errs).map(|p| Arc::new(p) as _)
        }
        PluginConfig::Auth(c) => auth::Auth::compile(c, &here, env, errs).map(|p| Arc::new(p) as _),
        PluginConfig::IpFilter(c) => {
            ip_filter::IpFilter::compile(c, &here, errs).map(|p| Arc::new(p) as _)
        }
        PluginConfig::RateLimit(c) => {
            rate_limit::RateLimit::compile(c, &here, env, errs).map(|p| Arc::new(p) as _)
        }
        PluginConfig::Quota(c) => {
            rate_limit::RateLimit::compile_quota(c, &here, env, errs).map(|p| Arc::new(p) as _)
        }
        PluginConfig::Concurrency(c) => {
            concurrency::Concurrency::compile(c, &here, env, errs).map(|p| Arc::new(p) as _)
        }
        PluginConfig::Cors(c) => cors::Cors::compile(c, &here, errs).map(|p| Arc::new(p) as _),
        PluginConfig::SecurityHeaders(c) => {
            security_headers::SecurityHeaders::compile(c, &here, errs).map(|p| Arc::new(p) as _)
        }
        PluginConfig::Compression(c) => {
            compression::Compression::compile(c, &here, errs).map(|p| Arc::new(p) as _)
        }
        PluginConfig::External(ext) => match env.extensions.get(&ext.name) {
            Some(factory) => factory.compile(&ext.settings, &here, errs),
            None => {
                let mut known: Vec<&str> = crate::config::model::PLUGIN_NAMES.to_vec();
                known.extend(env.extensions.names());
                errs.push(
                    here,
                    format!(
                        "unknown plugin `{}`, expected one of {}",
                        ext.name,
                        known.join(", ")
                    ),
                );
                None
            }
        },
    }
}
