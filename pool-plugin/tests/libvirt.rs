//! Real libvirtd (started by scripts/libvirt/start-libvirtd.sh, no systemd) with a real hlfsd:
//! TCG guests boot from an HLFS volume with the seeds' domain XML and from a snapshot, each
//! leaving a marker that the test reads back over NBD; `define` goes through libvirt; and
//! publication puts HLFS pools into libvirt as autostarted dir pools, following hlfsd's signals.
//! Heavy (two guest boots): kept to this one test.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (by its PID) when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// hlfs-virsh on this hlfsd and libvirtd.
fn hv(h: &Hlfsd, lv: &Libvirtd) -> Command {
    let mut c = h.virsh();
    c.env("LIBVIRT_DEFAULT_URI", &lv.uri);
    c
}

fn wait_gone(lv: &Libvirtd, dom: &str, console: &Path) {
    let t0 = Instant::now();
    loop {
        let (ok, out, _) = outputs(lv.virsh().args(["domstate", dom]));
        if !ok {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "{dom} still {out} after 150 s; console:\n{}",
            std::fs::read_to_string(console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The first `len` bytes of an NBD export, read with qemu-img.
fn read_export(h: &Hlfsd, export: &str, dest: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(dest);
    run(tool("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(h.nbd_uri(export))
        .arg(dest));
    std::fs::read(dest).unwrap()
}

#[test]
fn guests_boot_from_hlfs_and_pools_are_published() {
    require_tool("qemu-system-x86_64");
    require_tool("debugfs");
    let mut h = Hlfsd::start("libvirt");
    let env = TempDir::new("env");
    let dir = env.path().join("testenv");
    let guest = env.path().join("testenv-guest");
    let files = TempDir::new("files");
    let write = |name: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, data(name, &dir)).unwrap();
        p
    };
    run(Command::new("bash")
        .arg(repo().join("scripts/libvirt/make-guest.sh"))
        .arg(&guest));
    let lv = Libvirtd::start();

    // The seeds' pool and volume, the guest's root filesystem copied in over NBD.
    run(hv(&h, &lv).arg("pool-create").arg(write("seed-pool.xml")));
    run(hv(&h, &lv)
        .arg("vol-create")
        .arg("testenv")
        .arg(write("seed-volume.xml")));
    run(tool("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(guest.join("rootfs.img"))
        .arg(h.nbd_uri("testenv/testfs")));

    // 1. Boot with the seeds' domain XML (protocol='hlfs').
    let t0 = Instant::now();
    let out = run(hv(&h, &lv).arg("create").arg(write("seed-domain.xml")));
    assert!(out.contains("Domain 'hlfs-seed' created"), "{out}");
    wait_gone(&lv, "hlfs-seed", &guest.join("console.log"));
    eprintln!(
        "boot from an HLFS volume: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let img = files.path().join("back.img");
    read_export(&h, "testenv/testfs", &img);
    let marker = run(tool("debugfs").args(["-R", "cat /marker"]).arg(&img));
    assert!(
        marker.contains("marker: booted from HLFS"),
        "marker: {marker:?}"
    );

    // 2. Boot from snapshot1 (read-only root); the guest writes to volume disk 'out'.
    h.snapshot("testenv", "testfs", "snapshot1");
    run(hv(&h, &lv)
        .arg("vol-create")
        .arg("testenv")
        .arg(write("out-volume.xml")));
    let t0 = Instant::now();
    run(hv(&h, &lv).arg("create").arg(write("snapshot-domain.xml")));
    wait_gone(&lv, "hlfs-snap", &guest.join("console2.log"));
    eprintln!(
        "boot from an HLFS snapshot: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let out = read_export(&h, "testenv/out", &files.path().join("out.img"));
    let text = String::from_utf8_lossy(&out[..4096]);
    let text = text.trim_end_matches(['\0', ' ', '\n']);
    assert!(
        text.contains("marker: snapshot boot; root /dev/vda / ext4 ro"),
        "{text}"
    );
    assert!(
        text.contains("first boot said: marker: booted from HLFS"),
        "{text}"
    );

    // 3. define goes through libvirt: stock virsh sees the NBD disk.
    let out = run(hv(&h, &lv).arg("define").arg(write("seed-domain.xml")));
    assert!(out.contains("Domain 'hlfs-seed' defined"), "{out}");
    let x = run(lv.virsh().args(["dumpxml", "hlfs-seed"]));
    assert!(x.contains("protocol='nbd' name='testenv/testfs'"), "{x}");
    assert!(
        x.contains(&format!("socket='{}'", h.nbd_socket().display())),
        "{x}"
    );
    run(lv.virsh().args(["undefine", "hlfs-seed"]));

    // 4. Publication, following hlfsd's signals. Without the FUSE view (another issue) a plain
    //    directory stands in for its mount point.
    let mnt = TempDir::new("mnt");
    for p in ["testenv", "second"] {
        std::fs::create_dir_all(mnt.path().join("pools").join(p)).unwrap();
    }
    // A libvirt pool of another kind with an HLFS pool's name is left alone.
    let publisher = hv(&h, &lv)
        .args(["publish", "--mountpoint"])
        .arg(mnt.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let publisher = KillOnDrop(publisher);
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let pool_list = || run(lv.virsh().args(["pool-list", "--all", "--name"]));
    wait_for("testenv published", &|| {
        pool_list().lines().any(|l| l.trim() == "testenv")
    });
    let info = run(lv.virsh().args(["pool-info", "testenv"]));
    assert!(
        info.contains("running") && info.contains("Autostart:      yes"),
        "{info}"
    );
    assert!(info.contains("Persistent:     yes"), "{info}");
    let x = run(lv.virsh().args(["pool-dumpxml", "testenv"]));
    assert!(
        x.contains(&format!(
            "<path>{}</path>",
            mnt.path().join("pools/testenv").display()
        )),
        "{x}"
    );

    // A new HLFS pool appears in libvirt by itself; forgetting it withdraws it.
    let second = files.path().join("second.xml");
    std::fs::write(
        &second,
        format!(
            "<pool type='hlfs'><name>second</name><source><name>local://{}</name></source></pool>",
            env.path().join("second").display()
        ),
    )
    .unwrap();
    run(hv(&h, &lv).arg("pool-define").arg(&second));
    wait_for("second published", &|| {
        pool_list().lines().any(|l| l.trim() == "second")
    });
    run(hv(&h, &lv).args(["pool-undefine", "second"]));
    wait_for("second withdrawn", &|| {
        !pool_list().lines().any(|l| l.trim() == "second")
    });
    // hlfsd restarted: the publisher reconnects and follows again; the pool stays published.
    h.stop();
    h.spawn();
    let third = files.path().join("third.xml");
    std::fs::write(
        &third,
        format!(
            "<pool type='hlfs'><name>third</name><source><name>local://{}</name></source></pool>",
            env.path().join("third").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(mnt.path().join("pools/third")).unwrap();
    run(hv(&h, &lv).arg("pool-define").arg(&third));
    wait_for("third published after hlfsd restarted", &|| {
        pool_list().lines().any(|l| l.trim() == "third")
    });
    let info = run(lv.virsh().args(["pool-info", "testenv"]));
    assert!(info.contains("running"), "{info}");
    drop(publisher);

    // libvirtd restarted: the published pool is still there, autostarted.
    lv.stop();
    let lv2 = Libvirtd {
        sandbox: TempDir(lv.sandbox.0.clone()),
        uri: lv.uri.clone(),
    };
    let _lv = std::mem::ManuallyDrop::new(lv);
    run(Command::new("bash")
        .arg(repo().join("scripts/libvirt/start-libvirtd.sh"))
        .env("LIBVIRT_SANDBOX", lv2.sandbox.path()));
    let info = run(lv2.virsh().args(["pool-info", "testenv"]));
    assert!(
        info.contains("running") && info.contains("Autostart:      yes"),
        "{info}"
    );
}
