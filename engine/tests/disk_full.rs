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
    let Some((_tmp, fs, _mounted)) = small_fs("2m") else {
        return false;
    };
    let dir = fs.join("vol");
    let size = 4u64 << 20;
    let mut v = cleaned_volume(&dir, size);
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

fn remount(fs: &Path, size: &str) {
    let ok = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(fs)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "remount {} with size {size} failed", fs.display());
}

/// Takes every free byte of the file system with a file of its own (what another volume's
/// writes would do); returns its path, to delete it for space.
fn fill_up(fs: &Path) -> PathBuf {
    use std::io::Write;
    let path = fs.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0x5au8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    // The last partial page too.
    while f.write(&[1u8]).is_ok_and(|n| n == 1) {}
    path
}

/// A volume of `size` bytes in `dir` with 64 KiB segments whose cleaner starts at 1.2 MiB of
/// log: on a 2 MiB disk, the disk fills while the cleaner still has work.
fn cleaned_volume(dir: &Path, size: u64) -> Volume {
    let opts = CreateOptions {
        size,
        segment_size: 64 * 1024,
        checkpoint_interval: 256 * 1024,
        ..Default::default()
    };
    let backend = Arc::new(LocalBackend::new(dir).expect("backend"));
    let mut v = Volume::create(backend, &opts, &OpenOptions::default()).expect("create");
    v.set_clean_policy(Some(CleanPolicy {
        max_live_ratio: 0.95,
        max_segments: 3,
        space_budget: 1200 * 1024,
    }));
    v
}

/// The mounted tmpfs and a directory inside it; None (test skipped) without the right to mount.
fn small_fs(size: &str) -> Option<(tempfile::TempDir, PathBuf, Mounted)> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = tmp.path().join("fs");
    std::fs::create_dir(&fs).expect("mkdir");
    let Some(m) = mount_tmpfs(&fs, size) else {
        eprintln!("disk_full: skipped, cannot mount a tmpfs here (needs root)");
        return None;
    };
    Some((tmp, fs, m))
}

/// The issue's case: the disk fills up under writes. Every refused write and flush says "no
/// space" (a client such as QEMU with werror=enospc pauses and retries; EIO would fail the
/// guest), reads go on serving every acknowledged write, and once the disk has space again
/// the same volume, not reopened, takes writes and flushes, with nothing acknowledged lost.
#[test]
fn a_full_disk_refuses_writes_with_enospc_and_the_volume_goes_on_once_it_has_space() {
    for seed in [21, 22, 23] {
        if !enospc_then_grow(seed) {
            return;
        }
    }
}

fn enospc_then_grow(seed: u64) -> bool {
    let Some((_tmp, fs, _mounted)) = small_fs("2m") else {
        return false;
    };
    let dir = fs.join("vol");
    let size = 4u64 << 20;
    let mut v = cleaned_volume(&dir, size);
    let mut rng = Rng::new(seed);
    let mut model = vec![0u8; size as usize];
    let random_write = |rng: &mut Rng| {
        let blocks = 1 + rng.below(8) as usize;
        let at = rng.below(size / 4096 - blocks as u64) as usize * 4096;
        let mut data = vec![0u8; blocks * 4096];
        rng.fill(&mut data);
        (at, data)
    };
    // Writes everywhere until the disk is full; a refused write changes nothing.
    let mut refused = 0;
    for i in 0..20_000usize {
        let (at, data) = random_write(&mut rng);
        match v.write(at as u64, &data) {
            Ok(()) => model[at..at + data.len()].copy_from_slice(&data),
            Err(e) => {
                assert!(e.is_no_space(), "write {i}: not 'no space': {e}");
                refused += 1;
                break;
            }
        }
        if i % 8 == 7 {
            if let Err(e) = v.flush() {
                assert!(e.is_no_space(), "flush after {i}: not 'no space': {e}");
                refused += 1;
                break;
            }
        }
    }
    assert!(refused > 0, "the disk never filled up");
    // While it stays full: every failure is "no space", and reads serve what was acknowledged.
    for _ in 0..50 {
        let (at, data) = random_write(&mut rng);
        match v.write(at as u64, &data) {
            Ok(()) => model[at..at + data.len()].copy_from_slice(&data),
            Err(e) => assert!(e.is_no_space(), "write on a full disk: not 'no space': {e}"),
        }
    }
    // A flush fails with "no space", or succeeds when what those writes left buffered still fit
    // (compressible data, a segment's tail): which one depends on the seed and the compressor.
    if let Err(e) = v.flush() {
        assert!(e.is_no_space(), "flush on a full disk: not 'no space': {e}");
    }
    assert!(
        read_all(&mut v) == model,
        "seed {seed}: reads on a full disk do not serve every acknowledged write"
    );
    // Space again: the same volume goes on (a recovery waits a moment between attempts).
    remount(&fs, "64m");
    std::thread::sleep(std::time::Duration::from_millis(300));
    v.flush()
        .unwrap_or_else(|e| panic!("seed {seed}: flush once there is space: {e}"));
    assert!(
        read_all(&mut v) == model,
        "seed {seed}: acknowledged writes lost"
    );
    for _ in 0..300 {
        let (at, data) = random_write(&mut rng);
        v.write(at as u64, &data)
            .unwrap_or_else(|e| panic!("seed {seed}: write once there is space: {e}"));
        model[at..at + data.len()].copy_from_slice(&data);
    }
    v.flush().expect("flush");
    v.crash();
    let mut r = common::open(&dir).expect("open after the crash");
    assert!(
        read_all(&mut r) == model,
        "seed {seed}: after a crash the image is not every flushed write"
    );
    common::write_then_clean_all(&mut r, &model, 3, &format!("seed {seed}"));
    r.close().expect("close");
    true
}

/// A crash left an unsealed segment, then the disk filled up: the volume still opens (for
/// writing and read-only) and serves its data; opening writes no checkpoint it cannot finish
/// (none is left behind, however often it is tried); once there is space it takes writes.
#[test]
fn a_volume_with_an_unsealed_segment_opens_on_a_full_disk_and_leaves_nothing_behind() {
    let Some((_tmp, fs, _mounted)) = small_fs("4m") else {
        return;
    };
    let dir = fs.join("vol");
    let size = 1u64 << 20;
    let mut v = common::create(&dir, size, 64 * 1024, 1 << 30);
    let mut rng = Rng::new(5);
    let mut model = vec![0u8; size as usize];
    for i in 0..40u64 {
        let mut data = vec![0u8; 8192];
        rng.fill(&mut data);
        let at = (i * 3 % 120) as usize * 8192;
        v.write(at as u64, &data).expect("write");
        model[at..at + data.len()].copy_from_slice(&data);
    }
    v.flush().expect("flush");
    v.crash();
    let filler = fill_up(&fs);
    let names = || {
        let mut n: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let before = names();
    for _ in 0..5 {
        let mut r = Volume::open_read_only(common::backend(&dir), &OpenOptions::default())
            .expect("read-only open on a full disk");
        // (It skips the unsealed segment: its writer may still be appending.)
        let _ = read_all(&mut r);
        drop(r);
        let mut w = common::open(&dir).expect("open on a full disk");
        assert!(
            read_all(&mut w) == model,
            "the volume opened on a full disk does not serve its data"
        );
        let e = w
            .write(0, &[7u8; 4096])
            .expect_err("a write on a full disk, with the recovery checkpoint not written");
        assert!(e.is_no_space(), "not 'no space': {e}");
        drop(w);
        assert_eq!(
            names(),
            before,
            "opening on a full disk left objects behind"
        );
    }
    std::fs::remove_file(&filler).expect("free space");
    let mut w = common::open(&dir).expect("open");
    std::thread::sleep(std::time::Duration::from_millis(300));
    w.write(0, &[7u8; 4096]).expect("write once there is space");
    model[..4096].fill(7);
    w.close().expect("close");
    let mut r = common::open(&dir).expect("reopen");
    assert!(read_all(&mut r) == model, "data lost");
}

/// Taking the lease writes the holder's name into the lock file; on a full disk that must not
/// refuse the lease (deleting a volume to free space takes it first).
#[test]
fn the_lease_is_taken_on_a_full_disk() {
    use hlfs_engine::backend::Backend;
    let Some((_tmp, fs, _mounted)) = small_fs("1m") else {
        return;
    };
    let dir = fs.join("vol");
    let b = LocalBackend::new(&dir).expect("backend");
    drop(b.lease("first holder").expect("lease"));
    // An empty lock file (its page freed), then no page left for the name.
    std::fs::write(dir.join("lock"), b"").expect("empty the lock file");
    let _filler = fill_up(&fs);
    let lease = b
        .lease("holder on a full disk")
        .expect("lease on a full disk");
    // Still exclusive.
    let other = LocalBackend::new(&dir).expect("backend");
    assert!(matches!(
        other.lease("second"),
        Err(hlfs_engine::Error::Locked { .. })
    ));
    drop(lease);
}
