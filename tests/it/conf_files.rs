//! Every bundled config (`conf/*.yaml`, `conf/examples/*.yaml`) passes `moat check`.

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
