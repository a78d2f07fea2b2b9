//! Request-side framing cases.

#[allow(unused_imports)]
use super::*;

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
            "17 digits with leading zeros",
            format!("00000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
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
        ("empty size line", format!("5\r\nhello\r\n\r\n{SMUGGLED}")),
        (
            "LF-only size line",
            format!("5\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "LF-only after data",
            format!("5\r\nhello\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "LF-only final line",
            format!("5\r\nhello\r\n0\r\n\n{SMUGGLED}"),
        ),
        (
            "bare CR after size",
            format!("5\rhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "whitespace after size without extension",
            format!("5 \r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "LF inside a chunk extension",
            format!("5;a\nb\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "extension without a name",
            format!("5;\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "trailer that is not a field line",
            format!("5\r\nhello\r\n0\r\nX\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obs-fold in trailers",
            format!("5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "chunk line over 4 KiB",
            format!("5;a={}\r\nhello\r\n0\r\n\r\n{SMUGGLED}", "b".repeat(5000)),
        ),
    ];
    let mut failures = Vec::new();
    for (case, body) in &cases {
        let raw = post("/a", "1.1", "Transfer-Encoding: chunked\r\n", body) + CANARY;
        let o = talk(&m, &up, raw.as_bytes(), 2);
        soft(&mut failures, || {
            // Refused before anything is forwarded; the canary behind it never served.
            assert_safe(case, &o, &["/a"]);
            assert_refused(case, &o, "/a");
            assert!(
                o.responses.iter().all(|r| r.status == 400) && o.closed,
                "[{case}] not a 400 then close: {:?}",
                o.text()
            );
            if let Some(r) = o.responses.first() {
                assert_eq!(
                    r.json()["error"]["code"],
                    "BAD_REQUEST",
                    "[{case}] {:?}",
                    o.text()
                );
            }
        });
    }
    report(failures);
}

#[test]
fn malformed_chunks_in_a_later_read_close_the_connection() {
    let up = app();
    let m = moat_for(&up);
    let head = post("/a", "1.1", "Transfer-Encoding: chunked\r\n", "5\r\nhel");
    let cases = [
        ("missing CRLF after data", "loXX0\r\n\r\n"),
        ("empty size line", "lo\r\n\r\n"),
        ("missing final CRLF", "lo\r\n0\r\n"),
    ];
    let mut failures = Vec::new();
    for (case, rest) in cases {
        up.clear();
        let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
        s.write_all(head.as_bytes()).expect("head");
        std::thread::sleep(Duration::from_millis(200));
        let _ = s.write_all(format!("{rest}{SMUGGLED}{CANARY}").as_bytes());
        let mut raw = Vec::new();
        let closed = read_some(&mut s, &mut raw, 2, Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(50));
        let o = Outcome {
            responses: finals(&raw, false),
            raw,
            closed,
            traffic: up.traffic(),
        };
        soft(&mut failures, || {
            assert_safe(case, &o, &["/a"]);
            assert!(o.closed, "[{case}] connection not closed: {:?}", o.text());
            assert!(
                o.responses.iter().all(|r| r.status >= 400),
                "[{case}] answered {:?}",
                o.text()
            );
            assert!(
                o.traffic.iter().all(|r| r.body.len() < 5),
                "[{case}] the whole body was forwarded: {:#?}",
                o.traffic
            );
        });
    }
    report(failures);
}

#[test]
fn well_formed_chunked_bodies_pass_with_a_pipelined_canary() {
    let up = app();
    let m = moat_for(&up);
    let cases = [
        ("plain", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        (
            "upper-case hex, leading zeros",
            "0B\r\nhello world\r\n000\r\n\r\n",
        ),
        (
            "chunk extensions (RFC 9112 §7.1.1)",
            "5;a=b;c;q=\"x;\\\"y\"\r\nhello\r\n6\r\n world\r\n0;last\r\n\r\n",
        ),
        (
            "whitespace before ';' and around '=' (BWS)",
            "5 ;a = b\r\nhello\r\n6\t;c\r\n world\r\n0\r\n\r\n",
        ),
        (
            "trailers",
            "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\nX-B:\r\n\r\n",
        ),
        ("one chunk", "b\r\nhello world\r\n0\r\n\r\n"),
    ];
    let mut failures = Vec::new();
    for (case, body) in cases {
        let raw = post("/a", "1.1", "Transfer-Encoding: chunked\r\n", body) + CANARY;
        let o = talk(&m, &up, raw.as_bytes(), 2);
        soft(&mut failures, || {
            assert_safe(case, &o, &["/a", "/canary"]);
            let got: Vec<u16> = o.responses.iter().map(|r| r.status).collect();
            assert_eq!(got, [200, 200], "[{case}] {:?}", o.text());
            assert_eq!(o.targets(), ["/a", "/canary"], "[{case}]");
            assert_eq!(o.traffic[0].body, b"hello world", "[{case}]");
        });
    }
    report(failures);
}

#[test]
fn a_malformed_chunked_request_pipelined_after_a_good_one() {
    let up = app();
    let m = moat_for(&up);
    let good = post(
        "/a",
        "1.1",
        "Transfer-Encoding: chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    );
    let bad = post(
        "/b",
        "1.1",
        "Transfer-Encoding: chunked\r\n",
        &format!("5\r\nhello\r\n\r\n{SMUGGLED}"),
    );
    let raw = format!("{good}{bad}{CANARY}");
    let o = talk(&m, &up, raw.as_bytes(), 3);
    assert_safe("good then bad", &o, &["/a", "/b"]);
    let got: Vec<u16> = o.responses.iter().map(|r| r.status).collect();
    assert_eq!(got, [200, 400], "{}", o.text());
    assert_eq!(o.targets(), ["/a"]);
    assert!(o.closed, "{}", o.text());
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
    // HTTP/1.1 pipelining: all three served, in order, each forwarded once, bodies
    // intact, and the connection kept.
    let got: Vec<(u16, String)> = o.responses.iter().map(|r| (r.status, r.text())).collect();
    let want = ["one", "two", "app"];
    assert_eq!(
        got,
        want.map(|w| (200, w.to_string())),
        "pipelined requests not all answered in order: {:?}",
        o.text()
    );
    assert!(!o.closed, "connection closed: {:?}", o.text());
    let forwarded = [one.traffic(), two.traffic(), app.traffic()];
    for (i, t) in forwarded.iter().enumerate() {
        assert_eq!(t.len(), 1, "{} forwarded {} times", want[i], t.len());
    }
    assert_eq!(forwarded[1][0].body, b"hello");
    // The same three written a byte at a time: the same answers.
    for u in [&one, &two, &app] {
        u.clear();
    }
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
    s.set_nodelay(true).ok();
    for b in raw.as_bytes() {
        s.write_all(&[*b]).expect("byte");
    }
    let mut out = Vec::new();
    read_some(&mut s, &mut out, 3, Duration::from_secs(3));
    let got: Vec<String> = finals(&out, false).iter().map(|r| r.text()).collect();
    assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&out));
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
    assert_safe("401 + CL body", &o, &["/k", "/canary"]);
    assert!(!o.targets().contains(&"/k"), "{o:#?}");
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
    assert_safe("401 + chunked body", &o, &["/k", "/canary"]);
    assert!(!o.targets().contains(&"/k"), "{o:#?}");
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
    assert_safe("401 then body", &o, &["/k", "/canary"]);
    assert!(!o.targets().contains(&"/k"), "{o:#?}");
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
    assert_safe("expect 100 + bad key", &o, &["/k", "/canary"]);
    assert!(!o.targets().contains(&"/k"), "{o:#?}");
    assert_eq!(
        o.responses.first().map(|r| r.status),
        Some(401),
        "{}",
        o.text()
    );
}

#[test]
fn requests_sent_while_the_previous_one_is_in_flight() {
    // Pingora reads the first byte of the next request while the upstream is still
    // answering; the rest comes with later reads. Both paths must keep the framing.
    let (slow, app) = (Upstream::start("slow"), app());
    slow.set(crate::harness::Behavior {
        body: b"slow".to_vec(),
        delay: Duration::from_millis(400),
        ..Default::default()
    });
    let m = Moat::start(&format!(
        "upstreams:\n  slow: {{ targets: [\"{}\"] }}\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: slow\n    match: {{ path_prefix: /slow }}\n    upstream: slow\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        slow.address(),
        app.address()
    ));
    let exchange = |later: &str, want: usize| {
        slow.clear();
        app.clear();
        let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("first");
        std::thread::sleep(Duration::from_millis(150));
        let _ = s.write_all(later.as_bytes());
        let mut raw = Vec::new();
        let closed = read_some(&mut s, &mut raw, want, Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(50));
        Outcome {
            responses: finals(&raw, false),
            raw,
            closed,
            traffic: app.traffic(),
        }
    };
    let good = post(
        "/a",
        "1.1",
        "Transfer-Encoding: chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    );
    let o = exchange(&format!("{good}{CANARY}"), 3);
    let got: Vec<String> = o.responses.iter().map(|r| r.text()).collect();
    assert_eq!(got, ["slow", "app", "app"], "{}", o.text());
    assert_eq!(o.targets(), ["/a", "/canary"]);
    assert_eq!(o.traffic[0].body, b"hello");
    assert!(!o.closed);
    let bad = post(
        "/a",
        "1.1",
        "Transfer-Encoding: chunked\r\n",
        &format!("5\r\nhello\r\n0\r\n{SMUGGLED}"),
    );
    let o = exchange(&format!("{bad}{CANARY}"), 3);
    assert_safe("bad after in-flight", &o, &["/slow", "/a"]);
    // The trailer section arrives after the head was parsed: the read fails, and the
    // request is answered 400 (nothing was sent for it yet) and its connection closed.
    let got: Vec<u16> = o.responses.iter().map(|r| r.status).collect();
    assert_eq!(got, [200, 400], "{}", o.text());
    assert!(o.closed);
}
