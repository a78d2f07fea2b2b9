//! Cluster-scope rate limits (`scope: cluster`, `mode: exact`) with real `redis-server`
//! processes: three moat instances sharing one limit under a concurrent burst of 10× the
//! limit, and Redis killed, paused (SIGSTOP) and restarted: behaviour per
//! `on_redis_error`, latency bounded by `redis.timeout`, metrics, automatic recovery (a
//! restart on the same port costs no failed call).

use crate::harness::redis::RedisServer;
use crate::harness::{request, wait_until, Moat, Upstream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn status(m: &Moat, path: &str) -> u16 {
    request(m.port, "GET", path, &[], b"").status
}

#[test]
fn three_instances_share_one_exact_limit() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 2s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 20/m, scope: cluster, on_redis_error: deny }}\n",
        redis.url(),
        up.address()
    );
    let ms: Vec<Moat> = (0..3).map(|_| Moat::start(&body)).collect();
    let ports: Vec<u16> = ms.iter().map(|m| m.port).collect();
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let (ok, limited, ports) = (Arc::clone(&ok), Arc::clone(&limited), ports.clone());
            std::thread::spawn(move || {
                for i in 0..17 {
                    let port = ports[(t + i) % ports.len()];
                    match request(port, "GET", "/x", &[], b"").status {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        429 => limited.fetch_add(1, Ordering::SeqCst),
                        _ => 0,
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (ok, limited) = (ok.load(Ordering::SeqCst), limited.load(Ordering::SeqCst));
    assert_eq!(ok, 20, "allowed across 3 instances ({limited} limited)");
    assert_eq!(ok + limited, 204);
    assert_eq!(up.requests().len(), 20);
    let allowed: f64 = ms
        .iter()
        .filter_map(|m| {
            m.metric("moat_ratelimit_decisions_total{plugin=\"rate_limit\",result=\"allowed\",route=\"r\"}")
        })
        .sum();
    assert_eq!(allowed, 20.0);
}

#[test]
fn redis_down_paused_and_back() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::start("app");
    let route = |name: &str, on_error: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 2/m, scope: cluster, on_redis_error: {on_error} }}\n")
    };
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 100ms, key_prefix: \"t:\" }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n{}{}{}",
        redis.url(),
        up.address(),
        route("allow", "allow"),
        route("deny", "deny"),
        route("local", "local"),
    );
    let m = Moat::start(&body);
    // Redis up: the limit holds.
    let s: Vec<u16> = (0..3).map(|_| status(&m, "/allow")).collect();
    assert_eq!(s, [200, 200, 429]);
    let r = request(m.port, "GET", "/allow", &[], b"");
    assert!(r.header("retry-after").is_some());

    redis.kill();
    let s: Vec<u16> = (0..4).map(|_| status(&m, "/allow")).collect();
    assert_eq!(s, [200; 4], "allow: fail open");
    let r = request(m.port, "GET", "/deny", &[], b"");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "SERVICE_UNAVAILABLE");
    let s: Vec<u16> = (0..3).map(|_| status(&m, "/local")).collect();
    assert_eq!(s, [200, 200, 429], "local: this instance's own limiter");
    assert!(m.metric("moat_redis_errors_total").unwrap_or(0.0) >= 1.0);
    let errors = m.metric(
        "moat_ratelimit_decisions_total{plugin=\"rate_limit\",result=\"error\",route=\"deny\"}",
    );
    assert_eq!(errors, Some(1.0));

    // Back: the breaker probes and cluster decisions resume.
    let redis = RedisServer::start_on(port);
    let back = wait_until(Duration::from_secs(5), || status(&m, "/deny") == 200);
    assert!(back, "no recovery after Redis came back");

    // Paused: each decision waits at most about redis.timeout, then fails closed (deny).
    redis.signal("STOP");
    for _ in 0..5 {
        let t = Instant::now();
        let s = status(&m, "/deny");
        assert_eq!(s, 503);
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
    }
    redis.signal("CONT");
    let back = wait_until(Duration::from_secs(5), || status(&m, "/deny") != 503);
    assert!(back, "no recovery after Redis resumed");
}

#[test]
fn fast_mode_overshoot_is_bounded_and_converges() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 1s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: f\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 30/h, scope: cluster, mode: fast, sync_interval: 100ms }}\n",
        redis.url(),
        up.address()
    );
    let ms: Vec<Moat> = (0..3).map(|_| Moat::start(&body)).collect();
    let ports: Vec<u16> = ms.iter().map(|m| m.port).collect();
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let (ok, ports) = (Arc::clone(&ok), ports.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let port = ports[(t + i) % ports.len()];
                    if request(port, "GET", "/x", &[], b"").status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // One more request per instance starts a sync; after an interval every instance
    // knows the cluster total and refuses.
    for m in &ms {
        if status(m, "/y") == 200 {
            ok.fetch_add(1, Ordering::SeqCst);
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    for m in &ms {
        assert_eq!(status(m, "/z"), 429, "instance still admits after syncing");
    }
    // Documented bound: N + (instances − 1) × min(N, arrivals per instance in 2 intervals).
    let ok = ok.load(Ordering::SeqCst);
    eprintln!("fast mode: {ok} of 303 allowed for 30/h on 3 instances");
    assert!(
        (30..=90).contains(&ok),
        "{ok} allowed for a limit of 30 on 3 instances"
    );
    assert_eq!(up.requests().len(), ok);
}

#[test]
fn fast_mode_paced_traffic_stays_within_the_interval_bound() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 1s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: f\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 30/h, scope: cluster, mode: fast, sync_interval: 100ms }}\n",
        redis.url(),
        up.address()
    );
    let ms: Vec<Moat> = (0..3).map(|_| Moat::start(&body)).collect();
    let ok = Arc::new(AtomicUsize::new(0));
    // One client per instance, one request every 20 ms: ≤ 10 per instance in 2 intervals,
    // so the bound is 30 + 2 × 10 = 50.
    let threads: Vec<_> = ms
        .iter()
        .map(|m| {
            let (ok, port) = (Arc::clone(&ok), m.port);
            std::thread::spawn(move || {
                for _ in 0..40 {
                    if request(port, "GET", "/p", &[], b"").status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ok = ok.load(Ordering::SeqCst);
    eprintln!("fast mode, paced: {ok} of 120 allowed for 30/h on 3 instances");
    assert!((30..=50).contains(&ok), "{ok} allowed, bound 50");
}

fn signed(path: &str, date: &str) -> String {
    // The harness's client sends `Host: localhost`; `host` must be signed.
    let signing = format!("date: {date}\nGET {path} HTTP/1.1\nhost: localhost");
    let mac = moat::auth::hmac::compute(
        moat::auth::hmac::HmacAlg::Sha256,
        b"replay-secret",
        signing.as_bytes(),
    )
    .unwrap();
    use base64::Engine;
    format!(
        "hmac username=\"svc\", algorithm=\"hmac-sha256\", headers=\"date request-line host\", signature=\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

#[test]
fn hmac_replays_are_refused_across_instances_through_redis() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 200ms }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: acme\n    hmac: [{{ key_id: svc, secret_env: MOAT_IT_REPLAY }}]\nroutes:\n  - name: s\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ replay_window: 300s }} }}\n",
        redis.url(),
        up.address()
    );
    let env = [("MOAT_IT_REPLAY", "replay-secret")];
    let a = Moat::start_with(&body, &[], &env);
    let b = Moat::start_with(&body, &[], &env);
    let date = moat::auth::dates::format_http_date(moat::auth::dates::now_secs());
    let auth = signed("/api/one", &date);
    let h = [("Date", date.as_str()), ("Authorization", auth.as_str())];
    assert_eq!(request(a.port, "GET", "/api/one", &h, b"").status, 200);
    let r = request(b.port, "GET", "/api/one", &h, b"");
    assert_eq!(r.status, 401, "replayed on another instance: {}", r.text());
    // Redis down: this instance's own guard still refuses its replays.
    redis.kill();
    let auth = signed("/api/two", &date);
    let h = [("Date", date.as_str()), ("Authorization", auth.as_str())];
    assert_eq!(request(a.port, "GET", "/api/two", &h, b"").status, 200);
    assert_eq!(request(a.port, "GET", "/api/two", &h, b"").status, 401);
}

#[test]
fn fast_mode_applies_on_redis_error_and_recovers() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 100ms }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: f\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 1000/h, scope: cluster, mode: fast, sync_interval: 50ms, on_redis_error: deny }}\n",
        redis.url(),
        up.address()
    );
    let m = Moat::start(&body);
    assert_eq!(status(&m, "/a"), 200);
    redis.kill();
    let denied = wait_until(Duration::from_secs(3), || status(&m, "/b") == 503);
    assert!(denied, "deny not applied while Redis is down");
    let _redis = RedisServer::start_on(port);
    let back = wait_until(Duration::from_secs(5), || status(&m, "/c") == 200);
    assert!(back, "fast mode did not recover");
    assert!(m.metric("moat_redis_errors_total").unwrap_or(0.0) >= 1.0);
}

#[test]
fn a_restarted_redis_is_used_again_without_a_failed_call() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 1s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 100/m, scope: cluster, on_redis_error: deny }}\n",
        redis.url(),
        up.address()
    );
    let m = Moat::start(&body);
    for _ in 0..3 {
        assert_eq!(status(&m, "/a"), 200);
    }
    // Same port, new process: the pooled connections are closed by the old one's exit.
    redis.kill();
    let _redis = RedisServer::start_on(port);
    let s: Vec<u16> = (0..3).map(|_| status(&m, "/b")).collect();
    assert_eq!(s, [200; 3], "decisions right after the restart");
    assert_eq!(m.metric("moat_redis_errors_total"), Some(0.0));
}
