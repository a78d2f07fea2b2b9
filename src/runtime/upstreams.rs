//! Compiling `upstreams:` into pools: resolving targets (DNS), reading CA files, building
//! probes and pools, recording every error with its path. The rules of `upstreams:` are
//! the upstreams pass's (`checks::upstreams`), which runs before.

use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{Balance, Config, UpstreamConfig, UpstreamTlsConfig};
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

/// `addr` resolved (DNS); `None` for one without a port, which the upstreams pass refused.
fn resolve(addr: &str) -> Option<Result<SocketAddr, String>> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(Ok(a));
    }
    if !crate::checks::upstreams::has_port(addr) {
        return None;
    }
    Some(
        addr.to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{addr}`: {e}"))
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| format!("`{addr}` resolves to no address"))
            }),
    )
}

/// Build one pool: targets resolved, `hash_key` parsed, CA file read, the probe built
/// (from settings the upstreams pass, which ran before, found right), then the pool
/// when nothing under the upstream's path is wrong.
fn compile_one(
    name: &str,
    u: &UpstreamConfig,
    path: &str,
    metrics: &Metrics,
    errs: &mut ConfigErrors,
) -> Option<Pool> {
    let targets = targets(u, path, errs);
    let hash_key = match &u.hash_key {
        Some(k) if u.balance == Balance::ConsistentHash => Template::parse(k)
            .map_err(|e| errs.push(join(path, "hash_key"), e))
            .ok(),
        // Ignored by the other algorithms (a warning says so).
        _ => None,
    };
    let tls = u.tls.as_ref().map(|t| peer_tls(t, path, errs));
    let gauges = health::TargetGauges::default();
    let health = u.health_check.as_ref().and_then(|hc| {
        // A probe is built from settings the upstreams pass found right.
        let hp = join(path, "health_check");
        if errs.any_under(&hp) {
            return None;
        }
        health::build(hc, tls.as_ref(), u.http2.unwrap_or(false), &gauges)
            .map_err(|e| errs.push(hp, e))
            .ok()
    });
    if errs.any_under(path) {
        return None;
    }
    let pool = Pool::new(
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
            retries: u.retries.unwrap_or(DEFAULT_RETRIES),
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
    .ok()?;
    gauges.fill(&pool);
    Some(pool)
}

/// `targets` resolved (DNS), each to an address no other target has.
fn targets(u: &UpstreamConfig, path: &str, errs: &mut ConfigErrors) -> Vec<(SocketAddr, usize)> {
    let mut targets: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tp = index(&join(path, "targets"), i);
        match resolve(&t.address) {
            Some(Ok(a)) if targets.iter().any(|(x, _)| *x == a) => {
                errs.push(tp, format!("duplicate target `{}`", t.address))
            }
            Some(Ok(a)) => targets.push((a, t.weight as usize)),
            Some(Err(e)) => errs.push(join(&tp, "address"), e),
            None => {}
        }
    }
    targets
}

/// `tls`: the CA file read and parsed.
fn peer_tls(t: &UpstreamTlsConfig, path: &str, errs: &mut ConfigErrors) -> PeerTls {
    let tp = join(path, "tls");
    let sni = t.sni.clone().unwrap_or_default();
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
