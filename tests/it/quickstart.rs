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

    // Forged X-Forwarded-For, X-Consumer-ID and X-Request-ID never reach a target: the
    // client is no trusted proxy (request_id: { trust_incoming: true } keeps only theirs),
    // so the request gets an id of moat's, sent upstream and echoed.
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
    let id = r.header("x-request-id").unwrap_or_default();
    assert_ne!(id, "my-trace-1");
    assert_eq!(id.len(), 26, "a ULID: {id}");
    assert_eq!(echoed(&h, "x-request-id"), [id]);

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

// ---- scripts/quickstart.sh itself ------------------------------------------------------------
//
// The script runs with prebuilt binaries (MOAT_BIN, UPSTREAM_BIN: nothing is built) on free
// ports (QUICKSTART_PORTS). Its demo targets are this test binary run again as
// `demo_target_process` (below): the code of examples/upstream.rs, as above — `cargo test`
// builds examples as test harnesses, so there is no examples/upstream program to run.

/// Not a test: a demo target in a process of its own, for `scripts/quickstart.sh` (its
/// UPSTREAM_BIN is a wrapper running this binary with `QUICKSTART_DEMO_TARGET` set to the
/// arguments, `--listen ADDR --name NAME`). Without that variable it returns at once.
#[test]
#[ignore = "a demo target process for quickstart_script_* (does nothing when run alone)"]
fn demo_target_process() {
    let Ok(args) = std::env::var("QUICKSTART_DEMO_TARGET") else {
        return;
    };
    let words: Vec<&str> = args.split_whitespace().collect();
    let arg = |flag: &str| {
        words
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_string())
            .unwrap_or_else(|| panic!("{flag} missing in {args:?}"))
    };
    let (listen, name) = (arg("--listen"), arg("--name"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // Like examples/upstream: a port in use is an error, and the process exits.
        let l = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("demo target {name}: cannot listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        let at = l.local_addr().expect("addr");
        demo_upstream::accept_loop(
            l,
            demo_upstream::Answer::Echo {
                name: name.into(),
                at,
            },
        )
        .await;
    });
}

/// `scripts/quickstart.sh` running, stopped (SIGTERM, which its trap turns into stopping
/// everything it started) when dropped.
struct Script {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Script {
    /// Start the script on `ports` (public, admin, one, two).
    fn start(ports: [u16; 4]) -> Script {
        let dir = temp_dir("quickstart-sh");
        let wrapper = dir.join("demo-target");
        let exe = std::env::current_exe().expect("test binary");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nQUICKSTART_DEMO_TARGET=\"$*\" exec '{}' quickstart::demo_target_process --exact --ignored --nocapture --quiet\n",
                exe.display()
            ),
        )
        .expect("wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let ports = ports.map(|p| p.to_string()).join(" ");
        let child = std::process::Command::new("bash")
            .arg(format!(
                "{}/scripts/quickstart.sh",
                env!("CARGO_MANIFEST_DIR")
            ))
            .env("MOAT_BIN", crate::harness::moat::bin())
            .env("UPSTREAM_BIN", &wrapper)
            .env("QUICKSTART_PORTS", ports)
            .env("TMPDIR", &dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout"))
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr"))
            .spawn()
            .expect("run quickstart.sh");
        Script { child, dir }
    }

    fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read("stdout"), read("stderr"))
    }

    /// The exit code, waiting at most `limit` (None: still running).
    fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        wait_until(limit, || match self.child.try_wait() {
            Ok(Some(s)) => {
                code = Some(s.code().unwrap_or(-1));
                true
            }
            _ => false,
        });
        code
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = crate::harness::send_signal(self.child.id(), "TERM");
            if self.exit_code(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn quickstart_script_serves_and_a_hangup_stops_all_it_started() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut script = Script::start(ports);
    let up = wait_until(Duration::from_secs(60), || {
        script.output().contains("moat quick start")
            || matches!(script.child.try_wait(), Ok(Some(_)))
    });
    assert!(up, "no banner within 60 s\n{}", script.output());
    assert!(
        script
            .output()
            .contains(&format!("http://127.0.0.1:{}", ports[0])),
        "{}",
        script.output()
    );
    // Served: balanced over the two demo targets, the key route needs the key.
    let mut seen: Vec<String> = (0..4)
        .map(|_| {
            let r = request(ports[0], "GET", "/api/hello", &[], b"");
            assert_eq!(r.status, 200, "{}\n{}", r.text(), script.output());
            r.header("x-upstream-target")
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["one", "two"]);
    assert_eq!(request(ports[0], "GET", "/private/x", &[], b"").status, 401);

    // The terminal closes: SIGHUP to the script (moat alone would take it as "reload").
    crate::harness::send_signal(script.child.id(), "HUP").expect("SIGHUP");
    assert_eq!(
        script.exit_code(Duration::from_secs(15)),
        Some(129),
        "{}",
        script.output()
    );
    let all_gone = wait_until(Duration::from_secs(5), || {
        ports.iter().all(|p| !listening(*p))
    });
    let left: Vec<u16> = ports.into_iter().filter(|p| listening(*p)).collect();
    assert!(all_gone, "still listening on {left:?}\n{}", script.output());
}

#[test]
fn quickstart_script_refuses_a_taken_port_before_starting_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    let ports = [free_port(), free_port(), free_port(), busy];
    let started = std::time::Instant::now();
    let mut script = Script::start(ports);
    let code = script.exit_code(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{}", script.output());
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = script.output();
    assert!(
        out.contains(&format!("already in use: 127.0.0.1:{busy} (target two)")),
        "{out}"
    );
    assert!(!out.contains("moat quick start"), "{out}");
    for p in &ports[..3] {
        assert!(!listening(*p), "port {p} in use\n{out}");
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the comm may hold spaces, so split after its `)`.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}

#[test]
fn quickstart_script_stops_everything_when_a_target_exits() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut script = Script::start(ports);
    let up = wait_until(Duration::from_secs(60), || {
        script.output().contains("moat quick start")
            || matches!(script.child.try_wait(), Ok(Some(_)))
    });
    assert!(up, "no banner within 60 s\n{}", script.output());
    let targets: Vec<u32> = children(script.child.id())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("demo_target_process"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(targets.len(), 2, "{:?}", children(script.child.id()));
    crate::harness::send_signal(targets[0], "KILL").expect("kill a target");
    assert!(
        script.exit_code(Duration::from_secs(15)).is_some(),
        "the script goes on without a target\n{}",
        script.output()
    );
    assert!(script.output().contains("exited"), "{}", script.output());
    let all_gone = wait_until(Duration::from_secs(5), || {
        ports.iter().all(|p| !listening(*p))
    });
    assert!(all_gone, "still listening\n{}", script.output());
}
