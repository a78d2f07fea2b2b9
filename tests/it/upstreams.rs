//! Upstream pools through the real binary: balancing, active health checks, retries and
//! the idempotency rule, error statuses, passive outlier ejection.
//!
//! Every response the harness upstream sends carries `X-Upstream: <name>`, so each
//! answer is attributed to the target that produced it; `Upstream::traffic()` counts what
//! each target received (health probes excluded).

use crate::harness::{free_port, request, wait_until, Behavior, Moat, Response, Upstream};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Health-check settings used by the failover tests (interval 200ms, 2 to flip).
const FAST_HTTP_CHECK: &str =
    "{ http: { path: /healthz }, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }";

/// Keep a well-formed incoming `X-Request-ID`, whoever sends it (the client is the test).
const REQUEST_ID: &str = "global_plugins:\n  - request_id: { trust_incoming: any }\n";

/// A catch-all route to `upstream`.
fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: {upstream}\n")
}

fn get(m: &Moat, path: &str) -> Response {
    request(m.port, "GET", path, &[], b"")
}

/// Which upstream answered (the harness upstream's `X-Upstream` header).
fn who(r: &Response) -> String {
    r.header("x-upstream").unwrap_or("<moat>").to_string()
}

/// The value of the sample `name{...}` whose labels include every pair in `labels`.
fn metric(m: &Moat, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = m.admin_get("/metrics").text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn errors(m: &Moat, upstream: &str, kind: &str) -> f64 {
    metric(
        m,
        "moat_upstream_errors_total",
        &[("upstream", upstream), ("kind", kind)],
    )
    .unwrap_or(0.0)
}

fn healthy_gauge(m: &Moat, upstream: &str, target: &str) -> Option<f64> {
    metric(
        m,
        "moat_upstream_target_healthy",
        &[("upstream", upstream), ("target", target)],
    )
}

/// The `/status` entry of `target` in `upstream`.
fn target_status(m: &Moat, upstream: &str, target: &str) -> Value {
    let status = m.admin_get("/status").json();
    status["upstreams"][upstream]["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["address"] == target).cloned())
        .unwrap_or_else(|| panic!("no target {target} in upstream {upstream}: {status}"))
}

fn is_healthy(m: &Moat, upstream: &str, target: &str) -> bool {
    target_status(m, upstream, target)["healthy"] == Value::Bool(true)
}

/// Wait (bounded) until `/status` reports `target` with the given health; returns how long
/// it took.
fn wait_health(m: &Moat, upstream: &str, target: &str, healthy: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    let ok = wait_until(limit, || is_healthy(m, upstream, target) == healthy);
    assert!(
        ok,
        "{upstream}/{target} not healthy={healthy} after {limit:?}: {}\n{}",
        target_status(m, upstream, target),
        m.logs()
    );
    start.elapsed()
}

/// Assert the contract's JSON error body: code, status, request id, no internal address.
fn assert_error(r: &Response, status: u16, code: &str, forbidden: &[String]) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.text()
    );
    let j = r.json();
    assert_eq!(j["error"]["code"], code, "{j}");
    let id = j["error"]["request_id"].as_str().unwrap_or_default();
    assert!(!id.is_empty(), "no request_id: {j}");
    assert_eq!(
        r.header("x-request-id"),
        Some(id),
        "the body's request_id is the echoed X-Request-ID"
    );
    let msg = j["error"]["message"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "no message: {j}");
    for f in forbidden.iter().map(String::as_str).chain(["127.0.0.1"]) {
        assert!(
            !r.text().contains(f),
            "error body leaks `{f}`: {}",
            r.text()
        );
    }
}

fn count_path(up: &Upstream, prefix: &str) -> usize {
    up.traffic()
        .iter()
        .filter(|r| r.target.starts_with(prefix))
        .count()
}

// ---------------------------------------------------------------------------------------
// 1. Balancing
// ---------------------------------------------------------------------------------------

#[test]
fn balancing_algorithms() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let (aa, ba) = (a.address(), b.address());
    let body = format!(
        "upstreams:\n  \
           wrr: {{ targets: [\"{aa}\", {{ address: \"{ba}\", weight: 3 }}], balance: round_robin }}\n  \
           rnd: {{ targets: [\"{aa}\", \"{ba}\"], balance: random }}\n  \
           least: {{ targets: [\"{aa}\", \"{ba}\"], balance: least_requests }}\n  \
           hash: {{ targets: [\"{aa}\", \"{ba}\"], balance: consistent_hash, hash_key: \"HASHKEY\" }}\n\
         routes:\n{}{}{}{}",
        route("wrr", "/wrr", "wrr"),
        route("rnd", "/rnd", "rnd"),
        route("least", "/least", "least"),
        route("hash", "/hash", "hash"),
    )
    .replace("HASHKEY", "{{header.x-user}}");
    let m = Moat::start(&body);

    // Weighted round robin: weights 1 and 3 over 40 requests is exactly 10 / 30.
    for i in 0..40 {
        let r = get(&m, &format!("/wrr/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!((count_path(&a, "/wrr"), count_path(&b, "/wrr")), (10, 30));

    // Random and least_requests: every request answered, both targets used.
    for prefix in ["/rnd", "/least"] {
        for i in 0..40 {
            assert_eq!(get(&m, &format!("{prefix}/{i}")).status, 200);
        }
        let (na, nb) = (count_path(&a, prefix), count_path(&b, prefix));
        assert_eq!(na + nb, 40, "{prefix}");
        assert!(na > 0 && nb > 0, "{prefix} used one target only: {na}/{nb}");
    }

    // Consistent hash on x-user: sticky per user, different users spread.
    let mut owners = std::collections::BTreeMap::new();
    for u in 0..24 {
        let user = format!("user-{u}");
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..4 {
            let r = request(
                m.port,
                "GET",
                &format!("/hash/{u}/{i}"),
                &[("x-user", user.as_str())],
                b"",
            );
            assert_eq!(r.status, 200);
            seen.insert(who(&r));
        }
        assert_eq!(seen.len(), 1, "{user} moved between targets: {seen:?}");
        owners.insert(user, seen.into_iter().next().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        2,
        "all users hashed to one target: {owners:?}"
    );
    // What the targets recorded agrees with the responses.
    assert_eq!(count_path(&a, "/hash") + count_path(&b, "/hash"), 24 * 4);
    for r in a.traffic().iter().filter(|r| r.target.starts_with("/hash")) {
        assert_eq!(owners[r.header("x-user").unwrap()], "a");
    }
}

#[test]
fn least_requests_avoids_a_busy_target() {
    let slow = Upstream::start("slow");
    slow.set(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let fast = Upstream::start("fast");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\", \"{}\"], balance: least_requests }}\nroutes:\n{}",
        slow.address(),
        fast.address(),
        route("app", "/", "app")
    );
    let m = Moat::start(&body);
    let port = m.port;

    // Start requests in the background until one is in flight on the slow target.
    let mut background = Vec::new();
    for i in 0..20 {
        background.push(std::thread::spawn(move || {
            request(port, "GET", &format!("/bg/{i}"), &[], b"").status
        }));
        if wait_until(Duration::from_millis(100), || !slow.traffic().is_empty()) {
            break;
        }
    }
    assert_eq!(
        slow.traffic().len(),
        1,
        "no request ever went to the slow target"
    );
    assert_eq!(target_status(&m, "app", &slow.address())["in_flight"], 1);

    // While it is busy, every new request goes to the idle target.
    let start = Instant::now();
    for i in 0..10 {
        let r = get(&m, &format!("/fg/{i}"));
        assert_eq!((r.status, who(&r)), (200, "fast".to_string()));
    }
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "the check outlived the slow request"
    );
    assert_eq!(slow.traffic().len(), 1);
    for t in background {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Finished requests are no longer counted in flight.
    for t in [&slow, &fast] {
        assert!(
            wait_until(Duration::from_secs(2), || target_status(
                &m,
                "app",
                &t.address()
            )["in_flight"]
                == 0),
            "in_flight leaked: {}",
            target_status(&m, "app", &t.address())
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Active health checks
// ---------------------------------------------------------------------------------------

fn health_config(a: &Upstream, b: &Upstream, check: &str) -> String {
    format!(
        "upstreams:\n  app:\n    targets: [\"{}\", \"{}\"]\n    health_check: {check}\n    retries: 0\nroutes:\n{}",
        a.address(),
        b.address(),
        route("app", "/", "app")
    )
}

/// Send `n` GETs and return how many each upstream answered (by name).
fn spread(m: &Moat, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for i in 0..n {
        let r = get(m, &format!("/x/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        *out.entry(who(&r)).or_insert(0) += 1;
    }
    out
}

/// Kill target b, check it is taken out within interval × unhealthy_after (+ slack) and
/// that everything then goes to a; bring it back on the same port and check it returns.
fn failover_and_recovery(check: &str, expect_probe_path: Option<&str>) {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let target_b = b.address();
    let m = Moat::start(&health_config(&a, &b, check));

    // Probes run, with the configured path and the probe's User-Agent.
    if let Some(path) = expect_probe_path {
        assert!(
            wait_until(Duration::from_secs(3), || b
                .requests()
                .iter()
                .any(|r| r.target == path)),
            "no probe reached b: {:?}",
            b.requests()
        );
        let probe = b.requests().into_iter().find(|r| r.target == path).unwrap();
        assert_eq!(probe.method, "GET");
        assert_eq!(probe.header("user-agent"), Some("moat-health-check"));
    }
    assert!(is_healthy(&m, "app", &target_b));
    assert_eq!(healthy_gauge(&m, "app", &target_b), Some(1.0));
    let before = spread(&m, 10);
    assert_eq!(before.get("a"), Some(&5), "{before:?}");
    assert_eq!(before.get("b"), Some(&5), "{before:?}");

    // Kill b. Two failed probes 200ms apart: no sooner than one interval, and well
    // within interval × unhealthy_after + slack.
    let port = b.addr.port();
    drop(b);
    let took = wait_health(&m, "app", &target_b, false, Duration::from_secs(4));
    assert!(
        took >= Duration::from_millis(150),
        "unhealthy after a single failure ({took:?})"
    );
    assert!(
        took < Duration::from_millis(2000),
        "took {took:?} to notice a dead target"
    );
    assert_eq!(healthy_gauge(&m, "app", &target_b), Some(0.0));
    assert!(is_healthy(&m, "app", &a.address()));
    let a_before = a.traffic().len();
    let during = spread(&m, 10);
    assert_eq!(
        during.get("a"),
        Some(&10),
        "traffic went to the dead target: {during:?}"
    );
    assert_eq!(a.traffic().len(), a_before + 10);

    // Bring it back on the same port: healthy after two good probes, then gets traffic.
    let b2 = Upstream::start_on("b", port);
    let took = wait_health(&m, "app", &target_b, true, Duration::from_secs(4));
    assert!(
        took >= Duration::from_millis(150),
        "healthy after a single success ({took:?})"
    );
    assert_eq!(healthy_gauge(&m, "app", &target_b), Some(1.0));
    let after = spread(&m, 10);
    assert!(
        after.get("b").is_some_and(|&n| n >= 4),
        "restored target gets no traffic: {after:?}"
    );
    assert!(
        b2.traffic().len() >= 3,
        "the restarted server saw {} requests",
        b2.traffic().len()
    );
}

#[test]
fn http_health_check_failover_and_recovery() {
    failover_and_recovery(FAST_HTTP_CHECK, Some("/healthz"));
}

#[test]
fn tcp_health_check_failover_and_recovery() {
    failover_and_recovery(
        "{ tcp: {}, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }",
        None,
    );
}

#[test]
fn http_health_check_takes_out_a_target_answering_500() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    b.set(Behavior {
        status: 500,
        ..Behavior::default()
    });
    let target_b = b.address();
    let m = Moat::start(&health_config(
        &a,
        &b,
        "{ http: { path: /healthz, expect_status: 200, host: health.internal }, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }",
    ));
    wait_health(&m, "app", &target_b, false, Duration::from_secs(4));
    assert_eq!(healthy_gauge(&m, "app", &target_b), Some(0.0));
    // The probe carried the configured Host.
    let probe = b
        .requests()
        .into_iter()
        .find(|r| r.target == "/healthz")
        .expect("a probe");
    assert_eq!(probe.header("host"), Some("health.internal"));

    let b_traffic = b.traffic().len();
    let out = spread(&m, 10);
    assert_eq!(out.get("a"), Some(&10), "{out:?}");
    assert_eq!(b.traffic().len(), b_traffic);

    // Answering 200 again brings it back.
    b.set(Behavior::default());
    wait_health(&m, "app", &target_b, true, Duration::from_secs(4));
    assert_eq!(healthy_gauge(&m, "app", &target_b), Some(1.0));
    let out = spread(&m, 10);
    assert!(out.get("b").is_some_and(|&n| n >= 4), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// 3. Retries on connect failure
// ---------------------------------------------------------------------------------------

#[test]
fn connect_failures_are_retried_on_another_target() {
    let live = Upstream::start("live");
    let (dead1, dead2) = (free_port(), free_port());
    let body = format!(
        "{REQUEST_ID}upstreams:\n  \
           r1: {{ targets: [\"127.0.0.1:{dead1}\", \"{l}\"], retries: 1, connect_timeout: 500ms }}\n  \
           r0: {{ targets: [\"127.0.0.1:{dead2}\", \"{l}\"], retries: 0, connect_timeout: 500ms }}\n\
         routes:\n{}{}",
        route("r1", "/r1", "r1"),
        route("r0", "/r0", "r0"),
        l = live.address(),
    );
    let m = Moat::start(&body);

    // retries: 1 — every GET succeeds, the refused connects are counted.
    let connect_before = errors(&m, "r1", "connect");
    for i in 0..10 {
        let r = get(&m, &format!("/r1/{i}"));
        assert_eq!(
            (r.status, who(&r)),
            (200, "live".to_string()),
            "{}",
            r.text()
        );
    }
    let connect_errors = errors(&m, "r1", "connect") - connect_before;
    assert!(
        (5.0..=10.0).contains(&connect_errors),
        "round robin sends about every other first try to the dead target: {connect_errors} connect errors"
    );
    // A connect failure happens before anything was sent: POST is retried too, body intact.
    for i in 0..4 {
        let payload = format!("payload-{i}");
        let r = request(m.port, "POST", "/r1/post", &[], payload.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(live.last().body, payload.as_bytes());
    }
    assert_eq!(count_path(&live, "/r1/post"), 4);

    // retries: 0 — the requests sent to the dead target fail with 502.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = get(&m, &format!("/r0/{i}"));
        if r.status != 200 {
            assert_error(&r, 502, "BAD_GATEWAY", &[dead2.to_string()]);
        }
        statuses.push(r.status);
    }
    let failed = statuses.iter().filter(|&&s| s == 502).count();
    assert_eq!(
        failed, 5,
        "round robin over a dead and a live target, no retry: {statuses:?}"
    );
    assert_eq!(count_path(&live, "/r0"), 5);
    assert_eq!(errors(&m, "r0", "connect"), 5.0);
}

// ---------------------------------------------------------------------------------------
// 4. After the request was sent: only idempotent methods are retried
// ---------------------------------------------------------------------------------------

#[test]
fn only_idempotent_requests_are_retried_after_sending() {
    let hang = Upstream::start("hang");
    hang.set(Behavior {
        hang_up: true,
        ..Behavior::default()
    });
    let ok = Upstream::start("ok");
    let body = format!(
        "{REQUEST_ID}upstreams:\n  app: {{ targets: [\"{}\", \"{}\"], retries: 1 }}\nroutes:\n{}",
        hang.address(),
        ok.address(),
        route("app", "/", "app")
    );
    let m = Moat::start(&body);
    let method_count =
        |u: &Upstream, method: &str| u.traffic().iter().filter(|r| r.method == method).count();

    // GET: whichever target it tries first, it ends on `ok`.
    for i in 0..6 {
        let r = get(&m, &format!("/get/{i}"));
        assert_eq!((r.status, who(&r)), (200, "ok".to_string()), "{}", r.text());
    }
    assert_eq!(method_count(&ok, "GET"), 6);
    assert!(
        method_count(&hang, "GET") >= 1,
        "round robin never tried the hang-up target"
    );

    // PUT is idempotent too: retried, with its body replayed intact.
    for i in 0..2 {
        let payload = format!("put-body-{i}");
        let r = request(m.port, "PUT", "/put", &[], payload.as_bytes());
        assert_eq!((r.status, who(&r)), (200, "ok".to_string()), "{}", r.text());
        assert_eq!(ok.last().body, payload.as_bytes());
    }
    assert!(
        method_count(&hang, "PUT") >= 1,
        "round robin never tried the hang-up target with PUT"
    );

    // POST: once the hang-up target has read it, it is not sent anywhere else.
    let (mut failed, mut passed) = (0, 0);
    for i in 0..6 {
        let payload = format!("post-body-{i}");
        let seen = |u: &Upstream| {
            u.traffic()
                .iter()
                .filter(|r| r.body == payload.as_bytes())
                .count()
        };
        let r = request(m.port, "POST", "/post", &[], payload.as_bytes());
        match r.status {
            200 => {
                passed += 1;
                assert_eq!((seen(&hang), seen(&ok)), (0, 1), "{payload}");
            }
            _ => {
                failed += 1;
                assert_error(&r, 502, "BAD_GATEWAY", &[hang.addr.port().to_string()]);
                assert_eq!(
                    (seen(&hang), seen(&ok)),
                    (1, 0),
                    "{payload}: a POST the upstream had read was sent again"
                );
            }
        }
    }
    assert!(
        failed >= 1 && passed >= 1,
        "round robin should alternate: {failed} failed, {passed} passed"
    );
    assert_eq!(method_count(&hang, "POST"), failed);
    assert_eq!(method_count(&ok, "POST"), passed);
    // Failed and retried attempts are not left counted in flight.
    for t in [&hang, &ok] {
        assert_eq!(target_status(&m, "app", &t.address())["in_flight"], 0);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Statuses and bodies moat answers for upstream failures
// ---------------------------------------------------------------------------------------

#[test]
fn upstream_failure_statuses_and_bodies() {
    let s1 = Upstream::start("s1");
    let s2 = Upstream::start("s2");
    for s in [&s1, &s2] {
        s.set(Behavior {
            status: 503,
            ..Behavior::default()
        });
    }
    let slow = Upstream::start("slow");
    slow.set(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let (dead1, dead2) = (free_port(), free_port());
    let body = format!(
        "{REQUEST_ID}upstreams:\n  \
           sick:\n    targets: [\"{}\", \"{}\"]\n    health_check: {{ http: {{ path: /healthz }}, interval: 200ms, timeout: 200ms, unhealthy_after: 1, healthy_after: 2 }}\n  \
           dead: {{ targets: [\"127.0.0.1:{dead1}\", \"127.0.0.1:{dead2}\"], retries: 1 }}\n  \
           slow: {{ targets: [\"{}\"], read_timeout: 300ms }}\n\
         routes:\n{}{}{}",
        s1.address(),
        s2.address(),
        slow.address(),
        route("sick", "/sick", "sick"),
        route("dead", "/dead", "dead"),
        route("slow", "/slow", "slow"),
    );
    let m = Moat::start(&body);
    let ports: Vec<String> = [
        s1.addr.port(),
        s2.addr.port(),
        dead1,
        dead2,
        slow.addr.port(),
    ]
    .iter()
    .map(u16::to_string)
    .collect();

    // No healthy target: 503 at once, nothing sent upstream.
    wait_health(&m, "sick", &s1.address(), false, Duration::from_secs(4));
    wait_health(&m, "sick", &s2.address(), false, Duration::from_secs(4));
    let no_target_before = errors(&m, "sick", "no_healthy_target");
    let start = Instant::now();
    let r = request(
        m.port,
        "GET",
        "/sick/x",
        &[("x-request-id", "trace-503.a_1")],
        b"",
    );
    let took = start.elapsed();
    assert_error(&r, 503, "SERVICE_UNAVAILABLE", &ports);
    assert_eq!(r.json()["error"]["request_id"], "trace-503.a_1");
    assert!(took < Duration::from_millis(500), "503 took {took:?}");
    assert_eq!(
        s1.traffic().len() + s2.traffic().len(),
        0,
        "a request reached an unhealthy target"
    );
    assert_eq!(
        errors(&m, "sick", "no_healthy_target"),
        no_target_before + 1.0
    );

    // Every target refuses, retries exhausted: 502, both targets tried.
    let connect_before = errors(&m, "dead", "connect");
    let r = get(&m, "/dead/x");
    assert_error(&r, 502, "BAD_GATEWAY", &ports);
    assert_eq!(errors(&m, "dead", "connect"), connect_before + 2.0);

    // Slower than read_timeout: 504 after about 300ms, well under the upstream's delay.
    let start = Instant::now();
    let r = get(&m, "/slow/x");
    let took = start.elapsed();
    assert_error(&r, 504, "GATEWAY_TIMEOUT", &ports);
    assert!(
        took >= Duration::from_millis(250),
        "504 before read_timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(1200), "504 took {took:?}");
    assert_eq!(slow.traffic().len(), 1);
    assert!(errors(&m, "slow", "timeout") >= 1.0);
}

// ---------------------------------------------------------------------------------------
// 6. Passive outlier ejection
// ---------------------------------------------------------------------------------------

#[test]
fn outlier_ejection_and_return() {
    let bad = Upstream::start("bad");
    bad.set(Behavior {
        status: 500,
        ..Behavior::default()
    });
    let good = Upstream::start("good");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\", \"{}\"], outlier: {{ consecutive_failures: 2, eject_for: 2s }} }}\nroutes:\n{}",
        bad.address(),
        good.address(),
        route("app", "/", "app")
    );
    let m = Moat::start(&body);
    let target_bad = bad.address();

    // Round robin until the bad target has failed twice in a row.
    let mut n = 0;
    while bad.traffic().len() < 2 {
        n += 1;
        assert!(
            n <= 10,
            "the bad target got {} of {n} requests",
            bad.traffic().len()
        );
        let r = get(&m, &format!("/warm/{n}"));
        assert_eq!(r.status, if who(&r) == "bad" { 500 } else { 200 });
    }
    let ejected_at = Instant::now();
    let st = target_status(&m, "app", &target_bad);
    assert_eq!(st["ejected"], true, "{st}");
    assert_eq!(st["healthy"], true, "ejection is not active health: {st}");
    assert!(errors(&m, "app", "response_5xx") >= 2.0);

    // While ejected: everything goes to the good target.
    let mut sent = 0;
    while ejected_at.elapsed() < Duration::from_millis(1500) {
        let r = get(&m, &format!("/ejected/{sent}"));
        assert_eq!(
            (r.status, who(&r)),
            (200, "good".to_string()),
            "at {:?}",
            ejected_at.elapsed()
        );
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sent >= 5);
    assert_eq!(bad.traffic().len(), 2, "an ejected target got traffic");

    // After eject_for it is tried again.
    let back = wait_until(Duration::from_secs(4), || {
        get(&m, "/after");
        bad.traffic().len() > 2
    });
    let after = ejected_at.elapsed();
    assert!(back, "the ejected target never got traffic again");
    assert!(
        after >= Duration::from_millis(1800),
        "back after {after:?}, before eject_for"
    );
    assert!(
        after < Duration::from_millis(4000),
        "back only after {after:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Active checks against a TLS upstream signed by a private CA (`tls.ca_file`)
// ---------------------------------------------------------------------------------------

/// The probes must trust the same CA (`tls.ca_file`) as the proxied requests do, or a
/// healthy TLS upstream behind a private CA is marked down and every request gets 503.
#[test]
fn http_health_check_over_tls_trusts_the_configured_ca() {
    use crate::harness::tls::{ca, leaf, TlsUpstream};
    use std::sync::atomic::Ordering;
    let dir = crate::harness::moat::temp_dir("hc-tls");
    let authority = ca();
    let (ca_file, _) = authority.write(&dir, "ca");
    let up = TlsUpstream::start(&leaf(&authority, &["users.internal"]));
    let target = format!("127.0.0.1:{}", up.port);
    let body = format!(
        "upstreams:\n  app:\n    targets: [\"{target}\"]\n    tls: {{ sni: users.internal, verify: true, ca_file: \"{}\" }}\n    health_check: {{ http: {{ path: /healthz }}, interval: 200ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}\nroutes:\n{}",
        ca_file.display(),
        route("app", "/", "app")
    );
    let m = Moat::start(&body);
    // The proxied request verifies against the CA and works.
    let r = get(&m, "/x");
    assert_eq!((r.status, r.text().as_str()), (200, "tls-ok"));
    // Several probe rounds later the target must still be healthy and serving.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        is_healthy(&m, "app", &target),
        "a healthy TLS target was marked down: {}\n{}",
        target_status(&m, "app", &target),
        m.logs()
    );
    assert!(
        up.hits.load(Ordering::SeqCst) >= 3,
        "probes never completed a TLS handshake"
    );
    let r = get(&m, "/y");
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = std::fs::remove_dir_all(&dir);
}
