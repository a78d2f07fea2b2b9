//! `moat check -c FILE`: exit codes, the one-line summary, and every rejected config
//! reported on stderr as `path: message`, one per line, under a `FILE: invalid config`
//! header.
//!
//! Expected lines are exact unless they end with `…`, which marks a prefix (used where
//! serde or the OS words the tail, e.g. the list of expected fields).

use crate::harness::moat::{bin, temp_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variables the configs below name (or that change the binary's output):
/// removed from the child so results do not depend on the caller's environment.
const SCRUBBED: &[&str] = &[
    "RUST_LOG",
    "MOAT_ADMIN_TOKEN",
    "ACME_HMAC_SECRET",
    "MOAT_REDIS_PASSWORD",
    "MOAT_TEST_UNSET_SECRET",
    "MOAT_TEST_UNSET_TOKEN",
];

/// A listener, so that rows only show what they are about.
const LISTENER: &str = "listeners:\n  - name: public\n    address: 127.0.0.1:18080\n";

/// What one `moat check` run produced.
struct Checked {
    file: PathBuf,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Checked {
    /// The error lines: stderr after the `FILE: invalid config` header, unindented.
    /// Panics when the header is missing or a line is not indented.
    fn errors(&self) -> Vec<String> {
        let mut lines = self.stderr.lines();
        let header = format!("{}: invalid config", self.file.display());
        assert_eq!(
            lines.next(),
            Some(header.as_str()),
            "stderr header:\n{}",
            self.stderr
        );
        lines
            .map(|l| {
                l.strip_prefix("  ")
                    .unwrap_or_else(|| panic!("error line not indented: {l:?}\n{}", self.stderr))
                    .to_string()
            })
            .collect()
    }

    /// Asserts a failed check (exit 1, nothing on stdout) and returns its error lines.
    fn failed(&self) -> Vec<String> {
        assert_eq!(
            self.code,
            Some(1),
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stdout.is_empty(),
            "stdout on failure:\n{}",
            self.stdout
        );
        self.errors()
    }
}

/// Run `moat check -c file` with a scrubbed environment plus `env`.
fn run_check(file: &Path, env: &[(&str, &str)]) -> Checked {
    let mut cmd = Command::new(bin());
    cmd.args(["check", "-c"]).arg(file);
    for k in SCRUBBED {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run moat check");
    Checked {
        file: file.to_path_buf(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Write `text` to a temp file and check it.
fn check_text(tag: &str, text: &str) -> Checked {
    let dir = temp_dir(tag);
    let file = dir.join("moat.yaml");
    std::fs::write(&file, text).expect("write config");
    let c = run_check(&file, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    c
}

/// Whether `line` is what `expected` describes (exact, or a prefix when it ends with `…`).
fn line_matches(line: &str, expected: &str) -> bool {
    match expected.strip_suffix('…') {
        Some(prefix) => line.starts_with(prefix),
        None => line == expected,
    }
}

/// Compare error lines with expectations, in order; `None` when they match.
fn mismatch(got: &[String], want: &[&str]) -> Option<String> {
    let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| line_matches(g, w));
    (!ok).then(|| {
        format!(
            "  expected:\n    {}\n  got:\n    {}",
            want.join("\n    "),
            got.join("\n    ")
        )
    })
}

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn quickstart_passes_with_a_one_line_summary() {
    let file = manifest("conf/quickstart.yaml");
    let c = run_check(&file, &[]);
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert_eq!(
        c.stdout,
        format!(
            "{}: ok (1 listener, 4 routes, 1 upstream, 1 global plugin)\n",
            file.display()
        )
    );
    assert!(!c.stderr.contains("invalid config"), "{}", c.stderr);
}

#[test]
fn a_minimal_config_passes_and_counts_upstreams() {
    let c = check_text(
        "check-ok",
        &format!(
            "{LISTENER}upstreams:\n  a: {{ targets: [\"127.0.0.1:1\"] }}\n  b: {{ targets: [\"127.0.0.1:2\", {{ address: \"127.0.0.1:3\", weight: 5 }}] }}\nroutes:\n  - name: r\n    upstream: a\n"
        ),
    );
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert_eq!(c.stdout.lines().count(), 1, "{}", c.stdout);
    assert!(
        c.stdout
            .ends_with(": ok (1 listener, 1 route, 2 upstreams, 0 global plugins)\n"),
        "{}",
        c.stdout
    );
}

#[test]
fn plain_http_jwks_on_loopback_or_when_allowed_passes() {
    let providers: String = [
        ("a", "http://127.0.0.1:8081/certs", ""),
        ("b", "http://localhost:8081/certs", ""),
        ("c", "http://[::1]:8081/certs", ""),
        ("d", "https://auth.example.com/certs", ""),
        (
            "e",
            "http://auth.internal/certs",
            "    allow_insecure_jwks: true\n",
        ),
    ]
    .iter()
    .map(|(n, url, extra)| {
        format!("  {n}:\n    issuer: i\n    audiences: [a]\n    jwks_url: {url}\n    algorithms: [RS256]\n    jwks_cooldown: 1s\n{extra}")
    })
    .collect();
    let c = check_text(
        "check-jwks-http",
        &format!("{LISTENER}jwt_providers:\n{providers}"),
    );
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert!(c.stderr.is_empty(), "{}", c.stderr);
}

#[test]
fn a_bad_file_exits_1_with_every_error() {
    let c = check_text(
        "check-bad",
        &format!(
            "{LISTENER}routes:\n  - name: a\n    upstream: nope\n  - name: a\n    respond: {{}}\n"
        ),
    );
    assert_eq!(
        c.failed(),
        [
            "routes[0].upstream: unknown upstream `nope`",
            "routes[1].name: duplicate route name `a`"
        ]
    );
}

#[test]
fn a_missing_file_exits_1_with_a_clear_message() {
    let dir = temp_dir("check-missing");
    let file = dir.join("nope.yaml");
    let c = run_check(&file, &[]);
    let errors = c.failed();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("cannot read {}: ", file.display())),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("No such file or directory"),
        "{errors:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_yaml_and_non_mapping_files() {
    let errors = check_text("check-yaml", "routes: [\n").failed();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("invalid YAML: "), "{errors:?}");

    let errors = check_text("check-empty", "").failed();
    assert_eq!(errors, ["listeners: at least one listener is required"]);

    let errors = check_text("check-scalar", "just a string\n").failed();
    assert_eq!(errors, ["the config must be a mapping of sections"]);

    let errors = check_text(
        "check-dup",
        &format!("{LISTENER}admin:\n  address: 127.0.0.1:1\n  address: 127.0.0.1:2\n"),
    )
    .failed();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("duplicate"), "{errors:?}");
}

/// `conf/reference.yaml` (the contract's reference file with moat's additions, inside the
/// repository) passes the check once the secrets it names are set, and without them is
/// refused for exactly those.
#[test]
fn reference_file_passes_with_the_secrets_it_names() {
    let file = manifest("conf/reference.yaml");
    let c = run_check(
        &file,
        &[
            ("MOAT_ADMIN_TOKEN", "reference-admin-token-0123456789"),
            ("MOAT_REDIS_PASSWORD", "p"),
            ("ACME_HMAC_SECRET", "s"),
        ],
    );
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert_eq!(
        c.stdout,
        format!(
            "{}: ok (3 listeners, 3 routes, 1 upstream, 3 global plugins)\n",
            file.display()
        )
    );
    assert!(c.stderr.is_empty(), "warnings:\n{}", c.stderr);

    // Without them: those three, and the cluster-scope limiters that lose their Redis.
    let errors = run_check(&file, &[]).failed();
    let (secrets, rest): (Vec<&String>, Vec<&String>) = errors
        .iter()
        .partition(|e| e.contains("environment variable"));
    assert_eq!(
        secrets,
        [
            "admin.token_env: environment variable `MOAT_ADMIN_TOKEN` is not set",
            "redis.password_env: environment variable `MOAT_REDIS_PASSWORD` is not set",
            "consumers[0].hmac[0].secret_env: environment variable `ACME_HMAC_SECRET` is not set",
        ]
    );
    assert!(
        rest.iter()
            .all(|e| e.ends_with(".scope: scope: cluster needs the redis: section")),
        "{rest:#?}"
    );
}

/// One rejected config: the YAML (a listener is added unless it names `listeners:`
/// itself) and the exact error lines, in order.
struct Case {
    name: &'static str,
    yaml: String,
    errors: Vec<&'static str>,
}

fn case(name: &'static str, yaml: impl Into<String>, errors: &[&'static str]) -> Case {
    Case {
        name,
        yaml: yaml.into(),
        errors: errors.to_vec(),
    }
}

fn rejected_cases() -> Vec<Case> {
    let not_pem = manifest("Cargo.toml");
    let not_pem_line: &'static str = Box::leak(
        format!(
            "upstreams.u.tls.ca_file: `{}` holds no PEM certificate",
            not_pem.display()
        )
        .into_boxed_str(),
    );
    vec![
        // --- shape: unknown keys, with the key in the path ---
        case(
            "unknown section",
            "listenerz: []\n",
            &["listenerz: unknown section (expected server, listeners, admin, access_log, redis, watch, upstreams, consumers, jwt_providers, global_plugins or routes)"],
        ),
        case(
            "unknown key in a route",
            "routes:\n  - name: a\n    matc: { path: /x }\n    respond: {}\n",
            &["routes[0].matc: unknown field `matc`, expected one of `name`, `match`, …"],
        ),
        case(
            "unknown key in a plugin",
            "routes:\n  - name: a\n    respond: {}\n    plugins:\n      - request_id: {}\n      - rate_limit: { key: ip, rat: 1/s }\n",
            &[
                "routes[0].plugins[1].rate_limit.rat: unknown field `rat`, expected one of `key`, `rate`, …",
                "routes[0].plugins[1].rate_limit: missing field `rate`",
            ],
        ),
        case(
            "unknown keys deep in sections",
            "server:\n  limits: { max_bdy: 1 }\nupstreams:\n  u:\n    targets: [\"127.0.0.1:1\", { address: \"127.0.0.1:2\", wieght: 2 }]\n  v:\n    targets: [\"127.0.0.1:3\"]\n    tls: { sni: a, verfy: true }\nglobal_plugins:\n  - headers: { request: { sett: {} } }\n  - request_id: { trust: true }\nroutes:\n  - name: b\n    match: { path: /b, methodz: [GET] }\n    respond: {}\n  - name: c\n    rewrite: { strip: /a }\n    respond: {}\n",
            &[
                "server.limits.max_bdy: unknown field `max_bdy`, expected one of …",
                "upstreams.u.targets[1].wieght: unknown field `wieght`, expected `address` or `weight`",
                "upstreams.v.tls.verfy: unknown field `verfy`, expected one of `sni`, `verify`, `ca_file`",
                "global_plugins[0].headers.request.sett: unknown field `sett`, expected one of `set`, `add`, `remove`",
                "global_plugins[1].request_id.trust: unknown field `trust`, expected `trust_incoming`",
                "routes[0].match.methodz: unknown field `methodz`, expected one of …",
                "routes[1].rewrite.strip: unknown field `strip`, expected `strip_prefix` or `add_prefix`",
            ],
        ),
        case(
            "unknown plugin",
            "global_plugins:\n  - rate_limiter: {}\nroutes:\n  - name: a\n    respond: {}\n",
            &["global_plugins[0].rate_limiter: unknown plugin `rate_limiter`, expected one of request_id, headers, …"],
        ),
        case(
            "empty plugin and two plugins in one item",
            "global_plugins:\n  - {}\nroutes:\n  - name: a\n    respond: {}\n    plugins:\n      - headers: {}\n        cors: {}\n",
            &[
                "global_plugins[0]: empty plugin: name one of the plugins",
                "routes[0].plugins[0]: one plugin per list item: write each plugin as its own `- name: {...}`",
            ],
        ),
        case(
            "wrong shapes",
            "routes: {}\nupstreams: []\nglobal_plugins: 3\n",
            &["routes: expected a list", "upstreams: expected a mapping of names", "global_plugins: expected a list"],
        ),
        case(
            "wrong types",
            "server: { threads: x }\nroutes:\n  - 5\n  - name: a\n    match: { hosts: api.example.com }\n    respond: {}\n  - name: b\n    respond: { status: abc }\n",
            &[
                "server.threads: invalid type: string \"x\", expected usize",
                "routes[0]: expected a mapping",
                "routes[1].match.hosts: invalid type: string \"api.example.com\", expected a sequence",
                "routes[2].respond.status: invalid type: string \"abc\", expected u16",
            ],
        ),
        // --- units ---
        case(
            "bad duration",
            "server:\n  grace_period: 5\nupstreams:\n  u: { targets: [\"127.0.0.1:1\"], connect_timeout: 5sec }\n",
            &[
                "server.grace_period: expected a duration such as 250ms, 5s, 1m, 1h or 1d",
                "upstreams.u.connect_timeout: expected a duration such as 250ms, 5s, 1m, 1h or 1d",
            ],
        ),
        case(
            "durations over a year (they used to overflow where they were used)",
            "upstreams:\n  u:\n    targets: [\"127.0.0.1:1\"]\n    outlier: { consecutive_failures: 5, eject_for: 300000000d }\n",
            &["upstreams.u.outlier.eject_for: duration is too large: at most 365d"],
        ),
        case(
            "bad size",
            "server:\n  limits: { max_body: 10XB }\nroutes:\n  - name: a\n    respond: {}\n    max_body: 1.5MiB\n",
            &[
                "server.limits.max_body: expected a size such as 512, 64KiB or 10MiB",
                "routes[0].max_body: expected a size such as 512, 64KiB or 10MiB",
            ],
        ),
        case(
            "bad rate",
            "routes:\n  - name: a\n    respond: {}\n    plugins:\n      - rate_limit: { key: ip, rate: 10/x }\n  - name: b\n    respond: {}\n    plugins:\n      - rate_limit: { key: ip, rate: 0/s }\n      - quota: { key: ip, limit: 10 }\n",
            &[
                "routes[0].plugins[0].rate_limit.rate: expected N/s, N/m, N/h or N/d",
                "routes[1].plugins[0].rate_limit.rate: a rate must allow at least 1 request",
                "routes[1].plugins[1].quota.limit: expected N/s, N/m, N/h or N/d",
            ],
        ),
        // --- routes ---
        case(
            "route to an unknown upstream",
            "upstreams:\n  app: { targets: [\"127.0.0.1:1\"] }\nroutes:\n  - name: a\n    upstream: ap\n",
            &["routes[0].upstream: unknown upstream `ap`"],
        ),
        case(
            "duplicate and empty route names",
            "routes:\n  - name: a\n    respond: {}\n  - name: b\n    respond: {}\n  - name: a\n    respond: {}\n  - name: \"\"\n    respond: {}\n",
            &["routes[2].name: duplicate route name `a`", "routes[3].name: must not be empty"],
        ),
        case(
            "two actions, no action",
            "upstreams:\n  u: { targets: [\"127.0.0.1:1\"] }\nroutes:\n  - name: a\n    upstream: u\n    respond: {}\n  - name: b\n    match: { path: /b }\n  - name: c\n    respond: {}\n    redirect: { to: /x }\n",
            &[
                "routes[0]: needs exactly one action: upstream, respond or redirect",
                "routes[1]: needs exactly one action: upstream, respond or redirect",
                "routes[2]: needs exactly one action: upstream, respond or redirect",
            ],
        ),
        case(
            "two actions: neither is built, so neither's template is reported",
            "routes:\n  - name: a\n    respond: { body: \"{{nope}}\" }\n    redirect: { to: \"/{{nope}}\" }\n",
            &["routes[0]: needs exactly one action: upstream, respond or redirect"],
        ),
        case(
            "bad host patterns",
            "routes:\n  - name: a\n    match: { hosts: [\"api.example.com:8080\", \"http://x\", \"*.ok.com\", \"*bad.com\", \"a..b\"] }\n    respond: {}\n",
            &[
                "routes[0].match.hosts[0]: `api.example.com:8080` is not a host name or `*.suffix` wildcard (no port, no scheme)",
                "routes[0].match.hosts[1]: `http://x` is not a host name or `*.suffix` wildcard (no port, no scheme)",
                "routes[0].match.hosts[3]: `*bad.com` is not a host name or `*.suffix` wildcard (no port, no scheme)",
                "routes[0].match.hosts[4]: `a..b` is not a host name or `*.suffix` wildcard (no port, no scheme)",
            ],
        ),
        case(
            "paths must start with / and carry no query or spaces",
            "routes:\n  - name: a\n    match: { path: x }\n    respond: {}\n  - name: b\n    match: { path_prefix: \"/a b\" }\n    respond: {}\n  - name: c\n    match: { path: \"/a?x=1\" }\n    respond: {}\n  - name: d\n    match: { path: /d, path_prefix: /d }\n    respond: {}\n",
            &[
                "routes[0].match.path: `x` must be a path starting with `/` (no query, no spaces)",
                "routes[1].match.path_prefix: `/a b` must be a path starting with `/` (no query, no spaces)",
                "routes[2].match.path: `/a?x=1` must be a path starting with `/` (no query, no spaces)",
                "routes[3].match: give at most one of path, path_prefix, path_regex",
            ],
        ),
        case(
            "rewrite prefixes",
            "upstreams:\n  u: { targets: [\"127.0.0.1:1\"] }\nroutes:\n  - name: a\n    upstream: u\n    rewrite: { strip_prefix: api, add_prefix: \"/v2?x\" }\n  - name: b\n    respond: {}\n    rewrite: { add_prefix: /v2 }\n",
            &[
                "routes[0].rewrite.strip_prefix: must be a path starting with `/`",
                "routes[0].rewrite.add_prefix: must be a path starting with `/`",
                "routes[1].rewrite: applies only to routes with an `upstream` action",
            ],
        ),
        case(
            "methods must be HTTP tokens",
            "routes:\n  - name: a\n    match: { methods: [GET, \"GE T\", \"\", get, PURGE, \"GET/1\"] }\n    respond: {}\n",
            &[
                "routes[0].match.methods[1]: `GE T` is not an HTTP method",
                "routes[0].match.methods[2]: `` is not an HTTP method",
                "routes[0].match.methods[5]: `GET/1` is not an HTTP method",
            ],
        ),
        case(
            "match headers",
            "routes:\n  - name: a\n    match: { headers: { \"x y\": \"1\" } }\n    respond: {}\n",
            &["routes[0].match.headers.x y: `x y` is not a valid header name"],
        ),
        case(
            "unknown template variables in respond, redirect and headers",
            "routes:\n  - name: a\n    respond: { body: \"{{nope}}\", headers: { x-a: \"{{header.}}\" } }\n  - name: b\n    redirect: { to: \"/x{{pathh}}\" }\n  - name: c\n    respond: {}\n    plugins:\n      - headers: { request: { set: { x-b: \"{{consumer.name}}\" } } }\n  - name: d\n    respond: { body: \"{{path\" }\n",
            &[
                "routes[0].respond.body: unknown template variable `{{nope}}` (known: client_ip, request_id, route, method, host, path, query, uri, header.NAME, consumer.id, consumer.tier, claims.NAME)",
                "routes[0].respond.headers.x-a: unknown template variable `{{header.}}` (known: …",
                "routes[1].redirect.to: unknown template variable `{{pathh}}` (known: …",
                "routes[2].plugins[0].headers.request.set.x-b: unknown template variable `{{consumer.name}}` (known: …",
                "routes[3].respond.body: unclosed `{{` in template `{{path`",
            ],
        ),
        case(
            "respond and redirect values",
            "routes:\n  - name: a\n    respond: { status: 101 }\n  - name: b\n    redirect: { to: /x, status: 200 }\n  - name: c\n    redirect: { to: \"\" }\n",
            &[
                "routes[0].respond.status: must be between 200 and 599",
                "routes[1].redirect.status: must be 301, 302, 303, 307 or 308",
                "routes[2].redirect.to: must not be empty",
            ],
        ),
        case(
            "invalid header names",
            "routes:\n  - name: a\n    respond: { headers: { \"bad name\": x } }\n    plugins:\n      - headers: { response: { set: { \"x y\": \"1\" }, remove: [\"a:b\"] } }\n",
            &[
                "routes[0].respond.headers.bad name: `bad name` is not a valid header name",
                "routes[0].plugins[0].headers.response.remove[0]: `a:b` is not a valid header name",
                "routes[0].plugins[0].headers.response.set.x y: `x y` is not a valid header name",
            ],
        ),
        case(
            "framing headers are moat's",
            "global_plugins:\n  - headers: { request: { set: { content-length: \"1\" } } }\nroutes:\n  - name: a\n    respond: { headers: { content-length: \"3\" } }\n    plugins:\n      - headers: { response: { add: { Transfer-Encoding: chunked }, remove: [connection] } }\n",
            &[
                "global_plugins[0].headers.request.set.content-length: `content-length` is managed by moat and cannot be changed",
                "routes[0].respond.headers.content-length: `content-length` is managed by moat and cannot be changed",
                "routes[0].plugins[0].headers.response.remove[0]: `connection` is managed by moat and cannot be changed",
                "routes[0].plugins[0].headers.response.add.Transfer-Encoding: `Transfer-Encoding` is managed by moat and cannot be changed",
            ],
        ),
        case(
            "header values with control characters",
            "routes:\n  - name: a\n    respond: { headers: { x-a: \"a\\r\\nb\" } }\n    plugins:\n      - headers: { request: { set: { x-b: \"a\\nb\" } } }\n",
            &[
                "routes[0].respond.headers.x-a: value contains characters not allowed in a header",
                "routes[0].plugins[0].headers.request.set.x-b: value contains characters not allowed in a header",
            ],
        ),
        case(
            "a templated respond content type",
            "routes:\n  - name: a\n    respond: { body: \"{{path}}\", headers: { Content-Type: \"{{header.accept}}\" } }\n",
            &["routes[0].respond.headers.Content-Type: must be literal text: the body's values are escaped for the content type, chosen when the config is loaded"],
        ),
        case(
            "bad CIDR in trusted_proxies",
            "server:\n  trusted_proxies: [10.0.0.0/8, nope, 10.0.0.1/8, 10.0.0.0/33]\n",
            &[
                "server.trusted_proxies[1]: `nope` is not an IP address or CIDR network",
                "server.trusted_proxies[2]: `10.0.0.1/8` has bits set below its /8 prefix; write the network address",
                "server.trusted_proxies[3]: `10.0.0.0/33` has a prefix length outside 0..=32",
            ],
        ),
        // --- upstreams ---
        case(
            "consistent_hash without hash_key",
            "upstreams:\n  u: { targets: [\"127.0.0.1:1\"], balance: consistent_hash }\n",
            &["upstreams.u.hash_key: required with balance: consistent_hash"],
        ),
        case(
            "unknown balance",
            "upstreams:\n  u: { targets: [\"127.0.0.1:1\"], balance: fastest }\n",
            &["upstreams.u.balance: unknown variant `fastest`, expected one of `round_robin`, `random`, `consistent_hash`, `least_requests`"],
        ),
        case(
            "health_check needs exactly one of http, tcp",
            "upstreams:\n  u:\n    targets: [\"127.0.0.1:1\"]\n    health_check: { http: { path: /h }, tcp: {} }\n  v:\n    targets: [\"127.0.0.1:2\"]\n    health_check: { interval: 1s }\n  w:\n    targets: [\"127.0.0.1:3\"]\n    health_check: { http: { path: h, expect_status: 700 }, interval: 10ms, unhealthy_after: 0 }\n",
            &[
                "upstreams.u.health_check: give exactly one of http, tcp",
                "upstreams.v.health_check: give exactly one of http, tcp",
                "upstreams.w.health_check.http.path: must start with `/`",
                "upstreams.w.health_check.http.expect_status: must be an HTTP status (100-599)",
                "upstreams.w.health_check.interval: must be at least 100ms",
                "upstreams.w.health_check.unhealthy_after: must be at least 1",
            ],
        ),
        case(
            "outlier limits",
            "upstreams:\n  u:\n    targets: [\"127.0.0.1:1\"]\n    outlier: { consecutive_failures: 0, eject_for: 0s }\n",
            &[
                "upstreams.u.outlier.consecutive_failures: must be at least 1",
                "upstreams.u.outlier.eject_for: must be more than 0",
            ],
        ),
        case(
            "target weights, duplicates, addresses",
            "upstreams:\n  u:\n    targets: [{ address: \"127.0.0.1:1\", weight: 0 }, \"127.0.0.1:2\", \"127.0.0.1:2\", { address: \"127.0.0.1:3\", weight: 10001 }, nohost]\n  v: { targets: [] }\n  \"bad name\": { targets: [\"127.0.0.1:9\"] }\n",
            &[
                "upstreams.bad name: upstream names may use letters, digits, `-`, `_` and `.`",
                "upstreams.u.targets[0].weight: must be between 1 and 10000",
                "upstreams.u.targets[2]: duplicate target `127.0.0.1:2`",
                "upstreams.u.targets[3].weight: must be between 1 and 10000",
                "upstreams.u.targets[4].address: `nohost` needs a port (host:port)",
                "upstreams.v.targets: needs at least one target",
            ],
        ),
        case(
            "timeouts and retries",
            "upstreams:\n  u: { targets: [\"127.0.0.1:1\"], connect_timeout: 0s, read_timeout: 0ms, retries: 11 }\n",
            &[
                "upstreams.u.retries: must be at most 10",
                "upstreams.u.connect_timeout: must be more than 0",
                "upstreams.u.read_timeout: must be more than 0",
            ],
        ),
        case(
            "unreadable ca_file",
            "upstreams:\n  u:\n    targets: [\"127.0.0.1:1\"]\n    tls: { sni: x.internal, ca_file: /nonexistent/moat-ca.pem }\n",
            &["upstreams.u.tls.ca_file: cannot read `/nonexistent/moat-ca.pem`: No such file or directory…"],
        ),
        case(
            "ca_file that holds no certificate; verify without sni",
            format!("upstreams:\n  u:\n    targets: [\"127.0.0.1:1\"]\n    tls: {{ ca_file: \"{}\" }}\n", not_pem.display()),
            &["upstreams.u.tls.sni: required when verify is true (the name to verify)", not_pem_line],
        ),
        // --- identities and keys ---
        case(
            "secret env var unset",
            "consumers:\n  - id: acme\n    hmac:\n      - key_id: k\n        secret_env: MOAT_TEST_UNSET_SECRET\n",
            &[
                        "consumers[0].hmac[0].secret_env: environment variable `MOAT_TEST_UNSET_SECRET` is not set",
            ],
        ),
        case(
            "consumer ids and key hashes",
            "consumers:\n  - id: a\n    api_keys: [{ sha256: abc }]\n  - id: a\n",
            &[
                        "consumers[0].api_keys[0].sha256: must be 64 hex digits (the SHA-256 of the key)",
                "consumers[1].id: consumer ids must be unique and non-empty (`a`)",
            ],
        ),
        case(
            "identity namespaces: a consumer id in a provider's namespace, a provider name with `:`",
            "consumers:\n  - id: corp:alice\n  - id: partner:bob\n  - id: other:carol\njwt_providers:\n  corp:\n    jwks_url: http://127.0.0.1:1/certs\n    algorithms: [RS256]\n  partner:\n    jwks_url: http://127.0.0.1:1/certs\n    algorithms: [RS256]\n    consumer_map: consumers\n  \"a:b\":\n    jwks_url: http://127.0.0.1:1/certs\n    algorithms: [RS256]\n",
            &[
                "consumers[0].id: `corp:alice` is in the namespace of jwt provider `corp` (its tokens' consumers are `corp:VALUE`): rename the consumer, or set jwt_providers.corp.consumer_map: consumers",
                "jwt_providers.a:b: a provider name cannot hold `:`, which separates it from the claim in its consumers' ids (NAME:VALUE)",
            ],
        ),
        case(
            "JWKS: a cooldown under 1s, keys over plain http from another host",
            "jwt_providers:\n  p:\n    jwks_url: http://auth.example.com/certs\n    algorithms: [RS256]\n    jwks_cooldown: 500ms\n  q:\n    jwks_url: http://10.0.0.1:8080/certs\n    algorithms: [RS256]\n    jwks_cooldown: 0s\n",
            &[
                "jwt_providers.p.jwks_url: an http:// URL lets anyone on the way replace the keys: use https://, or set allow_insecure_jwks: true (loopback addresses need neither)",
                "jwt_providers.p.jwks_cooldown: must be at least 1s (it bounds how often tokens can make moat fetch the JWKS)",
                "jwt_providers.q.jwks_url: an http:// URL lets anyone on the way replace the keys: use https://, or set allow_insecure_jwks: true (loopback addresses need neither)",
                "jwt_providers.q.jwks_cooldown: must be at least 1s (it bounds how often tokens can make moat fetch the JWKS)",
            ],
        ),
        case(
            "HMAC: enforce_headers that are not header names, a replay capacity of 0",
            "routes:\n  - name: a\n    respond: {}\n    plugins:\n      - auth: { methods: [hmac], hmac: { enforce_headers: [host, \"x y\", Request-Line], replay_capacity: 0 } }\n",
            &[
                "routes[0].plugins[0].auth.hmac.enforce_headers[1]: `x y` is not a header name (or request-line)",
                "routes[0].plugins[0].auth.hmac.replay_capacity: must be at least 1",
            ],
        ),
        case(
            "HMAC: a clock skew and a replay window out of bounds",
            "routes:\n  - name: a\n    respond: {}\n    plugins:\n      - auth: { methods: [hmac], hmac: { clock_skew: 2h, replay_window: 61m } }\n  - name: b\n    respond: {}\n    plugins:\n      - auth: { methods: [hmac], hmac: { clock_skew: 0s } }\n",
            &[
                "routes[0].plugins[0].auth.hmac.clock_skew: must be between 1s and 1h",
                "routes[0].plugins[0].auth.hmac.replay_window: must be at most 1h (0s turns replay protection off)",
                "routes[1].plugins[0].auth.hmac.clock_skew: must be between 1s and 1h",
            ],
        ),
        case(
            "consumers: an id that cannot be X-Consumer-ID, jwt_providers that cannot name it",
            "consumers:\n  - id: \"a\\u0001b\"\n    jwt_providers: [nope, corp, partner]\njwt_providers:\n  corp:\n    jwks_url: http://127.0.0.1:1/certs\n    algorithms: [RS256]\n  partner:\n    jwks_url: http://127.0.0.1:1/certs\n    algorithms: [RS256]\n    consumer_map: consumers\n",
            &[
                "consumers[0].id: \"a\\u{1}b\" holds a control character: it could not be sent as X-Consumer-ID",
                "consumers[0].jwt_providers[0]: unknown jwt provider `nope`",
                "consumers[0].jwt_providers[1]: jwt provider `corp` does not set consumer_map: consumers (its tokens' consumers are `corp:VALUE`, never this one)",
            ],
        ),
        case(
            "auth names an unknown jwt provider",
            "routes:\n  - name: a\n    respond: {}\n    plugins:\n      - auth: { methods: [jwt], jwt: { provider: nope } }\n",
            &[
                "routes[0].plugins[0].auth.jwt.provider: unknown jwt provider `nope`",
                    ],
        ),
        case(
            "jwt provider mixing HS256 with RS256",
            "jwt_providers:\n  p:\n    jwks_url: http://127.0.0.1:1/certs\n    algorithms: [HS256, RS256, none]\n",
            &[
                "jwt_providers.p.algorithms[2]: unknown or refused algorithm `none`",
                "jwt_providers.p.algorithms: HS* algorithms cannot be mixed with RS/PS/ES/EdDSA",
            ],
        ),
        case(
            "jwt algorithms the JWT library lacks",
            "jwt_providers:\n  p:\n    jwks_url: http://127.0.0.1:1/certs\n    algorithms: [ES512, ES256, Ed448]\n",
            &[
                "jwt_providers.p.algorithms[0]: `ES512` is not supported: moat's JWT library (jsonwebtoken) does not implement it; use one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512",
                "jwt_providers.p.algorithms[2]: `Ed448` is not supported: moat's JWT library (jsonwebtoken) does not implement it; use one of …",
            ],
        ),
        case(
            "jwt provider key sources",
            "jwt_providers:\n  p:\n    algorithms: [RS256]\n  q:\n    jwks_file: /nonexistent/jwks.json\n    secret_env: MOAT_TEST_UNSET_SECRET\n    algorithms: []\n",
            &[
                "jwt_providers.p: give exactly one of jwks_url, jwks_file, public_key_file, secret_env",
                "jwt_providers.q: give exactly one of jwks_url, jwks_file, public_key_file, secret_env",
                "jwt_providers.q.jwks_file: cannot read `/nonexistent/jwks.json`: …",
                "jwt_providers.q.secret_env: environment variable `MOAT_TEST_UNSET_SECRET` is not set",
                "jwt_providers.q.algorithms: list the accepted algorithms",
            ],
        ),
        case(
            "limiter keys",
            "routes:\n  - name: a\n    respond: {}\n    plugins:\n      - concurrency: { key: \"header:\", max: 1 }\n",
            &[
                "routes[0].plugins[0].concurrency.key: `header:`: expected consumer, ip, route, header:NAME or claim:NAME",
            ],
        ),
        // --- process, listeners, admin, log ---
        case(
            "admin token_env unset",
            "admin:\n  address: 127.0.0.1:19901\n  token_env: MOAT_TEST_UNSET_TOKEN\n",
            &["admin.token_env: environment variable `MOAT_TEST_UNSET_TOKEN` is not set"],
        ),
        case(
            "admin on a non-loopback address without a token",
            "admin:\n  address: 0.0.0.0:19901\n",
            &["admin.address: `0.0.0.0:19901` is not a loopback address: protect it with admin.token_env or admin.token_file, or bind it to 127.0.0.1"],
        ),
        case(
            "admin on a public IPv6 address without a token",
            "admin:\n  address: \"[2001:db8::1]:19901\"\n",
            &["admin.address: `[2001:db8::1]:19901` is not a loopback address: protect it with admin.token_env or admin.token_file, or bind it to 127.0.0.1"],
        ),
        case(
            "admin token from two sources, a missing token file, bad allowed hosts",
            "admin:\n  address: 127.0.0.1:19901\n  token_env: MOAT_TEST_UNSET_TOKEN\n  token_file: /nonexistent/admin.token\n  allowed_hosts: [\"http://admin.internal\", \"admin.internal:9901\", \"10.0.0.1/8\", \"\"]\n",
            &[
                "admin: give token_env or token_file, not both",
                "admin.token_env: environment variable `MOAT_TEST_UNSET_TOKEN` is not set",
                "admin.token_file: cannot read `/nonexistent/admin.token`: …",
                "admin.allowed_hosts[0]: `http://admin.internal` is not a host name, IP address or CIDR network (no scheme, no port)",
                "admin.allowed_hosts[1]: `admin.internal:9901` is not a host name, IP address or CIDR network (no scheme, no port)",
                "admin.allowed_hosts[2]: `10.0.0.1/8` has bits set below its /8 prefix; write the network address",
                "admin.allowed_hosts[3]: `` is not a host name, IP address or CIDR network (no scheme, no port)",
            ],
        ),
        case(
            "admin address",
            "admin:\n  address: localhost:9901\n",
            &["admin.address: `localhost:9901` is not an ip:port address"],
        ),
        case(
            "admin on a public listener's address",
            "admin:\n  address: 127.0.0.1:18080\n",
            &["admin.address: must differ from every listener's address"],
        ),
        case(
            "listener addresses and names",
            "listeners:\n  - name: a\n    address: \"8080\"\n  - name: a\n    address: 0.0.0.0:80\n  - name: \"\"\n    address: 0.0.0.0:80\n",
            &[
                "listeners[0].address: `8080` is not an ip:port address",
                "listeners[1].name: listener names must be unique and non-empty (`a`)",
                "listeners[2].name: listener names must be unique and non-empty (``)",
                "listeners[2].address: `0.0.0.0:80` overlaps another listener's address",
            ],
        ),
        case(
            "no listeners",
            "listeners: []\nroutes:\n  - name: a\n    respond: {}\n",
            &["listeners: at least one listener is required"],
        ),
        case(
            "server settings",
            "server:\n  threads: 0\n  pid_file: /nonexistent/dir/moat.pid\n",
            &[
                "server.threads: must be between 1 and 1024",
                "server.pid_file: directory `/nonexistent/dir` does not exist",
            ],
        ),
        case(
            "connection limits",
            "server:\n  limits: { max_connections_per_ip: 0, max_connections: 0, per_ip_v6_prefix: 129 }\n",
            &[
                "server.limits.max_connections_per_ip: must be at least 1",
                "server.limits.max_connections: must be at least 1",
                "server.limits.per_ip_v6_prefix: must be a prefix length between 1 and 128",
            ],
        ),
        case(
            "access log",
            "access_log: { path: /nonexistent/dir/access.log }\n",
            &["access_log.path: directory `/nonexistent/dir` does not exist"],
        ),
        case(
            "access log format",
            "access_log: { path: stdout, format: text }\n",
            &["access_log.format: unknown variant `text`, expected `json`"],
        ),
        case("watch must be a boolean", "watch: sometimes\n", &["watch: invalid type: string \"sometimes\", expected a boolean"]),
        case(
            "redis: one of url, cluster and sentinel",
            "redis: { url: \"redis://h\", cluster: [\"redis://h:7000\"] }\n",
            &["redis: give only one of url, cluster and sentinel"],
        ),
        case(
            "redis sentinel, passwords and TLS files",
            "redis:\n  sentinel: { master: \"\", nodes: [\"h:x\"], password_env: MOAT_TEST_UNSET_SECRET }\n  password_env: MOAT_TEST_UNSET_TOKEN\n  tls: { ca_file: /nonexistent/ca.pem }\n",
            &[
                "redis.password_env: environment variable `MOAT_TEST_UNSET_TOKEN` is not set",
                "redis.sentinel.master: name the master to ask for",
                "redis.sentinel.password_env: environment variable `MOAT_TEST_UNSET_SECRET` is not set",
                "redis.sentinel.nodes[0]: expected host:port",
                "redis.tls.ca_file: cannot read /nonexistent/ca.pem: …",
            ],
        ),
        case(
            "redis TLS needs rediss://",
            "redis: { url: \"redis://h\", tls: { verify: true } }\n",
            &["redis.tls: TLS settings need rediss:// URLs (redis:// is plain text)"],
        ),
        case(
            "redis unknown TLS key",
            "redis: { url: \"rediss://h\", tls: { ca: x } }\n",
            &["redis.tls.ca: unknown field `ca`, expected one of …"],
        ),
    ]
}

#[test]
fn rejected_configs_report_path_and_message() {
    let cases = rejected_cases();
    let dir = temp_dir("check-table");
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let text = if c.yaml.starts_with("listeners:") {
            c.yaml.clone()
        } else {
            format!("{LISTENER}{}", c.yaml)
        };
        let file = dir.join(format!("case-{i}.yaml"));
        std::fs::write(&file, &text).expect("write config");
        let out = run_check(&file, &[]);
        if out.code != Some(1) || !out.stdout.is_empty() {
            failures.push(format!(
                "{}: exit {:?}, stdout {:?}, stderr:\n{}",
                c.name, out.code, out.stdout, out.stderr
            ));
            continue;
        }
        if let Some(m) = mismatch(&out.errors(), &c.errors) {
            failures.push(format!("{}:\n{m}", c.name));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn regex_that_does_not_compile() {
    let c = check_text(
        "check-regex",
        &format!("{LISTENER}routes:\n  - name: a\n    match: {{ path_regex: \"^/(a\" }}\n    respond: {{}}\n"),
    );
    assert_eq!(c.code, Some(1));
    let errors = c.errors();
    assert!(
        errors[0] == "routes[0].match.path_regex: invalid regex `^/(a`: unclosed group",
        "{errors:?}"
    );
    assert!(c.stderr.contains("unclosed group"), "{}", c.stderr);
}

/// Every error is one line, so that line counts are error counts and a continuation
/// never looks like an error of its own.
#[test]

fn regex_error_is_one_line() {
    let c = check_text(
        "check-regex-line",
        &format!("{LISTENER}routes:\n  - name: a\n    match: {{ path_regex: \"^/(a\" }}\n    respond: {{}}\n  - name: b\n    upstream: nope\n"),
    );
    let errors = c.failed();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("routes[0].match.path_regex: invalid regex"),
        "{errors:?}"
    );
    assert!(errors[0].contains("unclosed group"), "{errors:?}");
    assert_eq!(errors[1], "routes[1].upstream: unknown upstream `nope`");
}

/// Decoding errors in different sections, items and plugins are all reported, in the
/// order they appear in the file.
#[test]
fn every_decoding_error_is_reported_in_file_order() {
    let c = check_text(
        "check-many",
        "server: { threads: x }\nlisteners:\n  - name: public\n    adress: 127.0.0.1:1\nupstreams:\n  u: { targets: [\"127.0.0.1:1\"], connect_timeout: 1x }\nroutes:\n  - name: a\n    matc: {}\n  - name: b\n    respond: { status: abc }\n    plugins:\n      - rate_limit: { key: ip, rate: 10/x }\n      - nope: {}\n      - headers: {}\n        cors: {}\nlistenerz: []\n",
    );
    let want = [
        "server.threads: invalid type: string \"x\", expected usize",
        "listeners[0].adress: unknown field `adress`, expected one of …",
        "listeners[0]: missing field `address`",
        "upstreams.u.connect_timeout: expected a duration such as 250ms, 5s, 1m, 1h or 1d",
        "routes[0].matc: unknown field `matc`, expected one of …",
        "routes[1].respond.status: invalid type: string \"abc\", expected u16",
        "routes[1].plugins[0].rate_limit.rate: expected N/s, N/m, N/h or N/d",
        "routes[1].plugins[2]: one plugin per list item: write each plugin as its own `- name: {...}`",
        "listenerz: unknown section …",
    ];
    let errors = c.failed();
    assert_eq!(errors.len(), 9, "{errors:#?}");
    if let Some(m) = mismatch(&errors, &want) {
        panic!("{m}");
    }
}

const SEMANTIC_ERRORS: &str = "server:\n  threads: 0\n  trusted_proxies: [nope]\nlisteners:\n  - name: public\n    address: bad\nupstreams:\n  u: { targets: [\"127.0.0.1:1\"], balance: consistent_hash }\nroutes:\n  - name: a\n    match: { path: x }\n    upstream: missing\n  - name: b\n    respond: {}\n    plugins:\n      - rate_limit: { key: bogus, rate: 1/s }\n";

const SEMANTIC_IN_FILE_ORDER: &[&str] = &[
    "server.threads: must be between 1 and 1024",
    "server.trusted_proxies[0]: `nope` is not an IP address or CIDR network",
    "listeners[0].address: `bad` is not an ip:port address",
    "upstreams.u.hash_key: required with balance: consistent_hash",
    "routes[0].match.path: `x` must be a path starting with `/` (no query, no spaces)",
    "routes[0].upstream: unknown upstream `missing`",
    "routes[1].plugins[0].rate_limit.key: `bogus`: expected consumer, ip, route, header:NAME or claim:NAME",
];

/// Semantic errors (validation and compilation) across sections are all reported.
#[test]
fn every_semantic_error_is_reported() {
    let mut errors = check_text("check-semantic", SEMANTIC_ERRORS).failed();
    assert_eq!(errors.len(), SEMANTIC_IN_FILE_ORDER.len(), "{errors:#?}");
    errors.sort();
    let mut want: Vec<&str> = SEMANTIC_IN_FILE_ORDER.to_vec();
    want.sort();
    assert_eq!(errors, want);
}

#[test]

fn every_semantic_error_is_reported_in_file_order() {
    let errors = check_text("check-semantic-order", SEMANTIC_ERRORS).failed();
    assert_eq!(errors, SEMANTIC_IN_FILE_ORDER);
}

/// Two mistakes in the same route are both reported.
#[test]

fn two_mistakes_in_one_route_are_both_reported() {
    let errors = check_text(
        "check-two-in-one",
        &format!("{LISTENER}routes:\n  - name: b\n    match: {{ path: /b, methodz: [GET] }}\n    redirect: {{ to: /x, stat: 301 }}\n"),
    )
    .failed();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with("routes[0].match.methodz: unknown field"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("routes[0].redirect.stat: unknown field"),
        "{errors:?}"
    );
}

#[test]
fn warnings_are_printed_and_the_check_still_passes() {
    let dir = temp_dir("check-warnings");
    let file = dir.join("moat.yaml");
    let text = format!(
        "{LISTENER}redis:\n  url: 'redis://:hunter2@127.0.0.1:6379/0'\n\
         jwt_providers:\n  corp:\n    secret_env: MOAT_TEST_JWT_SECRET\n    algorithms: [HS256]\n"
    );
    std::fs::write(&file, text).expect("write config");
    let c = run_check(
        &file,
        &[("MOAT_TEST_JWT_SECRET", "0123456789abcdef0123456789abcdef")],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert!(
        c.stdout
            .ends_with(": ok (1 listener, 0 routes, 0 upstreams, 0 global plugins)\n"),
        "{}",
        c.stdout
    );
    let warnings: Vec<&str> = c
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "stderr:\n{}", c.stderr);
    assert!(
        warnings[0].starts_with("warning: redis.url: the URL holds a password"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("warning: jwt_providers.corp: no `issuer`"),
        "{warnings:?}"
    );
    assert!(
        warnings[2].starts_with("warning: jwt_providers.corp: no `audiences`"),
        "{warnings:?}"
    );
    // The password itself is never repeated.
    assert!(!c.stderr.contains("hunter2"), "{}", c.stderr);
}

#[test]
fn a_short_admin_token_is_a_warning() {
    let dir = temp_dir("check-short-token");
    let file = dir.join("moat.yaml");
    let text = format!(
        "{LISTENER}admin:\n  address: 127.0.0.1:19901\n  token_env: MOAT_TEST_SHORT_TOKEN\n"
    );
    std::fs::write(&file, text).expect("write config");
    let c = run_check(&file, &[("MOAT_TEST_SHORT_TOKEN", "hunter2")]);
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    let warnings: Vec<&str> = c
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(
        warnings,
        ["warning: admin.token_env: the token is 7 characters long: anyone who can reach the admin address can guess a short one; use at least 16 random characters (`moat keygen` prints one)"],
        "stderr:\n{}",
        c.stderr
    );
    assert!(!c.stderr.contains("hunter2"), "{}", c.stderr);
    let c = run_check(&file, &[("MOAT_TEST_SHORT_TOKEN", "0123456789abcdef")]);
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert!(!c.stderr.contains("warning: "), "{}", c.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
