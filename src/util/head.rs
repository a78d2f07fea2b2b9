//! Heads as plugins edit them: Pingora's [`ResponseHeader`] moved into plain
//! [`http::response::Parts`] ([`ResponseHead`]), and the upstream [`RequestHeader`] into
//! [`UpstreamHead`] (`http::request::Parts` plus the raw request target), for the length of
//! a phase.
//!
//! Pingora's heads keep a second map for header-name case, and its `insert_header` parses
//! the name (allocating for any non-standard one) and writes both maps; a response map
//! parsed from an upstream is also sized exactly to it, so the first added header grows
//! and rehashes both. Measured: ~1.7k instructions per added header (~1k on a head
//! without the case map: the name is still parsed and, unless standard, copied). A phase
//! instead moves the head out once, reserves room, lets every plugin write the header map
//! with names built at config load, and moves it back without the case map: header names
//! go out in lower case (a few standard ones title-cased by Pingora), as over HTTP/2.

use http::request::Parts as RequestParts;
use pingora_http::{RequestHeader, ResponseHeader};
use std::ops::{Deref, DerefMut};

/// A response head being edited by plugins: status, version and header map.
pub type ResponseHead = http::response::Parts;

/// Headers the response phase can add without the map growing again.
const ROOM: usize = 8;

/// Run `edit` on `resp` as a [`ResponseHead`]. The status, headers (in order) and a
/// non-standard reason phrase are kept; the header-name case map is dropped.
pub fn edit_response(resp: &mut ResponseHeader, edit: impl FnOnce(&mut ResponseHead)) {
    let canonical = resp.status.canonical_reason();
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != canonical)
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut head = ResponseHead::from(std::mem::replace(resp, placeholder));
    head.headers.reserve(ROOM);
    edit(&mut head);
    *resp = ResponseHeader::from(head);
    if reason.is_some() {
        // Only fails on an invalid phrase, which Pingora's parser never produced.
        let _ = resp.set_reason_phrase(reason.as_deref());
    }
}

/// The request head going upstream, as plugins edit it: method, URI, version and header
/// map (through `Deref`), and the raw request target.
pub struct UpstreamHead {
    parts: RequestParts,
    /// The request target when it is not the URI's text (not UTF-8, or set by a plugin).
    target: Option<Vec<u8>>,
    end_stream: Option<bool>,
}

impl Deref for UpstreamHead {
    type Target = RequestParts;
    fn deref(&self) -> &RequestParts {
        &self.parts
    }
}

impl DerefMut for UpstreamHead {
    fn deref_mut(&mut self) -> &mut RequestParts {
        &mut self.parts
    }
}

impl From<RequestHeader> for UpstreamHead {
    /// Take `req` apart, keeping its raw target and end-of-stream flag.
    fn from(req: RequestHeader) -> UpstreamHead {
        let from_uri = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().as_bytes())
            .unwrap_or_default();
        let target = (req.raw_path() != from_uri).then(|| req.raw_path().to_vec());
        let end_stream = req.send_end_stream();
        UpstreamHead {
            parts: RequestParts::from(req),
            target,
            end_stream,
        }
    }
}

impl UpstreamHead {
    /// The request target (path and query) as it goes on the wire.
    pub fn target(&self) -> &[u8] {
        match &self.target {
            Some(t) => t,
            None => self
                .parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().as_bytes())
                .unwrap_or(b"/"),
        }
    }

    /// Replace the request target (path and query, raw bytes kept as given).
    pub fn set_target(&mut self, target: Vec<u8>) {
        self.target = Some(target);
    }

    /// Put the head back together; fails only on a target Pingora cannot parse.
    pub fn into_request(self) -> pingora_error::Result<RequestHeader> {
        let mut req = RequestHeader::from(self.parts);
        if let Some(t) = self.target {
            req.set_raw_path(&t)?;
        }
        if let Some(end) = self.end_stream {
            req.set_send_end_stream(end);
        }
        Ok(req)
    }
}

/// Headers the upstream request can gain without the map growing again: the five
/// forwarding headers and what plugins add (request id, traceparent, consumer id, auth
/// method, a few of the `headers` plugin's).
const UPSTREAM_ROOM: usize = 13;

/// Run `edit` on `up` as an [`UpstreamHead`]; the head comes back without a case map.
pub fn edit_request(
    up: &mut RequestHeader,
    edit: impl FnOnce(&mut UpstreamHead),
) -> pingora_error::Result<()> {
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut head = UpstreamHead::from(std::mem::replace(up, placeholder));
    head.headers.reserve(UPSTREAM_ROOM);
    edit(&mut head);
    *up = head.into_request()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keeps_target_and_end_stream() {
        let mut req = RequestHeader::build("POST", &b"/p?n=\xff&a=1"[..], None).unwrap();
        req.append_header("X-Upper", "1").unwrap();
        // Kept for HTTP/2 only (Pingora reports it for no other version).
        req.set_version(http::Version::HTTP_2);
        req.set_send_end_stream(false);
        edit_request(&mut req, |h| {
            assert_eq!(h.target(), b"/p?n=\xff&a=1");
            h.headers
                .insert("x-added", http::HeaderValue::from_static("a"));
        })
        .unwrap();
        assert_eq!(req.raw_path(), b"/p?n=\xff&a=1");
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.send_end_stream(), Some(false));
        assert_eq!(req.headers["x-upper"], "1");
        assert_eq!(req.headers["x-added"], "a");
        edit_request(&mut req, |h| h.set_target(b"/q".to_vec())).unwrap();
        assert_eq!(req.raw_path(), b"/q");
        assert_eq!(req.uri.path(), "/q");
        let mut plain = RequestHeader::build("GET", b"/x?y=1", None).unwrap();
        edit_request(&mut plain, |h| assert_eq!(h.target(), b"/x?y=1")).unwrap();
        assert_eq!(plain.raw_path(), b"/x?y=1");
    }

    #[test]
    fn keeps_status_headers_and_reason_drops_case() {
        let mut resp = ResponseHeader::build(299, None).unwrap();
        resp.append_header("X-Upper", "1").unwrap();
        resp.append_header("x-upper", "2").unwrap();
        resp.insert_header("Server", "up").unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        assert!(resp.has_case());
        edit_response(&mut resp, |h| {
            h.headers.remove(http::header::SERVER);
            h.headers
                .insert("x-added", http::HeaderValue::from_static("a"));
        });
        assert!(!resp.has_case());
        assert_eq!(resp.status.as_u16(), 299);
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        let all: Vec<_> = resp.headers.get_all("x-upper").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers["x-added"], "a");
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"x-upper: 1\r\nx-upper: 2\r\nx-added: a\r\n");

        let mut ok = ResponseHeader::build(200, None).unwrap();
        edit_response(&mut ok, |_| {});
        assert_eq!(ok.get_reason_phrase(), Some("OK"));
    }
}
