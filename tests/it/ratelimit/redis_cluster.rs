//! Cluster-scope limits on a real 3-master Redis Cluster (`redis.cluster`): per-tenant
//! limits shared by three moat instances while the tenants' keys live on different
//! masters, one seed URL being enough, `mode: fast`, HMAC replays, a slot migrated under
//! traffic (`ASK` then `MOVED` followed, the count carried over) and a killed master
//! (its keys follow `on_redis_error`, the other masters' keys stay limited), a master
//! that stops answering while its slot moves elsewhere (followed), and a first seed
//! that never answers (the next seeds are asked).

use crate::harness::redis::RedisCluster;
use crate::harness::{request, wait_until, Moat, Upstream};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANTS: [&str; 8] = [
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
];

/// A config with `redis.cluster` set to `seeds` and one route limited by `limit`.
fn config(seeds: &[String], up: &Upstream, limit: &str, timeout: &str) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "redis: {{ cluster: [{}], timeout: {timeout} }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ {limit} }}\n",
        seeds.join(", "),
        up.address()
    )
}

fn tenant(port: u16, t: &str) -> u16 {
    request(port, "GET", "/x", &[("x-tenant", t)], b"").status
}

/// The master holding the keys of `tenant` (`moat:{rl:<id>:<tenant>}...`), if any.
fn owner(cluster: &RedisCluster, tenant: &str) -> Option<u16> {
    let tag = format!(":{tenant}}}");
    let owners: Vec<u16> = cluster
        .ports
        .iter()
        .copied()
        .filter(|&p| cluster.keys(p).iter().any(|k| k.contains(&tag)))
        .collect();
    assert!(owners.len() <= 1, "{tenant}'s keys on {owners:?}");
    owners.first().copied()
}

#[test]
fn three_instances_share_per_tenant_limits_across_masters() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("app");
    let body = config(
        &cluster.urls(),
        &up,
        "key: \"header:x-tenant\", rate: 10/m, scope: cluster, on_redis_error: deny",
        "2s",
    );
    let ms: Vec<Moat> = (0..3).map(|_| Moat::start(&body)).collect();
    let ports: Vec<u16> = ms.iter().map(|m| m.port).collect();
    // 25 requests per tenant, spread over the instances, from 12 concurrent clients.
    let work: Vec<(usize, u16)> = (0..TENANTS.len() * 25)
        .map(|i| (i % TENANTS.len(), ports[(i / TENANTS.len()) % ports.len()]))
        .collect();
    let work = Arc::new(Mutex::new(work));
    let ok: Arc<Vec<AtomicUsize>> = Arc::new(TENANTS.iter().map(|_| AtomicUsize::new(0)).collect());
    let other = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (work, ok, other) = (Arc::clone(&work), Arc::clone(&ok), Arc::clone(&other));
            std::thread::spawn(move || loop {
                let Some((t, port)) = work.lock().unwrap().pop() else {
                    break;
                };
                match tenant(port, TENANTS[t]) {
                    200 => ok[t].fetch_add(1, Ordering::SeqCst),
                    429 => 0,
                    _ => other.fetch_add(1, Ordering::SeqCst),
                };
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        other.load(Ordering::SeqCst),
        0,
        "answers other than 200/429"
    );
    for (t, n) in TENANTS.iter().zip(ok.iter()) {
        assert_eq!(
            n.load(Ordering::SeqCst),
            10,
            "{t}: allowed across 3 instances"
        );
    }
    assert_eq!(up.requests().len(), 10 * TENANTS.len());
    // The tenants' keys are spread over every master.
    let masters: BTreeSet<u16> = TENANTS.iter().filter_map(|t| owner(&cluster, t)).collect();
    assert_eq!(masters.len(), 3, "keys on {masters:?} only");
    for m in &ms {
        assert_eq!(m.metric("moat_redis_errors_total"), Some(0.0));
    }
}

#[test]
fn one_seed_is_enough_to_reach_every_master() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("app");
    let limit = "key: \"header:x-tenant\", rate: 3/m, scope: cluster, on_redis_error: deny";
    // Each instance knows a different single node.
    let ms: Vec<Moat> = cluster
        .urls()
        .iter()
        .map(|u| Moat::start(&config(std::slice::from_ref(u), &up, limit, "2s")))
        .collect();
    for t in TENANTS {
        let s: Vec<u16> = (0..5).map(|i| tenant(ms[i % 3].port, t)).collect();
        assert_eq!(s, [200, 200, 200, 429, 429], "{t}");
    }
    let masters: BTreeSet<u16> = TENANTS.iter().filter_map(|t| owner(&cluster, t)).collect();
    assert!(masters.len() >= 2, "keys on {masters:?} only");
}

#[test]
fn fast_mode_across_masters_is_bounded_and_converges() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("app");
    let body = config(
        &cluster.urls(),
        &up,
        "key: \"header:x-tenant\", rate: 20/h, scope: cluster, mode: fast, sync_interval: 100ms",
        "1s",
    );
    let ms: Vec<Moat> = (0..3).map(|_| Moat::start(&body)).collect();
    let ports: Vec<u16> = ms.iter().map(|m| m.port).collect();
    let tenants = &TENANTS[..4];
    let ok: Arc<Vec<AtomicUsize>> = Arc::new(tenants.iter().map(|_| AtomicUsize::new(0)).collect());
    let threads: Vec<_> = (0..8)
        .map(|th| {
            let (ok, ports) = (Arc::clone(&ok), ports.clone());
            std::thread::spawn(move || {
                for i in 0..30 {
                    let t = (th + i) % 4;
                    if tenant(ports[(th + i / 4) % 3], TENANTS[t]) == 200 {
                        ok[t].fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 60 requests per tenant; the bound is N + (instances − 1) × N = 60, at least N.
    for (t, n) in tenants.iter().zip(ok.iter()) {
        let n = n.load(Ordering::SeqCst);
        eprintln!("fast mode on a cluster: {t}: {n} of 60 allowed for 20/h");
        assert!((20..=60).contains(&n), "{t}: {n} allowed");
    }
    // One more request per instance and tenant starts a sync; after an interval every
    // instance knows the cluster totals and refuses.
    for &p in &ports {
        for t in tenants {
            tenant(p, t);
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    for &p in &ports {
        for t in tenants {
            assert_eq!(tenant(p, t), 429, "{t} still admitted after syncing");
        }
    }
    let masters: BTreeSet<u16> = tenants.iter().filter_map(|t| owner(&cluster, t)).collect();
    assert!(masters.len() >= 2, "keys on {masters:?} only");
}

/// `path` signed by the credential `svc{n}` (consumer `acme{n}`).
fn signed(path: &str, date: &str, n: usize) -> String {
    // The harness's client sends `Host: localhost`; `host` must be signed.
    let signing = format!("date: {date}\nGET {path} HTTP/1.1\nhost: localhost");
    let mac = moat::auth::hmac::compute(
        moat::auth::hmac::HmacAlg::Sha256,
        format!("cluster-secret-{n}").as_bytes(),
        signing.as_bytes(),
    )
    .unwrap();
    use base64::Engine;
    format!(
        "hmac username=\"svc{n}\", algorithm=\"hmac-sha256\", headers=\"date request-line host\", signature=\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

#[test]
fn hmac_replays_are_refused_across_instances_through_the_cluster() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("app");
    let seeds: Vec<String> = cluster.urls().iter().map(|s| format!("\"{s}\"")).collect();
    // Replay memory is one sorted set per credential (per secret): several credentials,
    // so the sets land on several masters.
    let consumers: String = (0..6)
        .map(|n| {
            format!("  - id: acme{n}\n    hmac: [{{ key_id: svc{n}, secret_env: MOAT_IT_CLUSTER_REPLAY_{n} }}]\n")
        })
        .collect();
    let body = format!(
        "redis: {{ cluster: [{}], timeout: 1s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n{consumers}routes:\n  - name: s\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ replay_window: 300s }} }}\n",
        seeds.join(", "),
        up.address()
    );
    let secrets: Vec<(String, String)> = (0..6)
        .map(|n| {
            (
                format!("MOAT_IT_CLUSTER_REPLAY_{n}"),
                format!("cluster-secret-{n}"),
            )
        })
        .collect();
    let env: Vec<(&str, &str)> = secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = Moat::start_with(&body, &[], &env);
    let b = Moat::start_with(&body, &[], &env);
    let date = moat::auth::dates::format_http_date(moat::auth::dates::now_secs());
    // Several credentials' signatures, so their replay sets land on several masters.
    for n in 0..6 {
        let path = format!("/api/{n}");
        let auth = signed(&path, &date, n);
        let h = [("Date", date.as_str()), ("Authorization", auth.as_str())];
        assert_eq!(request(a.port, "GET", &path, &h, b"").status, 200);
        let r = request(b.port, "GET", &path, &h, b"");
        assert_eq!(
            r.status,
            401,
            "{path} replayed on another instance: {}",
            r.text()
        );
    }
    let holding = cluster
        .ports
        .iter()
        .filter(|&&p| {
            cluster
                .keys(p)
                .iter()
                .any(|k| k.starts_with("moat:replay:"))
        })
        .count();
    assert!(holding >= 2, "replay keys on {holding} master(s)");
    assert_eq!(b.metric("moat_redis_errors_total"), Some(0.0));
}

#[test]
fn a_migrating_slot_is_followed_through_ask_then_moved() {
    migrate_under_traffic("rate: 5/h, burst: 5, algorithm: token_bucket");
}

#[test]
fn a_migrating_window_limit_keeps_its_count() {
    migrate_under_traffic("rate: 5/h, algorithm: sliding_window");
}

/// Every algorithm keeps its whole state in the key its script declares, so Redis can
/// tell whether the key already left the migrating slot, and the count moves with it.
fn migrate_under_traffic(limit: &str) {
    let cluster = RedisCluster::start();
    let up = Upstream::start("app");
    let body = config(
        &cluster.urls(),
        &up,
        &format!("key: \"header:x-tenant\", {limit}, scope: cluster, on_redis_error: deny"),
        "1s",
    );
    let m = Moat::start(&body);
    for _ in 0..3 {
        assert_eq!(tenant(m.port, "acme"), 200);
    }
    let from = owner(&cluster, "acme").expect("acme's key");
    let keys = cluster.keys(from);
    let key = keys.iter().find(|k| k.contains(":acme}")).unwrap().clone();
    let slot = cluster.cli(from, &["CLUSTER", "KEYSLOT", &key]);
    let to = *cluster.ports.iter().find(|&&p| p != from).unwrap();
    let (from_id, to_id) = (cluster.id(from), cluster.id(to));
    // Start the migration and move the key: the old owner now answers ASK.
    assert_eq!(
        cluster.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
        "OK"
    );
    assert_eq!(
        cluster.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
        "OK"
    );
    // Migrating but not moved yet: the key is still on the old owner, which decides
    // (a script whose state lived in other keys would be sent on to the new owner by
    // ASK, and count from zero there).
    assert_eq!(tenant(m.port, "acme"), 200);
    let to_port = to.to_string();
    let migrate = [
        "MIGRATE",
        "127.0.0.1",
        &to_port,
        "",
        "0",
        "5000",
        "KEYS",
        &key,
    ];
    assert_eq!(cluster.cli(from, &migrate), "OK");
    assert_eq!(cluster.cli(to, &["CLUSTER", "COUNTKEYSINSLOT", &slot]), "1");
    let s: Vec<u16> = (0..2).map(|_| tenant(m.port, "acme")).collect();
    assert_eq!(s, [200, 429], "through ASK, the count carried over");
    // End it: the slot belongs to the new owner, the old one answers MOVED.
    for &p in &cluster.ports {
        assert_eq!(
            cluster.cli(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            "OK"
        );
    }
    let moved = cluster.cli(from, &["GET", &key]);
    assert!(moved.starts_with("MOVED"), "{moved}");
    assert_eq!(tenant(m.port, "acme"), 429, "through MOVED");
    assert_eq!(tenant(m.port, "globex"), 200, "another tenant");
    assert_eq!(m.metric("moat_redis_errors_total"), Some(0.0));
    assert_eq!(owner(&cluster, "acme"), Some(to));
}

#[test]
fn a_killed_master_fails_its_keys_only() {
    let mut cluster = RedisCluster::start();
    let up = Upstream::start("app");
    let body = config(
        &cluster.urls(),
        &up,
        "key: \"header:x-tenant\", rate: 3/m, scope: cluster, on_redis_error: deny",
        "300ms",
    );
    let m = Moat::start(&body);
    // One request per tenant places its key; pick one tenant per master.
    let mut by_master: BTreeMap<u16, &str> = BTreeMap::new();
    for t in TENANTS {
        assert_eq!(tenant(m.port, t), 200);
        by_master
            .entry(owner(&cluster, t).expect("key"))
            .or_insert(t);
    }
    assert!(by_master.len() >= 2, "{by_master:?}");
    let (&dead, &lost) = by_master.iter().next().unwrap();
    cluster.kill(dead);
    for (&port, &t) in by_master.iter().skip(1) {
        let s: Vec<u16> = (0..3).map(|_| tenant(m.port, t)).collect();
        assert_eq!(s, [200, 200, 429], "{t} on the live master {port}");
    }
    for _ in 0..5 {
        assert_eq!(tenant(m.port, lost), 503, "{lost} on the killed master");
    }
    // Still so once the others have marked it failed (cluster-node-timeout 2s).
    let failed = wait_until(Duration::from_secs(10), || {
        let live = *by_master.keys().nth(1).unwrap();
        cluster.cli(live, &["CLUSTER", "NODES"]).contains("fail")
    });
    assert!(failed, "the killed master was never marked failed");
    let (_, &alive) = by_master.iter().nth(1).unwrap();
    assert_eq!(tenant(m.port, alive), 429);
    assert_eq!(tenant(m.port, lost), 503);
    assert!(m.metric("moat_redis_errors_total").unwrap_or(0.0) >= 1.0);
}

#[test]
fn a_master_that_stops_answering_is_left_for_the_new_owner_of_its_slot() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("app");
    let body = config(
        &cluster.urls(),
        &up,
        "key: \"header:x-tenant\", rate: 100/m, scope: cluster, on_redis_error: deny",
        "200ms",
    );
    let m = Moat::start(&body);
    assert_eq!(tenant(m.port, "acme"), 200);
    let from = owner(&cluster, "acme").expect("acme's key");
    let key = cluster
        .keys(from)
        .into_iter()
        .find(|k| k.contains(":acme}"))
        .unwrap();
    let slot = cluster.cli(from, &["CLUSTER", "KEYSLOT", &key]);
    let live: Vec<u16> = cluster
        .ports
        .iter()
        .copied()
        .filter(|&p| p != from)
        .collect();
    let to_id = cluster.id(live[0]);
    // Stopped, not killed: connections hang (no error, no refusal), as for a host gone.
    cluster.signal(from, "STOP");
    for _ in 0..5 {
        assert_eq!(tenant(m.port, "acme"), 503, "acme on the stopped master");
    }
    // Its slot is handed to a live master (as a failover would), on every live node.
    for &p in &live {
        assert_eq!(
            cluster.cli(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            "OK"
        );
    }
    let moved = Instant::now();
    let back = wait_until(Duration::from_secs(5), || tenant(m.port, "acme") == 200);
    assert!(back, "acme still sent to the stopped master");
    eprintln!(
        "slot map refreshed {:?} after the slot moved",
        moved.elapsed()
    );
    let t = Instant::now();
    assert_eq!(tenant(m.port, "acme"), 200);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(owner_among(&cluster, &live, "acme"), Some(live[0]));
}

/// [`owner`] among `ports` only (a stopped node would never answer `--scan`).
fn owner_among(cluster: &RedisCluster, ports: &[u16], tenant: &str) -> Option<u16> {
    let tag = format!(":{tenant}}}");
    ports
        .iter()
        .copied()
        .find(|&p| cluster.keys(p).iter().any(|k| k.contains(&tag)))
}

#[test]
fn a_first_seed_that_never_answers_does_not_stop_discovery() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("app");
    // Connections to it are accepted by the kernel, and never answered.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut seeds = vec![format!("redis://{}", hole.local_addr().unwrap())];
    seeds.extend(cluster.urls());
    let body = config(
        &seeds,
        &up,
        "key: \"header:x-tenant\", rate: 3/m, scope: cluster, on_redis_error: deny",
        "500ms",
    );
    let m = Moat::start(&body);
    let t = Instant::now();
    assert_eq!(tenant(m.port, "acme"), 200, "the first call");
    eprintln!("first call through a dead first seed: {:?}", t.elapsed());
    for t in TENANTS {
        let n = if t == "acme" { 3 } else { 4 };
        let s: Vec<u16> = (0..n).map(|_| tenant(m.port, t)).collect();
        let mut want = vec![200; n - 1];
        want.push(429);
        assert_eq!(s, want, "{t}");
    }
    assert_eq!(m.metric("moat_redis_errors_total"), Some(0.0));
    drop(hole);
}
