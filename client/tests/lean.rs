//! The client links neither the engine nor hdfs-native (what `cargo tree -p hlfs-client` shows).

#[test]
fn no_engine_and_no_hdfs_native_in_the_dependency_tree() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "hlfs-client",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.starts_with("hlfs-client "), "{tree}");
    assert!(tree.contains("zbus "), "{tree}");
    for banned in ["hlfs-engine", "hdfs-native", "hlfs-agent"] {
        assert!(!tree.contains(banned), "{banned} in:\n{tree}");
    }
}
