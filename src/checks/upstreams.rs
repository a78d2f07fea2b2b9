//! The upstreams pass: every range and shape rule of `upstreams:` (names, targets and
//! their weights, `hash_key` with `consistent_hash`, retries, timeouts, outlier ejection,
//! the TLS name to verify, health-check settings). Resolving targets, reading CA files
//! and building probes are compile steps (`runtime::upstreams`), run after this pass.

use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{Balance, Config, HealthCheckConfig, UpstreamConfig};
use std::time::Duration;

/// The most retries an upstream may ask for.
const MAX_RETRIES: u32 = 10;

/// Record every problem of every upstream.
pub fn upstreams(cfg: &Config, errs: &mut ConfigErrors) {
    for (name, u) in &cfg.upstreams {
        let path = join("upstreams", name);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errs.push(
                path.as_str(),
                "upstream names may use letters, digits, `-`, `_` and `.`",
            );
        }
        targets(u, &path, errs);
        if u.balance == Balance::ConsistentHash && u.hash_key.is_none() {
            errs.push(
                join(&path, "hash_key"),
                "required with balance: consistent_hash",
            );
        }
        ranges(u, &path, errs);
        if u.tls
            .as_ref()
            .is_some_and(|t| t.verify && t.sni.as_deref().unwrap_or("").is_empty())
        {
            errs.push(
                join(&path, "tls.sni"),
                "required when verify is true (the name to verify)",
            );
        }
        if let Some(hc) = &u.health_check {
            health(hc, &join(&path, "health_check"), errs);
        }
    }
}

/// An address the compile step can resolve: `ip:port` or `host:port`.
pub fn has_port(addr: &str) -> bool {
    addr.contains(':')
}

/// `targets`: at least one, weights in range, each with a port (whether it resolves, and
/// to an address no other target has, is the compile step's: DNS).
fn targets(u: &UpstreamConfig, path: &str, errs: &mut ConfigErrors) {
    if u.targets.is_empty() {
        errs.push(join(path, "targets"), "needs at least one target");
    }
    for (i, t) in u.targets.iter().enumerate() {
        let tp = index(&join(path, "targets"), i);
        if t.weight == 0 || t.weight > 10_000 {
            errs.push(join(&tp, "weight"), "must be between 1 and 10000");
        }
        if !has_port(&t.address) {
            errs.push(
                join(&tp, "address"),
                format!("`{}` needs a port (host:port)", t.address),
            );
        }
    }
}

/// `outlier`, `retries`, `connect_timeout`, `read_timeout` in range.
fn ranges(u: &UpstreamConfig, path: &str, errs: &mut ConfigErrors) {
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
    if u.retries.is_some_and(|r| r > MAX_RETRIES) {
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
}

/// `health_check`: one kind of probe, its settings in range.
fn health(hc: &HealthCheckConfig, hp: &str, errs: &mut ConfigErrors) {
    if hc.http.is_some() == hc.tcp.is_some() {
        errs.push(hp, "give exactly one of http, tcp");
    }
    if let Some(http) = &hc.http {
        if !http.path.starts_with('/') {
            errs.push(join(hp, "http.path"), "must start with `/`");
        }
        if http
            .expect_status
            .is_some_and(|s| !(100..=599).contains(&s))
        {
            errs.push(
                join(hp, "http.expect_status"),
                "must be an HTTP status (100-599)",
            );
        }
    }
    if hc
        .interval
        .is_some_and(|d| d.get() < Duration::from_millis(100))
    {
        errs.push(join(hp, "interval"), "must be at least 100ms");
    }
    if hc.timeout.is_some_and(|d| d.get().is_zero()) {
        errs.push(join(hp, "timeout"), "must be more than 0");
    }
    for (k, v) in [
        ("unhealthy_after", hc.unhealthy_after),
        ("healthy_after", hc.healthy_after),
    ] {
        if v == Some(0) {
            errs.push(join(hp, k), "must be at least 1");
        }
    }
}
