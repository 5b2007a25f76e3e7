//! The bodies of the HLFS fuzz targets, as plain functions of the input bytes. `fuzz/` (a
//! cargo-fuzz crate outside the workspace) wraps each in `fuzz_target!`; `tests/corpus.rs`
//! replays every committed corpus and regression input through the same functions on the
//! stable toolchain, so that a finding, once fixed, stays fixed. See `docs/fuzzing.md`.
//!
//! A target panics when it finds a bug (a panic in the code under test, or a property it
//! checks that fails) and returns normally for any input that is merely invalid.

pub mod config;
pub mod engine;
pub mod names;
pub mod nbd;
pub mod scratch;

/// A fuzz target: its name (the directory of its corpus) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "nbd_handshake",
        run: nbd::handshake,
    },
    Target {
        name: "nbd_transmission",
        run: nbd::transmission,
    },
    Target {
        name: "segment",
        run: engine::segment,
    },
    Target {
        name: "checkpoint",
        run: engine::checkpoint,
    },
    Target {
        name: "superblock",
        run: engine::superblock,
    },
    Target {
        name: "config",
        run: config::config,
    },
    Target {
        name: "names",
        run: names::names,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
