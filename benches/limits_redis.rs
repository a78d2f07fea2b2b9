//! Cluster-scope limiter costs against a real `redis-server` started here on a free
//! 127.0.0.1 port (skipped, with a note, when `redis-server` is not installed):
//! - `limit/exact/decide`: one `mode: exact` decision, i.e. one Redis round trip running
//!   the limiter's Lua script;
//! - `limit/fast/decide`: one `mode: fast` decision on the request path (local; a
//!   background sync per key at most every `sync_interval` goes to Redis);
//! - `limit/fast_bucket/sync_view`: the fast token bucket's sync bookkeeping (debit what
//!   was admitted, apply Redis's answer), without the round trip.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use moat::config::model::RedisConfig;
use moat::ratelimit::algo::{now_us, Algorithm, Limit, SEC};
use moat::ratelimit::cluster::Cluster;
use moat::ratelimit::fast::Fast;
use moat::ratelimit::fast_bucket::BucketView;
use moat::redis::config::Settings;
use moat::redis::Redis;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn lim() -> Limit {
    Limit {
        count: 1_000_000_000,
        window_us: SEC,
        burst: 1_000_000_000,
    }
}

/// A throwaway redis-server, killed when dropped.
struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Server> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child, port);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn redis_benches(c: &mut Criterion) {
    let l = lim();
    let mut v = BucketView::default();
    let mut t = now_us();
    c.bench_function("limit/fast_bucket/sync_view", |b| {
        b.iter(|| {
            t += 1_000;
            v.decide(&l, t);
            if let Some(sent) = v.start_sync(t, 1) {
                v.finish_sync(Some(black_box(1_000_000_000_000 - sent as i64)), t);
            }
        })
    });

    let Some(server) = start_redis() else {
        eprintln!("redis-server not found or did not start: Redis benches skipped");
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    else {
        eprintln!("no tokio runtime: Redis benches skipped");
        return;
    };
    let yaml = format!("url: redis://127.0.0.1:{}/0\ntimeout: 250ms\n", server.1);
    let cfg: RedisConfig = match serde_yaml::from_str(&yaml) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redis config: {e}");
            return;
        }
    };
    let errors = prometheus::IntCounter::new("bench_redis_errors", "errors").ok();
    let settings = Settings::parse(&cfg).ok();
    let Some(redis) = errors
        .zip(settings)
        .map(|(e, s)| Arc::new(Redis::new(s, e)))
    else {
        eprintln!("no Redis client: Redis benches skipped");
        return;
    };

    let exact = Cluster::new(Arc::clone(&redis), "bench|exact");
    c.bench_function("limit/exact/decide", |b| {
        b.iter(|| rt.block_on(exact.decide(black_box("203.0.113.7"), Algorithm::SlidingWindow, &l)))
    });

    let fast = Arc::new(Fast::new(
        Arc::clone(&redis),
        "bench|fast",
        100_000,
        1_000_000,
    ));
    let _guard = rt.enter();
    c.bench_function("limit/fast/decide", |b| {
        b.iter(|| {
            let now = now_us();
            fast.decide(
                black_box("203.0.113.7"),
                Algorithm::SlidingWindow,
                &l,
                now,
                2 * SEC,
            )
        })
    });
}

criterion_group!(benches, redis_benches);
criterion_main!(benches);
