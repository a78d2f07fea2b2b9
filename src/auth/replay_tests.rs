use super::*;

fn key(i: u32) -> SigKey {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k
}

fn sig(set: &ReplaySet, i: u32, ttl: i64, capacity: usize) -> Signature<'_> {
    Signature {
        set,
        name: "k",
        key: key(i),
        ttl,
        capacity,
        margin: 300,
        on_redis_error: ReplayOnRedisError::Local,
    }
}

#[tokio::test]
async fn local_guard() {
    let g = LocalReplay::new();
    let (a, b) = (g.set([1; 32]), g.set([2; 32]));
    assert_eq!(g.first_use(sig(&a, 7, 300, 100), 1000).await, Use::First);
    assert_eq!(g.first_use(sig(&a, 7, 300, 100), 1100).await, Use::Replay);
    assert_eq!(g.first_use(sig(&a, 7, 300, 100), 1300).await, Use::First);
    // The same signature bytes under another credential are another signature.
    assert_eq!(g.first_use(sig(&b, 7, 300, 100), 1300).await, Use::First);
    // The same secret is the same memory.
    assert!(Arc::ptr_eq(&a, &g.set([1; 32])));
}

#[tokio::test]
async fn one_credential_cannot_lock_out_another() {
    // Regression: one cache for everyone; a consumer sending more distinct signed
    // requests than it held filled it, and every other consumer's fresh request was
    // then refused as a replay.
    let g = LocalReplay::new();
    let (flood, other) = (g.set([1; 32]), g.set([2; 32]));
    for i in 0..64 {
        assert_eq!(g.first_use(sig(&flood, i, 300, 64), 1000).await, Use::First);
    }
    for i in 64..200 {
        assert_eq!(
            g.first_use(sig(&flood, i, 300, 64), 1000).await,
            Use::Full { retry_after: 300 }
        );
    }
    for i in 0..64 {
        assert_eq!(g.first_use(sig(&other, i, 300, 64), 1000).await, Use::First);
    }
    // The flood's live signatures are all still remembered (none evicted)...
    assert_eq!(
        g.first_use(sig(&flood, 3, 300, 64), 1010).await,
        Use::Replay
    );
    // ...and room comes back as they expire.
    assert_eq!(
        g.first_use(sig(&flood, 500, 300, 64), 1299).await,
        Use::Full { retry_after: 1 }
    );
    assert_eq!(
        g.first_use(sig(&flood, 500, 300, 64), 1300).await,
        Use::First
    );
}

#[test]
fn a_set_holds_its_live_signatures_only() {
    // Regression: expired signatures were dropped only once a set was full, so steady
    // traffic filled every set to its capacity (100,000 by default) and a full set was
    // then swept whole, under its lock, once per expiry.
    let set = ReplaySet::default();
    for i in 0..2000 {
        let now = 1000 + i64::from(i);
        assert_eq!(set.record(&sig(&set, i, 10, 100_000), now), Use::First);
        assert!(set.len() <= 10, "{} held at {now}", set.len());
    }
    // Expiries out of order (longer and shorter windows mixed) leave in order too.
    let set = ReplaySet::default();
    for i in 0..100 {
        let ttl = if i % 2 == 0 { 50 } else { 5 };
        set.record(&sig(&set, i, ttl, 1000), 1000);
    }
    for i in 0..10 {
        set.record(&sig(&set, 1000 + i, 50, 1000), 1005);
    }
    assert_eq!(set.len(), 60, "the 50 short ones left, the long ones stay");
    assert_eq!(set.record(&sig(&set, 2, 50, 1000), 1049), Use::Replay);
    // A signature used again once expired, before it was dropped, is a new one; its old
    // heap entry, when it comes up, leaves the new one alone.
    let set = ReplaySet::default();
    for i in 0..9 {
        set.record(&sig(&set, i, 1, 100), 1000);
    }
    set.record(&sig(&set, 99, 2, 100), 1000);
    assert_eq!(set.record(&sig(&set, 99, 100, 100), 1002), Use::First);
    assert_eq!(set.record(&sig(&set, 50, 100, 100), 1002), Use::First);
    assert_eq!(set.sweep(1003), 2);
    assert_eq!(set.record(&sig(&set, 99, 100, 100), 1003), Use::Replay);
}

#[test]
fn a_request_pays_for_a_few_expired_signatures_at_most() {
    // 10,000 signatures expire in the same second: the next request drops a few of
    // them, not all (what it would pay under its credential's lock); the sweep the rest.
    let set = ReplaySet::default();
    for i in 0..10_000 {
        set.record(&sig(&set, i, 10, 10_000), 1000);
    }
    assert_eq!(set.record(&sig(&set, 20_000, 10, 10_000), 1010), Use::First);
    assert_eq!(set.len(), 10_000 - FORGET_PER_RECORD + 1);
    // Full, with expired ones held: one makes room, still no sweep of the whole set.
    let full = ReplaySet::default();
    for i in 0..100 {
        full.record(&sig(&full, i, 10, 100), 1000);
    }
    assert_eq!(
        full.record(&sig(&full, 500, 10, 100), 1005),
        Use::Full { retry_after: 5 }
    );
    assert_eq!(full.record(&sig(&full, 500, 10, 100), 1010), Use::First);
    assert_eq!(full.len(), 100 - FORGET_PER_RECORD + 1);
    assert_eq!(set.sweep(1010), 1);
}

#[test]
fn sweeping_empties_idle_sets_and_forgets_unused_ones() {
    let g = LocalReplay::new();
    let used = g.set([1; 32]);
    let removed = g.set([2; 32]);
    for i in 0..10_000 {
        used.record(&sig(&used, i, 60, 100_000), 1000);
    }
    removed.record(&sig(&removed, 1, 60, 100), 1000);
    let room = used.lock().expires.capacity();
    // The credential of `removed` leaves the config: its set stays while it holds a live
    // signature (restoring the credential must not reopen its window)...
    drop(removed);
    g.sweep(1030);
    assert_eq!(g.sets(), 2);
    assert_eq!(used.len(), 10_000);
    assert!(
        g.set([2; 32]).seen(&key(1), 1030),
        "restored within the window: the signature is still known"
    );
    // ...and goes once they expired; an idle set still in use is emptied and shrunk.
    g.sweep(1060);
    assert_eq!(g.sets(), 1);
    assert!(used.is_empty());
    assert!(
        used.lock().expires.capacity() < room / 4,
        "room given back: {} of {room}",
        used.lock().expires.capacity()
    );
    drop(used);
    g.sweep(1061);
    assert_eq!(g.sets(), 0);
}
