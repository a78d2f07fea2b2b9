//! Property tests of `X-Forwarded-For` handling: any header bytes from a trusted peer never
//! panic and name either the peer or an address the header holds; a chain of random
//! addresses (v4 and v6, with ports, over several header lines) resolves to its rightmost
//! untrusted hop and is forwarded as written plus the peer, which parses back to the same
//! list; IP texts moat writes parse back to the same address.

use super::*;
use crate::util::proptest::config;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

fn trusted() -> CidrSet {
    CidrSet::parse(&["10.0.0.0/8".into(), "fd00::/8".into()]).expect("cidrs")
}

/// An address, trusted (in 10/8 or fd00::/8) or not.
fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<Ipv6Addr>().prop_map(IpAddr::V6),
        any::<[u8; 3]>().prop_map(|b| IpAddr::V4(Ipv4Addr::new(10, b[0], b[1], b[2]))),
        any::<u128>().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x >> 8 | 0xfd << 120))),
    ]
}

/// How a hop is written: `ip`, `ip:port` / `[v6]:port`, with spaces around.
fn hop_text(ip: IpAddr, port: Option<u16>, pad: usize) -> String {
    let spaces = " ".repeat(pad);
    let text = match port {
        Some(p) => SocketAddr::new(ip, p).to_string(),
        None => ip.to_string(),
    };
    format!("{spaces}{text}{spaces}")
}

fn with_xff(lines: &[String]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).expect("request");
    r.insert_header("host", "h").expect("host");
    for l in lines {
        r.append_header(XFF.clone(), l.as_str()).expect("xff");
    }
    r
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_header_bytes_resolve_to_the_peer_or_an_address_they_hold(
        lines in prop::collection::vec(
            prop::collection::vec(
                prop_oneof![0x20u8..0x7f, Just(b','), Just(b':'), Just(b'.'), 0x80u8..=0xff],
                0..60,
            ),
            0..3,
        ),
    ) {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        for l in &lines {
            let _ = r.append_header(XFF.clone(), l.as_slice());
        }
        let peer: IpAddr = "10.0.0.1".parse().expect("peer");
        let (client, is_trusted) = client_ip(Some(peer), &r, &trusted());
        prop_assert!(is_trusted);
        let client = client.expect("a client");
        let held = lines.iter().any(|l| {
            String::from_utf8_lossy(l)
                .split(',')
                .any(|e| parse_hop(e.trim()) == Some(client))
        });
        prop_assert!(client == peer || held, "{client} from {:?}", lines);
        let mut h = r.headers.clone();
        apply(&mut h, None, Some(peer), Some(client), true, false, None);
    }

    #[test]
    fn a_chain_resolves_to_its_rightmost_untrusted_hop_and_is_forwarded_whole(
        hops in prop::collection::vec((address(), prop::option::of(any::<u16>()), 0usize..2), 1..8),
        lines in 1usize..4,
        peer_trusted in any::<bool>(),
    ) {
        let t = trusted();
        let texts: Vec<String> = hops.iter().map(|(ip, port, pad)| hop_text(*ip, *port, *pad)).collect();
        // Spread over `lines` header lines, in order.
        let per = texts.len().div_ceil(lines);
        let header_lines: Vec<String> = texts.chunks(per).map(|c| c.join(",")).collect();
        let r = with_xff(&header_lines);
        let ips: Vec<IpAddr> = hops.iter().map(|(ip, _, _)| canonical(*ip)).collect();
        let peer: IpAddr = if peer_trusted { "10.9.9.9" } else { "192.0.2.7" }.parse().expect("peer");
        let (client, is_trusted) = client_ip(Some(peer), &r, &t);
        prop_assert_eq!(is_trusted, peer_trusted);
        let want = if !peer_trusted {
            peer
        } else {
            ips.iter().rev().find(|ip| !t.contains(**ip)).copied().unwrap_or(ips[0])
        };
        prop_assert_eq!(client, Some(want));
        // Upstream: the chain as received plus the peer (from a trusted peer), else the
        // peer alone; X-Real-IP is the client.
        let mut h = r.headers.clone();
        apply(&mut h, None, Some(peer), client, peer_trusted, false, None);
        let out = h.get(&XFF).expect("x-forwarded-for").to_str().expect("ascii");
        let back: Vec<IpAddr> = out.split(',').map(|e| parse_hop(e.trim()).expect("a hop")).collect();
        let mut expected = if peer_trusted { ips.clone() } else { Vec::new() };
        expected.push(peer);
        prop_assert_eq!(back, expected);
        let real = h.get(&X_REAL_IP).expect("x-real-ip").to_str().expect("ascii");
        prop_assert_eq!(real.parse::<IpAddr>().ok(), Some(want));
    }

    #[test]
    fn ip_texts_parse_back(ip in address()) {
        let ip = canonical(ip);
        prop_assert_eq!(ip_text(ip).parse::<IpAddr>().ok(), Some(ip));
        let v = ip_value(ip).expect("a header value");
        prop_assert_eq!(v.to_str().ok().and_then(|s| s.parse::<IpAddr>().ok()), Some(ip));
    }
}
