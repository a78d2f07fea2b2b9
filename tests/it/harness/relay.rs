//! A TCP relay on 127.0.0.1:0 standing for a host name: each new connection is relayed to
//! the port the name points at now. [`Relay::point_at`] moves the name for new connections
//! only; the ones open stay with the old server, as after a DNS failover. Stops accepting
//! when dropped (relayed connections end when either side closes).

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The relay.
pub struct Relay {
    pub port: u16,
    /// Connections relayed so far.
    pub connections: Arc<AtomicUsize>,
    target: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relay to 127.0.0.1:`target`.
    pub fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Relay {
            port,
            connections: Arc::new(AtomicUsize::new(0)),
            target: Arc::new(AtomicU16::new(target)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (n, to, halt) = (
            Arc::clone(&r.connections),
            Arc::clone(&r.target),
            Arc::clone(&r.stop),
        );
        std::thread::spawn(move || {
            while !halt.load(Ordering::Acquire) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to.load(Ordering::Acquire)))
                else {
                    continue; // the client sees the connection closed
                };
                n.fetch_add(1, Ordering::SeqCst);
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        r
    }

    /// New connections go to 127.0.0.1:`port` from now on.
    pub fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::Release);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Copy `from` to `to` in a thread until `from` ends, then end `to`'s writing side.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
