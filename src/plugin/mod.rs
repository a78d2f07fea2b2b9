//! Plugins: the closed registry (`config::model::PluginConfig`) compiled into runtime
//! objects implementing [`Plugin`], one method per phase with no-op defaults.
//!
//! Phases, in request order:
//! - [`Plugin::early_request`]: after routing, before every request phase (authentication
//!   included); may answer the request itself (a CORS preflight, which carries no
//!   credentials).
//! - [`Plugin::request`]: after routing (or on an unrouted request, for global plugins
//!   only), before the action; may answer the request itself with [`Flow::Reply`].
//! - [`Plugin::upstream_request`]: edits the request head sent upstream, as an
//!   [`UpstreamHead`].
//! - [`Plugin::request_body`]: each chunk of the request body on its way upstream; may
//!   refuse it (HMAC digest checks of a held body).
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
pub mod external;
pub mod headers;
pub mod ip_filter;
pub mod rate_limit;
pub mod request_id;
pub mod security_headers;

use crate::config::error::{join, ConfigErrors};
use crate::config::model::PluginConfig;
use crate::ctx::RequestCtx;
use crate::reply::Reply;
pub use crate::util::head::{self, ResponseHead, UpstreamHead};
use async_trait::async_trait;
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
    /// Calls [`Plugin::early_request`].
    pub early_request: bool,
    /// Calls [`Plugin::request`].
    pub request: bool,
    /// Calls [`Plugin::request_body`].
    pub request_body: bool,
    /// Calls [`Plugin::upstream_request`].
    pub upstream_request: bool,
    /// Calls [`Plugin::response`].
    pub response: bool,
    /// Needs Pingora's response compression module, which the proxy then enables on every
    /// request so that it reads `Accept-Encoding` (the `compression` plugin).
    pub response_compression: bool,
}

/// A compiled plugin. Implementations are immutable and shared by every request of a
/// config generation.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The plugin's config name.
    fn name(&self) -> &'static str;

    /// Which phases this plugin implements; others are never called.
    fn phases(&self) -> Phases;

    /// Look at the request before any request phase of the chain runs (authentication
    /// included); return a reply to answer it here.
    fn early_request(&self, _req: &RequestHeader) -> Option<Reply> {
        None
    }

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

    /// Look at a chunk of the request body on its way upstream (`end`: the last one; the
    /// chunk may be taken, to be released later); `Err` refuses the request with that
    /// reply, sent instead of the upstream's answer when nothing was sent yet. After a
    /// retry to another target the body is sent again from its start.
    fn request_body(
        &self,
        _body: &mut Option<bytes::Bytes>,
        _end: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<(), Reply> {
        Ok(())
    }

    /// Edit a response head before it goes downstream: write `resp.headers` directly,
    /// with names built once (`HeaderName::from_static`, or parsed at compile time).
    fn response(&self, _req: &RequestHeader, _ctx: &RequestCtx, _resp: &mut ResponseHead) {}
}

/// The plugins of one route (global ones first), split by phase: a phase no plugin of the
/// chain takes part in costs an empty loop.
#[derive(Clone, Default)]
pub struct Chain {
    /// Plugins with an early request phase, in order.
    pub early_request: Vec<Arc<dyn Plugin>>,
    /// Plugins with a request phase, in order.
    pub request: Vec<Arc<dyn Plugin>>,
    /// Plugins with a request body phase, in order.
    pub request_body: Vec<Arc<dyn Plugin>>,
    /// Plugins with an upstream-request phase, in order.
    pub upstream_request: Vec<Arc<dyn Plugin>>,
    /// Plugins with a response phase, in order.
    pub response: Vec<Arc<dyn Plugin>>,
    /// Whether a plugin of the chain needs Pingora's response compression module.
    pub response_compression: bool,
}

impl Chain {
    /// Build from plugins in run order.
    pub fn new(plugins: &[Arc<dyn Plugin>]) -> Chain {
        let mut c = Chain::default();
        for p in plugins {
            let ph = p.phases();
            if ph.early_request {
                c.early_request.push(Arc::clone(p));
            }
            if ph.request {
                c.request.push(Arc::clone(p));
            }
            if ph.request_body {
                c.request_body.push(Arc::clone(p));
            }
            if ph.upstream_request {
                c.upstream_request.push(Arc::clone(p));
            }
            if ph.response {
                c.response.push(Arc::clone(p));
            }
            c.response_compression |= ph.response_compression;
        }
        c
    }

    /// Run the early request phase: the first reply a plugin makes, if any.
    pub fn run_early_request(&self, req: &RequestHeader) -> Option<Reply> {
        self.early_request.iter().find_map(|p| p.early_request(req))
    }

    /// Run the request body phase on a chunk: the first refusal, if any.
    pub fn run_request_body(
        &self,
        body: &mut Option<bytes::Bytes>,
        end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), Reply> {
        for p in &self.request_body {
            p.request_body(body, end, ctx)?;
        }
        Ok(())
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
    pub extensions: &'a external::Extensions,
    /// Limiter state, carried over from the previous generation when unchanged.
    pub limiters: &'a crate::ratelimit::Registry,
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
    compile_at(cfg, &join(path, cfg.name()), env, errs)
}

/// Compile the settings of the external plugin `ext` found at `here` with its factory.
fn compile_external(
    ext: &crate::config::model::ExternalPluginConfig,
    here: &str,
    env: &CompileEnv,
    errs: &mut ConfigErrors,
) -> Option<Arc<dyn Plugin>> {
    match env.extensions.get(&ext.name) {
        Some(factory) => factory.compile(&ext.settings, here, errs),
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
    }
}

/// Compiling a built-in plugin from its settings: implemented by each settings type in its
/// plugin's file, called through the table `config::plugins::builtin_plugins`.
pub(crate) trait CompilePlugin {
    /// Compile the settings found at `here` (the plugin's path), recording every problem
    /// in `errs`; `None` when there was one.
    fn compile_plugin(
        &self,
        here: &str,
        env: &CompileEnv,
        errs: &mut ConfigErrors,
    ) -> Option<Arc<dyn Plugin>>;
}

/// The compile arms of the built-in plugins, from the table.
macro_rules! compile_at {
    ($($variant:ident $name:tt $settings:ty),*) => {
        /// Compile `cfg`, found at `here`.
        fn compile_at(
            cfg: &PluginConfig,
            here: &str,
            env: &CompileEnv,
            errs: &mut ConfigErrors,
        ) -> Option<Arc<dyn Plugin>> {
            match cfg {
                $(PluginConfig::$variant(c) => c.compile_plugin(here, env, errs),)*
                PluginConfig::External(ext) => compile_external(ext, here, env, errs),
            }
        }
    };
}
crate::config::plugins::builtin_plugins!(compile_at);
