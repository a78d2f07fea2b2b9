//! An HTTP/2 upstream on 127.0.0.1:0 that records every request it receives: h2c with
//! prior knowledge, or TLS offering h2 (and, if asked, only http/1.1) by ALPN. The same
//! port also answers HTTP/1.1 (a WebSocket echo for `/ws`, `200 h1` otherwise), so a
//! test can see which protocol moat chose. Its runtime (and every connection) stops when
//! the handle drops.
//!
//! Paths: `/reset` answers RST_STREAM(INTERNAL_ERROR); `/slow` answers after 300 ms;
//! `/big?bytes=N` streams N bytes in 16 KiB DATA frames without `content-length`;
//! anything else echoes the request body (or `hello from h2` when it is empty) with
//! `content-length`.

use crate::harness::tls::Cert;
use bytes::Bytes;
use openssl::ssl::{AlpnError, Ssl, SslAcceptor, SslMethod};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    /// `:scheme` (HTTP/2 only).
    pub scheme: Option<String>,
    /// `:authority` (HTTP/2), or `Host` (HTTP/1.1).
    pub authority: Option<String>,
    /// Path and query.
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The connection it came on (1, 2, ... in accept order).
    pub conn: usize,
}

impl Seen {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Most streams in flight on one connection at once.
    max_concurrent: AtomicUsize,
}

/// A running HTTP/2 upstream.
pub struct H2Upstream {
    pub port: u16,
    state: Arc<State>,
    rt: Option<tokio::runtime::Runtime>,
}

/// TLS for [`H2Upstream::start_tls`]: the leaf and whether to offer h2 by ALPN.
pub struct UpTls<'a> {
    pub cert: &'a Cert,
    pub offer_h2: bool,
}

impl H2Upstream {
    /// Plaintext: h2c with prior knowledge, HTTP/1.1 otherwise.
    pub fn start() -> H2Upstream {
        Self::start_inner(None)
    }

    /// TLS with `cert`; ALPN picks h2 (when offered) or http/1.1.
    pub fn start_tls(tls: UpTls) -> H2Upstream {
        let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acc.set_private_key(&tls.cert.key).unwrap();
        acc.set_certificate(&tls.cert.cert).unwrap();
        let ours: &'static [u8] = if tls.offer_h2 {
            b"\x02h2\x08http/1.1"
        } else {
            b"\x08http/1.1"
        };
        acc.set_alpn_select_callback(move |_, client| {
            openssl::ssl::select_next_proto(ours, client).ok_or(AlpnError::NOACK)
        });
        Self::start_inner(Some(Arc::new(acc.build())))
    }

    fn start_inner(tls: Option<Arc<SslAcceptor>>) -> H2Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let st = Arc::clone(&state);
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let conn = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let st = Arc::clone(&st);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            let Ok(ssl) = Ssl::new(acc.context()) else {
                                return;
                            };
                            let Ok(mut s) = tokio_openssl::SslStream::new(ssl, tcp) else {
                                return;
                            };
                            if Pin::new(&mut s).accept().await.is_err() {
                                return;
                            }
                            if s.ssl().selected_alpn_protocol() == Some(b"h2") {
                                serve_h2(s, st, conn, "https").await;
                            } else {
                                serve_h1(s, st, conn).await;
                            }
                        }
                        None => {
                            if starts_with_preface(&tcp).await {
                                serve_h2(tcp, st, conn, "http").await;
                            } else {
                                serve_h1(tcp, st, conn).await;
                            }
                        }
                    }
                });
            }
        });
        H2Upstream {
            port,
            state,
            rt: Some(rt),
        }
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests to paths starting with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target.starts_with(prefix))
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Most requests in flight on one connection at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_concurrent.load(Ordering::SeqCst)
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether the client opened with the HTTP/2 preface (peeked, so nothing is consumed).
async fn starts_with_preface(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    for _ in 0..200 {
        let Ok(n) = tcp.peek(&mut buf).await else {
            return false;
        };
        if n == 0 || !PREFACE.starts_with(&buf[..n]) {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

async fn serve_h2<S>(io: S, st: Arc<State>, conn: usize, scheme: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut h2) = h2::server::handshake(io).await else {
        return;
    };
    let inflight = Arc::new(AtomicUsize::new(0));
    while let Some(Ok((req, respond))) = h2.accept().await {
        let st = Arc::clone(&st);
        let inflight = Arc::clone(&inflight);
        let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_concurrent.fetch_max(now, Ordering::SeqCst);
        tokio::spawn(async move {
            let _ = answer_h2(req, respond, &st, conn, scheme).await;
            inflight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn answer_h2(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    st: &State,
    conn: usize,
    scheme: &str,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    st.seen.lock().unwrap().push(Seen {
        version: parts.version,
        method: parts.method.to_string(),
        scheme: parts.uri.scheme_str().map(str::to_string),
        authority: parts.uri.authority().map(|a| a.to_string()),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: data.clone(),
        conn,
    });
    let path = parts.uri.path();
    if path == "/reset" {
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return Ok(());
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut head = http::Response::builder()
        .status(200)
        .header("x-upstream", "h2")
        .header("x-upstream-scheme", scheme);
    if path == "/big" {
        let n: usize = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut send = respond.send_response(head.body(()).unwrap(), false)?;
        let all: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut chunks = all.chunks(16 * 1024).peekable();
        if chunks.peek().is_none() {
            send.send_data(Bytes::new(), true)?;
        }
        while let Some(c) = chunks.next() {
            send.send_data(Bytes::copy_from_slice(c), chunks.peek().is_none())?;
        }
        return Ok(());
    }
    let out = if data.is_empty() {
        b"hello from h2".to_vec()
    } else {
        data
    };
    head = head.header("content-length", out.len());
    let mut send = respond.send_response(head.body(()).unwrap(), false)?;
    send.send_data(Bytes::from(out), true)?;
    Ok(())
}

async fn serve_h1<S>(mut io: S, st: Arc<State>, conn: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let target = first.get(1).copied().unwrap_or("").to_string();
    st.seen.lock().unwrap().push(Seen {
        version: http::Version::HTTP_11,
        method: first.first().copied().unwrap_or("").to_string(),
        scheme: None,
        authority: headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        target,
        headers: headers.clone(),
        body: Vec::new(),
        conn,
    });
    let upgrade = headers
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade {
        let _ = io
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nh1")
            .await;
        let _ = io.shutdown().await;
        return;
    }
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accept =
        openssl::base64::encode_block(&openssl::sha::sha1(format!("{key}{GUID}").as_bytes()));
    let hs = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    if io.write_all(hs.as_bytes()).await.is_err() {
        return;
    }
    // Echo every byte after the handshake as it is (the test compares raw bytes).
    let mut rest = buf[end + 4..].to_vec();
    loop {
        if !rest.is_empty() && io.write_all(&rest).await.is_err() {
            return;
        }
        rest.clear();
        match tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}
