//! The proxy's per-request context ([`ProxyCtx`], Pingora's `CTX`): the config snapshot
//! the request started with, its route, its upstream and body state and the reply moat
//! made, around the context the plugins see ([`RequestCtx`], reached through `Deref`).

use crate::ctx::RequestCtx;
use crate::plugin::Chain;
use crate::reply::{ErrorCode, Reply};
use crate::runtime::{Route, Runtime};
use crate::upstream::{InFlight, Pool};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Instant;

/// Everything one request carries between the proxy's phases.
pub struct ProxyCtx {
    /// The config snapshot for this request's whole life.
    pub rt: Arc<Runtime>,
    /// The matched route: set only through [`ProxyCtx::set_route`], which also gives
    /// the plugins' context its name (readable by the proxy's modules, which borrow it
    /// beside other fields).
    pub(super) route: Option<Arc<Route>>,
    /// Upstream state.
    pub upstream: UpstreamState,
    /// Request body state.
    pub body: BodyState,
    /// What moat answers, and who logs the request.
    pub answer: AnswerState,
    /// What plugins see of the request.
    pub req: RequestCtx,
}

impl ProxyCtx {
    /// A fresh context on snapshot `rt`.
    pub fn new(rt: Arc<Runtime>) -> ProxyCtx {
        ProxyCtx {
            rt,
            route: None,
            upstream: UpstreamState::default(),
            body: BodyState {
                limit: u64::MAX,
                seen: 0,
                malformed: None,
            },
            answer: AnswerState::default(),
            req: RequestCtx::new(),
        }
    }

    /// The matched route, if any.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_deref()
    }

    /// Take `route` as this request's route.
    pub fn set_route(&mut self, route: &Arc<Route>) {
        self.req.set_route_name(&route.name);
        self.route = Some(Arc::clone(route));
    }

    /// The chain that applies to this request: the route's, or the global one when no
    /// route matched.
    pub fn chain(&self) -> &Chain {
        chain_of(&self.rt, self.route.as_deref())
    }

    /// [`ProxyCtx::chain`], with the plugins' context to run it on.
    pub fn chain_and_req(&mut self) -> (&Chain, &mut RequestCtx) {
        (chain_of(&self.rt, self.route.as_deref()), &mut self.req)
    }
}

/// The chain of `route` (`None`: no route matched, the global chain) in `rt`.
pub fn chain_of<'a>(rt: &'a Runtime, route: Option<&'a Route>) -> &'a Chain {
    match route {
        Some(r) => &r.chain,
        None => &rt.global_chain,
    }
}

impl Deref for ProxyCtx {
    type Target = RequestCtx;
    fn deref(&self) -> &RequestCtx {
        &self.req
    }
}

impl DerefMut for ProxyCtx {
    fn deref_mut(&mut self) -> &mut RequestCtx {
        &mut self.req
    }
}

/// The request body of one request.
pub struct BodyState {
    /// The body limit for this request (route's, else the server's).
    pub limit: u64,
    /// Request body bytes seen so far.
    pub seen: u64,
    /// The request's chunked body is malformed in the bytes read with its head: it is
    /// refused (`400`) before anything else, and its connection closed.
    pub malformed: Option<crate::conn::Malformed>,
}

/// What moat answers a request, when it answers itself, and who logs it.
#[derive(Default)]
pub struct AnswerState {
    /// The error code of a reply moat made, for logs and metrics.
    pub code: Option<ErrorCode>,
    /// The reply for a refusal decided while proxying (a request body a plugin refused),
    /// sent by `fail_to_proxy` instead of the generic error.
    pub pending: Option<Reply>,
    /// The connection was taken over by a relay task (an upgrade moat relays itself, see
    /// `proxy::upgrade`): that task logs the request; Pingora's `logging` must not.
    pub detached: bool,
}

/// Upstream-side state of one request.
#[derive(Default)]
pub struct UpstreamState {
    /// The pool the route sends to.
    pub pool: Option<Arc<Pool>>,
    /// The target currently in use, counted in flight.
    pub current: Option<InFlight>,
    /// Targets already tried (for retries).
    pub tried: Vec<usize>,
    /// Connection attempts made so far.
    pub attempts: u32,
    /// When the first target was chosen.
    pub started: Option<Instant>,
    /// When the upstream response head arrived or the attempt ended.
    pub finished: Option<Instant>,
}

impl UpstreamState {
    /// The pool and the index of the target the current attempt goes to, once one was
    /// chosen.
    pub fn target(&self) -> Option<(&Pool, usize)> {
        match (&self.pool, &self.current) {
            (Some(pool), Some(cur)) => Some((pool, cur.index())),
            _ => None,
        }
    }

    /// Choose the next target of `pool` for hash key `key` (one not tried yet) and count
    /// the attempt, with the target in flight; `None` when no healthy target is left.
    pub fn next_target(&mut self, pool: &Arc<Pool>, key: &[u8]) -> Option<usize> {
        let idx = pool.select(key, &self.tried)?;
        self.tried.push(idx);
        self.attempts += 1;
        self.current = Some(pool.begin(idx));
        self.started.get_or_insert_with(Instant::now);
        Some(idx)
    }

    /// The retry rule: another attempt may follow a failed one while the pool's `retries`
    /// allow it and a target not tried yet is healthy.
    pub fn may_retry(&self, pool: &Pool) -> bool {
        self.attempts <= pool.retries && pool.has_candidate(&self.tried)
    }
}
