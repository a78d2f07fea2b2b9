//! Relay tests over real TCP connections on 127.0.0.1.

use super::*;
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

#[tokio::test]
async fn bytes_go_both_ways_then_half_closes_end_it() {
    let (mut client, mut a, mut b, mut server) = pairs().await;
    let task = tokio::spawn(async move {
        {
            let mut t = Traffic::default();
            let end = relay(&mut a, &mut b, Duration::from_secs(30), &mut t).await;
            (t, end)
        }
    });
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
    let (mut client, mut a, mut b, mut server) = pairs().await;
    let task = tokio::spawn(async move {
        {
            let mut t = Traffic::default();
            let end = relay(&mut a, &mut b, Duration::from_secs(30), &mut t).await;
            (t, end)
        }
    });
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
    let (mut client, mut a, mut b, mut server) = pairs().await;
    let started = Instant::now();
    let task = tokio::spawn(async move {
        {
            let mut t = Traffic::default();
            let end = relay(&mut a, &mut b, Duration::from_millis(600), &mut t).await;
            (t, end)
        }
    });
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
    let (client, mut a, mut b, mut server) = pairs().await;
    let task = tokio::spawn(async move {
        {
            let mut t = Traffic::default();
            let end = relay(&mut a, &mut b, Duration::from_secs(30), &mut t).await;
            (t, end)
        }
    });
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
