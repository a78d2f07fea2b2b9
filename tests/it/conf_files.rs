//! Every bundled config (`conf/*.yaml`, `conf/examples/*.yaml`) passes `moat check`, the
//! Dockerfile's dependency layer stubs every bench target Cargo.toml declares and every
//! example it builds, and no file of the repository names a path outside it
//! (`scripts/check-paths.sh`). `deploy/compose.yaml`: `compose.rs`.

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
                    // The secrets conf/reference.yaml names (its own test checks that
                    // they are the only thing it needs).
                    .env("MOAT_ADMIN_TOKEN", "example-admin-token-0123456789")
                    .env("MOAT_REDIS_PASSWORD", "p")
                    .env("ACME_HMAC_SECRET", "s")
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

/// Every example the Dockerfile builds (`--example NAME`) has its stub in the dependency
/// layer (building an example builds the dev-dependencies: without the stub they would be
/// rebuilt on every source change), and exists.
#[test]
fn dockerfile_stubs_every_example_it_builds() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docker = std::fs::read_to_string(format!("{root}/Dockerfile")).expect("Dockerfile");
    let words: Vec<&str> = docker.split_whitespace().collect();
    let examples: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "--example")
        .map(|w| w[1])
        .collect();
    assert!(
        !examples.is_empty(),
        "the Dockerfile builds examples/upstream"
    );
    for e in examples {
        assert!(
            docker.contains(&format!("> examples/{e}.rs")),
            "Dockerfile has no stub for example `{e}`"
        );
        assert!(
            std::path::Path::new(&format!("{root}/examples/{e}.rs")).exists(),
            "no examples/{e}.rs"
        );
    }
}

/// Run `scripts/check-paths.sh` on `root`: exit code and stderr.
fn check_paths(root: &std::path::Path) -> (Option<i32>, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-paths.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(root)
        .output()
        .expect("run check-paths.sh");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the path check on `root`: its exit code, the places it flagged (`file:line`, or
/// `file` for a symbolic link) in its order, and its stderr.
fn flagged(root: &std::path::Path) -> (Option<i32>, Vec<String>, String) {
    let (code, stderr) = check_paths(root);
    let places = stderr
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(at, _)| at.to_string()))
        .filter(|at| at != "check-paths")
        .collect();
    (code, places, stderr)
}

/// The repository names no path outside itself (what `scripts/test.sh` checks first).
#[test]
fn repository_names_no_path_outside_itself() {
    let (code, stderr) = check_paths(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(code, Some(0), "{stderr}");
}

/// The path check flags reads and links that leave the repository, and only those.
#[test]
fn path_check_flags_escapes_and_spares_paths_inside() {
    let root = crate::harness::moat::temp_dir("check-paths");
    // Flagged (each line marked, or this file would be flagged too):
    let shared = "include_str!(\"../../../shared/contract/r.yaml\");\n"; // check-paths: not a path
    let sibling = "manifest(\"../other-repo/moat.yaml\");\n"; // check-paths: not a path
    let readme = "`/work/notes/x.md`\n\n[docs](../../outside.md)\n"; // check-paths: not a path
    let script = "cp ../../../etc/moat.yaml conf/\n"; // check-paths: not a path

    // Spared: inside the repository from the file's directory or from the root.
    let include = "#[path = \"../../examples/upstream.rs\"]\nmod upstream;\n";
    let link = "[readme](../README.md), `conf/reference.yaml`\n"; // check-paths: not a path
    let vars = "ROOT=$(dirname \"$0\")/..\ncd \"$LT_DIR/../..\"\n";
    let marked = "kid(\"../../../../etc/passwd\"); // check-paths: not a path\n";
    let files = [
        ("src/config/load.rs", shared),
        ("tests/it/check.rs", sibling),
        ("README.md", readme),
        ("scripts/run.sh", script),
        ("examples/upstream.rs", "fn main() {}\n"),
        ("tests/it/quick.rs", include),
        ("docs/guide.md", link),
        ("loadtest/lib.sh", vars),
        ("tests/it/jwt.rs", marked),
    ];
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    let (code, places, stderr) = flagged(&root);
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        places,
        [
            "README.md:1",
            "README.md:3",
            "scripts/run.sh:1",
            "src/config/load.rs:1",
            "tests/it/check.rs:1",
        ],
        "{stderr}"
    );
}

/// Every file counts, whatever its directory (a `build.rs`, `.cargo/`, a new top-level
/// directory), and so do symbolic links, paths built on `CARGO_MANIFEST_DIR`, `$ROOT` or
/// the script's directory, home directories, this checkout's own absolute path and
/// anything that exists beside the checkout; a route path that names nothing there is no
/// path.
#[test]
fn path_check_sees_every_file_links_built_paths_and_absolute_ones() {
    let outer = crate::harness::moat::temp_dir("check-paths-all");
    let root = outer.join("repo");
    std::fs::create_dir_all(outer.join("notes")).expect("mkdir");
    std::fs::write(outer.join("notes/x.md"), "notes\n").expect("write");
    let (o, r) = (outer.display(), root.display());
    let files: Vec<(&str, String)> = vec![
        // Flagged (each line marked, or this file would be flagged too):
        ("build.rs", "include_str!(\"../notes/x.md\");\n".into()), // check-paths: not a path
        (".cargo/config.toml", "[build]\ntarget-dir = \"../../shared-target\"\n".into()), // check-paths: not a path
        ("tools/gen.sh", "cat ../notes/x.md\n".into()), // check-paths: not a path
        ("src/lib.rs", "concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../notes/x.md\");\n".into()), // check-paths: not a path
        ("scripts/a.sh", "cat \"$ROOT/../notes/x.md\"\n".into()), // check-paths: not a path
        ("scripts/b.sh", "cd \"$(dirname \"$0\")/../..\"\n".into()), // check-paths: not a path
        ("README.md", "see /home/dev/moat/conf/x.yaml\n".into()), // check-paths: not a path
        ("docs/a.md", format!("see `{o}/notes/x.md`\n")),
        ("docs/b.md", format!("config: {r}/conf/x.yaml\n")),
        // Spared:
        ("conf/routes.yaml", format!("match: {{ path_prefix: /work/orders }}\n# {o}/orders\n# http://127.0.0.1:8080/home/dev\n")), // check-paths: not a path
        ("src/main.rs", "concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/conf/x.yaml\"); // \"...\"\n".into()),
        ("scripts/c.sh", "cd \"$(dirname \"$0\")/..\" && ls \"$ROOT/conf\"\n".into()),
        ("plugins/p/Cargo.toml", "[package]\nname = \"p\"\n".into()),
        ("plugins/p/src/lib.rs", "concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../../conf/x\");\n".into()), // check-paths: not a path
    ];
    for (path, text) in &files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).expect("symlink");
    std::os::unix::fs::symlink("conf/routes.yaml", root.join("routes.yaml")).expect("symlink");
    let (code, places, stderr) = flagged(&root);
    let _ = std::fs::remove_dir_all(&outer);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        places,
        [
            ".cargo/config.toml:2",
            "README.md:1",
            "build.rs:1",
            "docs/a.md:1",
            "docs/b.md:1",
            "etc-link",
            "scripts/a.sh:1",
            "scripts/b.sh:1",
            "src/lib.rs:1",
            "tools/gen.sh:1",
        ],
        "{stderr}"
    );
}
