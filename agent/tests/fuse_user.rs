//! A normal user's hlfsd mounts its FUSE view through the setuid `fusermount3` (Debian package
//! fuse3), and nobody else reads its disks through it. The test runs as root (as CI does): it
//! creates the user, makes `/dev/fuse` usable by users as Debian's udev rule does (mode 0666;
//! a container without udev may leave it 0600), and runs hlfsd as that user.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const USER: &str = "hlfstest-fuse";

fn id(flag: &str, user: &str) -> Option<u32> {
    let o = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// The user (made if missing) as `(uid, gid)`, and `/dev/fuse` open to users.
fn user() -> (u32, u32) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test creates a user and runs hlfsd as that user: run it as root (CI does)"
    );
    require_tool("fusermount3");
    if id("-u", USER).is_none() {
        let st = Command::new(require_tool("useradd"))
            .args(["-M", "-N", "-s", "/usr/sbin/nologin", USER])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {USER}");
    }
    let md = fs::metadata("/dev/fuse").expect("/dev/fuse (Debian package fuse3)");
    if md.permissions().mode() & 0o006 != 0o006 {
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    }
    (id("-u", USER).unwrap(), id("-g", USER).unwrap())
}

/// Runs `args` as `uid`/`gid` with no supplementary groups.
fn as_user(uid: u32, gid: u32, args: &[&str]) -> Output {
    Command::new(require_tool("setpriv"))
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .output()
        .unwrap()
}

/// The mountinfo line of the mount at `dir`, if mounted.
fn mount_line(dir: &Path) -> Option<String> {
    let want = format!(" {} ", dir.display());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(&want))
        .map(str::to_string)
}

/// Detaches the view (as root) whatever the test's outcome.
struct Detach(PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: a valid path; failure (not mounted) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_users_hlfsd_mounts_through_fusermount3_for_that_user_alone() {
    let (uid, gid) = user();
    let scratch = TempDir::new("fuse-user-m");
    std::os::unix::fs::chown(scratch.path(), Some(uid), Some(gid)).unwrap();
    let mnt = scratch.path().join("mnt");
    let _detach = Detach(mnt.clone());
    let m = mnt.to_str().unwrap();
    let mut d = Daemon::start_as(
        "fuse-user",
        uid,
        gid,
        &["--fuse-mount", m, "--create-volume", "default/vm:4M"],
    );
    let line = mount_line(&mnt).expect("the view is mounted");
    assert!(line.contains(" - fuse.hlfs "), "{line}");
    assert!(line.contains(&format!("user_id={uid},")), "{line}");
    let allow_other = line.contains("allow_other");
    assert_eq!(
        allow_other,
        fs::read_to_string("/etc/fuse.conf")
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == "user_allow_other"),
        "allow_other only where /etc/fuse.conf permits it: {line}"
    );

    // The user writes the volume through the file; NBD sees the same bytes.
    let vol = mnt.join("pools/default/vm");
    let v = vol.to_str().unwrap();
    let src = d.dir.path().join("pattern");
    let data = pattern_bytes(11, 1 << 20);
    fs::write(&src, &data).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).unwrap();
    ok(&as_user(
        uid,
        gid,
        &[
            "dd",
            &format!("if={}", src.display()),
            &format!("of={v}"),
            "bs=64k",
            "conv=notrunc,fsync",
        ],
    ));
    let back = as_user(uid, gid, &["head", "-c", "1048576", v]);
    assert!(back.status.success() && back.stdout == data, "read back");
    let over_nbd = d.read_over_nbd("default/vm");
    assert!(over_nbd[..1 << 20] == data[..]);

    // Another user reads nothing: not the volume, not even the directory.
    for args in [&["cat", v][..], &["ls", m]] {
        let o = as_user(65534, 65534, args);
        assert!(!o.status.success(), "{args:?} as nobody succeeded");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("Permission denied"), "{args:?}: {e}");
    }
    // Root only where allow_other is on (fuser then serves root and the owner).
    let root = fs::read(&vol);
    match (allow_other, root) {
        (true, Ok(b)) => assert_eq!(b[..1 << 20], data[..]),
        (false, Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}"),
        (a, r) => panic!("allow_other {a}, root read {:?}", r.map(|b| b.len())),
    }

    // A clean stop unmounts (fusermount3 -u).
    assert!(d.terminate().success(), "{}", d.stderr());
    assert_eq!(mount_line(&mnt), None, "still mounted after SIGTERM");

    // kill -9: either fusermount3 unmounts at once (auto_unmount, with allow_other), or the
    // dead mount stays and the next start clears it (fusermount3 -u -z as the user).
    d.spawn();
    assert!(mount_line(&mnt).is_some());
    d.kill9();
    if allow_other {
        let t0 = Instant::now();
        while mount_line(&mnt).is_some() {
            assert!(t0.elapsed() < Duration::from_secs(5), "auto_unmount");
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        assert!(mount_line(&mnt).is_some(), "a dead mount stays");
        let o = as_user(uid, gid, &["stat", m]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("Transport endpoint is not connected"), "{e}");
    }
    d.spawn();
    if !allow_other {
        assert!(
            d.stderr().contains("clearing the FUSE mount"),
            "{}",
            d.stderr()
        );
    }
    let n = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .matches(&format!(" {m} "))
        .count();
    assert_eq!(n, 1, "exactly one mount, the live one");
    let back = as_user(uid, gid, &["head", "-c", "1048576", v]);
    assert!(back.status.success() && back.stdout == data, "data kept");
    assert!(d.terminate().success());
    assert_eq!(mount_line(&mnt), None);
}
