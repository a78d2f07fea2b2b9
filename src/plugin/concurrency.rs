//! `concurrency`: at most `max` requests in flight per key, on this instance (`scope:
//! local`, default) or across every instance sharing the `redis:` (`scope: cluster`: a
//! lease per slot in Redis, see `ratelimit::lease`; `on_redis_error` allow, deny with 503 or
//! local — this instance's own count — [local]). The slot is an RAII guard kept in the
//! request context, so it is released whenever the context drops: completion, error
//! reply, client abort, upstream timeout. Refusals: 429 `CONCURRENCY_LIMITED` with
//! `Retry-After: 1`.

use super::{CompileEnv, Flow, Phases, Plugin};
use crate::config::error::{join, ConfigErrors};
use crate::config::model::{ConcurrencyConfig, OnRedisError};
use crate::ctx::RequestCtx;
use crate::metrics::Decisions;
use crate::ratelimit::lease::{Leases, DEFAULT_LEASE};
use crate::ratelimit::store::Inflight;
use crate::ratelimit::KeySource;
use crate::reply::{ErrorCode, Reply};
use async_trait::async_trait;
use http::HeaderValue;
use pingora_proxy::Session;
use std::sync::Arc;

/// The compiled plugin.
pub struct Concurrency {
    key: KeySource,
    max: u32,
    message: String,
    inflight: Arc<Inflight>,
    /// Cluster scope: the leases and what to do when Redis fails.
    cluster: Option<(Arc<Leases>, OnRedisError)>,
    /// `moat_ratelimit_decisions_total`, with this plugin's label.
    decisions: Decisions,
}

impl Concurrency {
    /// Compile, recording problems under `path`.
    pub fn compile(
        c: &ConcurrencyConfig,
        path: &str,
        env: &CompileEnv,
        errs: &mut ConfigErrors,
    ) -> Option<Concurrency> {
        let before = errs.checkpoint();
        let local_only = [
            ("on_redis_error", c.on_redis_error.is_some()),
            ("lease", c.lease.is_some()),
        ];
        let redis = super::rate_limit::cluster_redis(c.scope, &local_only, path, env, errs);
        crate::checks::plugins::concurrency(c, path, errs);
        let lease = c.lease.map_or(DEFAULT_LEASE, |d| d.get());
        let key = KeySource::compile(&c.key, &join(path, "key"), errs)?;
        if !errs.clean_since(before) {
            return None;
        }
        // Every instance with this config names the same Redis keys; the state (live
        // leases, renewal task) carries over a reload that keeps the place, lease and
        // Redis client.
        let cluster = redis.map(|r| {
            let name = format!("{path}|concurrency|{}", c.key);
            let leases = env.limiters.get_or_make(
                format!("{name}|cluster|{lease:?}|{:p}", Arc::as_ptr(r)),
                || Leases::new(Arc::clone(r), &name, lease),
            );
            (leases, c.on_redis_error.unwrap_or(OnRedisError::Local))
        });
        // Slots held across a reload stay counted: the key only depends on the place.
        let inflight = env
            .limiters
            .get_or_make(format!("{path}|concurrency|{}", c.key), Inflight::default);
        Some(Concurrency {
            key,
            max: c.max,
            message: format!("more than {} requests in flight", c.max),
            inflight,
            cluster,
            decisions: Decisions::new(&env.metrics.ratelimit_decisions, "concurrency"),
        })
    }
}

#[async_trait]
impl Plugin for Concurrency {
    fn name(&self) -> &'static str {
        "concurrency"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let mut key = String::with_capacity(48);
        self.key.extract(&ctx.facts(session.req_header()), &mut key);
        let allowed = match &self.cluster {
            None => self
                .inflight
                .acquire(&key, self.max)
                .map(|h| ctx.plugins.limits.held.push(h)),
            Some((leases, on_error)) => match leases.acquire(&key, self.max).await {
                Ok(lease) => lease.map(|l| ctx.plugins.limits.leases.push(l)),
                Err(_) => {
                    self.count(ctx, "error");
                    ctx.plugins.ratelimit = Some("error");
                    match on_error {
                        OnRedisError::Allow => return Flow::Continue,
                        OnRedisError::Deny => {
                            return Flow::Reply(Reply::error(
                                ErrorCode::ServiceUnavailable,
                                "the concurrency limiter is unavailable",
                            ))
                        }
                        OnRedisError::Local => {
                            return match self.inflight.acquire(&key, self.max) {
                                Some(h) => {
                                    ctx.plugins.limits.held.push(h);
                                    Flow::Continue
                                }
                                None => self.refuse(ctx),
                            };
                        }
                    }
                }
            },
        };
        match allowed {
            Some(()) => {
                self.count(ctx, "allowed");
                ctx.plugins.ratelimit.get_or_insert("allowed");
                Flow::Continue
            }
            None => {
                self.count(ctx, "limited");
                self.refuse(ctx)
            }
        }
    }
}

impl Concurrency {
    fn count(&self, ctx: &RequestCtx, result: &str) {
        self.decisions.inc(ctx.route_name(), result);
    }

    fn refuse(&self, ctx: &mut RequestCtx) -> Flow {
        ctx.plugins.ratelimit = Some("limited");
        Flow::Reply(
            Reply::error(ErrorCode::ConcurrencyLimited, self.message.clone())
                .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
        )
    }
}

impl super::CompilePlugin for crate::config::model::ConcurrencyConfig {
    fn compile_plugin(
        &self,
        here: &str,
        env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        Concurrency::compile(self, here, env, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}
