//! `concurrency`: at most `max` requests in flight per key on this instance. The slot is
//! an RAII guard kept in the request context, so it is released whenever the context
//! drops: completion, error reply, client abort, upstream timeout. Refusals: 429
//! `CONCURRENCY_LIMITED` with `Retry-After: 1`.

use super::{CompileEnv, Flow, Phases, Plugin};
use crate::config::error::{join, ConfigErrors};
use crate::config::model::ConcurrencyConfig;
use crate::ctx::RequestCtx;
use crate::limit::store::Inflight;
use crate::limit::KeySource;
use crate::reply::{ErrorCode, Reply};
use async_trait::async_trait;
use http::HeaderValue;
use pingora_proxy::Session;
use prometheus::IntCounterVec;
use std::sync::Arc;

/// The compiled plugin.
pub struct Concurrency {
    key: KeySource,
    max: u32,
    message: String,
    inflight: Arc<Inflight>,
    decisions: IntCounterVec,
}

impl Concurrency {
    /// Compile, recording problems under `path`.
    pub fn compile(
        c: &ConcurrencyConfig,
        path: &str,
        env: &CompileEnv,
        errs: &mut ConfigErrors,
    ) -> Option<Concurrency> {
        let key = KeySource::compile(&c.key, &join(path, "key"), errs)?;
        if c.max == 0 {
            errs.push(join(path, "max"), "must be at least 1");
            return None;
        }
        // Slots held across a reload stay counted: the key only depends on the place.
        let inflight = env
            .limits
            .get_or_make(format!("{path}|concurrency|{}", c.key), Inflight::default);
        Some(Concurrency {
            key,
            max: c.max,
            message: format!("more than {} requests in flight", c.max),
            inflight,
            decisions: env.metrics.ratelimit_decisions.clone(),
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
        self.key.extract(session.req_header(), ctx, &mut key);
        let held = self.inflight.acquire(&key, self.max);
        let result = if held.is_some() { "allowed" } else { "limited" };
        self.decisions
            .with_label_values(&[ctx.route_name(), "concurrency", result])
            .inc();
        match held {
            Some(h) => {
                ctx.limits.held.push(h);
                ctx.ratelimit.get_or_insert("allowed");
                Flow::Continue
            }
            None => {
                ctx.ratelimit = Some("limited");
                Flow::Reply(
                    Reply::error(ErrorCode::ConcurrencyLimited, self.message.clone())
                        .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                )
            }
        }
    }
}
