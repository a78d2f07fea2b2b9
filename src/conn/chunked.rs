//! A strict validator of the chunked transfer coding of a request body (RFC 9112 §7.1),
//! fed the raw bytes as they arrive, in pieces of any size.
//!
//! Pingora 0.9 parses chunked bodies leniently (through `httparse::parse_chunk_size`): an
//! empty size line is read as the last chunk, any bytes are taken as a chunk extension
//! (bare LF included), and a line that is not a trailer field is accepted where the final
//! CRLF belongs. A front end that accepts what its upstream (or the next hop) reads
//! differently is a request-smuggling vector, so moat checks the framing of every
//! chunked request body itself, on the bytes read from the client (see [`super::framing`]),
//! and refuses the request when they do not follow the grammar exactly:
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size   = 1*HEXDIG                     (at most 16 digits here, as httparse)
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-val = token / quoted-string
//! trailer-section = *( field-line CRLF )      (field-name ":" OWS field-value OWS)
//! ```
//!
//! Line ends are CRLF only (a bare LF or CR is refused), whitespace is allowed only where
//! the grammar has BWS (before `;` and around `=`), a chunk line (size and extensions) may
//! be at most [`MAX_LINE`] bytes and the trailer section at most [`MAX_TRAILERS`] (as
//! Pingora). Chunk data is skipped in bulk; the state is a few words and never allocates.

/// Longest chunk-size line (size and extensions, without CRLF) accepted.
pub const MAX_LINE: u32 = 4096;
/// Largest trailer section accepted (Pingora's own limit).
pub const MAX_TRAILERS: u32 = 64 * 1024;
/// Most hex digits in a chunk size (httparse refuses more, leading zeros included).
const MAX_DIGITS: u8 = 16;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed chunked request body: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

impl Malformed {
    /// The `Malformed` a failed read or a Pingora error carries, if any: `e` itself, or
    /// the payload of an `io::Error` (how [`super::HeadDeadline`] reports it).
    pub fn found_in(e: &(dyn std::error::Error + 'static)) -> Option<Malformed> {
        if let Some(m) = e.downcast_ref::<Malformed>() {
            return Some(*m);
        }
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Malformed>())
            .copied()
    }
}

/// The outcome of feeding bytes to a [`Chunked`] validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Every byte was part of the body, which goes on.
    More,
    /// The body ended after this many bytes of the piece; the rest is not body.
    End(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` read so far).
    Size,
    /// BWS after the size: only `;` may follow.
    SizeWs,
    /// After `;`: BWS, then an extension name.
    ExtStart,
    /// In an extension name.
    ExtName,
    /// BWS after an extension name: `=` or `;` may follow.
    ExtNameWs,
    /// After `=`: BWS, then a token or a quoted string.
    ExtValStart,
    /// In a token value.
    ExtValToken,
    /// In a quoted-string value.
    ExtValQuoted,
    /// After a backslash in a quoted string.
    ExtValEscape,
    /// After a value: `;` or CRLF.
    ExtValEnd,
    /// BWS after a value: only `;` may follow.
    ExtValWs,
    /// CR of a chunk line read: LF must follow.
    SizeLf,
    /// Chunk data, `remaining` bytes to go.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// Start of a trailer line, or of the final CRLF.
    TrailerStart,
    /// In a trailer field name.
    TrailerName,
    /// In a trailer field value.
    TrailerValue,
    /// CR of a trailer line read: LF must follow.
    TrailerLf,
    /// CR of the final CRLF read: LF must follow.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Validator state for one chunked body. [`Chunked::default`] starts a new body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// The chunk size being read, then the data bytes still to come.
    remaining: u64,
    /// Hex digits of the size read so far.
    digits: u8,
    /// Bytes of the current chunk line, or of the trailer section.
    line: u32,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line: 0,
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `qdtext` of a quoted string (RFC 9110 §5.6.4).
fn is_qdtext(b: u8) -> bool {
    is_ws(b) || b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b) || b >= 0x80
}

/// A byte of a field value (RFC 9110 §5.5): VCHAR, obs-text, SP, HTAB.
fn is_field_byte(b: u8) -> bool {
    is_ws(b) || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

impl Chunked {
    /// Validate the next piece of the body. Once the body is complete, returns where it
    /// ended in `bytes`; a body already complete ends at 0.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Fed, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Done {
                return Ok(Fed::End(i));
            }
            if self.state == State::Data {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                i += take;
                // `take` fits in a u64: it is at most `remaining`.
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.byte(bytes[i])?;
            i += 1;
        }
        Ok(if self.state == State::Done {
            Fed::End(bytes.len())
        } else {
            Fed::More
        })
    }

    /// One byte outside chunk data.
    #[inline]
    fn byte(&mut self, b: u8) -> Result<(), Malformed> {
        self.count_line(b)?;
        self.state = self.next_state(b)?;
        Ok(())
    }

    /// Count `b` against the size of the chunk line or the trailer section it is in.
    #[inline]
    fn count_line(&mut self, b: u8) -> Result<(), Malformed> {
        use State::*;
        match self.state {
            Size | SizeWs | ExtStart | ExtName | ExtNameWs | ExtValStart | ExtValToken
            | ExtValQuoted | ExtValEscape | ExtValEnd | ExtValWs => {
                self.line += u32::from(b != b'\r');
                if self.line > MAX_LINE {
                    return Err(Malformed("chunk line too long"));
                }
            }
            TrailerStart | TrailerName | TrailerValue | TrailerLf | FinalLf => {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(Malformed("trailer section too large"));
                }
            }
            SizeLf | Data | DataCr | DataLf | Done => {}
        }
        Ok(())
    }

    /// The state after `b` (the chunk size is accumulated on the way), or why `b` is
    /// refused.
    #[inline]
    fn next_state(&mut self, b: u8) -> Result<State, Malformed> {
        use State::*;
        Ok(match (self.state, b) {
            (Size, _) if hex(b).is_some() => {
                if self.digits == MAX_DIGITS {
                    return Err(Malformed("chunk size has too many digits"));
                }
                self.digits += 1;
                self.remaining = (self.remaining << 4) | hex(b).unwrap_or(0);
                Size
            }
            (Size, _) if self.digits == 0 => return Err(Malformed("chunk size missing")),
            (Size, b'\r') | (ExtName, b'\r') | (ExtValToken, b'\r') | (ExtValEnd, b'\r') => SizeLf,
            (Size, b';')
            | (SizeWs, b';')
            | (ExtName, b';')
            | (ExtNameWs, b';')
            | (ExtValToken, b';')
            | (ExtValEnd, b';')
            | (ExtValWs, b';') => ExtStart,
            (Size, _) if is_ws(b) => SizeWs,
            (SizeWs, _) if is_ws(b) => SizeWs,
            (ExtStart, _) if is_ws(b) => ExtStart,
            (ExtStart, _) if is_tchar(b) => ExtName,
            (ExtName, _) if is_tchar(b) => ExtName,
            (ExtName, _) if is_ws(b) => ExtNameWs,
            (ExtNameWs, _) if is_ws(b) => ExtNameWs,
            (ExtName, b'=') | (ExtNameWs, b'=') => ExtValStart,
            (ExtValStart, _) if is_ws(b) => ExtValStart,
            (ExtValStart, b'"') => ExtValQuoted,
            (ExtValStart, _) if is_tchar(b) => ExtValToken,
            (ExtValToken, _) if is_tchar(b) => ExtValToken,
            (ExtValToken, _) | (ExtValEnd, _) if is_ws(b) => ExtValWs,
            (ExtValWs, _) if is_ws(b) => ExtValWs,
            (ExtValQuoted, b'"') => ExtValEnd,
            (ExtValQuoted, b'\\') => ExtValEscape,
            (ExtValQuoted, _) if is_qdtext(b) => ExtValQuoted,
            (ExtValEscape, _) if is_field_byte(b) => ExtValQuoted,
            (SizeLf, b'\n') => {
                self.line = 0;
                self.digits = 0;
                if self.remaining == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err(Malformed("chunk data not followed by CRLF")),
            (DataLf, b'\n') => Size,
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart, _) if is_tchar(b) => TrailerName,
            (TrailerName, _) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if is_field_byte(b) => TrailerValue,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (Size | SizeWs | ExtStart | ExtName | ExtNameWs | ExtValStart | ExtValToken, _)
            | (ExtValQuoted | ExtValEscape | ExtValEnd | ExtValWs, _) => {
                return Err(Malformed("invalid byte in chunk size line"))
            }
            (SizeLf | DataLf | TrailerLf | FinalLf, _) => {
                return Err(Malformed("CR not followed by LF"))
            }
            (TrailerStart | TrailerName | TrailerValue, _) => {
                return Err(Malformed("invalid trailer line"))
            }
            (Data | Done, _) => self.state,
        })
    }
}

#[cfg(test)]
impl Chunked {
    /// Feed `pieces` to a new validator: where the body ended in their concatenation
    /// (`Some`), or `None` when more is expected.
    pub(crate) fn run(pieces: &[&[u8]]) -> Result<Option<usize>, Malformed> {
        let mut c = Chunked::default();
        let mut offset = 0;
        for p in pieces {
            match c.feed(p)? {
                Fed::End(n) => return Ok(Some(offset + n)),
                Fed::More => offset += p.len(),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
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
}
