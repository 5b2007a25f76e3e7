//! Real libvirtd (started by scripts/libvirt/start-libvirtd.sh, no systemd) with a real hlfsd
//! whose FUSE view libvirtd sees: TCG guests boot from an HLFS volume with the seeds' domain XML
//! and from a snapshot, each leaving a marker that the test reads back over NBD; `define` goes
//! through libvirt; publication puts HLFS pools into libvirt as autostarted dir pools on the FUSE
//! view, where stock virsh's volume verbs work (each checked against `hlfs --json volume list`
//! or the data read back), following hlfsd's signals and surviving restarts of libvirtd and
//! hlfsd; and virt-install creates a volume in a published pool and starts a domain on it.
//! Heavy (two guest boots, one libvirtd restart): kept to this one test.

mod common;
use common::*;
use std::collections::BTreeMap;
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
    require_tool("virt-install");
    // libvirtd first: hlfsd's FUSE view goes under its shared directory, where libvirtd sees it.
    let lv = Libvirtd::start_sharing();
    let mnt = lv.shared.clone().unwrap().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut h = Hlfsd::start_with("libvirt", "", Some(&mnt));
    let seeds = SeedEnv::new();
    let (env, guest, files) = (&seeds.env, &seeds.guest, &seeds.files);
    let write = |name: &str| seeds.write(name);

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

    // 4. Publication on hlfsd's FUSE view (FuseMountpoint): stock virsh on HLFS pools.
    let publog = files.path().join("publish.log");
    let publisher = hv(&h, &lv)
        .arg("publish")
        .env("HLFS_LOG", "debug")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&publog).unwrap())
        .spawn()
        .unwrap();
    let publisher = KillOnDrop(publisher);
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; publisher:\n{}",
                std::fs::read_to_string(&publog).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let virsh = |args: &[&str]| run(lv.virsh().args(args));
    let running = |pool: &str| {
        let (ok, info, _) = outputs(lv.virsh().args(["pool-info", pool]));
        ok && info.contains("running")
    };
    wait_for("testenv published", &|| running("testenv"));
    let info = virsh(&["pool-info", "testenv"]);
    assert!(info.contains("Autostart:      yes"), "{info}");
    assert!(info.contains("Persistent:     yes"), "{info}");
    let x = virsh(&["pool-dumpxml", "testenv"]);
    assert!(
        x.contains(&format!(
            "<path>{}</path>",
            mnt.join("pools/testenv").display()
        )),
        "{x}"
    );
    // Stopped behind the publisher's back (virsh pool-destroy, virt-manager's stop button):
    // libvirt's pool event has it started again at once, not at the next 30 s check.
    virsh(&["pool-destroy", "testenv"]);
    let t = Instant::now();
    wait_for("testenv started again after pool-destroy", &|| {
        running("testenv")
    });
    let log = std::fs::read_to_string(&publog).unwrap_or_default();
    assert!(
        t.elapsed() < Duration::from_secs(10) && log.contains("libvirt storage pool event"),
        "testenv started again after {:?}, not on libvirt's event:\n{log}",
        t.elapsed()
    );
    // What hlfsd has (`hlfs --json volume list`) and what libvirt lists.
    let dbus_socket = h.dbus_socket(); // the same after hlfsd restarts
    let hlfs = || {
        let mut c = Command::new(workspace_bin("hlfs"));
        c.arg("--socket").arg(&dbus_socket);
        c
    };
    let hlfs_vols = |pool: &str| -> BTreeMap<String, u64> {
        let out = run(hlfs().args(["--json", "volume", "list"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["pool"] == pool)
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["size"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // Empty while the pool is not active (a wait_for then waits for the publisher to start it).
    let virsh_vols = |pool: &str| -> Vec<String> {
        let (_, out, _) = outputs(lv.virsh().args(["vol-list", pool]));
        out.lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let same_lists = |pool: &str| {
        let h = hlfs_vols(pool).into_keys().collect::<Vec<_>>();
        let v = virsh_vols(pool);
        assert_eq!(v, h, "virsh vol-list {pool} against hlfs volume list");
    };
    same_lists("testenv");
    assert_eq!(virsh_vols("testenv"), ["out", "testfs"]);
    let capacity = |vol: &str| -> u64 {
        let info = virsh(&["vol-info", "--bytes", "--pool", "testenv", vol]);
        info.lines()
            .find_map(|l| l.strip_prefix("Capacity:"))
            .and_then(|c| c.trim().trim_end_matches(" bytes").parse().ok())
            .unwrap_or_else(|| panic!("no capacity in {info}"))
    };
    assert_eq!(capacity("testfs"), hlfs_vols("testenv")["testfs"]);

    // vol-create-as, vol-upload, vol-download, vol-resize, vol-clone, vol-wipe, vol-delete.
    virsh(&["vol-create-as", "testenv", "web", "16M", "--format", "raw"]);
    assert_eq!(hlfs_vols("testenv").get("web"), Some(&(16 << 20)));
    let pattern: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let up = files.path().join("up.bin");
    std::fs::write(&up, &pattern).unwrap();
    virsh(&[
        "vol-upload",
        "--pool",
        "testenv",
        "web",
        up.to_str().unwrap(),
    ]);
    let back = read_export(&h, "testenv/web", &files.path().join("web.img"));
    assert_eq!(back.len(), 16 << 20);
    assert!(
        back[..1 << 20] == pattern[..],
        "vol-upload: other bytes over NBD"
    );
    assert!(back[1 << 20..].iter().all(|&b| b == 0));
    let down = files.path().join("down.bin");
    virsh(&[
        "vol-download",
        "--pool",
        "testenv",
        "web",
        down.to_str().unwrap(),
    ]);
    let d = std::fs::read(&down).unwrap();
    assert_eq!(d.len(), 16 << 20);
    assert!(d[..1 << 20] == pattern[..], "vol-download: other bytes");
    virsh(&["vol-resize", "--pool", "testenv", "web", "32M"]);
    assert_eq!(hlfs_vols("testenv")["web"], 32 << 20);
    assert_eq!(capacity("web"), 32 << 20);
    virsh(&["vol-clone", "--pool", "testenv", "web", "web2"]);
    assert_eq!(hlfs_vols("testenv").get("web2"), Some(&(32 << 20)));
    let c = read_export(&h, "testenv/web2", &files.path().join("web2.img"));
    assert!(c[..1 << 20] == pattern[..], "vol-clone: other bytes");
    virsh(&["vol-wipe", "--pool", "testenv", "web2"]);
    let w = read_export(&h, "testenv/web2", &files.path().join("web2.img"));
    assert_eq!(w.len(), 32 << 20);
    assert!(w.iter().all(|&b| b == 0), "vol-wipe left data");
    virsh(&["vol-delete", "--pool", "testenv", "web2"]);
    assert!(!hlfs_vols("testenv").contains_key("web2"));
    same_lists("testenv");

    // A volume made with hlfs appears in libvirt after the publisher's refresh.
    run(hlfs().args(["volume", "create", "testenv/cli1", "8M"]));
    wait_for("cli1 in virsh vol-list", &|| {
        virsh_vols("testenv").iter().any(|v| v == "cli1")
    });
    same_lists("testenv");

    // virsh pool-define-as + pool-build on the view creates an HLFS pool, which stays published.
    let built = mnt.join("pools/built");
    virsh(&[
        "pool-define-as",
        "built",
        "dir",
        "--target",
        built.to_str().unwrap(),
    ]);
    // libvirt's pool-build is mkdir, then chmod to the pool's mode (0711 by default), and rmdir
    // if that fails: the view accepts the chmod of a pool directory.
    let (ok, _, err) = outputs(lv.virsh().args(["pool-build", "built"]));
    assert!(ok, "pool-build: {err}");
    let out = run(hlfs().args(["--json", "pool", "list"]));
    assert!(out.contains("\"built\""), "{out}");
    wait_for("built started and autostarted", &|| {
        running("built") && virsh(&["pool-info", "built"]).contains("Autostart:      yes")
    });

    // libvirtd restarted, and an HLFS pool added while it was down: re-synced.
    let second = files.path().join("second.xml");
    std::fs::write(
        &second,
        format!(
            "<pool type='hlfs'><name>second</name><source><name>local://{}</name></source></pool>",
            env.path().join("second").display()
        ),
    )
    .unwrap();
    run(Command::new("bash")
        .arg(repo().join("scripts/libvirt/stop-libvirtd.sh"))
        .env("LIBVIRT_SANDBOX", lv.sandbox.path())
        .env("KEEP_SHARED", "1"));
    run(hv(&h, &lv).arg("pool-define").arg(&second));
    lv.restart();
    wait_for("second published after libvirtd restarted", &|| {
        running("second")
    });
    assert!(running("testenv"));
    same_lists("testenv");

    // hlfsd restarted: its view goes away (libvirt's refresh fails and stops the pool), and
    // the pools come back active when it returns.
    h.stop();
    let (ok, _, _) = outputs(lv.virsh().args(["pool-refresh", "testenv"]));
    assert!(!ok, "refreshed a pool whose FUSE view is gone");
    h.spawn();
    wait_for("testenv active again after hlfsd restarted", &|| {
        running("testenv") && virsh_vols("testenv").iter().any(|v| v == "testfs")
    });
    same_lists("testenv");
    wait_for("second active again", &|| running("second"));

    // A pool hlfsd forgets is withdrawn from libvirt.
    run(hv(&h, &lv).args(["pool-undefine", "second"]));
    wait_for("second withdrawn", &|| {
        !virsh(&["pool-list", "--all", "--name"])
            .lines()
            .any(|l| l.trim() == "second")
    });

    // 5. virt-install (virt-manager's library) makes a volume in a published pool and starts a
    //    domain on it, unmodified: with its default format, qcow2, whose file grows by writing
    //    past its end (the FUSE view grows the volume, docs/fuse.md).
    let (ok, out, err) = outputs(
        tool("virt-install")
            .args(["--connect", &lv.uri, "--name", "hlfs-vi", "--memory", "128"])
            .args([
                "--vcpus",
                "1",
                "--import",
                "--virt-type",
                "qemu",
                "--os-variant",
                "generic",
            ])
            .args(["--disk", "pool=testenv,size=1,bus=virtio"])
            .args(["--graphics", "none", "--network", "none", "--noautoconsole"]),
    );
    assert!(ok, "virt-install failed:\n{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("Domain creation completed"),
        "{out}\n{err}"
    );
    assert_eq!(virsh(&["domstate", "hlfs-vi"]).trim(), "running");
    let blk = virsh(&["domblklist", "hlfs-vi"]);
    let disk = blk
        .lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["vda", path] => Some(std::path::PathBuf::from(path)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no vda in:\n{blk}"));
    assert_eq!(
        disk.parent(),
        Some(mnt.join("pools/testenv").as_path()),
        "{blk}"
    );
    let name = disk.file_name().unwrap().to_str().unwrap().to_string();
    assert!(hlfs_vols("testenv").contains_key(&name), "{name}");
    let xml = virsh(&["vol-dumpxml", "--pool", "testenv", &name]);
    assert!(xml.contains("<format type='qcow2'/>"), "{xml}");
    assert!(
        xml.contains("<capacity unit='bytes'>1073741824</capacity>"),
        "{xml}"
    );
    virsh(&["destroy", "hlfs-vi"]);
    virsh(&["undefine", "hlfs-vi"]);
    virsh(&["vol-delete", "--pool", "testenv", &name]);
    assert!(!hlfs_vols("testenv").contains_key(&name));
    drop(publisher);
    eprintln!(
        "publisher's warnings:\n{}",
        std::fs::read_to_string(&publog)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // hlfsd goes before libvirtd (its view is under libvirtd's shared directory).
    drop(h);
}
