//! A fresh local volume for the engine's examples.

use hlfs_engine::{CreateOptions, LocalBackend, OpenOptions, Volume};
use std::path::Path;
use std::sync::Arc;

/// A new volume of `size` bytes with default options in `dir`, whatever was there removed.
pub fn fresh_volume(dir: &Path, size: u64) -> Result<Volume, Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(dir);
    let opts = CreateOptions {
        size,
        ..Default::default()
    };
    Ok(Volume::create(
        Arc::new(LocalBackend::new(dir)?),
        &opts,
        &OpenOptions::default(),
    )?)
}
