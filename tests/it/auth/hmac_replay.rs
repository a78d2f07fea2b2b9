//! The replay memory is bounded per credential (`hmac.replay_capacity`): a credential
//! flooding distinct signed requests past its room gets 503 `replay_capacity` while every
//! other credential — another consumer's, or the same consumer's other key — keeps being
//! accepted, on one instance and, with Redis (the authority), across instances. A
//! signature is one under every key id holding its secret. Redis holds live signatures
//! only (16 bytes each), keeps them a clock skew longer, and when it cannot answer the
//! decision is counted (and refused with `replay_on_redis_error: deny`).

use super::hmac::SECRET;
#[allow(unused_imports)]
use super::*;
use crate::harness::redis::RedisServer;
use moat::auth::tools::{sign, SignRequest};

const OTHER_SECRET: &str = "another-s3cr3t-for-tests";
const SECOND_SECRET: &str = "flood-second-s3cr3t-for-tests";

/// Consumers `flood` (keys `flood-svc` and `flood-svc2`) and `other` (`other-svc`), plus
/// `consumers`; route `/api` with `hmac`'s settings `api`, route `/deny` with
/// `replay_on_redis_error: deny`.
fn config(up: &Upstream, redis: Option<&RedisServer>, api: &str, consumers: &str) -> String {
    let redis = redis
        .map(|r| format!("redis: {{ url: \"{}\", timeout: 1s }}\n", r.url()))
        .unwrap_or_default();
    format!(
        "{redis}upstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: flood\n    hmac: [{{ key_id: flood-svc, secret_env: MOAT_IT_HMAC }}, {{ key_id: flood-svc2, secret_env: MOAT_IT_HMAC_SECOND }}]\n  - id: other\n    hmac: [{{ key_id: other-svc, secret_env: MOAT_IT_HMAC_OTHER }}]\n{consumers}routes:\n  - name: signed\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ {api} }} }}\n  - name: deny\n    match: {{ path_prefix: /deny }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ {api}, replay_on_redis_error: deny }} }}\n",
        up.address()
    )
}

fn start_with(up: &Upstream, redis: Option<&RedisServer>, api: &str, consumers: &str) -> Moat {
    Moat::start_with(
        &config(up, redis, api, consumers),
        &[],
        &[
            ("MOAT_IT_HMAC", SECRET),
            ("MOAT_IT_HMAC_OTHER", OTHER_SECRET),
            ("MOAT_IT_HMAC_SECOND", SECOND_SECRET),
        ],
    )
}

fn start(up: &Upstream, redis: Option<&RedisServer>) -> Moat {
    start_with(up, redis, "replay_capacity: 20", "")
}

/// A signed `GET path` with key `key_id`, made distinct by a signed nonce.
fn signed_at(key_id: &str, path: &str, n: u32) -> Vec<(String, String)> {
    let nonce = vec![format!("X-Nonce: {n}")];
    let secret = match key_id {
        "flood-svc" | "twin-svc" => SECRET,
        "flood-svc2" => SECOND_SECRET,
        _ => OTHER_SECRET,
    };
    sign(&SignRequest {
        key_id,
        secret: secret.as_bytes(),
        algorithm: "hmac-sha256",
        method: "GET",
        url: &format!("http://localhost{path}"),
        headers: &nonce,
        body: None,
        now: now_secs(),
    })
    .unwrap()
}

/// A signed `GET /api/n` of `who` (flood or other).
fn signed(who: &str, n: u32) -> Vec<(String, String)> {
    signed_at(&format!("{who}-svc"), "/api/n", n)
}

fn status(m: &Moat, h: &[(String, String)]) -> Response {
    super::hmac::send(m, "GET", "/api/n", h, b"")
}

fn full_count(m: &Moat) -> Option<f64> {
    m.metric(
        "moat_auth_failures_total{method=\"hmac\",reason=\"replay_capacity\",route=\"signed\"}",
    )
}

/// `h` with its Authorization's key id changed to `key_id` (the key id is not signed).
fn as_key(h: &[(String, String)], from: &str, key_id: &str) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            let v = if k.eq_ignore_ascii_case("authorization") {
                v.replace(
                    &format!("username=\"{from}\""),
                    &format!("username=\"{key_id}\""),
                )
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[test]
fn a_flooding_credential_fills_its_own_room_only() {
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
    // ...and the other consumer is not affected at all...
    for n in 0..20 {
        let r = status(&m, &signed("other", n));
        assert_eq!(r.status, 200, "other consumer, request {n}: {}", r.text());
    }
    // ...nor (regression: one memory per consumer) the same consumer's other credential.
    for n in 0..20 {
        let r = status(&m, &signed_at("flood-svc2", "/api/n", n));
        assert_eq!(
            r.status,
            200,
            "the flood's second key, request {n}: {}",
            r.text()
        );
        assert_eq!(up.last().all("x-consumer-id"), ["flood"]);
    }
    // The flood's accepted signatures are still remembered: a replay is still a replay.
    assert_refused(&status(&m, &kept), 401, "replay while full");
}

#[test]
fn a_signature_is_one_under_every_key_id_of_its_secret() {
    // Regression: the replay key held the key id, which is not signed. A captured
    // request could be sent again under another key id holding the same secret —
    // another consumer's (`twin`), as that consumer.
    let twin = "  - id: twin\n    hmac: [{ key_id: twin-svc, secret_env: MOAT_IT_HMAC }]\n";
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let local = start_with(&up, None, "replay_capacity: 20", twin);
    let a = start_with(&up, Some(&redis), "replay_capacity: 20", twin);
    let b = start_with(&up, Some(&redis), "replay_capacity: 20", twin);
    for (first, again, what) in [(&local, &local, "one instance"), (&a, &b, "through Redis")] {
        let h = signed("flood", 7);
        assert_eq!(status(first, &h).status, 200, "{what}");
        assert_eq!(up.last().all("x-consumer-id"), ["flood"]);
        let r = status(again, &as_key(&h, "flood-svc", "twin-svc"));
        assert_refused(&r, 401, &format!("{what}: replayed as twin"));
    }
    // A fresh request signed for twin is twin's.
    assert_eq!(status(&b, &signed_at("twin-svc", "/api/n", 8)).status, 200);
    assert_eq!(up.last().all("x-consumer-id"), ["twin"]);
    // They share one set in Redis, named after the first credential with the secret.
    assert_eq!(redis.cli(&["ZCARD", "moat:replay:flood-svc"]).trim(), "2");
    assert_eq!(redis.cli(&["EXISTS", "moat:replay:twin-svc"]).trim(), "0");
}

#[test]
fn with_redis_the_bound_holds_across_instances_and_spares_other_credentials() {
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
        redis.cli(&["ZCARD", "moat:replay:flood-svc"]).trim(),
        "20",
        "one sorted set per credential, bounded"
    );
    for n in 0..10 {
        let m = if n % 2 == 0 { &a } else { &b };
        assert_eq!(status(m, &signed("other", n)).status, 200, "other, {n}");
        let second = signed_at("flood-svc2", "/api/n", n);
        assert_eq!(status(m, &second).status, 200, "flood's second key, {n}");
    }
    // Redis is the authority: a signature accepted on one instance is a replay on the other.
    let h = signed("other", 1000);
    assert_eq!(status(&a, &h).status, 200);
    assert_refused(&status(&b, &h), 401, "replayed on the other instance");
    assert_refused(&status(&a, &h), 401, "replayed on the same instance");
}

#[test]
fn redis_holds_live_signatures_only_and_keeps_them_a_clock_skew_longer() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    // The defaults: clock_skew 300s, replay_window 300s.
    let m = start_with(&up, Some(&redis), "replay_capacity: 1000", "");
    let set = "moat:replay:flood-svc";
    assert_eq!(status(&m, &signed("flood", 1)).status, 200);
    // Regression: members were 64 hex digits; now the 16 bytes of the hash.
    let len = redis.cli(&[
        "EVAL",
        "return string.len(redis.call('ZRANGE', KEYS[1], 0, 0)[1])",
        "1",
        set,
    ]);
    assert_eq!(len.trim(), "16");
    // Regression: the set expired with its last member by the instance's clock
    // (remembered 301 s); a clock running fast made it go early. Now 301 s + 300 s.
    let pttl: i64 = redis.cli(&["PTTL", set]).trim().parse().unwrap();
    assert!(pttl > 590_000, "PTTL {pttl}");
    // Regression: expired members stayed until the set was full (and the set's expiry
    // moved forward with every new one), then went all in one call. Age the member past
    // its expiry and the margin, with 40 more like it: each call drops up to 32.
    let aged = redis.cli(&[
        "EVAL",
        "local m = redis.call('ZRANGE', KEYS[1], 0, -1) for _, v in ipairs(m) do redis.call('ZADD', KEYS[1], 1000, v) end for i = 1, 40 do redis.call('ZADD', KEYS[1], 1000, 'old-' .. i) end return #m",
        "1",
        set,
    ]);
    assert_eq!(aged.trim(), "1");
    assert_eq!(status(&m, &signed("flood", 2)).status, 200);
    assert_eq!(redis.cli(&["ZCARD", set]).trim(), "10", "32 of 41 dropped");
    assert_eq!(status(&m, &signed("flood", 3)).status, 200);
    assert_eq!(
        redis.cli(&["ZCARD", set]).trim(),
        "2",
        "the expired ones left"
    );
    // An expired one within the margin stays, but no longer counts as live.
    let now_ms = now_secs() * 1000;
    let just = (now_ms - 1000).to_string();
    redis.cli(&["ZADD", set, &just, "just-expired-sig"]);
    assert_eq!(status(&m, &signed("flood", 4)).status, 200);
    assert_eq!(redis.cli(&["ZCARD", set]).trim(), "4");
    assert_eq!(redis.cli(&["ZSCORE", set, "just-expired-sig"]).trim(), just);
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
    assert_eq!(redis.cli(&["ZCARD", "moat:replay:flood-svc"]).trim(), "1");
    // What the local memory saw is still a replay, without asking Redis.
    assert_refused(&status(&m, &kept), 401, "replay seen while Redis was down");
}

#[test]
fn without_redis_decisions_are_counted_and_deny_refuses() {
    // Regression: requests decided by the local memory alone while Redis was down (a
    // replay to another instance then passes) were not counted anywhere, and there was
    // no way to refuse them instead.
    let mut redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::start("app");
    let m = start_with(&up, Some(&redis), "replay_capacity: 20", "");
    let deny = |n| {
        super::hmac::send(
            &m,
            "GET",
            "/deny/n",
            &signed_at("other-svc", "/deny/n", n),
            b"",
        )
    };
    assert_eq!(deny(1).status, 200, "Redis up: deny changes nothing");
    redis.kill();
    assert_eq!(status(&m, &signed("flood", 1)).status, 200, "local decides");
    let r = deny(2);
    assert_refused(&r, 503, "deny without Redis");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        m.metric("moat_auth_replay_fallback_total{action=\"local\"}"),
        Some(1.0)
    );
    assert_eq!(
        m.metric("moat_auth_replay_fallback_total{action=\"deny\"}"),
        Some(1.0)
    );
    assert_eq!(
        m.metric(
            "moat_auth_failures_total{method=\"hmac\",reason=\"replay_unavailable\",route=\"deny\"}"
        ),
        Some(1.0)
    );
    // Logged, at most once per 10 s.
    assert!(
        wait_until(Duration::from_secs(5), || m
            .logs()
            .contains("HMAC replay check without Redis")),
        "{}",
        m.logs()
    );
    // A refused signature was not used: with Redis back it passes.
    let _redis = RedisServer::start_on(port);
    let again = signed_at("other-svc", "/deny/n", 2);
    let back = wait_until(Duration::from_secs(5), || {
        super::hmac::send(&m, "GET", "/deny/n", &again, b"").status == 200
    });
    assert!(back, "deny with Redis back");
}
