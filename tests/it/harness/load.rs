//! A bounded background load: keep-alive and `Connection: close` clients, GET and POST
//! with bodies, recording every outcome, until stopped or a time limit passes.

use super::client::{request, Conn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request's outcome: status (0 = connection failed) and body.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub body: String,
    pub started: Instant,
    pub finished: Instant,
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    /// Start `clients` threads per kind (keep-alive GET, close GET, keep-alive POST)
    /// against `port` `path`, for at most `limit`.
    pub fn start(port: u16, path: &str, clients: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + limit;
        let mut threads = Vec::new();
        for kind in 0..3 {
            for _ in 0..clients {
                let (stop, outcomes, path) =
                    (Arc::clone(&stop), Arc::clone(&outcomes), path.to_string());
                threads.push(std::thread::spawn(move || {
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        let started = Instant::now();
                        let resp = match kind {
                            1 => Some(request(port, "GET", &path, &[], b"")),
                            _ => {
                                let c = conn.get_or_insert_with(|| Conn::open(port));
                                let raw = if kind == 0 {
                                    format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes()
                                } else {
                                    format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world").into_bytes()
                                };
                                let r = c.exchange(&raw);
                                let keep = r.as_ref().is_some_and(|r| {
                                    !r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                });
                                if !keep {
                                    conn = None;
                                }
                                r
                            }
                        };
                        let (status, body) = match resp {
                            Some(r) => (r.status, r.text()),
                            None => (0, String::new()),
                        };
                        outcomes.lock().unwrap().push(Outcome { status, body, started, finished: Instant::now() });
                    }
                }));
            }
        }
        Load {
            stop,
            threads,
            outcomes,
        }
    }

    /// Stop and return every outcome.
    pub fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let v = self.outcomes.lock().unwrap().clone();
        v
    }

    /// Outcomes so far.
    pub fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }
}
