//! HTTP/2 through the real binary: to upstreams that say `http2: true` (h2c with prior
//! knowledge, and h2 by ALPN over TLS), hop-by-hop hygiene on the way, bodies both ways,
//! multiplexing, resets, WebSocket upgrades (sent over HTTP/1.1), health checks over h2,
//! h2c with prior knowledge on a plain listener with `http2: true`, and an HTTP/2 client
//! across a graceful upgrade (GOAWAY once the old listeners stop).

use crate::harness::h2_upstream::{H2Upstream, UpTls};
use crate::harness::moat::temp_dir;
use crate::harness::tls::{ca, leaf};
use crate::harness::{free_port, request, send_raw, wait_until, Moat, Upstream};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn config(targets: &[String], extra: &str) -> String {
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "upstreams:\n  app: {{ targets: [{list}], http2: true{extra} }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n"
    )
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn http1_requests_reach_an_h2c_upstream_as_http2_clean() {
    let up = H2Upstream::start();
    let m = Moat::start(&config(&[up.address()], ", retries: 0"));
    let r = request(
        m.port,
        "GET",
        "/echo/a?x=1&y=%20z",
        &[
            ("Host", "api.example.com"),
            ("X-Custom", "kept"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello from h2");
    assert_eq!(r.header("x-upstream"), Some("h2"));
    assert_eq!(r.header("content-length"), Some("13"));
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let s = &seen[0];
    assert_eq!(s.version, http::Version::HTTP_2);
    assert_eq!(s.method, "GET");
    assert_eq!(s.target, "/echo/a?x=1&y=%20z");
    assert_eq!(s.scheme.as_deref(), Some("http"));
    assert_eq!(s.authority.as_deref(), Some("api.example.com"));
    assert_eq!(s.header("x-custom"), Some("kept"));
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some("api.example.com"));
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "host",
    ] {
        assert!(
            s.headers.get(gone).is_none(),
            "{gone} sent upstream: {s:#?}"
        );
    }

    // A body with Content-Length, and a chunked one (no Transfer-Encoding over h2).
    let r = request(m.port, "POST", "/echo/post", &[], b"payload");
    assert_eq!((r.status, r.text().as_str()), (200, "payload"));
    let raw = send_raw(
        m.port,
        b"POST /echo/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    let r = crate::harness::client::parse_all(&raw)
        .into_iter()
        .next()
        .expect("a response");
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    let s = up.seen_at("/echo/chunked").pop().expect("chunked request");
    assert_eq!(s.body, b"hello world");
    assert!(s.headers.get("transfer-encoding").is_none());
    assert_eq!(s.method, "POST");
}

#[test]
fn one_mebibyte_each_way() {
    let up = H2Upstream::start();
    let m = Moat::start(&config(&[up.address()], ", retries: 0"));
    let big = pattern(1 << 20);
    let r = request(m.port, "POST", "/echo/big", &[], &big);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1048576"));
    assert!(
        r.body == big,
        "echoed body differs ({} bytes)",
        r.body.len()
    );
    assert_eq!(up.seen_at("/echo/big")[0].body.len(), 1 << 20);

    // No content-length from the upstream: chunked to an HTTP/1.1 client.
    let r = request(m.port, "GET", "/big?bytes=1048576", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("transfer-encoding"),
        Some("chunked"),
        "{:?}",
        r.headers
    );
    assert!(r.header("content-length").is_none());
    assert!(
        r.body == big,
        "streamed body differs ({} bytes)",
        r.body.len()
    );
}

#[test]
fn concurrent_requests_share_connections() {
    let up = H2Upstream::start();
    let m = Moat::start(&config(&[up.address()], ", retries: 0"));
    assert_eq!(request(m.port, "GET", "/warm", &[], b"").status, 200);
    let n = 40;
    let started = Instant::now();
    let port = m.port;
    let threads: Vec<_> = (0..n)
        .map(|_| std::thread::spawn(move || request(port, "GET", "/slow", &[], b"").status))
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.seen_at("/slow").len(), n);
    // 40 × 300 ms one after another would take 12 s.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let (conns, most) = (up.connections(), up.max_concurrent());
    eprintln!(
        "{n} concurrent requests: {conns} upstream connections, at most {most} streams on one"
    );
    assert!(conns <= 5, "{conns} connections for {n} requests");
    assert!(
        most >= 8,
        "at most {most} streams in flight on one connection"
    );
}

#[test]
fn upstream_reset_is_502_and_post_is_never_retried() {
    let (a, b) = (H2Upstream::start(), H2Upstream::start());
    let m = Moat::start(&config(&[a.address(), b.address()], ", retries: 1"));
    let resets = || a.seen_at("/reset").len() + b.seen_at("/reset").len();
    let r = request(m.port, "POST", "/reset", &[], b"body");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "BAD_GATEWAY");
    assert_eq!(resets(), 1, "a POST went to a second target");
    // An idempotent request is tried on the other target, once.
    let r = request(m.port, "GET", "/reset", &[], b"");
    assert_eq!(r.status, 502);
    assert_eq!(resets(), 3);
    // A reset stream leaves the connection usable.
    assert_eq!(request(m.port, "GET", "/echo", &[], b"").status, 200);

    let c = H2Upstream::start();
    let off = Moat::start(&config(&[c.address()], ", retries: 0"));
    assert_eq!(request(off.port, "GET", "/reset", &[], b"").status, 502);
    assert_eq!(c.seen_at("/reset").len(), 1);
}

#[test]
fn h2c_to_a_target_that_only_speaks_http1_is_502() {
    let up = Upstream::start("h1-only");
    let m = Moat::start(&config(&[up.address()], ", retries: 0"));
    let r = request(m.port, "GET", "/x", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    // It saw the connection preface (as a `PRI *` line), never the request.
    let seen = up.traffic();
    assert!(seen.iter().any(|r| r.method == "PRI"), "{seen:?}");
    assert!(seen.iter().all(|r| r.target != "/x"), "{seen:?}");
}

#[test]
fn tls_upstream_negotiates_h2_by_alpn_or_falls_back() {
    let dir = temp_dir("h2tls");
    let authority = ca();
    let (ca_file, _) = authority.write(&dir, "ca");
    let cert = leaf(&authority, &["app.internal"]);
    let tls = format!(
        ", retries: 0, tls: {{ sni: app.internal, verify: true, ca_file: \"{}\" }}",
        ca_file.display()
    );
    let h2 = H2Upstream::start_tls(UpTls {
        cert: &cert,
        offer_h2: true,
    });
    let m = Moat::start(&config(&[h2.address()], &tls));
    let r = request(
        m.port,
        "GET",
        "/echo?q=1",
        &[("Host", "api.example.com")],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "hello from h2"));
    assert_eq!(r.header("x-upstream-scheme"), Some("https"));
    let s = h2.seen().pop().unwrap();
    assert_eq!(s.version, http::Version::HTTP_2);
    assert_eq!(s.scheme.as_deref(), Some("https"));
    assert_eq!(s.authority.as_deref(), Some("api.example.com"));
    assert_eq!(s.target, "/echo?q=1");
    let big = pattern(1 << 20);
    let r = request(m.port, "POST", "/echo/big", &[], &big);
    assert!(r.status == 200 && r.body == big, "status {}", r.status);

    // A target that only offers http/1.1 by ALPN still works, over HTTP/1.1.
    let h1 = H2Upstream::start_tls(UpTls {
        cert: &cert,
        offer_h2: false,
    });
    let m1 = Moat::start(&config(&[h1.address()], &tls));
    let r = request(m1.port, "GET", "/x", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "h1"));
    assert_eq!(h1.seen().pop().unwrap().version, http::Version::HTTP_11);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn websocket_upgrade_to_an_http2_upstream_goes_over_http1() {
    let up = H2Upstream::start();
    let m = Moat::start(&config(&[up.address()], ", retries: 0"));
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed during handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let frame = [0x81u8, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    s.write_all(&frame).unwrap();
    let mut back = [0u8; 8];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, frame, "echo through the upgraded connection");
    let ws = up.seen_at("/ws");
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].version, http::Version::HTTP_11);
    assert_eq!(ws[0].header("upgrade"), Some("websocket"));
    // Plain requests on the same pool still go over HTTP/2.
    assert_eq!(request(m.port, "GET", "/after", &[], b"").status, 200);
    assert_eq!(
        up.seen_at("/after")[0].version,
        http::Version::HTTP_2,
        "plain request after the upgrade"
    );
}

#[test]
fn health_checks_speak_h2_to_an_http2_upstream() {
    let up = H2Upstream::start();
    let m = Moat::start(&config(
        &[up.address()],
        ", health_check: { http: { path: /healthz, host: app.internal }, interval: 200ms }",
    ));
    assert!(
        wait_until(Duration::from_secs(5), || up.seen_at("/healthz").len() >= 2),
        "no probes: {:#?}",
        up.seen()
    );
    let probe = up.seen_at("/healthz").pop().unwrap();
    assert_eq!(probe.version, http::Version::HTTP_2);
    assert_eq!(probe.scheme.as_deref(), Some("http"));
    assert_eq!(probe.authority.as_deref(), Some("app.internal"));
    assert_eq!(probe.header("user-agent"), Some("moat-health-check"));
    assert_eq!(request(m.port, "GET", "/echo", &[], b"").status, 200);
}

/// Send `(method, path, body)` requests on one h2c connection at once; returns
/// (status, body) of each.
pub(crate) fn h2c_requests(port: u16, reqs: &[(&str, &str, &[u8])]) -> Vec<(u16, Vec<u8>)> {
    let reqs = reqs
        .iter()
        .map(|(method, path, body)| {
            let req = http::Request::builder()
                .method(*method)
                .uri(format!("http://h2c.example.com{path}"))
                .body(())
                .unwrap();
            (req, *body)
        })
        .collect();
    h2c_exchange(port, reqs)
}

/// Send `(request, body)` pairs on one h2c connection at once; returns (status, body) of
/// each.
pub(crate) fn h2c_exchange(
    port: u16,
    reqs: Vec<(http::Request<()>, &[u8])>,
) -> Vec<(u16, Vec<u8>)> {
    h2c_exchange_heads(port, reqs)
        .into_iter()
        .map(|(status, _, body)| (status, body))
        .collect()
}

/// As [`h2c_exchange`], with each response's headers: (status, headers, body).
pub(crate) fn h2c_exchange_heads(
    port: u16,
    reqs: Vec<(http::Request<()>, &[u8])>,
) -> Vec<(u16, http::HeaderMap, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut pending = Vec::new();
        for (req, body) in reqs {
            let mut client = client.clone().ready().await.unwrap();
            let (resp, mut send) = client.send_request(req, body.is_empty()).unwrap();
            if !body.is_empty() {
                send.send_data(bytes::Bytes::copy_from_slice(body), true)
                    .unwrap();
            }
            pending.push(resp);
        }
        // Every response is read at the same time: read one after the other, an unread
        // body could hold the connection's flow-control window that another needs, and
        // the exchange would wait forever (seen under load). The whole exchange is bounded.
        let read = |resp: h2::client::ResponseFuture| async move {
            let resp = resp.await.expect("response");
            let status = resp.status().as_u16();
            let (head, mut body) = resp.into_parts();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            (status, head.headers, data)
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            futures::future::join_all(pending.into_iter().map(read)),
        )
        .await
        .expect("every response in time")
    })
}

#[test]
fn h2c_listener_takes_prior_knowledge_and_http1() {
    let up = Upstream::start("app");
    let h2_up = H2Upstream::start();
    let dir = temp_dir("h2c");
    let (port, admin) = (free_port(), free_port());
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\n    http2: true\nadmin:\n  address: 127.0.0.1:{admin}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\n  h2: {{ targets: [\"{}\"], http2: true }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n  - name: big\n    match: {{ path: /big }}\n    upstream: h2\n  - name: echo\n    match: {{ path_prefix: /echo }}\n    upstream: h2\n",
        up.address(),
        h2_up.address(),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);
    let got = h2c_requests(
        m.port,
        &[
            ("GET", "/one?x=1", b""),
            ("POST", "/two", b"h2c body"),
            ("GET", "/three", b""),
        ],
    );
    assert_eq!(
        got,
        vec![
            (200, b"ok".to_vec()),
            (200, b"ok".to_vec()),
            (200, b"ok".to_vec())
        ]
    );
    let mut seen = up.traffic();
    seen.sort_by(|a, b| a.target.cmp(&b.target));
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/one?x=1", "/three", "/two"]);
    let two = &seen[2];
    assert_eq!(two.body, b"h2c body");
    assert_eq!(two.header("host"), Some("h2c.example.com"));
    assert_eq!(two.header("x-forwarded-proto"), Some("http"));

    // HTTP/2 end to end, 1 MiB each way.
    let big = pattern(1 << 20);
    let got = h2c_requests(
        m.port,
        &[
            ("GET", "/big?bytes=1048576", b""),
            ("POST", "/echo/up", &big),
        ],
    );
    assert_eq!(got[0].0, 200);
    assert!(
        got[0].1 == big,
        "streamed body differs ({} bytes)",
        got[0].1.len()
    );
    assert_eq!(got[1].0, 200);
    assert!(
        got[1].1 == big,
        "echoed body differs ({} bytes)",
        got[1].1.len()
    );
    let s = h2_up
        .seen_at("/echo/up")
        .pop()
        .expect("h2 upstream request");
    assert_eq!((s.version, s.body.len()), (http::Version::HTTP_2, 1 << 20));
    assert_eq!(s.authority.as_deref(), Some("h2c.example.com"));

    // HTTP/1.1 on the same listener still works; `Upgrade: h2c` is not taken up.
    assert_eq!(request(m.port, "GET", "/h1", &[], b"").status, 200);
    let out = send_raw(
        m.port,
        b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains(" 101 "), "h2c upgrade accepted: {text}");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let up_req = up.last();
    assert_eq!(up_req.target, "/up");
    assert!(up_req.header("upgrade").is_none() && up_req.header("http2-settings").is_none());
}

/// moat on an h2c listener (`grace_period` as given, `shutdown_timeout` 5 s) in front of
/// an upstream that answers after `delay`.
fn h2c_before_a_slow_upstream(delay: Duration, grace: &str) -> (Upstream, Moat) {
    let up = Upstream::start("app");
    up.set(crate::harness::Behavior {
        delay,
        ..Default::default()
    });
    let dir = temp_dir("h2drain");
    let (port, admin) = (free_port(), free_port());
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: {grace}\n  shutdown_timeout: 5s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\n    http2: true\nadmin:\n  address: 127.0.0.1:{admin}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address(),
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);
    (up, m)
}

/// An h2c connection to `port` with a request to `/slow` in flight: the connection's task
/// (over once the connection closed) and the response to come.
async fn a_stream_in_flight(
    port: u16,
) -> (
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    h2::client::ResponseFuture,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .uri("http://h2c.example.com/slow")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    (conn, resp)
}

#[test]
fn an_http2_client_gets_goaway_when_the_listeners_stop_and_its_stream_finishes() {
    let (_up, mut m) = h2c_before_a_slow_upstream(Duration::from_secs(3), "0s");
    let port = m.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, closed_after) = rt.block_on(async {
        let (conn, resp) = a_stream_in_flight(port).await;
        // The request is in flight (the upstream takes 3 s) when the listeners stop.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = tokio::task::spawn_blocking(move || {
            let new = m.upgrade();
            (m, new, Instant::now())
        });
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("in time")
            .expect("the stream in flight finishes");
        let started = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(10), conn).await;
        assert!(
            matches!(end, Ok(Ok(Ok(())))),
            "closed after GOAWAY: {end:?}"
        );
        let (mut old, _new, upgraded) = new.await.unwrap();
        assert!(
            upgraded < started,
            "the stream was in flight across the upgrade"
        );
        assert!(wait_until(Duration::from_secs(5), || old.exited()));
        (resp.status().as_u16(), started.elapsed())
    });
    assert_eq!(status, 200);
    assert!(closed_after < Duration::from_secs(2), "{closed_after:?}");
}

#[test]
fn an_http2_client_gets_goaway_at_sigquit_while_the_listeners_still_accept() {
    let (_up, m) = h2c_before_a_slow_upstream(Duration::from_secs(1), "6s");
    let port = m.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (conn, resp) = a_stream_in_flight(port).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let quit = Instant::now();
        m.signal("QUIT");
        // Told at once, as HTTP/1 clients are by `Connection: close`: the stream in flight
        // finishes, then the connection closes, while the listeners still accept (for
        // grace_period), so the client goes elsewhere as soon as it can.
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("in time")
            .expect("the stream in flight finishes");
        assert_eq!(resp.status(), 200);
        let end = tokio::time::timeout(Duration::from_secs(10), conn).await;
        let closed = quit.elapsed();
        assert!(
            matches!(end, Ok(Ok(Ok(())))),
            "closed after GOAWAY: {end:?}"
        );
        assert!(
            closed < Duration::from_secs(3),
            "closed {closed:?} after SIGQUIT"
        );
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "the listeners still accept"
        );
    });
}
