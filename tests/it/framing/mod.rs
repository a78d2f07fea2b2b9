//! HTTP/1.1 framing through the real binary (issue 5, "Framing"): every ambiguous or
//! malformed request is answered correctly or refused cleanly, never forwarded ambiguously,
//! and never lets a hidden request (`/smuggled`) reach the upstream; bad framing from the
//! upstream never poisons another response or presents a truncated body as complete.
//!
//! `request`: what clients send; `upstream`: what upstreams answer.

#![allow(unused_imports)]

pub(crate) use crate::harness::client::{parse_one, parse_one_head};
pub(crate) use crate::harness::{Moat, Recorded, Response, Upstream};
pub(crate) use std::io::{Read, Write};
pub(crate) use std::net::{SocketAddr, TcpListener, TcpStream};
pub(crate) use std::sync::{Arc, Mutex};
pub(crate) use std::time::{Duration, Instant};

mod request;
mod upstream;

pub(crate) const CANARY: &str = "GET /canary HTTP/1.1\r\nHost: h\r\n\r\n";
pub(crate) const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
/// A fake response an upstream hides in a body; a client must never see it as a response.
pub(crate) const INNER: &str = "HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 0\r\n\r\n";

pub(crate) fn moat_for(up: &Upstream) -> Moat {
    Moat::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address()
    ))
}

pub(crate) fn app() -> Upstream {
    let up = Upstream::start("app");
    up.set(crate::harness::Behavior {
        body: b"app".to_vec(),
        ..Default::default()
    });
    up
}

/// What one raw exchange produced.
#[derive(Debug)]
pub(crate) struct Outcome {
    raw: Vec<u8>,
    /// Final responses (1xx left out), in order.
    responses: Vec<Response>,
    /// The server closed (or reset) the connection.
    closed: bool,
    /// What the upstream received (probes left out).
    traffic: Vec<Recorded>,
}

impl Outcome {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
    fn targets(&self) -> Vec<&str> {
        self.traffic.iter().map(|r| r.target.as_str()).collect()
    }
}

pub(crate) fn finals(raw: &[u8], first_is_head: bool) -> Vec<Response> {
    let mut out = Vec::new();
    let mut rest = raw;
    let mut head = first_is_head;
    loop {
        let status = rest
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok());
        // No body on 1xx, 204, 304 or the response to HEAD, whatever the headers say.
        let bodiless = head || status.is_some_and(|s| s < 200 || s == 204 || s == 304);
        let parsed = if bodiless {
            parse_one_head(rest)
        } else {
            parse_one(rest)
        };
        let Some((r, used)) = parsed else { break };
        rest = &rest[used..];
        if r.status >= 200 {
            head = false;
            out.push(r);
        }
    }
    out
}

/// Read from `s` until it closes, `want` final responses are in, or `limit` passes.
pub(crate) fn read_some(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
    limit: Duration,
) -> bool {
    read_some_as(s, buf, want, limit, false)
}

pub(crate) fn read_some_as(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
    limit: Duration,
    head: bool,
) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let start = Instant::now();
    let mut chunk = [0u8; 16384];
    while start.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if finals(buf, head).len() >= want {
                    return false;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Write `bytes` in one go, then read until close, `want` final responses, or 3 s.
pub(crate) fn talk(m: &Moat, up: &Upstream, bytes: &[u8], want: usize) -> Outcome {
    up.clear();
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let closed = read_some(&mut s, &mut raw, want, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(50));
    Outcome {
        responses: finals(&raw, false),
        raw,
        closed,
        traffic: up.traffic(),
    }
}

/// The invariants every client-side case shares: no 5xx, nothing forwarded but the
/// requests the client sent whole (each at most once, never `/smuggled`), no ambiguous
/// framing or control bytes forwarded, no more responses than legitimate requests.
pub(crate) fn assert_safe(case: &str, o: &Outcome, legit: &[&str]) {
    let ctx = || {
        format!(
            "[{case}] moat answered {:?}\nupstream got {:#?}",
            o.text(),
            o.traffic
        )
    };
    for r in &o.responses {
        assert!(r.status < 500, "5xx: {}", ctx());
    }
    assert!(
        o.responses.len() <= legit.len(),
        "more responses than requests: {}",
        ctx()
    );
    for t in o.targets() {
        assert!(
            !t.contains("smuggled"),
            "smuggled request forwarded: {}",
            ctx()
        );
        assert!(
            legit.contains(&t),
            "unexpected target {t:?} forwarded: {}",
            ctx()
        );
    }
    for l in legit {
        let n = o.targets().iter().filter(|t| *t == l).count();
        assert!(n <= 1, "{l} forwarded {n} times: {}", ctx());
    }
    for r in &o.traffic {
        let cl = r.all("content-length");
        let te = r.all("transfer-encoding");
        assert!(cl.len() <= 1, "several Content-Length forwarded: {}", ctx());
        assert!(
            cl.is_empty() || te.is_empty(),
            "Content-Length and Transfer-Encoding forwarded together: {}",
            ctx()
        );
        assert!(
            te.iter().all(|v| v.eq_ignore_ascii_case("chunked")),
            "odd Transfer-Encoding forwarded: {}",
            ctx()
        );
        for (k, v) in &r.headers {
            assert!(
                !k.bytes().chain(v.bytes()).any(|b| b == b'\r' || b == 0),
                "CR/NUL forwarded in a header: {}",
                ctx()
            );
        }
    }
    // The canary, when answered, is answered last and by the upstream.
    if o.targets().contains(&"/canary") {
        if let Some(last) = o.responses.last() {
            assert_eq!(last.text(), "app", "canary response mixed up: {}", ctx());
        }
    }
}

/// Stricter: the request carrying `target` was refused (4xx or closed), not forwarded.
pub(crate) fn assert_refused(case: &str, o: &Outcome, target: &str) {
    let ctx = || {
        format!(
            "[{case}] moat answered {:?}\nupstream got {:#?}",
            o.text(),
            o.traffic
        )
    };
    assert!(
        !o.targets().contains(&target),
        "{target} should have been refused, was forwarded: {}",
        ctx()
    );
    match o.responses.first() {
        Some(r) => assert!((400..500).contains(&r.status), "not a 4xx: {}", ctx()),
        None => assert!(o.closed, "neither answered nor closed: {}", ctx()),
    }
}

/// Run one sub-case, collecting its failure instead of stopping at it.
pub(crate) fn soft(failures: &mut Vec<String>, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        failures.push(msg);
    }
}

pub(crate) fn report(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

pub(crate) fn post(target: &str, version: &str, headers: &str, body: &str) -> String {
    format!("POST {target} HTTP/{version}\r\nHost: h\r\n{headers}\r\n{body}")
}
