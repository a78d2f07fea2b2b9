//! Admin API hardening (issue 14, item 5): the token is taken again on every reload
//! (`token_file` re-read, a new `token_env` name, a token added), `POST` endpoints refuse
//! requests a browser could send cross-site without a preflight, and the `Host` header
//! must be a loopback name or address or one of `admin.allowed_hosts` (DNS rebinding).
//! `moat check` refusing a non-loopback admin address without a token is in `check.rs`.

use crate::harness::moat::temp_dir;
use crate::harness::{free_port, request, Moat, Response};

const ROUTES: &str = "routes:\n  - name: hello\n    respond: { body: hi }\n";

/// A full config with `admin_extra` under `admin:` (after its address).
fn text(dir: &std::path::Path, port: u16, admin: u16, admin_extra: &str) -> String {
    format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\nadmin:\n  address: 127.0.0.1:{admin}\n{admin_extra}{ROUTES}",
        d = dir.display()
    )
}

struct Admin {
    m: Moat,
    dir: std::path::PathBuf,
}

impl Admin {
    fn start(admin_extra: &str, env: &[(&str, &str)]) -> Admin {
        let dir = temp_dir("admin-access");
        Self::start_in(dir, admin_extra, env)
    }

    fn start_in(dir: std::path::PathBuf, admin_extra: &str, env: &[(&str, &str)]) -> Admin {
        let (port, admin) = (free_port(), free_port());
        let t = text(&dir, port, admin, admin_extra);
        let m = Moat::start_raw(&t, port, admin, dir.clone(), env);
        Admin { m, dir }
    }

    /// Rewrite the `admin:` extras (same ports) and reload with `token`.
    fn reconfigure(&self, admin_extra: &str, token: Option<&str>) -> Response {
        self.m
            .rewrite_raw(&text(&self.dir, self.m.port, self.m.admin, admin_extra));
        self.reload(token)
    }

    fn reload(&self, token: Option<&str>) -> Response {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            h.push(("Authorization", b.as_str()));
        }
        request(self.m.admin, "POST", "/reload", &h, b"")
    }

    fn status_with(&self, token: &str) -> u16 {
        let b = format!("Bearer {token}");
        request(
            self.m.admin,
            "GET",
            "/status",
            &[("Authorization", &b)],
            b"",
        )
        .status
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.m.admin, "GET", path, headers, b"")
    }
}

fn error_code(r: &Response) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

#[test]
fn token_file_is_read_again_on_every_reload() {
    let dir = temp_dir("admin-token-file");
    let file = dir.join("admin.token");
    std::fs::write(&file, "first-token\n").unwrap();
    let extra = format!("  token_file: {}\n", file.display());
    let a = Admin::start_in(dir, &extra, &[]);
    assert_eq!(a.status_with("first-token"), 200);
    assert_eq!(a.status_with("second-token"), 401);
    assert_eq!(a.get("/status", &[]).status, 401);

    // Rotation: write the new token, reload (with the old one); the new one is live.
    std::fs::write(&file, "second-token\n").unwrap();
    let r = a.reload(Some("first-token"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], true, "{}", r.text());
    assert_eq!(a.status_with("second-token"), 200);
    assert_eq!(a.status_with("first-token"), 401);

    // SIGHUP rereads it too.
    std::fs::write(&file, "third-token").unwrap();
    a.m.signal("HUP");
    assert!(
        crate::harness::wait_until(std::time::Duration::from_secs(5), || a
            .status_with("third-token")
            == 200),
        "{}",
        a.m.logs()
    );

    // An empty token file is refused; the last good token stays.
    std::fs::write(&file, "\n").unwrap();
    let r = a.reload(Some("third-token"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("admin.token_file"), "{}", r.text());
    assert_eq!(a.status_with("third-token"), 200);
}

#[test]
fn token_env_name_and_a_new_token_are_taken_on_reload() {
    let env = [
        ("MOAT_T_ADMIN_A", "alpha-token"),
        ("MOAT_T_ADMIN_B", "beta-token"),
    ];
    // No token yet (loopback admin): open.
    let a = Admin::start("", &env);
    assert_eq!(a.get("/status", &[]).status, 200);

    // Adding token_env takes effect on reload.
    let r = a.reconfigure("  token_env: MOAT_T_ADMIN_A\n", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.get("/status", &[]).status, 401);
    assert_eq!(a.status_with("alpha-token"), 200);

    // Naming another variable rotates to its value.
    let r = a.reconfigure("  token_env: MOAT_T_ADMIN_B\n", Some("alpha-token"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.status_with("beta-token"), 200);
    assert_eq!(a.status_with("alpha-token"), 401);

    // A variable this process does not have is refused; the token stays.
    let r = a.reconfigure("  token_env: MOAT_T_ADMIN_UNSET\n", Some("beta-token"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("MOAT_T_ADMIN_UNSET"), "{}", r.text());
    assert_eq!(a.status_with("beta-token"), 200);
}

#[test]
fn post_endpoints_refuse_requests_a_browser_sends_without_preflight() {
    let a = Admin::start("", &[]);
    let post = |headers: &[(&str, &str)]| request(a.m.admin, "POST", "/reload", headers, b"");
    // What an HTML form or a no-cors fetch can send: refused, nothing reloaded.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
        Some("text/plain; application/json"),
    ] {
        let h: Vec<(&str, &str)> = ct.iter().map(|c| ("Content-Type", *c)).collect();
        let r = post(&h);
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        assert_eq!(error_code(&r), "UNSUPPORTED_MEDIA_TYPE", "{ct:?}");
        assert!(r.text().contains("application/json"), "{}", r.text());
    }
    let m = &a.m;
    let reloads = || {
        m.metric("moat_config_reloads_total{result=\"ok\"}")
            .unwrap_or(0.0)
    };
    assert_eq!(reloads(), 0.0);
    for ct in ["application/json", "Application/JSON; charset=utf-8"] {
        let r = post(&[("Content-Type", ct)]);
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
    }
    assert_eq!(reloads(), 2.0);
}

#[test]
fn host_must_be_loopback_or_allowed() {
    let a = Admin::start("", &[]);
    let port = a.m.admin.to_string();
    let with_host = |host: &str| a.get("/status", &[("Host", host)]);
    for ok in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        "LOCALHOST.".to_string(),
        format!("127.0.0.1:{port}"),
        "127.8.9.10".to_string(),
        format!("[::1]:{port}"),
        "moat.localhost".to_string(),
    ] {
        let r = with_host(&ok);
        assert_eq!(r.status, 200, "{ok}: {}", r.text());
    }
    for bad in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "10.1.2.3".to_string(),
        "localhost.evil.example".to_string(),
        "admin.internal".to_string(),
        "".to_string(),
    ] {
        let r = with_host(&bad);
        assert_eq!(r.status, 403, "{bad:?}: {}", r.text());
        assert_eq!(error_code(&r), "FORBIDDEN");
        assert!(r.text().contains("allowed_hosts"), "{}", r.text());
    }
    // POST /reload behind a rebound name is refused before anything else.
    let r = request(
        a.m.admin,
        "POST",
        "/reload",
        &[
            ("Host", "evil.example"),
            ("Content-Type", "application/json"),
        ],
        b"",
    );
    assert_eq!(r.status, 403);
    // /healthz answers whatever the Host (it tells nothing and needs no token).
    assert_eq!(a.get("/healthz", &[("Host", "evil.example")]).status, 200);

    // allowed_hosts (names, addresses, networks) is taken on reload.
    let r = a.reconfigure(
        "  allowed_hosts: [admin.internal, 192.0.2.7, \"10.0.0.0/8\", \"fd00::/8\"]\n",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for ok in [
        "admin.internal",
        "ADMIN.internal:9901",
        "192.0.2.7",
        "10.1.2.3:9901",
        "[fd00::1]:9901",
        "localhost",
    ] {
        assert_eq!(with_host(ok).status, 200, "{ok}");
    }
    for bad in ["evil.example", "192.0.2.8", "11.0.0.1", "x.admin.internal"] {
        assert_eq!(with_host(bad).status, 403, "{bad}");
    }
}
