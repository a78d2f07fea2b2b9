//! A real HTTP/1.1 upstream on 127.0.0.1:0 that records every request and answers as its
//! `Behavior` says. Thread per connection, keep-alive, Content-Length and chunked bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// Values of a header (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
}

/// How to answer.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub status: u16,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Close the connection without answering.
    pub hang_up: bool,
    /// Extra response headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: 200,
            body: b"ok".to_vec(),
            delay: Duration::ZERO,
            hang_up: false,
            headers: Vec::new(),
        }
    }
}

struct Shared {
    recorded: Mutex<Vec<Recorded>>,
    behavior: Mutex<Behavior>,
    stop: AtomicBool,
    hits: AtomicUsize,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    name: String,
}

impl Upstream {
    /// Start on a new ephemeral port.
    pub fn start(name: &str) -> Upstream {
        Self::start_on(name, 0)
    }

    /// Start on `port` (0 = any), e.g. to bring a killed target back.
    pub fn start_on(name: &str, port: u16) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Vec::new()),
            behavior: Mutex::new(Behavior::default()),
            stop: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
        });
        let s = Arc::clone(&shared);
        let n = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                let n = n.clone();
                std::thread::spawn(move || serve(conn, s, n));
            }
        });
        Upstream {
            addr,
            shared,
            name: name.to_string(),
        }
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Change how it answers.
    pub fn set(&self, b: Behavior) {
        *self.shared.behavior.lock().unwrap() = b;
    }

    /// Everything received so far (health probes included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    /// Requests received, excluding health probes (`User-Agent: moat-health-check`).
    pub fn traffic(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.header("user-agent") != Some("moat-health-check"))
            .collect()
    }

    /// The last non-probe request.
    pub fn last(&self) -> Recorded {
        self.traffic().pop().expect("upstream received no request")
    }

    /// Forget what was recorded.
    pub fn clear(&self) {
        self.shared.recorded.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, s: Arc<Shared>, name: String) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v): &(String, String)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(cl) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(cl, 0);
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        } else if get("transfer-encoding")
            .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
        {
            loop {
                let mut size_line = String::new();
                if reader.read_line(&mut size_line).unwrap_or(0) == 0 {
                    return;
                }
                let size =
                    usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                        .unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        let close = get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        s.hits.fetch_add(1, Ordering::SeqCst);
        s.recorded.lock().unwrap().push(Recorded {
            method: method.clone(),
            target,
            headers,
            body,
        });
        let b = s.behavior.lock().unwrap().clone();
        if !b.delay.is_zero() {
            std::thread::sleep(b.delay);
        }
        if b.hang_up {
            return;
        }
        let payload = if method == "HEAD" {
            Vec::new()
        } else {
            b.body.clone()
        };
        let extra: String = b
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nX-Upstream: {name}\r\nContent-Type: text/plain\r\n{extra}{}\r\n",
            b.status,
            b.body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&payload).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}
