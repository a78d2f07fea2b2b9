//! `deploy/compose.yaml`, checked without a container engine (none runs here): it parses,
//! every moat service's config passes `moat check` with the environment the service gets
//! (a required variable given a test value), the addresses in those configs are the ones the
//! services have, every program a service runs from the image is one the Dockerfile
//! installs, the image is built by one service only, the moat config is mounted by its
//! directory (so an edited file reaches the container), and `stop_grace_period` covers
//! moat's drain after `SIGQUIT`.

use crate::harness::moat::bin;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Compose applies `<<: *anchor` merge keys; so must we.
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Values the test gives the variables the compose file requires (`${NAME:?message}`).
const REQUIRED: &[(&str, &str)] = &[("MOAT_ADMIN_TOKEN", "compose-test-admin-token-0123456789")];

/// `v` as compose interpolates it: `${NAME:?message}` (compose refuses to start while NAME
/// is unset) becomes the test's value for NAME; the file uses no other form.
fn interpolate(v: String) -> String {
    let Some(inner) = v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
        assert!(
            !v.contains('$'),
            "`{v}`: only ${{NAME:?message}} is expected"
        );
        return v;
    };
    let (name, _) = inner
        .split_once(":?")
        .unwrap_or_else(|| panic!("`{v}`: a required variable, ${{NAME:?message}}"));
    REQUIRED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_string())
        .unwrap_or_else(|| panic!("`{v}`: no test value for {name}"))
}

/// A service's environment, in either of compose's forms (mapping, or `K=V` list),
/// interpolated.
fn environment(svc: &Value) -> Vec<(String, String)> {
    let raw: Vec<(String, String)> = match &svc["environment"] {
        Value::Mapping(m) => m
            .iter()
            .filter_map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.as_str()?.to_string(), v))
            })
            .collect(),
        v => strings(v)
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect(),
    };
    raw.into_iter().map(|(k, v)| (k, interpolate(v))).collect()
}

/// Where a file inside the container comes from.
enum Source {
    /// A bind mount of the file itself.
    FileMount(PathBuf),
    /// A file of a bind-mounted directory.
    DirMount(PathBuf),
    /// The image: `/etc/moat/` is the Dockerfile's copy of `conf/`.
    Image(PathBuf),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::FileMount(p) | Source::DirMount(p) | Source::Image(p) => p,
        }
    }
}

/// The file on this side a path inside the container is.
fn host_path(svc: &Value, in_container: &str, compose_dir: &Path) -> Source {
    for vol in strings(&svc["volumes"]) {
        let mut parts = vol.split(':');
        if let (Some(src), Some(dst)) = (parts.next(), parts.next()) {
            if dst == in_container {
                return Source::FileMount(compose_dir.join(src));
            }
            if let Some(rest) = in_container.strip_prefix(&format!("{dst}/")) {
                return Source::DirMount(compose_dir.join(src).join(rest));
            }
        }
    }
    match in_container.strip_prefix("/etc/moat/") {
        Some(rest) => Source::Image(root().join("conf").join(rest)),
        None => panic!("{in_container}: neither mounted nor in the image's /etc/moat"),
    }
}

/// A compose duration (`25s`, `1m30s`, `500ms`) in moat's units, one unit at a time.
fn compose_duration(v: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        total += moat::config::units::parse_duration(&rest[..unit_end])
            .unwrap_or_else(|e| panic!("`{v}`: {e}"));
        rest = &rest[unit_end..];
    }
    total
}

/// `ip:port` of `host:port`, `redis://host:port/db`.
fn ip_port(addr: &str) -> (Ipv4Addr, u16) {
    let hostport = addr
        .strip_prefix("redis://")
        .map(|r| r.split('/').next().unwrap_or(r))
        .unwrap_or(addr);
    let (ip, port) = hostport.rsplit_once(':').expect("host:port");
    (
        ip.parse()
            .unwrap_or_else(|_| panic!("`{addr}`: a fixed IPv4 address")),
        port.parse().expect("port"),
    )
}

#[test]
fn compose_file_runs_checked_configs_at_the_addresses_it_gives() {
    let compose_dir = root().join("deploy");
    let compose = yaml(&compose_dir.join("compose.yaml"));
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let entrypoint = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .map(|e| e.trim_matches(|c| "[]\" ".contains(c)).to_string())
        .expect("ENTRYPOINT in the Dockerfile");
    let services = compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("name").to_string(), v.clone()))
        .collect::<BTreeMap<_, _>>();

    // The network the fixed addresses live on.
    let subnet = compose["networks"]["moat"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("networks.moat subnet");
    let (net, bits) = subnet.split_once('/').expect("a CIDR");
    let (net, bits): (Ipv4Addr, u32) = (net.parse().expect("IPv4"), bits.parse().expect("bits"));
    let mask = u32::MAX << (32 - bits);
    let mut ip_of = BTreeMap::new();
    for (name, svc) in &services {
        let ip: Ipv4Addr = svc["networks"]["moat"]["ipv4_address"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: a fixed address on networks.moat"))
            .parse()
            .expect("IPv4");
        assert_eq!(
            u32::from(ip) & mask,
            u32::from(net),
            "{name}: {ip} outside {subnet}"
        );
        assert!(ip_of.insert(ip, name.clone()).is_none(), "{ip} given twice");
    }

    // The image is built once: by one service, which names it; the others run it by name.
    let builders: Vec<&String> = services
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(builders.len(), 1, "services that build: {builders:?}");
    let builder = &services[builders[0]];
    assert_eq!(builder["build"]["context"].as_str(), Some(".."));
    assert_eq!(builder["build"]["dockerfile"].as_str(), Some("Dockerfile"));
    let ours = builder["image"]
        .as_str()
        .expect("the built image is named, so the others can run it");

    let mut moats = 0;
    let mut cluster_limits = 0;
    for (name, svc) in &services {
        let image = svc["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: an image"));
        if image != ours {
            continue;
        }
        let program = strings(&svc["entrypoint"])
            .first()
            .cloned()
            .unwrap_or_else(|| entrypoint.clone());
        if program != "moat" {
            assert!(
                dockerfile.contains(&format!("COPY --from=builder /usr/local/bin/{program} ")),
                "{name} runs `{program}`, which the Dockerfile does not install"
            );
            continue;
        }
        let command = strings(&svc["command"]);
        assert_eq!(
            command.get(..2),
            Some(&["run".to_string(), "-c".to_string()][..]),
            "{name}"
        );
        // No secret in the file: a token, password or secret comes from the environment
        // of whoever runs compose.
        if let Value::Mapping(env) = &svc["environment"] {
            for (k, v) in env {
                let (k, v) = (k.as_str().unwrap_or(""), v.as_str().unwrap_or(""));
                if ["TOKEN", "SECRET", "PASSWORD"]
                    .iter()
                    .any(|s| k.contains(s))
                {
                    assert!(v.starts_with("${"), "{name}: {k} is written in the file");
                }
            }
        }
        let source = host_path(svc, &command[2], &compose_dir);
        // Editors and `sed -i` replace a file: a single-file bind mount would go on showing
        // the container the old one, and a reload would read it.
        assert!(
            !matches!(source, Source::FileMount(_)),
            "{name}: mount the config's directory, not the file"
        );
        let config = source.path().to_path_buf();
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(&config)
            .current_dir(root())
            .env_remove("MOAT_ADMIN_TOKEN")
            .envs(environment(svc))
            .output()
            .expect("run moat check");
        assert!(
            out.status.success(),
            "{name}: {}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );

        // What the config connects to is a service of this file, at that port.
        let cfg = yaml(&config);
        if let Some(url) = cfg["redis"]["url"].as_str() {
            let (ip, port) = ip_port(url);
            let redis = &services[ip_of
                .get(&ip)
                .unwrap_or_else(|| panic!("{url}: no service"))];
            assert!(
                redis["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("redis:"))
                    && port == 6379,
                "{url} is not the redis service"
            );
        }
        for (pool, up) in cfg["upstreams"].as_mapping().expect("upstreams") {
            for t in up["targets"].as_sequence().expect("targets") {
                let addr = t.as_str().or(t["address"].as_str()).expect("target");
                let (ip, port) = ip_port(addr);
                let target = ip_of
                    .get(&ip)
                    .unwrap_or_else(|| panic!("{pool:?}: {addr} is no service"));
                let listen = strings(&services[target]["command"]);
                assert!(
                    listen
                        .windows(2)
                        .any(|w| w[0] == "--listen" && w[1] == format!("0.0.0.0:{port}")),
                    "{addr}: {target} does not listen on {port}: {listen:?}"
                );
            }
        }
        // Its listeners are what the service publishes.
        let ports = strings(&svc["ports"]);
        for l in cfg["listeners"].as_sequence().expect("listeners") {
            let (_, port) = ip_port(l["address"].as_str().expect("address"));
            assert!(
                ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
                "{name}: listener port {port} not published: {ports:?}"
            );
        }
        // SIGQUIT drains: compose must not SIGKILL before moat is done. The bound: the
        // sockets offered to a new process (Pingora retries ~5 s when none takes them) or
        // grace_period if longer, shutdown_timeout, LINGER for what was still open, 1 s for
        // Pingora's runtimes (docs/operations.md, the drain timeline).
        assert_eq!(svc["stop_signal"].as_str(), Some("SIGQUIT"), "{name}");
        let server = &cfg["server"];
        let setting = |key: &str, default: Duration| {
            server[key].as_str().map_or(default, |v| {
                moat::config::units::parse_duration(v).expect("duration")
            })
        };
        use moat::drain::sequence::{DEFAULT_GRACE_PERIOD, DEFAULT_SHUTDOWN_TIMEOUT, LINGER};
        let bound = setting("grace_period", DEFAULT_GRACE_PERIOD).max(Duration::from_secs(5))
            + setting("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)
            + LINGER
            + Duration::from_secs(1);
        let stop = compose_duration(
            svc["stop_grace_period"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: stop_grace_period")),
        );
        assert!(
            stop > bound,
            "{name}: stop_grace_period {stop:?} within the drain's {bound:?}"
        );

        let text = std::fs::read_to_string(&config).expect("config");
        cluster_limits += text.matches("scope: cluster").count();
        moats += 1;
    }
    assert!(moats >= 2, "two moat instances, {moats} found");
    assert!(cluster_limits >= 1, "limits shared through Redis");
}
