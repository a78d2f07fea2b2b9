//! The JSON access log: one object per request, written by a dedicated thread so that file
//! I/O never runs on a request thread. Lines are formatted on the request thread (by hand,
//! about 3k instructions, no I/O) and handed over through a bounded channel; the writer
//! wakes every 50 ms and writes out what queued (senders never wake it). When it falls
//! behind, lines are dropped and counted rather than blocking requests. `reopen` switches
//! the writer to a freshly opened file (log rotation on SIGUSR1, or a new path on reload).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
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
    pub ts: std::time::SystemTime,
    pub request_id: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration_ms: f64,
    pub upstream: Option<&'a str>,
    pub upstream_target: Option<&'a str>,
    pub upstream_duration_ms: Option<f64>,
    pub route: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub auth_method: Option<&'a str>,
    pub ratelimit: Option<&'a str>,
}

/// `,"name":` as one literal (one copy per field instead of three).
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl Record<'_> {
    /// The record as one JSON line (with the trailing newline), fields in the contract's
    /// order; absent values are `null`, durations in milliseconds with 3 decimals. Written
    /// by hand: a `serde_json::Value` built per request cost several times more.
    pub fn to_line(&self) -> String {
        let mut s = String::with_capacity(300 + self.host.len() + self.path.len());
        s.push_str("{\"ts\":\"");
        crate::util::time::push_rfc3339_millis(&mut s, self.ts);
        s.push('"');
        s.push_str(key!("request_id"));
        push_json_str(&mut s, self.request_id);
        s.push_str(key!("client_ip"));
        match self.client_ip {
            Some(ip) => {
                s.push('"');
                crate::net::push_ip(&mut s, ip);
                s.push('"');
            }
            None => s.push_str("null"),
        }
        s.push_str(key!("method"));
        push_json_str(&mut s, self.method);
        s.push_str(key!("host"));
        push_json_str(&mut s, self.host);
        s.push_str(key!("path"));
        push_json_str(&mut s, self.path);
        s.push_str(key!("status"));
        push_u64(&mut s, u64::from(self.status));
        s.push_str(key!("bytes_sent"));
        push_u64(&mut s, self.bytes_sent as u64);
        s.push_str(key!("duration_ms"));
        push_ms(&mut s, Some(self.duration_ms));
        opt_str(&mut s, key!("upstream"), self.upstream);
        opt_str(&mut s, key!("upstream_target"), self.upstream_target);
        s.push_str(key!("upstream_duration_ms"));
        push_ms(&mut s, self.upstream_duration_ms);
        opt_str(&mut s, key!("route"), self.route);
        opt_str(&mut s, key!("consumer"), self.consumer);
        opt_str(&mut s, key!("auth_method"), self.auth_method);
        opt_str(&mut s, key!("ratelimit"), self.ratelimit);
        s.push_str("}\n");
        s
    }
}

/// `key` (from [`key!`]) and the value as a JSON string, or `null`.
fn opt_str(s: &mut String, key: &str, v: Option<&str>) {
    s.push_str(key);
    match v {
        Some(v) => push_json_str(s, v),
        None => s.push_str("null"),
    }
}

/// `v` as a JSON string: quotes, backslashes and control characters escaped; other
/// characters (UTF-8 included) as they are.
fn push_json_str(s: &mut String, v: &str) {
    s.push('"');
    if !v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        s.push_str(v);
    } else {
        for c in v.chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(s, "\\u{:04x}", c as u32);
                }
                c => s.push(c),
            }
        }
    }
    s.push('"');
}

fn push_u64(s: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits: always UTF-8.
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or(""));
}

/// Milliseconds with 3 decimals (microsecond precision), or `null`.
fn push_ms(s: &mut String, ms: Option<f64>) {
    match ms {
        Some(ms) if ms.is_finite() && ms >= 0.0 => {
            let us = (ms * 1000.0).round() as u64;
            push_u64(s, us / 1000);
            s.push('.');
            let frac = us % 1000;
            s.push(char::from(b'0' + (frac / 100) as u8));
            s.push(char::from(b'0' + (frac / 10 % 10) as u8));
            s.push(char::from(b'0' + (frac % 10) as u8));
        }
        _ => s.push_str("null"),
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

/// How often the writer wakes up to write out what was queued. Senders never wake it: a
/// wake-up per line cost two context switches and a `write` per request (about as much
/// CPU as proxying the request). Lines reach the file at most this late.
const WRITE_EVERY: Duration = Duration::from_millis(50);

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
        std::thread::sleep(WRITE_EVERY);
        loop {
            match rx.try_recv() {
                Ok(msg) => handle(msg, &mut out),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record<'a>(path: &'a str, target: Option<&'a str>) -> Record<'a> {
        Record {
            ts: UNIX_EPOCH + Duration::from_millis(1_732_345_200_123),
            request_id: "r-1",
            client_ip: Some("203.0.113.9".parse().unwrap()),
            method: "GET",
            host: "api.example.com",
            path,
            status: 200,
            bytes_sent: 1234,
            duration_ms: 1.23456,
            upstream: Some("users"),
            upstream_target: target,
            upstream_duration_ms: None,
            route: Some("r"),
            consumer: None,
            auth_method: None,
            ratelimit: Some("allowed"),
        }
    }

    #[test]
    fn line_is_json_in_contract_order() {
        let line = record("/a", Some("127.0.0.1:9")).to_line();
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2024-11-23T07:00:00.123Z");
        assert_eq!(v["client_ip"], "203.0.113.9");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_sent"], 1234);
        assert_eq!(v["duration_ms"].as_f64(), Some(1.235));
        assert!(v["upstream_duration_ms"].is_null());
        assert!(v["consumer"].is_null());
        assert_eq!(v["upstream_target"], "127.0.0.1:9");
        let order = [
            "ts",
            "request_id",
            "client_ip",
            "method",
            "host",
            "path",
            "status",
            "bytes_sent",
            "duration_ms",
            "upstream",
            "upstream_target",
            "upstream_duration_ms",
            "route",
            "consumer",
            "auth_method",
            "ratelimit",
        ];
        let mut at = 0;
        for k in order {
            let i = line.find(&format!("\"{k}\":")).unwrap();
            assert!(i >= at, "{k} out of order in {line}");
            at = i;
        }
    }

    #[test]
    fn strings_are_escaped() {
        let nasty = "/a\"b\\c\n\u{1}é";
        let line = record(nasty, None).to_line();
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], nasty);
        let v6 = Record {
            client_ip: Some("2001:db8::1".parse().unwrap()),
            ..record("/", None)
        };
        let v: serde_json::Value = serde_json::from_str(&v6.to_line()).unwrap();
        assert_eq!(v["client_ip"], "2001:db8::1");
    }
}
