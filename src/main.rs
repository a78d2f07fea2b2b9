//! The stock `moat` binary: the command line of [`moat::cli`] with no external plugins.

use std::process::ExitCode;

/// mimalloc: measured cheaper than glibc malloc for Pingora's many small per-request
/// allocations (see docs/performance.md); `examples/bare_proxy` uses it too, so
/// comparisons stay like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    moat::cli::main_with(moat::plugin::registry::Extensions::default())
}
