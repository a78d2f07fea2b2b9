//! Test harness: start `moat` on free ports, record what upstreams receive, speak raw
//! HTTP/1.1. Every server stops when its handle drops; every wait is bounded.

#![allow(dead_code)]

pub mod client;
pub mod h2_upstream;
pub mod hostile_redis;
pub mod load;
pub mod moat;
pub mod redis;
pub mod relay;
pub mod tls;
pub mod upstream;
pub mod ws;

pub use client::{request, send_raw, Response};
pub use moat::Moat;
#[allow(unused_imports)]
pub use upstream::{Behavior, Recorded, Upstream};

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A port that was free a moment ago (bound to port 0, then released), never one this test
/// process handed out before (the kernel may offer the same ephemeral port twice in a row).
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Send signal `sig` (`HUP`, `QUIT`, `TERM`, `KILL`, `STOP`, `CONT`, `USR1`, `INT`) to
/// process `pid`, without an external `kill` program (not every machine has procps).
pub fn send_signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let num = match sig {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        other => panic!("send_signal: unknown signal {other}"),
    };
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    if unsafe { libc::kill(pid, num) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Poll `f` every 20 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
