//! The normal and build dependency tree of a workspace package, as `cargo tree` prints it:
//! the lean crates (client, CLI) assert what they must not link.

/// Runs `cargo tree --offline -p PACKAGE -e normal,build --prefix none` from `dir` and returns
/// its lines; asserts that the tree starts with `package` and holds none of `banned`.
pub fn dependency_tree(cargo: &str, dir: &str, package: &str, banned: &[&str]) -> String {
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .current_dir(dir)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(tree.starts_with(&format!("{package} ")), "{tree}");
    for banned in banned {
        assert!(!tree.contains(banned), "{banned} in:\n{tree}");
    }
    tree
}
