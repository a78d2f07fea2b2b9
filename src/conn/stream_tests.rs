//! [`HeadDeadline`] over an in-memory pipe, in real time with short limits.

use super::drain::LINGERING_CLOSE;
use super::*;
use crate::drain::QUIET;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const LIMIT: Duration = Duration::from_millis(300);

fn policy() -> Arc<Policy> {
    policy_for(LIMIT)
}

fn policy_for(limit: Duration) -> Arc<Policy> {
    let counter = |name: &str| prometheus::IntCounter::new(name, "test").expect("counter");
    Arc::new(Policy {
        limit,
        partial_head: counter("partial"),
        no_request: counter("none"),
        drain: crate::drain::Drain::new(),
    })
}

fn pair() -> (DuplexStream, HeadDeadline) {
    pair_with(&policy())
}

fn pair_with(policy: &Arc<Policy>) -> (DuplexStream, HeadDeadline) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    (
        client,
        HeadDeadline::new(Box::new(server), Arc::clone(policy)),
    )
}

/// Read until `want` bytes arrived, the stream ends or a read fails.
async fn read_n(s: &mut HeadDeadline, want: usize) -> (usize, io::Result<()>) {
    let mut got = 0;
    let mut buf = [0u8; 256];
    while got < want {
        match s.read(&mut buf).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got += n,
            Err(e) => return (got, Err(e)),
        }
    }
    (got, Ok(()))
}

/// Write `bytes` one at a time, `gap` apart, ignoring a closed pipe.
fn dribble(mut c: DuplexStream, bytes: &'static [u8], gap: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if c.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
}

#[tokio::test]
async fn a_dribbled_head_fails_at_the_deadline() {
    let (c, mut s) = pair();
    let start = Instant::now();
    dribble(
        c,
        b"GET / HTTP/1.1\r\nHost: example\r\nX-Long: aaaaaaaaaaaaaaa\r\n\r\n",
        Duration::from_millis(30),
    );
    let (got, res) = read_n(&mut s, 1000).await;
    let err = res.expect_err("the head must time out");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(got > 3 && got < 40, "{got} bytes read");
    assert_eq!(s.policy().partial_head.get(), 1);
    assert_eq!(s.policy().no_request.get(), 0);
    let took = start.elapsed();
    assert!(took >= LIMIT && took < LIMIT * 3, "{took:?}");
}

#[tokio::test]
async fn nothing_sent_ends_the_stream_quietly() {
    let (_c, mut s) = pair();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).await.expect("no error"), 0);
    assert!(start.elapsed() >= LIMIT);
    // And stays ended.
    assert_eq!(s.read(&mut buf).await.expect("no error"), 0);
    assert_eq!(s.policy().no_request.get(), 1);
    assert_eq!(s.policy().partial_head.get(), 0);
}

#[tokio::test]
async fn a_slow_body_after_a_whole_head_is_not_timed() {
    let (mut c, mut s) = pair();
    let head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    c.write_all(head).await.expect("write");
    assert_eq!(read_n(&mut s, head.len()).await.0, head.len());
    dribble(c, b"0123456789", Duration::from_millis(80));
    let (got, res) = read_n(&mut s, 10).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(got, 10);
}

#[tokio::test]
async fn the_next_head_is_timed_from_its_first_byte() {
    let (mut c, mut s) = pair();
    let head = b"GET /1 HTTP/1.1\r\n\r\n";
    c.write_all(head).await.expect("write");
    assert_eq!(read_n(&mut s, head.len()).await.0, head.len());
    s.next_head();
    // Idle longer than the limit, then a whole head: fine.
    let second = b"GET /2 HTTP/1.1\r\n\r\n";
    tokio::spawn(async move {
        tokio::time::sleep(LIMIT * 2).await;
        let _ = c.write_all(second).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        dribble(
            c,
            b"GET /3 HTTP/1.1\r\nHost: a-slow-client\r\n\r\n",
            Duration::from_millis(40),
        );
    });
    let (got, res) = read_n(&mut s, second.len()).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(got, second.len());
    // The third head is dribbled: cut about LIMIT after its first byte.
    s.next_head();
    let (_, res) = read_n(&mut s, 1000).await;
    assert_eq!(res.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
}

#[tokio::test]
async fn writes_and_identity_pass_through() {
    let (mut c, mut s) = pair();
    s.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
        .await
        .expect("write");
    s.flush().await.expect("flush");
    let mut buf = [0u8; 19];
    c.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(s.selected_alpn_proto(), None);
    assert!(s.get_ssl_digest().is_none());
}

#[tokio::test]
async fn a_peek_is_bounded_by_the_head_deadline() {
    // Nothing sent.
    let (_c, mut s) = pair();
    let start = Instant::now();
    let mut buf = [0u8; 24];
    let err = s.try_peek(&mut buf).await.expect_err("must time out");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let took = start.elapsed();
    assert!(took >= LIMIT && took < LIMIT * 3, "{took:?}");
    assert_eq!(
        (s.policy().no_request.get(), s.policy().partial_head.get()),
        (1, 0)
    );
    assert_eq!(s.read(&mut buf).await.expect("ended"), 0);
    // A whole request shorter than the peek.
    let (mut c, mut s) = pair();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let err = s.try_peek(&mut buf).await.expect_err("must time out");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        (s.policy().no_request.get(), s.policy().partial_head.get()),
        (0, 1)
    );
}

#[tokio::test]
async fn peeked_bytes_are_read_again_and_scanned() {
    let (mut c, mut s) = pair();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    c.write_all(preface).await.expect("write");
    c.write_all(b"frames").await.expect("write");
    let mut buf = [0u8; 24];
    assert!(s.try_peek(&mut buf).await.expect("peek"));
    assert_eq!(&buf, preface);
    let mut all = [0u8; 30];
    s.read_exact(&mut all).await.expect("read");
    assert_eq!(&all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nframes");
    // The preface was the head: what follows is not timed.
    dribble(c, b"0123456789", Duration::from_millis(80));
    let (got, res) = read_n(&mut s, 10).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(got, 10);
}

#[tokio::test]
async fn a_head_parsed_elsewhere_ends_the_timing() {
    // As with a pipelined request whose head Pingora took from bytes read before: the
    // request is announced (`next_head`), then parsed (`head_parsed`) with no read here.
    let (mut c, mut s) = pair();
    let head = b"GET /1 HTTP/1.1\r\n\r\n";
    c.write_all(head).await.expect("write");
    assert_eq!(read_n(&mut s, head.len()).await.0, head.len());
    s.next_head();
    s.head_parsed(Body::Empty).expect("no body");
    // Its body, slowly, with no head end in it: not timed.
    dribble(c, b"0123456789", Duration::from_millis(80));
    let (got, res) = read_n(&mut s, 10).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(got, 10);
    // The last word wins: parsed, then over and waiting for the next head, which is timed.
    let (c, mut s) = pair();
    s.head_parsed(Body::Empty).expect("no body");
    s.next_head();
    dribble(
        c,
        b"GET /3 HTTP/1.1\r\nHost: a-slow-client\r\n\r\n",
        Duration::from_millis(40),
    );
    let (_, res) = read_n(&mut s, 1000).await;
    assert_eq!(res.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
}

#[tokio::test]
async fn a_keep_alive_wait_ends_after_the_idle_timeout() {
    let (mut c, mut s) = pair();
    s.set_idle_timeout(1);
    let head = b"GET /1 HTTP/1.1\r\n\r\n";
    // The first head has to wait: the connection's timer is set to its deadline.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = c.write_all(head).await;
        // Hold the pipe open, sending nothing more.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(c);
    });
    assert_eq!(read_n(&mut s, head.len()).await.0, head.len());
    // The response takes longer than the head deadline the timer was set to: the wait
    // that follows still gets its whole idle timeout.
    tokio::time::sleep(LIMIT * 2).await;
    s.next_head();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).await.expect("a quiet end"), 0);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // Not a head timeout.
    assert_eq!(s.policy().no_request.get(), 0);
    assert_eq!(s.policy().partial_head.get(), 0);
}

#[tokio::test]
async fn without_an_idle_timeout_a_keep_alive_wait_is_not_timed() {
    let (mut c, mut s) = pair();
    let head = b"GET /1 HTTP/1.1\r\n\r\n";
    c.write_all(head).await.expect("write");
    assert_eq!(read_n(&mut s, head.len()).await.0, head.len());
    s.next_head();
    let mut buf = [0u8; 16];
    let waited = tokio::time::timeout(LIMIT * 3, s.read(&mut buf)).await;
    assert!(waited.is_err(), "the wait ended: {waited:?}");
}

const CHUNKED_HEAD: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test]
async fn a_malformed_chunked_body_read_with_its_head_is_reported_by_head_parsed() {
    let (mut c, mut s) = pair();
    let bytes = [CHUNKED_HEAD, b"5\r\nhelloXX0\r\n\r\n"].concat();
    c.write_all(&bytes).await.expect("write");
    let mut buf = [0u8; 256];
    assert_eq!(s.read(&mut buf).await.expect("read"), bytes.len());
    assert!(s.head_parsed(Body::Chunked).is_err());
}

#[tokio::test]
async fn a_malformed_chunked_body_read_later_fails_the_read() {
    let (mut c, mut s) = pair();
    c.write_all(&[CHUNKED_HEAD, b"5\r\nhe"].concat())
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.expect("head read");
    assert_eq!(n, CHUNKED_HEAD.len() + 5);
    s.head_parsed(Body::Chunked).expect("fine so far");
    c.write_all(b"llo\r\n5\r\nworld").await.expect("write");
    assert_eq!(s.read(&mut buf).await.expect("valid"), 13);
    c.write_all(b"\r\n\r\n").await.expect("write");
    let err = s.read(&mut buf).await.expect_err("empty size line");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // And every read after it.
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let err = s.read(&mut buf).await.expect_err("still failed");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_pipelined_chunked_request_is_validated_after_the_previous_one() {
    let (mut c, mut s) = pair();
    let first = b"GET /1 HTTP/1.1\r\n\r\n";
    let bytes = [
        first.as_slice(),
        CHUNKED_HEAD,
        b"5\r\nhello\r\n0\r\nX\r\n\r\n",
    ]
    .concat();
    c.write_all(&bytes).await.expect("write");
    let mut buf = [0u8; 256];
    assert_eq!(s.read(&mut buf).await.expect("read"), bytes.len());
    s.head_parsed(Body::Empty).expect("no body");
    s.next_head();
    // Pingora parses the next head from what it read already: no read here.
    assert!(s.head_parsed(Body::Chunked).is_err(), "trailer without ':'");
}

#[tokio::test]
async fn h2c_connections_are_not_followed() {
    let (mut c, mut s) = pair();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 24];
    assert!(s.try_peek(&mut buf).await.expect("peek"));
    // HTTP/2 frames that would be a malformed chunked body, were they one.
    c.write_all(b"\r\n\r\n\0\0\x04\r\n").await.expect("write");
    let (n, read) = read_n(&mut s, 32).await;
    assert!(n >= 32 && read.is_ok(), "{n} {read:?}");
    let framing = s.framing.get_mut().expect("not poisoned");
    assert!(!framing.followed());
    // An HTTP/1 connection is.
    let (mut c, mut s) = pair();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let (n, read) = read_n(&mut s, 18).await;
    assert!(n == 18 && read.is_ok(), "{n} {read:?}");
    assert!(s.framing.get_mut().expect("not poisoned").followed());
}

/// Spawn a read of whatever comes next on `s` (up to 256 bytes), the stream coming back
/// with the outcome.
fn read_later(mut s: HeadDeadline) -> tokio::task::JoinHandle<(HeadDeadline, io::Result<usize>)> {
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        let r = s.read(&mut buf).await;
        (s, r)
    })
}

#[tokio::test]
async fn when_accepting_stops_only_connections_idle_between_requests_end() {
    let long = policy_for(Duration::from_secs(30));
    let drain = Arc::clone(&long.drain);
    // One between requests, one waiting for its first head, one with a head begun.
    let (mut idle_c, mut idle) = pair_with(&long);
    let head = b"GET / HTTP/1.1\r\n\r\n";
    idle_c.write_all(head).await.expect("write");
    assert_eq!(read_n(&mut idle, head.len()).await.0, head.len());
    idle.next_head();
    let (mut first_c, first) = pair_with(&long);
    let (mut begun_c, mut begun) = pair_with(&long);
    begun_c.write_all(b"GET /slow HT").await.expect("write");
    let mut buf = [0u8; 64];
    assert_eq!(begun.read(&mut buf).await.expect("read"), 12);
    assert_eq!(drain.live(), 3);
    let (idle, first, begun) = (read_later(idle), read_later(first), read_later(begun));
    tokio::time::sleep(Duration::from_millis(50)).await;
    drain.stop_accepting();
    let (idle, r) = tokio::time::timeout(Duration::from_secs(5), idle)
        .await
        .expect("the idle one ends (once idle for QUIET)")
        .expect("task");
    assert_eq!(r.expect("no error"), 0, "end of stream");
    drop(idle);
    assert_eq!(drain.live(), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!first.is_finished() && !begun.is_finished(), "still read");
    // Their requests arrive: read as usual.
    first_c.write_all(head).await.expect("write");
    begun_c.write_all(b"TP/1.1\r\n\r\n").await.expect("write");
    let (_first, r) = first.await.expect("task");
    assert_eq!(r.expect("read"), head.len());
    let (_begun, r) = begun.await.expect("task");
    assert_eq!(r.expect("read"), 10);
}

#[tokio::test]
async fn when_shutdown_timeout_is_over_every_waiting_read_ends() {
    let long = policy_for(Duration::from_secs(30));
    let drain = Arc::clone(&long.drain);
    // A request whose head was read (its response streaming), and one not begun.
    let (mut c, mut streaming) = pair_with(&long);
    let head = b"GET /events HTTP/1.1\r\n\r\n";
    c.write_all(head).await.expect("write");
    assert_eq!(read_n(&mut streaming, head.len()).await.0, head.len());
    let (_c2, waiting) = pair_with(&long);
    let (streaming, waiting) = (read_later(streaming), read_later(waiting));
    tokio::time::sleep(Duration::from_millis(50)).await;
    drain.stop_accepting();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!streaming.is_finished() && !waiting.is_finished());
    drain.end();
    let (_s, r) = streaming.await.expect("task");
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(io::ErrorKind::ConnectionAborted)
    );
    let (_w, r) = waiting.await.expect("task");
    assert_eq!(r.expect("nothing was sent: a quiet end"), 0);
}

/// A connection whose first request was read, waiting for its next one.
async fn between_requests(policy: &Arc<Policy>) -> (DuplexStream, HeadDeadline) {
    let (mut c, mut s) = pair_with(policy);
    let head = b"GET / HTTP/1.1\r\n\r\n";
    c.write_all(head).await.expect("write");
    assert_eq!(read_n(&mut s, head.len()).await.0, head.len());
    s.next_head();
    (c, s)
}

#[tokio::test(start_paused = true)]
async fn at_the_stop_a_connection_answered_a_moment_ago_may_still_send_its_next_request() {
    let long = policy_for(Duration::from_secs(30));
    let drain = Arc::clone(&long.drain);
    let (_old_c, old) = between_requests(&long).await;
    let old = read_later(old);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Two answered 200 ms before the stop: one whose client sends its next request right
    // after the stop, one whose client sends nothing more.
    let (mut next_c, next) = between_requests(&long).await;
    let (_silent_c, silent) = between_requests(&long).await;
    let (next, silent) = (read_later(next), read_later(silent));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = Instant::now();
    drain.stop_accepting();
    // Idle for 5 s: ended at once.
    let (_old, r) = old.await.expect("task");
    assert_eq!(r.expect("a quiet end"), 0);
    assert!(stop.elapsed() < Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished() && !silent.is_finished());
    let head = b"GET /next HTTP/1.1\r\n\r\n";
    next_c.write_all(head).await.expect("write");
    let (_next, r) = next.await.expect("task");
    assert_eq!(r.expect("read"), head.len());
    // Nothing sent: ended once idle for QUIET.
    let (_silent, r) = silent.await.expect("task");
    assert_eq!(r.expect("a quiet end"), 0);
    let idle = stop.elapsed() + Duration::from_millis(200);
    assert!(
        idle >= QUIET && idle < QUIET + Duration::from_millis(20),
        "{idle:?}"
    );
}

#[tokio::test]
async fn a_peek_waiting_for_its_bytes_ends_when_shutdown_timeout_is_over() {
    let long = policy_for(Duration::from_secs(30));
    let drain = Arc::clone(&long.drain);
    let (mut c, mut s) = pair_with(&long);
    c.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let peek = tokio::spawn(async move {
        let mut buf = [0u8; 24];
        let r = s.try_peek(&mut buf).await;
        (s, r)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drain.stop_accepting();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !peek.is_finished(),
        "waiting for its first head: still read"
    );
    drain.end();
    let (_s, r) = tokio::time::timeout(Duration::from_secs(5), peek)
        .await
        .expect("woken when shutdown_timeout is over")
        .expect("task");
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(io::ErrorKind::ConnectionAborted)
    );
}

#[tokio::test]
async fn while_draining_a_closed_connection_reads_and_drops_what_its_client_still_sends() {
    let policy = policy();
    let shut_down = |mut s: HeadDeadline| {
        tokio::spawn(async move {
            let start = Instant::now();
            Shutdown::shutdown(&mut s).await;
            start.elapsed()
        })
    };
    // Not draining: closed at once.
    let (_c, s) = between_requests(&policy).await;
    let took = shut_down(s).await.expect("task");
    assert!(took < Duration::from_millis(50), "{took:?}");
    policy.drain.start_draining();
    // A pipelining client: what it sends after the answer (more than the pipe holds) is
    // read, until it closes.
    let (mut c, s) = between_requests(&policy).await;
    let shut = shut_down(s);
    tokio::time::timeout(Duration::from_secs(5), c.write_all(&[b'x'; 256 * 1024]))
        .await
        .expect("read by the server")
        .expect("write");
    drop(c);
    let took = shut.await.expect("task");
    assert!(took < Duration::from_millis(900), "{took:?}");
    // A client that neither sends nor closes: given LINGERING_CLOSE.
    let (_c, s) = between_requests(&policy).await;
    let took = shut_down(s).await.expect("task");
    assert!(
        took >= LINGERING_CLOSE && took < LINGERING_CLOSE * 2,
        "{took:?}"
    );
}
