//! The CLI links the typed client only: no engine, no agent, no hdfs-native (what
//! `cargo tree -p hlfs-cli` shows). Also makes cargo build the `hlfs` binary for the
//! workspace's tests (the agent's tests run it from target/PROFILE/hlfs).

#[test]
fn no_engine_agent_or_hdfs_native_in_the_dependency_tree() {
    let tree = hlfs_test_support::dependency_tree(
        env!("CARGO"),
        env!("CARGO_MANIFEST_DIR"),
        "hlfs-cli",
        &["hlfs-engine", "hdfs-native", "hlfs-agent"],
    );
    assert!(tree.contains("hlfs-client "), "{tree}");
    // A small tree: distinct packages (the whole workspace locks over 200).
    let mut pkgs: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    assert!(
        pkgs.len() < 120,
        "{} packages:\n{}",
        pkgs.len(),
        pkgs.join(" ")
    );
}

/// The binary this package builds runs without a daemon for its generated pages.
#[test]
fn the_binary_prints_its_man_page() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hlfs"))
        .arg("man")
        .output()
        .expect("run hlfs");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(".TH hlfs"));
}
