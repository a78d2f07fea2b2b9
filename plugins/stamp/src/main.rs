//! `moat-stamp`: moat's command line with the example `stamp` plugin registered.

mod stamp;

use moat::plugin::external::Extensions;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    moat::cli::main_with(Extensions::default().register("stamp", stamp::StampFactory))
}
