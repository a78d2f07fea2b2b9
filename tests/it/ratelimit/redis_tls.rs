//! Redis over TLS (`rediss://`, `redis.tls`): a real TLS-only `redis-server` with a CA
//! made by the test, requiring a client certificate and a password (from `password_env`);
//! two instances share a limit through it; a wrong CA fails closed per `on_redis_error`
//! (and `verify: false` accepts it); a cluster node named by a `MOVED` gets credentials only
//! once its certificate passed the same checks.

use crate::harness::redis::{RedisServer, RedisTls};
use crate::harness::tls::{acceptor, ca, leaf, Cert};
use crate::harness::{request, Moat, Upstream};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

const PASSWORD: &str = "tls-test-s3cret";

fn tls_block(ca: &Path, tls: &RedisTls, extra: &str) -> String {
    format!(
        "{{ ca_file: \"{}\", cert_file: \"{}\", key_file: \"{}\"{extra} }}",
        ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    )
}

/// A config sharing `limit` through `redis` (a `redis:` flow mapping's inside).
fn config(redis: &str, up: &Upstream, limit: &str) -> String {
    format!(
        "redis: {{ {redis}, password_env: MOAT_IT_REDIS_TLS_PW, timeout: 1s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - rate_limit: {{ {limit} }}\n",
        up.address()
    )
}

fn start(body: &str) -> Moat {
    Moat::start_with(body, &[], &[("MOAT_IT_REDIS_TLS_PW", PASSWORD)])
}

fn status(m: &Moat) -> u16 {
    request(m.port, "GET", "/x", &[("x-tenant", "acme")], b"").status
}

#[test]
fn two_instances_share_a_limit_over_tls() {
    let tls = RedisTls::new();
    let redis = RedisServer::start_tls(&tls, Some(PASSWORD), true);
    let up = Upstream::start("app");
    let body = config(
        &format!(
            "url: \"rediss://127.0.0.1:{}/0\", tls: {}",
            redis.port,
            tls_block(&tls.ca, &tls, "")
        ),
        &up,
        "key: \"header:x-tenant\", rate: 4/m, scope: cluster, on_redis_error: deny",
    );
    let (a, b) = (start(&body), start(&body));
    let s: Vec<u16> = (0..6)
        .map(|i| status(if i % 2 == 0 { &a } else { &b }))
        .collect();
    assert_eq!(s, [200, 200, 200, 200, 429, 429], "shared over TLS");
    for m in [&a, &b] {
        assert_eq!(m.metric("moat_redis_errors_total"), Some(0.0));
        assert!(!m.logs().contains(PASSWORD), "the password was logged");
    }
}

#[test]
fn a_wrong_ca_fails_closed_and_verify_false_accepts_it() {
    let tls = RedisTls::new();
    let redis = RedisServer::start_tls(&tls, Some(PASSWORD), false);
    let up = Upstream::start("app");
    let other = ca();
    let other_ca = tls.dir.join("other-ca.crt");
    std::fs::write(&other_ca, other.cert.to_pem().unwrap()).unwrap();
    let url = format!("url: \"rediss://127.0.0.1:{}/0\"", redis.port);
    let limit = "key: \"header:x-tenant\", rate: 2/m, scope: cluster";
    let wrong = format!("{url}, tls: {}", tls_block(&other_ca, &tls, ""));
    let m = start(&config(
        &wrong,
        &up,
        &format!("{limit}, on_redis_error: deny"),
    ));
    for _ in 0..4 {
        assert_eq!(status(&m), 503, "an unverified server is never used");
    }
    assert!(m.metric("moat_redis_errors_total").unwrap_or(0.0) >= 1.0);
    drop(m);
    let m = start(&config(
        &wrong,
        &up,
        &format!("{limit}, on_redis_error: allow"),
    ));
    let s: Vec<u16> = (0..4).map(|_| status(&m)).collect();
    assert_eq!(s, [200; 4], "allow: fail open");
    drop(m);
    // Without verification the same server is used (moat check warns about it).
    let unchecked = format!(
        "{url}, tls: {}",
        tls_block(&other_ca, &tls, ", verify: false")
    );
    let m = start(&config(
        &unchecked,
        &up,
        &format!("{limit}, on_redis_error: deny"),
    ));
    let s: Vec<u16> = (0..3).map(|_| status(&m)).collect();
    assert_eq!(s, [200, 200, 429]);
}

/// Commands a [`FakeNode`] received, each as its words.
type Log = Arc<Mutex<Vec<Vec<String>>>>;

/// A TLS server speaking just enough RESP to pass for a one-master Redis Cluster: its
/// `CLUSTER SLOTS` names itself for every slot, and it answers every script with `MOVED`
/// to `moved_to` when set, else with an allowing limiter reply. Records every command.
struct FakeNode {
    port: u16,
    got: Log,
}

impl FakeNode {
    fn start(cert: &Cert, moved_to: Option<u16>) -> FakeNode {
        let acc = acceptor(cert);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Log = Arc::default();
        let log = Arc::clone(&got);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (acc, log) = (Arc::clone(&acc), Arc::clone(&log));
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    // A client that refuses the certificate never gets here.
                    let Ok(s) = acc.accept(conn) else { return };
                    let mut s = BufReader::new(s);
                    while let Some(cmd) = read_command(&mut s) {
                        let reply = match cmd.first().map(|c| c.to_ascii_uppercase()).as_deref() {
                            Some("CLUSTER") => format!(
                                "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n"
                            ),
                            Some("EVALSHA") | Some("EVAL") => match moved_to {
                                Some(to) => format!("-MOVED 1234 127.0.0.1:{to}\r\n"),
                                None => "*4\r\n:1\r\n:9\r\n:1000\r\n:1000\r\n".to_string(),
                            },
                            _ => "+OK\r\n".to_string(),
                        };
                        log.lock().unwrap().push(cmd);
                        if s.get_mut().write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeNode { port, got }
    }

    fn commands(&self) -> Vec<Vec<String>> {
        self.got.lock().unwrap().clone()
    }

    fn got_password(&self) -> bool {
        self.commands()
            .iter()
            .any(|c| c[0].eq_ignore_ascii_case("AUTH") && c.iter().any(|w| w == PASSWORD))
    }
}

/// One RESP command (`*N` then N bulk strings), `None` at the end of the stream.
fn read_command(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut word = vec![0u8; len + 2];
        r.read_exact(&mut word).ok()?;
        word.truncate(len);
        words.push(String::from_utf8_lossy(&word).into_owned());
    }
    Some(words)
}

#[test]
fn a_node_named_by_moved_gets_credentials_only_after_its_certificate_checks() {
    let tls = RedisTls::new();
    let up = Upstream::start("app");
    // The node the MOVED points at holds a certificate for 127.0.0.1 from another CA.
    let stranger = FakeNode::start(&leaf(&ca(), &["127.0.0.1"]), None);
    let seed = FakeNode::start(&leaf(&tls.authority, &["127.0.0.1"]), Some(stranger.port));
    let limit = "key: \"header:x-tenant\", rate: 100/m, scope: cluster, on_redis_error: deny";
    let cluster = |seed: u16| {
        format!(
            "cluster: [\"rediss://127.0.0.1:{seed}\"], tls: {}",
            tls_block(&tls.ca, &tls, "")
        )
    };
    let m = start(&config(&cluster(seed.port), &up, limit));
    for _ in 0..3 {
        assert_eq!(status(&m), 503, "redirected to an unverified node");
    }
    assert!(
        seed.got_password(),
        "the seed logged in: {:?}",
        seed.commands()
    );
    assert!(
        seed.commands().iter().any(|c| c[0] == "EVALSHA"),
        "{:?}",
        seed.commands()
    );
    assert_eq!(
        stranger.commands(),
        Vec::<Vec<String>>::new(),
        "the stranger got no command, let alone the password"
    );
    drop(m);
    // Control: the same redirection to a node the CA vouches for gets the login and the call.
    let trusted = FakeNode::start(&leaf(&tls.authority, &["127.0.0.1"]), None);
    let seed = FakeNode::start(&leaf(&tls.authority, &["127.0.0.1"]), Some(trusted.port));
    let m = start(&config(&cluster(seed.port), &up, limit));
    assert_eq!(status(&m), 200, "{}", m.logs());
    assert!(trusted.got_password(), "{:?}", trusted.commands());
    assert!(trusted.commands().iter().any(|c| c[0] == "EVALSHA"));
}
