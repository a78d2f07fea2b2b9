//! The replay memory is bounded per consumer (`hmac.replay_capacity`): one consumer
//! flooding distinct signed requests past its room gets 503 `replay_capacity` while every
//! other consumer keeps being accepted, on one instance and, with Redis (the authority),
//! across instances.

use super::hmac::SECRET;
#[allow(unused_imports)]
use super::*;
use crate::harness::redis::RedisServer;
use moat::auth::cli::{sign, SignRequest};

const OTHER_SECRET: &str = "another-s3cr3t-for-tests";

fn config(up: &Upstream, redis: Option<&RedisServer>) -> String {
    let redis = redis
        .map(|r| format!("redis: {{ url: \"{}\", timeout: 1s }}\n", r.url()))
        .unwrap_or_default();
    format!(
        "{redis}upstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: flood\n    hmac: [{{ key_id: flood-svc, secret_env: MOAT_IT_HMAC }}]\n  - id: other\n    hmac: [{{ key_id: other-svc, secret_env: MOAT_IT_HMAC_OTHER }}]\nroutes:\n  - name: signed\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ replay_capacity: 20 }} }}\n",
        up.address()
    )
}

fn start(up: &Upstream, redis: Option<&RedisServer>) -> Moat {
    Moat::start_with(
        &config(up, redis),
        &[],
        &[
            ("MOAT_IT_HMAC", SECRET),
            ("MOAT_IT_HMAC_OTHER", OTHER_SECRET),
        ],
    )
}

/// A signed `GET /api/n` of `who` (flood or other), made distinct by a signed nonce.
fn signed(who: &str, n: u32) -> Vec<(String, String)> {
    let nonce = vec![format!("X-Nonce: {n}")];
    let (key_id, secret) = match who {
        "flood" => ("flood-svc", SECRET),
        _ => ("other-svc", OTHER_SECRET),
    };
    sign(&SignRequest {
        key_id,
        secret: secret.as_bytes(),
        algorithm: "hmac-sha256",
        method: "GET",
        url: "http://localhost/api/n",
        headers: &nonce,
        body: None,
        now: now_secs(),
    })
    .unwrap()
}

fn status(m: &Moat, h: &[(String, String)]) -> Response {
    super::hmac::send(m, "GET", "/api/n", h, b"")
}

fn full_count(m: &Moat) -> Option<f64> {
    m.metric(
        "moat_auth_failures_total{method=\"hmac\",reason=\"replay_capacity\",route=\"signed\"}",
    )
}

#[test]
fn a_flooding_consumer_fills_its_own_room_only() {
    let up = Upstream::start("app");
    let m = start(&up, None);
    let kept = signed("flood", 0);
    assert_eq!(status(&m, &kept).status, 200);
    for n in 1..20 {
        let r = status(&m, &signed("flood", n));
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
    }
    // Its room is full: fresh signatures get 503 with Retry-After, counted apart.
    for n in 100..105 {
        let r = status(&m, &signed("flood", n));
        assert_refused(&r, 503, "over its replay capacity");
        let after: i64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=301).contains(&after), "Retry-After {after}");
    }
    assert_eq!(full_count(&m), Some(5.0));
    // Never a 401 `replay` for a fresh signature...
    assert_eq!(
        m.metric("moat_auth_failures_total{method=\"hmac\",reason=\"replay\",route=\"signed\"}"),
        None
    );
    // ...and the other consumer is not affected at all.
    for n in 0..20 {
        let r = status(&m, &signed("other", n));
        assert_eq!(r.status, 200, "other consumer, request {n}: {}", r.text());
    }
    // The flood's accepted signatures are still remembered: a replay is still a replay.
    assert_refused(&status(&m, &kept), 401, "replay while full");
}

#[test]
fn with_redis_the_bound_holds_across_instances_and_spares_other_consumers() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let a = start(&up, Some(&redis));
    let b = start(&up, Some(&redis));
    // 12 on each instance: Redis counts them together, so 20 pass and 4 are refused.
    let mut ok = 0;
    let mut full = 0;
    for n in 0..24 {
        let m = if n % 2 == 0 { &a } else { &b };
        match status(m, &signed("flood", n)).status {
            200 => ok += 1,
            503 => full += 1,
            s => panic!("request {n}: status {s}"),
        }
    }
    assert_eq!((ok, full), (20, 4));
    assert_eq!(
        redis.cli(&["ZCARD", "moat:replay:flood"]).trim(),
        "20",
        "one sorted set per consumer, bounded"
    );
    for n in 0..10 {
        let m = if n % 2 == 0 { &a } else { &b };
        assert_eq!(status(m, &signed("other", n)).status, 200, "other, {n}");
    }
    // Redis is the authority: a signature accepted on one instance is a replay on the other.
    let h = signed("other", 1000);
    assert_eq!(status(&a, &h).status, 200);
    assert_refused(&status(&b, &h), 401, "replayed on the other instance");
    assert_refused(&status(&a, &h), 401, "replayed on the same instance");
}

#[test]
fn with_redis_the_local_memory_only_short_cuts_replays() {
    // Regression: the local cache decided first, so once it was full every fresh
    // signature was refused before Redis was asked.
    let mut redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::start("app");
    let m = start(&up, Some(&redis));
    // Redis down: this instance decides alone, within the same bound.
    redis.kill();
    let kept = signed("flood", 0);
    assert_eq!(status(&m, &kept).status, 200);
    for n in 1..20 {
        assert_eq!(status(&m, &signed("flood", n)).status, 200, "request {n}");
    }
    assert_refused(&status(&m, &signed("flood", 20)), 503, "full while alone");
    // Redis back (empty): it decides again, although the local memory is full.
    let redis = RedisServer::start_on(port);
    let mut n = 100;
    let back = wait_until(Duration::from_secs(5), || {
        n += 1;
        status(&m, &signed("flood", n)).status == 200
    });
    assert!(back, "fresh signatures still refused with Redis back");
    assert_eq!(redis.cli(&["ZCARD", "moat:replay:flood"]).trim(), "1");
    // What the local memory saw is still a replay, without asking Redis.
    assert_refused(&status(&m, &kept), 401, "replay seen while Redis was down");
}
