//! The quick start for real: the `moat` binary on `conf/quickstart.yaml` (its addresses moved
//! to free ports, nothing else changed) in front of two demo targets running the code of
//! `examples/upstream.rs` (the program `scripts/quickstart.sh` starts), walked through the
//! README's "Quick start" curls, asserting what the README says each one shows.

use crate::harness::moat::temp_dir;
use crate::harness::{free_port, request, wait_until, Moat, Response};
use std::time::Duration;

#[path = "../../examples/upstream.rs"]
#[allow(dead_code)]
mod demo_upstream;

/// One demo target, served in this process on an ephemeral port until dropped.
struct DemoTarget {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DemoTarget {
    fn start(name: &str) -> DemoTarget {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind demo target");
        listener.set_nonblocking(true).expect("nonblocking");
        let at = listener.local_addr().expect("addr");
        let answer = demo_upstream::Answer::Echo {
            name: name.into(),
            at,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = demo_upstream::accept_loop(l, answer) => {}
                    _ = stopped => {}
                }
            });
        });
        DemoTarget {
            port: at.port(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for DemoTarget {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn repo_file(rel: &str) -> String {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `conf/quickstart.yaml` with each fixed address and file moved: each must be there.
fn moved(text: &str, moves: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in moves {
        assert!(
            out.contains(from),
            "conf/quickstart.yaml no longer names {from}"
        );
        out = out.replace(from, to);
    }
    out
}

/// The demo key `scripts/quickstart.sh` prints.
fn demo_key() -> String {
    let script = repo_file("scripts/quickstart.sh");
    script
        .lines()
        .find_map(|l| l.strip_prefix("DEMO_KEY="))
        .map(|k| k.trim().to_string())
        .expect("DEMO_KEY= in scripts/quickstart.sh")
}

/// The echo's lines: the target's name line, the request line, then `name: value` lines.
fn echoed_headers(r: &Response) -> Vec<(String, String)> {
    r.text()
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

fn echoed<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn the_readme_walkthrough_works_on_the_quickstart_config() {
    let key = demo_key();
    let readme = repo_file("README.md");
    assert!(readme.contains(&key), "the README shows the demo key");
    let config = repo_file("conf/quickstart.yaml");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    assert!(
        config.contains(&format!("sha256: {hash}")),
        "conf/quickstart.yaml holds the key's SHA-256"
    );

    let (one, two) = (DemoTarget::start("one"), DemoTarget::start("two"));
    let (port, admin) = (free_port(), free_port());
    let dir = temp_dir("quickstart");
    let text = moved(
        &config,
        &[
            ("127.0.0.1:8080", format!("127.0.0.1:{port}")),
            ("127.0.0.1:9901", format!("127.0.0.1:{admin}")),
            ("127.0.0.1:9001", format!("127.0.0.1:{}", one.port)),
            ("127.0.0.1:9002", format!("127.0.0.1:{}", two.port)),
            (
                "/tmp/moat-quickstart.pid",
                format!("{}/moat.pid", dir.display()),
            ),
            (
                "/tmp/moat-quickstart-upgrade.sock",
                format!("{}/upgrade.sock", dir.display()),
            ),
        ],
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);

    // /api: balanced over both targets; each says which it is.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = request(port, "GET", "/api/hello", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let target = r
            .header("x-upstream-target")
            .unwrap_or_default()
            .to_string();
        assert!(
            r.text()
                .starts_with(&format!("target {target} (127.0.0.1:")),
            "{}",
            r.text()
        );
        assert!(
            r.text().contains("\nGET /api/hello HTTP/1.1\n"),
            "{}",
            r.text()
        );
        seen.push(target);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["one", "two"]);

    // Forged X-Forwarded-For and X-Consumer-ID never reach a target; a well-formed
    // X-Request-ID is kept (request_id: { trust_incoming: true }) and echoed.
    let r = request(
        port,
        "GET",
        "/api/whoami",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Consumer-ID", "admin"),
            ("X-Request-ID", "my-trace-1"),
        ],
        b"",
    );
    let h = echoed_headers(&r);
    assert_eq!(echoed(&h, "x-forwarded-for"), ["127.0.0.1"], "{}", r.text());
    assert_eq!(echoed(&h, "x-real-ip"), ["127.0.0.1"]);
    assert!(echoed(&h, "x-consumer-id").is_empty(), "{}", r.text());
    assert!(!r.text().contains("6.6.6.6"), "{}", r.text());
    assert_eq!(echoed(&h, "x-request-id"), ["my-trace-1"]);
    assert_eq!(r.header("x-request-id"), Some("my-trace-1"));

    // /private: 401 without the key, 200 with it; the target sees who, never the key.
    let r = request(port, "GET", "/private/orders", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "UNAUTHORIZED");
    assert!(r.header("www-authenticate").is_some());
    let r = request(
        port,
        "GET",
        "/private/orders",
        &[("X-Api-Key", &key), ("X-Consumer-ID", "admin")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let h = echoed_headers(&r);
    assert_eq!(echoed(&h, "x-consumer-id"), ["demo-user"], "{}", r.text());
    assert_eq!(echoed(&h, "x-auth-method"), ["api_key"]);
    assert!(!r.text().contains(&key), "the key is not forwarded");

    // /limited: 4 per second per client IP; the fifth within the second gets 429.
    let answers: Vec<Response> = (0..5)
        .map(|_| request(port, "GET", "/limited", &[], b""))
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    let remaining: Vec<&str> = answers
        .iter()
        .map(|r| r.header("ratelimit-remaining").unwrap_or("-"))
        .collect();
    assert_eq!(remaining, ["3", "2", "1", "0", "0"]);
    let refused = &answers[4];
    assert_eq!(refused.header("ratelimit-limit"), Some("4"));
    assert!(refused.header("ratelimit-reset").is_some());
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.json()["error"]["code"], "RATE_LIMITED");

    // /hello, answered by moat itself; an unknown path is the JSON 404.
    let r = request(port, "GET", "/hello/world", &[], b"");
    let id = r.header("x-request-id").unwrap_or_default().to_string();
    assert_eq!(
        r.text(),
        format!("hello from moat: you asked for /hello/world (request {id})\n")
    );
    let r = request(port, "GET", "/nowhere", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "NOT_FOUND");

    // Reload: edit the file, SIGHUP.
    m.rewrite_raw(&text.replace("hello from moat", "hi from moat"));
    m.signal("HUP");
    let reloaded = wait_until(Duration::from_secs(10), || {
        request(port, "GET", "/hello/world", &[], b"")
            .text()
            .starts_with("hi from moat")
    });
    assert!(reloaded, "{}", m.logs());

    // Metrics and status.
    let metrics = m.admin_get("/metrics").text();
    for line in [
        "moat_http_requests_total{method=\"GET\",route=\"api\",status=\"200\"} 5",
        "moat_http_requests_total{method=\"GET\",route=\"limited\",status=\"429\"} 1",
        "moat_config_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let status = m.admin_get("/status").json();
    assert_eq!(status["generation"], 2, "{status}");
    let targets = status["upstreams"]["demo"]["targets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(targets.len(), 2, "{status}");
    assert!(targets.iter().all(|t| t["healthy"] == true), "{status}");
}
