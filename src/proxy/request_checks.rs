//! Request limits checked before routing and plugins: `CONNECT` (405), a missing `Host` or
//! a header name with an underscore (400), the request target (414), the header count and
//! total size (431), and a declared body over the limit (413). A streamed body is counted
//! chunk by chunk in `request_body_filter` against the same limit.
//!
//! Pingora itself accepts up to 1 MiB of request head, so these limits are what an edge
//! operator actually sets (`server.limits`, defaults in [`crate::runtime::RequestBounds`]).

use crate::reply::{ErrorCode, Reply};
use crate::runtime::{RequestBounds, MAX_URI_BYTES};
use pingora_http::RequestHeader;

/// A reply for a request head over the limits (or malformed, or a `CONNECT`), if it is.
pub fn check_head(req: &RequestHeader, limits: &RequestBounds) -> Option<Reply> {
    // moat tunnels nothing. Pingora would refuse CONNECT itself, with a bare 405 (no JSON
    // body, no request id, no log line): the proxy lets it through to be refused here, and
    // closes the connection (`early_request_filter`). No `Allow`: the target of a CONNECT
    // is a host and port, not one of moat's routes.
    if req.method == http::Method::CONNECT {
        return Some(Reply::error(
            ErrorCode::MethodNotAllowed,
            "CONNECT is not served: moat tunnels nothing",
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host gets 400 (HTTP/2 carries :authority).
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    // One pass over the headers: their size, and whether a name has an underscore.
    let mut bytes: u64 = 0;
    let mut underscore = false;
    for (k, v) in req.headers.iter() {
        let name = k.as_str();
        underscore |= name.as_bytes().contains(&b'_');
        bytes += (name.len() + v.len() + 4) as u64;
    }
    // Underscores let `X_Consumer_ID` slip past checks on `X-Consumer-ID` in upstreams
    // that fold `_` into `-` (CGI-style stacks); refused, as nginx drops them by default.
    if underscore {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            "header names may not contain underscores",
        ));
    }
    if req.raw_path().len() > MAX_URI_BYTES {
        return Some(Reply::error(
            ErrorCode::UriTooLong,
            format!("request target over {MAX_URI_BYTES} bytes"),
        ));
    }
    if req.headers.len() > limits.max_headers {
        return Some(Reply::error(
            ErrorCode::HeadersTooLarge,
            format!("more than {} request headers", limits.max_headers),
        ));
    }
    if bytes > limits.max_header_bytes {
        return Some(Reply::error(
            ErrorCode::HeadersTooLarge,
            format!("request headers over {} bytes", limits.max_header_bytes),
        ));
    }
    None
}

/// A reply for a declared `Content-Length` over `limit`.
pub fn check_length(req: &RequestHeader, limit: u64) -> Option<Reply> {
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    (declared > limit).then(|| {
        Reply::error(
            ErrorCode::PayloadTooLarge,
            format!("request body over {limit} bytes"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: usize, value_len: usize) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        r.insert_header("host", "h").unwrap();
        for i in 0..headers {
            r.append_header(format!("x-h{i}"), "v".repeat(value_len))
                .unwrap();
        }
        r
    }

    #[test]
    fn limits() {
        let l = RequestBounds {
            max_header_bytes: 1000,
            max_headers: 10,
            max_body: 100,
            idle_timeout_secs: 60,
        };
        assert!(check_head(&req("/ok", 5, 10), &l).is_none());
        let long = format!("/{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(
            check_head(&req(&long, 0, 0), &l).map(|r| r.status),
            Some(414)
        );
        assert_eq!(
            check_head(&req("/", 11, 1), &l).map(|r| r.status),
            Some(431)
        );
        assert_eq!(
            check_head(&req("/", 2, 600), &l).map(|r| r.status),
            Some(431)
        );
        let no_host = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(check_head(&no_host, &l).map(|r| r.status), Some(400));
        let mut underscore = req("/", 0, 0);
        underscore.insert_header("x_consumer_id", "admin").unwrap();
        assert_eq!(check_head(&underscore, &l).map(|r| r.status), Some(400));
        let mut r = req("/", 0, 0);
        r.insert_header("content-length", "101").unwrap();
        assert_eq!(check_length(&r, 100).map(|r| r.status), Some(413));
        assert!(check_length(&r, 101).is_none());
    }
}
