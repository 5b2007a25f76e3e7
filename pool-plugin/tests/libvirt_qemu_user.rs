//! libvirt as Debian runs it: QEMU as `libvirt-qemu`, not root. hlfsd's NBD socket as it is
//! today (root, 0755) refuses that user, so the guest does not start; with the socket in a group
//! of that user and mode 0660 (what hlfsd's `[nbd] socket_group`/`socket_mode` are to set; until
//! then this test sets them with chgrp/chmod) the guest boots from an HLFS volume.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_guest_runs_as_libvirt_qemu_once_the_socket_is_its_group_s() {
    require_tool("qemu-system-x86_64");
    require_tool("debugfs");
    let h = Hlfsd::start("qemuuser");
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
    let lv = Libvirtd::start_as("libvirt-qemu");
    let hv = || {
        let mut c = h.virsh();
        c.env("LIBVIRT_DEFAULT_URI", &lv.uri);
        c
    };
    run(hv().arg("pool-create").arg(write("seed-pool.xml")));
    run(hv()
        .arg("vol-create")
        .arg("testenv")
        .arg(write("seed-volume.xml")));
    run(tool("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(guest.join("rootfs.img"))
        .arg(h.nbd_uri("testenv/testfs")));
    // The directories on the way to the socket and the guest's files must be reachable.
    for p in [env.path(), h.dir.path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // As hlfsd leaves it today: QEMU (libvirt-qemu) cannot connect.
    let (ok, _, err) = outputs(hv().arg("create").arg(write("seed-domain.xml")));
    assert!(!ok, "the guest started on a root 0755 socket");
    assert!(
        err.contains("Permission denied") || err.contains("ermission"),
        "{err}"
    );

    // Group libvirt-qemu (as libvirtd's namespace knows it), mode 0660.
    let gid = lv.group_id("libvirt-qemu");
    let sock = h.nbd_socket();
    std::os::unix::fs::chown(&sock, None, Some(gid)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
    let t0 = Instant::now();
    let out = run(hv().arg("create").arg(write("seed-domain.xml")));
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
