//! Replays every committed fuzz input through its target: the seed corpora (`fuzz/corpus/T/`)
//! and the inputs that once crashed (`fuzz/regressions/T/`). Runs on stable, without libfuzzer.

use hlfs_fuzz_targets::{target, TARGETS};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/KIND/NAME/`, sorted (none if the directory does not exist).
fn inputs(kind: &str, name: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(name);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs every input of target `name`; fails listing each input that panicked.
fn replay(name: &str) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let corpus = inputs("corpus", name);
    assert!(!corpus.is_empty(), "target {name} has no seed corpus");
    let mut failed = Vec::new();
    let mut n = 0;
    for p in corpus.iter().chain(&inputs("regressions", name)) {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        n += 1;
        if std::panic::catch_unwind(|| (t.run)(&data)).is_err() {
            failed.push(p.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: {} of {n} inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

macro_rules! replay_tests {
    ($($t:ident),*) => {
        $(#[test] fn $t() { replay(stringify!($t)); })*

        /// Every target has its replay test above, and every corpus directory is a target's.
        #[test]
        fn every_target_is_replayed() {
            let mut names = vec![$(stringify!($t)),*];
            let mut all: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
            names.sort_unstable();
            all.sort_unstable();
            assert_eq!(names, all);
            for kind in ["corpus", "regressions"] {
                let Ok(rd) = std::fs::read_dir(fuzz_dir().join(kind)) else { continue };
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    assert!(target(&n).is_some(), "fuzz/{kind}/{n} belongs to no target");
                }
            }
        }
    };
}

replay_tests!(
    nbd_handshake,
    nbd_transmission,
    segment,
    checkpoint,
    superblock,
    config,
    names
);
