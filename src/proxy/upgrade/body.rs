//! The body of an upstream's refusal of an upgrade (401, 426, 5xx...): read by its framing
//! (`Content-Length`, chunked, or until the upstream closes) and written to the client
//! through Pingora's session, which frames it again for the client.

use bytes::{Bytes, BytesMut};
use http::header;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Bytes read from the upstream at a time.
const READ_SIZE: usize = 16 * 1024;

/// How the response body is delimited.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// The framing of `resp`, the answer to a request with `method` (RFC 9112 §6.3).
pub fn framing(method: &http::Method, resp: &ResponseHeader) -> Result<Framing> {
    let s = resp.status.as_u16();
    if method == http::Method::HEAD || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok(Framing::Empty);
    }
    if let Some(te) = resp.headers.get(header::TRANSFER_ENCODING) {
        let last = te.as_bytes().rsplit(|b| *b == b',').next().unwrap_or(b"");
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Ok(Framing::Chunked);
        }
        return Ok(Framing::Close);
    }
    match resp.headers.get(header::CONTENT_LENGTH) {
        Some(v) => {
            let n = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            match n {
                Some(n) => Ok(Framing::Length(n)),
                None => upstream(
                    ErrorType::InvalidHTTPHeader,
                    "invalid Content-Length from upstream",
                ),
            }
        }
        None => Ok(Framing::Close),
    }
}

/// An error of the upstream's making.
fn upstream<T>(etype: ErrorType, context: &'static str) -> Result<T> {
    Err(Error::explain(etype, context).into_up())
}

/// Reads from the upstream, each within the read timeout, after the bytes already read.
struct Source<'a, S> {
    s: &'a mut S,
    buf: BytesMut,
    timeout: Duration,
}

impl<S: AsyncRead + Unpin> Source<'_, S> {
    /// Read more into `buf`; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        self.buf.reserve(READ_SIZE);
        let read = tokio::time::timeout(self.timeout, self.s.read_buf(&mut self.buf)).await;
        match read {
            Ok(Ok(n)) => Ok(n > 0),
            Ok(Err(e)) => {
                Err(Error::because(ErrorType::ReadError, "reading the upstream body", e).into_up())
            }
            Err(_) => upstream(ErrorType::ReadTimedout, "reading the upstream body"),
        }
    }

    /// Up to `max` bytes, reading if none are buffered; empty at the end of the stream.
    async fn take(&mut self, max: usize) -> Result<Bytes> {
        if self.buf.is_empty() && !self.fill().await? {
            return Ok(Bytes::new());
        }
        let n = self.buf.len().min(max);
        Ok(self.buf.split_to(n).freeze())
    }

    /// One line ending in CRLF (or LF), without it.
    async fn line(&mut self) -> Result<BytesMut> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let mut line = self.buf.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return upstream(ErrorType::InvalidHTTPHeader, "chunk line too long");
            }
            if !self.fill().await? {
                return upstream(ErrorType::ConnectionClosed, "upstream body cut short");
            }
        }
    }
}

/// Copy the body framed by `framing` from `up` (after `buf`, bytes already read) to the
/// client, ending the client's response.
pub async fn forward<S>(
    session: &mut Session,
    up: &mut S,
    buf: BytesMut,
    framing: Framing,
    timeout: Duration,
) -> Result<()>
where
    S: AsyncRead + Unpin,
{
    let mut src = Source {
        s: up,
        buf,
        timeout,
    };
    match framing {
        Framing::Empty => {}
        Framing::Length(mut left) => {
            while left > 0 {
                let data = src
                    .take(usize::try_from(left).unwrap_or(usize::MAX))
                    .await?;
                if data.is_empty() {
                    return upstream(
                        ErrorType::ConnectionClosed,
                        "upstream body shorter than its Content-Length",
                    );
                }
                left -= data.len() as u64;
                session.write_response_body(Some(data), false).await?;
            }
        }
        Framing::Close => loop {
            let data = src.take(usize::MAX).await?;
            if data.is_empty() {
                break;
            }
            session.write_response_body(Some(data), false).await?;
        },
        Framing::Chunked => loop {
            let line = src.line().await?;
            let size = match httparse::parse_chunk_size(&[&line[..], b"\r\n"].concat()) {
                Ok(httparse::Status::Complete((_, size))) => size,
                _ => return upstream(ErrorType::InvalidHTTPHeader, "invalid chunk size"),
            };
            if size == 0 {
                // Trailers are not forwarded: read up to the empty line.
                while !src.line().await?.is_empty() {}
                break;
            }
            let mut left = size;
            while left > 0 {
                let data = src
                    .take(usize::try_from(left).unwrap_or(usize::MAX))
                    .await?;
                if data.is_empty() {
                    return upstream(ErrorType::ConnectionClosed, "upstream chunk cut short");
                }
                left -= data.len() as u64;
                session.write_response_body(Some(data), false).await?;
            }
            if !src.line().await?.is_empty() {
                return upstream(ErrorType::InvalidHTTPHeader, "chunk not ended by CRLF");
            }
        },
    }
    session.write_response_body(None, true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = http::Method::GET;
        assert_eq!(
            framing(&get, &resp(401, &[("Content-Length", "5")])).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(
            framing(
                &get,
                &resp(
                    500,
                    &[
                        ("Transfer-Encoding", "gzip, chunked"),
                        ("Content-Length", "5")
                    ]
                )
            )
            .unwrap(),
            Framing::Chunked
        );
        assert_eq!(framing(&get, &resp(400, &[])).unwrap(), Framing::Close);
        assert_eq!(
            framing(&get, &resp(204, &[("Content-Length", "5")])).unwrap(),
            Framing::Empty
        );
        assert_eq!(
            framing(&http::Method::HEAD, &resp(200, &[("Content-Length", "5")])).unwrap(),
            Framing::Empty
        );
        assert!(framing(&get, &resp(200, &[("Content-Length", "x")])).is_err());
    }
}
