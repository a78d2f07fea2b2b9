//! `moat run` on an address it cannot take: it exits 1 at once, naming the config file, the
//! config key and address, and the operating system's error — not Pingora's 30 s of bind
//! retries followed by a panic in a task while the process stays up.

use crate::harness::moat::{bin, temp_dir};
use crate::harness::{free_port, wait_until};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run moat on `listen` (public) and `admin`; wait at most 10 s for it to exit: its exit
/// code (None: still running, then killed), stderr, and how long it ran.
fn run(listen: u16, admin: u16) -> (Option<i32>, String, Duration, String) {
    let dir = temp_dir("startup");
    let config = dir.join("moat.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n\
             listeners:\n  - name: public\n    address: 127.0.0.1:{listen}\n\
             admin:\n  address: 127.0.0.1:{admin}\n\
             routes:\n  - name: r\n    respond: {{ body: ok }}\n",
            d = dir.display()
        ),
    )
    .expect("write config");
    let stderr = dir.join("stderr.log");
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["run", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn moat");
    let mut code = None;
    wait_until(Duration::from_secs(10), || match child.try_wait() {
        Ok(Some(s)) => {
            code = s.code();
            true
        }
        _ => false,
    });
    let took = started.elapsed();
    if code.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (code, text, took, config.display().to_string())
}

#[test]
fn a_listener_address_in_use_fails_the_start_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (code, stderr, took, config) = run(port, free_port());
    assert_eq!(code, Some(1), "exit code after {took:?}; stderr:\n{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        stderr.contains(&format!("{config}: cannot start")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "listeners[0].address (public): cannot listen on 127.0.0.1:{port}: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_admin_address_in_use_fails_the_start_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (code, stderr, took, config) = run(free_port(), port);
    assert_eq!(code, Some(1), "exit code after {took:?}; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("{config}: cannot start")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "admin.address: cannot listen on 127.0.0.1:{port}: "
        )),
        "{stderr}"
    );
}
