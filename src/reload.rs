//! Hot reload: read the config file again, validate and compile it off the request path,
//! then swap it in with one atomic store. Requests in flight keep the snapshot they
//! started with. Pools whose definition did not change are carried over (health state,
//! in-flight counts, connections); new pools are probed before they take traffic.
//!
//! A bad config changes nothing: the errors are returned (and logged), the old runtime
//! keeps serving, and `moat_config_reloads_total{result="error"}` counts it. Changes to
//! `server:`, listener addresses or the admin address need a graceful binary upgrade and are
//! refused with a message that says so.

use crate::access_log::AccessLog;
use crate::config::{self, Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::plugin::external::Extensions;
use crate::runtime::{Runtime, SharedRuntime};
use std::path::PathBuf;
use std::sync::Arc;

/// The outcome of a successful reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// A new generation is live.
    Swapped(u64),
    /// The file compiles to what is already live; nothing changed.
    Unchanged(u64),
}

impl Reloaded {
    /// The live generation after the reload.
    pub fn generation(self) -> u64 {
        match self {
            Reloaded::Swapped(g) | Reloaded::Unchanged(g) => g,
        }
    }
}

/// Reloads one config file into one shared runtime. Reloads are serialized.
pub struct Reloader {
    path: PathBuf,
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    extensions: Arc<Extensions>,
    lock: tokio::sync::Mutex<()>,
}

const UPGRADE_HINT: &str = "process-level settings cannot change on reload; restart with a \
graceful binary upgrade (`moat run -c FILE --upgrade`, then SIGQUIT the old process)";

/// Refuse changes that only a new process can apply.
pub fn check_process_level(old: &Config, new: &Config) -> Result<(), ConfigErrors> {
    let mut errs = ConfigErrors::default();
    if serde_json::to_value(&old.server).ok() != serde_json::to_value(&new.server).ok() {
        errs.push("server", UPGRADE_HINT);
    }
    // Certificates may change (they are re-read); TLS on/off, min_version and http2 are
    // part of the listening socket's settings.
    let addrs = |c: &Config| {
        let mut v: Vec<String> = c
            .listeners
            .iter()
            .map(|l| {
                format!(
                    "{} {} tls={} min={:?} h2={:?}",
                    l.name,
                    l.address,
                    l.tls.is_some(),
                    l.tls.as_ref().and_then(|t| t.min_version.as_deref()),
                    l.http2
                )
            })
            .collect();
        v.sort();
        v
    };
    if addrs(old) != addrs(new) {
        errs.push("listeners", UPGRADE_HINT);
    }
    if old.admin.as_ref().map(|a| &a.address) != new.admin.as_ref().map(|a| &a.address) {
        errs.push("admin.address", UPGRADE_HINT);
    }
    let log = |c: &Config| c.access_log.is_some();
    if log(old) != log(new) {
        errs.push(
            "access_log",
            "turning the access log on or off needs a restart; its path can change",
        );
    }
    errs.into_result(())
}

impl Reloader {
    /// A reloader for the file at `path`, swapping into `runtime`.
    pub fn new(
        path: PathBuf,
        runtime: SharedRuntime,
        metrics: Arc<Metrics>,
        access_log: Option<AccessLog>,
        extensions: Arc<Extensions>,
    ) -> Reloader {
        Reloader {
            path,
            runtime,
            metrics,
            access_log,
            extensions,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The config file being watched.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reload now. On error nothing changed.
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _serial = self.lock.lock().await;
        let result = self.reload_inner().await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(Reloaded::Swapped(g)) => {
                log::info!("config reloaded: generation {g} is live");
                self.runtime.load().log_warnings();
            }
            Ok(Reloaded::Unchanged(g)) => {
                log::info!("config reload: unchanged, generation {g} stays live")
            }
            Err(e) => log::error!(
                "config reload refused, the running config stays live:\n  {}",
                e.to_string().replace('\n', "\n  ")
            ),
        }
        result
    }

    async fn reload_inner(&self) -> Result<Reloaded, ConfigErrors> {
        let current = self.runtime.load_full();
        let path = self.path.clone();
        let metrics = Arc::clone(&self.metrics);
        let old = Arc::clone(&current);
        let extensions = Arc::clone(&self.extensions);
        // Parsing, DNS resolution and regex compilation are blocking work.
        let compiled = tokio::task::spawn_blocking(move || -> Result<Runtime, ConfigErrors> {
            let cfg = config::load_file(&path)?;
            check_process_level(&old.config, &cfg)?;
            Runtime::compile(cfg, old.generation + 1, &metrics, Some(&old), &extensions)
        })
        .await
        .map_err(|e| {
            let mut errs = ConfigErrors::default();
            errs.push("", format!("reload task failed: {e}"));
            errs
        })??;

        let same_pools = compiled.pools.len() == current.pools.len()
            && compiled
                .pools
                .iter()
                .all(|(k, p)| current.pools.get(k).is_some_and(|o| Arc::ptr_eq(o, p)));
        let same_config = serde_json::to_value(&compiled.config).ok()
            == serde_json::to_value(&current.config).ok();
        let same_certs = compiled.tls.len() == current.tls.len()
            && compiled.tls.iter().all(|(k, s)| {
                current
                    .tls
                    .get(k)
                    .is_some_and(|o| o.fingerprint == s.fingerprint)
            });
        // The admin token can come from a file: new content is a change of its own.
        let same_token = compiled.admin.same_token(&current.admin);
        if same_pools && same_config && same_certs && same_token {
            return Ok(Reloaded::Unchanged(current.generation));
        }

        // New pools are probed before they take traffic.
        let fresh: Vec<_> = compiled
            .pools
            .values()
            .filter(|p| !current.pools.values().any(|o| Arc::ptr_eq(o, p)))
            .cloned()
            .collect();
        futures::future::join_all(fresh.iter().map(|p| p.prime_health())).await;

        if let (Some(log), Some(new_log)) = (&self.access_log, &compiled.config.access_log) {
            let old_path = current.config.access_log.as_ref().map(|l| l.path.as_str());
            if old_path != Some(new_log.path.as_str()) {
                log.reopen(&new_log.path).map_err(|e| {
                    let mut errs = ConfigErrors::default();
                    errs.push(
                        "access_log.path",
                        format!("cannot open `{}`: {e}", new_log.path),
                    );
                    errs
                })?;
            }
        }

        let generation = compiled.generation;
        let compiled = Arc::new(compiled);
        self.runtime.store(Arc::clone(&compiled));
        self.metrics.config_generation.set(generation as i64);
        for p in &fresh {
            crate::upstream::health::start(p);
        }
        crate::auth::start_background(&compiled.auth, &compiled.local_replay);
        for (name, old) in &current.pools {
            if compiled.pools.values().any(|p| Arc::ptr_eq(p, old)) {
                continue;
            }
            old.retire();
            // Targets that are gone leave no health gauges behind.
            let kept = compiled.pools.get(name);
            for t in &old.targets {
                if !kept.is_some_and(|p| p.targets.iter().any(|n| n.label == t.label)) {
                    let _ = self
                        .metrics
                        .target_healthy
                        .remove_label_values(&[name.as_str(), t.label.as_str()]);
                }
            }
        }
        Ok(Reloaded::Swapped(generation))
    }
}
