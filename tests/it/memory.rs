//! Process memory settings of the real binary: transparent huge pages are off unless
//! `MOAT_ALLOW_THP=1` (idle connections would otherwise cost ~4x their RSS, see
//! docs/performance.md "Idle WebSockets").

use crate::harness::{Moat, Upstream};

/// The `THP_enabled:` field of /proc/PID/status ("1" or "0"), where the kernel has it.
fn thp_enabled(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
}

fn start(up: &Upstream, env: &[(&str, &str)]) -> Moat {
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.address()
    );
    Moat::start_with(&body, &[], env)
}

#[test]
fn transparent_huge_pages_are_off_unless_allowed() {
    let Some(ours) = thp_enabled("self") else {
        eprintln!("kernel without THP_enabled in /proc/PID/status: nothing to check");
        return;
    };
    let up = Upstream::start("app");
    let m = start(&up, &[]);
    assert_eq!(thp_enabled(&m.pid().to_string()).as_deref(), Some("0"));
    drop(m);
    // The opt-out leaves the process as it was inherited from us.
    let m = start(&up, &[("MOAT_ALLOW_THP", "1")]);
    assert_eq!(thp_enabled(&m.pid().to_string()), Some(ours));
}
