//! The custom binary serves the `stamp` plugin and checks its settings at load time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat-stamp")
}

fn write_config(dir: &std::path::Path, port: u16, plugin: &str) -> std::path::PathBuf {
    let text = format!(
        "server: {{ threads: 1, pid_file: {d}/p.pid, upgrade_sock: {d}/u.sock }}\nlisteners: [{{ name: p, address: \"127.0.0.1:{port}\" }}]\nroutes:\n  - name: hello\n    match: {{ path: /hello }}\n    respond: {{ body: hi }}\n    plugins:\n      - {plugin}\n",
        d = dir.display()
    );
    let path = dir.join("moat.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("moat-stamp-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn stamp_plugin_serves_and_checks_settings() {
    let dir = temp_dir();
    let port = free_port();
    let cfg = write_config(
        &dir,
        port,
        "stamp: { header: x-served-by, value: \"moat/{{route}}\" }",
    );
    let check = Command::new(bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut child = Command::new(bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut out = String::new();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .unwrap();
            let _ = s.read_to_string(&mut out);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-served-by: moat/hello"),
        "{out}"
    );

    // A misspelt setting is refused at load time, with its path.
    let bad = write_config(&dir, port, "stamp: { hedaer: x, value: y }");
    let check = Command::new(bin())
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("routes[0].plugins[0].stamp: unknown field `hedaer`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
