//! The JSON access log: one object per request, written by a dedicated thread so that file
//! I/O never runs on a request thread. Lines are formatted on the request thread (cheap,
//! no I/O) and handed over through a bounded channel; when the writer falls behind, lines
//! are dropped and counted rather than blocking requests. `reopen` switches the writer to a
//! freshly opened file (log rotation on SIGUSR1, or a new path on reload).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// A handle to the log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// What the writer thread receives.
enum Msg {
    Line(String),
    Sink(Box<dyn Write + Send>),
    Flush(std::sync::mpsc::Sender<()>),
}

fn open_sink(path: &str) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(if path == "stdout" {
        Box::new(std::io::stdout())
    } else {
        Box::new(OpenOptions::new().create(true).append(true).open(path)?)
    })
}

/// One request's access-log record. Credential values never appear in these fields:
/// `path` carries no query string.
pub struct Record<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration_ms: f64,
    pub upstream: Option<&'a str>,
    pub upstream_target: Option<String>,
    pub upstream_duration_ms: Option<f64>,
    pub route: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub auth_method: Option<&'a str>,
    pub ratelimit: Option<&'a str>,
}

impl Record<'_> {
    /// The record as one JSON line (with the trailing newline).
    pub fn to_line(&self) -> String {
        let v = serde_json::json!({
            "ts": self.ts,
            "request_id": self.request_id,
            "client_ip": self.client_ip.map(|ip| ip.to_string()),
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "status": self.status,
            "bytes_sent": self.bytes_sent,
            "duration_ms": (self.duration_ms * 1000.0).round() / 1000.0,
            "upstream": self.upstream,
            "upstream_target": self.upstream_target,
            "upstream_duration_ms": self.upstream_duration_ms.map(|d| (d * 1000.0).round() / 1000.0),
            "route": self.route,
            "consumer": self.consumer,
            "auth_method": self.auth_method,
            "ratelimit": self.ratelimit,
        });
        let mut s = v.to_string();
        s.push('\n');
        s
    }
}

impl AccessLog {
    /// Start the writer thread for `path` (`stdout` or a file, opened for append).
    pub fn start(path: &str) -> std::io::Result<AccessLog> {
        let sink = open_sink(path)?;
        let (tx, rx) = sync_channel::<Msg>(65_536);
        std::thread::Builder::new()
            .name("moat-access-log".into())
            .spawn(move || writer(rx, sink))?;
        Ok(AccessLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queue a line; never blocks.
    pub fn write(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Open `path` again (or a new path) and write there from now on. The file is opened
    /// here, so an error is reported to the caller and the old file stays in use.
    pub fn reopen(&self, path: &str) -> std::io::Result<()> {
        let sink = open_sink(path)?;
        self.tx
            .send(Msg::Sink(sink))
            .map_err(|_| std::io::Error::other("access log writer stopped"))
    }

    /// Write out what is queued, waiting at most 200 ms (before a fast exit).
    pub fn flush_now(&self) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_millis(200));
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn writer(rx: Receiver<Msg>, sink: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let handle = |msg: Msg, out: &mut BufWriter<Box<dyn Write + Send>>| match msg {
        Msg::Line(line) => {
            let _ = out.write_all(line.as_bytes());
        }
        Msg::Sink(new) => {
            let _ = out.flush();
            *out = BufWriter::with_capacity(64 * 1024, new);
        }
        Msg::Flush(done) => {
            let _ = out.flush();
            let _ = done.send(());
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(msg) => {
                handle(msg, &mut out);
                // Drain what is already queued before flushing.
                while let Ok(more) = rx.try_recv() {
                    handle(more, &mut out);
                }
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}
