//! A minimal HTTP/1.1 client over raw sockets, so tests control every byte.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Send `method path` with extra headers (and a body) on a new connection with
/// `Connection: close` (unless the caller sends its own `Connection`, which must then
/// include `close`); returns the parsed response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        raw.push_str("Connection: close\r\n");
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    let out = send_raw(port, &bytes);
    let parsed = if method == "HEAD" {
        parse_one_head(&out)
            .map(|(r, _)| vec![r])
            .unwrap_or_default()
    } else {
        parse_all(&out)
    };
    parsed.into_iter().next().unwrap_or_else(|| {
        panic!(
            "no response to {method} {path}: {:?}",
            String::from_utf8_lossy(&out)
        )
    })
}

/// Write bytes, then read until the server closes (or 10 s pass).
pub fn send_raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Parse every response in `buf` (pipelined or keep-alive reads).
pub fn parse_all(buf: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some((resp, used)) = parse_one(rest) {
        out.push(resp);
        rest = &rest[used..];
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse the response to a HEAD request (no body whatever the headers say).
pub fn parse_one_head(buf: &[u8]) -> Option<(Response, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let (mut r, _) = parse_one(&[&buf[..end + 4], b"0\r\n\r\n"].concat().replace_cl())?;
    r.body.clear();
    Some((r, end + 4))
}

trait ReplaceCl {
    fn replace_cl(self) -> Vec<u8>;
}
impl ReplaceCl for Vec<u8> {
    /// Turn `Content-Length` into a chunked marker so the empty body parses.
    fn replace_cl(self) -> Vec<u8> {
        let text = String::from_utf8_lossy(&self).into_owned();
        let mut out = String::new();
        for line in text.split_inclusive("\r\n") {
            if line.to_ascii_lowercase().starts_with("content-length:") {
                out.push_str("Transfer-Encoding: chunked\r\n");
            } else {
                out.push_str(line);
            }
        }
        if !out.to_ascii_lowercase().contains("transfer-encoding") {
            out = out.replacen("\r\n", "\r\nTransfer-Encoding: chunked\r\n", 1);
        }
        out.into_bytes()
    }
}

/// Parse one response from the front of `buf`: (response, bytes used).
pub fn parse_one(buf: &[u8]) -> Option<(Response, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut pos = end + 4;
    let body;
    if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().ok()?;
        if buf.len() < pos + n {
            return None;
        }
        body = buf[pos..pos + n].to_vec();
        pos += n;
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut b = Vec::new();
        loop {
            let line_end = pos + find(&buf[pos..], b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[pos..line_end]).ok()?.trim(), 16)
                    .ok()?;
            pos = line_end + 2;
            if size == 0 {
                pos += 2;
                break;
            }
            b.extend_from_slice(buf.get(pos..pos + size)?);
            pos += size + 2;
        }
        body = b;
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        body = Vec::new();
    } else {
        body = buf[pos..].to_vec();
        pos = buf.len();
    }
    Some((
        Response {
            status,
            headers,
            body,
        },
        pos,
    ))
}

/// A keep-alive connection: send requests one after another and read each response.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connect to 127.0.0.1:port.
    pub fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Conn { s, buf: Vec::new() }
    }

    /// Send raw bytes and read one response; `None` if the server closed first.
    pub fn exchange(&mut self, bytes: &[u8]) -> Option<Response> {
        self.s.write_all(bytes).ok()?;
        loop {
            if let Some((r, used)) = parse_one(&self.buf) {
                self.buf.drain(..used);
                return Some(r);
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A GET on this connection.
    pub fn get(&mut self, path: &str) -> Option<Response> {
        self.exchange(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
    }

    /// The socket, to go on with raw bytes (anything read but not returned is dropped).
    pub fn into_stream(self) -> TcpStream {
        self.s
    }
}
