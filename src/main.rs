//! The stock `moat` binary: the command line of [`moat::cli`] with no external plugins.

use std::process::ExitCode;

/// mimalloc: measured cheaper than glibc malloc for Pingora's many small per-request
/// allocations (see docs/performance.md); `examples/bare_proxy` uses it too, so
/// comparisons stay like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    moat::cli::main_with(moat::plugin::external::Extensions::default())
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), before
/// any connection is served.
///
/// mimalloc asks the kernel for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), so every
/// 2 MiB region it touches becomes resident as a whole. Pingora reserves 64 KiB buffers per
/// connection that an idle connection never fills; with huge pages they cost their full size
/// in RSS (~234 KiB per idle WebSocket instead of ~55 KiB with 4 KiB pages; see
/// docs/performance.md "Idle WebSockets"). The flag covers mappings made before this call too,
/// and is inherited across fork/exec (a graceful upgrade's new process sets it again anyway).
/// `MOAT_ALLOW_THP=1` keeps huge pages on. A failure (old kernel) is only logged to stderr.
/// Elsewhere than Linux this does nothing.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    if std::env::var_os("MOAT_ALLOW_THP").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes no pointers and only sets a flag on
    // this process's memory descriptor.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "moat: prctl(PR_SET_THP_DISABLE) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}
