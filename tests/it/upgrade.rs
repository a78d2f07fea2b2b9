//! Graceful binary upgrade through the real binary: new processes take the sockets over
//! from old ones under load, and a long streaming response started before an upgrade
//! completes intact.

use crate::harness::load::Load;
use crate::harness::moat::temp_dir;
use crate::harness::{free_port, Moat};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn start(body: &str) -> Moat {
    Moat::start_timed("1s", "10s", body)
}

#[test]
fn three_upgrades_under_load_lose_nothing() {
    let up = crate::harness::Upstream::start("app");
    let mut m = start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address()
    ));
    let load = Load::start(m.port, "/x", 2, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(500));
    let mut old = Vec::new();
    for _ in 0..3 {
        let new = m.upgrade();
        old.push(std::mem::replace(&mut m, new));
        std::thread::sleep(Duration::from_millis(1500));
    }
    let outcomes = load.finish();
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(outcomes.len() > 200, "only {} requests", outcomes.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    // The old processes finished their work and exited by themselves.
    for mut o in old {
        assert!(
            crate::harness::wait_until(Duration::from_secs(15), || o.exited()),
            "old moat still running"
        );
    }
}

/// An upstream that streams `chunks` chunks of 64 KiB, one every `gap`, chunked encoding.
fn streaming_upstream(chunks: usize, gap: Duration) -> (u16, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let payload: Vec<u8> = (0..chunks * 65536).map(|i| (i * 7 % 251) as u8).collect();
    let data = payload.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(4) {
            let data = data.clone();
            std::thread::spawn(move || serve_stream(conn, &data, gap));
        }
    });
    (port, payload)
}

fn serve_stream(mut conn: TcpStream, data: &[u8], gap: Duration) {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n");
    for chunk in data.chunks(65536) {
        std::thread::sleep(gap);
        let _ = conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = conn.write_all(chunk);
        let _ = conn.write_all(b"\r\n");
    }
    let _ = conn.write_all(b"0\r\n\r\n");
}

#[test]
fn streaming_response_survives_an_upgrade() {
    let (up_port, payload) = streaming_upstream(5, Duration::from_secs(1));
    let mut m = start(&format!(
        "upstreams:\n  s: {{ targets: [\"127.0.0.1:{up_port}\"], read_timeout: 10s }}\nroutes:\n  - name: s\n    match: {{ path_prefix: / }}\n    upstream: s\n"
    ));
    let port = m.port;
    let reader = std::thread::spawn(move || {
        let out = crate::harness::send_raw(
            port,
            b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        crate::harness::client::parse_all(&out).into_iter().next()
    });
    std::thread::sleep(Duration::from_millis(1200));
    let _new = m.upgrade();
    let resp = reader.join().unwrap().expect("a response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), payload.len());
    assert_eq!(
        Sha256::digest(&resp.body),
        Sha256::digest(&payload),
        "body changed in transit"
    );
}

#[test]
fn upgrade_script_hands_over_or_refuses() {
    let mut m =
        start("routes:\n  - name: r\n    match: { path_prefix: / }\n    respond: { body: ok }\n");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/moat-upgrade.sh");
    let pid_file = m.dir().join("moat.pid");
    assert!(crate::harness::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == m.pid().to_string())
    }));
    let admin_addr = format!("127.0.0.1:{}", m.admin);
    let sock = m.dir().join("upgrade.sock").display().to_string();
    let run = |config: &std::path::Path| {
        std::process::Command::new("bash")
            .arg(script)
            .args([
                "-c",
                &config.display().to_string(),
                "-p",
                &pid_file.display().to_string(),
            ])
            .args(["-a", &admin_addr, "-b", crate::harness::moat::bin()])
            .args(["-u", &sock])
            .output()
            .expect("run upgrade script")
    };
    // A config the new binary rejects: refused before anything is touched.
    let bad = m.dir().join("bad.yaml");
    std::fs::write(&bad, "routes: [ { name: x } ]\n").unwrap();
    let out = run(&bad);
    assert!(!out.status.success());
    assert!(!m.exited());
    assert_eq!(m.admin_get("/status").json()["pid"], m.pid());

    let config = m.config.clone();
    let out = run(&config);
    // Whatever happens next, the daemon the script started must not outlive the test.
    let _daemon = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|p| *p != m.pid())
        .map(KillOnDrop);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // The old process drains and exits by itself; until it stops accepting (its grace
    // period) either may answer, afterwards only the new one does.
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || m.exited()),
        "old moat still running"
    );
    let new_pid = m.admin_get("/status").json()["pid"].as_u64().unwrap_or(0) as u32;
    assert_ne!(new_pid, m.pid());
    assert_eq!(
        std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim(),
        new_pid.to_string()
    );
    assert_eq!(
        crate::harness::request(m.port, "GET", "/", &[], b"").text(),
        "ok"
    );
}

/// SIGKILLs a process when dropped (processes the harness did not spawn itself).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = crate::harness::send_signal(self.0, "KILL");
    }
}

#[test]
fn sigterm_stops_fast_and_sigquit_drains() {
    let make = || {
        let dir = temp_dir("term");
        let (port, admin) = (free_port(), free_port());
        let log = dir.join("access.log");
        let text = format!(
            "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 5s\n  shutdown_timeout: 10s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\nadmin:\n  address: 127.0.0.1:{admin}\naccess_log: {{ path: \"{}\" }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    respond: {{ body: ok }}\n",
            log.display(),
            d = dir.display()
        );
        (Moat::start_raw(&text, port, admin, dir, &[]), log)
    };
    let term_stops_at_once = |m: &mut Moat| {
        let t = std::time::Instant::now();
        m.signal("TERM");
        assert!(crate::harness::wait_until(Duration::from_secs(3), || m.exited()));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    };
    // SIGTERM: gone at once, whatever grace_period says, with the access log written out.
    let (mut m, log) = make();
    crate::harness::request(m.port, "GET", "/before-term", &[], b"");
    term_stops_at_once(&mut m);
    assert!(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("/before-term"));
    // SIGQUIT: draining, /readyz turns 503 while the grace period runs.
    let (mut m, _log) = make();
    m.signal("QUIT");
    assert!(crate::harness::wait_until(Duration::from_secs(3), || {
        std::net::TcpStream::connect(("127.0.0.1", m.admin)).is_ok()
            && m.admin_get("/readyz").status == 503
    }));
    assert!(!m.exited(), "still draining");
    // SIGTERM while draining: gone at once too.
    term_stops_at_once(&mut m);
}
