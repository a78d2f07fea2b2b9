//! Redis Sentinel (`redis.sentinel`): a real master, its replica and a `redis-sentinel`
//! on free ports. Two instances share limits through the master the sentinel names; the
//! master is killed, the sentinel promotes the replica, and limits are shared again within
//! a bounded time (see docs/operations.md, "Redis Sentinel").

use crate::harness::redis::{RedisSentinel, SENTINEL_DOWN_AFTER_MS, SENTINEL_MASTER};
use crate::harness::{request, wait_until, Moat, Upstream};
use std::time::{Duration, Instant};

/// From the master's death to limits shared again: the sentinel's
/// `down-after-milliseconds` (1 s here), its failover (a few seconds on a loaded test
/// machine), then at most about 100 ms for moat to ask the sentinels again.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

fn tenant(m: &Moat, t: &str) -> u16 {
    request(m.port, "GET", "/x", &[("x-tenant", t)], b"").status
}

/// `n` requests for `t`, alternating between `a` and `b`.
fn alternate(a: &Moat, b: &Moat, t: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| tenant(if i % 2 == 0 { a } else { b }, t))
        .collect()
}

#[test]
fn limits_are_shared_through_the_master_the_sentinel_names_before_and_after_a_failover() {
    let mut s = RedisSentinel::start();
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ sentinel: {{ master: {SENTINEL_MASTER}, nodes: [\"127.0.0.1:{}\"] }}, timeout: 200ms }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: \"header:x-tenant\", rate: 3/m, scope: cluster, on_redis_error: deny }}\n",
        s.port,
        up.address()
    );
    let (a, b) = (Moat::start(&body), Moat::start(&body));
    assert_eq!(alternate(&a, &b, "before", 5), [200, 200, 200, 429, 429]);
    assert_eq!(a.metric("moat_redis_errors_total"), Some(0.0));
    let keys = s.master.cli(&["--scan"]);
    assert!(
        keys.contains(":before}"),
        "the master holds the count: {keys}"
    );

    let old = s.master.port;
    s.master.kill();
    let killed = Instant::now();
    // Meanwhile calls fail and `on_redis_error: deny` answers 503; then the promoted
    // replica decides.
    let mut named = None;
    let back = wait_until(FAILOVER_BOUND, || {
        if named.is_none() && s.master_port() == Some(s.replica.port) {
            named = Some(killed.elapsed());
        }
        tenant(&a, "after") == 200
    });
    let took = killed.elapsed();
    eprintln!(
        "sentinel failover: the sentinel named the replica after {named:?}, limits were back {took:?} after the master died (down-after {SENTINEL_DOWN_AFTER_MS} ms)"
    );
    assert!(
        back,
        "no decision through the new master within {FAILOVER_BOUND:?}"
    );
    assert_eq!(
        s.master_port(),
        Some(s.replica.port),
        "the sentinel promoted the replica"
    );
    assert_ne!(s.replica.port, old);
    // Both instances follow it: the new limit is shared again (one of three already used).
    let back_b = wait_until(Duration::from_secs(5), || tenant(&b, "probe") == 200);
    assert!(back_b, "the second instance did not follow the failover");
    assert_eq!(alternate(&a, &b, "after", 4), [200, 200, 429, 429]);
    let keys = s.replica.cli(&["--scan"]);
    assert!(
        keys.contains(":after}"),
        "the new master holds the count: {keys}"
    );
}
