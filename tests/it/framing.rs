//! HTTP/1.1 framing through the real binary (issue 5, "Framing"): every ambiguous or
//! malformed request is answered correctly or refused cleanly, never forwarded ambiguously,
//! and never lets a hidden request (`/smuggled`) reach the upstream; bad framing from the
//! upstream never poisons another response or presents a truncated body as complete.

use crate::harness::client::{parse_one, parse_one_head};
use crate::harness::{Moat, Recorded, Response, Upstream};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CANARY: &str = "GET /canary HTTP/1.1\r\nHost: h\r\n\r\n";
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
/// A fake response an upstream hides in a body; a client must never see it as a response.
const INNER: &str = "HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 0\r\n\r\n";

fn moat_for(up: &Upstream) -> Moat {
    Moat::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address()
    ))
}

fn app() -> Upstream {
    let up = Upstream::start("app");
    up.set(crate::harness::Behavior {
        body: b"app".to_vec(),
        ..Default::default()
    });
    up
}

/// What one raw exchange produced.
#[derive(Debug)]
struct Outcome {
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

fn finals(raw: &[u8], first_is_head: bool) -> Vec<Response> {
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
fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize, limit: Duration) -> bool {
    read_some_as(s, buf, want, limit, false)
}

fn read_some_as(
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
fn talk(m: &Moat, up: &Upstream, bytes: &[u8], want: usize) -> Outcome {
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
fn assert_safe(case: &str, o: &Outcome, legit: &[&str]) {
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
fn assert_refused(case: &str, o: &Outcome, target: &str) {
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
fn soft(failures: &mut Vec<String>, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        failures.push(msg);
    }
}

fn report(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn post(target: &str, version: &str, headers: &str, body: &str) -> String {
    format!("POST {target} HTTP/{version}\r\nHost: h\r\n{headers}\r\n{body}")
}

// ---------------------------------------------------------------- request side

#[test]
fn content_length_with_transfer_encoding() {
    let up = app();
    let m = moat_for(&up);
    // CL.TE: by Content-Length the smuggled request is body; by chunked it is a request.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let raw = post(
        "/a",
        "1.1",
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ),
        &body,
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("CL.TE", &o, &["/a", "/canary"]);
    if let Some(a) = o.traffic.iter().find(|r| r.target == "/a") {
        // Forwarding is allowed only as chunked (RFC 9112 §6.3: TE overrides CL).
        assert!(
            a.body.is_empty(),
            "CL.TE forwarded by Content-Length: {o:#?}"
        );
    }
    // TE.CL: by chunked the smuggled request is body; by Content-Length it is a request.
    let body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let raw = post(
        "/a",
        "1.1",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        &body,
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("TE.CL", &o, &["/a", "/canary"]);
    if let Some(a) = o.traffic.iter().find(|r| r.target == "/a") {
        assert_eq!(
            a.body,
            SMUGGLED.as_bytes(),
            "TE.CL forwarded by Content-Length"
        );
    }
}

/// A disguised Transfer-Encoding next to a Content-Length that covers a hidden request.
fn disguised_te(case: &str, te_lines: &str) {
    let up = app();
    let m = moat_for(&up);
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let raw = post(
        "/a",
        "1.1",
        &format!("Content-Length: {}\r\n{te_lines}", body.len()),
        &body,
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe(case, &o, &["/a", "/canary"]);
    assert_refused(case, &o, "/a");
}

#[test]
fn te_xchunked() {
    disguised_te("xchunked", "Transfer-Encoding: xchunked\r\n");
}

#[test]
fn te_chunked_then_identity() {
    disguised_te(
        "chunked, identity",
        "Transfer-Encoding: chunked, identity\r\n",
    );
}

#[test]
fn te_two_headers() {
    disguised_te(
        "two TE headers",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    );
}

#[test]
fn te_whitespace_before_colon() {
    disguised_te("TE space before colon", "Transfer-Encoding : chunked\r\n");
}

#[test]
fn te_on_http_1_0() {
    let up = app();
    let m = moat_for(&up);
    // RFC 9112 §6.1: TE on HTTP/1.0 is faulty framing; close after processing.
    let raw = post(
        "/a",
        "1.0",
        "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n",
        &format!("0\r\n\r\n{SMUGGLED}"),
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("TE on 1.0", &o, &["/a", "/canary"]);
    // With a Content-Length that covers the hidden request too.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let raw = post(
        "/a",
        "1.0",
        &format!(
            "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("TE+CL on 1.0", &o, &["/a", "/canary"]);
}

#[test]
fn content_length_duplicate_or_malformed() {
    let up = app();
    let m = moat_for(&up);
    let n = SMUGGLED.len();
    let cases = [
        format!("Content-Length: 0\r\nContent-Length: {n}\r\n"),
        format!("Content-Length: {n}\r\nContent-Length: 0\r\n"),
        "Content-Length: 1,2\r\n".to_string(),
        format!("Content-Length: 0, {n}\r\n"),
        "Content-Length: +5\r\n".to_string(),
        "Content-Length: -1\r\n".to_string(),
        "Content-Length: 0x10\r\n".to_string(),
    ];
    let mut failures = Vec::new();
    for cl in &cases {
        let raw = post("/a", "1.1", cl, SMUGGLED) + CANARY;
        let o = talk(&m, &up, raw.as_bytes(), 2);
        soft(&mut failures, || {
            assert_safe(cl, &o, &["/a", "/canary"]);
            assert_refused(cl, &o, "/a");
        });
    }
    report(failures);
}

#[test]
#[ignore = "moat bug: malformed chunked bodies (empty chunk-size line after a chunk; a non-field line where the final CRLF belongs) are accepted, forwarded and answered 200"]
fn bad_chunk_sizes_and_missing_crlf() {
    let up = app();
    let m = moat_for(&up);
    let cases = [
        (
            "non-hex size",
            format!("zz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "negative size",
            format!("-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        ("0x prefix", format!("0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        (
            "size overflowing u64",
            format!("10000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "missing CRLF after data",
            format!("5\r\nhelloXX0\r\n\r\n{SMUGGLED}"),
        ),
        ("short data", format!("8\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        (
            "missing final CRLF",
            format!("5\r\nhello\r\n0\r\n{SMUGGLED}"),
        ),
    ];
    let mut failures = Vec::new();
    for (case, body) in &cases {
        let raw = post("/a", "1.1", "Transfer-Encoding: chunked\r\n", body) + CANARY;
        let o = talk(&m, &up, raw.as_bytes(), 2);
        soft(&mut failures, || {
            assert_safe(case, &o, &["/a", "/canary"]);
            assert!(
                o.responses.first().is_none_or(|r| r.status >= 400),
                "[{case}] malformed chunked body answered {:?}\nupstream got {:?}",
                o.text(),
                o.traffic
            );
        });
    }
    report(failures);
}

#[test]
fn bare_cr_lf_nul() {
    let up = app();
    let m = moat_for(&up);
    let cases: [(&str, &[u8]); 9] = [
        ("CR in target", b"GET /a\rb HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("CR ends request line", b"GET /a HTTP/1.1\rHost: h\r\n\r\n"),
        (
            "CR in header value",
            b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: b\rTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "CR in header name",
            b"GET /a HTTP/1.1\r\nHost: h\r\nX\rA: b\r\n\r\n",
        ),
        ("LF in target", b"GET /a\nb HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("LF-only line ends", b"GET /a HTTP/1.1\nHost: h\n\n"),
        ("NUL in target", b"GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n"),
        (
            "NUL in header value",
            b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: b\0c\r\n\r\n",
        ),
        (
            "NUL in header name",
            b"GET /a HTTP/1.1\r\nHost: h\r\nX-\0A: b\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (case, req) in cases {
        let raw = [req, CANARY.as_bytes()].concat();
        let o = talk(&m, &up, &raw, 2);
        soft(&mut failures, || {
            // A control byte in the target may be refused or percent-encoded.
            assert_safe(case, &o, &["/a", "/canary", "/a%0Db", "/a%0db", "/a%00b"]);
            if case.contains("header") {
                assert_refused(case, &o, "/a");
            }
        });
    }
    report(failures);
}

#[test]
fn obsolete_line_folding() {
    let up = app();
    let m = moat_for(&up);
    // A fold that, forwarded verbatim, would become a header of its own.
    let raw = format!("GET /a HTTP/1.1\r\nHost: h\r\nX-A: one\r\n X-B: two\r\n\r\n{CANARY}");
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("fold", &o, &["/a", "/canary"]);
    for r in &o.traffic {
        assert!(r.header("x-b").is_none(), "fold forwarded verbatim: {o:#?}");
    }
    // A fold hiding a Transfer-Encoding next to a Content-Length.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let raw = post(
        "/a",
        "1.1",
        &format!(
            "Content-Length: {}\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n",
            body.len()
        ),
        &body,
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("fold hiding TE", &o, &["/a", "/canary"]);
    // A folded Transfer-Encoding value.
    let raw = post(
        "/a",
        "1.1",
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding:\r\n chunked\r\n",
            body.len()
        ),
        &body,
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("folded TE", &o, &["/a", "/canary"]);
}

#[test]
fn missing_host_on_http_1_1() {
    let up = app();
    let m = moat_for(&up);
    let raw = format!("GET /a HTTP/1.1\r\nX-A: b\r\n\r\n{CANARY}");
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("missing Host", &o, &["/a", "/canary"]);
    assert_refused("missing Host", &o, "/a");
}

#[test]
fn duplicate_host_on_http_1_1() {
    let up = app();
    let m = moat_for(&up);
    for hosts in ["Host: h\r\nHost: evil\r\n", "Host: h\r\nHost: h\r\n"] {
        let raw = format!("GET /a HTTP/1.1\r\n{hosts}\r\n{CANARY}");
        let o = talk(&m, &up, raw.as_bytes(), 2);
        assert_safe(hosts, &o, &["/a", "/canary"]);
        assert_refused(hosts, &o, "/a");
    }
}

#[test]
fn upgrade_h2c() {
    let up = app();
    let m = moat_for(&up);
    let raw = format!(
        "GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n{CANARY}"
    );
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("h2c", &o, &["/a", "/canary"]);
    assert!(
        !o.text().contains(" 101 "),
        "h2c upgrade accepted: {}",
        o.text()
    );
    for r in &o.traffic {
        assert!(
            r.all("upgrade").iter().all(|v| !v.contains("h2c"))
                && r.all("http2-settings").is_empty(),
            "h2c upgrade forwarded upstream: {o:#?}"
        );
    }
}

#[test]
fn three_requests_in_one_write() {
    let (one, two, app) = (Upstream::start("one"), Upstream::start("two"), app());
    for (u, b) in [(&one, "one"), (&two, "two")] {
        u.set(crate::harness::Behavior {
            body: b.as_bytes().to_vec(),
            ..Default::default()
        });
    }
    let m = Moat::start(&format!(
        "upstreams:\n  one: {{ targets: [\"{}\"] }}\n  two: {{ targets: [\"{}\"] }}\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: one\n    match: {{ path_prefix: /one }}\n    upstream: one\n  - name: two\n    match: {{ path_prefix: /two }}\n    upstream: two\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        one.address(),
        two.address(),
        app.address()
    ));
    let raw = format!(
        "GET /one HTTP/1.1\r\nHost: h\r\n\r\nPOST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello{CANARY}"
    );
    let o = talk(&m, &app, raw.as_bytes(), 3);
    let bodies: Vec<String> = o.responses.iter().map(|r| r.text()).collect();
    let want = ["one", "two", "app"];
    assert!(
        o.responses.len() == 3 || o.closed,
        "pipelined requests neither all answered nor connection closed: {:?}",
        o.text()
    );
    for (i, r) in o.responses.iter().enumerate() {
        assert!(
            r.status == 200 && bodies[i] == want[i] || (400..500).contains(&r.status),
            "response {i} out of order or failed: {bodies:?} {:?}",
            o.text()
        );
    }
    assert!(!o.responses.is_empty(), "nothing answered: {:?}", o.text());
    // Nothing forwarded beyond what was answered, each at most once, bodies intact.
    let forwarded = [one.traffic(), two.traffic(), app.traffic()];
    for (i, t) in forwarded.iter().enumerate() {
        assert!(t.len() <= 1, "{} forwarded twice", want[i]);
        assert!(
            t.is_empty() || i < o.responses.len(),
            "{} forwarded, unanswered",
            want[i]
        );
    }
    if let Some(r) = forwarded[1].first() {
        assert_eq!(r.body, b"hello");
    }
}

fn auth_moat(up: &Upstream) -> Moat {
    Moat::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: acme\n    api_keys:\n      - {{ sha256: {} }}\nroutes:\n  - name: keys\n    match: {{ path_prefix: /k }}\n    upstream: app\n    plugins: [ {{ auth: {{ methods: [api_key] }} }} ]\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address(),
        "ab".repeat(32)
    ))
}

#[test]
fn unauthorized_with_unread_body() {
    let up = app();
    let m = auth_moat(&up);
    // Body in the same write as the head.
    let raw = post(
        "/k",
        "1.1",
        &format!("Content-Length: {}\r\n", SMUGGLED.len()),
        SMUGGLED,
    ) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("401 + CL body", &o, &["/canary"]);
    assert_eq!(
        o.responses.first().map(|r| r.status),
        Some(401),
        "{}",
        o.text()
    );
    // A chunked body.
    let body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let raw = post("/k", "1.1", "Transfer-Encoding: chunked\r\n", &body) + CANARY;
    let o = talk(&m, &up, raw.as_bytes(), 2);
    assert_safe("401 + chunked body", &o, &["/canary"]);
    assert_eq!(
        o.responses.first().map(|r| r.status),
        Some(401),
        "{}",
        o.text()
    );
    // The body arrives only after moat has answered 401.
    let head = post(
        "/k",
        "1.1",
        &format!("Content-Length: {}\r\n", SMUGGLED.len()),
        "",
    );
    let o = split_exchange(&m, &up, head.as_bytes(), &format!("{SMUGGLED}{CANARY}"));
    assert_safe("401 then body", &o, &["/canary"]);
    assert_eq!(
        o.responses.first().map(|r| r.status),
        Some(401),
        "{}",
        o.text()
    );
}

/// Send `head`, read the first final response (up to 3 s), then send `rest` and read on.
fn split_exchange(m: &Moat, up: &Upstream, head: &[u8], rest: &str) -> Outcome {
    up.clear();
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
    s.write_all(head).expect("write head");
    let mut raw = Vec::new();
    let mut closed = read_some(&mut s, &mut raw, 1, Duration::from_secs(3));
    if !closed {
        let _ = s.write_all(rest.as_bytes());
        closed = read_some(&mut s, &mut raw, 2, Duration::from_secs(3));
    }
    std::thread::sleep(Duration::from_millis(50));
    Outcome {
        responses: finals(&raw, false),
        raw,
        closed,
        traffic: up.traffic(),
    }
}

#[test]
fn expect_100_continue_with_bad_credentials() {
    let up = app();
    let m = auth_moat(&up);
    let head = post(
        "/k",
        "1.1",
        &format!(
            "X-Api-Key: wrong\r\nExpect: 100-continue\r\nContent-Length: {}\r\n",
            SMUGGLED.len()
        ),
        "",
    );
    let o = split_exchange(&m, &up, head.as_bytes(), &format!("{SMUGGLED}{CANARY}"));
    assert_safe("expect 100 + bad key", &o, &["/canary"]);
    assert_eq!(
        o.responses.first().map(|r| r.status),
        Some(401),
        "{}",
        o.text()
    );
}

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
