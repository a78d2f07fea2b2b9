//! Upstream-side framing cases.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------- upstream side

/// A raw upstream: answers each request head with `answer(method, target)` and closes the
/// connection after it when the flag says so.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

type Answer = fn(&str, &str) -> (Vec<u8>, bool);

fn raw_upstream(answer: Answer) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&heads);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let mut words = head.split(' ');
                    let method = words.next().unwrap_or("").to_string();
                    let target = words.next().unwrap_or("").to_string();
                    h.lock().unwrap().push(head);
                    let (bytes, close) = answer(&method, &target);
                    if conn.write_all(&bytes).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    RawUpstream { addr, heads }
}

fn raw_moat(up: &RawUpstream) -> Moat {
    Moat::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.addr
    ))
}

fn canary_answer() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary".to_vec()
}

/// Send `first` and the canary on one connection; return the final responses.
fn upstream_case(m: &Moat, first: &str, head: bool) -> (Vec<Response>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
    let _ = s.write_all(first.as_bytes());
    let mut raw = Vec::new();
    read_some_as(&mut s, &mut raw, 1, Duration::from_secs(3), head);
    let mut out = finals(&raw, head);
    // The canary on a new connection: moat may reuse the upstream connection.
    let mut c = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
    let _ = c.write_all(CANARY.as_bytes());
    let mut raw2 = Vec::new();
    read_some(&mut c, &mut raw2, 1, Duration::from_secs(3));
    out.extend(finals(&raw2, false));
    raw.extend_from_slice(&raw2);
    (out, String::from_utf8_lossy(&raw).into_owned())
}

/// No response carries the hidden fake one; the canary (if answered) got its own answer.
fn assert_no_poison(case: &str, responses: &[Response], text: &str) {
    for r in responses {
        assert!(r.status != 500, "[{case}] 500: {text:?}");
        assert!(
            r.header("x-smuggled").is_none(),
            "[{case}] upstream body taken as a response: {text:?}"
        );
        let cl = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        let te = r.header("transfer-encoding").is_some();
        assert!(
            cl.count() + usize::from(te) <= 1,
            "[{case}] ambiguous framing forwarded: {text:?}"
        );
    }
    assert!(
        responses.len() <= 2,
        "[{case}] too many responses: {text:?}"
    );
    if let Some(c) = responses.get(1) {
        assert!(
            c.status >= 500 || c.text() == "canary",
            "[{case}] canary got another response: {text:?}"
        );
    }
}

#[test]
fn upstream_content_length_with_transfer_encoding() {
    let up = raw_upstream(|_, t| {
        if t == "/canary" {
            return (canary_answer(), false);
        }
        let r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{INNER}\r\n0\r\n\r\n",
            INNER.len()
        );
        (r.into_bytes(), false)
    });
    let m = raw_moat(&up);
    let (rs, text) = upstream_case(&m, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n", false);
    assert_no_poison("upstream CL+TE", &rs, &text);
    let first = rs.first().expect("no response");
    assert!(
        first.status == 502 || first.body == INNER.as_bytes(),
        "CL+TE response not read as chunked: {text:?}"
    );
    assert!(!up.heads.lock().unwrap().is_empty());
}

#[test]
fn upstream_two_content_lengths() {
    let up = raw_upstream(|_, t| {
        if t == "/canary" {
            return (canary_answer(), false);
        }
        let r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{INNER}",
            INNER.len()
        );
        (r.into_bytes(), false)
    });
    let m = raw_moat(&up);
    let (rs, text) = upstream_case(&m, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n", false);
    assert_no_poison("upstream two CLs", &rs, &text);
    // RFC 9112 §6.3: a proxy discards such a response and answers 502.
    assert!(
        rs.first().is_none_or(|r| r.status == 502),
        "response with two Content-Lengths passed on: {text:?}"
    );
}

#[test]
fn upstream_body_on_204_304_and_head() {
    fn answer(status: &'static str) -> Answer {
        match status {
            "204" => {
                (|_, t| {
                    if t == "/canary" {
                        return (canary_answer(), false);
                    }
                    let r = format!(
                        "HTTP/1.1 204 No Content\r\nContent-Length: {}\r\n\r\n{INNER}",
                        INNER.len()
                    );
                    (r.into_bytes(), false)
                }) as Answer
            }
            "304" => {
                (|_, t| {
                    if t == "/canary" {
                        return (canary_answer(), false);
                    }
                    let r = format!(
                        "HTTP/1.1 304 Not Modified\r\nContent-Length: {}\r\n\r\n{INNER}",
                        INNER.len()
                    );
                    (r.into_bytes(), false)
                }) as Answer
            }
            _ => {
                (|m, t| {
                    if t == "/canary" {
                        return (canary_answer(), false);
                    }
                    assert_eq!(m, "HEAD");
                    let r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{INNER}",
                        INNER.len()
                    );
                    (r.into_bytes(), false)
                }) as Answer
            }
        }
    }
    for status in ["204", "304", "HEAD"] {
        let up = raw_upstream(answer(status));
        let m = raw_moat(&up);
        let method = if status == "HEAD" { "HEAD" } else { "GET" };
        let (rs, text) = upstream_case(
            &m,
            &format!("{method} /a HTTP/1.1\r\nHost: h\r\n\r\n"),
            status == "HEAD",
        );
        assert_no_poison(status, &rs, &text);
        assert!(
            !text.contains("X-Smuggled") && !text.contains("x-smuggled"),
            "[{status}] body forwarded to the client: {text:?}"
        );
        assert_eq!(rs.len(), 2, "[{status}] {text:?}");
        assert_eq!(rs[1].text(), "canary", "[{status}] {text:?}");
    }
}

#[test]
fn upstream_closes_mid_body() {
    let cases: [(&str, Answer); 2] = [
        ("content-length", |_, _| {
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
                true,
            )
        }),
        ("chunked", |_, _| {
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"
                    .to_vec(),
                true,
            )
        }),
    ];
    for (case, answer) in cases {
        let up = raw_upstream(answer);
        let m = raw_moat(&up);
        let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
        s.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        let closed = read_some(&mut s, &mut raw, usize::MAX, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(
            closed,
            "[{case}] connection left open after truncation: {text:?}"
        );
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue; // closed without a response: an error the client sees
        };
        let head = text[..end].to_ascii_lowercase();
        let body = &raw[end + 4..];
        assert!(!head.starts_with("http/1.1 500"), "[{case}] {text:?}");
        if head.starts_with("http/1.1 5") {
            continue; // 502/504: the client sees the error
        }
        assert!(head.starts_with("http/1.1 200"), "[{case}] {text:?}");
        let cl = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        if let Some(cl) = cl {
            assert!(
                body.len() < cl,
                "[{case}] truncated body presented complete: {text:?}"
            );
        } else if head.contains("transfer-encoding: chunked") {
            assert!(
                !body.ends_with(b"0\r\n\r\n"),
                "[{case}] truncated body given a chunked terminator: {text:?}"
            );
        } else {
            panic!("[{case}] truncated body sent close-delimited (looks complete): {text:?}");
        }
    }
}
