//! The FUSE view against real tools: libvirt's create sequence, qemu-img, mkfs.ext4 + a loop
//! mount + fsck, fio verify, cp --sparse, busctl, and NBD clients on the same volume. Each test
//! mounts its own view in its temporary directory (hlfsd runs as root in CI: a direct mount).

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A daemon with its FUSE view mounted at `mnt`; dropping it kills the daemon and detaches
/// the mount, so that a failed test leaves no dead mount behind.
struct View {
    d: Daemon,
    mnt: PathBuf,
}

impl View {
    fn start(tag: &str, extra: &[&str]) -> View {
        assert!(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .is_ok(),
            "the FUSE tests need /dev/fuse (Debian package fuse3, run as root)"
        );
        let dir = TempDir::new(&format!("{tag}-m"));
        let mnt = dir.path().join("mnt");
        // The mount point lives beside the daemon's own directory (removed last).
        let _dir = std::mem::ManuallyDrop::new(dir);
        let m = mnt.to_str().unwrap().to_string();
        let mut args = vec!["--fuse-mount", &m];
        args.extend(extra);
        let d = Daemon::start(tag, &args);
        View { d, mnt }
    }

    fn pool(&self) -> PathBuf {
        self.mnt.join("pools/default")
    }

    fn vol(&self, name: &str) -> PathBuf {
        self.pool().join(name)
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(mut c) = self.d.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        detach(&self.mnt);
        if let Some(parent) = self.mnt.parent() {
            let _ = fs::remove_dir_all(parent);
        }
    }
}

fn detach(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; failure (not mounted) is fine.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// libvirt's `vol-create-as` on a dir pool: open(O_RDWR|O_CREAT|O_EXCL, 0600), fchown,
/// ftruncate(capacity), fallocate(0, 0, allocation), fsync; then a read-only probe of 112 KiB.
fn libvirt_create(path: &Path, capacity: u64, allocation: u64, owner: Option<(u32, u32)>) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    assert_eq!(f.metadata().unwrap().len(), 0, "a new volume file is empty");
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(&f, Some(u), Some(g)).unwrap();
    }
    f.set_len(capacity).unwrap();
    if allocation > 0 {
        // SAFETY: a valid descriptor.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, allocation as i64) };
        assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    }
    f.sync_all().unwrap();
    drop(f);
    let mut probe = vec![0u8; 112 * 1024];
    let n = File::open(path).unwrap().read(&mut probe).unwrap();
    assert_eq!(n, probe.len().min(capacity as usize));
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn volume_list(d: &Daemon) -> serde_json::Value {
    json(&hlfs(d, false, &["--json", "volume", "list"]))
}

fn seek(f: &File, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: a valid descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(errno(&std::io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

#[test]
fn libvirt_create_sequence_makes_a_volume_that_hlfs_and_nbd_see() {
    let v = View::start("fuse-libvirt", &["--create-volume", "default/old:1M"]);
    let path = v.vol("vm1.img");
    libvirt_create(&path, 10 << 20, 1 << 20, Some((107, 108)));
    let md = fs::metadata(&path).unwrap();
    assert_eq!(md.len(), 10 << 20);
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (107, 108, 0o600));
    // Exactly the volumes: what a libvirt dir pool on this directory lists.
    assert_eq!(names_in(&v.pool()), ["old", "vm1.img"]);
    let list = volume_list(&v.d);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "vm1.img")
        .expect("hlfs lists the new volume");
    assert_eq!(row["size"], 10 << 20);
    // Created once: O_EXCL on an existing volume fails.
    let again = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_err();
    assert_eq!(errno(&again), libc::EEXIST);

    // One engine: a write through the file is at once visible over NBD, and the reverse.
    let data = pattern_bytes(7, 256 << 10);
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&data, 1 << 20).unwrap();
    let got = v.d.read_over_nbd("default/vm1.img");
    assert_eq!(&got[1 << 20..(1 << 20) + data.len()], &data[..]);
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 64k",
            &v.d.uri("default/vm1.img"),
        ],
    );
    let mut head = vec![0u8; 64 << 10];
    File::open(&path).unwrap().read_exact(&mut head).unwrap();
    assert!(
        head.iter().all(|b| *b == 0xab),
        "NBD write not seen through the file"
    );
    f.flush().unwrap();
    drop(f);

    // Only the view makes 0-byte volumes (as files); the API still refuses size 0.
    let e = err(&hlfs(&v.d, false, &["volume", "create", "default/z", "0"]));
    assert!(e.contains("above zero"), "{e}");

    // Volumes created and deleted with hlfs appear and vanish (attributes live 1 s).
    ok(&hlfs(
        &v.d,
        false,
        &["volume", "create", "default/made", "2M"],
    ));
    assert_eq!(fs::metadata(v.vol("made")).unwrap().len(), 2 << 20);
    ok(&hlfs(&v.d, false, &["volume", "delete", "default/made"]));
    let t0 = Instant::now();
    while v.vol("made").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "deleted volume still visible"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names_in(&v.pool()), ["old", "vm1.img"]);

    // The plugin finds the mount point on D-Bus.
    let out = ok(&Command::new("busctl")
        .args([
            "--address",
            &v.d.dbus_address(),
            "get-property",
            "org.hlfs.Hlfs1",
            "/org/hlfs/Hlfs1",
            "org.hlfs.Manager1",
            "FuseMountpoint",
        ])
        .output()
        .unwrap());
    assert_eq!(out.trim(), format!("s \"{}\"", v.mnt.display()));
}

#[test]
fn qemu_img_create_convert_compare_and_sparse_copies() {
    let v = View::start("fuse-qemu", &[]);
    let dir = v.d.dir.path().to_path_buf();
    // A sparse source: 64 KiB at 0, 128 KiB at 5 MiB, of 16 MiB.
    let src = dir.join("src.raw");
    let f = File::create(&src).unwrap();
    f.set_len(16 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern_bytes(1, 64 << 10), 0).unwrap();
    f.write_all_at(&pattern_bytes(2, 128 << 10), 5 << 20)
        .unwrap();
    drop(f);
    let s = src.to_str().unwrap();

    let conv = v.vol("conv.raw");
    let c = conv.to_str().unwrap();
    run("qemu-img", &["convert", "-f", "raw", "-O", "raw", s, c]);
    run("qemu-img", &["compare", "-f", "raw", "-F", "raw", s, c]);
    // Only the data was written: the extent map (SEEK_DATA/SEEK_HOLE) says so.
    let f = File::open(&conv).unwrap();
    assert_eq!(seek(&f, 0, libc::SEEK_DATA), Ok(0));
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE), Ok(64 << 10));
    assert_eq!(seek(&f, 64 << 10, libc::SEEK_DATA), Ok(5 << 20));
    assert_eq!(
        seek(&f, 5 << 20, libc::SEEK_HOLE),
        Ok((5 << 20) + (128 << 10))
    );
    assert_eq!(
        seek(&f, (6 << 20) as i64, libc::SEEK_DATA),
        Err(libc::ENXIO)
    );
    assert_eq!(seek(&f, (6 << 20) as i64, libc::SEEK_HOLE), Ok(6 << 20));
    assert_eq!(seek(&f, 16 << 20, libc::SEEK_HOLE), Err(libc::ENXIO));
    let map = String::from_utf8(run("qemu-img", &["map", "--output=json", "-f", "raw", c]).stdout)
        .unwrap();
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data, (64 << 10) + (128 << 10), "qemu-img map: {map}");
    // cp --sparse copies only the data out.
    let copy = dir.join("copy.raw");
    let st = Command::new("cp")
        .args(["--sparse=always", c, copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&src).unwrap());
    assert!(fs::metadata(&copy).unwrap().blocks() * 512 <= 1 << 20);

    // qemu-img create makes a raw volume file of the size asked; resize is ftruncate.
    let r = v.vol("r.img");
    let rs = r.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "raw", rs, "16M"]);
    assert_eq!(fs::metadata(&r).unwrap().len(), 16 << 20);
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", s, rs],
    );
    run("qemu-img", &["compare", "-f", "raw", "-F", "raw", s, rs]);
    run("qemu-img", &["resize", "-q", "-f", "raw", rs, "24M"]);
    assert_eq!(fs::metadata(&r).unwrap().len(), 24 << 20);
}

/// Runs qemu-io with `cmds` on `target` (an image or `--image-opts` string) and checks that
/// every command did what it said: qemu-io reports a failed pattern check on stdout.
fn qemu_io(args: &[&str], cmds: &[&str]) -> String {
    let mut a: Vec<&str> = args.to_vec();
    for c in cmds {
        a.extend(["-c", c]);
    }
    let out = String::from_utf8(run("qemu-io", &a).stdout).unwrap();
    assert!(
        !out.contains("failed") && out.matches(" bytes at offset ").count() == cmds.len(),
        "qemu-io {args:?} {cmds:?}:\n{out}"
    );
    out
}

/// virt-manager's default volume kind: `virsh vol-create-as --format qcow2` on a dir pool runs
/// `qemu-img create -f qcow2`, which writes its metadata past the end of the new file. A write
/// past the end grows the volume (as a regular file grows), so qcow2 works inside volume files,
/// and the volume's bytes are the same over NBD.
#[test]
fn qcow2_images_grow_inside_volume_files() {
    let v = View::start("fuse-qcow2", &[]);
    let q = v.vol("vm.qcow2");
    let qs = q.to_str().unwrap();
    // What libvirt runs for a qcow2 volume on a dir pool, then its mode, then its probe.
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", "compat=1.1", qs, "64M"],
    );
    fs::set_permissions(&q, fs::Permissions::from_mode(0o600)).unwrap();
    let grown = fs::metadata(&q).unwrap().len();
    assert!(
        grown > 0 && grown < 1 << 20,
        "qcow2 metadata only, thin: {grown}"
    );
    let mut probe = vec![0u8; 112 * 1024];
    let n = File::open(&q).unwrap().read(&mut probe).unwrap();
    assert_eq!(&probe[..4], b"QFI\xfb", "qcow2 magic");
    assert_eq!(n as u64, grown.min(probe.len() as u64));
    let info: serde_json::Value =
        serde_json::from_slice(&run("qemu-img", &["info", "--output=json", qs]).stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 64 << 20, "{info}");
    // The volume is the file: hlfs sees the size the writes gave it.
    let size_of = |name: &str| {
        volume_list(&v.d)
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["size"].as_u64().unwrap())
    };
    assert_eq!(size_of("vm.qcow2"), Some(grown));

    // Guest-like I/O through qcow2: clusters are allocated at the end of the file.
    qemu_io(
        &["-f", "qcow2", qs],
        &[
            "write -P 0x5a 1M 3M",
            "write -P 0xa5 40M 1M",
            "write -z 48M 1M",
        ],
    );
    qemu_io(
        &["-f", "qcow2", qs],
        &[
            "read -P 0x5a 1M 3M",
            "read -P 0 8M 1M",
            "read -P 0xa5 40M 1M",
            "read -P 0 48M 1M",
        ],
    );
    let check = run("qemu-img", &["check", "-f", "qcow2", qs]);
    let msg = String::from_utf8_lossy(&check.stdout);
    assert!(msg.contains("No errors were found"), "{msg}");
    let len = fs::metadata(&q).unwrap().len();
    assert!(len >= grown + (4 << 20), "the file grew by the data: {len}");
    assert_eq!(size_of("vm.qcow2"), Some(len));

    // One engine: the volume's bytes over NBD are the file's bytes, and qemu reads the qcow2
    // image over NBD as through the file.
    let over_nbd = v.d.read_over_nbd("default/vm.qcow2");
    assert!(over_nbd == fs::read(&q).unwrap());
    let opts = format!(
        "driver=qcow2,file.driver=nbd,file.path={},file.export=default/vm.qcow2",
        v.d.socket.display()
    );
    qemu_io(
        &["--image-opts", &opts],
        &["read -P 0x5a 1M 3M", "read -P 0xa5 40M 1M"],
    );

    // A write far past the end leaves a hole, not stored zeros; the gap reads as zeros.
    let f = OpenOptions::new().read(true).write(true).open(&q).unwrap();
    use std::os::unix::fs::FileExt;
    let far = len + (100 << 20);
    f.write_all_at(&[9u8; 4096], far).unwrap();
    assert_eq!(f.metadata().unwrap().len(), far + 4096);
    assert_eq!(seek(&f, len as i64, libc::SEEK_DATA), Ok(far as i64));
    let mut gap = vec![1u8; 64 << 10];
    f.read_exact_at(&mut gap, len + (50 << 20)).unwrap();
    assert!(gap.iter().all(|b| *b == 0));
    // Past the largest volume: EFBIG.
    let e = f.write_at(b"x", i64::MAX as u64 - 1).unwrap_err();
    assert_eq!(errno(&e), libc::EFBIG, "{e}");
}

#[test]
fn ext4_on_a_volume_file_loop_mounts_and_fscks_clean() {
    let v = View::start("fuse-ext4", &[]);
    let img = v.vol("fs.img");
    libvirt_create(&img, 64 << 20, 0, None);
    let i = img.to_str().unwrap();
    run("mkfs.ext4", &["-q", "-F", i]);
    let probe = try_run("losetup", &["-f"]);
    if !probe.status.success() {
        eprintln!(
            "SKIPPED the loop mount: no usable loop device here ({}); mkfs.ext4 and fsck ran",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        run("fsck.ext4", &["-n", i]);
        return;
    }
    let dir = v.d.dir.path().join("ext4");
    fs::create_dir_all(&dir).unwrap();
    run("mount", &["-o", "loop", i, dir.to_str().unwrap()]);
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let guard = Umount(dir.clone());
    let payload = pattern_bytes(3, 3 << 20);
    fs::write(dir.join("big"), &payload).unwrap();
    for n in 0..50 {
        fs::write(dir.join(format!("f{n}")), format!("file {n}\n")).unwrap();
    }
    drop(guard);
    assert!(
        !String::from_utf8_lossy(&fs::read("/proc/self/mountinfo").unwrap())
            .contains(dir.to_str().unwrap()),
        "umount failed"
    );
    let out = run("fsck.ext4", &["-n", "-f", i]);
    assert!(out.status.success());
    // The files are there on a second mount (read-only).
    run("mount", &["-o", "loop,ro", i, dir.to_str().unwrap()]);
    let guard = Umount(dir.clone());
    assert_eq!(fs::read(dir.join("big")).unwrap(), payload);
    assert_eq!(fs::read_to_string(dir.join("f49")).unwrap(), "file 49\n");
    drop(guard);
}

#[test]
fn fio_verify_on_a_volume_file() {
    let v = View::start("fuse-fio", &[]);
    let f = v.vol("fio.img");
    libvirt_create(&f, 32 << 20, 0, None);
    let out = run(
        "fio",
        &[
            "--name=verify",
            &format!("--filename={}", f.display()),
            "--size=32M",
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
        ],
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["jobs"][0]["error"], 0, "{j}");
    assert!(j["jobs"][0]["write"]["io_bytes"].as_u64().unwrap() >= 32 << 20);
    // Sequential 1M through the page-cache-free path too.
    run(
        "fio",
        &[
            "--name=seq",
            &format!("--filename={}", f.display()),
            "--size=32M",
            "--rw=write",
            "--bs=1M",
            "--ioengine=psync",
            "--verify=md5",
            "--do_verify=1",
            "--verify_fatal=1",
        ],
    );
}

#[test]
fn a_busy_volume_is_not_unlinked_and_an_idle_one_is() {
    let v = View::start("fuse-busy", &["--create-volume", "default/vm:4M"]);
    let path = v.vol("vm");
    // Another open file uses it.
    let f = File::open(&path).unwrap();
    let e = fs::remove_file(&path).unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY, "{e}");
    drop(f);
    // An NBD client uses it.
    let mut qemu_io = Command::new(require_tool("qemu-io"))
        .args(["-f", "raw", "-c", "sleep 4000", &v.d.uri("default/vm")])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !v.d.stderr().contains("client attached") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "qemu-io did not attach"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = fs::remove_file(&path).unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY, "{e}");
    assert!(qemu_io.wait().unwrap().success());
    // Nobody uses it: unlink deletes the volume.
    let t0 = Instant::now();
    loop {
        match fs::remove_file(&path) {
            Ok(()) => break,
            // The NBD connection's teardown may still hold it for a moment.
            Err(e) if errno(&e) == libc::EBUSY && t0.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("unlink: {e}"),
        }
    }
    assert!(volume_list(&v.d).as_array().unwrap().is_empty());
    assert!(names_in(&v.pool()).is_empty());
}

#[test]
fn kill9_leaves_no_hung_mount_and_the_next_start_mounts_again() {
    let mut v = View::start("fuse-kill", &[]);
    let path = v.vol("keep");
    libvirt_create(&path, 1 << 20, 0, None);
    let data = pattern_bytes(9, 1 << 20);
    {
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    v.d.kill9();
    // The dead mount answers at once (ENOTCONN), it does not hang.
    let mnt = v.mnt.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fs::metadata(&mnt).map(|_| ()).map_err(|e| errno(&e)));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stat of the mount point hung after kill -9");
    assert!(
        r == Err(libc::ENOTCONN) || r == Ok(()),
        "unexpected result {r:?}"
    );
    v.d.spawn();
    assert!(
        v.d.stderr().contains("clearing the FUSE mount") || r == Ok(()),
        "{}",
        v.d.stderr()
    );
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(names_in(&v.pool()), ["keep"]);
    // A clean stop unmounts.
    v.d.terminate();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(v.mnt.to_str().unwrap()),
        "still mounted after SIGTERM"
    );
}

#[test]
fn bad_names_are_refused() {
    let v = View::start("fuse-names", &["--create-volume", "default/ok:1M"]);
    let long = "a".repeat(200);
    for (name, want) in [
        ("..hidden", libc::EINVAL),
        (".x", libc::EINVAL),
        ("a\u{1}b", libc::EINVAL),
        ("tab\there", libc::EINVAL),
        ("a@b", libc::EINVAL),
        ("p%q", libc::EINVAL),
        (long.as_str(), libc::ENAMETOOLONG),
    ] {
        let e = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(v.vol(name))
            .unwrap_err();
        assert_eq!(errno(&e), want, "{name:?}: {e}");
        let e = fs::create_dir(v.mnt.join("pools").join(name)).unwrap_err();
        assert_eq!(errno(&e), want, "mkdir {name:?}: {e}");
    }
    // `..` resolves to the parent: nothing is created.
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(v.pool().join(".."))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    assert_eq!(names_in(&v.pool()), ["ok"]);
    assert_eq!(volume_list(&v.d).as_array().unwrap().len(), 1);
    // Files outside pool directories are refused.
    let e = File::create(v.mnt.join("pools/stray")).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM);
    let e = File::create(v.mnt.join("status/x")).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM);
}

#[test]
fn snapshot_files_are_read_only_and_frozen() {
    let v = View::start("fuse-snap", &[]);
    let path = v.vol("vm");
    libvirt_create(&path, 1 << 20, 0, None);
    let a = pattern_bytes(4, 1 << 20);
    let b = pattern_bytes(5, 1 << 20);
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&a).unwrap();
    f.sync_all().unwrap();
    ok(&hlfs(&v.d, false, &["snapshot", "create", "default/vm%s1"]));
    use std::os::unix::fs::FileExt;
    f.write_all_at(&b, 0).unwrap();
    let snap = v.mnt.join("snapshots/default/vm/s1");
    assert_eq!(names_in(&v.mnt.join("snapshots/default/vm")), ["s1"]);
    assert_eq!(fs::read(&snap).unwrap(), a);
    assert_eq!(fs::read(&path).unwrap(), b);
    let md = fs::metadata(&snap).unwrap();
    assert_eq!(md.mode() & 0o222, 0, "snapshot files have no write bits");
    for e in [
        OpenOptions::new().write(true).open(&snap).unwrap_err(),
        fs::remove_file(&snap).unwrap_err(),
        File::create(v.mnt.join("snapshots/default/vm/new")).unwrap_err(),
        fs::set_permissions(&snap, fs::Permissions::from_mode(0o666)).unwrap_err(),
        OpenOptions::new()
            .write(true)
            .open(&snap)
            .and_then(|f| f.set_len(0))
            .unwrap_err(),
    ] {
        assert_eq!(errno(&e), libc::EROFS, "{e}");
    }
    // Seeking works on snapshots too.
    let sf = File::open(&snap).unwrap();
    assert_eq!(seek(&sf, 0, libc::SEEK_DATA), Ok(0));
}

#[test]
fn status_files_agree_with_hlfs_volume_list() {
    let v = View::start(
        "fuse-status",
        &[
            "--create-volume",
            "default/a:4M",
            "--create-volume",
            "default/b:8M",
        ],
    );
    {
        let mut f = OpenOptions::new().write(true).open(v.vol("a")).unwrap();
        f.write_all(&pattern_bytes(6, 1 << 20)).unwrap();
        f.sync_all().unwrap();
    }
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(v.mnt.join("status/volumes.json")).unwrap()).unwrap();
    let list = volume_list(&v.d);
    let key = |r: &serde_json::Value| {
        [
            "pool",
            "name",
            "size",
            "allocated",
            "physical",
            "compression",
            "block_size",
            "export",
        ]
        .map(|k| r[k].clone())
    };
    let mut s: Vec<_> = status.as_array().unwrap().iter().map(key).collect();
    let mut l: Vec<_> = list.as_array().unwrap().iter().map(key).collect();
    s.sort_by_key(|k| k[1].to_string());
    l.sort_by_key(|k| k[1].to_string());
    assert_eq!(s, l);
    assert_eq!(s.len(), 2);
    assert!(status[0]["cleaner"].is_string());
    let text = fs::read_to_string(v.mnt.join("status/volumes")).unwrap();
    assert!(text.starts_with("VOLUME"), "{text}");
    assert!(
        text.contains("default/a") && text.contains("default/b"),
        "{text}"
    );
    let pools: serde_json::Value =
        serde_json::from_slice(&fs::read(v.mnt.join("status/pools.json")).unwrap()).unwrap();
    assert_eq!(pools[0]["name"], "default");
    assert_eq!(pools[0]["state"], "ok");
    assert!(pools[0]["uri"].as_str().unwrap().starts_with("local:///"));
    let agent: serde_json::Value =
        serde_json::from_slice(&fs::read(v.mnt.join("status/agent.json")).unwrap()).unwrap();
    assert_eq!(agent["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(agent["fuse_mountpoint"], v.mnt.to_str().unwrap());
    assert!(fs::read_to_string(v.mnt.join("status/agent"))
        .unwrap()
        .contains("version: "));
    assert_eq!(
        names_in(&v.mnt.join("status")),
        [
            "agent",
            "agent.json",
            "pools",
            "pools.json",
            "volumes",
            "volumes.json"
        ]
    );
}

#[test]
fn mkdir_and_rmdir_make_and_delete_pools() {
    let v = View::start("fuse-pools", &[]);
    let p2 = v.mnt.join("pools/p2");
    fs::create_dir(&p2).unwrap();
    let pools = json(&hlfs(&v.d, false, &["--json", "pool", "list"]));
    let row = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p2")
        .expect("pool p2 listed");
    assert_eq!(
        row["uri"].as_str().unwrap(),
        format!("local://{}", v.d.data_dir().join("pools/p2").display())
    );
    assert_eq!(names_in(&v.mnt.join("snapshots")), ["default", "p2"]);
    let e = fs::create_dir(&p2).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    libvirt_create(&p2.join("v"), 1 << 20, 0, None);
    let e = fs::remove_dir(&p2).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY);
    fs::remove_file(p2.join("v")).unwrap();
    fs::remove_dir(&p2).unwrap();
    assert_eq!(names_in(&v.mnt.join("pools")), ["default"]);
    // statfs of a pool is its file system's space.
    // SAFETY: zeroed is a valid statvfs; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(v.pool().to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bavail > 0 && st.f_bavail <= st.f_blocks);
}

#[test]
fn modes_and_owners_are_stored_enforced_and_kept() {
    let mut v = View::start("fuse-owners", &[]);
    let path = v.vol("private");
    libvirt_create(&path, 1 << 20, 0, None);
    let p = path.to_str().unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new(require_tool("setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            .output()
            .unwrap()
    };
    // 0600 root: nobody may not read another's disk, nor create or delete volumes.
    let e = err(&as_nobody(&["cat", p]));
    assert!(e.contains("Permission denied"), "{e}");
    let e = err(&as_nobody(&["rm", "-f", p]));
    assert!(e.contains("Permission denied"), "{e}");
    assert!(path.exists());
    // Given to nobody, it is theirs to read and write.
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    ok(&as_nobody(&[
        "dd",
        &format!("of={p}"),
        "if=/dev/zero",
        "bs=4k",
        "count=1",
        "conv=notrunc",
    ]));
    v.d.terminate();
    v.d.spawn();
    let md = fs::metadata(&path).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (65534, 65534, 0o640)
    );
    // Truncate to zero and back: a volume file may be empty.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(0).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    f.set_len(4096).unwrap();
    // Writes past the end grow the file, as on any file system.
    use std::os::unix::fs::FileExt;
    assert_eq!(f.write_at(b"x", 4096).unwrap(), 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), 4097);
    assert_eq!(f.write_at(&[1u8; 100], 4050).unwrap(), 100);
    assert_eq!(fs::metadata(&path).unwrap().len(), 4150);
    let mut buf = [0u8; 10];
    let f = File::open(&path).unwrap();
    assert_eq!(
        f.read_at(&mut buf, 5000).unwrap(),
        0,
        "reads past the end return 0 bytes"
    );
    // fallocate: mode 0 grows, punch hole reads zeros, unknown modes refused.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: a valid descriptor.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    f.write_all_at(&[7u8; 8192], 0).unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(unsafe { libc::fallocate(fd, punch, 0, 4096) }, 0);
    let mut b = [1u8; 4096];
    f.read_exact_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|x| *x == 0));
    assert_eq!(seek(&f, 0, libc::SEEK_DATA), Ok(4096));
    let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096) };
    assert_eq!(r, -1);
    assert_eq!(errno(&std::io::Error::last_os_error()), libc::EOPNOTSUPP);
    // O_DIRECT works.
    let d = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: a valid layout; the buffer is freed below.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, 4096) };
    buf.fill(0x5a);
    assert_eq!(d.write_at(buf, 8192).unwrap(), 4096);
    buf.fill(0);
    assert_eq!(d.read_at(buf, 8192).unwrap(), 4096);
    assert!(buf.iter().all(|x| *x == 0x5a));
    unsafe { std::alloc::dealloc(ptr, layout) };
}
