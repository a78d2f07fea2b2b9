//! Heads edited by plugins (`util::head`): the response phase works on the upstream's
//! head moved out of Pingora's case-keeping map, the upstream-request phase likewise. What
//! must survive the move: status and a non-standard reason phrase, repeated headers in
//! order, every header no plugin touched, and the request target; what changes by design:
//! header names go out in lower case.

use crate::harness::client::parse_all;
use crate::harness::{send_raw, Moat};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The raw answer of the upstream below (mixed-case names, a repeated header, a reason
/// phrase of its own).
const ANSWER: &[u8] = b"HTTP/1.1 203 Fine By Me\r\nServer: up/1\r\nSet-Cookie: a=1\r\n\
X-Mixed-Case: kept\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok";

/// An upstream that answers the first connection's request with [`ANSWER`] and sends the
/// request head it read to `tx`; its thread ends after that, or after 20 s without one.
fn raw_upstream() -> (String, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr").to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).ok();
                    serve(&mut s, &tx);
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr, rx)
}

fn serve(s: &mut TcpStream, tx: &mpsc::Sender<Vec<u8>>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let _ = tx.send(head);
    let _ = s.write_all(ANSWER);
}

#[test]
fn plugins_edit_heads_without_losing_what_they_do_not_touch() {
    let (up, seen) = raw_upstream();
    let m = Moat::start(&format!(
        r#"global_plugins:
  - request_id: {{ trust_incoming: false }}
upstreams:
  app: {{ targets: ["{up}"] }}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: app
    plugins:
      - rate_limit: {{ key: ip, rate: 1000/s }}
      - headers:
          request:
            set: {{ x-route: "{{{{route}}}}" }}
            remove: [x-drop]
          response:
            set: {{ x-served-by: moat }}
            remove: [server]
"#
    ));
    let raw = send_raw(
        m.port,
        b"GET /p?q=1&r=%20 HTTP/1.1\r\nHost: a.test\r\nX-Keep: 1\r\nX-Drop: 2\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 203 Fine By Me\r\n"), "{text}");
    let r = parse_all(&raw).pop().expect("a response");
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"], "{text}");
    // Names in lower case once a plugin edited the head (the value is untouched).
    assert!(text.contains("\r\nx-mixed-case: kept\r\n"), "{text}");
    assert_eq!(r.header("server"), None, "{text}");
    assert_eq!(r.header("x-served-by"), Some("moat"));
    assert_eq!(r.header("ratelimit-limit"), Some("1000"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(26));
    assert_eq!(r.body, b"ok");

    let head = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream saw it");
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("GET /p?q=1&r=%20 HTTP/1.1\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-keep: 1\r\n"), "{head}");
    assert!(!lower.contains("x-drop"), "{head}");
    assert!(lower.contains("\r\nx-route: r\r\n"), "{head}");
    let rid = r.header("x-request-id").unwrap_or_default();
    assert!(lower.contains(&format!(
        "\r\nx-request-id: {}\r\n",
        rid.to_ascii_lowercase()
    )));
    assert!(lower.contains("\r\ntraceparent: 00-"), "{head}");
}
