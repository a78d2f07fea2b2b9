//! Graceful upgrades and drains that lose nothing (issue 15), through the real binary:
//! `http`: every kind of HTTP/1.1 client across upgrades and a drain without a new
//! process; `streams`: WebSockets and a server-sent event stream across an upgrade;
//! `tls`: TLS clients, connections whose handshake comes after the listeners stopped.
//!
//! This file: raw-socket clients that count every failure by kind. Each request carries
//! an id in its path, so a test can check that no request reached the upstream without
//! its answer reaching the client.

use crate::harness::client::parse_one;
use crate::harness::{wait_until, Moat, Response, Upstream};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

mod http;
mod streams;
mod tls;

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused (nothing listening).
    Refused,
    /// Reset (or broken) before the whole response arrived.
    Reset(ErrorKind),
    /// Closed cleanly before any byte of the response.
    ClosedUnanswered,
    /// Closed in the middle of a response.
    Truncated,
    /// A response other than 2xx.
    Status(u16),
    /// No answer within the client's read timeout.
    Timeout,
    /// The TLS handshake failed.
    Handshake(String),
}

/// What one client thread saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Ids of the requests answered with 2xx.
    pub answered: Vec<String>,
    /// Failed requests: id and how.
    pub failures: Vec<(String, Failure)>,
    /// Responses that carried `Connection: close`.
    pub closes: usize,
    /// Connections opened.
    pub connections: usize,
}

impl Tally {
    /// One line for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "{} requests answered on {} connections ({} closed by `Connection: close`)",
            self.answered.len(),
            self.connections,
            self.closes
        )
    }

    fn merge(&mut self, other: Tally) {
        self.answered.extend(other.answered);
        self.failures.extend(other.failures);
        self.closes += other.closes;
        self.connections += other.connections;
    }
}

/// The kinds of client (see each variant).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A new connection for every request (`Connection: close`), as health checkers,
    /// scripts and serverless functions do.
    Close,
    /// As `Close`, but the request comes 5 ms after the connection, in two parts 2 ms
    /// apart (a slow network, or a TLS client): the connection is accepted and waiting
    /// for its head for longer, which is when a stopping server used to drop it.
    Hesitant,
    /// One connection for as long as the server keeps it, requests back to back.
    KeepAlive,
    /// Keep-alive, a `POST` with a body each time, and a pause of 1 to `n` ms after each
    /// answer (a client doing something with it): the connection sits idle between
    /// requests for longer, and a client does not send a `POST` again by itself when the
    /// connection closes under it (RFC 9112 §9.3.1).
    Posting(u64),
    /// Keep-alive with `depth` requests written at once before reading the answers; the
    /// ones a `Connection: close` answer leaves unanswered are sent again on a new
    /// connection (RFC 9112 §9.3.2).
    Pipelined(usize),
}

/// Client threads sending `GET {prefix}{tag}-{n}` to `port` until `stop`.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Clients {
    /// Start one thread per entry of `kinds`.
    pub fn start(port: u16, prefix: &str, kinds: &[Kind]) -> Clients {
        Self::spawn(
            prefix,
            kinds
                .iter()
                .map(|&kind| move |tag: &str, stop: &AtomicBool| run(port, tag, kind, stop)),
        )
    }

    /// Start one thread per client of `each`, called with its tag (`{prefix}{i}`, which
    /// starts its requests' ids) and the flag that tells it to stop.
    pub fn spawn<F>(prefix: &str, each: impl IntoIterator<Item = F>) -> Clients
    where
        F: FnOnce(&str, &AtomicBool) -> Tally + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = each
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let stop = Arc::clone(&stop);
                let tag = format!("{prefix}{i}");
                std::thread::spawn(move || client(&tag, &stop))
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stop them (each finishes the request in progress) and add up what they saw.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Tally::default();
        for t in self.threads {
            all.merge(t.join().expect("client thread"));
        }
        all
    }
}

/// A connection to 127.0.0.1:`port` with a bounded read timeout.
pub fn connect(port: u16) -> Result<TcpStream, Failure> {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(15))).ok();
            s.set_nodelay(true).ok();
            Ok(s)
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Err(Failure::Refused),
        Err(e) => Err(Failure::Reset(e.kind())),
    }
}

/// Read the next response from `s` (bytes already read in `buf`, which keeps what
/// follows it).
pub fn read_response(s: &mut impl Read, buf: &mut Vec<u8>) -> Result<Response, Failure> {
    loop {
        if let Some((r, used)) = parse_one(buf) {
            // A body delimited by the close would parse early: only when closed.
            if r.header("content-length").is_some()
                || r.header("transfer-encoding").is_some()
                || r.status == 204
            {
                buf.drain(..used);
                return Ok(r);
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(Failure::ClosedUnanswered),
            Ok(0) => return Err(Failure::Truncated),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Failure::Timeout)
            }
            Err(e) => return Err(Failure::Reset(e.kind())),
        }
    }
}

fn closes(r: &Response) -> bool {
    r.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

fn get(id: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET /{id} HTTP/1.1\r\nHost: h\r\n{conn}\r\n").into_bytes()
}

/// The body [`Kind::Posting`] clients send with request `id`.
pub fn post_body(id: &str) -> String {
    format!("order {id}")
}

fn post(id: &str) -> Vec<u8> {
    let body = post_body(id);
    format!(
        "POST /{id} HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn run(port: u16, tag: &str, kind: Kind, stop: &AtomicBool) -> Tally {
    let mut t = Tally::default();
    let mut n = 0usize;
    let mut next_id = || {
        n += 1;
        format!("{tag}-{n}")
    };
    // Requests to send again (left unanswered by a `Connection: close` answer).
    let mut again: Vec<String> = Vec::new();
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    while !stop.load(Ordering::SeqCst) {
        let depth = match kind {
            Kind::Close | Kind::Hesitant | Kind::KeepAlive | Kind::Posting(_) => 1,
            Kind::Pipelined(d) => d,
        };
        let mut ids = std::mem::take(&mut again);
        while ids.len() < depth {
            ids.push(next_id());
        }
        if conn.is_none() {
            match connect(port) {
                Ok(s) => {
                    t.connections += 1;
                    conn = Some((s, Vec::new()));
                }
                Err(f) => {
                    t.failures.extend(ids.into_iter().map(|id| (id, f.clone())));
                    continue;
                }
            }
        }
        let Some((s, buf)) = conn.as_mut() else {
            continue;
        };
        let close = matches!(kind, Kind::Close | Kind::Hesitant);
        let bytes: Vec<u8> = match kind {
            Kind::Posting(_) => ids.iter().flat_map(|id| post(id)).collect(),
            _ => ids.iter().flat_map(|id| get(id, close)).collect(),
        };
        let sent = if matches!(kind, Kind::Hesitant) {
            std::thread::sleep(Duration::from_millis(5));
            let half = bytes.len() / 2;
            s.write_all(&bytes[..half]).and_then(|()| {
                std::thread::sleep(Duration::from_millis(2));
                s.write_all(&bytes[half..])
            })
        } else {
            s.write_all(&bytes)
        };
        if let Err(e) = sent {
            t.failures
                .extend(ids.into_iter().map(|id| (id, Failure::Reset(e.kind()))));
            conn = None;
            continue;
        }
        let mut keep = !close;
        let mut i = 0;
        while i < ids.len() {
            match read_response(s, buf) {
                Ok(r) => {
                    if (200..300).contains(&r.status) {
                        t.answered.push(ids[i].clone());
                    } else {
                        t.failures.push((ids[i].clone(), Failure::Status(r.status)));
                    }
                    i += 1;
                    if closes(&r) {
                        t.closes += 1;
                        keep = false;
                        break;
                    }
                }
                Err(f) => {
                    // This one and those after it: nobody knows what became of them.
                    t.failures
                        .extend(ids[i..].iter().map(|id| (id.clone(), f.clone())));
                    i = ids.len();
                    keep = false;
                }
            }
        }
        // Left unanswered by a `Connection: close` answer: never read by the server,
        // sent again on a new connection.
        again.extend(ids[i..].iter().cloned());
        if !keep {
            if close {
                // Read to the end: the server closes, never resets.
                if let Some((mut s, _)) = conn.take() {
                    let mut rest = Vec::new();
                    if let Err(e) = s.read_to_end(&mut rest) {
                        t.failures
                            .push((format!("{tag}-close"), Failure::Reset(e.kind())));
                    }
                }
            }
            conn = None;
        }
        if let Kind::Posting(most) = kind {
            let k = t.answered.len() as u64;
            std::thread::sleep(Duration::from_millis(1 + (k * 7) % most.max(1)));
        }
    }
    // Requests left to send again when stopped were answered by nobody and sent by
    // nobody: not failures.
    t
}

/// One route to `up` for everything.
fn route(up: &Upstream) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address()
    )
}

/// The requests `up` received, by id (the path without its `/`).
fn received(up: &Upstream) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in up.traffic() {
        *seen
            .entry(r.target.trim_start_matches('/').to_string())
            .or_insert(0) += 1;
    }
    seen
}

/// No failure, and exactly the requests answered reached the upstream, once each.
fn assert_nothing_lost(tally: &Tally, up: &Upstream) {
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        tally.failures.len(),
        tally.failures.len() + tally.answered.len(),
        &tally.failures[..tally.failures.len().min(10)]
    );
    let seen = received(up);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "received more than once: {twice:?}");
    let unanswered: Vec<_> = seen
        .keys()
        .filter(|id| !tally.answered.contains(id))
        .collect();
    assert!(
        unanswered.is_empty(),
        "reached the upstream, answer lost: {unanswered:?}"
    );
    assert_eq!(
        seen.len(),
        tally.answered.len(),
        "answered without the upstream"
    );
}

/// Each of the `old` processes stopped accepting, then exited by itself, with nothing cut.
fn assert_stopped_uncut(old: Vec<Moat>) {
    for mut o in old {
        assert!(
            wait_until(Duration::from_secs(10), || o.exited()),
            "old moat still running:\n{}",
            o.logs()
        );
        let logs = o.logs();
        assert!(logs.contains("stopped accepting"), "{logs}");
        assert!(!logs.contains("still open"), "nothing was cut: {logs}");
    }
}
