//! Benchmark floor: the smallest Pingora 0.9 HTTP proxy to one upstream (no routing, no plugins).
//!
//! `bare_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--threads N]`
//!
//! `loadtest/compare.sh` runs it beside `moat` so that moat's cost is quoted as a
//! ratio to what Pingora itself costs on the same machine.

use std::net::SocketAddr;
use std::process::exit;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

const USAGE: &str =
    "usage: bare_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--threads N]";

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
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut threads) = (None, None, 1usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
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
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        threads,
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
    proxy.add_tcp(&args.listen.to_string());
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
