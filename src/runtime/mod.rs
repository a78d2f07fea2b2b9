//! The compiled runtime: everything the request path needs, built once per config
//! generation and never mutated. It lives in an `ArcSwap`; each request loads one snapshot
//! and keeps it (see `ctx::RequestCtx`), so a reload is one atomic store.

pub mod admin_access;
mod listeners;
mod routes;
pub(crate) mod upstreams;

use crate::auth::AuthState;
use crate::checks::validate;
use crate::config::error::ConfigErrors;
use crate::config::model::Config;
use crate::metrics::Metrics;
use crate::net::CidrSet;
use crate::plugin::Chain;
use crate::router::Router;
use crate::template::Template;
use crate::upstream::Pool;
use arc_swap::ArcSwap;
use http::HeaderName;
pub use listeners::ListenerPorts;
use prometheus::Histogram;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// The live runtime, swapped whole on reload.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

/// One compiled config generation.
pub struct Runtime {
    /// Increases by one on every successful load.
    pub generation: u64,
    /// When this generation was compiled.
    pub loaded_at: SystemTime,
    /// The config it was compiled from (for `/config`).
    pub config: Config,
    /// The route index.
    pub router: Router,
    /// Routes by router index.
    pub routes: Vec<Arc<Route>>,
    /// Global plugins, for requests no route matched.
    pub global_chain: Chain,
    /// `trust_incoming` of the `request_id` plugin in `global_plugins` (the last one, as
    /// its decision is the one that stands): the proxy decides the request id with it
    /// before answering anything, so every answer carries the id that was kept.
    pub request_id_trust: Option<crate::config::model::TrustIncoming>,
    /// Upstream pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: CidrSet,
    /// Request size and keep-alive limits.
    pub request_bounds: RequestBounds,
    /// Whether a plugin of any chain needs Pingora's response compression module (it then
    /// reads `Accept-Encoding` on every request).
    pub compression_used: bool,
    /// Plain listeners answering everything with a redirect: listener port → HTTPS port.
    pub redirect_https: BTreeMap<u16, u16>,
    /// `X-Forwarded-Port` values of the listeners.
    pub listener_ports: ListenerPorts,
    /// Certificates of each TLS listener, by listener name (re-read on every reload).
    pub tls: BTreeMap<String, Arc<crate::tls::CertStore>>,
    /// Consumers, JWT providers and the replay guard (`auth::start_background` starts
    /// the JWKS refresh loops of a generation).
    pub auth: Arc<AuthState>,
    /// Limiter state of this generation's plugins (see `ratelimit::Registry`).
    pub limiters: Arc<crate::ratelimit::Registry>,
    /// The Redis client (`redis:`), kept across reloads while its settings do not change.
    pub redis: Option<Arc<crate::redis::Redis>>,
    /// This instance's own HMAC replay guard (behind the Redis one when `redis:` is set).
    pub local_replay: Arc<crate::auth::replay::LocalReplay>,
    /// What `checks::warnings` found: printed by `moat check`, logged by `run` and reload.
    pub warnings: Vec<crate::config::ConfigError>,
    /// The admin listener's token and `Host` rules (the token is read again on reload).
    pub admin: admin_access::Access,
}

/// A compiled route.
pub struct Route {
    /// The route's name.
    pub name: Arc<str>,
    /// What to do with a matching request.
    pub action: Action,
    /// Path rewriting before going upstream.
    pub rewrite: Option<Rewrite>,
    /// Global plugins then the route's own.
    pub chain: Chain,
    /// The route's body limit, overriding `server.limits.max_body`.
    pub max_body: Option<u64>,
    /// `moat_http_request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `moat_http_requests_total{route,method,status}`.
    pub requests: crate::metrics::RouteRequests,
}

/// Request limits (`server.limits`), with the defaults an edge wants.
#[derive(Debug, Clone, Copy)]
pub struct RequestBounds {
    /// All request header names and values together (plus 4 bytes a line).
    pub max_header_bytes: u64,
    /// Number of request header lines.
    pub max_headers: usize,
    /// Request body bytes, unless a route says otherwise.
    pub max_body: u64,
    /// Keep-alive idle time of a downstream connection, in seconds.
    pub idle_timeout_secs: u64,
}

/// The longest request target (path and query) accepted; longer gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

impl Default for RequestBounds {
    fn default() -> RequestBounds {
        RequestBounds {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body: 10 * 1024 * 1024,
            idle_timeout_secs: 60,
        }
    }
}

impl RequestBounds {
    /// `server.limits` over the defaults.
    pub fn from_config(cfg: &Config) -> RequestBounds {
        let d = RequestBounds::default();
        let Some(l) = &cfg.server.limits else {
            return d;
        };
        RequestBounds {
            max_header_bytes: l
                .max_header_bytes
                .map(|s| s.0)
                .unwrap_or(d.max_header_bytes),
            max_headers: l.max_headers.unwrap_or(d.max_headers),
            max_body: l.max_body.map(|s| s.0).unwrap_or(d.max_body),
            idle_timeout_secs: l
                .idle_timeout
                .map(|t| t.get().as_secs())
                .unwrap_or(d.idle_timeout_secs),
        }
    }
}

/// A route's action.
pub enum Action {
    /// Proxy to this pool.
    Upstream(Arc<Pool>),
    /// Answer with a configured response.
    Respond(Respond),
    /// Answer with a redirect.
    Redirect(Redirect),
}

/// A configured response.
pub struct Respond {
    /// Status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<RespondHeader>,
    /// Body, templated.
    pub body: Template,
    /// How the body's values are escaped: from its literal `Content-Type`, at load.
    pub body_context: crate::template::Context,
}

/// One header of a configured response.
pub struct RespondHeader {
    /// Its name.
    pub name: HeaderName,
    /// Its value.
    pub value: RespondValue,
}

/// A configured response header's value.
pub enum RespondValue {
    /// Literal, built at load.
    Fixed(http::HeaderValue),
    /// Rendered per request.
    Template(Template),
}

/// A configured redirect.
pub struct Redirect {
    /// `Location`, templated.
    pub to: Template,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// Path rewriting: the prefix is stripped first, then the other added.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Removed from the front of the path when present (on a segment boundary).
    pub strip_prefix: Option<String>,
    /// Put in front of the path.
    pub add_prefix: Option<String>,
}

impl Rewrite {
    /// The rewritten path (`None` when unchanged).
    pub fn apply(&self, path: &str) -> Option<String> {
        let mut p = path;
        let mut changed = false;
        if let Some(strip) = &self.strip_prefix {
            let s = strip.trim_end_matches('/');
            if let Some(rest) = p.strip_prefix(s) {
                if rest.is_empty() || rest.starts_with('/') {
                    p = rest;
                    changed = true;
                }
            }
        }
        let base = if p.is_empty() { "/" } else { p };
        match &self.add_prefix {
            Some(add) => {
                let add = add.trim_end_matches('/');
                Some(if base == "/" && !add.is_empty() {
                    add.to_string()
                } else {
                    format!("{add}{base}")
                })
            }
            None if changed => Some(base.to_string()),
            None => None,
        }
    }
}

impl Runtime {
    /// Validate and compile `cfg` as generation `generation`, reporting every error.
    /// Pools of `previous` whose definition did not change are carried over.
    pub fn compile(
        cfg: Config,
        generation: u64,
        metrics: &Metrics,
        previous: Option<&Runtime>,
        extensions: &crate::plugin::external::Extensions,
    ) -> Result<Runtime, ConfigErrors> {
        let mut errs = ConfigErrors::default();
        validate::validate(&cfg, &mut errs);
        let trusted_proxies = trusted_proxies(&cfg, &mut errs);
        let pools = upstreams::compile(&cfg, metrics, previous.map(|p| &p.pools), &mut errs);
        let tls = crate::tls::compile(&cfg.listeners, &mut errs);
        // Signatures seen before a reload stay seen: a reload must not reopen the replay
        // window. With `redis:`, Redis decides for every instance; this instance's own
        // memory short-cuts known replays and stands in when Redis cannot answer.
        let local_replay = match previous {
            Some(prev) => Arc::clone(&prev.local_replay),
            None => Arc::default(),
        };
        let mut auth = AuthState::compile(&cfg, &local_replay, &mut errs);
        let redis = redis_client(&cfg, metrics, previous, &mut errs);
        let mut admin_warnings = ConfigErrors::default();
        let admin = admin_access::Access::compile(&cfg, &mut errs, &mut admin_warnings);
        auth.replay = replay_guard(redis.as_ref(), &local_replay, metrics);
        let auth = Arc::new(auth);
        let limiters = Arc::new(crate::ratelimit::Registry::inherit(
            previous.map(|p| &*p.limiters),
        ));
        let env = crate::plugin::CompileEnv {
            auth: &auth,
            metrics,
            extensions,
            limiters: &limiters,
            redis: redis.as_ref(),
        };
        let (router, routes, global_chain) =
            routes::compile(&cfg, &pools, metrics, &env, &mut errs);
        limiters.finish();
        errs.sort_by_file_order();
        errs.into_result(())?;
        let request_bounds = RequestBounds::from_config(&cfg);
        let compression_used = global_chain.response_compression
            || routes.iter().any(|r| r.chain.response_compression);
        let redirect_https = redirect_https(&cfg);
        let listener_ports = ListenerPorts::new(&cfg.listeners);
        let request_id_trust = cfg.global_plugins.iter().rev().find_map(|p| match p {
            crate::config::model::PluginConfig::RequestId(c) => Some(c.trust_incoming),
            _ => None,
        });
        // The token is read while compiling: its warning joins the config's own.
        let mut warnings = ConfigErrors(crate::checks::warnings::warnings(&cfg));
        warnings.0.append(&mut admin_warnings.0);
        warnings.sort_by_file_order();
        let warnings = warnings.0;
        Ok(Runtime {
            generation,
            loaded_at: SystemTime::now(),
            config: cfg,
            router,
            routes,
            global_chain,
            request_id_trust,
            pools,
            trusted_proxies,
            request_bounds,
            redirect_https,
            listener_ports,
            compression_used,
            tls,
            auth,
            limiters,
            redis,
            local_replay,
            warnings,
            admin,
        })
    }

    /// Log this generation's config warnings (see `checks::warnings`).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            log::warn!("config warning: {w}");
        }
    }
}

/// `server.trusted_proxies` parsed (every bad entry recorded).
fn trusted_proxies(cfg: &Config, errs: &mut ConfigErrors) -> CidrSet {
    CidrSet::parse(&cfg.server.trusted_proxies).unwrap_or_else(|bad| {
        for (i, msg) in bad {
            errs.push(format!("server.trusted_proxies[{i}]"), msg);
        }
        CidrSet::default()
    })
}

/// The HMAC replay guard: Redis's for every instance when `redis:` is set (this
/// instance's memory behind it), else this instance's own.
fn replay_guard(
    redis: Option<&Arc<crate::redis::Redis>>,
    local: &Arc<crate::auth::replay::LocalReplay>,
    metrics: &Metrics,
) -> Arc<dyn crate::auth::replay::ReplayGuard> {
    match redis {
        Some(r) => Arc::new(crate::auth::replay::RedisReplay::new(
            Arc::clone(r),
            &metrics.replay_fallback,
        )),
        None => Arc::clone(local) as Arc<dyn crate::auth::replay::ReplayGuard>,
    }
}

/// Plain listeners that answer with a redirect: listener port → HTTPS port.
fn redirect_https(cfg: &Config) -> BTreeMap<u16, u16> {
    cfg.listeners
        .iter()
        .filter_map(|l| {
            let port = l.address.parse::<std::net::SocketAddr>().ok()?.port();
            Some((port, l.redirect_https?))
        })
        .collect()
}

/// The Redis client of `cfg`: the previous generation's when `redis:` and its TLS files
/// did not change (its connections and breakers carry over), else a new one (no I/O here).
fn redis_client(
    cfg: &Config,
    metrics: &Metrics,
    previous: Option<&Runtime>,
    errs: &mut ConfigErrors,
) -> Option<Arc<crate::redis::Redis>> {
    let rc = cfg.redis.as_ref()?;
    let settings = match crate::redis::config::Settings::parse(rc) {
        Ok(s) => s,
        Err(e) => {
            errs.0.extend(e.0);
            return None;
        }
    };
    if let Some(r) = previous
        .and_then(|p| p.redis.as_ref())
        .filter(|r| r.fingerprint == settings.fingerprint)
    {
        return Some(Arc::clone(r));
    }
    Some(Arc::new(crate::redis::Redis::new(
        settings,
        metrics.redis_errors.clone(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite() {
        let r = Rewrite {
            strip_prefix: Some("/api".into()),
            add_prefix: Some("/v2".into()),
        };
        assert_eq!(r.apply("/api/users/7").as_deref(), Some("/v2/users/7"));
        assert_eq!(r.apply("/api").as_deref(), Some("/v2"));
        assert_eq!(r.apply("/apix/y").as_deref(), Some("/v2/apix/y"));
        let strip = Rewrite {
            strip_prefix: Some("/api/".into()),
            add_prefix: None,
        };
        assert_eq!(strip.apply("/api/users").as_deref(), Some("/users"));
        assert_eq!(strip.apply("/api").as_deref(), Some("/"));
        assert_eq!(strip.apply("/other"), None);
        let add = Rewrite {
            strip_prefix: None,
            add_prefix: Some("/base/".into()),
        };
        assert_eq!(add.apply("/").as_deref(), Some("/base"));
        assert_eq!(add.apply("/x").as_deref(), Some("/base/x"));
    }
}
