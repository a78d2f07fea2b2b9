//! A real `redis-server` on a free port (no persistence), killed when dropped.

use super::{free_port, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Start on a free port and wait for PONG.
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    /// Start on `port` (e.g. to restart after [`RedisServer::kill`]).
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = RedisServer {
            child: Some(child),
            port,
        };
        assert!(
            wait_until(Duration::from_secs(10), || r.ping()),
            "redis-server did not answer PING on {port}"
        );
        r
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Send a signal (`STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }

    /// Kill it now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// Ports at or above this have no room for the cluster bus port (port + 10000).
const MAX_CLUSTER_PORT: u16 = 55535;

/// A 3-master Redis Cluster (`redis-server --cluster-enabled yes` ×3 joined by
/// `redis-cli --cluster create`, no replicas, no persistence, files in a temp dir),
/// killed when dropped. `cluster-require-full-coverage no`: the masters left keep serving
/// their slots when one is killed.
pub struct RedisCluster {
    /// Every process started, with its port (failed starts included).
    children: Vec<(u16, Option<Child>)>,
    /// The masters' ports.
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Start 3 nodes, create the cluster and wait until every node says `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir = super::moat::temp_dir("redis-cluster");
        let mut c = RedisCluster {
            children: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        while c.ports.len() < 3 {
            assert!(c.children.len() < 12, "could not start 3 cluster nodes");
            let port = cluster_port();
            let child = Command::new("redis-server")
                .current_dir(&c.dir)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            c.children.push((port, Some(child)));
            let up = wait_until(Duration::from_secs(10), || {
                ping(port) || c.exited(c.children.len() - 1)
            });
            if up && ping(port) {
                c.ports.push(port);
            } else {
                // Most likely the bus port was taken meanwhile: try other ports.
                c.kill_index(c.children.len() - 1);
            }
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = wait_until(Duration::from_secs(20), || {
            c.ports
                .iter()
                .all(|&p| c.cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        assert!(ok, "the cluster did not reach cluster_state:ok");
        c
    }

    /// `redis://127.0.0.1:PORT` of every master.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Run `redis-cli -p port args...` and return its output (trimmed).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The keys held by the master on `port` (at most a few thousand: tests only).
    pub fn keys(&self, port: u16) -> Vec<String> {
        self.cli(port, &["--scan"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The node id of the master on `port`.
    pub fn id(&self, port: u16) -> String {
        self.cli(port, &["CLUSTER", "MYID"])
    }

    /// Send a signal (`STOP`, `CONT`) to the master on `port`: stopped, it keeps its
    /// connections and accepts new ones but answers nothing, like a host cut off.
    pub fn signal(&self, port: u16, sig: &str) {
        for (p, c) in &self.children {
            if let (true, Some(c)) = (*p == port, c) {
                let _ = Command::new("kill")
                    .args([&format!("-{sig}"), &c.id().to_string()])
                    .status();
            }
        }
    }

    /// Kill the master on `port` now.
    pub fn kill(&mut self, port: u16) {
        for i in 0..self.children.len() {
            if self.children[i].0 == port {
                self.kill_index(i);
            }
        }
    }

    fn exited(&mut self, i: usize) -> bool {
        match &mut self.children[i].1 {
            Some(c) => c.try_wait().map(|s| s.is_some()).unwrap_or(true),
            None => true,
        }
    }

    fn kill_index(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill_index(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < MAX_CLUSTER_PORT && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// Whether 127.0.0.1:`port` answers PING.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}
