//! Cluster-scope `concurrency` and `quota`, and `mode: fast` token buckets, with real
//! `redis-server` processes and several moat instances: one concurrency limit shared by
//! three instances, slots released on client abort and upstream timeout, leases renewed
//! past their length and expiring after an instance is killed, one quota across three
//! instances with tiers, the fast token bucket's documented overshoot bound, and
//! `on_redis_error` for the new limiters with Redis down, then back.

use crate::harness::redis::RedisServer;
use crate::harness::{request, wait_until, Behavior, Moat, Response, Upstream};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn get(m: &Moat, path: &str, headers: &[(&str, &str)]) -> Response {
    request(m.port, "GET", path, headers, b"")
}

fn status(m: &Moat, path: &str) -> u16 {
    get(m, path, &[]).status
}

fn key_hash(k: &str) -> String {
    hex::encode(moat::util::sha256(k.as_bytes()))
}

/// One inline command to Redis; the raw reply text.
fn redis_cmd(port: u16, cmd: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis");
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    s.write_all(format!("{cmd}\r\n").as_bytes()).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n") && n < buf.len() {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn routes(redis: &RedisServer, up: &Upstream, extra: &str, plugins: &str) -> String {
    format!(
        "redis: {{ url: \"{}\", timeout: 1s }}\nupstreams:\n  app: {{ targets: [\"{}\"]{extra} }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n{plugins}",
        redis.url(),
        up.address()
    )
}

#[test]
fn three_instances_share_one_concurrency_limit() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let body = routes(
        &redis,
        &up,
        "",
        "      - concurrency: { key: ip, max: 4, scope: cluster, on_redis_error: deny }\n",
    );
    let ms: Vec<Moat> = (0..3).map(|_| Moat::start(&body)).collect();
    let ports: Vec<u16> = ms.iter().map(|m| m.port).collect();
    up.set(Behavior {
        delay: Duration::from_millis(2500),
        ..Behavior::default()
    });
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(12));
    let start = Instant::now();
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let (ok, limited, barrier) = (Arc::clone(&ok), Arc::clone(&limited), barrier.clone());
            let port = ports[t % ports.len()];
            std::thread::spawn(move || {
                barrier.wait();
                let t0 = Instant::now();
                match request(port, "GET", "/slow", &[], b"").status {
                    200 => ok.fetch_add(1, Ordering::SeqCst),
                    429 => {
                        // Refused while the admitted ones were still upstream (2.5 s).
                        assert!(t0.elapsed() < Duration::from_millis(2000));
                        limited.fetch_add(1, Ordering::SeqCst)
                    }
                    s => panic!("unexpected status {s}"),
                };
            })
        })
        .collect();
    // While the admitted requests are upstream: one sorted set, one hash tag, 4 leases.
    std::thread::sleep(Duration::from_millis(800));
    let keys = redis_cmd(redis.port, "KEYS *");
    let key = keys
        .lines()
        .find(|l| l.starts_with("moat:{cc:") && l.ends_with('}'))
        .unwrap_or_else(|| panic!("no lease set in {keys:?}"))
        .to_string();
    assert_eq!(redis_cmd(redis.port, &format!("ZCARD {key}")).trim(), ":4");
    for t in threads {
        t.join().unwrap();
    }
    let (ok, limited) = (ok.load(Ordering::SeqCst), limited.load(Ordering::SeqCst));
    eprintln!(
        "cluster concurrency: {ok} admitted, {limited} refused in {:?}",
        start.elapsed()
    );
    assert_eq!(ok, 4, "admitted while all were in flight together, max 4");
    assert_eq!(limited, 8);
    // The slots went back on completion: the sorted set is empty (so Redis dropped it).
    let released = wait_until(Duration::from_secs(2), || {
        redis_cmd(redis.port, &format!("ZCARD {key}")).trim() == ":0"
    });
    assert!(released, "leases left after completion");
    up.set(Behavior::default());
    let allowed: f64 = ms
        .iter()
        .filter_map(|m| {
            m.metric("moat_ratelimit_decisions_total{plugin=\"concurrency\",result=\"allowed\",route=\"r\"}")
        })
        .sum();
    assert_eq!(allowed, 4.0);
    for m in &ms {
        assert_eq!(status(m, "/after"), 200);
    }
}

#[test]
fn cluster_slots_are_released_on_client_abort_and_upstream_timeout() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let plugins = "      - concurrency: { key: ip, max: 1, scope: cluster }\n";
    let a = Moat::start(&routes(&redis, &up, ", read_timeout: 300ms", plugins));
    let b = Moat::start(&routes(&redis, &up, ", read_timeout: 10s", plugins));
    up.set(Behavior {
        delay: Duration::from_secs(3),
        ..Behavior::default()
    });
    // Upstream timeout on A: 504, and B takes the slot right after (long before the 10 s
    // lease could have expired).
    let r = get(&a, "/t1", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    up.set(Behavior::default());
    let t = Instant::now();
    let freed = wait_until(Duration::from_secs(2), || status(&b, "/t2") == 200);
    assert!(freed, "slot still held after the upstream timed out");
    eprintln!("slot back {:?} after the timeout", t.elapsed());

    // Client abort on B: A is refused while the request is in flight, then gets the slot.
    up.set(Behavior {
        delay: Duration::from_secs(5),
        ..Behavior::default()
    });
    {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap();
        c.write_all(b"GET /abort HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let r = get(&a, "/probe", &[]);
        assert_eq!(
            r.status, 429,
            "slot not held across instances while in flight"
        );
        assert_eq!(r.json()["error"]["code"], "CONCURRENCY_LIMITED");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    up.set(Behavior::default());
    let t = Instant::now();
    let freed = wait_until(Duration::from_secs(3), || status(&a, "/after") == 200);
    assert!(freed, "slot still held after the client aborted");
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[test]
fn leases_are_renewed_and_expire_after_an_instance_dies() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let body = routes(
        &redis,
        &up,
        "",
        "      - concurrency: { key: ip, max: 2, scope: cluster, lease: 1s }\n",
    );
    let a = Moat::start(&body);
    let b = Moat::start(&body);
    up.set(Behavior {
        delay: Duration::from_secs(6),
        ..Behavior::default()
    });
    // Two requests held on A (raw sockets: A is killed under them).
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
            c.write_all(b"GET /held HTTP/1.1\r\nHost: h\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    up.set(Behavior::default());
    assert_eq!(status(&b, "/full"), 429);
    // Well past the 1 s lease: renewals keep the slots held.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status(&b, "/renewed"), 429, "leases not renewed");
    // A dies without releasing: its slots come back once the leases expire.
    drop(a);
    let killed = Instant::now();
    assert_eq!(
        status(&b, "/just-after"),
        429,
        "slots freed before the lease ran out"
    );
    let back = wait_until(Duration::from_secs(4), || status(&b, "/back") == 200);
    let took = killed.elapsed();
    eprintln!("slots of a killed instance back after {took:?} (lease 1 s)");
    assert!(back, "slots of a dead instance never came back");
    assert!(took < Duration::from_millis(3000), "{took:?}");
    drop(held);
}

#[test]
fn cluster_quota_is_shared_across_three_instances() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let body = format!(
        "redis: {{ url: \"{}\", timeout: 1s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: gold\n    tier: gold\n    api_keys: [{{ sha256: {} }}]\nroutes:\n  - name: q\n    match: {{ path_prefix: /q }}\n    upstream: app\n    plugins:\n      - quota: {{ key: \"header:x-tenant\", limit: 10/d, scope: cluster, on_redis_error: deny }}\n  - name: t\n    match: {{ path_prefix: /t }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [api_key] }}\n      - quota: {{ key: consumer, limit: 2/h, tiers: {{ gold: 5/h }}, scope: cluster }}\n",
        redis.url(),
        up.address(),
        key_hash("key-gold"),
    );
    let ms: Vec<Moat> = (0..3).map(|_| Moat::start(&body)).collect();
    let tenant = [("x-tenant", "t1")];
    let ok = (0..30)
        .filter(|i| get(&ms[i % 3], "/q", &tenant).status == 200)
        .count();
    assert_eq!(ok, 10, "one quota across 3 instances");
    let r = get(&ms[1], "/q", &tenant);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "QUOTA_EXCEEDED");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ra.abs_diff(to_midnight) <= 3, "{ra} vs {to_midnight}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(get(&ms[2], "/q", &[("x-tenant", "t2")]).status, 200);
    // Tiers: the gold consumer gets 5 per UTC hour across the instances.
    let gold = [("x-api-key", "key-gold")];
    let ok = (0..9)
        .filter(|i| get(&ms[i % 3], "/t", &gold).status == 200)
        .count();
    assert_eq!(ok, 5);
    let r = get(&ms[0], "/t", &gold);
    assert_eq!(r.json()["error"]["message"], "quota of 5/h exceeded");
    let to_hour = 3600 - now % 3600;
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ra.abs_diff(to_hour) <= 3, "{ra} vs {to_hour}");
}

fn fast_bucket_body(redis: &RedisServer, up: &Upstream) -> String {
    routes(
        redis,
        up,
        "",
        "      - rate_limit: { key: ip, rate: 60/h, burst: 30, scope: cluster, mode: fast, sync_interval: 100ms }\n",
    )
}

#[test]
fn fast_token_bucket_overshoot_is_bounded_and_converges() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let ms: Vec<Moat> = (0..3)
        .map(|_| Moat::start(&fast_bucket_body(&redis, &up)))
        .collect();
    let ports: Vec<u16> = ms.iter().map(|m| m.port).collect();
    let ok = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
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
    // knows the shared bucket is empty (or in debt) and refuses.
    for m in &ms {
        if status(m, "/y") == 200 {
            ok.fetch_add(1, Ordering::SeqCst);
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    for m in &ms {
        let r = get(m, "/z", &[]);
        assert_eq!(r.status, 429, "instance still admits after syncing");
        assert_eq!(r.json()["error"]["code"], "RATE_LIMITED");
    }
    // The shared bucket was debited by every instance's admissions: it is in debt.
    let keys = redis_cmd(redis.port, "KEYS *");
    let key = keys
        .lines()
        .find(|l| l.starts_with("moat:{rl:"))
        .unwrap_or_else(|| panic!("no bucket in {keys:?}"))
        .to_string();
    let tokens = redis_cmd(redis.port, &format!("HGET {key} k"));
    let tokens: f64 = tokens
        .lines()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(99.0);
    assert!(tokens < 1.0, "shared bucket holds {tokens} tokens");
    // Documented bound, a burst faster than the sync: instances × burst, plus the refill
    // over the test (60/h: one token a minute).
    let ok = ok.load(Ordering::SeqCst);
    let refill = start.elapsed().as_secs() as usize / 60 + 1;
    eprintln!(
        "fast token bucket: {ok} of 303 allowed for burst 30 on 3 instances, {tokens} left in Redis"
    );
    assert!(
        (30..=90 + refill).contains(&ok),
        "{ok} allowed for a bucket of 30 on 3 instances"
    );
    assert_eq!(up.requests().len(), ok);
}

#[test]
fn fast_token_bucket_paced_traffic_stays_within_the_interval_bound() {
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let ms: Vec<Moat> = (0..3)
        .map(|_| Moat::start(&fast_bucket_body(&redis, &up)))
        .collect();
    let ok = Arc::new(AtomicUsize::new(0));
    // One client per instance, one request every 20 ms: ≤ 10 per instance in 2 intervals,
    // so the bound is burst + refill + 2 × 10 = 30 + 1 + 20.
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
    eprintln!("fast token bucket, paced: {ok} of 120 allowed for burst 30 on 3 instances");
    assert!((30..=51).contains(&ok), "{ok} allowed, bound 51");
}

#[test]
fn redis_down_applies_on_redis_error_to_quota_and_concurrency() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::start("app");
    let route = |name: &str, plugin: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: app\n    plugins:\n      - {plugin}\n")
    };
    let mut body = format!(
        "redis: {{ url: \"{}\", timeout: 100ms }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n",
        redis.url(),
        up.address()
    );
    for (name, on_error) in [("qa", "allow"), ("qd", "deny"), ("ql", "local")] {
        body += &route(
            name,
            &format!(
                "quota: {{ key: ip, limit: 2/d, scope: cluster, on_redis_error: {on_error} }}"
            ),
        );
    }
    for (name, on_error) in [("ca", "allow"), ("cd", "deny"), ("cl", "local")] {
        body += &route(
            name,
            &format!(
                "concurrency: {{ key: ip, max: 1, scope: cluster, on_redis_error: {on_error} }}"
            ),
        );
    }
    let m = Moat::start(&body);
    // Redis up: the quota holds.
    let s: Vec<u16> = (0..3).map(|_| status(&m, "/qa")).collect();
    assert_eq!(s, [200, 200, 429]);
    assert_eq!(status(&m, "/cd"), 200);

    redis.kill();
    let s: Vec<u16> = (0..4).map(|_| status(&m, "/qa")).collect();
    assert_eq!(s, [200; 4], "quota allow: fail open");
    let r = get(&m, "/qd", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "SERVICE_UNAVAILABLE");
    let s: Vec<u16> = (0..3).map(|_| status(&m, "/ql")).collect();
    assert_eq!(
        s,
        [200, 200, 429],
        "quota local: this instance's own counter"
    );

    let r = get(&m, "/cd", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "SERVICE_UNAVAILABLE");
    let errors = m.metric(
        "moat_ratelimit_decisions_total{plugin=\"concurrency\",result=\"error\",route=\"cd\"}",
    );
    assert_eq!(errors, Some(1.0));
    // allow and local both pass a lone request; with one in flight, local refuses the next
    // (this instance's own count) and allow does not count at all.
    up.set(Behavior {
        delay: Duration::from_millis(800),
        ..Behavior::default()
    });
    let p = m.port;
    let held: Vec<_> = ["/cl/held", "/ca/held"]
        .into_iter()
        .map(|path| std::thread::spawn(move || request(p, "GET", path, &[], b"").status))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    up.set(Behavior::default());
    let r = get(&m, "/cl/next", &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "CONCURRENCY_LIMITED");
    assert_eq!(status(&m, "/ca/next"), 200);
    let held: Vec<u16> = held.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    assert_eq!(held, [200, 200]);
    assert!(m.metric("moat_redis_errors_total").unwrap_or(0.0) >= 1.0);

    // Back: the breaker probes and cluster decisions resume.
    let _redis = RedisServer::start_on(port);
    let back = wait_until(Duration::from_secs(5), || status(&m, "/cd") == 200);
    assert!(back, "concurrency: no recovery after Redis came back");
    let back = wait_until(Duration::from_secs(5), || status(&m, "/qd") == 200);
    assert!(back, "quota: no recovery after Redis came back");
}
