//! External tools and their results, as the integration tests use them.

use std::path::PathBuf;
use std::process::Output;

/// The path of `name` on PATH; panics (the test fails, it never skips silently) if it is
/// missing.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required tool `{name}` is not installed (scripts/setup-test.sh installs every tool the \
         tests use)"
    );
}

/// The stdout of a command that must have succeeded (the test fails with its output if not).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The stderr of a command that must have failed.
pub fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "unexpectedly succeeded:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}
