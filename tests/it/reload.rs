//! Hot reload through the real binary: POST /reload, SIGHUP, bad configs, pool health kept
//! across reloads, process-level changes refused, `watch: true`, SIGUSR1 log reopening.

use crate::harness::load::Load;
use crate::harness::{request, wait_until, Moat, Upstream};
use std::time::{Duration, Instant};

fn respond(tag: &str) -> String {
    format!("routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    respond: {{ status: 200, body: \"{tag}\" }}\n")
}

#[test]
fn reloads_under_load_lose_nothing() {
    let m = Moat::start(&respond("A"));
    let load = Load::start(m.port, "/x", 2, Duration::from_secs(25));
    let mut swaps = Vec::new();
    for i in 0..20 {
        let tag = if i % 2 == 0 { "B" } else { "A" };
        m.rewrite(&respond(tag));
        let before = Instant::now();
        let r = m.admin_post("/reload");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["generation"], i + 2);
        swaps.push((before, Instant::now(), tag));
        // Right after the reload answers, new requests see the new config.
        assert_eq!(request(m.port, "GET", "/y", &[], b"").text(), tag);
        // About 20 s of load in all.
        std::thread::sleep(Duration::from_millis(900));
        if i == 9 {
            // A bad config mid-load changes nothing.
            m.rewrite(
                "routes:\n  - name: r\n    match: { path: nope }\n    respond: { statuz: 1 }\n",
            );
            let bad = m.admin_post("/reload");
            assert_eq!(bad.status, 400);
            let j = bad.json();
            assert_eq!(j["error"]["code"], "BAD_REQUEST");
            let paths: Vec<&str> = j["error"]["details"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|d| d["path"].as_str())
                .collect();
            assert!(paths.contains(&"routes[0].respond.statuz"), "{paths:?}");
            assert_eq!(request(m.port, "GET", "/y", &[], b"").text(), tag);
        }
    }
    let outcomes = load.finish();
    assert!(outcomes.len() > 100, "only {} requests", outcomes.len());
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    // Every response came from a config that was live at some point during the request:
    // a request that started after reload k answered and ended before reload k+1 began
    // must carry config k's tag.
    for o in &outcomes {
        assert!(o.body == "A" || o.body == "B", "{:?}", o.body);
        for w in swaps.windows(2) {
            let (_, done_k, tag_k) = w[0];
            let (start_next, _, _) = w[1];
            if o.started > done_k && o.finished < start_next {
                assert_eq!(o.body, tag_k);
            }
        }
    }
    assert_eq!(
        m.metric("moat_config_reloads_total{result=\"ok\"}"),
        Some(20.0)
    );
    assert_eq!(
        m.metric("moat_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(m.metric("moat_config_generation"), Some(21.0));
}

#[test]
fn sighup_reloads_and_unchanged_is_a_noop() {
    let m = Moat::start(&respond("one"));
    m.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || m
        .metric("moat_config_reloads_total{result=\"ok\"}")
        == Some(1.0)));
    assert_eq!(
        m.admin_get("/status").json()["generation"],
        1,
        "unchanged file: same generation"
    );
    assert_eq!(request(m.port, "GET", "/", &[], b"").text(), "one");
    m.rewrite(&respond("two"));
    m.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || request(
        m.port,
        "GET",
        "/",
        &[],
        b""
    )
    .text()
        == "two"));
    assert_eq!(m.admin_get("/status").json()["generation"], 2);
    // A bad file on SIGHUP: logged, counted, old config kept.
    m.rewrite("routes: [ {name: x, respond: {}, upstream: nope} ]\n");
    m.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || m
        .metric("moat_config_reloads_total{result=\"error\"}")
        == Some(1.0)));
    assert_eq!(request(m.port, "GET", "/", &[], b"").text(), "two");
    assert!(m.logs().contains("config reload refused"), "{}", m.logs());
    // The process survived every SIGHUP.
    assert_eq!(m.admin_get("/healthz").status, 200);
}

#[test]
fn unchanged_pool_keeps_its_health_state() {
    let good = Upstream::start("good");
    let dead_port = crate::harness::free_port();
    let body = |tag: &str| {
        format!(
            "upstreams:\n  u:\n    targets: [\"{}\", \"127.0.0.1:{dead_port}\"]\n    health_check: {{ tcp: {{}}, interval: 1s, unhealthy_after: 1, healthy_after: 1 }}\n    retries: 0\nroutes:\n  - name: {tag}\n    match: {{ path_prefix: / }}\n    upstream: u\n",
            good.address()
        )
    };
    let m = Moat::start(&body("first"));
    let dead_is_down = |m: &Moat| {
        m.admin_get("/status").json()["upstreams"]["u"]["targets"][1]["healthy"] == false
    };
    assert!(wait_until(Duration::from_secs(5), || dead_is_down(&m)));
    m.rewrite(&body("second"));
    assert_eq!(m.admin_post("/reload").json()["generation"], 2);
    // Same pool definition: the dead target is still out, immediately, and nothing fails.
    assert!(dead_is_down(&m));
    for _ in 0..10 {
        assert_eq!(request(m.port, "GET", "/", &[], b"").status, 200);
    }
    assert_eq!(m.admin_get("/status").json()["routes"][0]["name"], "second");

    // A new pool is probed before it takes traffic: with the dead target first in round
    // robin, not one request fails right after the swap.
    m.rewrite(&format!(
        "upstreams:\n  v:\n    targets: [\"127.0.0.1:{dead_port}\", \"{}\"]\n    health_check: {{ tcp: {{}}, interval: 5s, unhealthy_after: 2, healthy_after: 1 }}\n    retries: 0\nroutes:\n  - name: third\n    match: {{ path_prefix: / }}\n    upstream: v\n",
        good.address()
    ));
    assert_eq!(m.admin_post("/reload").status, 200);
    for _ in 0..10 {
        assert_eq!(request(m.port, "GET", "/", &[], b"").status, 200);
    }
    let metrics = m.admin_get("/metrics").text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("moat_upstream_target_healthy") && l.contains("upstream=\"u\"")),
        "the removed pool's health gauges are gone"
    );
}

#[test]
fn process_level_changes_are_refused() {
    let m = Moat::start(&respond("A"));
    let text = std::fs::read_to_string(&m.config).unwrap();
    m.rewrite_raw(
        &text
            .replace("threads: 1", "threads: 2")
            .replace("\"A\"", "\"B\""),
    );
    let r = m.admin_post("/reload");
    assert_eq!(r.status, 400);
    let d = &r.json()["error"]["details"][0];
    assert_eq!(d["path"], "server");
    assert!(d["message"].as_str().unwrap().contains("--upgrade"), "{d}");
    let moved = text.replace(&format!("127.0.0.1:{}", m.port), "127.0.0.1:1");
    m.rewrite_raw(&moved);
    assert_eq!(
        m.admin_post("/reload").json()["error"]["details"][0]["path"],
        "listeners"
    );
    assert_eq!(request(m.port, "GET", "/", &[], b"").text(), "A");
    assert_eq!(m.admin_get("/reload").status, 405);
}

#[test]
fn watched_file_reloads_itself() {
    let m = Moat::start(&format!("watch: true\n{}", respond("before")));
    m.rewrite(&format!("watch: true\n{}", respond("after")));
    assert!(wait_until(Duration::from_secs(8), || request(
        m.port,
        "GET",
        "/",
        &[],
        b""
    )
    .text()
        == "after"));
}

#[test]
fn sigusr1_reopens_the_access_log() {
    let dir = crate::harness::moat::temp_dir("usr1");
    let log = dir.join("access.log");
    let m = Moat::start(&format!(
        "access_log: {{ path: \"{}\" }}\n{}",
        log.display(),
        respond("A")
    ));
    request(m.port, "GET", "/first", &[], b"");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/first")
    }));
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    m.signal("USR1");
    assert!(wait_until(Duration::from_secs(5), || log.exists()));
    // The writer switches files right after the new one is created: a line written in
    // that instant may still land in the old file, as with any log rotation. Keep
    // writing until lines arrive in the new file; they must not go to the old one after.
    let mut n = 0;
    let arrived = wait_until(Duration::from_secs(5), || {
        n += 1;
        request(m.port, "GET", &format!("/second-{n}"), &[], b"");
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/second-")
    });
    assert!(arrived, "no line reached the reopened file");
    request(m.port, "GET", "/third", &[], b"");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/third")
    }));
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("/third"));
    let _ = std::fs::remove_dir_all(dir);
}
