//! WebSocket upgrades moat relays itself (src/proxy/upgrade): refusals passed on with
//! their body, failed targets answered with moat's JSON errors (and retried), half close,
//! traffic after idle periods and the idle limit, bytes sent before the 101, the access
//! log line written with 101 when the connection ends, TLS clients, and the memory an
//! idle relayed connection costs (what taking it out of Pingora is for).

use crate::harness::client::parse_one;
use crate::harness::moat::temp_dir;
use crate::harness::tls::{ca, leaf};
use crate::harness::ws::{echo_upstream, frame, raw_upstream, read_head, HANDSHAKE};
use crate::harness::{free_port, send_raw, wait_until, Behavior, Moat, Upstream};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn route(up: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  ws: {{ targets: [{up}]{extra} }}\nroutes:\n  - name: ws\n    match: {{ path_prefix: / }}\n    upstream: ws\n"
    )
}

/// Send `msg` and read the echo server's unmasked frame back.
fn echo(s: &mut (impl Read + Write), msg: &[u8]) -> Vec<u8> {
    s.write_all(&frame(1, msg, true)).expect("send frame");
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("echo frame head");
    let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
    s.read_exact(&mut payload).expect("echo payload");
    payload
}

fn open(port: u16) -> TcpStream {
    open_head(port).0
}

#[test]
fn a_refusal_reaches_the_client_with_its_body_and_the_connection_closes() {
    let up = Upstream::start("ws");
    up.set(Behavior {
        status: 426,
        body: b"upgrade required".to_vec(),
        ..Behavior::default()
    });
    let m = Moat::start(&route(&format!("\"{}\"", up.address()), ""));
    let req = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let out = send_raw(m.port, req);
    let (resp, used) = parse_one(&out).expect("one response");
    assert_eq!(resp.status, 426);
    assert_eq!(resp.body, b"upgrade required");
    assert_eq!(used, out.len(), "nothing after it: the connection closed");
    let got = up.last();
    assert_eq!(got.header("upgrade"), Some("websocket"));
    assert_eq!(got.header("connection"), Some("Upgrade"));
    assert_eq!(
        got.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(got.header("x-private").is_none() && got.header("keep-alive").is_none());
}

#[test]
fn a_chunked_refusal_is_passed_on_whole_while_the_upstream_keeps_its_connection() {
    let up = raw_upstream(
        b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\nWWW-Authenticate: Bearer\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        |c| {
            // Keep the connection: only the chunked framing can end the body.
            std::thread::sleep(Duration::from_secs(15));
            drop(c);
        },
    );
    let m = Moat::start(&route(&format!("\"127.0.0.1:{up}\""), ""));
    let started = Instant::now();
    let out = send_raw(m.port, HANDSHAKE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the upstream to close"
    );
    let (resp, _) = parse_one(&out).expect("one response");
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    assert_eq!(resp.body, b"hello world");
}

#[test]
fn a_target_down_is_a_502_json_error_and_another_target_is_tried() {
    let dead = free_port();
    let m = Moat::start(&route(&format!("\"127.0.0.1:{dead}\""), ""));
    let out = send_raw(m.port, HANDSHAKE);
    let (resp, _) = parse_one(&out).expect("one response");
    assert_eq!(resp.status, 502, "{}", String::from_utf8_lossy(&out));
    let body = resp.json();
    assert_eq!(body["error"]["code"], "BAD_GATEWAY", "{body}");
    assert!(
        !resp.text().contains(&dead.to_string()),
        "never names the address"
    );
    drop(m);

    // With a live target next to it, every handshake ends up there (retries: 1).
    let live = echo_upstream(Arc::new(AtomicUsize::new(0)));
    let m = Moat::start(&route(
        &format!("\"127.0.0.1:{dead}\", \"127.0.0.1:{live}\""),
        ", retries: 1",
    ));
    for i in 0..4 {
        let mut s = open(m.port);
        assert_eq!(
            echo(&mut s, format!("m{i}").as_bytes()),
            format!("m{i}").as_bytes()
        );
    }
}

#[test]
fn a_client_half_close_reaches_the_upstream_which_can_still_answer() {
    let (tx, rx) = mpsc::channel();
    let up = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        move |mut c| {
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let _ = tx.send(got);
            let _ = c.write_all(b"bye");
        },
    );
    let m = Moat::start(&route(&format!("\"127.0.0.1:{up}\""), ""));
    let mut s = open(m.port);
    s.write_all(b"abc").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream saw the end");
    assert_eq!(got, b"abc");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to the end");
    assert_eq!(rest, b"bye");
}

#[test]
fn bytes_flow_both_ways_after_idle_periods_until_the_idle_limit() {
    let up = echo_upstream(Arc::new(AtomicUsize::new(0)));
    let m = Moat::start(&route(&format!("\"127.0.0.1:{up}\""), ", read_timeout: 2s"));
    let mut s = open(m.port);
    // 1.5 s idle twice: 3 s in all, over the 2 s limit, but traffic in between.
    for msg in [&b"one"[..], b"two"] {
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(echo(&mut s, msg), msg);
    }
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let idle = idle_from.elapsed();
    assert!(rest.is_empty());
    assert!(
        idle >= Duration::from_millis(1800) && idle < Duration::from_secs(6),
        "closed after {idle:?} idle (limit 2 s)"
    );
}

#[test]
fn bytes_sent_before_the_101_are_forwarded_after_it() {
    let up = echo_upstream(Arc::new(AtomicUsize::new(0)));
    let m = Moat::start(&route(&format!("\"127.0.0.1:{up}\""), ""));
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(&[HANDSHAKE, &frame(1, b"early", true)].concat())
        .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut h = [0u8; 7];
    s.read_exact(&mut h).expect("echo of the early frame");
    assert_eq!(&h, b"\x81\x05early");
}

#[test]
fn the_request_is_logged_with_101_when_the_relayed_connection_ends() {
    let up = echo_upstream(Arc::new(AtomicUsize::new(0)));
    let m = Moat::start(&format!(
        "access_log: {{ path: stdout }}\n{}",
        route(&format!("\"127.0.0.1:{up}\""), "")
    ));
    let mut s = open(m.port);
    assert_eq!(echo(&mut s, b"hello"), b"hello");
    assert_eq!(m.metric("moat_connections_active"), Some(1.0));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(m.access_log(), "", "logged before the connection ended");
    // A close frame: the echo upstream answers it and closes.
    s.write_all(&[0x88, 0x80, 0, 0, 0, 0]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // The upstream ended its side; the relay ends with the client's.
    s.shutdown(Shutdown::Write).unwrap();
    let lines = m.access_lines(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["status"], 101, "{l}");
    assert_eq!(l["path"], "/ws");
    assert_eq!(l["route"], "ws");
    // The echo of "hello" (7 bytes) and of the close frame (2).
    assert_eq!(l["bytes_sent"], 9, "{l}");
    assert!(l["upstream_target"].as_str().is_some(), "{l}");
    assert!(wait_until(Duration::from_secs(5), || m
        .metric("moat_connections_active")
        == Some(0.0)));
    let metrics = m.admin_get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("moat_http_requests_total")
                && l.contains("status=\"101\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn a_tls_client_gets_its_websocket() {
    use openssl::ssl::{SslConnector, SslMethod};
    let up = echo_upstream(Arc::new(AtomicUsize::new(0)));
    let dir = temp_dir("ws-tls");
    let authority = ca();
    let cert = leaf(&authority, &["ws.example.com"]);
    let (cert_file, key_file) = cert.write(&dir, "ws");
    let (port, tls_port, admin) = (free_port(), free_port(), free_port());
    let text = format!(
        "server: {{ threads: 1, pid_file: {d}/p.pid, upgrade_sock: {d}/u.sock }}\nlisteners:\n  - {{ name: public, address: \"127.0.0.1:{port}\" }}\n  - name: secure\n    address: \"127.0.0.1:{tls_port}\"\n    tls:\n      certificates:\n        - {{ cert_file: \"{}\", key_file: \"{}\" }}\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\n{}",
        cert_file.display(),
        key_file.display(),
        route(&format!("\"127.0.0.1:{up}\""), ""),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.cert_store_mut().add_cert(authority.cert.clone()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut s = b
        .build()
        .connect("ws.example.com", tcp)
        .expect("TLS handshake");
    s.write_all(HANDSHAKE).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    for msg in [&b"over"[..], b"tls"] {
        assert_eq!(echo(&mut s, msg), msg);
    }
    drop(m);
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn an_idle_relayed_websocket_costs_a_fraction_of_pingoras_56_kib() {
    const N: usize = 400;
    // One thread answers every handshake and keeps the sockets (no thread each).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap().port();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for c in l.incoming().flatten().take(N + 1) {
            let mut r = BufReader::new(c);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut c = r.into_inner();
            let _ = c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
            kept.push(c);
        }
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
    });
    let m = Moat::start(&route(&format!("\"127.0.0.1:{up}\""), ""));
    // Warm up (first connection allocations, thread-local scratch), then measure.
    let first = open(m.port);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(m.pid());
    let open_ones: Vec<TcpStream> = (0..N).map(|_| open(m.port)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(m.pid());
    assert!(before > 0 && after > 0, "no /proc/PID/status");
    let per = (after.saturating_sub(before)) as f64 / N as f64;
    eprintln!("{N} idle relayed WebSockets: {before} KiB -> {after} KiB, {per:.1} KiB each");
    assert!(
        per < 24.0,
        "{per:.1} KiB per idle WebSocket ({before} -> {after} KiB for {N})"
    );
    drop(open_ones);
    drop(first);
    let _ = done_tx.send(());
}

#[test]
fn on_sigquit_a_relayed_websocket_gets_going_away_and_is_logged_when_the_process_stops() {
    let up = echo_upstream(Arc::new(AtomicUsize::new(0)));
    // The harness sets grace_period 0s, shutdown_timeout 1s.
    let mut m = Moat::start(&format!(
        "access_log: {{ path: stdout }}\n{}",
        route(&format!("\"127.0.0.1:{up}\""), "")
    ));
    let mut s = open(m.port);
    assert_eq!(echo(&mut s, b"before"), b"before");
    m.signal("QUIT");
    // No new process takes the sockets: Pingora offers them for ~5 s, then the listeners
    // stop (grace 0s), then shutdown_timeout (1s), then the close frame.
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "still open after {:?}",
        started.elapsed()
    );
    eprintln!("closed {:?} after SIGQUIT", started.elapsed());
    let mut close = vec![0x88, 12];
    close.extend_from_slice(&1001u16.to_be_bytes());
    close.extend_from_slice(b"going away");
    assert_eq!(rest, close, "a close frame 1001, then the end");
    assert!(wait_until(Duration::from_secs(10), || m.exited()));
    let lines = m.access_lines(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 101, "{}", lines[0]);
    // Bytes relayed to the client (moat's own close frame is not counted).
    assert_eq!(lines[0]["bytes_sent"], 8, "{}", lines[0]);
}

#[test]
fn an_upgrade_to_a_tls_upstream_is_verified_like_any_request() {
    use crate::harness::tls::TlsUpstream;
    use std::sync::atomic::Ordering;
    let dir = temp_dir("ws-uptls");
    let authority = ca();
    let (ca_file, _) = authority.write(&dir, "ca");
    // This upstream answers 200 (and closes) to anything: a refusal of the upgrade.
    let up = TlsUpstream::start(&leaf(&authority, &["users.internal"]));
    let tls = |sni: &str| {
        format!(
            ", retries: 0, tls: {{ sni: {sni}, verify: true, ca_file: \"{}\" }}",
            ca_file.display()
        )
    };
    let target = format!("\"127.0.0.1:{}\"", up.port);
    let m = Moat::start(&route(&target, &tls("users.internal")));
    let (resp, _) = parse_one(&send_raw(m.port, HANDSHAKE)).expect("a response");
    assert_eq!((resp.status, resp.text().as_str()), (200, "tls-ok"));
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    // A name the certificate does not carry: refused before anything is sent.
    let m = Moat::start(&route(&target, &tls("other.internal")));
    let (resp, _) = parse_one(&send_raw(m.port, HANDSHAKE)).expect("a response");
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// The 101 and a refused upgrade echo the request id, the one the upstream and the access
/// log got (issue 12: `X-Request-ID` on every response, with no `request_id` plugin).
#[test]
fn the_101_and_a_refusal_echo_the_request_id() {
    let echo_up = crate::harness::ws::echo_upstream(Arc::new(AtomicUsize::new(0)));
    let refusing = Upstream::start("refusing");
    refusing.set(Behavior {
        status: 426,
        ..Behavior::default()
    });
    let m = Moat::start(&format!(
        "access_log: {{ path: stdout }}\n\
         upstreams:\n  ws: {{ targets: [\"127.0.0.1:{echo_up}\"] }}\n  no: {{ targets: [\"{}\"] }}\n\
         routes:\n  - name: ws\n    match: {{ path: /ws }}\n    upstream: ws\n\
         \x20 - name: no\n    match: {{ path: /no }}\n    upstream: no\n",
        refusing.address()
    ));
    let id_in = |head: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no X-Request-ID in {head}"))
    };
    let mut s = open_head(m.port);
    let id = id_in(&s.1);
    assert_eq!(id.len(), 26, "{id}");
    s.0.write_all(&[0x88, 0x80, 0, 0, 0, 0]).unwrap();
    let _ = s.0.read_to_end(&mut Vec::new());
    s.0.shutdown(Shutdown::Write).unwrap();
    let lines = m.access_lines(1);
    assert_eq!(lines[0]["request_id"], id.as_str(), "{lines:?}");

    let req = String::from_utf8_lossy(HANDSHAKE).replace("GET /ws", "GET /no");
    let out = send_raw(m.port, req.as_bytes());
    let (resp, _) = parse_one(&out).expect("one response");
    assert_eq!(resp.status, 426);
    assert_eq!(
        resp.header("x-request-id"),
        refusing.last().header("x-request-id")
    );
    assert_eq!(resp.header("x-request-id").map(str::len), Some(26));
}

/// Open a WebSocket on /ws: the stream and the 101's head.
fn open_head(port: u16) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(HANDSHAKE).expect("handshake");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (s, head)
}
