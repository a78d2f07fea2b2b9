//! Load-test origin when nginx is absent: answers every HTTP/1.1 request with `200 ok` (tokio only).
//!
//! `upstream --listen 127.0.0.1:PORT [--threads N]`
//!
//! Keep-alive and pipelining: request heads are read up to the blank line, a
//! `Content-Length` body is skipped, and one canned response is queued per request.
//! Chunked request bodies are not supported (the connection is closed). Not a real
//! HTTP server: it exists to cost as little CPU as possible in `loadtest/`.

use std::net::SocketAddr;
use std::process::exit;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: upstream --listen 127.0.0.1:PORT [--threads N]";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
const MAX_HEAD: usize = 64 * 1024;

fn parse_args() -> Result<(SocketAddr, usize), String> {
    let (mut listen, mut threads) = (None, 1usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--threads" => {
                threads = value.parse().map_err(|e| format!("--threads: {e}"))?;
                if threads == 0 {
                    return Err("--threads must be at least 1".into());
                }
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok((listen.ok_or("--listen is required")?, threads))
}

/// What parsing the front of the buffer found.
enum Head {
    /// A complete head of `len` bytes followed by a body of `body` bytes.
    Complete {
        len: usize,
        body: usize,
    },
    Incomplete,
    Invalid,
}

fn parse_head(buf: &[u8]) -> Head {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Head::Invalid
        } else {
            Head::Incomplete
        };
    };
    let mut body = 0usize;
    for line in buf[..end].split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => body = n,
                None => return Head::Invalid,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Head::Invalid;
        }
    }
    Head::Complete { len: end + 4, body }
}

async fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(RESPONSE.len() * 16);
    let mut skip = 0usize; // body bytes still to discard
    loop {
        let mut start = 0usize;
        loop {
            if skip > 0 {
                let n = skip.min(buf.len() - start);
                skip -= n;
                start += n;
                if skip > 0 {
                    break;
                }
            }
            match parse_head(&buf[start..]) {
                Head::Complete { len, body } => {
                    out.extend_from_slice(RESPONSE);
                    start += len;
                    skip = body;
                }
                Head::Incomplete => break,
                Head::Invalid => {
                    sock.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
        buf.reserve(8192);
        if sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn main() {
    let (listen, threads) = parse_args().unwrap_or_else(|e| {
        eprintln!("upstream: {e}\n{USAGE}");
        exit(2)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("upstream: runtime: {e}");
            exit(1)
        });
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap_or_else(|e| {
            eprintln!("upstream: bind {listen}: {e}");
            exit(1)
        });
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(async move {
                        let _ = serve(sock).await;
                    });
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    eprintln!("upstream: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}
