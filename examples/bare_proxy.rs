//! Benchmark floor: the smallest Pingora 0.9 HTTP proxy to one upstream (no routing, no plugins).
//!
//! `bare_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--threads N]
//!  [--tls-cert FILE --tls-key FILE [--h2]]`
//!
//! With `--tls-cert`/`--tls-key` the listener terminates TLS (Pingora's Mozilla-intermediate
//! settings, as moat's TLS listeners use); `--h2` also offers HTTP/2 by ALPN, like a moat
//! listener with `http2: true`. The upstream is always plain HTTP/1.1.
//!
//! `loadtest/compare.sh` runs it beside `moat` so that moat's cost is quoted as a
//! ratio to what Pingora itself costs on the same machine.

use std::net::SocketAddr;
use std::process::exit;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

const USAGE: &str = "usage: bare_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT \
     [--threads N] [--tls-cert FILE --tls-key FILE [--h2]]";

/// Proxies every request to one fixed, plain-HTTP upstream.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        // A parsed SocketAddr: HttpPeer::new cannot fail on it.
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
    /// Certificate chain and key files (PEM) when the listener terminates TLS.
    tls: Option<(String, String)>,
    /// Offer HTTP/2 by ALPN (TLS only).
    h2: bool,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut threads) = (None, None, 1usize);
    let (mut cert, mut key, mut h2) = (None, None, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        if flag == "--h2" {
            h2 = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| bad(&e))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| bad(&e))?),
            "--threads" => {
                threads = value.parse().map_err(|e| bad(&e))?;
                if threads == 0 {
                    return Err("--threads must be at least 1".into());
                }
            }
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    if h2 && tls.is_none() {
        return Err("--h2 needs --tls-cert and --tls-key (h2 is offered by ALPN)".into());
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        threads,
        tls,
        h2,
    })
}

/// The same allocator as the `moat` binary, so the floor is measured like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    disable_transparent_huge_pages();
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("bare_proxy: {e}\n{USAGE}");
        exit(2)
    });

    let pid = std::process::id();
    let conf = ServerConf {
        threads: args.threads,
        pid_file: format!("/tmp/bare_proxy.{pid}.pid"),
        upgrade_sock: format!("/tmp/bare_proxy.{pid}.upgrade.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = http_proxy_service(
        &Arc::clone(&server.configuration),
        Bare {
            upstream: args.upstream,
        },
    );
    match &args.tls {
        Some((cert, key)) => {
            let mut tls = TlsSettings::intermediate(cert, key).unwrap_or_else(|e| {
                eprintln!("bare_proxy: TLS certificate {cert} / key {key}: {e}");
                exit(1)
            });
            if args.h2 {
                tls.enable_h2();
            }
            proxy.add_tls_with_settings(&args.listen.to_string(), None, tls);
        }
        None => proxy.add_tcp(&args.listen.to_string()),
    }
    server.add_service(proxy);
    server.run_forever();
}

/// Transparent huge pages off, as in the `moat` binary (src/main.rs), so idle-connection RSS
/// is measured like for like (`MOAT_ALLOW_THP=1` keeps them on here too).
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    if std::env::var_os("MOAT_ALLOW_THP").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes no pointers and only sets a flag on
    // this process's memory descriptor.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        eprintln!("bare_proxy: prctl(PR_SET_THP_DISABLE) failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}
