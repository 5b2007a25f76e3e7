//! The socket rule for people: a non-root member of group `hlfs` manages the volumes of a root
//! daemon with no flags (its own `$XDG_RUNTIME_DIR/hlfs` has no daemon, so `hlfs` goes on to
//! `/run/hlfs/dbus.sock`); a user outside the group reads but changes nothing.
//!
//! The daemon runs as root with its sockets in `/run/hlfs`, as the system service does; the
//! test creates group `hlfs` and two users (idempotently) and runs the CLI as them with
//! `setpriv --init-groups`. It needs root (as CI runs it) and fails otherwise.

mod common;

use common::{err, hlfs_exe, json, ok, require_tool, Daemon};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const MEMBER: &str = "hlfstest-member";
const OUTSIDER: &str = "hlfstest-other";

fn id(flag: &str, user: &str) -> Option<u32> {
    let o = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn uid_of(user: &str) -> Option<u32> {
    id("-u", user)
}

/// Group `hlfs` and the two users, made if missing.
fn users() -> (u32, u32) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test creates users and runs hlfsd on /run/hlfs: run it as root (CI does)"
    );
    require_tool("groupadd");
    require_tool("useradd");
    let st = Command::new("groupadd")
        .args(["-f", "-r", "hlfs"])
        .status()
        .unwrap();
    assert!(st.success(), "groupadd hlfs");
    for (user, groups) in [(MEMBER, Some("hlfs")), (OUTSIDER, None)] {
        if uid_of(user).is_none() {
            let mut c = Command::new("useradd");
            c.args(["-M", "-N", "-s", "/usr/sbin/nologin"]);
            if let Some(g) = groups {
                c.args(["-G", g]);
            }
            let st = c.arg(user).status().unwrap();
            assert!(st.success(), "useradd {user}");
        }
    }
    // An existing member user must (still) be in the group.
    let st = Command::new("usermod")
        .args(["-a", "-G", "hlfs", MEMBER])
        .status()
        .unwrap();
    assert!(st.success());
    (uid_of(MEMBER).unwrap(), uid_of(OUTSIDER).unwrap())
}

/// Runs `hlfs ARGS` as `user` with no socket flag and no HLFS_SOCKET: the socket rule alone.
fn hlfs_as(user: &str, xdg: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(require_tool("setpriv"));
    c.args([
        &format!("--reuid={user}"),
        &format!("--regid={}", id("-g", user).expect("user's group")),
        "--init-groups",
        "--",
        hlfs_exe(),
    ])
    .args(args)
    .env_remove("HLFS_SOCKET")
    .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
    .stdin(Stdio::null());
    match xdg {
        Some(d) => c.env("XDG_RUNTIME_DIR", d),
        None => c.env_remove("XDG_RUNTIME_DIR"),
    };
    c.output().expect("run hlfs")
}

#[test]
fn a_member_of_hlfs_manages_the_system_daemon_with_no_flags_and_others_only_read() {
    let (member_uid, outsider_uid) = users();
    let run = Path::new("/run/hlfs");
    assert!(
        std::os::unix::net::UnixStream::connect(run.join("dbus.sock")).is_err(),
        "a system hlfsd already answers on /run/hlfs: this test needs /run/hlfs for itself"
    );
    let mut d = Daemon::start_in("socket-rule", run, &["--create-volume", "default/vm1:8M"]);
    // The member's own runtime dir holds no daemon (a real one, as pam_systemd makes it).
    let xdg = d.dir.path().join("user-runtime");
    std::fs::create_dir_all(&xdg).unwrap();
    std::os::unix::fs::chown(&xdg, Some(member_uid), None).unwrap();

    for x in [Some(xdg.as_path()), None] {
        ok(&hlfs_as(MEMBER, x, &["volume", "create", "m1", "16M"]));
        ok(&hlfs_as(MEMBER, x, &["snapshot", "create", "m1%s"]));
        let r = json(&hlfs_as(
            MEMBER,
            x,
            &["--json", "volume", "resize", "m1", "32M"],
        ));
        assert_eq!(r["changed"], true, "{r}");
        let v = json(&hlfs_as(MEMBER, x, &["--json", "volume", "info", "m1"]));
        assert_eq!(v["size"], 32 << 20);
        ok(&hlfs_as(MEMBER, x, &["snapshot", "delete", "m1%s"]));
        ok(&hlfs_as(MEMBER, x, &["volume", "delete", "m1"]));
    }

    // Outside the group: reads work, changes are refused by name, exit 1.
    let list = json(&hlfs_as(OUTSIDER, None, &["--json", "volume", "list"]));
    assert_eq!(list[0]["name"], "vm1", "{list}");
    ok(&hlfs_as(OUTSIDER, None, &["volume", "info", "vm1"]));
    ok(&hlfs_as(OUTSIDER, None, &["pool", "list"]));
    for args in [
        &["volume", "create", "x", "1M"][..],
        &["volume", "resize", "vm1", "16M"],
        &["volume", "delete", "vm1"],
        &["snapshot", "create", "vm1%s"],
    ] {
        let o = hlfs_as(OUTSIDER, None, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = err(&o);
        assert!(
            e.contains(&format!("uid {outsider_uid}"))
                && e.trim_end().ends_with("[org.hlfs.Error.PermissionDenied]"),
            "{args:?}: {e}"
        );
    }
    let v = json(&hlfs_as(MEMBER, None, &["--json", "volume", "list"]));
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["size"], 8 << 20, "{v}");
    // A clean exit removes the daemon's sockets from /run/hlfs.
    assert!(d.terminate().success());
    assert!(!run.join("dbus.sock").exists());
}
