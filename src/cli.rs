//! The `moat` command line: `run`, `check`, `keygen` and `sign`. The stock binary calls
//! [`main_with`] with no extensions; a custom binary (see `plugins/`) passes the plugins it
//! registers.

use crate::config;
use crate::metrics::Metrics;
use crate::plugin::external::Extensions;
use crate::runtime::Runtime;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "moat", version, about = "A programmable edge proxy on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve in the foreground.
    Run {
        /// The config file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Take the listening sockets over from the running instance.
        #[arg(long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short = 'd', long)]
        daemon: bool,
    },
    /// Load, validate and compile the config without serving.
    Check {
        /// The config file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Print a new random API key and its SHA-256 (for `consumers[].api_keys[].sha256`).
    Keygen {
        /// Text put in front of the random part (e.g. `mk_live_`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print the HMAC headers a client must send (the reference signer).
    Sign {
        /// The credential's key id (`consumers[].hmac[].key_id`).
        #[arg(long = "key-id")]
        key_id: String,
        /// Environment variable holding the shared secret.
        #[arg(long = "secret-env")]
        secret_env: String,
        /// hmac-sha256, hmac-sha384 or hmac-sha512.
        #[arg(long, default_value = "hmac-sha256")]
        algorithm: String,
        /// Extra header to send and sign, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// File holding the request body (adds a signed `Digest`).
        #[arg(long = "body-file")]
        body_file: Option<PathBuf>,
        /// HTTP method.
        method: String,
        /// The URL (or `/path?query`); the path and query are signed.
        url: String,
    },
}

fn load(path: &std::path::Path, ext: &Extensions) -> Result<(config::Config, Runtime), String> {
    let cfg = config::load_file(path).map_err(|e| e.to_string())?;
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let rt = Runtime::compile(cfg.clone(), 1, &metrics, None, ext).map_err(|e| e.to_string())?;
    Ok((cfg, rt))
}

fn sign(
    key_id: String,
    secret_env: String,
    algorithm: String,
    headers: Vec<String>,
    body_file: Option<PathBuf>,
    method: String,
    url: String,
) -> ExitCode {
    let Some(secret) = std::env::var_os(&secret_env).filter(|v| !v.is_empty()) else {
        eprintln!("environment variable `{secret_env}` is not set");
        return ExitCode::FAILURE;
    };
    let body = match &body_file {
        Some(f) => match std::fs::read(f) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("cannot read `{}`: {e}", f.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let secret = secret.into_encoded_bytes();
    let req = crate::auth::tools::SignRequest {
        key_id: &key_id,
        secret: &secret,
        algorithm: &algorithm,
        method: &method,
        url: &url,
        headers: &headers,
        body: body.as_deref(),
        now: crate::auth::dates::now_secs(),
    };
    match crate::auth::tools::sign(&req) {
        Ok(out) => {
            for (k, v) in out {
                println!("{k}: {v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Parse the command line and run it, with `ext` as the external plugins this binary
/// knows. Returns the process exit code.
pub fn main_with(ext: Extensions) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { prefix } => {
            let (key, hash) = crate::auth::tools::keygen(&prefix);
            println!("key:    {key}");
            println!("sha256: {hash}");
            ExitCode::SUCCESS
        }
        Command::Sign {
            key_id,
            secret_env,
            algorithm,
            headers,
            body_file,
            method,
            url,
        } => sign(
            key_id, secret_env, algorithm, headers, body_file, method, url,
        ),
        Command::Check { config } => match load(&config, &ext) {
            Ok((cfg, rt)) => {
                let n = |count: usize, what: &str| {
                    format!("{count} {what}{}", if count == 1 { "" } else { "s" })
                };
                println!(
                    "{}: ok ({}, {}, {}, {})",
                    config.display(),
                    n(cfg.listeners.len(), "listener"),
                    n(rt.routes.len(), "route"),
                    n(rt.pools.len(), "upstream"),
                    n(cfg.global_plugins.len(), "global plugin")
                );
                // Warnings never fail a check: they go to stderr, one per line.
                for w in &rt.warnings {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid config", config.display());
                for line in e.lines() {
                    eprintln!("  {line}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: path,
            upgrade,
            daemon,
        } => {
            let cfg = match config::load_file(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: invalid config", path.display());
                    for line in e.to_string().lines() {
                        eprintln!("  {line}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            match crate::server::run(
                path.clone(),
                cfg,
                crate::server::RunOptions { upgrade, daemon },
                ext,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: cannot start", path.display());
                    for line in e.lines() {
                        eprintln!("  {line}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}
