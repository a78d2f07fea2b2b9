//! `server.limits.header_timeout` through the real binary, over raw sockets: a request
//! head dribbled a byte at a time is cut at the deadline (first request, keep-alive
//! request, TLS listener, admin listener, h2c listener) and never reaches the upstream;
//! normal clients, slow bodies, idle keep-alive waits and idle WebSockets are not
//! affected. Also: an idle HTTP/2 connection is closed after `idle_timeout`, and a
//! pipelined request is served in order and not timed as a head.

use crate::harness::client::{parse_one, Conn};
use crate::harness::moat::temp_dir;
use crate::harness::tls::{ca, leaf};
use crate::harness::{free_port, request, ws, Moat, Upstream};
use openssl::ssl::{SslConnector, SslMethod};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const GAP: Duration = Duration::from_millis(200);
/// A head that takes 12 s to dribble at one byte per `GAP`.
const HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: h\r\nUser-Agent: slowloris/1.0 (abcd)\r\n\r\n";

/// moat with `header_timeout: 1s`, routing everything to `up`; `tls` adds a TLS listener
/// on `(port, cert, key)`.
fn start(up: &str, tls: Option<(u16, &std::path::Path, &std::path::Path)>) -> Moat {
    start_with(up, tls, "", "")
}

/// As [`start`], with `public` (the listener on `Moat::port`) and `limits` added to.
fn start_with(
    up: &str,
    tls: Option<(u16, &std::path::Path, &std::path::Path)>,
    public: &str,
    limits: &str,
) -> Moat {
    let dir = temp_dir("slowloris");
    let (port, admin) = (free_port(), free_port());
    let tls = tls
        .map(|(p, c, k)| {
            format!(
                "  - name: secure\n    address: 127.0.0.1:{p}\n    tls:\n      certificates:\n        - {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
                c.display(),
                k.display()
            )
        })
        .unwrap_or_default();
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\n  limits: {{ header_timeout: 1s{limits} }}\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\n{public}{tls}admin:\n  address: 127.0.0.1:{admin}\nupstreams:\n  app: {{ targets: [\"{up}\"] }}\nroutes:\n  - name: app\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        d = dir.display()
    );
    Moat::start_raw(&text, port, admin, dir, &[])
}

/// Write `bytes` one at a time, `GAP` apart, until the server closes the connection.
/// Waits with a read, so the close is seen as soon as it happens. Returns when it was
/// seen, measured from `since`, or `None` if everything was written and the connection
/// is still open.
fn dribble(s: &mut (impl Read + Write), bytes: &[u8], since: Instant) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    for b in bytes {
        if s.write_all(&[*b]).and_then(|_| s.flush()).is_err() {
            return Some(since.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(n) => panic!(
                "unexpected answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
    None
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(GAP)).expect("read timeout");
    s
}

/// Closed about `HEADER_TIMEOUT` after `since` (not before, and well before the 12 s the
/// head would take).
fn assert_cut(cut: Option<Duration>) {
    let cut = cut.expect("the dribbled head was not cut");
    assert!(
        cut >= HEADER_TIMEOUT - GAP && cut < HEADER_TIMEOUT * 3,
        "cut after {cut:?}"
    );
}

#[test]
fn dribbled_head_is_cut_and_never_reaches_the_upstream() {
    let up = Upstream::start("app");
    let m = start(&up.address(), None);
    let mut s = connect(m.port);
    assert_cut(dribble(&mut s, HEAD, Instant::now()));
    // A connection that sends nothing is closed too.
    let mut idle = connect(m.port);
    idle.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    assert!(matches!(idle.read(&mut buf), Ok(0)));
    assert_cut(Some(start.elapsed()));
    // A normal client is not affected, and nothing of the slow one got through.
    assert_eq!(request(m.port, "GET", "/fast", &[], b"").status, 200);
    let traffic = up.traffic();
    assert_eq!(traffic.len(), 1, "{traffic:?}");
    assert_eq!(traffic[0].target, "/fast");
    for kind in ["partial_head", "no_request"] {
        let name = format!("moat_header_timeouts_total{{kind=\"{kind}\"}}");
        assert_eq!(m.metric(&name), Some(1.0), "{name}");
    }
    // The admin listener is protected the same way.
    assert_cut(dribble(&mut connect(m.admin), HEAD, Instant::now()));
    let name = "moat_header_timeouts_total{kind=\"partial_head\"}";
    assert_eq!(m.metric(name), Some(2.0));
}

#[test]
fn a_slow_body_after_a_fast_head_is_not_cut() {
    let up = Upstream::start("app");
    let m = start(&up.address(), None);
    let mut s = connect(m.port);
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nConnection: close\r\n\r\n",
    )
    .expect("head");
    // 12 bytes over 2.4 s, longer than header_timeout.
    let start = Instant::now();
    for b in b"hello, world" {
        s.write_all(&[*b]).expect("body byte");
        std::thread::sleep(GAP);
    }
    assert!(start.elapsed() > HEADER_TIMEOUT * 2);
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let (resp, _) = parse_one(&out).expect("a response");
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().body, b"hello, world");
    let name = "moat_header_timeouts_total{kind=\"partial_head\"}";
    assert_eq!(m.metric(name), Some(0.0));
}

#[test]
fn keep_alive_heads_are_timed_from_their_first_byte() {
    let up = Upstream::start("app");
    let m = start(&up.address(), None);
    let mut c = Conn::open(m.port);
    assert_eq!(c.get("/one").map(|r| r.status), Some(200));
    // Idle between requests for longer than header_timeout: that is idle_timeout's.
    std::thread::sleep(HEADER_TIMEOUT + Duration::from_millis(500));
    assert_eq!(c.get("/two").map(|r| r.status), Some(200));
    // The next head dribbled: cut about header_timeout after its first byte.
    let mut s = c.into_stream();
    s.set_read_timeout(Some(GAP)).ok();
    std::thread::sleep(Duration::from_millis(500));
    assert_cut(dribble(&mut s, HEAD, Instant::now()));
    let targets: Vec<String> = up.traffic().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/one", "/two"]);
    let name = "moat_header_timeouts_total{kind=\"partial_head\"}";
    assert_eq!(m.metric(name), Some(1.0));
}

#[test]
fn an_idle_websocket_outlives_header_timeout() {
    let handshakes = Arc::new(AtomicUsize::new(0));
    let ws = ws::echo_upstream(Arc::clone(&handshakes));
    let m = start(&format!("127.0.0.1:{ws}"), None);
    let mut s = connect(m.port);
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(ws::HANDSHAKE).expect("handshake");
    let head = ws::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    std::thread::sleep(HEADER_TIMEOUT * 2 + Duration::from_millis(500));
    // A masked text frame "ping", sent slowly too: the connection is no longer a head.
    for b in &ws::frame(1, b"ping", true) {
        s.write_all(&[*b]).expect("frame byte");
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"\x81\x04ping");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    let name = "moat_header_timeouts_total{kind=\"partial_head\"}";
    assert_eq!(m.metric(name), Some(0.0));
}

#[test]
fn dribbled_head_on_tls_is_cut() {
    let dir = temp_dir("slowloris-tls");
    let authority = ca();
    let cert = leaf(&authority, &["a.example.com"]);
    let (crt, key) = cert.write(&dir, "a");
    let up = Upstream::start("app");
    let tls_port = free_port();
    let m = start(&up.address(), Some((tls_port, &crt, &key)));
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.cert_store_mut()
        .add_cert(authority.cert.clone())
        .expect("ca");
    let connector = b.build();
    let handshake = || {
        let tcp = connect(tls_port);
        connector
            .connect("a.example.com", tcp)
            .expect("TLS handshake")
    };
    // A whole head goes through.
    let mut s = handshake();
    s.write_all(b"GET /fast HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while parse_one(&out).is_none() && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    assert_eq!(parse_one(&out).map(|(r, _)| r.status), Some(200));
    // A dribbled one is cut, timed from the end of the handshake.
    let mut s = handshake();
    assert_cut(dribble(&mut s, HEAD, Instant::now()));
    let targets: Vec<String> = up.traffic().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/fast"]);
    drop(m);
}

/// Read until the server closes `s` (or 5 s pass); what was read and when the close was
/// seen, measured from `since` (`None`: still open).
fn read_to_close(s: &mut impl Read, since: Instant) -> (Vec<u8>, Option<Duration>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while since.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => return (out, Some(since.elapsed())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (out, Some(since.elapsed())),
        }
    }
    (out, None)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

#[test]
fn h2c_listener_cuts_connections_that_do_not_start_in_time() {
    let up = Upstream::start("app");
    let m = start_with(&up.address(), None, "    http2: true\n", "");
    // Pingora waits for 24 bytes before choosing HTTP/2 or HTTP/1: that wait is bounded.
    let mut idle = connect(m.port);
    let (out, closed) = read_to_close(&mut idle, Instant::now());
    assert!(out.is_empty());
    assert_cut(closed);
    let mut s = connect(m.port);
    assert_cut(dribble(&mut s, HEAD, Instant::now()));
    let mut short = connect(m.port);
    short.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let (out, closed) = read_to_close(&mut short, Instant::now());
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert_cut(closed);
    // HTTP/2 with prior knowledge and HTTP/1.1 still work.
    let got = crate::http2::h2c_requests(m.port, &[("GET", "/h2", b"")]);
    assert_eq!(got, vec![(200, b"ok".to_vec())]);
    assert_eq!(request(m.port, "GET", "/h1", &[], b"").status, 200);
    let targets: Vec<String> = up.traffic().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/h2", "/h1"]);
    let count = |kind: &str| m.metric(&format!("moat_header_timeouts_total{{kind=\"{kind}\"}}"));
    assert_eq!(count("no_request"), Some(1.0));
    assert_eq!(count("partial_head"), Some(2.0));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    // moat keeps HTTP/1 keep-alive waits itself (one timer per connection, see
    // src/conn/stream.rs): a wait is bounded by idle_timeout, each new wait gets the
    // whole of it, and header_timeout (1 s here) never cuts a wait between requests.
    let up = Upstream::start("app");
    let m = start_with(&up.address(), None, "", ", idle_timeout: 2s");
    let mut c = Conn::open(m.port);
    // Requests 1.5 s apart: longer than header_timeout, each wait shorter than idle_timeout,
    // together longer than it.
    for i in 0..3 {
        assert_eq!(
            c.get(&format!("/{i}")).map(|r| r.status),
            Some(200),
            "request {i}"
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(c.get("/3").map(|r| r.status), Some(200));
    let mut s = c.into_stream();
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let start = Instant::now();
    let (out, closed) = read_to_close(&mut s, start);
    assert!(out.is_empty(), "{out:?}");
    let closed = closed.expect("the idle connection was not closed");
    assert!(
        closed >= Duration::from_millis(1800) && closed < Duration::from_secs(4),
        "closed after {closed:?}"
    );
    let targets: Vec<String> = up.traffic().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/0", "/1", "/2", "/3"]);
    // A quiet close, not a head timeout.
    let count = |kind: &str| m.metric(&format!("moat_header_timeouts_total{{kind=\"{kind}\"}}"));
    assert_eq!(
        (count("no_request"), count("partial_head")),
        (Some(0.0), Some(0.0))
    );
}

#[test]
fn an_idle_h2c_connection_is_closed_after_idle_timeout() {
    let up = Upstream::start("app");
    let m = start_with(
        &up.address(),
        None,
        "    http2: true\n",
        ", idle_timeout: 2s",
    );
    let mut s = connect(m.port);
    let start = Instant::now();
    s.write_all(&[PREFACE, SETTINGS].concat()).expect("preface");
    let (out, closed) = read_to_close(&mut s, start);
    // moat's SETTINGS came back: an HTTP/2 connection, not a head timeout.
    assert_eq!(out.get(3), Some(&4), "{out:?}");
    let closed = closed.expect("the idle h2c connection was not closed");
    assert!(
        closed >= Duration::from_millis(1800) && closed < Duration::from_secs(4),
        "closed after {closed:?}"
    );
    let count = |kind: &str| m.metric(&format!("moat_header_timeouts_total{{kind=\"{kind}\"}}"));
    assert_eq!(
        (count("no_request"), count("partial_head")),
        (Some(0.0), Some(0.0))
    );
}

#[test]
fn a_pipelined_request_is_served_and_not_cut_by_the_head_deadline() {
    // HTTP/1.1 pipelining: a request sent with the previous one is served after it, in
    // order. Its head was read with the previous request (never timed as a head), and its
    // body, 1.6 s long (over header_timeout), is not timed either.
    let up = Upstream::start("app");
    let m = start(&up.address(), None);
    let post = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nConnection: close\r\n\r\n";
    let gap = Duration::from_millis(400);
    let mut s = connect(m.port);
    let start = Instant::now();
    s.write_all(&[b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n".as_slice(), post].concat())
        .expect("heads");
    for b in b"abcd" {
        std::thread::sleep(gap);
        s.write_all(&[*b]).expect("body byte");
    }
    let (out, closed) = read_to_close(&mut s, start);
    let got: Vec<(u16, String)> = crate::harness::client::parse_all(&out)
        .iter()
        .map(|r| (r.status, r.text()))
        .collect();
    assert_eq!(got.len(), 2, "{:?}", String::from_utf8_lossy(&out));
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert!(closed.is_some(), "not closed after Connection: close");
    assert!(start.elapsed() > HEADER_TIMEOUT);
    // A pipelined head whose end comes only later (a slow client): its rest is timed from
    // its first byte read after the previous request, and served when complete in time.
    let mut s = connect(m.port);
    let start = Instant::now();
    s.write_all(b"GET /c HTTP/1.1\r\nHost: h\r\n\r\nGET /d HTTP/1.1\r\nHost:")
        .expect("heads");
    std::thread::sleep(gap);
    s.write_all(b" h\r\nConnection: close\r\n\r\n")
        .expect("rest");
    let (out, _) = read_to_close(&mut s, start);
    let got: Vec<u16> = crate::harness::client::parse_all(&out)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(got, [200, 200]);
    let seen: Vec<(String, Vec<u8>)> = up
        .traffic()
        .into_iter()
        .map(|r| (r.target, r.body))
        .collect();
    assert_eq!(
        seen,
        [
            ("/a".to_string(), vec![]),
            ("/b".to_string(), b"abcd".to_vec()),
            ("/c".to_string(), vec![]),
            ("/d".to_string(), vec![]),
        ]
    );
    let name = "moat_header_timeouts_total{kind=\"partial_head\"}";
    assert_eq!(m.metric(name), Some(0.0));
}
