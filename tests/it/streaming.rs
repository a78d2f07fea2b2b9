//! Streaming through the real binary: server-sent events arrive one by one (never
//! buffered until the stream ends), and WebSocket upgrades pass through authentication
//! and echo, 1,000 connections at once.

use crate::harness::ws::{echo_upstream, frame, handshake};
use crate::harness::Moat;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An SSE upstream: 3 events, 500 ms apart, chunked.
fn sse_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten().take(8) {
            std::thread::spawn(move || {
                let mut c = c;
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n");
                for i in 0..3 {
                    let ev = format!("data: event-{i}\n\n");
                    let _ = c.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
                    let _ = c.flush();
                    std::thread::sleep(Duration::from_millis(500));
                }
                let _ = c.write_all(b"0\r\n\r\n");
            });
        }
    });
    port
}

#[test]
fn sse_events_arrive_before_the_stream_ends() {
    let up = sse_upstream();
    let m = Moat::start(&format!(
        "upstreams:\n  sse: {{ targets: [\"127.0.0.1:{up}\"] }}\nroutes:\n  - name: sse\n    match: {{ path_prefix: / }}\n    upstream: sse\n"
    ));
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut first_at = None;
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(5) {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_at.is_none() && String::from_utf8_lossy(&got).contains("event-0") {
            first_at = Some(start.elapsed());
        }
        if String::from_utf8_lossy(&got).contains("event-2") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event-2"), "{text}");
    let first = first_at.expect("first event");
    assert!(
        first < Duration::from_millis(400),
        "first event after {first:?}: buffered"
    );
    assert!(
        !text.to_ascii_lowercase().contains("content-encoding"),
        "never compressed"
    );
}

fn ws_exchange(port: u16, key_header: Option<&str>, msg: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let auth = key_header
        .map(|k| format!("x-api-key: {k}\r\n"))
        .unwrap_or_default();
    s.write_all(&handshake("/ws", &auth))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| e.to_string())?;
    let mut line = String::new();
    while r.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    if !status.contains(" 101 ") {
        return Err(status.trim().to_string());
    }
    s.write_all(&frame(1, msg.as_bytes(), true))
        .map_err(|e| e.to_string())?;
    let mut h = [0u8; 2];
    r.read_exact(&mut h).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
    r.read_exact(&mut payload).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&payload).into_owned())
}

#[test]
fn websocket_through_auth_1000_at_once() {
    let handshakes = Arc::new(AtomicUsize::new(0));
    let up = echo_upstream(Arc::clone(&handshakes));
    // sha256("ws-test-key")
    let hash = openssl::sha::sha256(b"ws-test-key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let m = Moat::start(&format!(
        "consumers:\n  - id: ws\n    api_keys: [ {{ sha256: {hash} }} ]\nupstreams:\n  ws: {{ targets: [\"127.0.0.1:{up}\"] }}\nroutes:\n  - name: ws\n    match: {{ path: /ws }}\n    upstream: ws\n    plugins:\n      - auth: {{ methods: [api_key] }}\n"
    ));
    // Without credentials the handshake is refused and never reaches the upstream.
    let refused = ws_exchange(m.port, None, "x").unwrap_err();
    assert!(refused.contains(" 401 "), "{refused}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(
        ws_exchange(m.port, Some("ws-test-key"), "hello").unwrap(),
        "hello"
    );

    let start = Instant::now();
    let port = m.port;
    let threads: Vec<_> = (0..1000)
        .map(|i| {
            std::thread::spawn(move || {
                ws_exchange(port, Some("ws-test-key"), &format!("m{i}"))
                    .map(|r| r == format!("m{i}"))
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().ok().and_then(|r| r.ok()).unwrap_or(false))
        .filter(|good| *good)
        .count();
    assert_eq!(ok, 1000, "only {ok} of 1000 echoed");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 1001);
}
