//! Every bundled config (`conf/*.yaml`, `conf/examples/*.yaml`) passes `moat check`, and the
//! Dockerfile's dependency layer stubs every bench target Cargo.toml declares.

use std::process::Command;

#[test]
fn bundled_configs_pass_check() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for dir in ["conf", "conf/examples"] {
        let Ok(entries) = std::fs::read_dir(format!("{root}/{dir}")) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let out = Command::new(crate::harness::moat::bin())
                    .args(["check", "-c"])
                    .arg(&p)
                    .current_dir(root)
                    .output()
                    .expect("run moat check");
                assert!(
                    out.status.success(),
                    "{}: {}",
                    p.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "only {checked} configs found");
}

/// The Dockerfile's dependency layer builds against stub sources: every bench target
/// Cargo.toml declares needs its stub there, or `docker build` fails (no Docker engine
/// runs here to notice).
#[test]
fn dockerfile_stubs_every_declared_bench() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).expect("Cargo.toml");
    let docker = std::fs::read_to_string(format!("{root}/Dockerfile")).expect("Dockerfile");
    let mut benches = Vec::new();
    let mut in_bench = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bench = line == "[[bench]]";
        } else if let (true, Some(v)) = (in_bench, line.strip_prefix("name = ")) {
            benches.push(v.trim_matches('"').to_string());
        }
    }
    assert!(benches.len() >= 4, "benches found: {benches:?}");
    for b in &benches {
        assert!(
            docker.contains(&format!("> benches/{b}.rs")),
            "Dockerfile has no stub for bench `{b}`"
        );
    }
}
