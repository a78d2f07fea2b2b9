//! `deploy/compose.yaml`, checked without a container engine (none runs here): it parses,
//! every moat service's config passes `moat check` with the environment the service gets,
//! the addresses in those configs are the ones the services have, and every program a
//! service runs from the image is one the Dockerfile installs.

use crate::harness::moat::bin;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// A service's environment, in either of compose's forms (mapping, or `K=V` list).
fn environment(svc: &Value) -> Vec<(String, String)> {
    match &svc["environment"] {
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
    }
}

/// The file on this side a path inside the container is: a bind mount of the service, or
/// `/etc/moat/` (the Dockerfile copies `conf/` there).
fn host_path(svc: &Value, in_container: &str, compose_dir: &Path) -> PathBuf {
    for vol in strings(&svc["volumes"]) {
        let mut parts = vol.split(':');
        if let (Some(src), Some(dst)) = (parts.next(), parts.next()) {
            if dst == in_container {
                return compose_dir.join(src);
            }
        }
    }
    match in_container.strip_prefix("/etc/moat/") {
        Some(rest) => root().join("conf").join(rest),
        None => panic!("{in_container}: neither mounted nor in the image's /etc/moat"),
    }
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

    let mut moats = 0;
    let mut cluster_limits = 0;
    for (name, svc) in &services {
        let built_here = svc["build"]["context"].as_str() == Some("..")
            && svc["build"]["dockerfile"].as_str() == Some("Dockerfile");
        if !built_here {
            assert!(
                svc["image"].as_str().is_some(),
                "{name}: an image or our build"
            );
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
        let config = host_path(svc, &command[2], &compose_dir);
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
        let text = std::fs::read_to_string(&config).expect("config");
        cluster_limits += text.matches("scope: cluster").count();
        moats += 1;
    }
    assert!(moats >= 2, "two moat instances, {moats} found");
    assert!(cluster_limits >= 1, "limits shared through Redis");
}
