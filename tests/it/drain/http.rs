//! HTTP/1.1 clients across graceful upgrades and a drain without a new process: none
//! loses a request (closed unanswered, reset, non-2xx), no request reaches the upstream
//! without its answer reaching the client, idle keep-alive connections are closed only
//! between requests, and connections accepted before the listeners stopped are answered.

use super::{
    assert_nothing_lost, assert_stopped_uncut, connect, read_response, received, route, Clients,
    Failure, Kind,
};
use crate::harness::{wait_until, Behavior, Moat, Upstream};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A keep-alive connection that made one request and then sends nothing: when does the
/// server close it, and how.
struct Idle {
    thread: JoinHandle<(Instant, Result<usize, ErrorKind>)>,
}

impl Idle {
    fn open(port: u16, id: &str) -> Idle {
        let mut s = connect(port).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s.write_all(format!("GET /{id} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .expect("write");
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).expect("first answer");
        assert_eq!(r.status, 200);
        assert!(!closes(&r), "kept alive");
        let thread = std::thread::spawn(move || {
            // No request in flight from here on: only wait for the server's end.
            let mut b = [0u8; 64];
            let r = s.read(&mut b).map_err(|e| e.kind());
            (Instant::now(), r)
        });
        Idle { thread }
    }

    /// When the server ended the connection; panics unless it closed it cleanly (end of
    /// stream, no byte, no reset).
    fn closed_at(self) -> Instant {
        let (at, r) = self.thread.join().expect("idle thread");
        assert_eq!(r, Ok(0), "an idle connection must end cleanly");
        at
    }
}

#[test]
fn three_upgrades_in_a_row_lose_no_request_of_any_client() {
    let up = Upstream::start("app");
    let grace = Duration::from_secs(1);
    let mut m = Moat::start_timed("1s", "5s", &route(&up));
    use Kind::*;
    let kinds = [
        Close,
        Close,
        Close,
        Close,
        Hesitant,
        Hesitant,
        KeepAlive,
        KeepAlive,
        Pipelined(4),
        Pipelined(4),
    ];
    let clients = Clients::start(m.port, "u", &kinds);
    let idle: Vec<Idle> = (0..4)
        .map(|i| Idle::open(m.port, &format!("idle-{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut old = Vec::new();
    let mut first = None;
    for _ in 0..3 {
        let called = Instant::now();
        let new = m.upgrade();
        first.get_or_insert((called, Instant::now()));
        old.push(std::mem::replace(&mut m, new));
        // The old process stops accepting 1 s after its SIGQUIT, under load.
        std::thread::sleep(Duration::from_millis(2000));
    }
    let tally = clients.finish();
    eprintln!("{}", tally.summary());
    assert!(tally.answered.len() > 300, "{tally:?}");
    assert!(
        tally.closes > 0,
        "draining processes close kept-alive connections"
    );
    // The idle connections were closed by the first old process when it stopped
    // accepting: not before, cleanly, with nothing in flight.
    let (called, returned) = first.expect("an upgrade");
    for i in idle {
        let at = i.closed_at();
        assert!(
            at >= called + grace && at <= returned + grace + Duration::from_secs(3),
            "idle connection closed {:?} after the upgrade began",
            at - called
        );
    }
    // Clients after that: a new connection to the newest process.
    let mut s = connect(m.port).expect("connect");
    s.write_all(b"GET /idle-after HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("write");
    assert_eq!(
        read_response(&mut s, &mut Vec::new())
            .expect("answer")
            .status,
        200
    );
    drop(s);
    let mut tally = tally;
    tally.answered.extend((0..4).map(|i| format!("idle-{i}")));
    tally.answered.push("idle-after".into());
    assert_nothing_lost(&tally, &up);
    assert_stopped_uncut(old);
}

/// Send `raw` on a new connection in a thread; returns the answers read until the
/// server closed (and how it closed).
fn exchange_later(
    port: u16,
    raw: &'static [u8],
) -> JoinHandle<(Vec<crate::harness::Response>, Result<(), ErrorKind>)> {
    let mut s = connect(port).expect("connect");
    s.write_all(raw).expect("write");
    std::thread::spawn(move || read_until_closed(&mut s))
}

/// Every response on `s` until the server closes; `Err` if it reset the connection.
fn read_until_closed(s: &mut TcpStream) -> (Vec<crate::harness::Response>, Result<(), ErrorKind>) {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        match read_response(s, &mut buf) {
            Ok(r) => out.push(r),
            Err(Failure::ClosedUnanswered) => return (out, Ok(())),
            Err(Failure::Reset(k)) => return (out, Err(k)),
            Err(f) => {
                eprintln!("{f:?}");
                return (out, Err(ErrorKind::Other));
            }
        }
    }
}

fn closes(r: &crate::harness::Response) -> bool {
    r.header("connection") == Some("close")
}

#[test]
fn a_drain_without_a_new_process_answers_every_connection_it_accepted() {
    let app = Upstream::start("app");
    let slow = Upstream::start("slow");
    slow.set(Behavior {
        delay: Duration::from_secs(6),
        ..Behavior::default()
    });
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\n  slow: {{ targets: [\"{}\"], read_timeout: 20s }}\nroutes:\n  - name: slow\n    match: {{ path_prefix: /slow }}\n    upstream: slow\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        app.address(),
        slow.address()
    );
    let mut m = Moat::start_timed("1s", "8s", &body);
    let idle: Vec<Idle> = (0..4)
        .map(|i| Idle::open(m.port, &format!("idle-{i}")))
        .collect();
    use Kind::*;
    let kinds = [
        Close,
        Close,
        Close,
        Close,
        KeepAlive,
        KeepAlive,
        Pipelined(3),
        Pipelined(3),
    ];
    let clients = Clients::start(m.port, "d", &kinds);
    std::thread::sleep(Duration::from_millis(800));
    let quit = Instant::now();
    m.signal("QUIT");
    // An operator sending it again changes nothing (and is told so in the log).
    std::thread::sleep(Duration::from_millis(100));
    m.signal("QUIT");
    // The load balancer takes the instance out once /readyz says so: the clients stop
    // opening connections (the listeners still accept for a while: no new process
    // takes them, Pingora offers them for ~5 s, then grace_period).
    assert!(wait_until(Duration::from_secs(3), || m
        .admin_get("/readyz")
        .status
        == 503));
    let tally = clients.finish();
    eprintln!(
        "{} answered before the instance was taken out",
        tally.answered.len()
    );
    assert!(tally.answered.len() > 50, "{tally:?}");
    // Requests in flight when the listeners stop: a slow one, two pipelined slow ones.
    let slow_one = exchange_later(m.port, b"GET /slow/a HTTP/1.1\r\nHost: h\r\n\r\n");
    let slow_two = exchange_later(
        m.port,
        b"GET /slow/b HTTP/1.1\r\nHost: h\r\n\r\nGET /slow/c HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    // Connections accepted now whose requests come only after the stop: nothing sent,
    // and half a head.
    let mut silent: Vec<TcpStream> = (0..4).map(|_| connect(m.port).expect("connect")).collect();
    let mut partial = connect(m.port).expect("connect");
    partial
        .write_all(b"GET /partial HTTP/1.1\r\nHo")
        .expect("write");
    // The stop: a new connection is refused. `last_open`: when a connection attempt last
    // began that was accepted (the listener was still open after that moment).
    let (mut last_open, mut stopped) = (quit, None);
    assert!(wait_until(Duration::from_secs(12), || {
        let attempt = Instant::now();
        match TcpStream::connect(("127.0.0.1", m.port)) {
            Ok(_) => {
                last_open = attempt;
                false
            }
            Err(_) => {
                stopped = Some(Instant::now());
                true
            }
        }
    }));
    let stopped = stopped.expect("stopped");
    eprintln!("stopped accepting {:?} after SIGQUIT", stopped - quit);
    std::thread::sleep(Duration::from_millis(200));
    for (i, s) in silent.iter_mut().enumerate() {
        s.write_all(format!("GET /silent-{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .expect("write");
    }
    partial.write_all(b"st: h\r\n\r\n").expect("write");
    for s in silent.iter_mut().chain(std::iter::once(&mut partial)) {
        let (answers, end) = read_until_closed(s);
        assert_eq!(end, Ok(()), "closed cleanly");
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].status, 200);
        assert!(closes(&answers[0]), "answered with Connection: close");
    }
    // The idle connections ended when the listeners stopped: not before (the listener
    // closes a moment after the stop itself), not at the end of shutdown_timeout (8 s),
    // cleanly.
    for i in idle {
        let at = i.closed_at();
        assert!(
            at >= quit + Duration::from_secs(1) && at + Duration::from_secs(1) >= last_open,
            "idle connection closed {:?} after SIGQUIT, the listener open {:?} after",
            at - quit,
            last_open - quit
        );
        assert!(
            at <= stopped + Duration::from_secs(3),
            "idle connection closed {:?} after the stop was seen",
            at - stopped
        );
    }
    // The slow requests finish after the stop, and close their connections; the second
    // pipelined one was never read (the client sends it again elsewhere).
    let (answers, end) = slow_one.join().expect("thread");
    assert_eq!(end, Ok(()));
    assert_eq!(answers.len(), 1);
    assert!(answers[0].status == 200 && closes(&answers[0]));
    let (answers, end) = slow_two.join().expect("thread");
    assert_eq!(end, Ok(()), "closed cleanly after the first answer");
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].status == 200 && closes(&answers[0]));
    let slow_ids: Vec<_> = received(&slow).into_keys().collect();
    assert_eq!(slow_ids.len(), 2, "{slow_ids:?}");
    assert!(slow_ids.contains(&"slow/a".into()) && slow_ids.contains(&"slow/b".into()));
    let mut tally = tally;
    tally.answered.extend((0..4).map(|i| format!("idle-{i}")));
    tally.answered.extend((0..4).map(|i| format!("silent-{i}")));
    tally.answered.push("partial".into());
    assert_nothing_lost(&tally, &app);
    // Nothing left: the process exits well before shutdown_timeout.
    assert!(
        wait_until(Duration::from_secs(3), || m.exited()),
        "{}",
        m.logs()
    );
    assert!(m.logs().contains("SIGQUIT again"), "{}", m.logs());
}

#[test]
fn keep_alive_clients_sending_across_upgrades_with_grace_period_0s_lose_no_request() {
    let up = Upstream::start("app");
    // No grace period: the old process stops accepting a moment after SIGQUIT, while
    // connections it answered just before wait for their clients' next requests.
    let mut m = Moat::start_timed("0s", "5s", &route(&up));
    use Kind::*;
    let kinds = [
        Posting(10),
        Posting(10),
        Posting(10),
        Posting(10),
        Posting(3),
        Posting(3),
        KeepAlive,
        KeepAlive,
    ];
    let clients = Clients::start(m.port, "k", &kinds);
    std::thread::sleep(Duration::from_millis(500));
    let mut old = Vec::new();
    for _ in 0..2 {
        let new = m.upgrade();
        old.push(std::mem::replace(&mut m, new));
        std::thread::sleep(Duration::from_millis(1500));
    }
    let tally = clients.finish();
    eprintln!("{}", tally.summary());
    assert_nothing_lost(&tally, &up);
    assert!(tally.answered.len() > 200, "{tally:?}");
    assert!(
        tally.closes >= 2,
        "draining processes close kept-alive connections"
    );
    for r in up.traffic().iter().filter(|r| r.method == "POST") {
        let id = r.target.trim_start_matches('/');
        assert_eq!(r.body, super::post_body(id).as_bytes(), "{id}");
    }
    assert_stopped_uncut(old);
}

#[test]
fn while_draining_a_request_pipelined_behind_an_answer_that_closes_does_not_reset_it() {
    let up = Upstream::start("app");
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    up.set(Behavior {
        body: body.clone(),
        ..Behavior::default()
    });
    let m = Moat::start_timed("20s", "5s", &route(&up));
    m.signal("QUIT");
    assert!(wait_until(Duration::from_secs(3), || m
        .admin_get("/readyz")
        .status
        == 503));
    for round in 0..3 {
        let mut s = connect(m.port).expect("connect");
        s.write_all(format!("GET /big-{round} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .expect("write");
        // The answer (1 MiB) fits in the socket buffers: moat writes it all and closes
        // the connection (draining) before this client, a slow or far one, reads it. A
        // second request pipelined behind the first arrives meanwhile, in two parts
        // (Pingora reads the first while it waits on the upstream): it is never
        // answered (the client sends it again elsewhere), and it must not turn the close
        // into a reset, which throws away what of the answer the server's kernel still
        // holds.
        std::thread::sleep(Duration::from_millis(100));
        let sent = s
            .write_all(format!("GET /again-{round} HTTP/1.1\r\n").as_bytes())
            .and_then(|()| {
                std::thread::sleep(Duration::from_millis(50));
                s.write_all(b"Host: h\r\n\r\n")
            });
        assert!(
            sent.is_ok(),
            "round {round}: the connection was reset: {sent:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        let mut got = Vec::new();
        let end = s.read_to_end(&mut got).map(|_| ()).map_err(|e| e.kind());
        assert_eq!(
            end,
            Ok(()),
            "round {round}: {} bytes, then a reset",
            got.len()
        );
        let (r, used) = crate::harness::client::parse_one(&got)
            .unwrap_or_else(|| panic!("round {round}: {} bytes of the answer", got.len()));
        assert_eq!(used, got.len(), "nothing after it");
        assert_eq!(r.status, 200);
        assert!(closes(&r), "answered with Connection: close");
        assert!(r.body == body, "round {round}: the body arrived altered");
    }
    let targets: Vec<String> = up.traffic().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/big-0", "/big-1", "/big-2"]);
}
