//! A scripted Redis for unit tests: a TCP server on 127.0.0.1:0 that reads each command
//! (`*N` of `$len` strings) and writes what the test's `answer` returns for it (nothing:
//! it stays silent).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The next whole command at the front of `buf`, removed from it.
fn next_command(buf: &mut Vec<u8>) -> Option<Vec<Vec<u8>>> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[at..end], end + 2))
    }
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<usize>().ok();
    let (head, mut at) = line(buf, 0)?;
    let n = number(head.strip_prefix(b"*")?)?;
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len = number(len.strip_prefix(b"$")?)?;
        words.push(buf.get(next..next + len)?.to_vec());
        at = next + len + 2;
    }
    if buf.len() < at {
        return None;
    }
    buf.drain(..at);
    Some(words)
}

/// Serve every connection: `answer(connection number, command words)` is the reply.
/// Returns the address and the number of connections accepted so far.
pub async fn serve<F, R>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, &[Vec<u8>]) -> R + Send + Sync + 'static,
    R: Into<Vec<u8>>,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (count, answer) = (Arc::clone(&accepted), Arc::new(answer));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                while let Ok(k) = s.read(&mut chunk).await {
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    while let Some(cmd) = next_command(&mut buf) {
                        let reply = answer(n, &cmd).into();
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Whether `cmd`'s first word is `name` (any case).
pub fn is(cmd: &[Vec<u8>], name: &str) -> bool {
    cmd.first()
        .is_some_and(|w| w.eq_ignore_ascii_case(name.as_bytes()))
}
