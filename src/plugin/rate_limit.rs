//! `rate_limit` and `quota`: request counting per key, on this instance (`scope: local`)
//! or across instances through Redis (`scope: cluster`: `ratelimit::cluster` for exact
//! decisions, `ratelimit::fast` and `ratelimit::fast_bucket` for `mode: fast`).
//!
//! - `rate_limit`: `key`, `rate`, `algorithm` (sliding_window by default, token_bucket
//!   with capacity `burst` — the default when `burst` is given —, fixed_window; see
//!   `ratelimit::algo` for each one's error), `tiers`
//!   overriding the rate by the consumer's tier. Refusals: 429 `RATE_LIMITED`.
//! - `quota`: a fixed window aligned on UTC calendar minutes, hours or days (the unit of
//!   `limit`), tiered the same way. Refusals: 429 `QUOTA_EXCEEDED`, `Retry-After` until the
//!   window ends. With `scope: cluster` it is the exact fixed window in Redis, on Redis's
//!   clock and epoch-aligned, hence the same UTC calendar windows.
//!
//! Both record `RateLimit-Limit/Remaining/Reset` for the response (the most restrictive
//! limiter of the request wins; the response phase writes them on upstream answers and on
//! moat's own replies alike), `Retry-After` on 429, the access log's `ratelimit` field
//! (`allowed` / `limited`) and `moat_ratelimit_decisions_total{route,plugin,result}`.
//! Several limiters on one route all apply, each with its own counters.

use super::ResponseHead;
use super::{CompileEnv, Flow, Phases, Plugin};
use crate::config::error::{join, ConfigErrors};
use crate::config::model::{
    ClusterMode, LimitScope, OnRedisError, QuotaConfig, RateAlgorithm, RateLimitConfig,
};
use crate::config::units::Rate;
use crate::ctx::RequestCtx;
use crate::metrics::Decisions;
use crate::ratelimit::algo::{now_us, Algorithm, Limit, Outcome, SEC};
use crate::ratelimit::cluster::Cluster;
use crate::ratelimit::fast::{Fast, DEFAULT_SYNC_US};
use crate::ratelimit::fast_bucket::FastBucket;
use crate::ratelimit::store::{Store, DEFAULT_MAX_KEYS};
use crate::ratelimit::{KeySource, RateHeaders};
use crate::redis::Redis;
use crate::reply::{ErrorCode, Reply};
use async_trait::async_trait;
use http::HeaderName;
use http::HeaderValue;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;

/// How a cluster-scope limiter decides.
enum Scope {
    /// One Redis call per decision.
    Exact(Cluster),
    /// Local decisions, reconciled every `sync_interval`.
    Fast(Arc<Fast>),
    /// A token bucket decided locally, reconciled every `sync_interval`.
    FastBucket(Arc<FastBucket>),
}

/// One rate with its refusal message.
struct Tiered {
    limit: Limit,
    message: String,
}

/// The compiled `rate_limit` or `quota` plugin.
pub struct RateLimit {
    name: &'static str,
    code: ErrorCode,
    key: KeySource,
    algo: Algorithm,
    base: Tiered,
    tiers: HashMap<Box<str>, Tiered>,
    idle_after: u64,
    store: Arc<Store>,
    /// Cluster scope: Redis, and what to do when it fails (the local store above is the
    /// `local` fallback).
    cluster: Option<(Scope, OnRedisError)>,
    /// `moat_ratelimit_decisions_total`, with this plugin's label.
    decisions: Decisions,
}

fn limit_of(r: &Rate, burst: Option<u64>) -> Limit {
    Limit {
        count: r.count,
        window_us: (r.per.as_micros() as u64).max(SEC),
        burst: burst.unwrap_or(r.count),
    }
}

/// How a cluster-scope `rate_limit` decides with Redis `r`: every decision in Redis, or
/// (`mode: fast`) locally and reconciled every `sync_interval`.
fn cluster_scope(c: &RateLimitConfig, fingerprint: &str, r: &Arc<Redis>) -> (Scope, OnRedisError) {
    let interval = c
        .sync_interval
        .map(|d| d.get().as_micros() as u64)
        .unwrap_or(DEFAULT_SYNC_US);
    let max_keys = c.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    let bucket = crate::checks::plugins::rate_algorithm(c) == RateAlgorithm::TokenBucket;
    let r = Arc::clone(r);
    let scope = match (c.mode == Some(ClusterMode::Fast), bucket) {
        (false, _) => Scope::Exact(Cluster::new(r, fingerprint)),
        (true, false) => Scope::Fast(Arc::new(Fast::new(r, fingerprint, interval, max_keys))),
        (true, true) => Scope::FastBucket(Arc::new(FastBucket::new(
            r,
            fingerprint,
            interval,
            max_keys,
        ))),
    };
    (scope, c.on_redis_error.unwrap_or(OnRedisError::Local))
}

impl RateLimit {
    /// Compile a `rate_limit`: the settings checked (`checks::plugins::rate_limit`), then
    /// built.
    pub fn compile(
        c: &RateLimitConfig,
        path: &str,
        env: &CompileEnv,
        errs: &mut ConfigErrors,
    ) -> Option<RateLimit> {
        let before = errs.checkpoint();
        crate::checks::plugins::rate_limit(c, path, errs);
        let settings = serde_json::to_string(c).unwrap_or_default();
        let local_only = [
            ("on_redis_error", c.on_redis_error.is_some()),
            ("mode", c.mode.is_some()),
            ("sync_interval", c.sync_interval.is_some()),
        ];
        let cluster = cluster_redis(c.scope, &local_only, path, env, errs)
            .map(|r| cluster_scope(c, &format!("{path}|{settings}"), r));
        let algo = match crate::checks::plugins::rate_algorithm(c) {
            RateAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
            RateAlgorithm::TokenBucket => Algorithm::TokenBucket,
            RateAlgorithm::FixedWindow => Algorithm::FixedWindow,
        };
        let scale = |r: &Rate| crate::checks::plugins::scaled_burst(c, r);
        let tiered = |r: &Rate| Tiered {
            limit: limit_of(r, scale(r)),
            message: format!("rate limit of {r} exceeded"),
        };
        let p = Self::build(
            "rate_limit",
            ErrorCode::RateLimited,
            &c.key,
            algo,
            tiered(&c.rate),
            c.tiers.iter().map(|(k, r)| (k.as_str(), tiered(r))),
            c.max_keys,
            path,
            &settings,
            cluster,
            env,
            errs,
        );
        (errs.clean_since(before)).then_some(p).flatten()
    }

    /// Compile a `quota`.
    pub fn compile_quota(
        c: &QuotaConfig,
        path: &str,
        env: &CompileEnv,
        errs: &mut ConfigErrors,
    ) -> Option<RateLimit> {
        let before = errs.checkpoint();
        let settings = serde_json::to_string(c).unwrap_or_default();
        let local_only = [("on_redis_error", c.on_redis_error.is_some())];
        let cluster = cluster_redis(c.scope, &local_only, path, env, errs).map(|r| {
            // Fixed windows on Redis's clock, aligned on the Unix epoch: UTC calendar
            // minutes, hours and days.
            let exact = Cluster::new(Arc::clone(r), &format!("{path}|{settings}"));
            (
                Scope::Exact(exact),
                c.on_redis_error.unwrap_or(OnRedisError::Local),
            )
        });
        let tiered = |r: &Rate| Tiered {
            limit: limit_of(r, None),
            message: format!("quota of {r} exceeded"),
        };
        let p = Self::build(
            "quota",
            ErrorCode::QuotaExceeded,
            &c.key,
            Algorithm::FixedWindow,
            tiered(&c.limit),
            c.tiers.iter().map(|(k, r)| (k.as_str(), tiered(r))),
            c.max_keys,
            path,
            &settings,
            cluster,
            env,
            errs,
        );
        (errs.clean_since(before)).then_some(p).flatten()
    }

    #[allow(clippy::too_many_arguments)]
    fn build<'a>(
        name: &'static str,
        code: ErrorCode,
        key: &str,
        algo: Algorithm,
        base: Tiered,
        tiers: impl Iterator<Item = (&'a str, Tiered)>,
        max_keys: Option<usize>,
        path: &str,
        settings: &str,
        cluster: Option<(Scope, OnRedisError)>,
        env: &CompileEnv,
        errs: &mut ConfigErrors,
    ) -> Option<RateLimit> {
        let key = KeySource::compile(key, &join(path, "key"), errs)?;
        if max_keys == Some(0) {
            errs.push(join(path, "max_keys"), "must be at least 1");
            return None;
        }
        let tiers: HashMap<Box<str>, Tiered> = tiers.map(|(k, t)| (k.into(), t)).collect();
        let idle_after = tiers
            .values()
            .chain([&base])
            .map(|t| algo.idle_after_us(&t.limit))
            .max()
            .unwrap_or(0);
        let max_keys = max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        let store = env
            .limiters
            .get_or_make(format!("{path}|{settings}"), || Store::new(max_keys));
        Some(RateLimit {
            name,
            code,
            key,
            algo,
            base,
            tiers,
            idle_after,
            store,
            cluster,
            decisions: Decisions::new(&env.metrics.ratelimit_decisions, name),
        })
    }

    /// The rate that applies to a consumer of `tier`.
    fn tier(&self, tier: Option<&str>) -> &Tiered {
        tier.and_then(|t| self.tiers.get(t)).unwrap_or(&self.base)
    }

    /// Decide for `key` at `now` (the request-independent core, used by benches).
    pub fn decide(
        &self,
        key: &str,
        tier: Option<&str>,
        now: u64,
    ) -> crate::ratelimit::algo::Outcome {
        let t = self.tier(tier);
        self.store.with_slot(key, now, self.idle_after, |s| {
            self.algo.decide(s, &t.limit, now)
        })
    }
}

/// The Redis client a limiter at `path` with `scope` uses: `None` for local scope (then
/// each `local_only` setting that is given is an error at its path) and, with an error at
/// `path.scope`, when `scope: cluster` has no `redis:` section.
pub(super) fn cluster_redis<'a>(
    scope: LimitScope,
    local_only: &[(&str, bool)],
    path: &str,
    env: &CompileEnv<'a>,
    errs: &mut ConfigErrors,
) -> Option<&'a Arc<Redis>> {
    if scope == LimitScope::Local {
        for (k, set) in local_only {
            if *set {
                errs.push(join(path, k), "only applies with scope: cluster");
            }
        }
        return None;
    }
    if env.redis.is_none() {
        errs.push(
            join(path, "scope"),
            "scope: cluster needs the redis: section",
        );
    }
    env.redis
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Write the noted `RateLimit-*` headers into `resp`.
pub fn write_headers(ctx: &RequestCtx, resp: &mut ResponseHead) {
    if let Some(h) = ctx.plugins.limits.headers {
        for (name, v) in [
            (&RATELIMIT_LIMIT, h.limit),
            (&RATELIMIT_REMAINING, h.remaining),
            (&RATELIMIT_RESET, h.reset),
        ] {
            // A static name clones without allocating.
            resp.headers.insert(name.clone(), HeaderValue::from(v));
        }
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        self.name
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            response: true,
            ..Phases::default()
        }
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let mut key = String::with_capacity(48);
        self.key.extract(&ctx.facts(session.req_header()), &mut key);
        let tier = ctx.identity.as_ref().and_then(|i| i.tier.as_deref());
        let t = self.tier(tier);
        let local = || {
            let now = now_us();
            self.store.with_slot(&key, now, self.idle_after, |s| {
                self.algo.decide(s, &t.limit, now)
            })
        };
        let out = match &self.cluster {
            None => local(),
            Some((scope, on_error)) => {
                // Always decided (and synced) locally, so syncs keep probing Redis while
                // it is unhealthy and `healthy` comes back by itself.
                let (healthy, out) = match scope {
                    Scope::FastBucket(f) => (
                        f.healthy(),
                        f.decide(&key, &t.limit, now_us(), self.idle_after),
                    ),
                    Scope::Fast(f) => (
                        f.healthy(),
                        f.decide(&key, self.algo, &t.limit, now_us(), self.idle_after),
                    ),
                    Scope::Exact(c) => (
                        true,
                        match c.decide(&key, self.algo, &t.limit).await {
                            Ok(out) => out,
                            Err(_) => return self.redis_failed(ctx, t, *on_error, local),
                        },
                    ),
                };
                match (healthy, on_error) {
                    (true, _) => out,
                    (false, OnRedisError::Local) => {
                        // The fast view is this instance's own limiter.
                        self.decisions.inc(ctx.route_name(), "error");
                        ctx.plugins.ratelimit = Some("error");
                        note(ctx, &out);
                        return self.verdict(ctx, t, out);
                    }
                    (false, on_error) => return self.redis_failed(ctx, t, *on_error, local),
                }
            }
        };
        note(ctx, &out);
        let result = if out.allowed { "allowed" } else { "limited" };
        self.decisions.inc(ctx.route_name(), result);
        self.verdict(ctx, t, out)
    }

    fn response(&self, _req: &RequestHeader, ctx: &RequestCtx, resp: &mut ResponseHead) {
        write_headers(ctx, resp);
    }
}

fn note(ctx: &mut RequestCtx, out: &Outcome) {
    ctx.plugins.limits.note(RateHeaders {
        limit: out.limit,
        remaining: out.remaining,
        reset: out.reset_s,
    });
}

impl RateLimit {
    /// Redis could not decide: count the error and apply `on_error`.
    fn redis_failed(
        &self,
        ctx: &mut RequestCtx,
        t: &Tiered,
        on_error: OnRedisError,
        local: impl FnOnce() -> Outcome,
    ) -> Flow {
        self.decisions.inc(ctx.route_name(), "error");
        ctx.plugins.ratelimit = Some("error");
        match on_error {
            OnRedisError::Allow => Flow::Continue,
            OnRedisError::Deny => Flow::Reply(Reply::error(
                ErrorCode::ServiceUnavailable,
                match self.code {
                    ErrorCode::QuotaExceeded => "the quota limiter is unavailable",
                    _ => "the rate limiter is unavailable",
                },
            )),
            OnRedisError::Local => {
                let out = local();
                note(ctx, &out);
                self.verdict(ctx, t, out)
            }
        }
    }

    fn verdict(&self, ctx: &mut RequestCtx, t: &Tiered, out: Outcome) -> Flow {
        if out.allowed {
            ctx.plugins.ratelimit.get_or_insert("allowed");
            return Flow::Continue;
        }
        ctx.plugins.ratelimit = Some("limited");
        Flow::Reply(Reply::error(self.code, t.message.clone()).with_header(
            http::header::RETRY_AFTER,
            HeaderValue::from(out.retry_after_s),
        ))
    }
}

impl super::CompilePlugin for crate::config::model::RateLimitConfig {
    fn compile_plugin(
        &self,
        here: &str,
        env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        RateLimit::compile(self, here, env, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}

impl super::CompilePlugin for crate::config::model::QuotaConfig {
    fn compile_plugin(
        &self,
        here: &str,
        env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        RateLimit::compile_quota(self, here, env, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}
