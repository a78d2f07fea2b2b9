//! Finding the end of an HTTP/1 request head in bytes that arrive in pieces.
//!
//! The head ends at the first empty line after the request line. Pingora's parser
//! (httparse) accepts `\n` as well as `\r\n` line endings and skips empty lines before the
//! request line, so the scanner does the same: the end is `\n\n` or `\n\r\n` once a
//! byte other than CR/LF has been seen. A terminator split across reads is found, since
//! the scanner carries what the previous piece ended with.

/// Scanner state for one request head. [`HeadScan::default`] starts a new head.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadScan {
    /// A byte other than CR/LF was seen: empty lines from here on end the head.
    started: bool,
    /// What the bytes so far ended with.
    tail: Tail,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Anything else.
    #[default]
    Other,
    /// `\n`.
    Lf,
    /// `\n\r`.
    LfCr,
}

impl HeadScan {
    /// Scan the next piece of the head. Returns the number of bytes of `bytes` up to and
    /// including the end of the head if it ends in this piece (what follows is body or a
    /// next request), `None` if the head goes on.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        if bytes.is_empty() {
            return None;
        }
        let mut from = 0;
        if !self.started {
            from = bytes.iter().position(|b| *b != b'\r' && *b != b'\n')?;
            self.started = true;
            self.tail = Tail::Other;
        }
        // A terminator begun in the previous piece.
        match (self.tail, bytes.first(), bytes.get(1)) {
            (Tail::Lf, Some(b'\n'), _) | (Tail::LfCr, Some(b'\n'), _) => return Some(1),
            (Tail::Lf, Some(b'\r'), Some(b'\n')) => return Some(2),
            (Tail::Lf, Some(b'\r'), None) => {
                self.tail = Tail::LfCr;
                return None;
            }
            _ => {}
        }
        self.tail = Tail::Other;
        let rest = &bytes[from..];
        for lf in memchr::memchr_iter(b'\n', rest) {
            match (rest.get(lf + 1), rest.get(lf + 2)) {
                (Some(b'\n'), _) => return Some(from + lf + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(from + lf + 3),
                (Some(b'\r'), None) => self.tail = Tail::LfCr,
                (None, _) => self.tail = Tail::Lf,
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` in order; the index of the piece the head ends in and the offset.
    fn end(pieces: &[&[u8]]) -> Option<(usize, usize)> {
        let mut s = HeadScan::default();
        pieces
            .iter()
            .enumerate()
            .find_map(|(i, p)| s.feed(p).map(|n| (i, n)))
    }

    #[test]
    fn whole_head_in_one_piece() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(end(&[head]), Some((0, head.len())));
        let with_body = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(end(&[with_body]), Some((0, with_body.len() - 2)));
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nHost: h\r\n"]), None);
    }

    #[test]
    fn terminator_split_at_every_point() {
        let head = b"GET /a HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\nbody";
        let head_len = head.len() - 4;
        for cut in 1..head.len() {
            let (a, b) = head.split_at(cut);
            let expect = if cut >= head_len {
                (0, head_len)
            } else {
                (1, head_len - cut)
            };
            assert_eq!(end(&[a, b]), Some(expect), "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let pieces: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(end(&pieces), Some((head.len() - 1, 1)));
        // Three pieces: `...\n`, `\r`, `\n`.
        assert_eq!(
            end(&[b"GET / HTTP/1.1\r\nHost: h\r\n", b"\r", b"\n"]),
            Some((2, 1))
        );
    }

    #[test]
    fn bare_lf_line_endings() {
        assert_eq!(end(&[b"GET / HTTP/1.1\nHost: h\n\n"]), Some((0, 24)));
        assert_eq!(end(&[b"GET / HTTP/1.1\nHost: h\n", b"\n"]), Some((1, 1)));
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nHost: h\n\r\n"]), Some((0, 26)));
    }

    #[test]
    fn empty_lines_before_the_request_line_do_not_end_it() {
        assert_eq!(end(&[b"\r\n\r\n\r\n"]), None);
        assert_eq!(end(&[b"\r\n", b"\r\n", b"\n\n"]), None);
        let head = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(end(&[head]), Some((0, head.len())));
        assert_eq!(
            end(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n", b"\r\n"]),
            Some((2, 2))
        );
    }

    #[test]
    fn crlf_inside_lines_is_not_an_end() {
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nA: b\r\nC: d\r\n"]), None);
        assert_eq!(
            end(&[b"GET / HTTP/1.1\r\n", b"A: b\r", b"\nC: d\r\n"]),
            None
        );
        assert_eq!(end(&[b"GET / HTTP/1.1\r\n", b"\rX"]), None);
    }
}
