//! The heads of an upgrade moat relays itself: which requests qualify, the request head's
//! hop-by-hop headers (as Pingora's standard upstream request policy treats a WebSocket
//! upgrade), and the upstream's response head (read, parsed, written back out).

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName};
use http::Version;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most headers in an upstream response head.
const MAX_HEADERS: usize = 128;
/// Most `Connection` tokens a request may carry (as Pingora: a bound on the work).
const MAX_CONNECTION_TOKENS: usize = 10;

/// Whether `req` asks for a WebSocket over HTTP/1.1 (`Upgrade: websocket`): the upgrades
/// Pingora's standard policy forwards, and the ones moat relays itself.
pub fn is_websocket(req: &RequestHeader) -> bool {
    req.version == Version::HTTP_11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Headers that never cross a hop (RFC 9110 §7.6.1), besides those `Connection` names.
const HOP_BY_HOP: [&str; 10] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "connection",
    "upgrade",
    "http2-settings",
];

/// Headers a `Connection` token may not remove (the request would lose its identity).
const PROTECTED: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Strip the hop-by-hop headers of a WebSocket upgrade request and set the two it needs
/// (`Connection: Upgrade`, `Upgrade: websocket`). `Err` with the reason for a request to
/// refuse: a `Connection` header naming too many tokens, a malformed one, or a protected
/// header.
pub fn sanitize(req: &mut RequestHeader) -> std::result::Result<(), &'static str> {
    let mut named: Vec<HeaderName> = Vec::new();
    for token in req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
    {
        if named.len() + 1 >= MAX_CONNECTION_TOKENS {
            return Err("too many Connection header tokens");
        }
        if !token.iter().all(|b| is_tchar(*b)) {
            return Err("invalid token in the Connection header");
        }
        let Ok(name) = HeaderName::from_bytes(token) else {
            return Err("invalid token in the Connection header");
        };
        if PROTECTED.contains(&name.as_str()) {
            return Err("the Connection header names a protected header");
        }
        named.push(name);
    }
    for name in &named {
        req.remove_header(name);
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
    req.set_version(Version::HTTP_11);
    req.insert_header(header::CONNECTION, "Upgrade")
        .map_err(|_| "cannot set Connection")?;
    req.insert_header(header::UPGRADE, "websocket")
        .map_err(|_| "cannot set Upgrade")?;
    Ok(())
}

/// An HTTP `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Read the upstream's final response head from `s` into `buf` (which may hold bytes
/// read before). Interim 1xx answers other than 101 are skipped. On success `buf` holds
/// the bytes that followed the head (the start of the body or of the upgraded stream).
pub async fn read_response<S>(s: &mut S, buf: &mut BytesMut) -> Result<ResponseHeader>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((resp, len)) = parse_response(buf)? {
            let _ = buf.split_to(len);
            if resp.status.is_informational()
                && resp.status != http::StatusCode::SWITCHING_PROTOCOLS
            {
                continue;
            }
            return Ok(resp);
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "upstream response head too large",
            );
        }
        buf.reserve(4096);
        let n = s
            .read_buf(buf)
            .await
            .or_err(ErrorType::ReadError, "reading the upstream response head")?;
        if n == 0 {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "upstream closed before its response head",
            );
        }
    }
}

/// Parse one response head at the start of `buf`: the head and its length, or `None`
/// while incomplete.
fn parse_response(buf: &[u8]) -> Result<Option<(ResponseHeader, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                format!("invalid upstream response head: {e}"),
            )
        }
    };
    let code = parsed.code.unwrap_or(0);
    let mut resp = ResponseHeader::build(code, Some(parsed.headers.len()))?;
    resp.set_version(match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    });
    if let Some(reason) = parsed.reason {
        resp.set_reason_phrase(Some(reason))?;
    }
    for h in parsed.headers.iter() {
        resp.append_header(h.name.to_string(), h.value)?;
    }
    Ok(Some((resp, len)))
}

/// `resp` as an HTTP/1.1 head on the wire.
pub fn response_to_wire(resp: &ResponseHeader) -> BytesMut {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_slice(b"HTTP/1.1 ");
    buf.put_slice(resp.status.as_str().as_bytes());
    buf.put_u8(b' ');
    if let Some(reason) = resp.get_reason_phrase() {
        buf.put_slice(reason.as_bytes());
    }
    buf.put_slice(b"\r\n");
    resp.header_to_h1_wire(&mut buf);
    buf.put_slice(b"\r\n");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn websocket_only() {
        assert!(is_websocket(&req(&[("Upgrade", "WebSocket")])));
        assert!(!is_websocket(&req(&[("Upgrade", "h2c")])));
        assert!(!is_websocket(&req(&[])));
        let mut old = req(&[("Upgrade", "websocket")]);
        old.set_version(Version::HTTP_10);
        assert!(!is_websocket(&old));
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_upgrade_stays() {
        let mut r = req(&[
            ("Connection", "Upgrade, X-Private"),
            ("Upgrade", "websocket"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Sec-WebSocket-Key", "k"),
        ]);
        sanitize(&mut r).unwrap();
        assert!(r.headers.get("x-private").is_none());
        assert!(r.headers.get("keep-alive").is_none());
        assert!(r.headers.get("te").is_none());
        assert_eq!(r.headers["connection"], "Upgrade");
        assert_eq!(r.headers["upgrade"], "websocket");
        assert_eq!(r.headers["sec-websocket-key"], "k");
    }

    #[test]
    fn connection_cannot_remove_protected_headers() {
        for bad in [
            "Upgrade, Host",
            "x-forwarded-for",
            "\"x-forwarded-for\"",
            "a,b,c,d,e,f,g,h,i,j",
        ] {
            let mut r = req(&[("Connection", bad), ("Upgrade", "websocket")]);
            assert!(sanitize(&mut r).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn response_heads_parse_and_interim_ones_are_skipped() {
        let wire: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
        let mut src = wire;
        let mut buf = BytesMut::new();
        let resp = read_response(&mut src, &mut buf).await.unwrap();
        assert_eq!(resp.status, 101);
        assert_eq!(resp.headers["upgrade"], "websocket");
        assert_eq!(&buf[..], b"\x81\x02hi");
        let out = response_to_wire(&resp);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn truncated_or_invalid_heads_fail() {
        let mut src: &[u8] = b"HTTP/1.1 101 Switching";
        let e = read_response(&mut src, &mut BytesMut::new())
            .await
            .unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed);
        let mut src: &[u8] = b"HTTP/1.1 abc\r\n\r\n";
        let e = read_response(&mut src, &mut BytesMut::new())
            .await
            .unwrap_err();
        assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader);
    }
}
