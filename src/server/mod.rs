//! Starting the server: `server:` mapped onto Pingora's `ServerConf`, the proxy service on
//! every listener, the admin service, and the supervisor: a background service that runs
//! health checks and handles SIGHUP (reload), SIGUSR1 (reopen the access log) and, with
//! `watch: true`, file changes. SIGTERM/SIGINT (stop now) and SIGQUIT (drain and hand
//! over, [`crate::drain`]) are waited for by Pingora's main loop, as `crate::signals` maps
//! them.

mod tls;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::model::ListenerConfig;
use crate::config::Config;
use crate::drain::sequence::Sequence;
use crate::drain::{Drain, Stoppable};
use crate::metrics::Metrics;
use crate::plugin::external::Extensions;
use crate::proxy::Moat;
use crate::reload::Reloader;
use crate::runtime::{Runtime, SharedRuntime};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often a watched config file is looked at.
const WATCH_POLL: Duration = Duration::from_millis(500);

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
    // `grace_period` and `shutdown_timeout` are moat's drain sequence's
    // (`crate::drain::sequence`), which runs before Pingora's main loop goes on: by then
    // nothing is left to wait for. The runtimes then get a second for blocking tasks.
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    // Timers of a second or more (upstream read timeouts, pooled connections' idle
    // timeout) on tokio's per-worker timer wheel rather than Pingora's shared fast-timer
    // table: fewer instructions per request (measured with callgrind, docs/performance.md).
    conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    conf
}

/// Health checks, signals and the file watcher.
struct Supervisor {
    runtime: SharedRuntime,
    reloader: Arc<Reloader>,
    access_log: Option<AccessLog>,
}

fn modified(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        {
            let rt = self.runtime.load();
            for pool in rt.pools.values() {
                crate::upstream::health::start(pool);
            }
            crate::auth::start_background(&rt.auth, &rt.local_replay);
        }
        let (Ok(mut hup), Ok(mut usr1)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) else {
            log::error!("cannot install signal handlers: SIGHUP reload and SIGUSR1 reopen are off");
            let _ = shutdown.changed().await;
            return;
        };
        let mut seen = modified(self.reloader.path());
        let mut tick = tokio::time::interval(WATCH_POLL);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading {}", self.reloader.path().display());
                    let _ = self.reloader.reload().await;
                    seen = modified(self.reloader.path());
                }
                _ = usr1.recv() => {
                    let rt = self.runtime.load();
                    if let (Some(log), Some(cfg)) = (&self.access_log, &rt.config.access_log) {
                        match log.reopen(&cfg.path) {
                            Ok(()) => log::info!("SIGUSR1: access log {} reopened", cfg.path),
                            Err(e) => log::error!("SIGUSR1: cannot reopen {}: {e}", cfg.path),
                        }
                    }
                }
                _ = tick.tick() => {
                    if !self.runtime.load().config.watch {
                        continue;
                    }
                    let now = modified(self.reloader.path());
                    if now != seen {
                        // Debounce: wait for the file to stop changing before reading it.
                        tokio::time::sleep(WATCH_POLL).await;
                        if modified(self.reloader.path()) == now {
                            log::info!("config file changed: reloading");
                            let _ = self.reloader.reload().await;
                            seen = now;
                        }
                    }
                }
                // Only once the drain is over (see `crate::drain::sequence`).
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Probe every pool before listeners are taken, so dead targets get no first requests.
fn prime_pools(rt: &Runtime) {
    if rt.pools.values().all(|p| p.health_interval().is_none()) {
        return;
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(tokio_rt) => tokio_rt.block_on(async {
            futures::future::join_all(rt.pools.values().map(|p| p.prime_health())).await;
        }),
        Err(e) => log::warn!("cannot probe upstreams before start: {e}"),
    }
}

/// Compile the config at `path` and serve until shut down. Returns only on a start-up
/// error.
pub fn run(
    path: PathBuf,
    cfg: Config,
    opts: RunOptions,
    extensions: Extensions,
) -> Result<(), String> {
    catch_signals_early();
    if !opts.upgrade {
        crate::bind_check::check(&cfg)?;
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let listener_cfgs = cfg.listeners.clone();
    let admin_cfg = cfg.admin.clone();
    let conn_limiter = crate::conn::limit::Limiter::from_config(&cfg, &metrics);
    let h2_idle =
        Duration::from_secs(crate::runtime::RequestBounds::from_config(&cfg).idle_timeout_secs);
    let header_timeout = crate::conn::header_timeout(&cfg);
    let log_path = cfg.access_log.as_ref().map(|l| l.path.clone());
    let conf = server_conf(&cfg, opts.daemon);
    let pid_file = conf.pid_file.clone();
    let drain = Drain::new();
    let on_quit = Sequence::new(Arc::clone(&drain), &cfg, conf.upgrade_sock.clone());
    let extensions = Arc::new(extensions);
    let shared = first_generation(cfg, &metrics, &extensions)?;
    let access_log = match log_path {
        Some(p) => Some(AccessLog::start(&p).map_err(|e| format!("access_log.path `{p}`: {e}"))?),
        None => None,
    };
    let reloader = Arc::new(Reloader::new(
        path,
        Arc::clone(&shared),
        Arc::clone(&metrics),
        access_log.clone(),
        extensions,
    ));

    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    if !opts.daemon {
        write_pid_file(&pid_file);
    }
    let parts = Parts {
        runtime: Arc::clone(&shared),
        metrics,
        access_log: access_log.clone(),
        drain,
        header_timeout,
    };
    add_proxy_services(&mut server, &parts, &listener_cfgs, conn_limiter, h2_idle)?;
    if let Some(a) = admin_cfg {
        add_admin_service(
            &mut server,
            &parts,
            &a.address,
            &listener_cfgs,
            Arc::clone(&reloader),
        );
    }
    let final_log = access_log.clone();
    server.add_service(background_service(
        "moat supervisor",
        Supervisor {
            runtime: Arc::clone(&shared),
            reloader,
            access_log,
        },
    ));
    server.run(pingora_core::server::RunArgs {
        shutdown_signal: Box::new(crate::signals::MoatSignals { on_quit }),
    });
    // Every end comes back here (SIGTERM/SIGINT at once, SIGQUIT after draining): write
    // out the access-log lines still queued (the writer wakes every 50 ms) before exiting.
    if let Some(log) = final_log {
        log.flush_now();
    }
    std::process::exit(0)
}

/// Compile generation 1 of `cfg` (its warnings logged, its pools primed) into the live
/// runtime.
fn first_generation(
    cfg: Config,
    metrics: &Metrics,
    extensions: &Extensions,
) -> Result<SharedRuntime, String> {
    let runtime = Runtime::compile(cfg, 1, metrics, None, extensions).map_err(|e| e.to_string())?;
    runtime.log_warnings();
    prime_pools(&runtime);
    metrics.config_generation.set(1);
    Ok(Arc::new(ArcSwap::from_pointee(runtime)))
}

/// SIGHUP and SIGUSR1 would kill the process by default until the supervisor installs
/// its handlers; from here on they are caught (one arriving before the supervisor runs
/// is dropped, never fatal).
fn catch_signals_early() {
    for sig in [signal_hook::consts::SIGHUP, signal_hook::consts::SIGUSR1] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::new(AtomicBool::new(false))) {
            log::warn!("cannot catch signal {sig} early: {e}");
        }
    }
}

/// Pingora writes the pid file only when it daemonizes; a foreground moat (systemd
/// Type=simple, containers, an upgrade started in the foreground) writes it here, after
/// taking the sockets, so the file always names the serving process.
fn write_pid_file(pid_file: &str) {
    if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
        log::warn!("cannot write pid file {pid_file}: {e}");
    }
}

/// What the services of the process share.
struct Parts {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    drain: Arc<Drain>,
    /// `server.limits.header_timeout`, as of start-up.
    header_timeout: Duration,
}

/// The proxy services on every listener. Every proxy service runs behind the request
/// head deadline (`server.limits.header_timeout`). Plain listeners with `http2: true` also
/// take HTTP/2 with prior knowledge (h2c); Pingora sets that per service, so they get a
/// service of their own. An HTTP/2 connection with no stream open for `h2_idle` is closed
/// (as of start-up: reloads change it for HTTP/1 only).
fn add_proxy_services(
    server: &mut Server,
    parts: &Parts,
    listeners: &[ListenerConfig],
    conn_limiter: Option<Arc<crate::conn::limit::Limiter>>,
    h2_idle: Duration,
) -> Result<(), String> {
    let conf = Arc::clone(&server.configuration);
    let connector = Arc::new(pingora_core::connectors::TransportConnector::new(Some(
        pingora_core::connectors::ConnectorOptions::from_server_conf(&conf),
    )));
    let proxy_service = |name: &str, h2c: bool| {
        let moat = Moat {
            runtime: Arc::clone(&parts.runtime),
            metrics: Arc::clone(&parts.metrics),
            access_log: parts.access_log.clone(),
            drain: Arc::clone(&parts.drain),
            connector: Arc::clone(&connector),
        };
        let mut app = pingora_proxy::http_proxy(&conf, moat);
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = h2c;
        options.h2_idle_timeout = Some(h2_idle);
        // CONNECT reaches the proxy, which refuses it with the contract's 405 (see
        // `proxy::request_checks::check_head`): Pingora's own refusal is a bare 405.
        options.allow_connect_method_proxying = true;
        app.server_options = Some(options);
        let policy = crate::conn::Policy::new(parts.header_timeout, &parts.metrics, &parts.drain);
        let app = crate::conn::HeadTimeout::new(app, policy);
        crate::conn::limit::service(
            name,
            app,
            conn_limiter.clone(),
            parts.header_timeout,
            &parts.drain,
            &parts.metrics,
        )
    };
    let mut proxy = proxy_service("moat", false);
    let mut h2c_listeners = Vec::new();
    for l in listeners {
        if l.tls.is_some() {
            let settings = tls::settings(Arc::clone(&parts.runtime), l)?;
            proxy.add_tls_with_settings(&l.address, None, settings);
        } else if l.http2 == Some(true) {
            h2c_listeners.push(l.address.as_str());
        } else {
            proxy.add_tcp(&l.address);
        }
    }
    server.add_service(Stoppable::new(proxy, Arc::clone(&parts.drain)));
    if !h2c_listeners.is_empty() {
        let mut h2c = proxy_service("moat h2c", true);
        for addr in h2c_listeners {
            h2c.add_tcp(addr);
        }
        server.add_service(Stoppable::new(h2c, Arc::clone(&parts.drain)));
    }
    Ok(())
}

/// The admin service on `address`, behind the same head deadline as the proxy.
fn add_admin_service(
    server: &mut Server,
    parts: &Parts,
    address: &str,
    listeners: &[ListenerConfig],
    reloader: Arc<Reloader>,
) {
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.address.parse().ok())
        .collect();
    let app = Admin::new(
        Arc::clone(&parts.runtime),
        Arc::clone(&parts.metrics),
        addrs,
        Some(reloader),
        Arc::clone(&parts.drain),
    );
    let app = HttpServer::new_app(app);
    let policy = crate::conn::Policy::new(parts.header_timeout, &parts.metrics, &parts.drain);
    let app = crate::conn::HeadTimeout::new(app, policy);
    let mut svc = Service::new("moat admin".to_string(), app);
    svc.add_tcp(address);
    server.add_service(Stoppable::new(svc, Arc::clone(&parts.drain)));
}
