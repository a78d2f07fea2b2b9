//! Property tests of request framing: the chunked validator ([`Chunked`]) and the
//! connection walker ([`Framing`]). No input panics; a valid chunked encoding of a random
//! body (random chunk sizes, extensions, trailers, data holding CRLFs and fake last
//! chunks) ends exactly where it ends, however it is split; a corrupted one is refused or
//! accepted the same way whole, split anywhere, and byte by byte; a pipelined stream of
//! random requests is followed to its end.

use super::*;
use crate::util::proptest::config;
use proptest::prelude::*;

/// `bytes` cut at the (sorted, deduplicated) `cuts`.
fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for a in at {
        out.push(&bytes[from..a]);
        from = a;
    }
    out.push(&bytes[from..]);
    out
}

/// A chunk extension, valid by the grammar: `;name`, `;name=token`, `;name="quoted"`,
/// with optional whitespace where BWS is allowed.
fn extension() -> impl Strategy<Value = String> {
    (
        "[ \t]?",
        "[ \t]?",
        "[a-z0-9!#$%&'*+.^_`|~-]{1,8}",
        prop_oneof![
            Just(String::new()),
            ("[ \t]?", "[ \t]?", "[a-zA-Z0-9-]{1,8}").prop_map(|(a, b, t)| format!("{a}={b}{t}")),
            "[ a-zA-Z0-9;=,]{0,8}".prop_map(|q| format!("=\"{q}\"")),
            "[a-z]{0,4}".prop_map(|q| format!("=\"{q}\\\"\"")),
        ],
    )
        .prop_map(|(ws, ws2, name, val)| format!("{ws};{ws2}{name}{val}"))
}

/// A valid chunked encoding of a random body (holding CRLFs and `0`s) cut into random
/// chunks, with random size spellings, extensions and trailers.
fn encoding() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            prop_oneof![
                any::<u8>(),
                Just(b'\r'),
                Just(b'\n'),
                Just(b'0'),
                Just(b';')
            ],
            0..300,
        ),
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        prop::collection::vec((0usize..3, any::<bool>(), extension()), 7),
        (1usize..4, prop::option::of(extension())),
        prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,12}"), 0..3),
    )
        .prop_map(|(body, cuts, sizes, (zeros, last_ext), trailers)| {
            let mut out = Vec::new();
            let pieces = split(&body, &cuts);
            for (i, piece) in pieces.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                let (pad, upper, ext) = &sizes[i % sizes.len()];
                let hex = format!("{}{:x}", "0".repeat(*pad), piece.len());
                let hex = if *upper { hex.to_uppercase() } else { hex };
                out.extend_from_slice(hex.as_bytes());
                out.extend_from_slice(ext.as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice("0".repeat(zeros).as_bytes());
            out.extend_from_slice(last_ext.unwrap_or_default().as_bytes());
            out.extend_from_slice(b"\r\n");
            for (name, value) in trailers {
                out.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_encodings_end_where_they_end_however_split(
        enc in encoding(),
        next in prop::collection::vec(any::<u8>(), 0..16),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        // The data is skipped by its length: what it holds (CRLFs, `0\r\n\r\n`) is
        // never read as framing, and the bytes after the body are not the body's.
        let mut stream = enc.clone();
        stream.extend_from_slice(&next);
        prop_assert_eq!(Chunked::run(&[&stream]), Ok(Some(enc.len())), "{:?}", enc.escape_ascii().to_string());
        prop_assert_eq!(Chunked::run(&split(&stream, &cuts)), Ok(Some(enc.len())));
    }

    #[test]
    fn a_corrupted_encoding_is_refused_or_accepted_the_same_way_however_split(
        enc in encoding(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
    ) {
        let mut bad = enc.clone();
        let i = at.index(bad.len());
        match how {
            0 => bad[i] = byte,
            1 => bad.insert(i, byte),
            _ => {
                bad.remove(i);
            }
        }
        let whole = Chunked::run(&[&bad]);
        prop_assert_eq!(&Chunked::run(&split(&bad, &cuts)), &whole);
        let bytes: Vec<&[u8]> = bad.chunks(1).collect();
        prop_assert_eq!(&Chunked::run(&bytes), &whole);
        if let Ok(Some(end)) = whole {
            prop_assert!(end <= bad.len());
        }
    }

    #[test]
    fn any_bytes_are_refused_or_accepted_the_same_way_however_split(
        bytes in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b';'), Just(b'=')],
            0..200,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
    ) {
        let whole = Chunked::run(&[&bytes]);
        prop_assert_eq!(Chunked::run(&split(&bytes, &cuts)), whole);
    }
}

/// One request of a pipelined stream: its bytes and the body Pingora would read.
fn request() -> impl Strategy<Value = (Vec<u8>, Body)> {
    prop_oneof![
        Just((b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), Body::Empty)),
        prop::collection::vec(any::<u8>(), 1..100).prop_map(|b| {
            let mut r = format!(
                "POST /l HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )
            .into_bytes();
            r.extend_from_slice(&b);
            (r, Body::Length(b.len() as u64))
        }),
        encoding().prop_map(|enc| {
            let mut r =
                b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            r.extend_from_slice(&enc);
            (r, Body::Chunked)
        }),
    ]
}

/// Feed `pieces`, telling the walker each body as soon as its head has ended.
fn follow(f: &mut Framing, pieces: &[&[u8]], bodies: &[Body]) -> Result<(), Malformed> {
    let mut bodies = bodies.iter();
    for p in pieces {
        f.feed(p)?;
        while f.state == State::Pending {
            let Some(b) = bodies.next() else { break };
            f.head_parsed(*b)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn a_pipelined_stream_of_random_requests_is_followed_to_its_end(
        reqs in prop::collection::vec(request(), 1..5),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let stream: Vec<u8> = reqs.iter().flat_map(|(r, _)| r.clone()).collect();
        let bodies: Vec<Body> = reqs.iter().map(|(_, b)| *b).collect();
        let mut f = Framing::default();
        prop_assert_eq!(follow(&mut f, &split(&stream, &cuts), &bodies), Ok(()));
        prop_assert_eq!(f.state, State::Head(HeadScan::default()));
        prop_assert!(f.pending.is_empty());
    }

    #[test]
    fn any_bytes_and_bodies_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        bodies in prop::collection::vec(
            prop_oneof![
                Just(Body::Empty),
                Just(Body::Chunked),
                Just(Body::Unknown),
                (0u64..50).prop_map(Body::Length),
            ],
            0..6,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        stop in any::<bool>(),
    ) {
        let mut f = Framing::default();
        let _ = follow(&mut f, &split(&bytes, &cuts), &bodies);
        for b in &bodies {
            let _ = f.head_parsed(*b);
        }
        if stop {
            f.stop();
        }
        let _ = f.feed(&bytes);
    }
}
