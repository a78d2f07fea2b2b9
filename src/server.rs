//! Starting the server: `server:` mapped onto Pingora's `ServerConf`, the proxy service on
//! every listener, the admin service, and the background service that runs health checks.

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Moat;
use crate::runtime::{Runtime, SharedRuntime};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::net::SocketAddr;
use std::sync::Arc;

/// Default `grace_period`: how long an instance keeps accepting after SIGQUIT, so a new
/// one can take over the sockets (Pingora's own default is far longer than an edge wants).
pub const DEFAULT_GRACE_PERIOD_SECS: u64 = 5;
/// Default `shutdown_timeout`: how long in-flight requests get to finish.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Take the sockets over from a running instance.
    pub upgrade: bool,
    /// Run in the background.
    pub daemon: bool,
}

/// `server:` as Pingora's `ServerConf`.
pub fn server_conf(cfg: &Config, daemon: bool) -> ServerConf {
    let s = &cfg.server;
    let mut conf = ServerConf {
        daemon,
        ..ServerConf::default()
    };
    conf.threads = s.threads.unwrap_or(conf.threads.max(1));
    let pid = std::process::id();
    conf.pid_file = s
        .pid_file
        .clone()
        .unwrap_or_else(|| format!("/tmp/moat-{pid}.pid"));
    conf.upgrade_sock = s
        .upgrade_sock
        .clone()
        .unwrap_or_else(|| "/tmp/moat-upgrade.sock".to_string());
    conf.grace_period_seconds = Some(
        s.grace_period
            .map(|d| d.get().as_secs())
            .unwrap_or(DEFAULT_GRACE_PERIOD_SECS),
    );
    conf.graceful_shutdown_timeout_seconds = Some(
        s.shutdown_timeout
            .map(|d| d.get().as_secs())
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
    );
    conf
}

/// Starts health-check loops for the pools of the live runtime.
struct Supervisor {
    runtime: SharedRuntime,
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for pool in self.runtime.load().pools.values() {
            crate::upstream::health::start(pool);
        }
        let _ = shutdown.changed().await;
    }
}

/// Compile `cfg` and serve until shut down. Returns only on a start-up error.
pub fn run(cfg: Config, opts: RunOptions) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let listeners: Vec<String> = cfg.listeners.iter().map(|l| l.address.clone()).collect();
    let admin_cfg = cfg.admin.clone();
    let log_path = cfg.access_log.as_ref().map(|l| l.path.clone());
    let conf = server_conf(&cfg, opts.daemon);
    let runtime = Runtime::compile(cfg, 1, &metrics).map_err(|e| e.to_string())?;
    metrics.config_generation.set(1);
    let shared: SharedRuntime = Arc::new(ArcSwap::from_pointee(runtime));
    let access_log = match log_path {
        Some(p) => Some(AccessLog::start(&p).map_err(|e| format!("access_log.path `{p}`: {e}"))?),
        None => None,
    };

    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let moat = Moat {
        runtime: Arc::clone(&shared),
        metrics: Arc::clone(&metrics),
        access_log,
    };
    let mut proxy =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, moat, "moat");
    for addr in &listeners {
        proxy.add_tcp(addr);
    }
    server.add_service(proxy);

    if let Some(a) = admin_cfg {
        let token = a.token_env.as_ref().and_then(|v| std::env::var(v).ok());
        let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.parse().ok()).collect();
        let app = Admin::new(Arc::clone(&shared), Arc::clone(&metrics), token, addrs);
        let mut svc = Service::new("moat admin".to_string(), HttpServer::new_app(app));
        svc.add_tcp(&a.address);
        server.add_service(svc);
    }
    server.add_service(background_service(
        "moat supervisor",
        Supervisor {
            runtime: Arc::clone(&shared),
        },
    ));
    server.run_forever()
}
