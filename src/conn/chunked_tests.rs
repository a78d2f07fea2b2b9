//! [`Chunked`] against every rule of RFC 9112 §7.1, whole and split at every byte.

use super::*;

/// Feed `body` whole, then split in two at every point, then a byte at a time: the
/// outcomes must agree (long bodies: whole and split near both ends only). `Ok(Some(n))`: the body ended after `n` bytes; `Ok(None)`: more
/// to come.
fn check(body: &[u8]) -> Result<Option<usize>, Malformed> {
    let whole = run(&[body]);
    let cuts: Vec<usize> = if body.len() <= 256 {
        (0..=body.len()).collect()
    } else {
        (0..64).chain(body.len() - 64..=body.len()).collect()
    };
    for cut in cuts {
        let (a, b) = body.split_at(cut);
        assert_eq!(
            run(&[a, b]),
            whole,
            "{:?} cut at {cut}",
            body.escape_ascii()
        );
    }
    if body.len() <= 256 {
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "{:?} byte by byte", body.escape_ascii());
    }
    whole
}

fn run(pieces: &[&[u8]]) -> Result<Option<usize>, Malformed> {
    Chunked::run(pieces)
}

fn ends(body: &str) -> usize {
    match check(body.as_bytes()) {
        Ok(Some(n)) => n,
        other => panic!("{body:?}: {other:?}"),
    }
}

fn refused(body: &str) {
    assert!(
        check(body.as_bytes()).is_err(),
        "{body:?} accepted: {:?}",
        check(body.as_bytes())
    );
}

#[test]
fn well_formed_bodies_end_where_they_end() {
    assert_eq!(ends("0\r\n\r\n"), 5);
    assert_eq!(ends("5\r\nhello\r\n0\r\n\r\n"), 15);
    assert_eq!(
        ends("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1"),
        26
    );
    // Hex digits of both cases, leading zeros, several zeros as the last chunk.
    assert_eq!(ends("A\r\n0123456789\r\n000\r\n\r\n"), 22);
    assert_eq!(ends("00a\r\n0123456789\r\n0\r\n\r\n"), 22);
    // Data containing CR, LF and what looks like chunk framing.
    assert_eq!(ends("7\r\n0\r\n\r\nX\n\r\n0\r\n\r\n"), 17);
}

#[test]
fn incomplete_bodies_want_more() {
    for body in [
        "",
        "5",
        "5\r",
        "5\r\nhel",
        "5\r\nhello",
        "5\r\nhello\r",
        "5\r\nhello\r\n",
        "0\r\n",
        "0\r\n\r",
        "0\r\nX: y\r\n",
    ] {
        assert_eq!(check(body.as_bytes()), Ok(None), "{body:?}");
    }
}

#[test]
fn chunk_size_must_be_hex_digits() {
    refused("\r\nhello\r\n0\r\n\r\n"); // empty size line
    refused("5\r\nhello\r\n\r\n"); // empty size line where the last chunk belongs
    refused("zz\r\nhello\r\n0\r\n\r\n");
    refused("-5\r\nhello\r\n0\r\n\r\n");
    refused("+5\r\nhello\r\n0\r\n\r\n");
    refused("0x5\r\nhello\r\n0\r\n\r\n");
    refused(" 5\r\nhello\r\n0\r\n\r\n");
    refused("5 \r\nhello\r\n0\r\n\r\n"); // whitespace not followed by ';'
}

#[test]
fn huge_chunk_sizes() {
    // 16 digits fit a u64 and are accepted (the data never comes here).
    assert_eq!(check(b"ffffffffffffffff\r\nab"), Ok(None));
    assert_eq!(
        check(b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
        Ok(Some(30))
    );
    // More digits overflow (or exceed what httparse reads), even as leading zeros.
    refused("10000000000000005\r\nhello\r\n0\r\n\r\n");
    refused("00000000000000005\r\nhello\r\n0\r\n\r\n");
}

#[test]
fn data_must_be_followed_by_crlf() {
    refused("5\r\nhelloXX0\r\n\r\n");
    refused("8\r\nhello\r\n0\r\n\r\n"); // short data: the CRLF is data, `0` is not CR
    refused("3\r\nhello\r\n0\r\n\r\n"); // long data
    refused("5\r\nhello\n0\r\n\r\n");
    refused("5\r\nhello\r0\r\n\r\n");
}

#[test]
fn only_crlf_ends_a_line() {
    refused("5\nhello\r\n0\r\n\r\n");
    refused("5\r\nhello\r\n0\n\r\n");
    refused("5\r\nhello\r\n0\r\n\n");
    refused("5\r\nhello\r\n0\r\nX: y\n\r\n");
    refused("5\rhello\r\n0\r\n\r\n");
    refused("0\r\r\n\r\n");
}

#[test]
fn last_chunk_needs_the_final_crlf() {
    refused("5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
    refused("0\r\n GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn chunk_extensions_per_rfc_9112_7_1_1() {
    assert_eq!(ends("5;a\r\nhello\r\n0\r\n\r\n"), 17);
    assert_eq!(ends("5;a=b\r\nhello\r\n0;last\r\n\r\n"), 24);
    assert_eq!(ends("5;a=b;c;d=e\r\nhello\r\n0\r\n\r\n"), 25);
    assert_eq!(ends("5;a=\"q;\\\"x\\\\ y\"\r\nhello\r\n0\r\n\r\n"), 29);
    // BWS before ';', around '=' and after ';'.
    assert_eq!(ends("5 ;a\r\nhello\r\n0\r\n\r\n"), 18);
    assert_eq!(ends("5\t; a = b ;c\r\nhello\r\n0\r\n\r\n"), 26);
    assert_eq!(ends("5;a=\"b\" ;c\r\nhello\r\n0\r\n\r\n"), 24);
    // Not extensions.
    refused("5;\r\nhello\r\n0\r\n\r\n"); // no name
    refused("5;=b\r\nhello\r\n0\r\n\r\n");
    refused("5;a=\r\nhello\r\n0\r\n\r\n"); // no value
    refused("5;a b\r\nhello\r\n0\r\n\r\n");
    refused("5;a=b c\r\nhello\r\n0\r\n\r\n");
    refused("5;a \r\nhello\r\n0\r\n\r\n"); // whitespace before CRLF
    refused("5;a=b \r\nhello\r\n0\r\n\r\n");
    refused("5;a=\"b\r\nhello\r\n0\r\n\r\n"); // unterminated quoted string
    refused("5;a=\"b\"c\r\nhello\r\n0\r\n\r\n");
    refused("5;a\nb\r\nhello\r\n0\r\n\r\n"); // bare LF inside (httparse takes it)
    refused("5;a=b\0\r\nhello\r\n0\r\n\r\n");
    refused("5;a(b)\r\nhello\r\n0\r\n\r\n");
}

#[test]
fn chunk_lines_are_bounded() {
    let long = format!(
        "5;a={}\r\nhello\r\n0\r\n\r\n",
        "b".repeat(MAX_LINE as usize)
    );
    refused(&long);
    let fits = format!(
        "5;a={}\r\nhello\r\n0\r\n\r\n",
        "b".repeat(MAX_LINE as usize - 4)
    );
    assert_eq!(ends(&fits), fits.len());
}

#[test]
fn trailers() {
    assert_eq!(ends("5\r\nhello\r\n0\r\nX-T: v\r\n\r\n"), 23);
    assert_eq!(ends("0\r\nA:\r\nB: x y\t\r\nC:z\r\n\r\nnext"), 23);
    refused("0\r\nX-T : v\r\n\r\n"); // whitespace before ':'
    refused("0\r\nX-T v\r\n\r\n"); // no ':'
    refused("0\r\n: v\r\n\r\n"); // no name
    refused("0\r\nX: a\r\n b\r\n\r\n"); // obs-fold
    refused("0\r\nX: a\rb\r\n\r\n");
    refused("0\r\nX: a\0b\r\n\r\n");
    let big = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_TRAILERS as usize));
    refused(&big);
}

#[test]
fn a_finished_body_ends_at_once() {
    let mut c = Chunked::default();
    assert_eq!(c.feed(b"0\r\n\r\n"), Ok(Fed::End(5)));
    assert_eq!(c.feed(b"GET"), Ok(Fed::End(0)));
}
