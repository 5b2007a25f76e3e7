//! Test harness: starts a real `hlfsd` child with private data and runtime directories and
//! runs real NBD clients against it. A missing client tool fails the test with a clear message.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a tool and returns its output, panicking with its stderr if it fails.
pub fn run(tool: &str, args: &[&str]) -> Output {
    let out = try_run(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a tool and returns its output whatever its exit status.
pub fn try_run(tool: &str, args: &[&str]) -> Output {
    let exe = require_tool(tool);
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

#[allow(unused_imports)] // each test binary uses some of them
pub use hlfs_test_support::{err, ok, require_tool, TempDir};

/// A running hlfsd.
pub struct Daemon {
    pub dir: TempDir,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    /// Extra environment for the daemon (e.g. DBUS_SESSION_BUS_ADDRESS).
    pub env: Vec<(String, String)>,
    pub socket: PathBuf,
    /// Soft and hard RLIMIT_NOFILE of the daemon (None: inherited).
    pub nofile: Option<u64>,
    /// The runtime directory (sockets): `DIR/run`, or one given to [`Daemon::start_in`].
    pub run_dir: PathBuf,
    /// `(uid, gid)` the daemon runs as (None: the test's own user).
    pub run_as: Option<(u32, u32)>,
    starts: u32,
}

impl Daemon {
    /// Starts hlfsd with `extra` flags (e.g. `--create-volume default/vm1:64M`).
    pub fn start(tag: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(tag, extra, &[])
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_full(tag, extra, env, None)
    }

    /// As [`Daemon::start_with_env`], with the daemon's descriptor limit (soft and hard) set to
    /// `nofile` if given.
    pub fn start_full(
        tag: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Daemon {
        let dir = TempDir::new(tag);
        let run_dir = dir.path().join("run");
        Daemon::start_at(dir, run_dir, extra, env, nofile)
    }

    /// As [`Daemon::start`], with the sockets in `run_dir` (e.g. the system daemon's
    /// `/run/hlfs`, which clients find with no flags).
    pub fn start_in(tag: &str, run_dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_at(TempDir::new(tag), run_dir.to_path_buf(), extra, &[], None)
    }

    fn start_at(
        dir: TempDir,
        run_dir: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Daemon {
        let socket = run_dir.join("nbd.sock");
        let mut d = Daemon {
            dir,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            socket,
            nofile,
            run_dir,
            run_as: None,
            starts: 0,
        };
        d.spawn();
        d
    }

    /// As [`Daemon::start`], run as user `uid`/`gid` (no supplementary groups) in a
    /// directory that user owns, with `HOME` there: what an unprivileged user's hlfsd is.
    pub fn start_as(tag: &str, uid: u32, gid: u32, extra: &[&str]) -> Daemon {
        let dir = TempDir::new(tag);
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let run_dir = dir.path().join("run");
        let mut d = Daemon {
            env: vec![("HOME".into(), dir.path().display().to_string())],
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            socket: run_dir.join("nbd.sock"),
            nofile: None,
            run_dir,
            run_as: Some((uid, gid)),
            starts: 0,
        };
        d.spawn();
        d
    }

    /// The peer-to-peer D-Bus socket.
    pub fn dbus_socket(&self) -> PathBuf {
        self.run_dir.join("dbus.sock")
    }

    /// `unix:path=...` of the D-Bus socket, for busctl --address.
    pub fn dbus_address(&self) -> String {
        format!("unix:path={}", self.dbus_socket().display())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join(format!("stdout-{}.log", self.starts))
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join(format!("stderr-{}.log", self.starts))
    }

    /// Starts (again) with the same directories and flags; waits until the socket answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let stdout = std::fs::File::create(self.stdout_path()).unwrap();
        let stderr = std::fs::File::create(self.stderr_path()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hlfsd"));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            // std drops the supplementary groups too when a root parent sets the uid.
            cmd.uid(uid).gid(gid);
        }
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--runtime-dir")
            .arg(&self.run_dir)
            .args(&self.extra)
            // No FUSE view unless a test asks for one: a daemon killed by a test would leave
            // a dead mount in its temporary directory.
            .args((!self.extra.iter().any(|a| a == "--fuse-mount")).then_some("--no-fuse"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn hlfsd");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "hlfsd exited during start-up ({status}):\n{}",
                    self.stderr()
                );
            }
            if UnixStream::connect(&self.socket).is_ok() && self.stdout().contains("ready") {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "hlfsd did not start:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout_path()).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// `nbd+unix:///EXPORT?socket=...`
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// The bytes of export `export`, read over NBD by `qemu-img convert` (into a file of the
    /// daemon's directory, named after the export).
    pub fn read_over_nbd(&self, export: &str) -> Vec<u8> {
        let out = self
            .dir
            .path()
            .join(format!("{}.over-nbd.raw", export.replace('/', "_")));
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &self.uri(export),
                out.to_str().unwrap(),
            ],
        );
        std::fs::read(&out).unwrap()
    }

    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc_sigterm())
    }

    pub fn signal(&mut self, sig: i32) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let t0 = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                panic!("hlfsd did not exit after signal {sig}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn libc_sigterm() -> i32 {
    15
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let mut s = String::new();
            if let Ok(mut f) = std::fs::File::open(self.stderr_path()) {
                let _ = f.read_to_string(&mut s);
            }
            let tail: String = s
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- hlfsd stderr (tail) ---\n{tail}");
        }
    }
}

/// Deterministic pseudo-random bytes (the tests' seeded RNG), so data is not trivially
/// compressible.
pub fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    hlfs_test_support::Rng::new(seed).fill_random(&mut out);
    out
}

/// Parses `nbdinfo --map` text output into `(offset, length, is_hole)`.
pub fn nbd_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let out = run("nbdinfo", &["--map", uri]);
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 3, "unexpected nbdinfo --map line {l:?}");
            let flags: u32 = f[2].parse().unwrap();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), flags & 1 != 0)
        })
        .collect()
}

/// The string field `key` of every object of the JSON array `v` (panics where one is missing:
/// a test's failure).
pub fn strings<'a>(v: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap())
        .collect()
}

/// `hlfs --json` output, parsed.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).expect("hlfs --json output is JSON")
}

/// The `hlfs` CLI binary (package hlfs-cli), next to this test's own target directory:
/// `target/PROFILE/hlfs` (`cargo nextest run --workspace` and `cargo build` put it there).
pub fn hlfs_exe() -> &'static str {
    static EXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let me = std::env::current_exe().expect("current_exe");
        // target/PROFILE/deps/TEST-HASH
        let dir = me
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/PROFILE/deps");
        let exe = dir.join("hlfs");
        assert!(
            exe.is_file(),
            "{} is missing: build the CLI first (`cargo build -p hlfs-cli`, or run the tests \
             with `cargo nextest run --workspace`)",
            exe.display()
        );
        // `cargo nextest run -p hlfs-agent` alone does not rebuild it: refuse a stale one.
        let built = std::fs::metadata(&exe).and_then(|m| m.modified()).ok();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let newest = ["cli/src", "client/src"]
            .iter()
            .flat_map(|d| std::fs::read_dir(root.join(d)).into_iter().flatten())
            .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
            .max();
        if let (Some(b), Some(n)) = (built, newest) {
            assert!(
                b >= n,
                "{} is older than the CLI's sources: rebuild it (`cargo build -p hlfs-cli`, or \
                 `cargo nextest run --workspace`)",
                exe.display()
            );
        }
        exe.to_str().expect("UTF-8 target path").to_string()
    })
}

/// Runs `hlfs ARGS` against the daemon's p2p socket, optionally as an unprivileged user.
pub fn hlfs(d: &Daemon, nobody: bool, args: &[&str]) -> Output {
    let exe = hlfs_exe();
    let mut c = if nobody {
        require_tool("setpriv");
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", exe]);
        c
    } else {
        Command::new(exe)
    };
    c.arg("--socket")
        .arg(d.dbus_socket())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hlfs")
}
