//! A single Redis server (`redis.url`) whose connection stops being the right one: the
//! server goes silent while its name now points at another (a dead VM, a blackholed path,
//! the DNS failover of a managed primary), or it is demoted to a replica (`READONLY`).
//! moat connects again — resolving the name again — instead of waiting on the old
//! connection until TCP gives up (~15 minutes). The name is a [`Relay`] in front of real
//! `redis-server`s.

use crate::harness::redis::RedisServer;
use crate::harness::relay::Relay;
use crate::harness::{request, wait_until, Moat, Upstream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A route whose limiter fails closed: 200 when Redis answered, 503 when it did not.
fn config(redis_port: u16, up: &Upstream) -> String {
    format!(
        "redis: {{ url: \"redis://127.0.0.1:{redis_port}/0\", timeout: 100ms }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 100000/m, scope: cluster, on_redis_error: deny }}\n",
        up.address()
    )
}

fn status(m: &Moat) -> u16 {
    request(m.port, "GET", "/", &[], b"").status
}

#[test]
fn a_server_gone_silent_is_left_for_the_one_its_name_points_at_now() {
    let up = Upstream::start("app");
    let (old, new) = (RedisServer::start(), RedisServer::start());
    let name = Relay::start(old.port);
    let m = Moat::start(&config(name.port, &up));
    for _ in 0..5 {
        assert_eq!(status(&m), 200);
    }
    // The name moves to the new server; the old one stops answering on the connection
    // moat holds (the kernel still acknowledges every byte: TCP sees nothing wrong).
    name.point_at(new.port);
    old.signal("STOP");
    let t = Instant::now();
    // A few calls time out, the breaker opens and drops the connection, its probe
    // (500 ms later) connects again: to the new server.
    let back = wait_until(Duration::from_secs(5), || status(&m) == 200);
    eprintln!("served again after {:?}", t.elapsed());
    assert!(back, "still failing: {}", m.logs());
    assert_eq!(name.connections.load(Ordering::SeqCst), 2);
    assert_ne!(
        new.cli(&["DBSIZE"]),
        "0",
        "the limiter's key is on the new server"
    );
}

#[test]
fn a_demoted_primary_is_left_for_the_new_one() {
    let up = Upstream::start("app");
    let old = RedisServer::start();
    let new = RedisServer::start_replica_of(&old);
    let synced = wait_until(Duration::from_secs(15), || {
        new.cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    assert!(synced, "the replica did not sync");
    let name = Relay::start(old.port);
    let m = Moat::start(&config(name.port, &up));
    for _ in 0..5 {
        assert_eq!(status(&m), 200);
    }
    // Failover: the replica is promoted, the old primary follows it, the name moves.
    assert_eq!(new.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    let new_port = new.port.to_string();
    assert_eq!(old.cli(&["REPLICAOF", "127.0.0.1", &new_port]), "OK");
    name.point_at(new.port);
    // The old primary answers READONLY on moat's connection: that call fails, its
    // connection is dropped, the next call connects to the new primary.
    let mut failed = 0;
    let back = wait_until(Duration::from_secs(5), || {
        let ok = status(&m) == 200;
        failed += usize::from(!ok);
        ok
    });
    assert!(back, "still failing: {}", m.logs());
    assert!(
        failed <= 2,
        "{failed} calls failed before the new primary was used"
    );
    assert!(m.logs().contains("READONLY"), "{}", m.logs());
    assert_eq!(name.connections.load(Ordering::SeqCst), 2);
}
