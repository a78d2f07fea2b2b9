//! Local limiter decision cost: one key hot (lock + lookup + algorithm), a rotating set of
//! 100,000 keys (cache misses), each algorithm, a 4-thread contended run, and a
//! concurrency slot taken and released. Also prints the memory of 1,000,000 distinct keys.
//!
//! The concurrency slot is measured against `pingora-limits`' `Inflight` too (a count-min
//! sketch: 4 hashes × 8,192 counters), alone and under 4 threads, and the sketch's false
//! refusals are printed: the measurement behind keeping moat's exact counter (see
//! `docs/performance.md`, "pingora-limits").

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use moat::ratelimit::algo::{now_us, Algorithm, Limit, SEC};
use moat::ratelimit::store::{approx_bytes_per_key, Inflight, Store};
use std::sync::Arc;

fn lim() -> Limit {
    Limit {
        count: 1_000_000_000,
        window_us: SEC,
        burst: 1_000_000_000,
    }
}

fn decisions(c: &mut Criterion) {
    let l = lim();
    for (name, a) in [
        ("sliding_window", Algorithm::SlidingWindow),
        ("token_bucket", Algorithm::TokenBucket),
        ("fixed_window", Algorithm::FixedWindow),
    ] {
        let st = Store::new(1_000_000);
        let idle = a.idle_after_us(&l);
        c.bench_function(&format!("limit/{name}/one_key"), |b| {
            b.iter(|| {
                let now = now_us();
                st.with_slot(black_box("203.0.113.7"), now, idle, |s| {
                    a.decide(s, &l, now).allowed
                })
            })
        });
    }
    let st = Store::new(1_000_000);
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let a = Algorithm::SlidingWindow;
    let idle = a.idle_after_us(&l);
    let mut i = 0usize;
    c.bench_function("limit/sliding_window/100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let now = now_us();
            st.with_slot(&keys[i], now, idle, |s| a.decide(s, &l, now).allowed)
        })
    });
    let shared = Arc::new(Store::new(1_000_000));
    c.bench_function("limit/sliding_window/4_threads_x_1000", |b| {
        b.iter(|| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let st = Arc::clone(&shared);
                    std::thread::spawn(move || {
                        for j in 0..1000 {
                            let k = format!("{t}-{}", j % 64);
                            let now = now_us();
                            st.with_slot(&k, now, 2 * SEC, |s| {
                                Algorithm::SlidingWindow.decide(s, &lim(), now).allowed
                            });
                        }
                    })
                })
                .collect();
            for h in hs {
                let _ = h.join();
            }
        })
    });
    let inflight = Arc::new(Inflight::default());
    c.bench_function("limit/concurrency/acquire_release", |b| {
        b.iter(|| drop(black_box(inflight.acquire("203.0.113.7", 10))))
    });
    let sketch = pingora_limits::inflight::Inflight::new();
    c.bench_function("limit/concurrency/pingora_limits_acquire_release", |b| {
        b.iter(|| {
            let (guard, n) = sketch.incr(black_box("203.0.113.7"), 1);
            black_box(n <= 10);
            drop(guard)
        })
    });
    c.bench_function("limit/concurrency/4_threads_x_1000", |b| {
        b.iter(|| {
            contended(|k| {
                drop(black_box(inflight.acquire(k, 10)));
            })
        })
    });
    c.bench_function("limit/concurrency/pingora_limits_4_threads_x_1000", |b| {
        b.iter(|| {
            contended(|k| {
                let (guard, n) = sketch.incr(k, 1);
                black_box(n <= 10);
                drop(guard)
            })
        })
    });
}

/// 4 threads taking and releasing 1,000 slots each on 64 keys apiece.
fn contended(take: impl Fn(&str) + Sync) {
    std::thread::scope(|s| {
        for t in 0..4 {
            let take = &take;
            s.spawn(move || {
                let mut k = String::new();
                for j in 0..1000 {
                    k.clear();
                    k.push_str(&format!("{t}-{}", j % 64));
                    take(&k);
                }
            });
        }
    });
}

/// How often `pingora-limits`' sketch refuses a key that holds no slot, with `max: 1`,
/// while N other keys hold one each (moat's exact counter never does).
fn sketch_accuracy(_c: &mut Criterion) {
    for held in [1_000, 10_000, 100_000] {
        let sketch = pingora_limits::inflight::Inflight::new();
        let guards: Vec<_> = (0..held)
            .map(|i| sketch.incr(format!("10.0.{}.{}", i >> 8, i & 255), 1).0)
            .collect();
        let probes = 10_000;
        let refused = (0..probes)
            .filter(|j| sketch.incr(format!("192.0.2.{j}"), 1).1 > 1)
            .count();
        println!(
            "limit/concurrency/pingora_limits: {held} keys in flight, {refused} of {probes} idle keys refused ({:.2} %; moat's exact counter: 0)",
            refused as f64 * 100.0 / probes as f64
        );
        drop(guards);
    }
}

fn memory(_c: &mut Criterion) {
    fn rss() -> usize {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
            .unwrap_or(0)
            * 4096
    }
    let n = 1_000_000;
    let before = rss();
    let st = Store::new(n);
    let l = lim();
    let now = now_us();
    for i in 0..n {
        let k = format!("2001:db8::{:x}:{:x}", i >> 16, i & 0xffff);
        st.with_slot(&k, now, 2 * SEC, |s| {
            Algorithm::SlidingWindow.decide(s, &l, now)
        });
    }
    let grown = rss().saturating_sub(before);
    println!(
        "limit/memory: {} keys, RSS +{:.1} MB = {} bytes/key (structural estimate {} for 20-byte keys)",
        st.len(),
        grown as f64 / 1e6,
        grown / n,
        approx_bytes_per_key(20)
    );
}

criterion_group!(benches, decisions, memory, sketch_accuracy);
criterion_main!(benches);
