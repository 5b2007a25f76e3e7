//! A disk that fills up while writes and the cleaner's copy thread compete for the last space:
//! a real one (a small tmpfs the test mounts, then grows). Without the right to mount (not
//! root), the test says so and passes, as the HDFS tests do without HDFS.

mod common;

use common::{read_all, Rng};
use hlfs_engine::{CleanPolicy, CreateOptions, LocalBackend, OpenOptions, Volume};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Unmounts the tmpfs when the test ends, whatever happens.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mounted> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mounted(at.to_path_buf()))
}

#[test]
fn disk_full_while_cleaning_loses_nothing_flushed() {
    for seed in [11, 12, 13] {
        if !disk_full_run(seed) {
            return;
        }
    }
}

/// One run; false if it could not mount.
fn disk_full_run(seed: u64) -> bool {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = tmp.path().join("fs");
    std::fs::create_dir(&fs).expect("mkdir");
    let Some(_mounted) = mount_tmpfs(&fs, "2m") else {
        eprintln!("disk_full: skipped, cannot mount a tmpfs here (needs root)");
        return false;
    };
    let dir = fs.join("vol");
    let size = 4u64 << 20;
    let opts = CreateOptions {
        size,
        segment_size: 64 * 1024,
        checkpoint_interval: 256 * 1024,
        ..Default::default()
    };
    let backend = Arc::new(LocalBackend::new(&dir).expect("backend"));
    let mut v = Volume::create(backend, &opts, &OpenOptions::default()).expect("create");
    // Cleaning starts at 1.2 MiB of log, on a 2 MiB disk.
    v.set_clean_policy(Some(CleanPolicy {
        max_live_ratio: 0.95,
        max_segments: 3,
        space_budget: 1200 * 1024,
    }));
    let mut rng = Rng::new(seed);
    let mut model = vec![0u8; size as usize];
    let mut images = vec![common::hash(&model)];
    let mut flushed = 0usize;
    let mut failure = None;
    for i in 0..20_000usize {
        // First overwrites of 256 KiB (many cleaning passes, with space to spare), then
        // writes everywhere: the live data outgrows the disk while the cleaner copies.
        let span = if i < 1500 { 256 * 1024 } else { size };
        let blocks = 1 + rng.below(8) as usize;
        let at = rng.below(span / 4096 - blocks as u64) as usize * 4096;
        let mut data = vec![0u8; blocks * 4096];
        rng.fill(&mut data);
        // The model takes the write even if the volume refuses it: a failed write may or may
        // not have reached the disk, so both states are allowed.
        model[at..at + data.len()].copy_from_slice(&data);
        images.push(common::hash(&model));
        if let Err(e) = v.write(at as u64, &data) {
            failure = Some(format!("write {i}: {e}"));
            break;
        }
        if i % 8 == 7 {
            match v.flush() {
                Ok(()) => flushed = i + 1,
                Err(e) => {
                    failure = Some(format!("flush after {i}: {e}"));
                    break;
                }
            }
        }
    }
    let failure = failure.expect("the disk never filled up: the test did not test anything");
    assert!(
        failure.contains("No space left"),
        "the failure is not the full disk: {failure}"
    );
    assert!(
        flushed > 1500,
        "too little was flushed ({flushed} ops) to mean anything"
    );
    let copied = v.cleaner_bytes_copied();
    eprintln!(
        "disk_full seed {seed}: {failure}; {flushed} ops flushed, cleaner copied {copied} bytes"
    );
    assert!(
        copied > 0,
        "the cleaner never ran before the disk filled up"
    );
    v.crash();
    // More space, as an administrator would give: the volume opens with everything flushed.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&fs)
        .status()
        .is_ok_and(|s| s.success());
    assert!(grown, "remount with more space failed");
    let mut r = common::open(&dir).expect("open after the disk filled up");
    let img = read_all(&mut r);
    let h = common::hash(&img);
    assert!(
        images.iter().skip(flushed).any(|x| *x == h),
        "after {failure}: the image is not the state after any prefix of at least {flushed} ops"
    );
    // And it keeps working: a write, then a full cleaning, change nothing else.
    common::write_then_clean_all(&mut r, &img, 9, &format!("seed {seed}"));
    r.close().expect("close");
    true
}
