//! WebSocket pieces for the tests that relay WebSockets through moat: frames built and
//! parsed by hand (RFC 6455 §5.2), response heads read without reading past them, and
//! the upstreams those tests talk to (echo, pushing, raw).

use openssl::base64;
use openssl::sha::sha1;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A WebSocket handshake for `/ws` (no `Sec-WebSocket-Accept` check on the client side).
pub const HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The handshake for `path`, with `extra` header lines (each ending in `\r\n`).
pub fn handshake(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").into_bytes()
}

/// Read one head (up to the empty line) byte by byte, nothing past it, as text; what
/// arrived if the stream ends or fails first.
pub fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A frame: FIN, `opcode`, `payload`; masked with a fixed key when `masked` (every frame
/// a client sends must be).
pub fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=65535 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x11u8, 0x22, 0x33, 0x44];
    if masked {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Take one whole frame off the front of `buf`: (opcode, unmasked payload); `None` until
/// a whole one is there.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (ext, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (2, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (8, u64::from_be_bytes(b) as usize)
        }
        126 | 127 => return None,
        n => (0, n as usize),
    };
    let start = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < start + len {
        return None;
    }
    let mut payload = buf[start..start + len].to_vec();
    if masked {
        let key = [buf[2 + ext], buf[3 + ext], buf[4 + ext], buf[5 + ext]];
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    let opcode = buf[0] & 0x0f;
    buf.drain(..start + len);
    Some((opcode, payload))
}

/// Read frames from `s` until a whole one arrived: (opcode, unmasked payload); `None` if
/// the stream ends or fails first. `buf` keeps what was read past it.
pub fn read_frame(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(f) = take_frame(buf) {
            return Some(f);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65";

/// A WebSocket echo upstream: completes the handshake (with its `Sec-WebSocket-Accept`),
/// then echoes each frame's payload back unmasked as a text frame, a close frame
/// included (after which it closes). Counts handshakes.
pub fn echo_upstream(handshakes: Arc<AtomicUsize>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let handshakes = Arc::clone(&handshakes);
            std::thread::spawn(move || {
                let mut c = c;
                c.set_read_timeout(Some(Duration::from_secs(20))).ok();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut key = String::new();
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if line.to_ascii_lowercase().starts_with("sec-websocket-key:") {
                        key = line["sec-websocket-key:".len()..].trim().to_string();
                    }
                    line.clear();
                }
                let accept = base64::encode_block(&sha1(format!("{key}{GUID}").as_bytes()));
                handshakes.fetch_add(1, Ordering::SeqCst);
                let _ = c.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes());
                loop {
                    let mut h = [0u8; 2];
                    if r.read_exact(&mut h).is_err() {
                        return;
                    }
                    let len = (h[1] & 0x7f) as usize;
                    let mut mask = [0u8; 4];
                    if h[1] & 0x80 != 0 && r.read_exact(&mut mask).is_err() {
                        return;
                    }
                    let mut payload = vec![0u8; len];
                    if r.read_exact(&mut payload).is_err() {
                        return;
                    }
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    let mut out = vec![0x81, len as u8];
                    out.extend_from_slice(&payload);
                    if c.write_all(&out).is_err() || h[0] & 0x0f == 8 {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A raw upstream: answers every connection's head with `answer`, then hands the
/// connection to `then`.
pub fn raw_upstream(
    answer: &'static [u8],
    then: impl Fn(TcpStream) + Send + Sync + 'static,
) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let then = Arc::new(then);
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let then = Arc::clone(&then);
            std::thread::spawn(move || {
                let mut c = c;
                c.set_read_timeout(Some(Duration::from_secs(20))).ok();
                let head = read_head(&mut c);
                if head.is_empty() {
                    return;
                }
                if c.write_all(answer).is_err() {
                    return;
                }
                then(c);
            });
        }
    });
    port
}

/// Size of the binary frames [`push_upstream`] sends on `/ws/big` connections.
pub const BIG: usize = 128 * 1024;

/// The payload of big frame `n` of a [`push_upstream`] connection.
pub fn big_payload(n: u32) -> Vec<u8> {
    (0..BIG as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(n) % 251) as u8)
        .collect()
}

/// A pushing WebSocket upstream: answers every handshake with 101, then pushes a
/// numbered text frame (`push N`) every 50 ms (`/ws/big`: a [`BIG`] binary frame, written
/// 8 KiB at a time, 10 ms apart), echoes text frames as `echo <payload>`, and answers a
/// close frame with one of its own (after the frame under way) before closing. Records
/// the status of every close frame it receives in `closes`.
pub fn push_upstream(closes: Arc<Mutex<Vec<u16>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let closes = Arc::clone(&closes);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || serve_pushes(c, &closes))
                .expect("thread");
        }
    });
    port
}

fn serve_pushes(mut c: TcpStream, closes: &Mutex<Vec<u16>>) {
    let head = read_head(&mut c);
    let big = head.starts_with("GET /ws/big");
    if c.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .is_err()
    {
        return;
    }
    c.set_read_timeout(Some(Duration::from_millis(10))).ok();
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    let mut n = 0u32;
    let mut next_push = Instant::now();
    let mut sending: Option<(Vec<u8>, usize)> = None;
    loop {
        if Instant::now() >= next_push && sending.is_none() {
            let f = if big {
                frame(2, &big_payload(n), false)
            } else {
                frame(1, format!("push {n}").as_bytes(), false)
            };
            sending = Some((f, 0));
            n += 1;
            next_push += Duration::from_millis(50);
        }
        if let Some((f, off)) = &mut sending {
            let end = (*off + 8192).min(f.len());
            if c.write_all(&f[*off..end]).is_err() {
                return;
            }
            *off = end;
            if end == f.len() {
                sending = None;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        while let Some((op, payload)) = take_frame(&mut buf) {
            match op {
                8 => {
                    let code = payload
                        .get(..2)
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                    closes.lock().unwrap().push(code);
                    // Finish the frame under way, answer, close.
                    if let Some((f, off)) = sending.take() {
                        let _ = c.write_all(&f[off..]);
                    }
                    let _ = c.write_all(&frame(8, &payload, false));
                    return;
                }
                1 => {
                    let mut echo = b"echo ".to_vec();
                    echo.extend_from_slice(&payload);
                    if let Some((f, off)) = sending.take() {
                        let _ = c.write_all(&f[off..]);
                    }
                    if c.write_all(&frame(1, &echo, false)).is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
    }
}
