//! Long-lived streams across a graceful upgrade: relayed WebSockets stay open for the
//! whole `shutdown_timeout`, then get a close frame 1001 (not a reset) after every frame
//! already under way, the upstream gets a close too, and the clients reconnect to the new
//! process; a server-sent event stream ends at a chunk boundary.

use crate::harness::ws::{big_payload, frame, handshake, push_upstream, read_head, take_frame};
use crate::harness::{wait_until, Moat};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const SHUTDOWN: Duration = Duration::from_secs(3);

/// What one WebSocket client saw.
#[derive(Debug, Default)]
struct WsSeen {
    /// Status of the close frame received.
    close: Option<u16>,
    /// When it arrived.
    closed_at: Option<Instant>,
    /// How the connection ended after it: `Ok` for a clean end of stream.
    end: Option<Result<(), ErrorKind>>,
    /// Pushes (or big frames) received, all in order and intact.
    pushes: u32,
    /// When each arrived.
    pushed_at: Vec<Instant>,
    /// Messages sent, and echoes received (in order).
    sent: Vec<Instant>,
    echoed: usize,
    /// Something arrived out of order or altered.
    broken: Vec<String>,
    /// The reconnection after the close was answered with 101 and an echo.
    reconnected: bool,
}

fn open_ws(port: u16, path: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(&handshake(path, "")).ok()?;
    read_head(&mut s).starts_with("HTTP/1.1 101 ").then_some(s)
}

/// Open a WebSocket, wait at `ready`, then send a message every 100 ms and read until the
/// server closes; then reconnect once.
fn ws_client(port: u16, big: bool, ready: &Barrier) -> WsSeen {
    let path = if big { "/ws/big" } else { "/ws/chat" };
    let mut seen = WsSeen::default();
    let opened = open_ws(port, path);
    ready.wait();
    let Some(mut s) = opened else {
        seen.broken.push("no 101".into());
        return seen;
    };
    s.set_read_timeout(Some(Duration::from_millis(30))).ok();
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 64 * 1024]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if seen.close.is_none() && Instant::now() >= next_send {
            let msg = format!("m{}", seen.sent.len());
            if s.write_all(&frame(1, msg.as_bytes(), true)).is_ok() {
                seen.sent.push(Instant::now());
            }
            next_send += Duration::from_millis(100);
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                seen.end = Some(Ok(()));
                break;
            }
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                seen.end = Some(Err(e.kind()));
                break;
            }
        }
        while let Some((op, payload)) = take_frame(&mut buf) {
            if seen.close.is_some() {
                seen.broken.push(format!("frame {op} after the close"));
                continue;
            }
            match op {
                8 => {
                    seen.close = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                    seen.closed_at = Some(Instant::now());
                    if !payload.ends_with(b"going away") {
                        seen.broken.push("close reason".into());
                    }
                    let _ = s.write_all(&frame(8, &payload[..2.min(payload.len())], true));
                }
                2 if payload != big_payload(seen.pushes) => {
                    seen.broken
                        .push(format!("big frame {} altered", seen.pushes));
                }
                2 => {
                    seen.pushes += 1;
                    seen.pushed_at.push(Instant::now());
                }
                1 => {
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    if text == format!("push {}", seen.pushes) {
                        seen.pushes += 1;
                        seen.pushed_at.push(Instant::now());
                    } else if text == format!("echo m{}", seen.echoed) {
                        seen.echoed += 1;
                    } else {
                        seen.broken.push(format!("unexpected {text:?}"));
                    }
                }
                _ => seen.broken.push(format!("opcode {op}")),
            }
        }
    }
    drop(s);
    // Reconnect: the new process answers.
    if let Some(mut s) = open_ws(port, "/ws/chat") {
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let _ = s.write_all(&frame(1, b"again", true));
        let mut buf = Vec::new();
        while let Ok(k) = s.read(&mut chunk) {
            if k == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
            if let Some((1, p)) = take_frame(&mut buf).filter(|(_, p)| p.starts_with(b"echo")) {
                seen.reconnected = p == b"echo again";
                break;
            }
        }
    }
    seen
}

#[test]
fn two_hundred_websockets_get_a_going_away_close_after_shutdown_timeout() {
    const N: usize = 200;
    const BIGS: usize = 10;
    let closes = Arc::new(Mutex::new(Vec::new()));
    let up = push_upstream(Arc::clone(&closes));
    let mut m = Moat::start_timed(
        "0s",
        "3s",
        &format!("upstreams:\n  ws: {{ targets: [\"127.0.0.1:{up}\"] }}\nroutes:\n  - name: ws\n    match: {{ path_prefix: / }}\n    upstream: ws\n"),
    );
    let ready = Arc::new(Barrier::new(N + 1));
    let port = m.port;
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let ready = Arc::clone(&ready);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || ws_client(port, i < BIGS, &ready))
                .expect("thread")
        })
        .collect();
    ready.wait();
    std::thread::sleep(Duration::from_millis(300));
    let called = Instant::now();
    let new = m.upgrade();
    let returned = Instant::now();
    let mut old = std::mem::replace(&mut m, new);
    let seen: Vec<WsSeen> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    for (i, s) in seen.iter().enumerate() {
        let ctx = format!("websocket {i}: {s:?}");
        assert!(s.broken.is_empty(), "{ctx}");
        assert_eq!(s.close, Some(1001), "{ctx}");
        assert_eq!(s.end, Some(Ok(())), "a clean end, not a reset: {ctx}");
        let closed = s.closed_at.expect("closed");
        // Open for the whole shutdown_timeout after the listeners stopped (grace 0s).
        assert!(
            closed >= called + SHUTDOWN,
            "closed {:?} after SIGQUIT: {ctx}",
            closed - called
        );
        assert!(
            closed <= returned + SHUTDOWN + Duration::from_secs(3),
            "{ctx}"
        );
        // Traffic went on both ways until then: pushes (big frames ones included, each
        // written over 160 ms or more) still arrived a second after the listeners stopped,
        // and every message sent until shortly before the close was echoed.
        assert!(
            s.pushed_at
                .iter()
                .any(|t| *t >= returned + Duration::from_secs(1)),
            "{ctx}"
        );
        let early = s
            .sent
            .iter()
            .filter(|t| **t + Duration::from_millis(500) < closed)
            .count();
        assert!(
            s.echoed >= early,
            "every message sent well before the close was echoed: {ctx}"
        );
        assert!(s.reconnected, "{ctx}");
    }
    // The upstream side got a close 1001 on every connection of the old process.
    let got = closes.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|c| **c == 1001).count(), N, "{got:?}");
    assert!(
        wait_until(Duration::from_secs(5), || old.exited()),
        "{}",
        old.logs()
    );
    assert!(
        old.logs().contains("WebSockets get close 1001"),
        "{}",
        old.logs()
    );
}

/// An event-stream upstream: one event every 50 ms, each its own chunk, written in two
/// parts 5 ms apart, numbered from 0 on each connection; until the connection breaks.
fn sse_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                read_head(&mut c);
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
                if c.write_all(head).is_err() {
                    return;
                }
                for n in 0.. {
                    let event = format!("id: {n}\ndata: {}\n\n", "x".repeat(200));
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    let (a, b) = chunk.as_bytes().split_at(chunk.len() / 2);
                    if c.write_all(a).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    if c.write_all(b).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(45));
                }
            });
        }
    });
    port
}

/// Read an event stream through moat: (events in order, whether the stream ended right
/// after a whole chunk, how it ended, when).
fn read_events(port: u16) -> (Vec<u32>, bool, Result<(), ErrorKind>, Instant) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n")
        .expect("write");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let (mut buf, mut chunk, mut events) = (Vec::new(), [0u8; 8192], Vec::new());
    let mut text = Vec::new();
    let end = loop {
        match s.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) => break Err(e.kind()),
        }
        // Whole chunks off the front.
        while let Some(line) = buf.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line]).unwrap_or("?"), 16)
                .expect("chunk size line");
            if size == 0 || buf.len() < line + 2 + size + 2 {
                break;
            }
            text.extend_from_slice(&buf[line + 2..line + 2 + size]);
            assert_eq!(&buf[line + 2 + size..line + 4 + size], b"\r\n", "chunk end");
            buf.drain(..line + 4 + size);
            // Whole events (a chunk may carry part of one: moat passes on what it read).
            while let Some(end) = text.windows(2).position(|w| w == b"\n\n") {
                let ev = String::from_utf8_lossy(&text[..end]).into_owned();
                let id = ev.strip_prefix("id: ").and_then(|r| r.split('\n').next());
                events.push(id.and_then(|i| i.parse().ok()).expect("event id"));
                text.drain(..end + 2);
            }
        }
    };
    (events, buf.is_empty(), end, Instant::now())
}

#[test]
fn an_event_stream_ends_at_a_chunk_boundary_after_shutdown_timeout() {
    let up = sse_upstream();
    let mut m = Moat::start_timed(
        "0s",
        "3s",
        &format!("upstreams:\n  sse: {{ targets: [\"127.0.0.1:{up}\"], read_timeout: 30s }}\nroutes:\n  - name: sse\n    match: {{ path_prefix: / }}\n    upstream: sse\n"),
    );
    let port = m.port;
    let streams: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || read_events(port)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let called = Instant::now();
    let new = m.upgrade();
    let returned = Instant::now();
    let mut old = std::mem::replace(&mut m, new);
    for s in streams {
        let (events, at_boundary, end, ended) = s.join().expect("reader");
        assert!(at_boundary, "the stream ended inside a chunk");
        assert_eq!(end, Ok(()), "a clean end, not a reset");
        assert!(
            ended >= called + SHUTDOWN,
            "ended {:?} after SIGQUIT",
            ended - called
        );
        assert!(ended <= returned + SHUTDOWN + Duration::from_secs(3));
        assert!(events.len() >= 60, "{} events", events.len());
        assert!(
            events.iter().enumerate().all(|(i, n)| *n == i as u32),
            "in order, none lost"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || old.exited()),
        "{}",
        old.logs()
    );
    // A new stream comes from the new process.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("write");
    assert!(read_head(&mut s).starts_with("HTTP/1.1 200"));
    let mut first = [0u8; 64];
    assert!(s.read(&mut first).is_ok_and(|n| n > 0), "events flow");
}
