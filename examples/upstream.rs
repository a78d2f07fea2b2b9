//! A tiny HTTP/1.1 origin (tokio only), two ways:
//!
//! - `upstream --listen 127.0.0.1:PORT [--threads N]`: answers every request with `200 ok`,
//!   the load-test origin when nginx is absent (`loadtest/`), costing as little CPU as it can;
//! - `upstream --listen 127.0.0.1:PORT --name NAME`: a demo target (the quick start,
//!   `deploy/compose.yaml`) answering every request with `200`, an `X-Upstream-Target: NAME`
//!   header and a plain-text body naming itself and echoing the request head it received,
//!   so a client sees what moat sent upstream (forwarding headers, request id, identity).
//!
//! Keep-alive and pipelining: request heads are read up to the blank line, a
//! `Content-Length` body is skipped, and one response is queued per request. Chunked
//! request bodies are not supported (the connection is closed). Not a real HTTP server.

use std::net::SocketAddr;
use std::process::exit;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: upstream --listen 127.0.0.1:PORT [--threads N] [--name NAME]";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
const MAX_HEAD: usize = 64 * 1024;

/// What the origin answers.
#[derive(Clone)]
pub enum Answer {
    /// `200 ok`, the same bytes every time.
    Canned,
    /// `200` naming this target (`--name`, and the address it listens on) and echoing the
    /// request head.
    Echo {
        /// The target's name.
        name: Arc<str>,
        /// The address it listens on.
        at: SocketAddr,
    },
}

impl Answer {
    /// Queue the answer to the request whose head is `head` (blank line included).
    fn write(&self, head: &[u8], out: &mut Vec<u8>) {
        let Answer::Echo { name, at } = self else {
            out.extend_from_slice(RESPONSE);
            return;
        };
        let text = String::from_utf8_lossy(head);
        let body = format!(
            "target {name} ({at}) received:\n{}\n",
            text.trim_end().replace("\r\n", "\n")
        );
        let no_body = head.starts_with(b"HEAD ");
        out.extend_from_slice(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Upstream-Target: {name}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        if !no_body {
            out.extend_from_slice(body.as_bytes());
        }
    }
}

fn parse_args() -> Result<(SocketAddr, usize, Option<String>), String> {
    let (mut listen, mut threads, mut name) = (None, 1usize, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--name" => name = Some(value),
            "--threads" => {
                threads = value.parse().map_err(|e| format!("--threads: {e}"))?;
                if threads == 0 {
                    return Err("--threads must be at least 1".into());
                }
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok((listen.ok_or("--listen is required")?, threads, name))
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

async fn serve(mut sock: TcpStream, answer: Answer) -> std::io::Result<()> {
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
                    answer.write(&buf[start..start + len], &mut out);
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

/// Serve every connection `listener` accepts with `answer`, until the task is dropped.
pub async fn accept_loop(listener: TcpListener, answer: Answer) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, answer).await;
                });
            }
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                eprintln!("upstream: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn main() {
    let (listen, threads, name) = parse_args().unwrap_or_else(|e| {
        eprintln!("upstream: {e}\n{USAGE}");
        exit(2)
    });
    let answer = match name {
        Some(n) => Answer::Echo {
            name: n.into(),
            at: listen,
        },
        None => Answer::Canned,
    };
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
        if let Answer::Echo { name, at } = &answer {
            eprintln!("upstream: target {name} listening on {at}");
        }
        accept_loop(listener, answer).await
    });
}
