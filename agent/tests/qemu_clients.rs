//! hlfsd against real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy, fio.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn qemu_img_info_reports_the_size() {
    let d = Daemon::start("info", &["--create-volume", "default/vm1:64M"]);
    let out = run(
        "qemu-img",
        &["info", "--output=json", &d.uri("default/vm1")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"virtual-size\": 67108864"), "{text}");
    // The banner names the socket and gives a ready-to-paste qemu-img line.
    let banner = d.stdout();
    assert!(banner.contains(&d.socket.display().to_string()), "{banner}");
    assert!(
        banner.contains(&format!("qemu-img info '{}'", d.uri("default/vm1"))),
        "{banner}"
    );
}

#[test]
fn qemu_io_patterns_unaligned_and_flush() {
    let d = Daemon::start("io", &["--create-volume", "default/vm1:64M"]);
    let uri = d.uri("default/vm1");
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "flush",
            "-c",
            "write -P 0x11 1000 3000",
            "-c",
            "write -P 0x22 1048575 2",
            "-c",
            "write -P 0x33 60M 5",
            &uri,
        ],
    );
    // A new connection sees everything, byte-exact around the unaligned edges.
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0xab 0 1000",
            "-c",
            "read -P 0x11 1000 3000",
            "-c",
            "read -P 0xab 4000 1044575",
            "-c",
            "read -P 0x22 1048575 2",
            "-c",
            "read -P 0 1048577 4096",
            "-c",
            "read -P 0x33 60M 5",
            "-c",
            "read -P 0 62914565 4091",
            &uri,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert_eq!(text.matches("read ").count(), 7, "{text}");
    // Reading past the end is refused, not answered with garbage.
    let out = try_run("qemu-io", &["-f", "raw", "-c", "read 64M 512", &uri]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("read 512/512"), "{text}");
}

#[test]
fn qemu_img_convert_in_and_out_and_compare() {
    let d = Daemon::start("convert", &["--create-volume", "default/vm1:16M"]);
    let uri = d.uri("default/vm1");
    // A raw image with data, zeros and an unaligned tail of data.
    let mut img = vec![0u8; 16 << 20];
    img[..3 << 20].copy_from_slice(&pattern_bytes(7, 3 << 20));
    img[8 << 20..(8 << 20) + 12345].copy_from_slice(&pattern_bytes(9, 12345));
    img[(16 << 20) - 100..].fill(0x5a);
    let src = d.dir.path().join("src.raw");
    std::fs::write(&src, &img).unwrap();
    let src = src.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &uri],
    );
    assert_identical(src, &uri);
    // And out again, through qemu-img and through nbdcopy.
    let back = d.dir.path().join("back.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            back.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&back).unwrap() == img,
        "qemu-img convert out differs"
    );
    let back2 = d.dir.path().join("back2.raw");
    run("nbdcopy", &[&uri, back2.to_str().unwrap()]);
    assert!(std::fs::read(&back2).unwrap() == img, "nbdcopy out differs");
    // nbdcopy in: several connections at once (MULTI_CONN), then compare.
    let img2: Vec<u8> = pattern_bytes(11, 16 << 20);
    let src2 = d.dir.path().join("src2.raw");
    std::fs::write(&src2, &img2).unwrap();
    run(
        "nbdcopy",
        &[
            "--connections=4",
            "--requests=16",
            src2.to_str().unwrap(),
            &uri,
        ],
    );
    assert_identical(src2.to_str().unwrap(), &uri);
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &uri],
    );
    // A different image must compare as different.
    img[5] ^= 1;
    std::fs::write(d.dir.path().join("src.raw"), &img).unwrap();
    let out = try_run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src, &uri],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn nbdinfo_map_shows_holes_until_written_and_after_discard() {
    let d = Daemon::start("map", &["--create-volume", "default/vm1:8M"]);
    let uri = d.uri("default/vm1");
    assert_eq!(nbd_map(&uri), vec![(0, 8 << 20, true)]);
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x42 1M 2M", &uri]);
    assert_eq!(
        nbd_map(&uri),
        vec![
            (0, 1 << 20, true),
            (1 << 20, 2 << 20, false),
            (3 << 20, 5 << 20, true)
        ]
    );
    run("qemu-io", &["-f", "raw", "-c", "discard 1536K 512K", &uri]);
    assert_eq!(
        nbd_map(&uri),
        vec![
            (0, 1 << 20, true),
            (1 << 20, 512 << 10, false),
            (1536 << 10, 512 << 10, true),
            (2 << 20, 1 << 20, false),
            (3 << 20, 5 << 20, true)
        ]
    );
    // Discarded data reads as zeros; the rest is intact. write -z (WRITE_ZEROES) too.
    run("qemu-io", &["-f", "raw", "-c", "write -z 2M 4K", &uri]);
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0 1536K 512K",
            "-c",
            "read -P 0x42 1M 512K",
            "-c",
            "read -P 0 2M 4K",
            "-c",
            "read -P 0x42 2052K 1020K",
            &uri,
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("verification failed"));
    let info = run("nbdinfo", &[&uri]);
    let text = String::from_utf8_lossy(&info.stdout);
    for want in [
        "export-size: 8388608",
        "base:allocation",
        "can_trim: true",
        "can_fua: true",
        "can_multi_conn: true",
    ] {
        assert!(text.contains(want), "nbdinfo lacks {want:?}:\n{text}");
    }
}

#[test]
fn nbd_list_and_unknown_or_snapshot_exports() {
    let d = Daemon::start(
        "list",
        &[
            "--create-volume",
            "default/a:1M",
            "--create-volume",
            "default/b:2M",
        ],
    );
    let out = run(
        "nbdinfo",
        &[
            "--list",
            "--json",
            &format!("nbd+unix:///?socket={}", d.socket.display()),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"default/a\"") && text.contains("\"default/b\""),
        "{text}"
    );
    let out = try_run("qemu-img", &["info", &d.uri("default/nope")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
    let out = try_run("qemu-img", &["info", &d.uri("default/a@snap1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // A snapshot that does not exist is refused with the engine's message.
    assert!(err.contains("snap1") && err.contains("not found"), "{err}");
}

#[test]
fn fio_nbd_engine_with_verify() {
    let d = Daemon::start("fio", &["--create-volume", "default/vm1:32M"]);
    let uri = d.uri("default/vm1");
    let out = run(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=terse",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // terse v3: field 5 is total errors.
    let fields: Vec<&str> = text.lines().last().unwrap_or("").split(';').collect();
    assert!(
        fields.len() > 5 && fields[4] == "0",
        "fio reported errors: {text}"
    );
}

/// kill -9 while clients write and flush; every write whose flush returned must survive.
#[test]
fn kill9_keeps_every_flushed_write() {
    let mut d = Daemon::start("kill9", &["--create-volume", "default/vm1:64M"]);
    let uri = d.uri("default/vm1");
    const CHUNK: u64 = 64 << 10;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (uri, done) = (uri.clone(), done.clone());
        std::thread::spawn(move || {
            // Round i writes pattern (i % 250) + 1 at i*64K and flushes; exit 0 = durable.
            for i in 0..1000u64 {
                let p = format!("write -P {} {} {CHUNK}", i % 250 + 1, i * CHUNK);
                let out = try_run("qemu-io", &["-f", "raw", "-c", &p, "-c", "flush", &uri]);
                if !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("error") {
                    return;
                }
                done.store(i + 1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let t0 = Instant::now();
    while done.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        assert!(t0.elapsed() < Duration::from_secs(120), "writes too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill9();
    let durable = done.load(std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    d.spawn();
    let mut args = vec!["-f".to_string(), "raw".to_string()];
    for i in 0..durable {
        args.push("-c".into());
        args.push(format!("read -P {} {} {CHUNK}", i % 250 + 1, i * CHUNK));
    }
    args.push(uri.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("qemu-io", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("verification failed"),
        "flushed data lost after kill -9:\n{text}"
    );
    assert_eq!(text.matches("read 65536/65536").count() as u64, durable);
    // The round cut short by the kill is all old or all new, never a mix.
    let i = durable;
    let new = try_run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("read -P {} {} {CHUNK}", i % 250 + 1, i * CHUNK),
            &uri,
        ],
    );
    let old = try_run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("read -P 0 {} {CHUNK}", i * CHUNK),
            &uri,
        ],
    );
    let ok = |o: &std::process::Output| {
        !String::from_utf8_lossy(&o.stdout).contains("verification failed")
    };
    assert!(ok(&new) || ok(&old), "torn write at round {i}");
}

/// `qemu-img compare` of a raw file with an NBD export says they are identical.
fn assert_identical(raw: &str, uri: &str) {
    let out = run("qemu-img", &["compare", "-f", "raw", "-F", "raw", raw, uri]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Images are identical"),
        "{raw} vs {uri}: {text}"
    );
}

/// Bytes of the segments under `dir`, at any depth (a volume's log on disk).
fn segment_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => segment_bytes(&e.path()),
            _ if e.file_name().to_string_lossy().starts_with("seg-") => {
                e.metadata().map_or(0, |m| m.len())
            }
            _ => 0,
        })
        .sum()
}

/// The cleaners at work under a real client: passes of qemu-io rewriting 60% of a 16 MiB volume
/// (1 MiB segments) in 64 KiB writes of incompressible data, six times (each pass leaves partly live segments behind, so the cleaner
/// copies). The default configuration cleans in the background and inline past its budget,
/// both on the engine's copy thread while the writes go on. The volume must equal the model
/// byte for byte (qemu-img compare) and its log must have been cleaned down.
#[test]
fn cleaning_while_qemu_io_rewrites_keeps_every_byte() {
    let d = Daemon::start("cleaning", &[]);
    // 1 MiB segments, so that a 16 MiB volume has segments enough to clean.
    let made = std::process::Command::new(common::hlfs_exe())
        .arg("--socket")
        .arg(d.dbus_socket())
        .args([
            "volume",
            "create",
            "default/vm1",
            "16M",
            "--segment-size",
            "1M",
        ])
        .output()
        .unwrap();
    ok(&made);
    let uri = d.uri("default/vm1");
    const BLOCK: usize = 64 << 10;
    let blocks = (16 << 20) / BLOCK;
    let mut model = vec![0u8; 16 << 20];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut written = 0u64;
    for pass in 1..=6u8 {
        let mut order: Vec<usize> = (0..blocks).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        // Incompressible data (the volume compresses what it can): eight random source
        // files per pass, block b takes file b % 8, so that a block from another pass or
        // another file shows.
        let sources: Vec<(std::path::PathBuf, Vec<u8>)> = (0..8u64)
            .map(|k| {
                let data = pattern_bytes(u64::from(pass) * 100 + k, BLOCK);
                let path = d.dir.path().join(format!("src-{pass}-{k}"));
                std::fs::write(&path, &data).unwrap();
                (path, data)
            })
            .collect();
        let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
        for &b in &order[..blocks * 6 / 10] {
            let (path, data) = &sources[b % 8];
            args.push("-c".into());
            args.push(format!("write -s {} {} {BLOCK}", path.display(), b * BLOCK));
            model[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(data);
            written += BLOCK as u64;
        }
        args.push("-c".into());
        args.push("flush".into());
        args.push(uri.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run("qemu-io", &refs);
    }
    // The background cleaner works at its own pace after the writes: wait for it (10 s at most).
    let t0 = Instant::now();
    let bound = 2 * (16u64 << 20);
    let mut log = segment_bytes(&d.data_dir());
    while log > bound && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        log = segment_bytes(&d.data_dir());
    }
    assert!(
        log <= bound,
        "{written} bytes written to a 16 MiB volume left {log} bytes of log: not cleaned"
    );
    // (And the log was found: it holds the live data, about the whole volume.)
    assert!(log >= 15 << 20, "only {log} bytes of log found");
    eprintln!("cleaning: {written} bytes written, {log} bytes of log after cleaning");
    let expected = d.dir.path().join("expected.raw");
    std::fs::write(&expected, &model).unwrap();
    assert_identical(expected.to_str().unwrap(), &uri);
}
