//! The admin listener (`/healthz`, `/readyz`, `/metrics`, `/status`, `/config`, token
//! protection) and the JSON access log, through the real binary.

use crate::harness::moat::temp_dir;
use crate::harness::{free_port, request, wait_until, Behavior, Moat, Response, Upstream};
use serde_json::Value;
use std::time::Duration;

fn config(up: &Upstream) -> String {
    format!(
        r#"upstreams:
  app:
    targets: ["{a}"]
    connect_timeout: 1500ms
    read_timeout: 2s
routes:
  - name: hello
    match: {{ path: /hello }}
    respond: {{ body: hi }}
  - name: proxied
    match: {{ path_prefix: /app }}
    upstream: app
"#,
        a = up.address()
    )
}

fn admin(m: &Moat, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request(m.admin, method, path, headers, b"")
}

/// Wait (bounded) until the metric sample `prefix` reads `value`; returns the last reading.
fn metric_reaches(m: &Moat, prefix: &str, value: f64) -> Option<f64> {
    wait_until(Duration::from_secs(5), || m.metric(prefix) == Some(value));
    m.metric(prefix)
}

fn assert_json_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"]["code"], code, "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{j}"
    );
    assert_eq!(
        j["error"]["request_id"].as_str().map(str::len),
        Some(26),
        "{j}"
    );
    assert!(
        j["error"]["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{j}"
    );
}

#[test]
fn healthz_readyz_and_errors() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));

    let r = m.admin_get("/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    let r = admin(&m, "HEAD", "/healthz", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    // The harness waited for the public listener: ready.
    let r = m.admin_get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"status": "ready"}));

    assert_json_error(&m.admin_get("/nope"), 404, "NOT_FOUND");
    assert_json_error(&m.admin_get("/"), 404, "NOT_FOUND");
    assert_json_error(&m.admin_get("/metrics/x"), 404, "NOT_FOUND");
    for path in ["/metrics", "/healthz", "/status", "/nope"] {
        assert_json_error(&admin(&m, "POST", path, &[]), 405, "METHOD_NOT_ALLOWED");
    }
    assert_json_error(
        &admin(&m, "DELETE", "/config", &[]),
        405,
        "METHOD_NOT_ALLOWED",
    );

    // The admin listener is not the public one, and the public one has no admin paths.
    assert_eq!(request(m.port, "GET", "/healthz", &[], b"").status, 404);
}

#[test]
fn metrics_after_traffic() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));
    for _ in 0..2 {
        assert_eq!(request(m.port, "GET", "/hello", &[], b"").status, 200);
    }
    assert_eq!(request(m.port, "POST", "/hello", &[], b"").status, 200);
    assert_eq!(request(m.port, "GET", "/app/x", &[], b"").status, 200);
    assert_eq!(request(m.port, "GET", "/nowhere", &[], b"").status, 404);

    let expected = [
        (
            r#"moat_http_requests_total{method="GET",route="hello",status="200"}"#,
            2.0,
        ),
        (
            r#"moat_http_requests_total{method="POST",route="hello",status="200"}"#,
            1.0,
        ),
        (
            r#"moat_http_requests_total{method="GET",route="proxied",status="200"}"#,
            1.0,
        ),
        (
            r#"moat_http_requests_total{method="GET",route="",status="404"}"#,
            1.0,
        ),
        (
            r#"moat_http_request_duration_seconds_count{route="hello"}"#,
            3.0,
        ),
        (
            r#"moat_http_request_duration_seconds_bucket{route="hello",le="+Inf"}"#,
            3.0,
        ),
        (
            r#"moat_http_request_duration_seconds_count{route="proxied"}"#,
            1.0,
        ),
        (
            r#"moat_upstream_request_duration_seconds_count{upstream="app"}"#,
            1.0,
        ),
        ("moat_config_generation", 1.0),
        ("moat_connections_active", 0.0),
    ];
    for (prefix, value) in expected {
        assert_eq!(
            metric_reaches(&m, prefix, value),
            Some(value),
            "{prefix}\n{}",
            m.admin_get("/metrics").text()
        );
    }

    let r = m.admin_get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    for needle in [
        "# TYPE moat_http_requests_total counter",
        "# TYPE moat_http_request_duration_seconds histogram",
        "# TYPE moat_upstream_request_duration_seconds histogram",
        "# TYPE moat_config_generation gauge",
        "moat_redis_errors_total 0",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // A histogram's buckets are cumulative, ending with +Inf == count.
    let sum_line = text
        .lines()
        .find(|l| l.starts_with(r#"moat_http_request_duration_seconds_sum{route="hello"}"#))
        .expect("duration sum");
    let sum: f64 = sum_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("sum value");
    assert!(sum > 0.0 && sum < 10.0, "{sum_line}");
}

#[test]
fn status_reports_routes_and_targets() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));
    let r = m.admin_get("/status");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = r.json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["generation"], 1);
    let loaded_at = s["loaded_at"].as_str().expect("loaded_at");
    assert!(
        loaded_at.len() == 20 && loaded_at.as_bytes()[10] == b'T' && loaded_at.ends_with('Z'),
        "{loaded_at}"
    );
    assert!(loaded_at.starts_with("20"), "{loaded_at}");
    assert_eq!(
        s["routes"],
        serde_json::json!([
            {"name": "hello", "action": {"respond": 200}},
            {"name": "proxied", "action": {"upstream": "app"}},
        ])
    );
    let target = &s["upstreams"]["app"]["targets"][0];
    assert_eq!(target["address"], up.address(), "{s}");
    assert_eq!(target["weight"], 1);
    assert_eq!(target["healthy"], true);
    assert_eq!(target["ejected"], false);
    assert_eq!(target["in_flight"], 0);
    assert_eq!(
        s["upstreams"]["app"]["targets"].as_array().map(Vec::len),
        Some(1)
    );

    // A slow request shows up in flight, and leaves.
    up.set(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let port = m.port;
    let slow = std::thread::spawn(move || request(port, "GET", "/app/slow", &[], b"").status);
    let in_flight =
        || m.admin_get("/status").json()["upstreams"]["app"]["targets"][0]["in_flight"].as_u64();
    assert!(
        wait_until(Duration::from_secs(5), || in_flight() == Some(1)),
        "{:?}",
        in_flight()
    );
    assert_eq!(slow.join().expect("slow request"), 200);
    assert!(
        wait_until(Duration::from_secs(5), || in_flight() == Some(0)),
        "{:?}",
        in_flight()
    );
}

#[test]
fn config_echoes_the_effective_config() {
    let up = Upstream::start("app");
    let m = Moat::start(&config(&up));
    let r = m.admin_get("/config");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let c = r.json();
    assert_eq!(c["listeners"][0]["name"], "public");
    assert_eq!(
        c["listeners"][0]["address"],
        format!("127.0.0.1:{}", m.port)
    );
    assert_eq!(c["admin"]["address"], format!("127.0.0.1:{}", m.admin));
    assert_eq!(c["server"]["threads"], 1);
    let app = &c["upstreams"]["app"];
    assert_eq!(app["targets"][0]["address"], up.address(), "{c}");
    assert_eq!(app["targets"][0]["weight"], 1);
    assert_eq!(app["balance"], "round_robin");
    assert_eq!(app["connect_timeout"], "1500ms");
    assert_eq!(app["read_timeout"], "2s");
    let routes = c["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["name"], "hello");
    assert_eq!(routes[0]["match"]["path"], "/hello");
    assert_eq!(routes[0]["respond"]["body"], "hi");
    assert_eq!(routes[0]["respond"]["status"], 200);
    assert_eq!(routes[1]["name"], "proxied");
    assert_eq!(routes[1]["match"]["path_prefix"], "/app");
    assert_eq!(routes[1]["upstream"], "app");
}

/// A full config with `admin.token_env` (the harness's `start` writes `admin:` itself).
fn start_with_token(body: &str, env: &[(&str, &str)]) -> Moat {
    let dir = temp_dir("admin-token");
    let port = free_port();
    let admin = free_port();
    let text = format!(
        "server:\n  threads: 1\n  pid_file: {d}/moat.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\nadmin:\n  address: 127.0.0.1:{admin}\n  token_env: MOAT_TEST_ADMIN_TOKEN\n{body}",
        d = dir.display()
    );
    Moat::start_raw(&text, port, admin, dir, env)
}

#[test]
fn token_protects_everything_but_healthz() {
    let m = start_with_token(
        "routes:\n  - name: hello\n    respond: { body: hi }\n",
        &[("MOAT_TEST_ADMIN_TOKEN", "s3cret")],
    );
    assert_eq!(m.admin_get("/healthz").status, 200);
    assert_eq!(request(m.port, "GET", "/x", &[], b"").text(), "hi");

    let unauthorized = |r: Response| {
        assert_json_error(&r, 401, "UNAUTHORIZED");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{:?}",
            r.headers
        );
        assert!(!r.text().contains("s3cret"), "{}", r.text());
    };
    for path in ["/metrics", "/status", "/config", "/readyz", "/nope"] {
        unauthorized(m.admin_get(path));
        for wrong in [
            "Bearer wrong",
            "Bearer s3cre",
            "Bearer s3cretX",
            "Bearer",
            "Basic s3cret",
            "s3cret",
            "Bearer S3CRET",
        ] {
            unauthorized(admin(&m, "GET", path, &[("Authorization", wrong)]));
        }
    }
    unauthorized(admin(&m, "POST", "/metrics", &[]));

    let ok = [("Authorization", "Bearer s3cret")];
    for path in ["/metrics", "/status", "/config", "/readyz", "/healthz"] {
        let r = admin(&m, "GET", path, &ok);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert!(admin(&m, "GET", "/metrics", &ok)
        .text()
        .contains("moat_config_generation 1"));
    assert_json_error(&admin(&m, "GET", "/nope", &ok), 404, "NOT_FOUND");
    assert_json_error(
        &admin(&m, "POST", "/metrics", &ok),
        405,
        "METHOD_NOT_ALLOWED",
    );

    // /config names the variable, never its value.
    let c = admin(&m, "GET", "/config", &ok).text();
    assert!(c.contains("MOAT_TEST_ADMIN_TOKEN"), "{c}");
    assert!(!c.contains("s3cret"), "{c}");
}

const LOG_FIELDS: &[&str] = &[
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

fn assert_log_fields(line: &Value) {
    let obj = line
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    for f in LOG_FIELDS {
        assert!(obj.contains_key(*f), "field `{f}` missing from {line}");
    }
    let ts = line["ts"].as_str().expect("ts");
    assert!(
        ts.len() == 24 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
        "{ts}"
    );
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert!(line["status"].as_u64().is_some(), "{line}");
    assert!(line["bytes_sent"].as_u64().is_some(), "{line}");
}

fn find<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["path"] == path)
        .unwrap_or_else(|| panic!("no access-log line for {path}: {lines:#?}"))
}

#[test]
fn access_log_to_stdout_is_json_without_secrets() {
    let up = Upstream::start("app");
    let m = Moat::start(&format!(
        "access_log: {{ path: stdout }}\nglobal_plugins:\n  - request_id: {{}}\n{}",
        config(&up)
    ));
    let proxied = request(
        m.port,
        "GET",
        "/app/x?access_token=SECRET-QUERY&q=1",
        &[
            ("Host", "api.example.com"),
            ("Authorization", "Bearer SECRET-AUTH"),
            ("Cookie", "session=SECRET-COOKIE"),
            ("X-Api-Key", "SECRET-APIKEY"),
        ],
        b"",
    );
    assert_eq!(proxied.status, 200);
    let hello = request(m.port, "POST", "/hello?api_key=SECRET-QUERY2", &[], b"");
    assert_eq!(hello.status, 200);
    assert_eq!(request(m.port, "GET", "/nowhere", &[], b"").status, 404);

    let lines = m.access_lines(3);
    let raw = m.access_log();
    assert_eq!(raw.lines().count(), 3, "one line per request:\n{raw}");
    assert_eq!(lines.len(), 3, "every line is JSON:\n{raw}");
    for secret in ["SECRET", "access_token", "api_key=", "session="] {
        assert!(
            !raw.contains(secret),
            "`{secret}` in the access log:\n{raw}"
        );
    }
    for l in &lines {
        assert_log_fields(l);
    }

    let p = find(&lines, "/app/x");
    assert_eq!(p["method"], "GET");
    assert_eq!(p["host"], "api.example.com");
    assert_eq!(p["status"], 200);
    assert_eq!(p["bytes_sent"], 2, "the upstream's body is `ok`");
    assert_eq!(p["client_ip"], "127.0.0.1");
    assert_eq!(p["route"], "proxied");
    assert_eq!(p["upstream"], "app");
    assert_eq!(p["upstream_target"], up.address());
    assert!(
        p["upstream_duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{p}"
    );
    assert_eq!(p["consumer"], Value::Null);
    assert_eq!(p["auth_method"], Value::Null);
    assert_eq!(p["ratelimit"], Value::Null);
    assert_eq!(
        Some(p["request_id"].as_str().expect("request_id")),
        proxied.header("x-request-id")
    );

    let h = find(&lines, "/hello");
    assert_eq!(
        (
            h["method"].as_str(),
            h["status"].as_u64(),
            h["bytes_sent"].as_u64()
        ),
        (Some("POST"), Some(200), Some(2))
    );
    assert_eq!(h["host"], "localhost");
    assert_eq!(h["route"], "hello");
    assert_eq!(h["upstream"], Value::Null);
    assert_eq!(h["upstream_target"], Value::Null);
    assert_eq!(h["upstream_duration_ms"], Value::Null);
    assert_eq!(
        Some(h["request_id"].as_str().expect("request_id")),
        hello.header("x-request-id")
    );

    let n = find(&lines, "/nowhere");
    assert_eq!(n["status"], 404);
    assert_eq!(n["route"], Value::Null);
    assert_eq!(n["upstream"], Value::Null);
    assert!(n["bytes_sent"].as_u64().is_some_and(|b| b > 0), "{n}");
}

#[test]
fn access_log_to_a_file() {
    let logs = temp_dir("admin-access-log");
    let file = logs.join("access.log");
    let m = Moat::start(&format!(
        "access_log: {{ path: {} }}\nroutes:\n  - name: hello\n    respond: {{ body: hi }}\n",
        file.display()
    ));
    assert_eq!(
        request(m.port, "GET", "/a?token=SECRET", &[], b"").status,
        200
    );
    assert_eq!(
        request(
            m.port,
            "GET",
            "/b",
            &[("Authorization", "Basic SECRET")],
            b""
        )
        .status,
        200
    );

    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || read().lines().count() >= 2),
        "access log:\n{}",
        read()
    );
    let text = read();
    assert!(!text.contains("SECRET"), "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for l in &lines {
        assert_log_fields(l);
        assert_eq!(l["route"], "hello");
        assert_eq!(l["status"], 200);
    }
    assert_eq!(find(&lines, "/a")["method"], "GET");
    find(&lines, "/b");
    assert!(
        m.access_log().trim().is_empty(),
        "nothing on stdout:\n{}",
        m.access_log()
    );
    drop(m);
    let _ = std::fs::remove_dir_all(&logs);
}
