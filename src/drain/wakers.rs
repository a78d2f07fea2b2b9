//! [`Wakers`]: the tasks to wake when the drain moves on (a connection waiting for its
//! next request, a request waiting on its client, a WebSocket relay), kept so that
//! waiting costs nothing per request.
//!
//! A task registers its waker the first time it waits and keeps its place until it ends;
//! waiting again with the same waker (the same task: a connection is served by one task
//! from start to end) only compares it with the copy it kept, without a lock. Places are
//! spread over shards by a hint (the connection's file descriptor: those open at once
//! differ), each on its own cache line, so connections starting and ending on different
//! threads rarely meet on a lock or a line. Pingora's own shutdown notice (a `Notify` per
//! thread) registers and unregisters each request's wait instead, which is the cost this
//! avoids; a single `tokio::sync::Notify` would do the same on one lock.

use crossbeam_utils::CachePadded;
use slab::Slab;
use std::sync::Mutex;
use std::task::Waker;

/// Number of shards (a power of two).
const SHARDS: usize = 16;

/// Registered wakers, woken all at once by [`Wakers::wake_all`].
pub(super) struct Wakers {
    shards: Box<[CachePadded<Mutex<Slab<Waker>>>]>,
}

/// One task's place in a [`Wakers`].
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// Shard and key, once registered.
    at: Option<(usize, usize)>,
    /// The waker registered, to tell whether it changed without taking the lock.
    waker: Option<Waker>,
}

impl Wakers {
    pub(super) fn new() -> Wakers {
        Wakers {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(Slab::new())))
                .collect(),
        }
    }

    /// Register `waker` in `slot` (in shard `hint`, the first time); a waker that would
    /// wake the same task as the one registered costs no lock.
    pub(super) fn register(&self, slot: &mut Slot, waker: &Waker, hint: usize) {
        if slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        match slot.at {
            Some((shard, key)) => {
                let mut s = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
                if let Some(w) = s.get_mut(key) {
                    w.clone_from(waker);
                }
            }
            None => {
                let shard = hint % SHARDS;
                let key = self.shards[shard]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(waker.clone());
                slot.at = Some((shard, key));
            }
        }
        slot.waker = Some(waker.clone());
    }

    /// Give `slot`'s place back.
    pub(super) fn unregister(&self, slot: &mut Slot) {
        slot.waker = None;
        if let Some((shard, key)) = slot.at.take() {
            self.shards[shard]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_remove(key);
        }
    }

    /// Wake every registered task (they stay registered).
    pub(super) fn wake_all(&self) {
        for shard in self.shards.iter() {
            for (_, w) in shard.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                w.wake_by_ref();
            }
        }
    }

    /// How many tasks are registered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    #[test]
    fn registered_tasks_are_woken_until_they_leave() {
        let w = Wakers::new();
        let (c1, w1) = waker();
        let (c2, w2) = waker();
        let (mut s1, mut s2) = (Slot::default(), Slot::default());
        w.register(&mut s1, &w1, 0);
        w.register(&mut s1, &w1, 0);
        w.register(&mut s2, &w2, 1);
        assert_eq!(w.len(), 2);
        w.wake_all();
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        assert_eq!(c2.0.load(Ordering::SeqCst), 1);
        // A new waker replaces the old one in the same place.
        let (c3, w3) = waker();
        w.register(&mut s1, &w3, 5);
        assert_eq!(w.len(), 2);
        w.unregister(&mut s2);
        w.unregister(&mut s2);
        w.wake_all();
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        assert_eq!(c2.0.load(Ordering::SeqCst), 1);
        assert_eq!(c3.0.load(Ordering::SeqCst), 1);
        w.unregister(&mut s1);
        assert_eq!(w.len(), 0);
    }
}
