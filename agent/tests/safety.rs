//! Issue 17's data-loss and lock-out defects, each reproduced against a real hlfsd and the real
//! `hlfs` CLI: a destructive command acts only on exactly what was named (an HLFS volume, never
//! a user's directory, never through a symlink, never a snapshot reference taken for its
//! volume), a refused second daemon leaves the running one's sockets alone, guest data is not
//! readable by other users, and their lock files cannot be taken by them.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

#[test]
fn volume_delete_removes_only_hlfs_volumes_and_only_their_files() {
    let d = Daemon::start("safety-delete", &[]);
    let outside = TempDir::new("safety-outside");
    let dir = outside.path().join("pooldir");
    // A user's directory that is not a volume, with a file in it.
    std::fs::create_dir_all(dir.join("imp")).unwrap();
    std::fs::write(dir.join("imp/f"), b"precious").unwrap();
    // A directory that looks like a volume (it has a volume.meta) but is not one.
    std::fs::create_dir_all(dir.join("fake")).unwrap();
    std::fs::write(dir.join("fake/volume.meta"), b"not a superblock").unwrap();
    std::fs::write(dir.join("fake/seg-00000000"), b"user data").unwrap();
    let uri = format!("local://{}", dir.display());
    ok(&hlfs(&d, false, &["pool", "create", "fr", &uri]));

    // A real volume elsewhere, reachable through a symlink inside the pool.
    ok(&hlfs(
        &d,
        false,
        &["volume", "create", "default/real", "1M"],
    ));
    let real = d.data_dir().join("pools/default/real");
    assert!(real.join("volume.meta").is_file());
    std::os::unix::fs::symlink(&real, dir.join("sl")).unwrap();

    let listed = json(&hlfs(&d, false, &["--json", "volume", "list", "fr"]));
    assert_eq!(
        strings(&listed, "name"),
        Vec::<&str>::new(),
        "only HLFS volumes are listed"
    );
    for name in ["imp", "fake", "sl"] {
        let o = hlfs(&d, false, &["volume", "delete", &format!("fr/{name}")]);
        let e = err(&o);
        assert!(e.contains("not found"), "delete fr/{name}: {e}");
    }
    assert_eq!(std::fs::read(dir.join("imp/f")).unwrap(), b"precious");
    assert_eq!(
        std::fs::read(dir.join("fake/seg-00000000")).unwrap(),
        b"user data"
    );
    assert!(
        real.join("volume.meta").is_file(),
        "the symlink's target survived"
    );

    // A real volume with a stray user file: the volume's own files go, the user's file and so
    // the directory stay.
    ok(&hlfs(&d, false, &["volume", "create", "fr/v", "1M"]));
    std::fs::write(dir.join("v/notes.txt"), b"mine").unwrap();
    ok(&hlfs(&d, false, &["volume", "delete", "fr/v"]));
    let left: Vec<String> = std::fs::read_dir(dir.join("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["notes.txt".to_string()]);
    let listed = json(&hlfs(&d, false, &["--json", "volume", "list", "fr"]));
    assert!(strings(&listed, "name").is_empty(), "{listed}");
    // Without strays the directory goes too.
    ok(&hlfs(&d, false, &["volume", "create", "fr/w", "1M"]));
    ok(&hlfs(&d, false, &["volume", "delete", "fr/w"]));
    assert!(!dir.join("w").exists());
}

#[test]
fn commands_taking_a_volume_refuse_a_snapshot_and_the_reverse() {
    let d = Daemon::start("safety-snapref", &[]);
    ok(&hlfs(&d, false, &["volume", "create", "default/q", "1M"]));
    ok(&hlfs(&d, false, &["snapshot", "create", "default/q%s1"]));

    let e = err(&hlfs(&d, false, &["volume", "delete", "default/q%s1"]));
    assert!(e.contains("snapshot"), "{e}");
    let e = err(&hlfs(&d, false, &["volume", "create", "default/a%b", "1M"]));
    assert!(e.contains("snapshot"), "{e}");
    let e = err(&hlfs(
        &d,
        false,
        &["volume", "resize", "default/q%nosuch", "2M"],
    ));
    assert!(e.contains("snapshot"), "{e}");
    let e = err(&hlfs(&d, false, &["volume", "info", "default/q%s1"]));
    assert!(e.contains("snapshot"), "{e}");
    let e = err(&hlfs(&d, false, &["clone", "default/q%s1", "default/c%x"]));
    assert!(e.contains("snapshot"), "{e}");
    // The reverse: a snapshot command given a plain volume.
    let e = err(&hlfs(&d, false, &["snapshot", "delete", "default/q"]));
    assert!(e.contains("VOLUME%SNAPSHOT"), "{e}");

    let v = json(&hlfs(&d, false, &["--json", "volume", "info", "default/q"]));
    assert_eq!(v["size"], 1 << 20, "q was not resized");
    let listed = json(&hlfs(&d, false, &["--json", "volume", "list"]));
    assert_eq!(
        strings(&listed, "name"),
        vec!["q"],
        "q survives, no 'a' made"
    );
    let snaps = json(&hlfs(
        &d,
        false,
        &["--json", "snapshot", "list", "default/q"],
    ));
    assert!(snaps.to_string().contains("s1"), "{snaps}");
}

#[test]
fn a_refused_second_daemon_leaves_the_running_daemons_sockets_alone() {
    let d = Daemon::start("safety-second", &["--create-volume", "default/v:1M"]);
    let other = TempDir::new("safety-second-b");
    let rundir = d.dir.path().join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_hlfsd"))
        .arg("--data-dir")
        .arg(other.path().join("data"))
        .arg("--runtime-dir")
        .arg(&rundir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "the second daemon must refuse");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("in use"), "{e}");
    assert!(rundir.join("nbd.sock").exists(), "nbd.sock was removed");
    assert!(rundir.join("dbus.sock").exists(), "dbus.sock was removed");
    // Both still answer.
    let listed = json(&hlfs(&d, false, &["--json", "volume", "list"]));
    assert_eq!(strings(&listed, "name"), vec!["v"]);
    let info = run("nbdinfo", &["--size", &d.uri("default/v")]);
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "1048576");
}

#[test]
fn guest_data_is_private_and_lock_files_cannot_be_taken_by_other_users() {
    let mut d = Daemon::start("safety-private", &["--create-volume", "default/v:4M"]);
    let write = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "flush",
            &d.uri("default/v"),
        ],
    );
    assert!(write.status.success());
    let data = d.data_dir();
    let vol = data.join("pools/default/v");
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("pools")), 0o700);
    assert_eq!(mode(&vol), 0o700, "volume directory");
    for e in std::fs::read_dir(&vol).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is open to others", p.display());
    }
    assert_eq!(mode(&data.join("hlfsd.lock")) & 0o077, 0);

    // An unprivileged user cannot read a segment or take a lock, even where a directory was
    // made open by hand (an old install, a pool on a shared directory).
    require_tool("setpriv");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("pools"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("pools/default"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for lock in [data.join("hlfsd.lock"), vol.join("lock")] {
        let o = as_nobody(&["flock", "-x", "-n", lock.to_str().unwrap(), "true"]);
        assert!(!o.status.success(), "nobody took {}", lock.display());
    }
    let seg = std::fs::read_dir(&vol)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .expect("a segment");
    let o = as_nobody(&["cat", seg.to_str().unwrap()]);
    assert!(!o.status.success(), "nobody read {}", seg.display());

    // A restart tightens what was loosened.
    d.terminate();
    d.spawn();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&vol), 0o700);
}

#[test]
fn overlapping_or_system_pool_directories_are_refused() {
    let d = Daemon::start("safety-overlap", &["--create-volume", "default/v:1M"]);
    let t = TempDir::new("safety-overlap-dirs");
    let p1 = t.path().join("p1");
    ok(&hlfs(
        &d,
        false,
        &["pool", "create", "p1", &format!("local://{}", p1.display())],
    ));
    std::os::unix::fs::symlink(&p1, t.path().join("link-to-p1")).unwrap();
    let data = d.data_dir();
    let cases = [
        "local:///".to_string(),
        "local:///proc/self".to_string(),
        "local:///etc".to_string(),
        format!("local://{}", data.display()),
        format!("local://{}", data.join("journal/x").display()),
        format!("local://{}", data.parent().unwrap().display()),
        format!("local://{}", p1.display()),
        format!("local://{}", p1.join("inner").display()),
        format!("local://{}", t.path().display()),
        format!("local://{}", t.path().join("link-to-p1").display()),
        format!("local://{}", data.join("pools/default/v").display()),
        format!("local://{}", data.join("pools/default/v/sub").display()),
        "hdfs://:0/x".to_string(),
    ];
    for (i, uri) in cases.iter().enumerate() {
        let o = hlfs(&d, false, &["pool", "create", &format!("bad{i}"), uri]);
        let e = err(&o);
        assert!(e.contains("org.hlfs.Error.Invalid"), "{uri}: {e}");
    }
    let pools = json(&hlfs(&d, false, &["--json", "pool", "list"]));
    assert_eq!(strings(&pools, "name"), vec!["default", "p1"]);
    // A sibling is fine.
    ok(&hlfs(
        &d,
        false,
        &[
            "pool",
            "create",
            "p2",
            &format!("local://{}", t.path().join("p2").display()),
        ],
    ));
}

#[test]
fn a_damaged_superblock_is_reported_and_resize_to_zero_is_refused() {
    let mut d = Daemon::start("safety-damaged", &["--create-volume", "default/v:1M"]);
    ok(&hlfs(&d, false, &["volume", "create", "default/w", "2M"]));
    let e = err(&hlfs(&d, false, &["volume", "resize", "default/w", "0"]));
    assert!(e.contains("above zero"), "{e}");
    d.terminate();
    // Damage w's superblock past its magic (a flipped byte in the CRC-covered body).
    let meta = d.data_dir().join("pools/default/w/volume.meta");
    let mut b = std::fs::read(&meta).unwrap();
    b[12] ^= 0xff;
    std::fs::write(&meta, &b).unwrap();
    d.spawn();
    let o = hlfs(&d, false, &["volume", "info", "default/w"]);
    let e = err(&o);
    assert!(e.contains("damaged"), "{e}");
    let o = hlfs(&d, false, &["volume", "list"]);
    assert!(!o.status.success(), "list must fail with a damaged volume");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("default/w") && out.contains("DAMAGED"),
        "{out}"
    );
    assert!(
        out.contains("default/v") && out.contains("1.0 MiB"),
        "{out}"
    );
    // The healthy one is untouched, and info on it works.
    let v = json(&hlfs(&d, false, &["--json", "volume", "info", "default/v"]));
    assert_eq!(v["size"], 1 << 20);
}
