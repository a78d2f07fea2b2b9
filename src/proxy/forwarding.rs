//! Forwarding hygiene: who the client is, and the identity headers upstreams receive.
//!
//! - The client IP is the direct peer, unless the peer is in `trusted_proxies`: then
//!   `X-Forwarded-For` is walked from the right, skipping trusted hops, and the first
//!   untrusted address is the client (an unparsable entry stops the walk at the last good
//!   hop; all-trusted chains yield the leftmost address).
//! - Upstream always gets `X-Forwarded-For` (the trusted incoming chain plus the peer, or
//!   just the peer), `X-Real-IP` (the client), `X-Forwarded-Proto`, `X-Forwarded-Host` and
//!   `X-Forwarded-Port` (kept from a trusted peer, else set by moat: the port the client
//!   connected to). From an untrusted peer, `Forwarded` and the headers frameworks read to
//!   rebuild the request's URL, scheme, prefix or client (`TRUSTED_ONLY`,
//!   `Front-End-Https`, `True-Client-IP`) are dropped. Client-sent `X-Consumer-*` and
//!   `X-Auth-*` headers are always removed: only moat's authentication sets them. (Names
//!   with `_`, which some servers read as `-`, never get this far: `proxy::request_checks`
//!   refuses them with 400.)
//! - Hop-by-hop headers and those named in `Connection` are stripped by Pingora's
//!   standard upstream request policy, which every peer uses; towards an HTTP/2 upstream
//!   Pingora also drops every connection-specific header (`TE` included) and turns `Host`
//!   into `:authority`. Plugins cannot add them back (`plugin::headers::FORBIDDEN`).

use crate::net::{canonical, CidrSet};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::net::IpAddr;

// Names built once (inserting by `&str` would parse and validate the name every time).
static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static XFPORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers only a trusted proxy may send (besides `Forwarded` and the five moat sets):
/// frameworks rebuild the request's URL, scheme, path prefix or client from them (Spring,
/// Symfony and IIS the URL and prefix; Rack, Rails and Django the scheme; client-IP
/// libraries the client), so an untrusted client could reach `/admin` through a route for
/// `/public`, pass for HTTPS, or pose as another address.
const TRUSTED_ONLY: [&str; 13] = [
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-original-url",
    "x-rewrite-url",
    "x-original-forwarded-for",
    "x-url-scheme",
    "x-host",
    "x-client-ip",
    "x-cluster-client-ip",
];

/// Whether a client-sent request header must not reach the upstream: identity headers
/// (only moat's authentication sets them) from anyone; `Forwarded`, `Front-End-Https`,
/// `True-Client-IP` and [`TRUSTED_ONLY`] from an untrusted peer. Names are lower case;
/// most are decided on their first byte.
fn forged(name: &HeaderName, peer_trusted: bool) -> bool {
    let n = name.as_str();
    match n.as_bytes().first() {
        Some(b'x') => {
            n.starts_with("x-consumer-")
                || n.starts_with("x-auth-")
                || (!peer_trusted && TRUSTED_ONLY.contains(&n))
        }
        Some(b'f') => !peer_trusted && (n == "forwarded" || n == "front-end-https"),
        Some(b't') => !peer_trusted && n == "true-client-ip",
        _ => false,
    }
}

/// Resolve the client IP from the peer and, when the peer is trusted, `X-Forwarded-For`.
/// Returns the client IP and whether the peer is trusted.
pub fn client_ip(
    peer: Option<IpAddr>,
    req: &RequestHeader,
    trusted: &CidrSet,
) -> (Option<IpAddr>, bool) {
    let Some(peer) = peer.map(canonical) else {
        return (None, false);
    };
    if trusted.is_empty() || !trusted.contains(peer) {
        return (Some(peer), false);
    }
    let mut client = peer;
    // Headers in order; within each, entries right to left: walk everything from the right.
    let values: Vec<&[u8]> = req
        .headers
        .get_all(&XFF)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    'walk: for v in values.iter().rev() {
        let Ok(s) = std::str::from_utf8(v) else { break };
        for entry in s.rsplit(',') {
            match parse_hop(entry.trim()) {
                Some(ip) => {
                    client = ip;
                    if !trusted.contains(ip) {
                        break 'walk;
                    }
                }
                None => break 'walk,
            }
        }
    }
    (Some(client), true)
}

/// An IP address as text (see [`crate::net::push_ip`]).
pub fn ip_text(ip: IpAddr) -> String {
    let mut s = String::with_capacity(15);
    crate::net::push_ip(&mut s, ip);
    s
}

/// An IP address as a header value; IPv4 is written on the stack (one allocation, the
/// value's own, instead of two).
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip_text(ip)).ok();
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// One `X-Forwarded-For` entry: an IP, `ip:port`, or `[v6]:port`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

/// Set the forwarding headers on the headers of the upstream request. `authority` is the
/// request URI's authority (HTTP/2), used when there is no `Host` header; `port` is the
/// `X-Forwarded-Port` value (see [`crate::runtime::ListenerPorts`]).
///
/// On the hot path: one scan of the names finds every header to drop, each header moat
/// sets is written with one `insert` (which replaces any client copy), and removals happen
/// only for headers actually present.
pub fn apply(
    headers: &mut HeaderMap,
    authority: Option<&str>,
    peer: Option<IpAddr>,
    client: Option<IpAddr>,
    peer_trusted: bool,
    tls: bool,
    port: Option<HeaderValue>,
) {
    // Headers the client must not send, first (fewer names to look at before the five
    // below are added).
    drop_forged(headers, peer_trusted);
    let host = headers
        .get(http::header::HOST)
        .cloned()
        .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
    let peer = peer.map(canonical);
    let peer_v = peer.and_then(ip_value);
    let chain = forwarded_for(headers, peer_trusted, &peer_v);
    set_or_remove(headers, &XFF, chain);
    // X-Real-IP: the resolved client (usually the peer: its text is reused).
    let client_v = client.and_then(|c| {
        if Some(c) == peer {
            peer_v.clone()
        } else {
            ip_value(c)
        }
    });
    set_or_remove(headers, &X_REAL_IP, client_v);
    // X-Forwarded-Proto, -Host and -Port: kept from a trusted peer, else ours.
    if !(peer_trusted && headers.contains_key(&XFP)) {
        headers.insert(
            XFP.clone(),
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
    if !(peer_trusted && headers.contains_key(&XFH)) {
        set_or_remove(headers, &XFH, host);
    }
    if !(peer_trusted && headers.contains_key(&XFPORT)) {
        set_or_remove(headers, &XFPORT, port);
    }
}

/// Remove the headers a client must not send (see `forged`); no allocation unless a
/// client sent some.
fn drop_forged(headers: &mut HeaderMap, peer_trusted: bool) {
    if headers.keys().any(|k| forged(k, peer_trusted)) {
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|k| forged(k, peer_trusted))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(&name);
        }
    }
}

/// The `X-Forwarded-For` to send: the trusted incoming chain plus the peer (`peer_v`), or
/// just the peer.
fn forwarded_for(
    headers: &HeaderMap,
    peer_trusted: bool,
    peer_v: &Option<HeaderValue>,
) -> Option<HeaderValue> {
    let mut incoming = headers.get_all(&XFF).iter().filter_map(|v| v.to_str().ok());
    match (peer_trusted, incoming.next(), peer_v) {
        (true, Some(first), Some(p)) => {
            let mut c = first.to_string();
            for more in incoming {
                c.push_str(", ");
                c.push_str(more);
            }
            c.push_str(", ");
            c.push_str(p.to_str().unwrap_or(""));
            HeaderValue::from_str(&c).ok()
        }
        _ => peer_v.clone(),
    }
}

/// Set `name` to `value`, replacing any copy, or remove it when there is no value.
fn set_or_remove(headers: &mut HeaderMap, name: &HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name.clone(), v);
        }
        None => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
#[path = "forwarding_prop.rs"]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(xff: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("host", "api.example.com").unwrap();
        for v in xff {
            r.append_header(XFF.clone(), *v).unwrap();
        }
        r
    }
    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let t = CidrSet::parse(&["10.0.0.0/8".into()]).unwrap();
        let r = req(&["1.2.3.4"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &r, &t),
            (ip("203.0.113.9"), false)
        );
    }

    #[test]
    fn trusted_chain_walks_from_the_right() {
        let t = CidrSet::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let r = req(&["6.6.6.6, 5.5.5.5", "10.0.0.2"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &r, &t), (ip("5.5.5.5"), true));
        let all_trusted = req(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &all_trusted, &t).0,
            ip("10.0.0.3")
        );
        let garbage = req(&["5.5.5.5, garbage, 10.0.0.2"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &garbage, &t).0, ip("10.0.0.2"));
        let ported = req(&["[2001:db8::1]:443, 1.2.3.4:80"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &ported, &t).0, ip("1.2.3.4"));
        assert_eq!(client_ip(ip("127.0.0.1"), &req(&[]), &t).0, ip("127.0.0.1"));
    }

    #[test]
    fn ip_text_matches_display() {
        for s in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "192.168.1.10",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
            assert_eq!(
                ip_value(ip).map(|v| v.to_str().map(str::to_string).ok()),
                Some(Some(ip.to_string()))
            );
        }
    }

    #[test]
    fn headers_set_upstream() {
        let mut h = req(&["6.6.6.6"]).headers.clone();
        for (k, v) in [
            ("x-real-ip", "9.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-consumer-id", "admin"),
            ("x-auth-method", "jwt"),
            ("forwarded", "for=9.9.9.9"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        apply(
            &mut h,
            None,
            ip("203.0.113.9"),
            ip("203.0.113.9"),
            false,
            false,
            Some(HeaderValue::from_static("8080")),
        );
        assert_eq!(h[&XFF], "203.0.113.9");
        assert_eq!(h[&X_REAL_IP], "203.0.113.9");
        assert_eq!(h[&XFP], "http");
        assert_eq!(h[&XFH], "api.example.com");
        for gone in ["x-consumer-id", "x-auth-method", "forwarded"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        let mut h = req(&["6.6.6.6"]).headers.clone();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        apply(
            &mut h,
            None,
            ip("127.0.0.1"),
            ip("6.6.6.6"),
            true,
            false,
            None,
        );
        assert_eq!(h[&XFF], "6.6.6.6, 127.0.0.1");
        assert_eq!(h[&X_REAL_IP], "6.6.6.6");
        assert_eq!(h[&XFP], "https");
        let mut h2 = HeaderMap::new();
        apply(
            &mut h2,
            Some("h2.example.com"),
            ip("10.0.0.1"),
            ip("10.0.0.1"),
            false,
            true,
            Some(HeaderValue::from_static("443")),
        );
        assert_eq!(h2[&XFH], "h2.example.com");
        assert_eq!(h2[&XFP], "https");
        assert_eq!(h2[&XFPORT], "443");
    }

    #[test]
    fn framework_headers_only_from_trusted_peers() {
        let sent = [
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-server", "evil"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-original-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("x-url-scheme", "https"),
            ("front-end-https", "on"),
            ("x-client-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("x-forwarded-uri", "/admin"),
            ("x-forwarded-path", "/admin"),
            ("x-host", "evil.example"),
            ("x-forwarded-prefixes", "kept"),
            ("x-consumer-id", "forged"),
        ];
        // The client's headers after `apply` from `peer` (trusted or not), with `port`.
        let run = |peer: &str, trusted: bool, port: Option<&'static str>| {
            let mut h = HeaderMap::new();
            for (k, v) in sent {
                h.append(k, HeaderValue::from_static(v));
            }
            h.append("x-original-url", HeaderValue::from_static("/second"));
            let port = port.map(HeaderValue::from_static);
            apply(&mut h, None, ip(peer), ip("1.2.3.4"), trusted, true, port);
            h
        };
        let h = run("1.2.3.4", false, Some("8443"));
        assert_eq!(h.get_all(&XFPORT).iter().collect::<Vec<_>>(), ["8443"]);
        for (gone, _) in &sent[1..17] {
            assert!(h.get(*gone).is_none(), "{gone}");
        }
        assert!(h.get("x-consumer-id").is_none());
        assert_eq!(h["x-forwarded-prefixes"], "kept");

        let h = run("10.0.0.1", true, Some("8443"));
        assert_eq!(h[&XFPORT], "1");
        for (kept, v) in &sent[1..17] {
            assert_eq!(h[*kept], *v, "{kept}");
        }
        assert_eq!(h.get_all("x-original-url").iter().count(), 2);
        assert!(h.get("x-consumer-id").is_none());
        // No port known: an untrusted client's copy still goes.
        assert!(run("1.2.3.4", false, None).get(&XFPORT).is_none());
    }
}
