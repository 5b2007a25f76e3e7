//! libvirt as Debian runs it: QEMU as `libvirt-qemu`, not root. With hlfsd's NBD socket root's
//! only (`[nbd] socket_mode = "0600"`) that user is refused, so the guest does not start; with
//! hlfsd configured as docs/install.md says (`[nbd] socket_group = "libvirt-qemu"`,
//! `socket_mode = "0660"`) the guest boots from an HLFS volume. The host has the user and group
//! `libvirt-qemu` as Debian's libvirt-daemon-system makes them (scripts/setup-test.sh).

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

#[test]
fn a_guest_runs_as_libvirt_qemu_once_the_socket_is_its_group_s() {
    require_tool("qemu-system-x86_64");
    require_tool("debugfs");
    let qemu_gid = host_group_id("libvirt-qemu");
    let mut h = Hlfsd::start_with("qemuuser", "[nbd]\nsocket_mode = \"0600\"\n", None);
    let seeds = SeedEnv::new();
    let (env, guest, files) = (&seeds.env, &seeds.guest, &seeds.files);
    let write = |name: &str| seeds.write(name);
    let lv = Libvirtd::start_as("libvirt-qemu");
    let hv = |h: &Hlfsd| {
        let mut c = h.virsh();
        c.env("LIBVIRT_DEFAULT_URI", &lv.uri);
        c
    };
    run(hv(&h).arg("pool-create").arg(write("seed-pool.xml")));
    run(hv(&h)
        .arg("vol-create")
        .arg("testenv")
        .arg(write("seed-volume.xml")));
    run(tool("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(guest.join("rootfs.img"))
        .arg(h.nbd_uri("testenv/testfs")));
    // The directories on the way to the socket and the guest's files must be reachable.
    for p in [env.path(), h.dir.path(), &h.dir.path().join("nbd")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // Root's only: QEMU (libvirt-qemu) cannot connect.
    let md = std::fs::metadata(h.nbd_socket()).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let (ok, _, err) = outputs(hv(&h).arg("create").arg(write("seed-domain.xml")));
    assert!(!ok, "the guest started on a root 0600 socket");
    assert!(
        err.contains("Permission denied") || err.contains("ermission"),
        "{err}"
    );

    // hlfsd configured for libvirt: group libvirt-qemu (the same gid in libvirtd's namespace,
    // whose /etc lies over the host's), mode 0660.
    assert_eq!(lv.group_id("libvirt-qemu"), qemu_gid);
    h.stop();
    h.config = "[nbd]\nsocket_group = \"libvirt-qemu\"\nsocket_mode = \"0660\"\n".into();
    h.spawn();
    let md = std::fs::metadata(h.nbd_socket()).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    assert_eq!(md.gid(), qemu_gid);
    let t0 = Instant::now();
    let out = run(hv(&h).arg("create").arg(write("seed-domain.xml")));
    assert!(out.contains("created"), "{out}");
    loop {
        let (ok, _, _) = outputs(lv.virsh().args(["domstate", "hlfs-seed"]));
        if !ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "the guest did not finish"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("boot as libvirt-qemu: {:.1} s", t0.elapsed().as_secs_f64());
    let img = files.path().join("back.img");
    run(tool("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(h.nbd_uri("testenv/testfs"))
        .arg(&img));
    let marker = run(tool("debugfs").args(["-R", "cat /marker"]).arg(&img));
    assert!(marker.contains("marker: booted from HLFS"), "{marker:?}");
}
