//! A hostile Redis: a TCP server that logs moat in normally, then answers every limiter
//! call with a huge bulk length followed by an endless stream, a 1 MiB line, garbage, a
//! line split at a bare LF that hides an endless array from a lenient reader, a negative
//! blob length, or a million values. moat keeps serving every request per
//! `on_redis_error`, drops each such connection on the spot (the reply guard, not the
//! timeout, ends the call), its memory stays flat, and nothing panics.

use crate::harness::hostile_redis::{Hostile, HostileRedis};
use crate::harness::{request, Moat, Upstream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn config(redis_port: u16, up: &Upstream) -> String {
    let route = |name: &str, on_error: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ key: ip, rate: 100000/m, scope: cluster, on_redis_error: {on_error} }}\n")
    };
    format!(
        "redis: {{ url: \"redis://127.0.0.1:{redis_port}/0\", timeout: 300ms }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n{}{}{}",
        up.address(),
        route("allow", "allow"),
        route("deny", "deny"),
        route("local", "local"),
    )
}

#[test]
fn a_hostile_redis_never_stops_moat_nor_grows_its_memory() {
    let up = Upstream::start("app");
    for (kind, why) in [
        (Hostile::HugeBulk, "reply too large"),
        (Hostile::MaxBulk, "reply too large"),
        (Hostile::LongLine, "reply line too long"),
        (Hostile::Garbage, "not a RESP reply"),
        (Hostile::LfSmuggle, "CR or LF inside a reply line"),
        (Hostile::NegativeBlob, "bad length in reply"),
        (Hostile::ManyValues, "reply has too many values"),
    ] {
        let redis = HostileRedis::start(kind);
        let m = Moat::start(&config(redis.port, &up));
        let status = |path: &str| request(m.port, "GET", path, &[], b"").status;
        for _ in 0..20 {
            assert_eq!(status("/allow"), 200, "{kind:?}");
        }
        let before = rss_kib(m.pid());
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(2) {
            assert_eq!(status("/allow"), 200, "{kind:?}: allow");
            assert_eq!(status("/deny"), 503, "{kind:?}: deny");
            assert_eq!(status("/local"), 200, "{kind:?}: local");
            n += 3;
        }
        let after = rss_kib(m.pid());
        let logs = m.logs();
        let (connections, attacks) = (
            redis.connections.load(Ordering::SeqCst),
            redis.attacks.load(Ordering::SeqCst),
        );
        eprintln!(
            "{kind:?}: {n} requests answered, {attacks} hostile replies on {connections} connections, RSS {before} KiB -> {after} KiB"
        );
        assert!(
            after < before + 16 * 1024,
            "{kind:?}: RSS grew from {before} KiB to {after} KiB"
        );
        // The breaker lets a probe through every 500 ms: each one is a new connection
        // that logs in, and is dropped as soon as the reply to its call breaks the guard's
        // limits.
        assert!(connections >= 3, "{kind:?}: moat stopped trying");
        assert!(attacks >= 3, "{kind:?}: {attacks} calls reached the server");
        assert!(
            !logs.contains("connect failed"),
            "{kind:?}: the login failed, the calls were never made:\n{logs}"
        );
        assert!(
            logs.contains(why),
            "{kind:?}: no `{why}` in the logs:\n{logs}"
        );
        assert!(
            !logs.contains("Timeout"),
            "{kind:?}: a call waited for the timeout instead of failing at once"
        );
        assert!(!logs.contains("panicked"), "{kind:?}: {logs}");
        assert!(m.metric("moat_redis_errors_total").unwrap_or(0.0) >= 3.0);
    }
}
