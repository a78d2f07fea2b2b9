//! Rate limits, quotas and concurrency limits (local scope) through the real binary: the
//! N+1st request, window boundaries (fixed lets 2N through, sliding does not), token
//! refill, spoofed X-Forwarded-For, per-consumer tiers with API keys, several limiters on
//! one route, concurrency slots released on abort and upstream timeout, calendar quotas,
//! headers on moat's own replies, metrics, the access log and state kept across a reload.

use crate::harness::client::Conn;
use crate::harness::{request, wait_until, Behavior, Moat, Response, Upstream};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn get(m: &Moat, path: &str, headers: &[(&str, &str)]) -> Response {
    request(m.port, "GET", path, headers, b"")
}

fn assert_429(r: &Response, code: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], code);
    let ra: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(ra >= 1, "Retry-After {ra}");
}

fn passed(m: &Moat, path: &str, n: usize, headers: &[(&str, &str)]) -> usize {
    (0..n)
        .filter(|_| get(m, path, headers).status == 200)
        .count()
}

/// How far (0..1) into the current wall-clock second we are.
fn fraction_of_second() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.subsec_nanos() as f64 / 1e9
}

/// Sleep until `frac` (0..1) of the current wall-clock second.
fn at_fraction_of_second(frac: f64) {
    let into = fraction_of_second();
    let wait = if into < frac {
        frac - into
    } else {
        1.0 - into + frac
    };
    std::thread::sleep(Duration::from_secs_f64(wait));
}

#[test]
fn n_plus_first_is_refused_with_headers_metrics_and_log() {
    let up = Upstream::start("app");
    let body = format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 3/m }}\n  - name: ping\n    match: {{ path: /ping }}\n    respond: {{ status: 200, body: pong }}\n    plugins:\n      - rate_limit: {{ key: route, rate: 2/h, algorithm: fixed_window }}\n",
        up.address()
    );
    let m = Moat::start(&body);
    for i in 0..3u64 {
        let r = get(&m, "/api/x", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(r.header("ratelimit-remaining"), Some(&*(2 - i).to_string()));
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let r = get(&m, "/api/x", &[]);
    assert_429(&r, "RATE_LIMITED");
    assert_eq!(r.json()["error"]["message"], "rate limit of 3/m exceeded");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(up.requests().len(), 3);
    // moat's own `respond` replies carry the headers too.
    let r = get(&m, "/ping", &[]);
    assert_eq!(
        (r.status, r.header("ratelimit-remaining")),
        (200, Some("1"))
    );
    get(&m, "/ping", &[]);
    let r = get(&m, "/ping", &[]);
    assert_429(&r, "RATE_LIMITED");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ra <= 3600);
    // A route without limits has no headers.
    assert!(get(&m, "/nothing", &[]).header("ratelimit-limit").is_none());
    let lim = "moat_ratelimit_decisions_total{plugin=\"rate_limit\",result=";
    assert_eq!(
        m.metric(&format!("{lim}\"allowed\",route=\"api\"}}")),
        Some(3.0)
    );
    assert_eq!(
        m.metric(&format!("{lim}\"limited\",route=\"api\"}}")),
        Some(1.0)
    );
    let lines = m.access_lines(7);
    let rl: Vec<_> = lines.iter().map(|l| l["ratelimit"].clone()).collect();
    assert_eq!(rl[0], "allowed");
    assert_eq!(rl[3], "limited");
}

#[test]
fn fixed_window_boundary_lets_2n_through_sliding_does_not() {
    let up = Upstream::start("app");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: fixed\n    match: {{ path_prefix: /fixed }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 5/s, algorithm: fixed_window }}\n  - name: sliding\n    match: {{ path_prefix: /sliding }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 5/s }}\n",
        up.address()
    );
    let m = Moat::start(&body);
    for (path, lo, hi) in [("/fixed", 10, 10), ("/sliding", 5, 6)] {
        // 5 at the end of one second, then 8 right after the boundary. On a loaded machine
        // a batch can take long enough to leave the moment it was meant for: such a round
        // says nothing about the limiter and is run again, after the window cleared.
        let mut rounds = 0;
        let (first, second) = loop {
            rounds += 1;
            at_fraction_of_second(0.8);
            let first = passed(&m, path, 5, &[]);
            let first_in_time = fraction_of_second() >= 0.8;
            at_fraction_of_second(0.02);
            let second = passed(&m, path, 8, &[]);
            let second_in_time = fraction_of_second() <= 0.3;
            if (first_in_time && second_in_time) || rounds == 5 {
                break (first, second);
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        let total = first + second;
        assert!(
            (lo..=hi).contains(&total),
            "{path}: {first} + {second} passed within ~0.3 s"
        );
    }
}

#[test]
fn token_bucket_refills() {
    let up = Upstream::start("app");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: tb\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 2/s, algorithm: token_bucket, burst: 4 }}\n",
        up.address()
    );
    let m = Moat::start(&body);
    assert_eq!(passed(&m, "/", 6, &[]), 4);
    let r = get(&m, "/", &[]);
    assert_429(&r, "RATE_LIMITED");
    assert_eq!(r.header("ratelimit-limit"), Some("4"));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(passed(&m, "/", 4, &[]), 2);
}

#[test]
fn spoofed_forwarded_for_from_untrusted_peer_does_not_change_the_bucket() {
    let up = Upstream::start("app");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 2/m }}\n",
        up.address()
    );
    let m = Moat::start(&body);
    let ok = (0..5)
        .filter(|i| {
            let xff = format!("203.0.113.{i}");
            get(&m, "/", &[("X-Forwarded-For", &xff), ("X-Real-IP", &xff)]).status == 200
        })
        .count();
    assert_eq!(ok, 2);
}

fn key_hash(k: &str) -> String {
    hex::encode(moat::util::sha256(k.as_bytes()))
}

#[test]
fn per_consumer_tiers_with_api_keys_and_stacked_limits() {
    let up = Upstream::start("app");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{up}\"] }}\nconsumers:\n  - id: small\n    tier: free\n    api_keys: [{{ sha256: {a} }}]\n  - id: big\n    tier: business\n    api_keys: [{{ sha256: {b} }}]\n  - id: plain\n    api_keys: [{{ sha256: {c} }}]\nroutes:\n  - name: tiered\n    match: {{ path_prefix: /t }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [api_key] }}\n      - rate_limit: {{ key: consumer, rate: 3/m, tiers: {{ free: 2/m, business: 6/m }} }}\n  - name: stacked\n    match: {{ path_prefix: /s }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [api_key] }}\n      - rate_limit: {{ key: ip, rate: 4/m }}\n      - rate_limit: {{ key: consumer, rate: 3/m }}\n  - name: anon\n    match: {{ path_prefix: /anon }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: consumer, rate: 2/m }}\n      - quota: {{ key: \"header:x-tenant\", limit: 3/d }}\n",
        up = up.address(),
        a = key_hash("key-small"),
        b = key_hash("key-big"),
        c = key_hash("key-plain"),
    );
    let m = Moat::start(&body);
    assert_eq!(passed(&m, "/t", 4, &[("x-api-key", "key-small")]), 2);
    assert_eq!(passed(&m, "/t", 8, &[("x-api-key", "key-big")]), 6);
    assert_eq!(passed(&m, "/t", 5, &[("x-api-key", "key-plain")]), 3);
    let r = get(&m, "/t", &[("x-api-key", "key-small")]);
    assert_429(&r, "RATE_LIMITED");
    assert_eq!(r.json()["error"]["message"], "rate limit of 2/m exceeded");
    // Stacked: both apply. The per-IP limiter (first) counted 4 requests of `small`
    // (the 4th passed it and was refused per consumer), so `big` from the same IP gets none.
    assert_eq!(passed(&m, "/s", 5, &[("x-api-key", "key-small")]), 3);
    assert_eq!(passed(&m, "/s", 2, &[("x-api-key", "key-big")]), 0);
    // No consumer: counted by client IP, never unlimited; a missing header likewise.
    assert_eq!(passed(&m, "/anon", 4, &[]), 2);
}

#[test]
fn quota_is_calendar_day_with_retry_after_until_midnight() {
    let up = Upstream::start("app");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: q\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - quota: {{ key: \"header:x-tenant\", limit: 2/d, tiers: {{ gold: 100/d }} }}\n",
        up.address()
    );
    let m = Moat::start(&body);
    let t = [("x-tenant", "t1")];
    assert_eq!(passed(&m, "/", 2, &t), 2);
    let r = get(&m, "/", &t);
    assert_429(&r, "QUOTA_EXCEEDED");
    assert_eq!(r.json()["error"]["message"], "quota of 2/d exceeded");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ra.abs_diff(to_midnight) <= 3, "{ra} vs {to_midnight}");
    // Another tenant has its own quota.
    assert_eq!(get(&m, "/", &[("x-tenant", "t2")]).status, 200);
    // A reload that changes nothing about the quota keeps its counters.
    m.rewrite(&format!(
        "{body}  - name: extra\n    match: {{ path: /extra }}\n    respond: {{ status: 204 }}\n"
    ));
    assert_eq!(m.admin_post("/reload").status, 200);
    assert_eq!(get(&m, "/extra", &[]).status, 204);
    assert_429(&get(&m, "/", &t), "QUOTA_EXCEEDED");
}

#[test]
fn concurrency_slots_are_released_on_abort_and_upstream_timeout() {
    let slow = Upstream::start("slow");
    let body = format!(
        "upstreams:\n  slow: {{ targets: [\"{}\"], read_timeout: 300ms }}\nroutes:\n  - name: c\n    match: {{ path_prefix: / }}\n    upstream: slow\n    plugins:\n      - concurrency: {{ key: ip, max: 1 }}\n",
        slow.address()
    );
    let m = Moat::start(&body);
    slow.set(Behavior {
        delay: Duration::from_secs(5),
        ..Behavior::default()
    });
    // Upstream timeout: 504, and the slot is free again right after.
    let r = get(&m, "/t1", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    let again = wait_until(Duration::from_secs(2), || get(&m, "/t2", &[]).status == 504);
    assert!(again, "slot still held after the upstream timed out");

    // While one request is in flight, the next one is refused.
    slow.set(Behavior {
        delay: Duration::from_millis(250),
        ..Behavior::default()
    });
    let port = m.port;
    let held = std::thread::spawn(move || request(port, "GET", "/held", &[], b"").status);
    std::thread::sleep(Duration::from_millis(100));
    let r = get(&m, "/other", &[]);
    assert_429(&r, "CONCURRENCY_LIMITED");
    assert_eq!(held.join().ok(), Some(200));

    // Client abort: the client goes away while the upstream is still thinking.
    let m2 = Moat::start(&body.replace("300ms", "10s"));
    slow.set(Behavior {
        delay: Duration::from_secs(8),
        ..Behavior::default()
    });
    {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", m2.port)).unwrap();
        c.write_all(b"GET /abort HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut probe = Conn::open(m2.port);
        let r = probe.get("/probe").expect("answer");
        assert_eq!(r.status, 429, "slot not held while in flight");
    }
    slow.set(Behavior::default());
    let freed = wait_until(Duration::from_secs(4), || {
        get(&m2, "/after", &[]).status == 200
    });
    assert!(freed, "slot still held after the client aborted");
    let limited = m2.metric(
        "moat_ratelimit_decisions_total{plugin=\"concurrency\",result=\"limited\",route=\"c\"}",
    );
    assert!(limited >= Some(1.0), "{limited:?}");
}

#[test]
fn bad_limiter_settings_are_refused_with_their_paths() {
    let dir = crate::harness::moat::temp_dir("limits-check");
    let cfg = dir.join("bad.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - { name: public, address: 127.0.0.1:1 }\nroutes:\n  - name: p\n    match: { path: /p }\n    respond: { status: 200 }\n    plugins:\n      - rate_limit: { key: ip, rate: 5/s, algorithm: fixed_window, burst: 3, scope: cluster }\n      - quota: { key: ip, limit: 5/m, scope: cluster }\n      - rate_limit: { key: \"header:bad header\", rate: 5/s, on_redis_error: deny }\n      - concurrency: { key: ip, max: 0, lease: 5s, on_redis_error: deny }\n      - concurrency: { key: ip, max: 1, scope: cluster, lease: 100ms }\n      - rate_limit: { key: ip, rate: 1/s, burst: 1000000000000, tiers: { gold: 100/s } }\n      - rate_limit: { key: ip, rate: 2000000000000/s, algorithm: token_bucket }\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::moat::bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    for want in [
        "routes[0].plugins[0].rate_limit.scope: scope: cluster needs the redis: section",
        "routes[0].plugins[1].quota.scope: scope: cluster needs the redis: section",
        "routes[0].plugins[3].concurrency.lease: only applies with scope: cluster",
        "routes[0].plugins[3].concurrency.on_redis_error: only applies with scope: cluster",
        "routes[0].plugins[4].concurrency.scope: scope: cluster needs the redis: section",
        "routes[0].plugins[4].concurrency.lease: must be at least 1s",
        "routes[0].plugins[0].rate_limit.burst: burst applies to algorithm: token_bucket only",
        "routes[0].plugins[2].rate_limit.on_redis_error: only applies with scope: cluster",
        "routes[0].plugins[2].rate_limit.key: `header:bad header`",
        "routes[0].plugins[3].concurrency.max: must be at least 1",
        "routes[0].plugins[5].rate_limit.tiers.gold: gives a token bucket of 100000000000000",
        "routes[0].plugins[6].rate_limit.rate: gives a token bucket of 2000000000000",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
