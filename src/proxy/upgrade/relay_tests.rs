//! Relay tests over real TCP connections on 127.0.0.1.

use super::super::frames::frame;
use super::*;
use crate::drain::Drain;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Two connected pairs: (`client`, `a`) and (`b`, `server`). The relay runs between `a`
/// and `b`; the test plays `client` and `server`.
async fn pairs() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l1.local_addr().unwrap()).await.unwrap();
    let (a, _) = l1.accept().await.unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
    let (server, _) = l2.accept().await.unwrap();
    (client, a, b, server)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("bounded in time")
}

/// A relay between `a` and `b` (idle limit `idle`), counted in `drain`.
fn spawn_relay(
    mut a: TcpStream,
    mut b: TcpStream,
    idle: Duration,
    drain: &Arc<Drain>,
) -> tokio::task::JoinHandle<(Traffic, End)> {
    let mut tracked = drain.track(0);
    tokio::spawn(async move {
        let mut t = Traffic::default();
        let frames = Default::default();
        let end = relay(&mut a, &mut b, idle, &mut t, &mut tracked, frames).await;
        (t, end)
    })
}

#[tokio::test]
async fn bytes_go_both_ways_then_half_closes_end_it() {
    let (mut client, a, b, mut server) = pairs().await;
    let task = spawn_relay(a, b, Duration::from_secs(30), &Drain::new());
    bounded(async {
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        server.write_all(b"world!").await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"world!");
        // The client ends its side: the server sees the end, and can still answer.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.write_all(b"after").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");
        assert!(!task.is_finished(), "one direction is still open");
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let (t, end) = task.await.unwrap();
        assert_eq!((t.a_to_b, t.b_to_a, end), (5, 11, End::Closed));
    })
    .await;
}

#[tokio::test]
async fn a_slow_reader_gets_every_byte_in_order() {
    let (mut client, a, b, mut server) = pairs().await;
    let task = spawn_relay(a, b, Duration::from_secs(30), &Drain::new());
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    bounded(async {
        // Let the buffers fill up so the relay has to hold bytes back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::with_capacity(data.len());
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{} bytes arrived, altered", got.len());
        drop(server);
        let _client = writer.await.unwrap();
        let (t, end) = task.await.unwrap();
        assert_eq!((t.a_to_b, end), (data.len() as u64, End::Closed));
    })
    .await;
}

#[tokio::test]
async fn nothing_moving_for_the_idle_limit_ends_it() {
    let (mut client, a, b, mut server) = pairs().await;
    let started = Instant::now();
    let task = spawn_relay(a, b, Duration::from_millis(600), &Drain::new());
    bounded(async {
        // Traffic before the limit keeps it open.
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        server.read_exact(&mut got).await.unwrap();
        let (t, end) = task.await.unwrap();
        assert_eq!((t.a_to_b, end), (1, End::Idle));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(950),
            "ended after {took:?}, before the idle limit after the last byte"
        );
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "connection closed");
    })
    .await;
}

#[tokio::test]
async fn a_reset_ends_it_with_an_error() {
    let (client, a, b, mut server) = pairs().await;
    let task = spawn_relay(a, b, Duration::from_secs(30), &Drain::new());
    bounded(async {
        // Unread data at close makes the kernel send a reset.
        // Linger 0 does not block on drop; the deprecation is about the other values.
        #[allow(deprecated)]
        client.set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        let (_, end) = task.await.unwrap();
        assert_eq!(end, End::Error(io::ErrorKind::ConnectionReset));
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
    })
    .await;
}

/// An unmasked (server) frame: FIN, `opcode`, `payload`.
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(opcode, payload, None)
}

/// A masked (client) frame: FIN, `opcode`, `payload`.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(opcode, payload, Some([1, 2, 3, 4]))
}

/// Read one frame: (opcode, unmasked payload); `None` at the end of the stream.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    assert!(h[1] & 0x7f < 126, "short frames only");
    let mut key = [0u8; 4];
    if h[1] & 0x80 != 0 {
        s.read_exact(&mut key).await.ok()?;
    }
    let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
    s.read_exact(&mut payload).await.ok()?;
    if h[1] & 0x80 != 0 {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Some((h[0] & 0x0f, payload))
}

fn is_going_away(frame: &(u8, Vec<u8>)) -> bool {
    frame.0 == 8 && frame.1.starts_with(&1001u16.to_be_bytes()) && frame.1.ends_with(b"going away")
}

#[tokio::test]
async fn when_the_process_stops_each_side_gets_a_close_after_the_frame_in_progress() {
    let (mut client, a, b, mut server) = pairs().await;
    let drain = Drain::new();
    let task = spawn_relay(a, b, Duration::from_secs(30), &drain);
    bounded(async {
        client.write_all(&client_frame(1, b"hello")).await.unwrap();
        assert_eq!(read_frame(&mut server).await, Some((1, b"hello".to_vec())));
        // The server is halfway through a frame when the process stops.
        let big = server_frame(2, &[7u8; 100]);
        server.write_all(&big[..40]).await.unwrap();
        let mut got = vec![0u8; 40];
        client.read_exact(&mut got).await.unwrap();
        drain.end();
        // The client side had nothing in progress: the upstream gets the close at once.
        let close = read_frame(&mut server)
            .await
            .expect("close toward the upstream");
        assert!(is_going_away(&close), "{close:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The rest of the frame goes through; what follows it does not.
        let mut rest = big[40..].to_vec();
        rest.extend_from_slice(&server_frame(1, b"after the close"));
        server.write_all(&rest).await.unwrap();
        let mut tail = vec![0u8; big.len() - 40];
        client.read_exact(&mut tail).await.unwrap();
        got.extend_from_slice(&tail);
        assert_eq!(got, big);
        let close = read_frame(&mut client)
            .await
            .expect("close toward the client");
        assert!(is_going_away(&close), "{close:?}");
        // Both peers answer: the relay ends, each side sees its stream end.
        client
            .write_all(&client_frame(8, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        server
            .write_all(&server_frame(8, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut client).await, None);
        assert_eq!(read_frame(&mut server).await, None);
        let (t, end) = task.await.unwrap();
        assert_eq!(end, End::GoingAway);
        assert_eq!((t.a_to_b, t.b_to_a), (11, 102), "relayed bytes only");
    })
    .await;
}

#[tokio::test]
async fn peers_that_never_answer_the_close_are_cut_after_close_wait() {
    let (mut client, a, b, mut server) = pairs().await;
    let drain = Drain::new();
    let task = spawn_relay(a, b, Duration::from_secs(30), &drain);
    bounded(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        drain.end();
        assert!(is_going_away(
            &read_frame(&mut client).await.expect("close")
        ));
        assert!(is_going_away(
            &read_frame(&mut server).await.expect("close")
        ));
        let (_, end) = task.await.unwrap();
        assert_eq!(end, End::GoingAway);
        // After CLOSE_WAIT, not at the idle limit (30 s).
        let took = started.elapsed();
        assert!(
            took >= CLOSE_WAIT && took < Duration::from_secs(10),
            "{took:?}"
        );
        assert_eq!(read_frame(&mut client).await, None);
    })
    .await;
}

#[tokio::test]
async fn a_side_that_already_sent_its_close_gets_no_second_one() {
    let (mut client, a, b, mut server) = pairs().await;
    let drain = Drain::new();
    let task = spawn_relay(a, b, Duration::from_secs(30), &drain);
    bounded(async {
        // The client closed (the upstream has not answered yet); the upstream is halfway
        // through a close frame of its own when the process stops.
        let code = 1000u16.to_be_bytes();
        client.write_all(&client_frame(8, &code)).await.unwrap();
        assert_eq!(read_frame(&mut server).await, Some((8, code.to_vec())));
        let theirs = server_frame(8, &code);
        server.write_all(&theirs[..2]).await.unwrap();
        let mut got = vec![0u8; 2];
        client.read_exact(&mut got).await.unwrap();
        drain.end();
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.write_all(&theirs[2..]).await.unwrap();
        // Each side gets the other's close, whole, then the end: never a second close
        // (RFC 6455 §5.5.1), so moat's 1001 goes nowhere.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        assert_eq!(got, theirs);
        assert_eq!(read_frame(&mut server).await, None);
        let (t, end) = task.await.unwrap();
        assert_eq!(end, End::GoingAway);
        assert_eq!((t.a_to_b, t.b_to_a), (8, 4));
    })
    .await;
}
