//! A hostile Redis: a TCP server on 127.0.0.1:0 that logs every client in like a real
//! server (`AUTH`, `SELECT`, `CLIENT SETINFO`, `PING`... answered `+OK` or `+PONG`) and then
//! answers every script call (`EVALSHA`, `EVAL`) with something a client must not trust.
//! So the client's guard has to trip on a call, not while connecting. Stops when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a [`HostileRedis`] answers to a script call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// `$1099511627776` then an endless stream of bytes.
    HugeBulk,
    /// `$9223372036854775807` then an endless stream of bytes.
    MaxBulk,
    /// A status line of 1 MiB.
    LongLine,
    /// Bytes that are no RESP at all.
    Garbage,
    /// `+x\n$N\r\n`, then `*2147483647\r\n` and `_\r\n` for ever: a reader that ends lines
    /// at a bare LF takes the first line for a whole reply and the rest for the bytes of an
    /// N-byte string it need not look into; the `redis` crate's parser (CRLF only) reads one
    /// simple string, then an array of 2^31 nulls it keeps growing.
    LfSmuggle,
    /// `!-1\r\n` then `+OK\r\n` for ever: a null to a lenient reader, a blob error of
    /// `usize::MAX` bytes to the parser, which buffers every byte that follows.
    NegativeBlob,
    /// An array of a million nulls: 3 MB on the wire, ~60 MB once parsed.
    ManyValues,
}

/// The hostile server.
pub struct HostileRedis {
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Script calls answered with the hostile reply so far.
    pub attacks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HostileRedis {
    pub fn start(kind: Hostile) -> HostileRedis {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, attacks, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (n, a, halt) = (
            Arc::clone(&connections),
            Arc::clone(&attacks),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            while !halt.load(Ordering::Acquire) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let (halt, a) = (Arc::clone(&halt), Arc::clone(&a));
                std::thread::spawn(move || serve(conn, kind, &halt, &a));
            }
        });
        HostileRedis {
            port,
            connections,
            attacks,
            stop,
        }
    }
}

impl Drop for HostileRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The next whole command (`*N` of `$len` strings) at the front of `buf`, removed from it.
fn next_command(buf: &mut Vec<u8>) -> Option<Vec<Vec<u8>>> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let arg = buf.get(next..next + len)?.to_vec();
        at = next + len + 2;
        if buf.len() < at {
            return None;
        }
        args.push(arg);
    }
    buf.drain(..at);
    Some(args)
}

/// Answer the commands of `conn`: the login normally, script calls with `kind`'s reply.
/// The endless kinds keep writing until the client goes away (or 16 MiB, or the server
/// stops).
fn serve(mut conn: TcpStream, kind: Hostile, halt: &AtomicBool, attacks: &AtomicUsize) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = conn.read(&mut chunk) {
        if n == 0 || halt.load(Ordering::Acquire) {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(cmd) = next_command(&mut buf) {
            let name = cmd
                .first()
                .map(|c| c.to_ascii_uppercase())
                .unwrap_or_default();
            let ok = match &name[..] {
                b"EVALSHA" | b"EVAL" => {
                    attacks.fetch_add(1, Ordering::SeqCst);
                    attack(&mut conn, kind, halt)
                }
                b"PING" => conn.write_all(b"+PONG\r\n").is_ok(),
                _ => conn.write_all(b"+OK\r\n").is_ok(),
            };
            if !ok {
                return;
            }
        }
    }
}

/// Write `kind`'s reply; false once the client is gone.
fn attack(conn: &mut TcpStream, kind: Hostile, halt: &AtomicBool) -> bool {
    let endless = |conn: &mut TcpStream, head: &[u8], piece: &[u8]| {
        if conn.write_all(head).is_err() {
            return false;
        }
        let chunk = piece.repeat(64 * 1024 / piece.len());
        for _ in 0..(16 << 20) / chunk.len() {
            if halt.load(Ordering::Acquire) || conn.write_all(&chunk).is_err() {
                return false;
            }
        }
        true
    };
    match kind {
        Hostile::HugeBulk => endless(conn, b"$1099511627776\r\n", b"x"),
        Hostile::MaxBulk => endless(conn, b"$9223372036854775807\r\n", b"x"),
        Hostile::LongLine => {
            let mut l = b"+".to_vec();
            l.extend(std::iter::repeat_n(b'a', 1 << 20));
            l.extend(b"\r\n");
            conn.write_all(&l).is_ok()
        }
        Hostile::Garbage => conn
            .write_all(b"\x00\xff\x13garbage\x07 not resp at all\r\n")
            .is_ok(),
        Hostile::LfSmuggle => endless(conn, b"+x\n$4194290\r\n*2147483647\r\n", b"_\r\n"),
        Hostile::NegativeBlob => endless(conn, b"!-1\r\n", b"+OK\r\n"),
        Hostile::ManyValues => {
            let mut r = b"*1000000\r\n".to_vec();
            r.extend("_\r\n".repeat(1_000_000).as_bytes());
            conn.write_all(&r).is_ok()
        }
    }
}
