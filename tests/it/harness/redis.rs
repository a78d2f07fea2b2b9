//! Real Redis for the tests, each on free 127.0.0.1 ports, killed when dropped: a
//! `redis-server` (plain, TLS-only with a CA made by the test, or a replica), a 3-master
//! Redis Cluster, a master + replica watched by a `redis-sentinel`. Every server keeps its
//! files in its own temp dir. (A hostile server: `hostile_redis.rs`.)

use super::tls::{ca, leaf, Cert};
use super::{free_port, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// TLS files for a Redis server and its clients: a CA made here, a server certificate for
/// 127.0.0.1 and a client certificate, both signed by it.
pub struct RedisTls {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The CA itself, to sign more certificates.
    pub authority: Cert,
}

impl RedisTls {
    /// Fresh files in a temp dir (removed when dropped).
    pub fn new() -> RedisTls {
        let dir = super::moat::temp_dir("redis-tls");
        let authority = ca();
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, authority.cert.to_pem().unwrap()).unwrap();
        let (server_cert, server_key) = leaf(&authority, &["127.0.0.1"]).write(&dir, "server");
        let (client_cert, client_key) = leaf(&authority, &["moat-client"]).write(&dir, "client");
        RedisTls {
            dir,
            ca: ca_path,
            server_cert,
            server_key,
            client_cert,
            client_key,
            authority,
        }
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port (the TLS port for a TLS server).
    pub port: u16,
    /// `redis-cli` flags reaching it (TLS files, password).
    cli_flags: Vec<String>,
    /// Its working directory (`--dir`: where a replica writes the RDB it syncs).
    dir: PathBuf,
}

impl RedisServer {
    /// Start on a free port and wait for PONG.
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    /// Start on `port` (e.g. to restart after [`RedisServer::kill`]).
    pub fn start_on(port: u16) -> RedisServer {
        Self::spawn(port, &["--port".into(), port.to_string()], Vec::new())
    }

    /// A TLS-only server (`--port 0 --tls-port`) with `tls`'s files; with `password`, it
    /// requires it (`requirepass`); with `mutual`, it requires a client certificate.
    pub fn start_tls(tls: &RedisTls, password: Option<&str>, mutual: bool) -> RedisServer {
        let port = free_port();
        let path = |p: &PathBuf| p.display().to_string();
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
        ];
        for (k, v) in [
            ("--tls-cert-file", path(&tls.server_cert)),
            ("--tls-key-file", path(&tls.server_key)),
            ("--tls-ca-cert-file", path(&tls.ca)),
            (
                "--tls-auth-clients",
                (if mutual { "yes" } else { "no" }).into(),
            ),
        ] {
            args.extend([k.to_string(), v]);
        }
        let mut cli = vec!["--tls".to_string(), "--cacert".into(), path(&tls.ca)];
        cli.extend([
            "--cert".into(),
            path(&tls.client_cert),
            "--key".into(),
            path(&tls.client_key),
        ]);
        if let Some(pw) = password {
            args.extend(["--requirepass".into(), pw.into()]);
            cli.extend(["-a".into(), pw.into(), "--no-auth-warning".into()]);
        }
        Self::spawn(port, &args, cli)
    }

    /// A replica of `master` on a free port.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let port = free_port();
        let args = [
            "--port".into(),
            port.to_string(),
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ];
        Self::spawn(port, &args, Vec::new())
    }

    fn spawn(port: u16, args: &[String], cli_flags: Vec<String>) -> RedisServer {
        let dir = super::moat::temp_dir("redis-server");
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = RedisServer {
            child: Some(child),
            port,
            cli_flags,
            dir,
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
        if !self.cli_flags.is_empty() {
            return self.cli(&["PING"]) == "PONG";
        }
        ping(self.port)
    }

    /// Run `redis-cli -p port args...` (with its TLS files and password) and return its
    /// output (trimmed).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, &self.cli_flags, args)
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -h 127.0.0.1 -p port flags... args...`, its output trimmed.
fn cli(port: u16, flags: &[String], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(flags)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A master and one replica watched by one `redis-sentinel` (quorum 1, the master taken
/// for down after 1 s), files in a temp dir.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    /// The sentinel's port.
    pub port: u16,
    sentinel: Option<Child>,
    dir: PathBuf,
}

/// The name the sentinel knows the master by.
pub const SENTINEL_MASTER: &str = "mymaster";
/// The sentinel's `down-after-milliseconds`.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;

impl RedisSentinel {
    /// Start all three and wait until the sentinel knows the master and its replica.
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let replica = RedisServer::start_replica_of(&master);
        let synced = wait_until(Duration::from_secs(15), || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        assert!(synced, "the replica did not sync");
        let dir = super::moat::temp_dir("redis-sentinel");
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {SENTINEL_MASTER} {SENTINEL_DOWN_AFTER_MS}\nsentinel failover-timeout {SENTINEL_MASTER} 10000\nsentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir.display(),
                master.port
            ),
        )
        .unwrap();
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-sentinel (Debian package redis-sentinel)");
        let s = RedisSentinel {
            master,
            replica,
            port,
            sentinel: Some(child),
            dir,
        };
        let replica_port = format!("{}", s.replica.port);
        let ready = wait_until(Duration::from_secs(20), || {
            s.cli(&["SENTINEL", "replicas", SENTINEL_MASTER])
                .lines()
                .any(|l| l == replica_port)
        });
        assert!(ready, "the sentinel never saw the replica");
        s
    }

    /// Run `redis-cli` against the sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, &[], args)
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        self.cli(&["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.sentinel.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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
        cli(port, &[], args)
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
