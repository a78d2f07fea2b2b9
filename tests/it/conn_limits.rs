//! Connection floods (issue 14, item 9): `server.limits.max_connections_per_ip` and
//! `server.limits.max_connections`, with raw sockets from several loopback addresses
//! (127.0.0.2, 127.0.0.3, ...: every 127/8 address is local on Linux). A connection over a
//! limit is closed at accept, with nothing sent; its slot comes back when a connection
//! ends, however it ends (HTTP/1 keep-alive, a relayed WebSocket, HTTP/2).
//!
//! The harness checks that moat listens by connecting from 127.0.0.1: the tests use other
//! addresses, and wait for those probes' places in the process-wide count to come back.

use crate::harness::moat::temp_dir;
use crate::harness::tls::{ca, leaf};
use crate::harness::{free_port, wait_until, Moat, Upstream};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A moat with `limits` under `server.limits` and `listener` extras on its one listener.
fn start(limits: &str, trusted: &str, listener: &str, body: &str) -> Moat {
    let dir = temp_dir("conn-limits");
    let (port, admin) = (free_port(), free_port());
    let text = format!(
        "server:\n  threads: 2\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\n  trusted_proxies: [{trusted}]\n  limits: {{ {limits} }}\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\n{listener}admin:\n  address: 127.0.0.1:{admin}\n{body}",
        d = dir.display()
    );
    Moat::start_raw(&text, port, admin, dir, &[])
}

const RESPOND: &str =
    "routes:\n  - name: r\n    match: { path_prefix: / }\n    respond: { body: ok }\n";

/// A TCP connection from `src` (a 127/8 address) to `port`.
fn connect_from(src: &str, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        sock.connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .expect("connect")
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// A keep-alive connection from `src` that got its `200`, still open.
fn served(src: &str, port: u16) -> TcpStream {
    let mut s = connect_from(src, port);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("a response");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "from {src}: {text:?}");
    s
}

/// A connection from `src` that got its `200` once the places the harness's readiness
/// probes (from 127.0.0.1) held in the process-wide count are back (bounded wait).
fn served_eventually(src: &str, port: u16) -> TcpStream {
    let mut got = None;
    wait_until(Duration::from_secs(5), || {
        let mut s = connect_from(src, port);
        let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut buf = [0u8; 512];
        let ok = matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"));
        if ok {
            got = Some(s);
        }
        ok
    });
    got.unwrap_or_else(|| panic!("moat never served a connection from {src}"))
}

/// Whether moat closed a new connection from `src` without a word (a limit refused it).
fn refused(src: &str, port: u16) -> bool {
    let mut s = connect_from(src, port);
    let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("from {src}: neither served nor closed: {e}"),
    }
}

fn refusals(m: &Moat, reason: &str) -> f64 {
    m.metric(&format!(
        "moat_connections_refused_total{{reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn connections_over_the_per_ip_limit_are_closed_at_accept() {
    let m = start("max_connections_per_ip: 2", "", "", RESPOND);
    let a = served("127.0.0.3", m.port);
    let _b = served("127.0.0.3", m.port);
    assert!(refused("127.0.0.3", m.port));
    // Another address has its own count.
    let _c = served("127.0.0.4", m.port);
    let _d = served("127.0.0.4", m.port);
    assert!(refused("127.0.0.4", m.port));
    assert_eq!(refusals(&m, "per_ip"), 2.0);

    // A burst: every one refused and counted, the log says so at most once a second.
    for _ in 0..30 {
        assert!(refused("127.0.0.3", m.port));
    }
    assert_eq!(refusals(&m, "per_ip"), 32.0);
    let lines = m
        .logs()
        .lines()
        .filter(|l| l.contains("max_connections_per_ip"))
        .count();
    assert!((1..=3).contains(&lines), "{lines} log lines:\n{}", m.logs());

    // Closing a connection gives its slot back.
    drop(a);
    assert!(
        wait_until(Duration::from_secs(5), || !refused("127.0.0.3", m.port)),
        "the slot of a closed connection never came back"
    );
}

#[test]
fn the_process_wide_cap_counts_every_address_and_trusted_proxies_skip_the_per_ip_one() {
    let m = start(
        "max_connections: 3, max_connections_per_ip: 1",
        "\"127.0.0.1/32\"",
        "",
        RESPOND,
    );
    // 127.0.0.1 is a trusted proxy: many clients behind it, no per-address limit.
    let a = served_eventually("127.0.0.1", m.port);
    let _b = served_eventually("127.0.0.1", m.port);
    let _c = served_eventually("127.0.0.2", m.port);
    assert_eq!(refusals(&m, "per_ip"), 0.0);
    let total_before = refusals(&m, "total");
    assert!(refused("127.0.0.3", m.port));
    assert!(refused("127.0.0.1", m.port));
    assert_eq!(refusals(&m, "total"), total_before + 2.0);
    drop(a);
    assert!(wait_until(Duration::from_secs(5), || !refused(
        "127.0.0.3",
        m.port
    )));
    // 127.0.0.2 is not trusted: one connection at most.
    drop(_b);
    std::thread::sleep(Duration::from_millis(200));
    assert!(refused("127.0.0.2", m.port));
    assert!(refusals(&m, "per_ip") >= 1.0);
}

/// A WebSocket upstream: answers `101` and keeps the connection until the other side
/// closes it.
fn ws_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
                let mut sink = [0u8; 1024];
                while c.read(&mut sink).unwrap_or(0) > 0 {}
            });
        }
    });
    port
}

#[test]
fn a_relayed_websocket_keeps_its_slot_until_it_closes() {
    let ws = ws_upstream();
    let m = start(
        "max_connections_per_ip: 1",
        "",
        "",
        &format!("upstreams:\n  ws: {{ targets: [\"127.0.0.1:{ws}\"] }}\nroutes:\n  - name: ws\n    match: {{ path_prefix: / }}\n    upstream: ws\n"),
    );
    let mut s = connect_from("127.0.0.2", m.port);
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The relay runs outside Pingora's request loop: the slot stays taken all the same.
    std::thread::sleep(Duration::from_millis(300));
    assert!(refused("127.0.0.2", m.port));
    drop(s);
    assert!(wait_until(Duration::from_secs(5), || !refused(
        "127.0.0.2",
        m.port
    )));
}

#[test]
fn an_http2_connection_holds_one_slot_and_gives_it_back() {
    let m = start(
        "max_connections_per_ip: 1",
        "",
        "    http2: true\n",
        RESPOND,
    );
    let port = m.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let tcp = sock
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        for _ in 0..3 {
            let mut c = client.clone().ready().await.unwrap();
            let req = http::Request::get("http://h/x").body(()).unwrap();
            let (resp, _) = c.send_request(req, true).unwrap();
            assert_eq!(resp.await.unwrap().status(), 200);
        }
        // Streams are not connections: one slot, taken.
        let refused_now = tokio::task::spawn_blocking(move || refused("127.0.0.2", port))
            .await
            .unwrap();
        assert!(refused_now);
        drop(client);
        conn.abort();
    });
    drop(rt);
    assert!(wait_until(Duration::from_secs(5), || !refused(
        "127.0.0.2",
        m.port
    )));
}

#[test]
fn tls_connections_over_the_limit_are_closed_before_the_handshake() {
    let dir = temp_dir("conn-limits-tls");
    let authority = ca();
    let cert = leaf(&authority, &["a.example.com"]);
    let (c, k) = cert.write(&dir, "a");
    let up = Upstream::start("app");
    let m = start(
        "max_connections_per_ip: 1",
        "",
        &format!(
            "    tls:\n      certificates:\n        - {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
            c.display(),
            k.display()
        ),
        &format!(
            "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n",
            up.address()
        ),
    );
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tcp = connect_from("127.0.0.2", m.port);
    let mut tls = b
        .build()
        .connect("a.example.com", tcp)
        .expect("TLS handshake");
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tls.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A second connection is closed before any TLS byte: reading it ends at once (without
    // the check it would wait for our ClientHello and the read would time out).
    let mut raw = connect_from("127.0.0.2", m.port);
    let got = raw.read(&mut buf);
    assert!(
        matches!(&got, Ok(0)) || matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{got:?}"
    );
    assert_eq!(refusals(&m, "per_ip"), 1.0);
    drop(tls);
}

#[test]
fn a_reload_cannot_change_the_connection_limits() {
    let m = start("max_connections_per_ip: 2", "", "", RESPOND);
    let text = std::fs::read_to_string(&m.config).unwrap();
    m.rewrite_raw(&text.replace("max_connections_per_ip: 2", "max_connections_per_ip: 5"));
    let r = m.admin_post("/reload");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["details"][0]["path"], "server");
    let _a = served("127.0.0.2", m.port);
    let _b = served("127.0.0.2", m.port);
    assert!(refused("127.0.0.2", m.port), "the old limit stays");
}
