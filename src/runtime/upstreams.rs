//! Compiling `upstreams:` into pools, recording every error with its path.

use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{Balance, Config, HealthCheckConfig, UpstreamConfig, UpstreamTlsConfig};
use crate::metrics::Metrics;
use crate::template::Template;
use crate::upstream::health;
use crate::upstream::pool::{PeerTls, Pool, PoolSettings};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default read timeout (time between bytes from the upstream).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default retries on another target.
pub const DEFAULT_RETRIES: u32 = 1;

/// Compile every pool. A pool of `previous` whose definition (and CA file) did not change
/// is carried over as it is, with its health state, in-flight counts and connections.
pub(super) fn compile(
    cfg: &Config,
    metrics: &Metrics,
    previous: Option<&BTreeMap<String, Arc<Pool>>>,
    errs: &mut ConfigErrors,
) -> BTreeMap<String, Arc<Pool>> {
    let mut pools = BTreeMap::new();
    for (name, u) in &cfg.upstreams {
        let path = join("upstreams", name);
        if let Some(old) = previous.and_then(|p| p.get(name)) {
            let ca = u
                .tls
                .as_ref()
                .and_then(|t| t.ca_file.as_ref())
                .and_then(|f| std::fs::read(f).ok());
            if old.reusable_for(u, ca.as_deref()) {
                pools.insert(name.clone(), Arc::clone(old));
                continue;
            }
        }
        if let Some(p) = compile_one(name, u, &path, metrics, errs) {
            pools.insert(name.clone(), Arc::new(p));
        }
    }
    pools
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("`{addr}` needs a port (host:port)"));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{addr}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{addr}` resolves to no address"))
}

fn compile_one(
    name: &str,
    u: &UpstreamConfig,
    path: &str,
    metrics: &Metrics,
    errs: &mut ConfigErrors,
) -> Option<Pool> {
    let before = errs.checkpoint();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        errs.push(
            path,
            "upstream names may use letters, digits, `-`, `_` and `.`",
        );
    }
    let targets = targets(u, path, errs);
    let hash_key = hash_key(u, path, errs);
    let retries = ranges(u, path, errs);
    let tls = u.tls.as_ref().map(|t| peer_tls(t, path, errs));
    let health = u
        .health_check
        .as_ref()
        .and_then(|hc| health(name, u, hc, tls.as_ref(), path, metrics, errs));
    if !errs.clean_since(before) {
        return None;
    }
    Pool::new(
        PoolSettings {
            name: name.to_string(),
            targets,
            balance: u.balance,
            hash_key,
            connect_timeout: u
                .connect_timeout
                .map(|d| d.get())
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            read_timeout: u
                .read_timeout
                .map(|d| d.get())
                .unwrap_or(DEFAULT_READ_TIMEOUT),
            retries,
            outlier: u
                .outlier
                .as_ref()
                .map(|o| (o.consecutive_failures, o.eject_for.get())),
            tls,
            http2: u.http2.unwrap_or(false),
            health,
            unhealthy_after: u
                .health_check
                .as_ref()
                .and_then(|h| h.unhealthy_after)
                .unwrap_or(3) as usize,
            definition: u.clone(),
        },
        metrics,
    )
    .map_err(|e| errs.push(path, e))
    .ok()
}

/// `targets`: each resolved (DNS), weights in range, no duplicate.
fn targets(u: &UpstreamConfig, path: &str, errs: &mut ConfigErrors) -> Vec<(SocketAddr, usize)> {
    if u.targets.is_empty() {
        errs.push(join(path, "targets"), "needs at least one target");
    }
    let mut targets: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tp = index(&join(path, "targets"), i);
        if t.weight == 0 || t.weight > 10_000 {
            errs.push(join(&tp, "weight"), "must be between 1 and 10000");
        }
        match resolve(&t.address) {
            Ok(a) if targets.iter().any(|(x, _)| *x == a) => {
                errs.push(tp, format!("duplicate target `{}`", t.address))
            }
            Ok(a) => targets.push((a, t.weight as usize)),
            Err(e) => errs.push(join(&tp, "address"), e),
        }
    }
    targets
}

/// `hash_key`: a template, required with `consistent_hash` (ignored by the other
/// algorithms).
fn hash_key(u: &UpstreamConfig, path: &str, errs: &mut ConfigErrors) -> Option<Template> {
    match (&u.hash_key, u.balance) {
        (Some(k), Balance::ConsistentHash) => Template::parse(k)
            .map_err(|e| errs.push(join(path, "hash_key"), e))
            .ok(),
        (None, Balance::ConsistentHash) => {
            errs.push(
                join(path, "hash_key"),
                "required with balance: consistent_hash",
            );
            None
        }
        // Ignored by the other algorithms (documented), as the reference file shows.
        (_, _) => None,
    }
}

/// `outlier`, `retries`, `connect_timeout`, `read_timeout` in range; the retries.
fn ranges(u: &UpstreamConfig, path: &str, errs: &mut ConfigErrors) -> u32 {
    if let Some(o) = &u.outlier {
        if o.consecutive_failures == 0 {
            errs.push(
                join(path, "outlier.consecutive_failures"),
                "must be at least 1",
            );
        }
        if o.eject_for.get().is_zero() {
            errs.push(join(path, "outlier.eject_for"), "must be more than 0");
        }
    }
    let retries = u.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > 10 {
        errs.push(join(path, "retries"), "must be at most 10");
    }
    for (k, d) in [
        ("connect_timeout", u.connect_timeout),
        ("read_timeout", u.read_timeout),
    ] {
        if d.is_some_and(|d| d.get().is_zero()) {
            errs.push(join(path, k), "must be more than 0");
        }
    }
    retries
}

/// `tls`: the name to verify, the CA file read and parsed.
fn peer_tls(t: &UpstreamTlsConfig, path: &str, errs: &mut ConfigErrors) -> PeerTls {
    let tp = join(path, "tls");
    let sni = t.sni.clone().unwrap_or_default();
    if t.verify && sni.is_empty() {
        errs.push(
            join(&tp, "sni"),
            "required when verify is true (the name to verify)",
        );
    }
    let mut ca_pem = None;
    let ca = match &t.ca_file {
        Some(f) => match std::fs::read(f) {
            Ok(pem) => match pingora_core::tls::x509::X509::stack_from_pem(&pem) {
                Ok(certs) if !certs.is_empty() => {
                    ca_pem = Some(pem);
                    Some(Arc::new(certs.into_boxed_slice()))
                }
                _ => {
                    errs.push(
                        join(&tp, "ca_file"),
                        format!("`{f}` holds no PEM certificate"),
                    );
                    None
                }
            },
            Err(e) => {
                errs.push(join(&tp, "ca_file"), format!("cannot read `{f}`: {e}"));
                None
            }
        },
        None => None,
    };
    PeerTls {
        sni,
        verify: t.verify,
        ca,
        ca_pem,
    }
}

/// `health_check`: its settings in range, then the probe built.
fn health(
    name: &str,
    u: &UpstreamConfig,
    hc: &HealthCheckConfig,
    tls: Option<&PeerTls>,
    path: &str,
    metrics: &Metrics,
    errs: &mut ConfigErrors,
) -> Option<(
    Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync>,
    Duration,
)> {
    let hp = join(path, "health_check");
    let hb = errs.checkpoint();
    match (&hc.http, &hc.tcp) {
        (Some(_), Some(_)) | (None, None) => errs.push(hp.clone(), "give exactly one of http, tcp"),
        _ => {}
    }
    if let Some(http) = &hc.http {
        if !http.path.starts_with('/') {
            errs.push(join(&hp, "http.path"), "must start with `/`");
        }
        if http
            .expect_status
            .is_some_and(|s| !(100..=599).contains(&s))
        {
            errs.push(
                join(&hp, "http.expect_status"),
                "must be an HTTP status (100-599)",
            );
        }
    }
    if hc
        .interval
        .is_some_and(|d| d.get() < Duration::from_millis(100))
    {
        errs.push(join(&hp, "interval"), "must be at least 100ms");
    }
    if hc.timeout.is_some_and(|d| d.get().is_zero()) {
        errs.push(join(&hp, "timeout"), "must be more than 0");
    }
    for (k, v) in [
        ("unhealthy_after", hc.unhealthy_after),
        ("healthy_after", hc.healthy_after),
    ] {
        if v == Some(0) {
            errs.push(join(&hp, k), "must be at least 1");
        }
    }
    if !errs.clean_since(hb) {
        return None;
    }
    health::build(
        name,
        hc,
        tls,
        u.http2.unwrap_or(false),
        &metrics.target_healthy,
    )
    .map_err(|e| errs.push(hp, e))
    .ok()
}
