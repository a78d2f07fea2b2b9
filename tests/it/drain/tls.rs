//! TLS clients across graceful upgrades and drains: a connection accepted before the
//! listeners stopped is counted by the drain from its accept, so one whose ClientHello
//! comes late (lost and sent again, a slow network) still gets its handshake and its
//! answer; one that never sends anything holds the drain until its ClientHello is
//! overdue (`header_timeout`) at most, or the drain ends (`shutdown_timeout`).

use super::{
    assert_nothing_lost, assert_stopped_uncut, closes, connect, get, read_response, route, Clients,
    Failure, Tally,
};
use crate::harness::moat::temp_dir;
use crate::harness::tls::{ca, leaf};
use crate::harness::{wait_until, Moat, Upstream};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The name the test certificate is for (and the clients send as SNI).
const NAME: &str = "a.example.com";

/// The `tls:` block of a listener serving a fresh certificate for [`NAME`].
fn tls_listener() -> String {
    let dir = temp_dir("drain-tls");
    let (c, k) = leaf(&ca(), &[NAME]).write(&dir, "a");
    format!(
        "    tls:\n      certificates:\n        - {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        c.display(),
        k.display()
    )
}

/// A moat with a TLS listener proxying everything to `up`.
fn start(grace: &str, shutdown: &str, limits: &str, up: &Upstream) -> Moat {
    Moat::start_timed_with(grace, shutdown, limits, &tls_listener(), &route(up))
}

fn connector() -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls()).expect("connector");
    // What is tested is the connection's fate, not the certificate.
    b.set_verify(SslVerifyMode::NONE);
    b.build()
}

/// The TLS handshake on `tcp`, accepted by moat earlier.
fn handshake(tls: &SslConnector, tcp: TcpStream) -> Result<SslStream<TcpStream>, Failure> {
    tls.connect(NAME, tcp)
        .map_err(|e| Failure::Handshake(e.to_string()))
}

/// Read `s` to its end after an answer: `Err` if moat reset it. (Whether moat ends its
/// side with a TLS close_notify or only a TCP FIN, the answer was whole.)
fn read_to_close(s: &mut SslStream<TcpStream>) -> Result<(), ErrorKind> {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            Err(e.kind())
        }
        Err(_) => Ok(()),
    }
}

/// A client opening a new TLS connection for every request (`Connection: close`), and
/// waiting `hello_after` between its TCP connection and its ClientHello: 0 for most
/// clients, tens of milliseconds for a far one, over a second for one whose ClientHello
/// was lost and sent again.
fn tls_client(port: u16, hello_after: Duration) -> impl FnOnce(&str, &AtomicBool) -> Tally {
    move |tag, stop| {
        let tls = connector();
        let mut t = Tally::default();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let id = format!("{tag}-{n}");
            let tcp = match connect(port) {
                Ok(s) => s,
                Err(f) => {
                    t.failures.push((id, f));
                    continue;
                }
            };
            t.connections += 1;
            std::thread::sleep(hello_after);
            let mut s = match handshake(&tls, tcp) {
                Ok(s) => s,
                Err(f) => {
                    t.failures.push((id, f));
                    continue;
                }
            };
            if let Err(e) = s.write_all(&get(&id, true)) {
                t.failures.push((id, Failure::Reset(e.kind())));
                continue;
            }
            match read_response(&mut s, &mut Vec::new()) {
                Ok(r) if (200..300).contains(&r.status) => {
                    t.closes += usize::from(closes(&r));
                    t.answered.push(id.clone());
                }
                Ok(r) => t.failures.push((id.clone(), Failure::Status(r.status))),
                Err(f) => t.failures.push((id.clone(), f)),
            }
            if let Err(k) = read_to_close(&mut s) {
                t.failures.push((format!("{id}-close"), Failure::Reset(k)));
            }
        }
        t
    }
}

#[test]
fn three_upgrades_in_a_row_lose_no_request_of_tls_clients_with_a_new_connection_each() {
    let up = Upstream::start("app");
    let mut m = start("1s", "5s", "header_timeout: 5s", &up);
    let ms = Duration::from_millis;
    // Six clients whose ClientHello comes 1.5 s after their connection: at every stop
    // some were accepted by the old process in the half second before it, and send their
    // ClientHello after the drain's first second without connections.
    let delays = [0, 0, 0, 0, 30, 30, 1500, 1500, 1500, 1500, 1500, 1500];
    let port = m.port;
    let clients = Clients::spawn(
        "t",
        delays.iter().map(|&d| {
            // Started 250 ms apart, the slow ones are spread over their cycle.
            std::thread::sleep(ms(d / 6));
            tls_client(port, ms(d))
        }),
    );
    std::thread::sleep(ms(1000));
    let mut old = Vec::new();
    for _ in 0..3 {
        let new = m.upgrade();
        old.push(std::mem::replace(&mut m, new));
        std::thread::sleep(ms(2500));
    }
    // The slow ones' connections to the old processes are answered by them.
    std::thread::sleep(ms(1000));
    let tally = clients.finish();
    eprintln!("{}", tally.summary());
    assert!(tally.answered.len() > 100, "{tally:?}");
    assert_nothing_lost(&tally, &up);
    assert_stopped_uncut(old);
}

/// SIGQUIT `m` (no new process: the listeners stop once Pingora gave up offering them,
/// ~5 s), and open a connection every 25 ms until one is refused. Returns the last `keep`
/// opened at least 300 ms before the stop was seen, with when each attempt began, and
/// when the stop was seen. Those opened later are closed: one of them may still have been
/// in the kernel's queue when the listener closed, never accepted by moat (whose accept
/// loop can lag behind on a busy machine).
fn quit_and_connect_until_stopped(m: &Moat, keep: usize) -> (Vec<(Instant, TcpStream)>, Instant) {
    const MARGIN: Duration = Duration::from_millis(300);
    m.signal("QUIT");
    let mut open = VecDeque::new();
    let limit = Instant::now() + Duration::from_secs(15);
    while Instant::now() < limit {
        let attempt = Instant::now();
        match TcpStream::connect(("127.0.0.1", m.port)) {
            Ok(s) => {
                open.push_back((attempt, s));
                // 20 attempts span more than MARGIN.
                if open.len() > keep + 20 {
                    open.pop_front();
                }
            }
            Err(_) => {
                let stopped = Instant::now();
                open.retain(|(at, _)| *at + MARGIN <= stopped);
                let old = open.len().saturating_sub(keep);
                open.drain(..old);
                return (open.into(), stopped);
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the listeners never stopped:\n{}", m.logs());
}

#[test]
fn tls_connections_accepted_before_the_stop_get_their_late_handshake_and_an_answer() {
    let up = Upstream::start("app");
    let mut m = start("0s", "20s", "header_timeout: 15s", &up);
    // Accepted long before the stop, and in the half second before it; nothing sent.
    let early: Vec<TcpStream> = (0..3).map(|_| connect(m.port).expect("connect")).collect();
    let (last, stopped) = quit_and_connect_until_stopped(&m, 3);
    assert_eq!(last.len(), 3);
    // Their ClientHellos come well after the drain's first second without connections
    // (a client sending its ClientHello again after a loss, a slow network).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!m.exited(), "the drain ended with handshakes to come");
    let tls = connector();
    let conns = early
        .into_iter()
        .chain(last.into_iter().map(|(_, s)| s))
        .enumerate();
    for (i, tcp) in conns {
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut s = handshake(&tls, tcp).unwrap_or_else(|f| panic!("{i}: {f:?}"));
        // A keep-alive request: the answer closes because the process is draining.
        s.write_all(&get(&format!("late-{i}"), false))
            .expect("write");
        let r = read_response(&mut s, &mut Vec::new()).unwrap_or_else(|f| panic!("{i}: {f:?}"));
        assert_eq!(r.status, 200, "{i}");
        assert!(closes(&r), "{i}: answered with Connection: close");
        assert_eq!(read_to_close(&mut s), Ok(()), "{i}: closed, not reset");
    }
    let tally = Tally {
        answered: (0..6).map(|i| format!("late-{i}")).collect(),
        ..Tally::default()
    };
    assert_nothing_lost(&tally, &up);
    // Nothing left: the process exits at once, well before shutdown_timeout.
    let answered = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || m.exited()),
        "{}",
        m.logs()
    );
    eprintln!(
        "exited {:?} after the last answer, {:?} after the stop",
        answered.elapsed(),
        stopped.elapsed()
    );
    let logs = m.logs();
    assert!(logs.contains("drained"), "{logs}");
    assert!(
        !logs.contains("shutdown_timeout ("),
        "nothing was ended: {logs}"
    );
}

/// How a drain without a new process ended for a TLS connection opened just before the
/// stop that never sent a byte: when that connection was closed by moat and when the
/// process exited.
struct Silent {
    opened: Instant,
    stopped: Instant,
    closed: Instant,
    exited: Instant,
    logs: String,
}

fn silent_tls_connection_through_a_drain(shutdown: &str, limits: &str) -> Silent {
    let up = Upstream::start("app");
    let mut m = start("0s", shutdown, limits, &up);
    let (mut last, stopped) = quit_and_connect_until_stopped(&m, 1);
    let (opened, mut s) = last.pop().expect("a connection accepted before the stop");
    s.set_read_timeout(Some(Duration::from_secs(40))).ok();
    let mut b = [0u8; 16];
    // Closed by moat: an end of stream or a reset, no byte.
    let got = s.read(&mut b);
    let closed = Instant::now();
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    assert!(
        wait_until(Duration::from_secs(40), || m.exited()),
        "{}",
        m.logs()
    );
    Silent {
        opened,
        stopped,
        closed,
        exited: Instant::now(),
        logs: m.logs(),
    }
}

#[test]
fn a_tls_connection_that_sends_nothing_holds_a_drain_until_header_timeout_or_shutdown_timeout() {
    // Both cases at once (each waits ~5 s for Pingora to give up the handover).
    let by_hello = std::thread::spawn(|| {
        silent_tls_connection_through_a_drain(
            "30s",
            "header_timeout: 3s, max_connections_per_ip: 50",
        )
    });
    let by_end =
        std::thread::spawn(|| silent_tls_connection_through_a_drain("2s", "header_timeout: 20s"));
    let secs = Duration::from_secs;
    // header_timeout (3 s) first: the connection's ClientHello is overdue 3 s after it
    // was accepted; it is closed then, not at the drain's first second without
    // connections, and the process exits at once, long before shutdown_timeout (30 s).
    let s = by_hello.join().expect("thread");
    eprintln!(
        "header_timeout: closed {:?}, exited {:?} after the stop",
        s.closed - s.stopped,
        s.exited - s.stopped
    );
    assert!(s.closed >= s.opened + secs(3), "{:?}", s.closed - s.opened);
    assert!(s.exited <= s.stopped + secs(3) + secs(3), "{}", s.logs);
    assert!(s.logs.contains("drained"), "{}", s.logs);
    assert!(!s.logs.contains("shutdown_timeout ("), "{}", s.logs);
    // shutdown_timeout (2 s) first: the wait for the ClientHello ends with the drain,
    // without being cut at the very end.
    let s = by_end.join().expect("thread");
    eprintln!(
        "shutdown_timeout: closed {:?}, exited {:?} after the stop",
        s.closed - s.stopped,
        s.exited - s.stopped
    );
    assert!(
        s.closed >= s.stopped + Duration::from_millis(1500),
        "{:?}",
        s.closed - s.stopped
    );
    assert!(s.exited <= s.stopped + secs(2) + secs(3), "{}", s.logs);
    assert!(s.logs.contains("shutdown_timeout ("), "{}", s.logs);
    assert!(!s.logs.contains("still open"), "{}", s.logs);
}
