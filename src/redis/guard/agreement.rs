//! The reply scanner and the `redis` crate's parser agree on where replies end: were they
//! to differ, a server could hide bytes from the scanner inside what it takes for a string
//! (checked with proptest on what servers send and on hostile bytes).

use super::Scanner;
use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Fed one byte at a time: the ends of the replies (in bytes from the start) and the
/// index of the byte refused, if any.
fn scanner_view(bytes: &[u8]) -> (Vec<usize>, Option<usize>) {
    let mut s = Scanner::default();
    let mut ends = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        if s.feed(std::slice::from_ref(b)).is_err() {
            return (ends, Some(i));
        }
        if s.between_replies() {
            ends.push(i + 1);
        }
    }
    (ends, None)
}

/// The same for the crate's parser (`ValueCodec`, as its connections use it).
fn parser_view(bytes: &[u8]) -> (Vec<usize>, Option<usize>) {
    let mut codec = redis::ValueCodec::default();
    let mut buf = BytesMut::new();
    let mut ends = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(std::slice::from_ref(b));
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => ends.push(i + 1 - buf.len()),
                Ok(None) => break,
                Err(_) => return (ends, Some(i)),
            }
        }
    }
    (ends, None)
}

/// Up to the first byte either refuses (the connection dies there), both see the
/// same reply ends.
fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (s_ends, s_err) = scanner_view(bytes);
    let (p_ends, p_err) = parser_view(bytes);
    let limit = s_err
        .unwrap_or(bytes.len())
        .min(p_err.unwrap_or(bytes.len()));
    let upto = |v: &[usize]| {
        v.iter()
            .copied()
            .filter(|&e| e <= limit)
            .collect::<Vec<_>>()
    };
    prop_assert_eq!(
        upto(&s_ends),
        upto(&p_ends),
        "{:?} (scanner refused at {:?}, parser at {:?})",
        String::from_utf8_lossy(bytes),
        s_err,
        p_err
    );
    Ok(())
}

fn framed(head: u8, n: usize, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{}{n}\r\n", head as char).into_bytes();
    v.extend_from_slice(body);
    v
}

/// One RESP2/RESP3 value as a server writes it.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let text = prop::collection::vec(prop::sample::select(b"abcXYZ 019:.-_".to_vec()), 0..12);
    let bytes = prop::collection::vec(any::<u8>(), 0..12);
    let leaf = prop_oneof![
        text.clone().prop_map(|t| [b"+", &t[..], b"\r\n"].concat()),
        text.clone()
            .prop_map(|t| [b"-ERR ", &t[..], b"\r\n"].concat()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        bytes
            .clone()
            .prop_map(|b| framed(b'$', b.len(), &[&b[..], b"\r\n"].concat())),
        bytes.prop_map(|b| framed(b'!', b.len(), &[&b[..], b"\r\n"].concat())),
        text.prop_map(|t| {
            let t = [b"txt:", &t[..]].concat();
            framed(b'=', t.len(), &[&t[..], b"\r\n"].concat())
        }),
        prop::sample::select(vec![
            &b"$-1\r\n"[..],
            b"*-1\r\n",
            b"~-1\r\n",
            b">-1\r\n",
            b"_\r\n",
            b"#t\r\n",
            b"#f\r\n",
            b",1.5\r\n",
            b",-inf\r\n",
            b"(123456789012345678901234567890\r\n",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        let many = prop::collection::vec(inner.clone(), 0..5);
        let pairs = prop::collection::vec((inner.clone(), inner.clone()), 0..3);
        prop_oneof![
            many.clone()
                .prop_map(|v| framed(b'*', v.len(), &v.concat())),
            many.clone()
                .prop_map(|v| framed(b'~', v.len(), &v.concat())),
            many.prop_map(|v| framed(
                b'>',
                v.len() + 1,
                &[&b"$7\r\nmessage\r\n"[..], &v.concat()].concat()
            )),
            pairs.clone().prop_map(|p| {
                let body: Vec<u8> = p
                    .iter()
                    .flat_map(|(k, v)| [&k[..], &v[..]].concat())
                    .collect();
                framed(b'%', p.len(), &body)
            }),
            (pairs, inner).prop_map(|(p, v)| {
                let mut body: Vec<u8> = p
                    .iter()
                    .flat_map(|(k, v)| [&k[..], &v[..]].concat())
                    .collect();
                body.extend(v);
                framed(b'|', p.len(), &body)
            }),
        ]
    })
}

/// Bytes a hostile server could send: pieces of replies, numbers, line ends and
/// whole values, in any order.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => prop::sample::select(vec![
            &b"+"[..], b"-", b":", b"$", b"*", b"%", b"|", b"~", b">", b"!", b"=",
            b"_", b",", b"#", b"(", b"-1", b"-0", b"-2", b"0", b"1", b"2", b"3",
            b"12", b"\r\n", b"\r", b"\n", b"x", b"txt:", b" ", b"+1", b"\x00", b"\xff",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => value(),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn on_what_servers_send(replies in prop::collection::vec(value(), 1..4)) {
        let bytes = replies.concat();
        let (ends, refused) = scanner_view(&bytes);
        prop_assert_eq!(refused, None, "{:?}", String::from_utf8_lossy(&bytes));
        let expected: Vec<usize> = replies
            .iter()
            .scan(0, |at, r| {
                *at += r.len();
                Some(*at)
            })
            .collect();
        prop_assert_eq!(&ends, &expected);
        agree(&bytes)?;
    }

    #[test]
    fn on_anything(bytes in hostile()) {
        agree(&bytes)?;
    }
}

#[test]
fn on_the_known_attacks() {
    for bytes in [
        &b"+x\n$20\r\n*2147483647\r\n_\r\n_\r\n_\r\n+x\n"[..],
        b"!-1\r\n+OK\r\n+OK\r\n",
        b"=-1\r\n:1\r\n",
        b"$-0\r\n\r\n+OK\r\n",
        b"+a\rb\r\n:1\r\n",
    ] {
        agree(bytes).unwrap();
    }
}
