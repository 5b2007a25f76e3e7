//! Test harness: a real hlfsd (private data and runtime directories), hlfs-virsh, stock tools
//! (virsh, xmllint, qemu-io, busctl), and libvirtd started by the project's own scripts
//! (scripts/libvirt/start-libvirtd.sh: no systemd needed). Missing tools fail the test.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command; its output whatever the status.
pub fn try_run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command, panicking with its output if it fails; stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = try_run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn tool(name: &str) -> Command {
    Command::new(require_tool(name))
}

#[allow(unused_imports)] // each test binary uses some of them
pub use hlfs_test_support::{require_tool, TempDir};

/// A binary of the workspace that this package does not build (hlfsd, hlfs): next to the test's
/// own target directory, built on demand (once: a stale one is used as it is).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/test-hash -> target/<profile>/NAME
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    if !p.is_file() {
        let package = if name == "hlfs" {
            "hlfs-cli"
        } else {
            "hlfs-agent"
        };
        // The tests' own profile: its dependencies are built already.
        let status = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .args(["build", "--profile", "test", "-p", package, "--bin", name])
            .current_dir(repo())
            .status()
            .expect("cargo build");
        assert!(status.success(), "cannot build {name}");
    }
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// A running hlfsd with its sockets in a private runtime directory.
pub struct Hlfsd {
    pub dir: TempDir,
    child: Option<Child>,
    /// Written to `DIR/hlfsd.toml` and given with `--config` when not empty.
    pub config: String,
    /// Where hlfsd mounts its FUSE view (`--fuse-mount`); None: `--no-fuse`.
    pub fuse_mount: Option<PathBuf>,
}

impl Hlfsd {
    /// hlfsd without a FUSE view.
    pub fn start(tag: &str) -> Hlfsd {
        Hlfsd::start_with(tag, "", None)
    }

    /// hlfsd with the configuration file `config` (if not empty) and its FUSE view mounted on
    /// `fuse_mount` (if given).
    pub fn start_with(tag: &str, config: &str, fuse_mount: Option<&Path>) -> Hlfsd {
        let mut h = Hlfsd {
            dir: TempDir::new(tag),
            child: None,
            config: config.to_string(),
            fuse_mount: fuse_mount.map(Path::to_path_buf),
        };
        h.spawn();
        h
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("hlfsd.log")).unwrap();
        let mut cmd = Command::new(workspace_bin("hlfsd"));
        if !self.config.is_empty() {
            let f = self.dir.path().join("hlfsd.toml");
            std::fs::write(&f, &self.config).unwrap();
            cmd.arg("--config").arg(f);
        }
        match &self.fuse_mount {
            Some(m) => cmd.arg("--fuse-mount").arg(m),
            None => cmd.arg("--no-fuse"),
        };
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--runtime-dir")
            .arg(self.dir.path().join("run"))
            // Not beside dbus.sock: hlfs-virsh must ask hlfsd (Manager1 NbdSocket), not guess.
            .arg("--nbd-socket")
            .arg(self.nbd_socket())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn hlfsd");
        self.child = Some(child);
        let t0 = Instant::now();
        while UnixStream::connect(self.dbus_socket()).is_err()
            || UnixStream::connect(self.nbd_socket()).is_err()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "hlfsd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hlfsd.log")).unwrap_or_default()
    }

    pub fn dbus_socket(&self) -> PathBuf {
        self.dir.path().join("run/dbus.sock")
    }

    pub fn nbd_socket(&self) -> PathBuf {
        self.dir.path().join("nbd/hlfs-nbd.sock")
    }

    /// `nbd+unix:///EXPORT?socket=...`
    pub fn nbd_uri(&self, export: &str) -> String {
        format!(
            "nbd+unix:///{export}?socket={}",
            self.nbd_socket().display()
        )
    }

    /// hlfs-virsh talking to this hlfsd (and to `LIBVIRT_DEFAULT_URI` as set by the caller).
    pub fn virsh(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hlfs-virsh"));
        c.env("HLFS_SOCKET", self.dbus_socket());
        c
    }

    /// busctl against hlfsd's p2p socket.
    pub fn busctl(&self, args: &[&str]) -> String {
        run(tool("busctl")
            .arg(format!(
                "--address=unix:path={}",
                self.dbus_socket().display()
            ))
            .args(args))
    }

    /// Takes snapshot `snap` of `pool/vol`.
    pub fn snapshot(&self, pool: &str, vol: &str, snap: &str) {
        let path = format!("/org/hlfs/Hlfs1/pool/{}/{}", esc(pool), esc(vol));
        self.busctl(&[
            "call",
            "org.hlfs.Hlfs1",
            &path,
            "org.hlfs.Volume1",
            "CreateSnapshot",
            "s",
            snap,
        ]);
    }
}

fn esc(n: &str) -> String {
    n.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect()
}

impl Drop for Hlfsd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gid of `group` on the host; panics (naming the setup script) if it does not exist.
pub fn host_group_id(group: &str) -> u32 {
    let (ok, out, _) = outputs(tool("getent").args(["group", group]));
    assert!(
        ok,
        "group {group} does not exist on this host (scripts/setup-test.sh creates it)"
    );
    out.split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gid in {out:?}"))
}

/// stdout and stderr of a command that may fail.
pub fn outputs(cmd: &mut Command) -> (bool, String, String) {
    let o = try_run(cmd);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Validates `xml` with xmllint against the RelaxNG schema `rng`; the error output if not.
pub fn relaxng(rng: &Path, xml: &str) -> Result<(), String> {
    let d = TempDir::new("rng");
    let f = d.path().join("doc.xml");
    std::fs::write(&f, xml).unwrap();
    let (ok, _, err) = outputs(
        tool("xmllint")
            .arg("--noout")
            .arg("--relaxng")
            .arg(rng)
            .arg(&f),
    );
    if ok {
        Ok(())
    } else {
        Err(err)
    }
}

pub fn schema(name: &str) -> PathBuf {
    repo().join("xml-schemas").join(name)
}

pub fn libvirt_schema(name: &str) -> PathBuf {
    Path::new("/usr/share/libvirt/schemas").join(name)
}

/// A test file of tests/data with `/tmp/testenv` replaced by `dir`.
pub fn data(name: &str, dir: &Path) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&p)
        .unwrap()
        .replace("/tmp/testenv", &dir.to_string_lossy())
}

/// The seeds' environment for a guest test: `dir` (the pool the seeds' XML names
/// `/tmp/testenv`), a guest built by scripts/libvirt/make-guest.sh in `guest`, and `files` for
/// what the test writes.
pub struct SeedEnv {
    pub env: TempDir,
    pub dir: PathBuf,
    pub guest: PathBuf,
    pub files: TempDir,
}

impl SeedEnv {
    pub fn new() -> SeedEnv {
        let env = TempDir::new("env");
        let dir = env.path().join("testenv");
        let guest = env.path().join("testenv-guest");
        run(Command::new("bash")
            .arg(repo().join("scripts/libvirt/make-guest.sh"))
            .arg(&guest));
        SeedEnv {
            env,
            dir,
            guest,
            files: TempDir::new("files"),
        }
    }

    /// Test file `name` of tests/data ([`data`], pointing at `dir`) written into `files`.
    pub fn write(&self, name: &str) -> PathBuf {
        let p = self.files.path().join(name);
        std::fs::write(&p, data(name, &self.dir)).unwrap();
        p
    }
}

/// libvirtd + virtlogd started by scripts/libvirt/start-libvirtd.sh in a private mount
/// namespace; stopped (by PID) on drop.
pub struct Libvirtd {
    pub sandbox: TempDir,
    pub uri: String,
    /// A directory whose later mounts on the host libvirtd sees (`LIBVIRT_SHARED_DIR`).
    pub shared: Option<PathBuf>,
    user: String,
}

impl Libvirtd {
    pub fn start() -> Libvirtd {
        Libvirtd::launch("root", false)
    }

    /// As [`Libvirtd::start`], with QEMU run as `user` (and its group of the same name).
    pub fn start_as(user: &str) -> Libvirtd {
        Libvirtd::launch(user, false)
    }

    /// As [`Libvirtd::start`], with [`Libvirtd::shared`]: a FUSE view mounted under it by a
    /// daemon on the host is visible to libvirtd and its guests.
    pub fn start_sharing() -> Libvirtd {
        Libvirtd::launch("root", true)
    }

    fn launch(user: &str, shared: bool) -> Libvirtd {
        require_tool("virsh");
        let sandbox = TempDir::new("libvirt");
        let uri = format!(
            "qemu:///system?socket={}/sock/libvirt-sock",
            sandbox.path().display()
        );
        let shared = shared.then(|| sandbox.path().join("shared"));
        let lv = Libvirtd {
            sandbox,
            uri,
            shared,
            user: user.to_string(),
        };
        lv.run_start();
        lv
    }

    fn run_start(&self) {
        let mut c = Command::new("bash");
        c.arg(repo().join("scripts/libvirt/start-libvirtd.sh"))
            .env("LIBVIRT_SANDBOX", self.sandbox.path())
            .env("QEMU_USER", &self.user)
            .env("QEMU_GROUP", &self.user);
        if let Some(d) = &self.shared {
            c.env("LIBVIRT_SHARED_DIR", d);
        }
        let out = run(&mut c);
        assert!(out.contains("LIBVIRT_DEFAULT_URI"), "{out}");
    }

    /// Stops libvirtd and starts it again on the same state (and the same shared mount).
    pub fn restart(&self) {
        let _ = try_run(
            Command::new("bash")
                .arg(repo().join("scripts/libvirt/stop-libvirtd.sh"))
                .env("LIBVIRT_SANDBOX", self.sandbox.path())
                .env("KEEP_SHARED", "1"),
        );
        self.run_start();
    }

    /// Stock virsh on this libvirtd.
    pub fn virsh(&self) -> Command {
        let mut c = tool("virsh");
        c.arg("-q").arg("-c").arg(&self.uri);
        c
    }

    /// The gid of `group` inside libvirtd's mount namespace (its /etc is an overlay).
    pub fn group_id(&self, group: &str) -> u32 {
        let pid = std::fs::read_to_string(self.sandbox.path().join("libvirtd.pid")).unwrap();
        let out =
            run(tool("nsenter").args(["-t", pid.trim(), "-m", "--", "getent", "group", group]));
        out.split(':')
            .nth(2)
            .and_then(|g| g.trim().parse().ok())
            .unwrap_or_else(|| panic!("no gid in {out:?}"))
    }

    pub fn stop(&self) {
        let _ = try_run(
            Command::new("bash")
                .arg(repo().join("scripts/libvirt/stop-libvirtd.sh"))
                .env("LIBVIRT_SANDBOX", self.sandbox.path()),
        );
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.stop();
    }
}
