//! Starting the `moat` binary on free ports with a generated config.

use super::{free_port, wait_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running moat; killed when dropped.
pub struct Moat {
    child: Child,
    /// The public listener's port.
    pub port: u16,
    /// The admin port.
    pub admin: u16,
    /// Where the config was written.
    pub config: PathBuf,
    /// stdout (access log) and stderr (logs).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    dir: PathBuf,
    /// What the harness wrote before the test's body (server, listeners, admin).
    header: String,
    /// Whether dropping this instance removes the temp dir (false for the old side of an
    /// upgrade).
    owns_dir: bool,
}

/// A fresh temp directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "moat-test-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 48)
}

/// Path of the built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat")
}

impl Moat {
    /// Start moat with the config `body` (everything except `server`, `listeners` and
    /// `admin`, which the harness writes: one listener, an admin listener, one thread
    /// and `trusted_proxies` from `trusted`).
    pub fn start(body: &str) -> Moat {
        Self::start_with(body, &[], &[])
    }

    /// As [`Moat::start`], with `trusted_proxies` and extra environment variables.
    pub fn start_with(body: &str, trusted: &[&str], env: &[(&str, &str)]) -> Moat {
        let dir = temp_dir("moat");
        let port = free_port();
        let admin = free_port();
        let trusted = trusted
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  trusted_proxies: [{trusted}]\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\nadmin:\n  address: 127.0.0.1:{admin}\n{body}",
            d = dir.display()
        );
        let mut m = Self::start_raw(&text, port, admin, dir, env);
        m.header = text[..text.len() - body.len()].to_string();
        m
    }

    /// Start with two threads, `server.grace_period` and `server.shutdown_timeout` as given
    /// (what upgrade and drain tests vary), one listener and an admin listener; `body` is
    /// the rest of the config.
    pub fn start_timed(grace: &str, shutdown: &str, body: &str) -> Moat {
        Self::start_timed_with(grace, shutdown, "", "", body)
    }

    /// As [`Moat::start_timed`], with `limits` as `server.limits` (`header_timeout: 3s`;
    /// empty: none) and `listener` added to the listener (its `tls:` block, indented by
    /// four spaces; empty: a plain listener).
    pub fn start_timed_with(
        grace: &str,
        shutdown: &str,
        limits: &str,
        listener: &str,
        body: &str,
    ) -> Moat {
        let dir = temp_dir("timed");
        let (port, admin) = (free_port(), free_port());
        let limits = if limits.is_empty() {
            String::new()
        } else {
            format!("  limits: {{ {limits} }}\n")
        };
        let text = format!(
            "server:\n  threads: 2\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: {grace}\n  shutdown_timeout: {shutdown}\n{limits}listeners:\n  - name: public\n    address: 127.0.0.1:{port}\n{listener}admin:\n  address: 127.0.0.1:{admin}\n{body}",
            d = dir.display()
        );
        Self::start_raw(&text, port, admin, dir, &[])
    }

    /// Start with a complete config text already naming `port` and `admin`.
    pub fn start_raw(
        text: &str,
        port: u16,
        admin: u16,
        dir: PathBuf,
        env: &[(&str, &str)],
    ) -> Moat {
        let config = dir.join("moat.yaml");
        std::fs::write(&config, text).expect("write config");
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn moat");
        let mut m = Moat {
            child,
            port,
            admin,
            config,
            stdout,
            stderr,
            dir,
            header: String::new(),
            owns_dir: true,
        };
        let ready = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(_)) = m.child.try_wait() {
                return true;
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
        });
        if !ready || m.child.try_wait().ok().flatten().is_some() {
            panic!("moat did not start:\n{}\n{}", text, m.logs());
        }
        m
    }

    /// stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// stdout so far (the access log when `access_log.path: stdout`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Wait for the access log to hold `n` lines and return them parsed.
    pub fn access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(Duration::from_secs(5), || {
            self.access_log().lines().count() >= n
        });
        self.access_log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Fetch an admin endpoint.
    pub fn admin_get(&self, path: &str) -> super::Response {
        super::request(self.admin, "GET", path, &[], b"")
    }

    /// The value of one metric sample line starting with `prefix`, if present.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        self.admin_get("/metrics")
            .text()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Replace the config body (the part after the harness's header) on disk.
    pub fn rewrite(&self, body: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, format!("{}{body}", self.header)).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("replace config");
    }

    /// Replace the whole config text on disk.
    pub fn rewrite_raw(&self, text: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("replace config");
    }

    /// Send a signal (`HUP`, `USR1`, `QUIT`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        if let Err(e) = super::send_signal(self.child.id(), sig) {
            panic!("SIG{sig} to moat: {e}");
        }
    }

    /// POST to an admin endpoint (as JSON: the admin API refuses other POSTs).
    pub fn admin_post(&self, path: &str) -> super::Response {
        super::request(
            self.admin,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            b"",
        )
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The temp directory of this instance.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Graceful binary upgrade: start a second process with `--upgrade` on the same config,
    /// SIGQUIT this one once the new one waits for the sockets, and return the new one
    /// after `/status` reports its pid. This instance stays (draining) until dropped.
    pub fn upgrade(&mut self) -> Moat {
        let stdout = self.dir.join(format!("stdout-{}.log", super::free_port()));
        let stderr = stdout.with_extension("err");
        let child = Command::new(bin())
            .args(["run", "-c"])
            .arg(&self.config)
            .arg("--upgrade")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawn new moat");
        let mut new = Moat {
            child,
            port: self.port,
            admin: self.admin,
            config: self.config.clone(),
            stdout,
            stderr,
            dir: self.dir.clone(),
            header: self.header.clone(),
            owns_dir: true,
        };
        self.owns_dir = false;
        // The new process waits for the sockets on the upgrade socket: wait until it says so.
        let waiting = wait_until(Duration::from_secs(10), || {
            new.exited() || new.logs().contains("Bootstrap") || new.logs().contains("upgrade")
        });
        assert!(
            waiting && !new.exited(),
            "new moat did not start: {}",
            new.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
        self.signal("QUIT");
        let pid = new.pid();
        let took_over = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", new.admin)).is_ok()
                && super::request(new.admin, "GET", "/status", &[], b"").json()["pid"] == pid
        });
        assert!(
            took_over,
            "new moat did not take over:\n{}\nold:\n{}",
            new.logs(),
            self.logs()
        );
        new
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
