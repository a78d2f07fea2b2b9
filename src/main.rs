//! The `moat` command line: `run`, `check` (and, as they land, `keygen` and `sign`).

use clap::{Parser, Subcommand};
use moat::config;
use moat::metrics::Metrics;
use moat::runtime::Runtime;
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
}

fn load(path: &std::path::Path) -> Result<(config::Config, Runtime), String> {
    let cfg = config::load_file(path).map_err(|e| e.to_string())?;
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let rt = Runtime::compile(cfg.clone(), 1, &metrics, None).map_err(|e| e.to_string())?;
    Ok((cfg, rt))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(&config) {
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
            match moat::server::run(
                path.clone(),
                cfg,
                moat::server::RunOptions { upgrade, daemon },
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
