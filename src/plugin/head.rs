//! The response head as response-phase plugins edit it: Pingora's [`ResponseHeader`]
//! moved into plain [`http::response::Parts`] for the length of the phase.
//!
//! Pingora's heads keep a second map for header-name case, and its `insert_header` parses
//! the name (allocating for any non-standard one) and writes both maps; a response map
//! parsed from an upstream is also sized exactly to it, so the first added header grows
//! and rehashes both. Measured: ~1.7k instructions per added header. The phase instead
//! moves the head out once, reserves room, lets every plugin write the header map with
//! names built at config load, and moves it back without the case map: header names go
//! downstream in lower case (a few standard ones title-cased by Pingora), as over HTTP/2.

use pingora_http::ResponseHeader;

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

#[cfg(test)]
mod tests {
    use super::*;

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
