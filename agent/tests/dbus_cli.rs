//! The D-Bus API and the `hlfs` CLI against a real hlfsd: busctl on the peer-to-peer socket
//! and through a dbus-daemon started here, named errors, PropertiesChanged, permission checks
//! for an unprivileged caller, the introspection XML kept in the repo, a CLI round trip of
//! a qcow2 image made by qemu-img (import, export, qemu-img compare), snapshot export, and
//! debounced PropertiesChanged after writes of NBD clients.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const XML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus/org.hlfs.Hlfs1.xml");

/// The next PropertiesChanged signal of object `path` on `stream`: (interface, changed
/// properties).
async fn next_properties_changed(
    stream: &mut zbus::MessageStream,
    path: &str,
) -> (
    String,
    std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
) {
    use std::future::poll_fn;
    use std::pin::Pin;
    loop {
        let m = poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *stream), cx))
            .await
            .unwrap()
            .unwrap();
        let h = m.header();
        if h.member().map(|m| m.as_str()) == Some("PropertiesChanged")
            && h.path().map(|p| p.as_str()) == Some(path)
        {
            let (iface, props, _): (String, _, Vec<String>) = m.body().deserialize().unwrap();
            return (iface, props);
        }
    }
}

fn busctl(addr: &str, args: &[&str]) -> Output {
    let mut a = vec![format!("--address={addr}")];
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    try_run("busctl", &a)
}

/// `busctl call org.hlfs.Hlfs1 PATH IFACE METHOD [SIGNATURE ARGS...]` (`rest` starts with the
/// method) on the daemon at `addr`.
fn bus_call(addr: &str, path: &str, iface: &str, rest: &[&str]) -> Output {
    let mut a = vec!["call", "org.hlfs.Hlfs1", path, iface];
    a.extend_from_slice(rest);
    busctl(addr, &a)
}

/// `busctl get-property org.hlfs.Hlfs1 PATH IFACE PROPERTY...` on the daemon at `addr`.
fn bus_get(addr: &str, path: &str, iface: &str, properties: &[&str]) -> Output {
    let mut a = vec!["get-property", "org.hlfs.Hlfs1", path, iface];
    a.extend_from_slice(properties);
    busctl(addr, &a)
}

/// A peer-to-peer D-Bus connection to the daemon's own socket (no bus daemon).
async fn p2p(d: &Daemon) -> zbus::Connection {
    zbus::connection::Builder::unix_stream(
        tokio::net::UnixStream::connect(d.dbus_socket())
            .await
            .unwrap(),
    )
    .p2p()
    .build()
    .await
    .unwrap()
}

#[test]
fn busctl_on_the_p2p_socket_introspects_calls_and_gets_named_errors() {
    let d = Daemon::start("dbus-p2p", &["--create-volume", "default/vm1:8M"]);
    let a = d.dbus_address();
    let tree = ok(&busctl(&a, &["tree", "org.hlfs.Hlfs1"]));
    assert!(tree.contains("/org/hlfs/Hlfs1/pool/default/vm1"), "{tree}");
    let intro = ok(&busctl(
        &a,
        &[
            "introspect",
            "org.hlfs.Hlfs1",
            "/org/hlfs/Hlfs1/pool/default/vm1",
        ],
    ));
    for m in [
        ".Resize",
        ".CreateSnapshot",
        ".Export",
        ".Size",
        ".LiveRatio",
    ] {
        assert!(intro.contains(m), "{m} missing:\n{intro}");
    }
    let size = ok(&bus_get(
        &a,
        "/org/hlfs/Hlfs1/pool/default/vm1",
        "org.hlfs.Volume1",
        &["Size"],
    ));
    assert_eq!(size.trim(), "t 8388608");
    // Where NBD is served: what the libvirt plugin puts into domain XML.
    let sock = ok(&busctl(
        &a,
        &[
            "get-property",
            "org.hlfs.Hlfs1",
            "/org/hlfs/Hlfs1",
            "org.hlfs.Manager1",
            "NbdSocket",
        ],
    ));
    assert_eq!(sock.trim(), format!("s \"{}\"", d.socket.display()));

    let pool_dir = d.dir.path().join("p2");
    let uri = format!("local://{}", pool_dir.display());
    let r = ok(&bus_call(
        &a,
        "/org/hlfs/Hlfs1",
        "org.hlfs.Manager1",
        &["CreatePool", "ss", "p2", &uri],
    ));
    assert_eq!(r.trim(), "ob \"/org/hlfs/Hlfs1/pool/p2\" true");
    assert!(pool_dir.is_dir());
    let r = ok(&bus_call(
        &a,
        "/org/hlfs/Hlfs1/pool/p2",
        "org.hlfs.Pool1",
        &[
            "CreateVolume",
            "sta{sv}",
            "disk-1",
            "1048576",
            "2",
            "compression",
            "b",
            "false",
            "block_size",
            "u",
            "512",
        ],
    ));
    assert_eq!(r.trim(), "o \"/org/hlfs/Hlfs1/pool/p2/disk_2d1\"");
    let p = "/org/hlfs/Hlfs1/pool/p2/disk_2d1";
    let bs = ok(&bus_get(
        &a,
        p,
        "org.hlfs.Volume1",
        &["BlockSize", "Compression"],
    ));
    assert_eq!(
        bs.split_whitespace().collect::<Vec<_>>(),
        ["u", "512", "b", "false"]
    );
    let r = ok(&bus_call(
        &a,
        p,
        "org.hlfs.Volume1",
        &["Resize", "t", "2097152"],
    ));
    assert_eq!(r.trim(), "b true");
    let r = ok(&bus_call(
        &a,
        p,
        "org.hlfs.Volume1",
        &["Resize", "t", "2097152"],
    ));
    assert_eq!(r.trim(), "b false", "an unchanged size reports no change");
    let size = ok(&bus_get(&a, p, "org.hlfs.Volume1", &["Size"]));
    assert_eq!(size.trim(), "t 2097152");
    ok(&bus_call(
        &a,
        p,
        "org.hlfs.Volume1",
        &["CreateSnapshot", "s", "before"],
    ));
    let snaps = ok(&bus_call(&a, p, "org.hlfs.Volume1", &["ListSnapshots"]));
    assert!(
        snaps.contains("\"before\" \"/org/hlfs/Hlfs1/pool/p2/disk_2d1/before\""),
        "{snaps}"
    );
    let seq = ok(&bus_get(
        &a,
        "/org/hlfs/Hlfs1/pool/p2/disk_2d1/before",
        "org.hlfs.Snapshot1",
        &["Sequence"],
    ));
    assert!(seq.starts_with("t "), "{seq}");
    // GetManagedObjects lists pools, volumes and snapshots with their properties.
    let objs = ok(&bus_call(
        &a,
        "/org/hlfs/Hlfs1",
        "org.freedesktop.DBus.ObjectManager",
        &["GetManagedObjects", "--json=short"],
    ));
    for needle in [
        "/org/hlfs/Hlfs1/pool/p2/disk_2d1/before",
        "org.hlfs.Snapshot1",
        "\"ExportName\"",
        "p2/disk-1",
    ] {
        assert!(
            objs.contains(needle),
            "{needle} missing from GetManagedObjects:\n{objs}"
        );
    }
    // Errors carry their message through busctl.
    let e = err(&bus_call(
        &a,
        "/org/hlfs/Hlfs1/pool/p2",
        "org.hlfs.Pool1",
        &["DeleteVolume", "s", "nope"],
    ));
    assert!(e.contains("not found"), "{e}");
    // Deleting a pool with volumes is refused; once empty it goes.
    let e = err(&bus_call(
        &a,
        "/org/hlfs/Hlfs1",
        "org.hlfs.Manager1",
        &["DeletePool", "s", "p2"],
    ));
    assert!(e.contains("has 1 volume"), "{e}");
    ok(&bus_call(
        &a,
        "/org/hlfs/Hlfs1/pool/p2",
        "org.hlfs.Pool1",
        &["DeleteVolume", "s", "disk-1"],
    ));
    ok(&bus_call(
        &a,
        "/org/hlfs/Hlfs1",
        "org.hlfs.Manager1",
        &["DeletePool", "s", "p2"],
    ));
    assert!(!pool_dir.exists());
    let tree = ok(&busctl(&a, &["tree", "org.hlfs.Hlfs1"]));
    assert!(!tree.contains("p2"), "{tree}");
}

#[test]
fn named_errors_and_properties_changed_over_zbus() {
    use hlfs_client::proxy::{Manager1Proxy, Pool1Proxy, Volume1Proxy};
    use hlfs_client::HlfsError;
    let d = Daemon::start("dbus-errors", &["--create-volume", "default/vm1:8M"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = p2p(&d).await;
        fn name<T: std::fmt::Debug>(r: Result<T, HlfsError>) -> String {
            match r {
                Err(e) => e.error_name(),
                other => panic!("expected a D-Bus error, got {other:?}"),
            }
        }
        let vol = "/org/hlfs/Hlfs1/pool/default/vm1";
        let pool = "/org/hlfs/Hlfs1/pool/default";
        let m = Manager1Proxy::new(&conn).await.unwrap();
        let p = Pool1Proxy::builder(&conn)
            .path(pool)
            .unwrap()
            .build()
            .await
            .unwrap();
        let v = Volume1Proxy::builder(&conn)
            .path(vol)
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        let no_opts = || std::collections::HashMap::<&str, zbus::zvariant::Value>::new();
        assert_eq!(
            name(p.create_volume("vm1", 1 << 20, no_opts()).await),
            "org.hlfs.Error.Exists"
        );
        assert_eq!(
            name(p.create_volume("../x", 1 << 20, no_opts()).await),
            "org.hlfs.Error.Invalid"
        );
        assert_eq!(
            name(p.create_volume("z", 0, no_opts()).await),
            "org.hlfs.Error.Invalid"
        );
        assert_eq!(
            name(v.clone("s", "default", "c1").await),
            "org.hlfs.Error.NotFound"
        );
        // Nothing listens on port 1: the pool is unavailable (a kind clients can retry), at once.
        assert_eq!(
            name(m.create_pool("h", "hdfs://127.0.0.1:1/p").await),
            "org.hlfs.Error.Unavailable"
        );
        assert_eq!(
            name(m.create_pool("h", "hdfs://127.0.0.1:9000").await),
            "org.hlfs.Error.Invalid"
        );
        assert_eq!(name(v.rollback("nosuch").await), "org.hlfs.Error.NotFound");
        assert_eq!(
            name(v.export("relative.img", "raw").await),
            "org.hlfs.Error.Invalid"
        );
        assert_eq!(
            name(p.import_volume("v2", "/nonexistent.qcow2", "").await),
            "org.hlfs.Error.NotFound"
        );

        // A second client watches PropertiesChanged while the first resizes.
        let watcher = p2p(&d).await;
        // Hello (as bus clients send) makes the connection ready for signals at once.
        let hello = watcher
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "Hello",
                &(),
            )
            .await
            .unwrap();
        assert_eq!(hello.body().deserialize::<String>().unwrap(), ":1.1");
        // Hello runs inline: once a later call is answered, the connection is ready.
        watcher
            .call_method(
                Some("org.hlfs.Hlfs1"),
                "/org/hlfs/Hlfs1",
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &(),
            )
            .await
            .unwrap();
        let mut stream = zbus::MessageStream::from(&watcher);
        let changed = v.resize(16 << 20).await.unwrap();
        assert!(changed);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let (iface, props) = next_properties_changed(&mut stream, vol).await;
                if let Some(v) = props.get("Size") {
                    return (iface, u64::try_from(v).unwrap());
                }
            }
        })
        .await
        .expect("no PropertiesChanged for Size");
        assert_eq!(got, ("org.hlfs.Volume1".to_string(), 16 << 20));
    });
}

#[test]
fn unprivileged_caller_may_read_but_not_mutate() {
    let d = Daemon::start("dbus-perm", &["--create-volume", "default/vm1:8M"]);
    // The socket lets everyone connect; the daemon decides per call.
    let list = hlfs(&d, true, &["volume", "list", "--json"]);
    let v = json(&list);
    assert_eq!(v[0]["name"], "vm1");
    assert_eq!(v[0]["size"], 8 << 20);
    let info = json(&hlfs(&d, true, &["volume", "info", "vm1", "--json"]));
    assert_eq!(info["export"], "default/vm1");
    let (phys, recl) = (info["physical"].as_u64(), info["reclaimable"].as_u64());
    assert!(
        recl.zip(phys).is_some_and(|(r, p)| r <= p),
        "reclaimable must be a count of log bytes: {info}"
    );
    for args in [
        &["volume", "create", "evil", "1M"][..],
        &["volume", "resize", "vm1", "16M"],
        &["volume", "delete", "vm1"],
        &["snapshot", "create", "vm1%s"],
        &["pool", "create", "p", "local:///tmp/hlfs-evil-pool"],
    ] {
        let e = err(&hlfs(&d, true, args));
        assert!(
            e.contains("org.hlfs.Error.PermissionDenied") && e.contains("uid 65534"),
            "{args:?}: {e}"
        );
    }
    // Nothing changed.
    let v = json(&hlfs(&d, false, &["volume", "list", "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["size"], 8 << 20);
    assert!(!Path::new("/tmp/hlfs-evil-pool").exists());
    // busctl as nobody: reads work, calls are refused.
    let a = d.dbus_address();
    let nobody_busctl = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
            .arg(format!("--address={a}"))
            .args(args);
        c.output().unwrap()
    };
    let size = ok(&nobody_busctl(&[
        "get-property",
        "org.hlfs.Hlfs1",
        "/org/hlfs/Hlfs1/pool/default/vm1",
        "org.hlfs.Volume1",
        "Size",
    ]));
    assert_eq!(size.trim(), "t 8388608");
    let e = err(&nobody_busctl(&[
        "call",
        "org.hlfs.Hlfs1",
        "/org/hlfs/Hlfs1/pool/default/vm1",
        "org.hlfs.Volume1",
        "Resize",
        "t",
        "1024",
    ]));
    assert!(e.contains("permission denied"), "{e}");
    // Root may.
    let r = json(&hlfs(
        &d,
        false,
        &["volume", "resize", "vm1", "16M", "--json"],
    ));
    assert_eq!(r["changed"], true);
}

/// A dbus-daemon for the test, open to every user (the production policy file is checked
/// separately), removed on drop.
struct Bus {
    pid: u32,
    address: String,
    _dir: TempDir,
}

impl Bus {
    fn start() -> Bus {
        require_tool("dbus-daemon");
        let dir = TempDir::new("bus");
        let sock = dir.path().join("bus.sock");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let out = run(
            "dbus-daemon",
            &[
                &format!("--config-file={}", conf.display()),
                "--fork",
                "--print-address=1",
                "--print-pid=1",
            ],
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let address = lines.next().unwrap().trim().to_string();
        let pid: u32 = lines.next().unwrap().trim().parse().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        Bus {
            pid,
            address,
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

#[test]
fn session_bus_serves_the_api_and_checks_callers_through_the_bus() {
    let bus = Bus::start();
    let d = Daemon::start_with_env(
        "dbus-bus",
        &["--create-volume", "default/vm1:8M", "--session-bus"],
        &[("DBUS_SESSION_BUS_ADDRESS", &bus.address)],
    );
    assert!(d.stderr().contains("on the bus"), "{}", d.stderr());
    let a = &bus.address;
    let names = ok(&busctl(a, &["list", "--no-pager"]));
    assert!(names.contains("org.hlfs.Hlfs1"), "{names}");
    let intro = ok(&busctl(
        a,
        &["introspect", "org.hlfs.Hlfs1", "/org/hlfs/Hlfs1"],
    ));
    assert!(
        intro.contains("org.hlfs.Manager1") && intro.contains("org.freedesktop.DBus.ObjectManager"),
        "{intro}"
    );
    let objs = ok(&bus_call(
        a,
        "/org/hlfs/Hlfs1",
        "org.freedesktop.DBus.ObjectManager",
        &["GetManagedObjects", "--json=short"],
    ));
    assert!(objs.contains("/org/hlfs/Hlfs1/pool/default/vm1"), "{objs}");
    // Root through the bus may mutate.
    let r = ok(&bus_call(
        a,
        "/org/hlfs/Hlfs1/pool/default",
        "org.hlfs.Pool1",
        &["CreateVolume", "sta{sv}", "vm2", "4194304", "0"],
    ));
    assert_eq!(r.trim(), "o \"/org/hlfs/Hlfs1/pool/default/vm2\"");
    // The CLI over the bus, as root and as nobody (credentials from the bus daemon).
    let cli = |nobody: bool, args: &[&str]| {
        let exe = common::hlfs_exe();
        let mut c = if nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", exe]);
            c
        } else {
            Command::new(exe)
        };
        c.args(["--bus", "session"])
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", a)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let v = json(&cli(true, &["volume", "list", "--json"]));
    let names = strings(&v, "name");
    assert_eq!(names, ["vm1", "vm2"]);
    let e = err(&cli(true, &["volume", "delete", "vm2"]));
    assert!(e.contains("org.hlfs.Error.PermissionDenied"), "{e}");
    let r = json(&cli(false, &["volume", "delete", "vm2", "--json"]));
    assert_eq!(r["deleted"], true);
    let v = json(&cli(false, &["volume", "list", "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 1);
}

/// `<interface name="org.hlfs.…">…</interface>` blocks, whitespace-normalised, by name.
fn hlfs_interfaces(xml: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<interface name=\"org.hlfs.") {
        let block = &rest[i..];
        let end =
            block.find("</interface>").expect("unterminated interface") + "</interface>".len();
        let b = &block[..end];
        // Comments (doc text) are not part of the API.
        let mut clean = String::new();
        let mut s = b;
        while let Some(c) = s.find("<!--") {
            clean.push_str(&s[..c]);
            let e = s[c..].find("-->").expect("unterminated comment") + c + 3;
            s = &s[e..];
        }
        clean.push_str(s);
        let name = clean["<interface name=\"".len()..]
            .split('"')
            .next()
            .unwrap()
            .to_string();
        out.insert(name, clean.split_whitespace().collect::<Vec<_>>().join(" "));
        rest = &block[end..];
    }
    out
}

#[test]
fn introspection_matches_the_xml_in_the_repo() {
    let d = Daemon::start("dbus-xml", &["--create-volume", "default/vm1:1M"]);
    let a = d.dbus_address();
    ok(&bus_call(
        &a,
        "/org/hlfs/Hlfs1/pool/default/vm1",
        "org.hlfs.Volume1",
        &["CreateSnapshot", "s", "s1"],
    ));
    let dest = d.dir.path().join("out.raw");
    let job = ok(&bus_call(
        &a,
        "/org/hlfs/Hlfs1/pool/default/vm1",
        "org.hlfs.Volume1",
        &["Export", "ss", dest.to_str().unwrap(), "raw"],
    ));
    let job = job
        .trim()
        .trim_start_matches("o ")
        .trim_matches('"')
        .to_string();
    let mut live = String::new();
    for p in [
        "/org/hlfs/Hlfs1",
        "/org/hlfs/Hlfs1/pool/default",
        "/org/hlfs/Hlfs1/pool/default/vm1",
        "/org/hlfs/Hlfs1/pool/default/vm1/s1",
        &job,
    ] {
        let o = ok(&bus_call(
            &a,
            p,
            "org.freedesktop.DBus.Introspectable",
            &["Introspect", "--json=short"],
        ));
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        live.push_str(v["data"][0].as_str().unwrap());
    }
    let live_ifaces = hlfs_interfaces(&live);
    assert_eq!(
        live_ifaces.keys().collect::<Vec<_>>(),
        [
            "org.hlfs.Job1",
            "org.hlfs.Manager1",
            "org.hlfs.Pool1",
            "org.hlfs.Snapshot1",
            "org.hlfs.Volume1"
        ]
    );
    if std::env::var_os("HLFS_UPDATE_XML").is_some() {
        let mut x = String::from("<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- The D-Bus API of hlfsd (service org.hlfs.Hlfs1), as introspected. See docs/dbus.md.\n     Regenerate: run the dbus_cli test introspection_matches_the_xml_in_the_repo (hlfs-agent)\n     with HLFS_UPDATE_XML=1 set. -->\n<node>\n");
        let mut rest = live.as_str();
        let mut seen = std::collections::BTreeSet::new();
        while let Some(i) = rest.find("  <interface name=\"org.hlfs.") {
            let block = &rest[i..];
            let end = block.find("</interface>").unwrap() + "</interface>".len();
            let name = block["  <interface name=\"".len()..]
                .split('"')
                .next()
                .unwrap()
                .to_string();
            if seen.insert(name) {
                x.push_str(&block[..end]);
                x.push('\n');
            }
            rest = &block[end..];
        }
        x.push_str("</node>\n");
        std::fs::write(XML, x).unwrap();
    }
    // Well-formed XML: a comment must not hold "--" (xmllint reads the file as any tool would).
    let lint = std::process::Command::new("xmllint")
        .args(["--noout", XML])
        .output()
        .expect("run xmllint (libxml2-utils)");
    assert!(
        lint.status.success(),
        "{XML} is not well-formed: {}",
        String::from_utf8_lossy(&lint.stderr)
    );
    let repo = std::fs::read_to_string(XML).expect("read the repo's introspection XML");
    let repo_ifaces = hlfs_interfaces(&repo);
    for (name, live_xml) in &live_ifaces {
        assert_eq!(
            repo_ifaces.get(name),
            Some(live_xml),
            "{name} differs from {XML}; if the change is intended, regenerate it with HLFS_UPDATE_XML=1"
        );
    }
    assert_eq!(
        repo_ifaces.len(),
        live_ifaces.len(),
        "the repo XML has interfaces the service lacks"
    );
}

#[test]
fn cli_round_trips_a_qcow2_image_and_manages_volumes_and_snapshots() {
    let d = Daemon::start("cli", &[]);
    let tmp = d.dir.path();
    // Pool on a URI, volume by local:/// URI.
    let pool_dir = tmp.join("pool-a");
    let r = json(&hlfs(
        &d,
        false,
        &[
            "pool",
            "create",
            "a",
            &format!("local://{}", pool_dir.display()),
            "--json",
        ],
    ));
    assert_eq!(r["changed"], true);
    let r = json(&hlfs(
        &d,
        false,
        &[
            "volume",
            "create",
            &format!("local://{}/v1", pool_dir.display()),
            "64M",
            "--json",
        ],
    ));
    assert_eq!(r["volume"], "a/v1");
    let pools = json(&hlfs(&d, false, &["pool", "list", "--json"]));
    let names = strings(&pools, "name");
    assert_eq!(names, ["a", "default"]);
    let human = ok(&hlfs(&d, false, &["pool", "info", "a"]));
    assert!(human.contains("v1"), "{human}");

    // An image made by qemu-img with data and holes.
    let src = tmp.join("src.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "20M"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xa5 0 1M",
            "-c",
            "write -P 0x3c 7M 2M",
            "-c",
            "write -P 0x11 19M 4k",
            src.to_str().unwrap(),
        ],
    );
    let r = json(&hlfs(
        &d,
        false,
        &["import", src.to_str().unwrap(), "a/imported", "--json"],
    ));
    assert_eq!(r["state"], "done");
    let info = json(&hlfs(
        &d,
        false,
        &["volume", "info", "a/imported", "--json"],
    ));
    assert_eq!(info["size"], 20 << 20);
    let alloc = info["allocated"].as_u64().unwrap();
    assert!(
        ((3 << 20)..(4 << 20)).contains(&alloc),
        "allocated {alloc}: holes must stay holes"
    );
    // The data is in the volume (read over NBD by qemu-io).
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x3c 7M 2M",
            "-c",
            "read -P 0 2M 1M",
            &d.uri("a/imported"),
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("fail"));
    // Export to qcow2 and raw; both compare equal to the source.
    for (fmt, name) in [("qcow2", "out.qcow2"), ("raw", "out.raw")] {
        let dest = tmp.join(name);
        let r = json(&hlfs(
            &d,
            false,
            &[
                "export",
                "a/imported",
                dest.to_str().unwrap(),
                "-O",
                fmt,
                "--json",
            ],
        ));
        assert_eq!(r["state"], "done");
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                fmt,
                src.to_str().unwrap(),
                dest.to_str().unwrap(),
            ],
        );
    }
    // Exporting onto an existing file is refused.
    let e = err(&hlfs(
        &d,
        false,
        &[
            "export",
            "a/imported",
            tmp.join("out.raw").to_str().unwrap(),
        ],
    ));
    assert!(e.contains("org.hlfs.Error.Exists"), "{e}");
    // A failed import leaves no volume behind.
    let bad = tmp.join("garbage.qcow2");
    std::fs::write(&bad, b"QFI\xfbnot really a qcow2 image").unwrap();
    let e = err(&hlfs(
        &d,
        false,
        &["import", bad.to_str().unwrap(), "a/bad", "-f", "qcow2"],
    ));
    assert!(e.contains("qemu-img"), "{e}");
    let vols = json(&hlfs(&d, false, &["volume", "list", "a", "--json"]));
    assert!(
        vols.as_array().unwrap().iter().all(|v| v["name"] != "bad"),
        "{vols}"
    );

    // Snapshots: tree, rollback restores data.
    let uri = d.uri("a/v1");
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x01 0 64k", &uri]);
    ok(&hlfs(&d, false, &["snapshot", "create", "a/v1%one"]));
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x02 0 64k", &uri]);
    ok(&hlfs(&d, false, &["snapshot", "create", "a/v1@two"]));
    ok(&hlfs(&d, false, &["snapshot", "rollback", "a/v1%one"]));
    let out = run("qemu-io", &["-f", "raw", "-c", "read -P 0x01 0 64k", &uri]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "rollback did not restore the data"
    );
    ok(&hlfs(
        &d,
        false,
        &["snapshot", "create", "a/v1%three", "--frozen"],
    ));
    // A snapshot is served read-only over NBD as POOL/VOLUME@SNAPSHOT.
    let out = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x01 0 64k",
            &d.uri("a/v1@one"),
        ],
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "snapshot export reads wrong data"
    );
    let w = try_run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x09 0 4k", &d.uri("a/v1@two")],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(
        !w.status.success()
            || text.contains("failed")
            || text.contains("read-only")
            || text.contains("Operation not permitted"),
        "write to a snapshot export accepted: {text}"
    );
    let out = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x02 0 64k",
            &d.uri("a/v1@two"),
        ],
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "snapshot two changed"
    );
    let tree = ok(&hlfs(&d, false, &["snapshot", "list", "a/v1"]));
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 4, "{tree}");
    assert_eq!(lines[0], "a/v1");
    assert!(lines[1].starts_with("└─one (seq "), "{tree}");
    assert!(lines[2].starts_with("  ├─two (seq "), "{tree}");
    assert!(lines[3].starts_with("  └─three (seq "), "{tree}");
    let snaps = json(&hlfs(&d, false, &["snapshot", "list", "a/v1", "--json"]));
    let parents: Vec<(&str, &str)> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["parent"].as_str().unwrap()))
        .collect();
    assert_eq!(parents, [("one", ""), ("two", "one"), ("three", "one")]);
    // What deleting each would free: only two's 64 KiB of 0x02 is nobody else's (one's data
    // is the head's and three's again after the rollback).
    let excl: Vec<(&str, u64)> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["exclusive"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(excl, [("one", 0), ("two", 65536), ("three", 0)], "{snaps}");
    let consistency = strings(&snaps, "consistency");
    assert_eq!(consistency, ["crash", "crash", "frozen"], "{snaps}");
    assert!(lines[2].contains("64.0 KiB exclusive"), "{tree}");
    // The newest snapshot at or before a time; none before the first.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let b = json(&hlfs(
        &d,
        false,
        &["snapshot", "before", "a/v1", &now, "--json"],
    ));
    assert_eq!(b["snapshot"], "a/v1%three", "{b}");
    let e = err(&hlfs(
        &d,
        false,
        &["snapshot", "before", "a/v1", "1970-01-02"],
    ));
    assert!(e.contains("org.hlfs.Error.NotFound"), "{e}");
    ok(&hlfs(&d, false, &["snapshot", "delete", "a/v1%two"]));
    let snaps = json(&hlfs(&d, false, &["snapshot", "list", "a/v1", "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 2);

    // Clones: instant, read the snapshot, protect it until flattened; flatten is a job.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x07 64k 64k", &uri],
    );
    ok(&hlfs(&d, false, &["snapshot", "create", "a/v1%gold"]));
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x08 64k 64k", &uri],
    );
    let r = json(&hlfs(&d, false, &["clone", "a/v1%gold", "a/c1", "--json"]));
    assert_eq!(r["volume"], "a/c1");
    let info = json(&hlfs(&d, false, &["volume", "info", "a/c1", "--json"]));
    assert!(
        info["base"].as_str().unwrap().ends_with("/pool-a/v1%gold"),
        "{info}"
    );
    let curi = d.uri("a/c1");
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x01 0 64k",
            "-c",
            "read -P 0x07 64k 64k",
            &curi,
        ],
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "clone does not read its base snapshot"
    );
    let e = err(&hlfs(&d, false, &["snapshot", "delete", "a/v1%gold"]));
    assert!(
        e.contains("org.hlfs.Error.Busy") && e.contains("protected"),
        "{e}"
    );
    let r = json(&hlfs(&d, false, &["flatten", "a/c1", "--json"]));
    assert_eq!(r["state"], "done");
    let info = json(&hlfs(&d, false, &["volume", "info", "a/c1", "--json"]));
    assert_eq!(info["base"], "");
    let out = run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x07 64k 64k", &curi],
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "flatten lost data"
    );
    ok(&hlfs(&d, false, &["snapshot", "delete", "a/v1%gold"]));
    let r = json(&hlfs(&d, false, &["volume", "clean", "a/v1", "--json"]));
    assert_eq!(r["state"], "done");
    ok(&hlfs(&d, false, &["volume", "delete", "a/c1"]));

    // Resize, delete; clear errors.
    let r = json(&hlfs(
        &d,
        false,
        &["volume", "resize", "a/v1", "128M", "--json"],
    ));
    assert_eq!(r["changed"], true);
    let e = err(&hlfs(&d, false, &["volume", "info", "a/nothere"]));
    assert!(e.contains("not found"), "{e}");
    let e = err(&hlfs(&d, false, &["volume", "create", "a/x", "12Q"]));
    assert!(e.contains("invalid size"), "{e}");
    let e = err(&hlfs(&d, false, &["pool", "delete", "a"]));
    assert!(e.contains("org.hlfs.Error.Busy"), "{e}");
    for v in ["a/v1", "a/imported"] {
        ok(&hlfs(&d, false, &["volume", "delete", v]));
    }
    ok(&hlfs(&d, false, &["pool", "delete", "a"]));
    assert!(!pool_dir.exists());
    // Without a daemon: a clear error.
    let o = Command::new(common::hlfs_exe())
        .args(["--socket", "/nonexistent/dbus.sock", "pool", "list"])
        .output()
        .unwrap();
    let e = err(&o);
    assert!(
        e.contains("cannot reach hlfsd at /nonexistent/dbus.sock"),
        "{e}"
    );
    assert!(
        e.trim_end().ends_with("[org.hlfs.Error.Unavailable]"),
        "{e}"
    );
    // Under --json the error is one JSON object with the D-Bus name; exit status 1.
    let o = Command::new(common::hlfs_exe())
        .args([
            "--json",
            "--socket",
            "/nonexistent/dbus.sock",
            "pool",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(err(&o).trim()).unwrap();
    assert_eq!(v["error"]["name"], "org.hlfs.Error.Unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach hlfsd at /nonexistent/dbus.sock"),
        "{v}"
    );
}

/// Whether `qemu-img compare` finds the two images equal (exit 0) or different (exit 1).
fn images_equal(fmt_a: &str, a: &str, fmt_b: &str, b: &str) -> bool {
    let o = try_run(
        "qemu-img",
        &["compare", "-q", "-f", fmt_a, "-F", fmt_b, a, b],
    );
    match o.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare {a} {b} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// Waits (bounded) until job `job` is no longer running and returns its final state.
fn wait_job(addr: &str, job: &str) -> String {
    for _ in 0..300 {
        let st = ok(&bus_get(addr, job, "org.hlfs.Job1", &["State"]));
        let st = st
            .trim()
            .trim_start_matches("s ")
            .trim_matches('"')
            .to_string();
        if st != "running" {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("job {job} still running");
}

#[test]
fn snapshot_export_copies_the_snapshot_not_the_head() {
    let d = Daemon::start("snap-export", &["--create-volume", "default/vm1:8M"]);
    let tmp = d.dir.path();
    let a = d.dbus_address();
    let head = d.uri("default/vm1");
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "write -P 0x33 4M 64k",
            &head,
        ],
    );
    ok(&hlfs(&d, false, &["snapshot", "create", "vm1%old"]));
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x77 0 512k",
            "-c",
            "write -P 0x44 6M 64k",
            &head,
        ],
    );

    // CLI, raw, `snapshot export VOL%SNAP`; and qcow2 through `export VOL@SNAP`.
    let raw = tmp.join("old.raw");
    let r = json(&hlfs(
        &d,
        false,
        &[
            "snapshot",
            "export",
            "vm1%old",
            raw.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(
        r["what"],
        format!("export default/vm1%old -> {}", raw.display())
    );
    let qcow = tmp.join("old.qcow2");
    let r = json(&hlfs(
        &d,
        false,
        &[
            "export",
            "default/vm1@old",
            qcow.to_str().unwrap(),
            "-O",
            "qcow2",
            "--json",
        ],
    ));
    assert_eq!(r["state"], "done", "{r}");
    let info = run(
        "qemu-img",
        &["info", "--output=json", qcow.to_str().unwrap()],
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 8 << 20);
    // D-Bus, qcow2, Snapshot1.Export directly.
    let snap_obj = "/org/hlfs/Hlfs1/pool/default/vm1/old";
    let qcow_bus = tmp.join("old-bus.qcow2");
    let job = ok(&bus_call(
        &a,
        snap_obj,
        "org.hlfs.Snapshot1",
        &["Export", "ss", qcow_bus.to_str().unwrap(), "qcow2"],
    ));
    let job = job
        .trim()
        .trim_start_matches("o ")
        .trim_matches('"')
        .to_string();
    assert!(job.starts_with("/org/hlfs/Hlfs1/job/"), "{job}");
    assert_eq!(wait_job(&a, &job), "done");
    let desc = ok(&bus_get(
        &a,
        &job,
        "org.hlfs.Job1",
        &["Kind", "Description", "Volume"],
    ));
    assert!(desc.contains("\"export\""), "{desc}");
    assert!(desc.contains("export default/vm1%old to "), "{desc}");
    assert!(desc.contains("/org/hlfs/Hlfs1/pool/default/vm1"), "{desc}");

    // Every export holds the old pattern, equals the snapshot and differs from the head.
    let snap_uri = d.uri("default/vm1@old");
    for (fmt, f) in [("raw", &raw), ("qcow2", &qcow), ("qcow2", &qcow_bus)] {
        let f = f.to_str().unwrap();
        let out = run(
            "qemu-io",
            &[
                "-r",
                "-f",
                fmt,
                "-c",
                "read -P 0x5a 0 1M",
                "-c",
                "read -P 0x33 4M 64k",
                "-c",
                "read -P 0 6M 64k",
                f,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("fail"),
            "{f} lacks the snapshot's data:\n{text}"
        );
        assert!(
            images_equal(fmt, f, "raw", &snap_uri),
            "{f} != the snapshot"
        );
        assert!(!images_equal(fmt, f, "raw", &head), "{f} == the head");
    }
    // The volume export, by contrast, is the head.
    let head_raw = tmp.join("head.raw");
    json(&hlfs(
        &d,
        false,
        &["export", "vm1", head_raw.to_str().unwrap(), "--json"],
    ));
    assert!(images_equal(
        "raw",
        head_raw.to_str().unwrap(),
        "raw",
        &head
    ));
    assert!(!images_equal(
        "raw",
        head_raw.to_str().unwrap(),
        "raw",
        raw.to_str().unwrap()
    ));

    // Errors: relative and existing destinations, a bad format (D-Bus and CLI), a missing
    // snapshot, an unprivileged caller. None leaves a file or a job behind.
    let call = |dest: &str, fmt: &str| {
        bus_call(
            &a,
            snap_obj,
            "org.hlfs.Snapshot1",
            &["Export", "ss", dest, fmt],
        )
    };
    let e = err(&call("relative.raw", "raw"));
    assert!(e.contains("must be an absolute path"), "{e}");
    let e = err(&call(raw.to_str().unwrap(), "raw"));
    assert!(e.contains("already exists") || e.contains("exists"), "{e}");
    let e = err(&call(tmp.join("x.vmdk").to_str().unwrap(), "vmdk"));
    assert!(e.contains("expected raw or qcow2"), "{e}");
    let e = err(&hlfs(
        &d,
        false,
        &["snapshot", "export", "vm1%old", raw.to_str().unwrap()],
    ));
    assert!(e.contains("org.hlfs.Error.Exists"), "{e}");
    let e = err(&hlfs(
        &d,
        false,
        &["snapshot", "export", "vm1%old", "x.raw", "-O", "vmdk"],
    ));
    assert!(e.contains("org.hlfs.Error.Invalid"), "{e}");
    let missing = tmp.join("missing.raw");
    let e = err(&hlfs(
        &d,
        false,
        &[
            "snapshot",
            "export",
            "vm1%nosuch",
            missing.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("snapshot default/vm1%nosuch not found"), "{e}");
    let e = err(&hlfs(
        &d,
        false,
        &["snapshot", "export", "vm1", missing.to_str().unwrap()],
    ));
    assert!(e.contains("expected VOLUME%SNAPSHOT"), "{e}");
    let e = err(&hlfs(
        &d,
        true,
        &["snapshot", "export", "vm1%old", missing.to_str().unwrap()],
    ));
    assert!(e.contains("org.hlfs.Error.PermissionDenied"), "{e}");
    assert!(!missing.exists());
    assert!(!tmp.join("x.vmdk").exists());
}

#[test]
fn nbd_writes_emit_properties_changed_for_the_volume() {
    let d = Daemon::start("nbd-signals", &["--create-volume", "default/vm1:8M"]);
    let vol = "/org/hlfs/Hlfs1/pool/default/vm1";
    let head = d.uri("default/vm1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let watcher = p2p(&d).await;
        // Hello makes the connection ready for signals; the Ping's reply says it is.
        watcher
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "Hello",
                &(),
            )
            .await
            .unwrap();
        watcher
            .call_method(
                Some("org.hlfs.Hlfs1"),
                "/org/hlfs/Hlfs1",
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &(),
            )
            .await
            .unwrap();
        let mut stream = zbus::MessageStream::from(&watcher);
        // `Allocated` values of the volume's PropertiesChanged signals within `window`.
        async fn allocated_signals(
            stream: &mut zbus::MessageStream,
            vol: &str,
            window: std::time::Duration,
        ) -> Vec<u64> {
            let mut seen = Vec::new();
            let _ = tokio::time::timeout(window, async {
                loop {
                    let (iface, props) = next_properties_changed(stream, vol).await;
                    assert_eq!(iface, "org.hlfs.Volume1");
                    if let Some(v) = props.get("Allocated") {
                        seen.push(u64::try_from(v).unwrap());
                    }
                }
            })
            .await;
            seen
        }
        // Nothing written yet: no signal.
        let quiet =
            allocated_signals(&mut stream, vol, std::time::Duration::from_millis(1500)).await;
        assert!(quiet.is_empty(), "signals without writes: {quiet:?}");

        // One NBD client writes 1 MiB as 64 requests.
        let uri = head.clone();
        let w = tokio::task::spawn_blocking(move || {
            let mut args = vec!["-f".to_string(), "raw".into()];
            for i in 0..64 {
                args.extend(["-c".into(), format!("write -P 0x5a {}k 16k", i * 16)]);
            }
            args.push(uri);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run("qemu-io", &a);
        });
        w.await.unwrap();
        let seen = allocated_signals(&mut stream, vol, std::time::Duration::from_secs(4)).await;
        assert!(
            seen.last() == Some(&(1 << 20)),
            "no PropertiesChanged with Allocated = 1 MiB after NBD writes: {seen:?}"
        );
        // Debounced: one announcement per second at most, not one per request.
        assert!(seen.len() <= 4, "not debounced: {seen:?}");

        // A trim changes Allocated too.
        let uri = head.clone();
        tokio::task::spawn_blocking(move || {
            run("qemu-io", &["-f", "raw", "-c", "discard 0 512k", &uri]);
        })
        .await
        .unwrap();
        let seen = allocated_signals(&mut stream, vol, std::time::Duration::from_secs(4)).await;
        assert_eq!(seen.last(), Some(&(512 << 10)), "after a trim: {seen:?}");
    });
}

/// `hlfs completions` and `hlfs man` need no daemon; clap suggests a misspelt command.
#[test]
fn completions_man_page_and_suggestions() {
    let run = |args: &[&str]| {
        Command::new(common::hlfs_exe())
            .args(args)
            .env_remove("HLFS_SOCKET")
            .output()
            .unwrap()
    };
    for (shell, marker) in [
        ("bash", "_hlfs()"),
        ("zsh", "#compdef hlfs"),
        ("fish", "complete -c hlfs"),
    ] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(
            text.contains("snapshot") && text.contains("import"),
            "{shell}"
        );
    }
    let o = run(&["man"]);
    assert!(o.status.success());
    let man = String::from_utf8_lossy(&o.stdout);
    assert!(man.contains(".TH hlfs"), "{man}");
    assert!(man.contains("HLFS admin CLI"), "{man}");
    let o = run(&["completions", "powershell"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bash, zsh, fish"));
    let o = run(&["volum", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(e.contains("similar subcommand exists: 'volume'"), "{e}");
    let o = run(&["--bus", "sesion", "pool", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(e.contains("'session'"), "{e}");
}

/// `hlfs job list` shows a finished job; `hlfs job cancel` of it says it was not running, and
/// of an unknown job fails with NotFound.
#[test]
fn job_list_and_cancel() {
    let d = Daemon::start("job-cli", &["--create-volume", "default/vm1:1M"]);
    let none = json(&hlfs(&d, false, &["--json", "job", "list"]));
    assert_eq!(none, serde_json::json!([]));
    ok(&hlfs(&d, false, &["volume", "clean", "vm1"]));
    let jobs = json(&hlfs(&d, false, &["--json", "job", "list"]));
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["kind"], "clean");
    assert_eq!(jobs[0]["state"], "done");
    let id = jobs[0]["id"].as_u64().unwrap().to_string();
    let human = ok(&hlfs(&d, false, &["job", "list"]));
    assert!(
        human
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{id} "))
                && l.contains("clean")
                && l.contains("done")),
        "{human}"
    );
    let c = json(&hlfs(&d, false, &["--json", "job", "cancel", &id]));
    assert_eq!(c["cancelled"], false);
    let e = err(&hlfs(&d, false, &["job", "cancel", "999"]));
    assert!(
        e.contains("job 999 not found") && e.contains("org.hlfs.Error.NotFound"),
        "{e}"
    );
}

/// An export that fails (here: its destination's file system fills up) leaves no half-written
/// image behind, and the job is seen to end only once the file is gone.
#[test]
fn a_failed_export_leaves_no_file_behind() {
    let d = Daemon::start("export-fails", &["--create-volume", "default/vm1:8M"]);
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 6M",
            &d.uri("default/vm1"),
        ],
    );
    let small = d.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            small.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(small.clone());
    let dest = small.join("vm1.raw");
    let out = hlfs(
        &d,
        false,
        &["export", "default/vm1", dest.to_str().unwrap()],
    );
    assert!(!out.status.success(), "an export into 1 MiB succeeded");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains(dest.to_str().unwrap()), "{msg}");
    assert!(!dest.exists(), "the unfinished export is still there");
    assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0);
    // The same export where there is room works.
    let room = d.dir.path().join("vm1.raw");
    ok(&hlfs(
        &d,
        false,
        &["export", "default/vm1", room.to_str().unwrap()],
    ));
    assert_eq!(std::fs::metadata(&room).unwrap().len(), 8 << 20);
}
