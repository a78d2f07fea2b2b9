//! What the client learns from the servers and keeps up to date: a Redis Cluster's slot
//! map, the master a Sentinel names. One [`Topology`] holds the current value and refreshes
//! it in a background task that no caller's timeout cancels:
//! - first on the first call (callers wait for it within their own `redis.timeout`; while
//!   the first discovery keeps failing, calls are skipped like a failing node's);
//! - then whenever the value may be wrong ([`Topology::stale`]: a failed node, a call that
//!   timed out, a redirection...), at most once per [`REFRESH_EVERY`] and one at a time;
//! - and every [`REFRESH_PERIOD`] while calls keep coming (checked by the calls: nothing
//!   runs for an idle or dropped client).

use super::breaker::Breaker;
use super::RedisError;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Least time between two background refreshes.
pub const REFRESH_EVERY: Duration = Duration::from_millis(100);
/// Longest time a client in use keeps a value without asking for it again.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(15);

/// A refresh: asks the servers, gives the new value.
pub type Refresh<T> = BoxFuture<'static, Result<T, RedisError>>;

/// A value learnt from the servers.
pub struct Topology<T> {
    current: RwLock<Option<Arc<T>>>,
    /// A refresh task is running (one at a time).
    refreshing: AtomicBool,
    /// When the latest refresh started (ms since `epoch`, 0 before the first).
    last_refresh_ms: AtomicU64,
    /// Sent when a refresh ends: its error, `None` when it installed a value.
    done: tokio::sync::watch::Sender<Option<String>>,
    /// Guards the first discovery.
    first: Arc<Breaker>,
    epoch: Instant,
}

impl<T> Default for Topology<T> {
    fn default() -> Self {
        Topology {
            current: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            last_refresh_ms: AtomicU64::new(0),
            done: tokio::sync::watch::channel(None).0,
            first: Arc::new(Breaker::new()),
            epoch: Instant::now(),
        }
    }
}

impl<T: Send + Sync + 'static> Topology<T> {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The value in use, if any was learnt.
    pub fn current(&self) -> Option<Arc<T>> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Use `value` from now on.
    pub fn install(&self, value: T) {
        let value = Some(Arc::new(value));
        match self.current.write() {
            Ok(mut c) => *c = value,
            Err(p) => *p.into_inner() = value,
        }
    }

    /// The value, discovered first (waiting for the discovery under way, or starting one
    /// with `refresh`) when none was learnt yet. Cancelling the wait does not cancel the
    /// discovery.
    pub async fn get(
        self: &Arc<Self>,
        refresh: impl FnOnce() -> Refresh<T>,
    ) -> Result<Arc<T>, RedisError> {
        if let Some(v) = self.current() {
            return Ok(v);
        }
        // Subscribe before looking again: a refresh ending from now on wakes us.
        let mut done = self.done.subscribe();
        if let Some(v) = self.current() {
            return Ok(v);
        }
        if !self.refreshing.swap(true, Ordering::AcqRel) {
            // None under way: start one, unless the first discovery keeps failing (its task,
            // which no caller cancels, records the outcome).
            let admitted = match tokio::runtime::Handle::try_current() {
                Ok(rt) if self.first.admit().is_some() => Some(rt),
                _ => None,
            };
            let Some(rt) = admitted else {
                self.refreshing.store(false, Ordering::Release);
                return Err(RedisError::Open);
            };
            self.spawn(&rt, refresh(), Some(Arc::clone(&self.first)));
        }
        if done.changed().await.is_err() {
            return Err(RedisError::Unreachable("client dropped".into()));
        }
        if let Some(v) = self.current() {
            return Ok(v);
        }
        let why = done.borrow().clone().unwrap_or_default();
        Err(RedisError::Unreachable(format!("discovery failed: {why}")))
    }

    /// The value for a call: [`Topology::get`], then a background refresh when the latest
    /// one is [`REFRESH_PERIOD`] old.
    pub async fn for_call(
        self: &Arc<Self>,
        refresh: impl Fn() -> Refresh<T>,
    ) -> Result<Arc<T>, RedisError> {
        let v = self.get(&refresh).await?;
        self.refresh_if_old(refresh);
        Ok(v)
    }

    /// Refresh when the latest refresh is [`REFRESH_PERIOD`] old.
    pub fn refresh_if_old(self: &Arc<Self>, refresh: impl FnOnce() -> Refresh<T>) {
        let last = self.last_refresh_ms.load(Ordering::Acquire);
        if self.now_ms().saturating_sub(last) >= REFRESH_PERIOD.as_millis() as u64 {
            self.stale(refresh);
        }
    }

    /// The value may be wrong: refresh it in the background (at most once per
    /// [`REFRESH_EVERY`], one refresh at a time; not before the first value, which the
    /// calls ask for themselves).
    pub fn stale(self: &Arc<Self>, refresh: impl FnOnce() -> Refresh<T>) {
        let now = self.now_ms();
        let last = self.last_refresh_ms.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < REFRESH_EVERY.as_millis() as u64 {
            return;
        }
        if self.current().is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.spawn(&rt, refresh(), None);
    }

    /// Run `refresh` in a task (the caller holds `refreshing`), installing its value,
    /// recording its outcome on `breaker` and waking the callers waiting for it.
    fn spawn(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        refresh: Refresh<T>,
        breaker: Option<Arc<Breaker>>,
    ) {
        self.last_refresh_ms
            .store(self.now_ms().max(1), Ordering::Release);
        let me = Arc::clone(self);
        rt.spawn(async move {
            let r = refresh.await;
            if let Some(b) = breaker {
                match r {
                    Ok(_) => b.success(),
                    Err(_) => {
                        b.failure();
                    }
                }
            }
            let err = match r {
                Ok(v) => {
                    me.install(v);
                    None
                }
                Err(e) => {
                    log::warn!("redis: refresh failed: {e:?}");
                    Some(format!("{e:?}"))
                }
            };
            me.refreshing.store(false, Ordering::Release);
            me.done.send_replace(err);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::atomic::AtomicUsize;

    fn counting(n: &Arc<AtomicUsize>, ok: bool) -> impl FnOnce() -> Refresh<u32> {
        let n = Arc::clone(n);
        move || {
            async move {
                let k = n.fetch_add(1, Ordering::SeqCst) as u32;
                if ok {
                    Ok(k)
                } else {
                    Err(RedisError::Io("no".into()))
                }
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn first_value_then_rate_limited_refreshes() {
        let t: Arc<Topology<u32>> = Arc::default();
        let n = Arc::new(AtomicUsize::new(0));
        assert_eq!(*t.get(counting(&n, true)).await.unwrap(), 0);
        // Known: no refresh on the way.
        assert_eq!(*t.get(counting(&n, true)).await.unwrap(), 0);
        // Just refreshed: stale() waits for REFRESH_EVERY.
        t.stale(counting(&n, true));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        tokio::time::sleep(REFRESH_EVERY + Duration::from_millis(20)).await;
        let mut done = t.done.subscribe();
        t.stale(counting(&n, true));
        done.changed().await.unwrap();
        assert_eq!(*t.current().unwrap(), 1);
        // A failed refresh keeps the value.
        tokio::time::sleep(REFRESH_EVERY + Duration::from_millis(20)).await;
        t.stale(counting(&n, false));
        done.changed().await.unwrap();
        assert_eq!(*t.current().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_failing_first_discovery_opens_the_breaker() {
        let t: Arc<Topology<u32>> = Arc::default();
        let n = Arc::new(AtomicUsize::new(0));
        for _ in 0..crate::redis::breaker::TRIP_AFTER {
            assert!(matches!(
                t.get(counting(&n, false)).await,
                Err(RedisError::Unreachable(_))
            ));
        }
        assert!(matches!(
            t.get(counting(&n, true)).await,
            Err(RedisError::Open)
        ));
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_value_in_use_is_refreshed_periodically() {
        let mut t: Topology<u32> = Topology::default();
        t.epoch -= REFRESH_PERIOD * 2;
        let t = Arc::new(t);
        let n = Arc::new(AtomicUsize::new(0));
        t.install(7);
        t.last_refresh_ms.store(1, Ordering::Release);
        let mut done = t.done.subscribe();
        t.refresh_if_old(counting(&n, true));
        let started = t.last_refresh_ms.load(Ordering::Acquire);
        assert!(started >= REFRESH_PERIOD.as_millis() as u64, "{started}");
        done.changed().await.unwrap();
        // Recent: not again.
        t.refresh_if_old(counting(&n, true));
        assert_eq!(t.last_refresh_ms.load(Ordering::Acquire), started);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
