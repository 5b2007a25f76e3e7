//! Compression: a realistic filesystem image shrinks on disk; random data costs at most 1% more
//! than storing it uncompressed.

mod common;

use hlfs_engine::{CreateOptions, OpenOptions, Volume};
use std::path::Path;
use std::process::Command;

fn store(image: &[u8], compression: bool) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = CreateOptions {
        size: image.len() as u64,
        compression,
        ..Default::default()
    };
    let mut v = Volume::create(common::backend(dir.path()), &opts, &OpenOptions::default())
        .expect("create");
    for (i, c) in image.chunks(1 << 20).enumerate() {
        v.write((i << 20) as u64, c).expect("write");
    }
    let mut back = vec![0u8; image.len()];
    v.read(0, &mut back).expect("read");
    assert!(back == image, "data differs after write");
    let log = v.stat().log_bytes;
    v.close().expect("close");
    log
}

/// An ext4 image holding text (documentation) and binaries, as a VM disk would.
fn ext4_image(dir: &Path) -> Vec<u8> {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).expect("mkdir");
    let mut n = 0;
    copy_budget(
        Path::new("/usr/share/doc"),
        &content,
        &mut n,
        24 << 20,
        &mut 0,
    );
    copy_budget(Path::new("/usr/bin"), &content, &mut n, 48 << 20, &mut 0);
    assert!(
        n > 16 << 20,
        "too little content for a realistic image: {n} bytes"
    );
    let img = dir.join("fs.img");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .arg("160M")
        .status()
        .expect("mkfs.ext4 (install e2fsprogs)");
    assert!(st.success(), "mkfs.ext4 failed");
    std::fs::read(&img).expect("read image")
}

#[test]
fn filesystem_image_shrinks_and_random_data_costs_under_one_percent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = ext4_image(dir.path());
    let on = store(&img, true);
    let off = store(&img, false);
    eprintln!(
        "ext4 image {} bytes: log {on} compressed, {off} uncompressed",
        img.len()
    );
    assert!(
        (on as f64) < off as f64 * 0.8,
        "compressed {on} vs uncompressed {off}: not 20% smaller"
    );

    let mut rnd = vec![0u8; 16 << 20];
    common::Rng::new(3).fill(&mut rnd[..8]);
    let mut rng = common::Rng::new(99);
    for c in rnd.chunks_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    let on = store(&rnd, true);
    let off = store(&rnd, false);
    eprintln!("random 16 MiB: log {on} compressed, {off} uncompressed");
    assert!(
        (on as f64) <= off as f64 * 1.01,
        "random data: compressed {on} > 1.01 x {off}"
    );
}

/// Copies regular files from a tree (flattened, renamed by counter) until `total` reaches `budget`.
fn copy_budget(src: &Path, dst: &Path, total: &mut u64, budget: u64, counter: &mut u64) {
    let Ok(rd) = std::fs::read_dir(src) else {
        return;
    };
    for e in rd.flatten() {
        if *total >= budget {
            return;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            copy_budget(&e.path(), dst, total, budget, counter);
        } else if ft.is_file() {
            *counter += 1;
            let name = format!("{}-{}", *counter, e.file_name().to_string_lossy());
            if let Ok(n) = std::fs::copy(e.path(), dst.join(name)) {
                *total += n;
            }
        }
    }
}
