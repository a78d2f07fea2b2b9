//! General HTTP helpers shared by the config checks, the plugins and the proxy: token and
//! header-value checks, the request's host, CORS preflights.

use pingora_http::RequestHeader;

/// An HTTP token (header names, methods).
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether bytes may be sent as a header value: no CR, LF, NUL or other control
/// characters except horizontal tab.
pub fn safe_header_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The request's host without port, as sent (`Host`, or the HTTP/2 authority).
pub fn request_host(req: &RequestHeader) -> &str {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw)
}

/// Whether `req` is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(req: &RequestHeader) -> bool {
    use http::header::{ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_safety() {
        assert!(safe_header_value(b"ok value\twith tab"));
        for bad in [&b"a\rb"[..], b"a\nb", b"a\0b", b"\x7f"] {
            assert!(!safe_header_value(bad));
        }
        assert_eq!(strip_port("h:1"), "h");
        assert_eq!(strip_port("[::1]:8"), "[::1]");
        assert_eq!(strip_port("h"), "h");
    }
}
