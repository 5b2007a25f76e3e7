//! The client links neither the engine nor hdfs-native (what `cargo tree -p hlfs-client` shows).

#[test]
fn no_engine_and_no_hdfs_native_in_the_dependency_tree() {
    let tree = hlfs_test_support::dependency_tree(
        env!("CARGO"),
        env!("CARGO_MANIFEST_DIR"),
        "hlfs-client",
        &["hlfs-engine", "hdfs-native", "hlfs-agent"],
    );
    assert!(tree.contains("zbus "), "{tree}");
}
