//! No credential in any log line (issue 14, item 3): a key or token a client carries in the
//! query string (`?api_key=`, `?access_token=`) reaches neither stderr (Pingora's error log,
//! whose request summary moat provides) nor the access log, whatever way the request fails.

use crate::harness::{free_port, request, wait_until, Behavior, Moat, Upstream};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const SECRET: &str = "SECRETvalue0123";

fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: {upstream}\n")
}

/// Open a connection, send `head`, wait `linger`, then drop it without reading the answer.
fn abort_after(port: u16, head: &str, linger: Duration) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(head.as_bytes()).expect("write");
    std::thread::sleep(linger);
    drop(s);
}

#[test]
fn query_credentials_never_reach_stderr_or_the_access_log() {
    let hang = Upstream::start("hang");
    hang.set(Behavior {
        hang_up: true,
        ..Behavior::default()
    });
    let ok = Upstream::start("ok");
    let slow = Upstream::start("slow");
    slow.set(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let (dead1, dead2) = (free_port(), free_port());
    let body = format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  \
           dead: {{ targets: [\"127.0.0.1:{dead1}\", \"127.0.0.1:{dead2}\"], retries: 1 }}\n  \
           flaky: {{ targets: [\"{}\", \"{}\"], balance: round_robin, retries: 1 }}\n  \
           slow: {{ targets: [\"{}\"], read_timeout: 300ms }}\n\
         routes:\n{}{}{}",
        hang.address(),
        ok.address(),
        slow.address(),
        route("dead", "/dead", "dead"),
        route("flaky", "/flaky", "flaky"),
        route("slow", "/slow", "slow"),
    );
    let m = Moat::start(&body);
    let queries = [
        format!("api_key={SECRET}"),
        format!("a=1&access_token={SECRET}&b=2"),
    ];
    let mut expected_lines = 0;
    for q in &queries {
        // 502 after a retry: both targets refuse (Pingora logs the retry, then the failure).
        let r = request(m.port, "GET", &format!("/dead/x?{q}"), &[], b"");
        assert_eq!(r.status, 502);
        // Sent, then the target hangs up: retried on the other target (a warning).
        for _ in 0..2 {
            let r = request(m.port, "GET", &format!("/flaky/x?{q}"), &[], b"");
            assert_eq!(r.status, 200);
        }
        // 504: slower than read_timeout.
        let r = request(m.port, "GET", &format!("/slow/x?{q}"), &[], b"");
        assert_eq!(r.status, 504);
        // Client aborts while moat waits for the upstream, and in the middle of a body.
        abort_after(
            m.port,
            &format!("GET /slow/abort?{q} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            Duration::from_millis(100),
        );
        abort_after(
            m.port,
            &format!(
                "POST /slow/body?{q} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nshort"
            ),
            Duration::from_millis(100),
        );
        // Refused before any upstream: a malformed head (Pingora's 400) and a target over
        // 8 KiB (moat's 414).
        let _ = crate::harness::send_raw(
            m.port,
            format!("GET /dead/x?{q} HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n").as_bytes(),
        );
        let long = format!("/dead/x?{q}&pad={}", "p".repeat(9000));
        assert_eq!(request(m.port, "GET", &long, &[], b"").status, 414);
        expected_lines += 7;
    }
    // Every request, the aborted ones included, has its access-log line.
    assert!(
        wait_until(Duration::from_secs(10), || m.access_log().lines().count()
            >= expected_lines),
        "access log:\n{}",
        m.access_log()
    );
    // The slow upstream's answers to the aborted requests come in after 1.5 s.
    std::thread::sleep(Duration::from_millis(1800));
    let logs = m.logs();
    // The failures were logged (what this test looks at exists), with their paths.
    assert!(
        logs.contains("Fail to proxy") && logs.contains("/dead/x") && logs.contains("/slow/x"),
        "expected Pingora's failure lines:\n{logs}"
    );
    assert!(
        logs.contains("retry: true"),
        "expected a retry warning:\n{logs}"
    );
    for (what, text) in [("stderr", logs), ("access log", m.access_log())] {
        assert!(
            !text.contains(SECRET),
            "the credential reached the {what}:\n{text}"
        );
    }
}
