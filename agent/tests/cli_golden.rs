//! Golden outputs of the `hlfs` CLI: every command, in its human and its `--json` form, against
//! a real hlfsd, compared with `cli/tests/golden/STEP.txt`. Two daemons run the same script
//! (one plain, one with `--json`), so both forms show the same state. What varies between runs
//! is normalised: the scratch directory (`<TMP>`), dates and Unix times, and the log's byte
//! counts (physical, reclaimable, segments, live ratio), which depend on checkpoint timing.
//!
//! `UPDATE_GOLDEN=1 cargo nextest run --workspace -E 'binary(cli_golden)'` rewrites the files.
//! Every failing step must exit 1 and name its D-Bus error (`[org.hlfs.Error.X]`, or
//! `{"error": {"name": ...}}` under --json).

mod common;

use common::{hlfs_exe, run, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One command of the script: a file name, and the arguments (`{T}` is the scratch dir).
struct Step {
    name: &'static str,
    args: &'static [&'static str],
}

const fn s(name: &'static str, args: &'static [&'static str]) -> Step {
    Step { name, args }
}

const LONG: &str = "a/vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

const SCRIPT: &[Step] = &[
    s(
        "pool-create",
        &["pool", "create", "a", "local://{T}/pool-a"],
    ),
    s(
        "pool-create-again",
        &["pool", "create", "a", "local://{T}/pool-a"],
    ),
    s("pool-create-bad-uri", &["pool", "create", "b", "file:///x"]),
    s("volume-create", &["volume", "create", "a/vm1", "64M"]),
    s(
        "volume-create-uri",
        &[
            "volume",
            "create",
            "local://{T}/pool-a/vm2",
            "1G",
            "--no-compression",
            "--segment-size",
            "8M",
        ],
    ),
    s(
        "volume-create-default-pool",
        &["volume", "create", "vm0", "1M"],
    ),
    s("volume-create-long-name", &["volume", "create", LONG, "2T"]),
    s(
        "volume-create-exists",
        &["volume", "create", "a/vm1", "64M"],
    ),
    s(
        "volume-create-bad-size",
        &["volume", "create", "a/x", "12Q"],
    ),
    s(
        "volume-create-bad-name",
        &["volume", "create", "a/.hidden", "1M"],
    ),
    s("pool-list", &["pool", "list"]),
    s("pool-info", &["pool", "info", "a"]),
    s("pool-info-missing", &["pool", "info", "nope"]),
    s("volume-list", &["volume", "list", "a"]),
    s("volume-info", &["volume", "info", "a/vm2"]),
    s("volume-info-missing", &["volume", "info", "a/nothere"]),
    s("volume-info-of-snapshot", &["volume", "info", "a/vm1%s1"]),
    s("volume-resize", &["volume", "resize", "a/vm1", "128M"]),
    s(
        "volume-resize-unchanged",
        &["volume", "resize", "a/vm1", "128M"],
    ),
    s("snapshot-create", &["snapshot", "create", "a/vm1%s1"]),
    s(
        "snapshot-create-frozen",
        &["snapshot", "create", "a/vm1@s2", "--frozen"],
    ),
    s(
        "snapshot-create-of-volume",
        &["snapshot", "create", "a/vm1"],
    ),
    s("snapshot-rollback", &["snapshot", "rollback", "a/vm1%s1"]),
    s(
        "snapshot-create-branch",
        &["snapshot", "create", "a/vm1%s3"],
    ),
    s("snapshot-list", &["snapshot", "list", "a/vm1"]),
    s("snapshot-list-empty", &["snapshot", "list", "a/vm2"]),
    s(
        "snapshot-before",
        &["snapshot", "before", "a/vm1", "2100-01-01"],
    ),
    s(
        "snapshot-before-none",
        &["snapshot", "before", "a/vm1", "1970-01-02"],
    ),
    s(
        "snapshot-before-bad-time",
        &["snapshot", "before", "a/vm1", "yesterday"],
    ),
    s("clone", &["clone", "a/vm1%s1", "a/c1"]),
    s(
        "snapshot-delete-protected",
        &["snapshot", "delete", "a/vm1%s1"],
    ),
    s("flatten", &["flatten", "a/c1"]),
    s("volume-clean", &["volume", "clean", "a/vm1"]),
    s("import", &["import", "{T}/src.qcow2", "a/imp"]),
    s(
        "import-garbage",
        &["import", "{T}/garbage.qcow2", "a/bad", "-f", "qcow2"],
    ),
    s("export", &["export", "a/imp", "{T}/out.raw"]),
    s("export-exists", &["export", "a/imp", "{T}/out.raw"]),
    s(
        "snapshot-export",
        &[
            "snapshot",
            "export",
            "a/vm1%s2",
            "{T}/s2.qcow2",
            "-O",
            "qcow2",
        ],
    ),
    s(
        "snapshot-export-bad-format",
        &[
            "snapshot",
            "export",
            "a/vm1%s2",
            "{T}/s2.vmdk",
            "-O",
            "vmdk",
        ],
    ),
    s("job-list", &["job", "list"]),
    s("job-cancel-finished", &["job", "cancel", "1"]),
    s("job-cancel-missing", &["job", "cancel", "999"]),
    s("snapshot-delete", &["snapshot", "delete", "a/vm1%s3"]),
    s(
        "snapshot-create-default-pool",
        &["snapshot", "create", "vm0@s"],
    ),
    s("snapshot-list-default-pool", &["snapshot", "list", "vm0"]),
    s(
        "snapshot-delete-default-pool",
        &["snapshot", "delete", "vm0%s"],
    ),
    s("pool-delete-busy", &["pool", "delete", "a"]),
    s("volume-delete", &["volume", "delete", "a/c1"]),
    s("volume-delete-missing", &["volume", "delete", "a/c1"]),
    s("volume-delete-long-name", &["volume", "delete", LONG]),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/golden")
}

/// Replaces every `YYYY-MM-DD HH:MM:SS UTC` with `<DATE>`.
fn normalise_dates(s: &str) -> String {
    let b = s.as_bytes();
    let shape = b"dddd-dd-dd dd:dd:dd UTC";
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let fits = b.len() - i >= shape.len()
            && shape.iter().zip(&b[i..]).all(|(p, c)| match p {
                b'd' => c.is_ascii_digit(),
                p => p == c,
            });
        if fits {
            out.push_str("<DATE>");
            i += shape.len();
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// JSON keys whose values vary between runs.
const VOLATILE: [&str; 5] = [
    "created",
    "physical",
    "reclaimable",
    "segments",
    "live_ratio",
];

fn normalise_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if VOLATILE.contains(&k.as_str()) && (x.is_number()) {
                    *x = serde_json::Value::String(format!("<{k}>"));
                } else {
                    normalise_json(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

/// Human `key: value` lines whose values vary between runs.
fn normalise_fields(s: &str) -> String {
    s.lines()
        .map(|l| {
            for k in ["physical:", "reclaimable:", "segments:", "live ratio:"] {
                if let Some(rest) = l.strip_prefix(k) {
                    let pad = rest.len() - rest.trim_start().len();
                    return format!("{k}{}<{}>", " ".repeat(pad), k.trim_end_matches(':'));
                }
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs one step against `d` and renders it: the command line, stdout, stderr, exit status.
fn run_step(d: &Daemon, step: &Step, json: bool) -> String {
    let tmp = d.dir.path().to_str().unwrap().to_string();
    let args: Vec<String> = step.args.iter().map(|a| a.replace("{T}", &tmp)).collect();
    let mut c = Command::new(hlfs_exe());
    if json {
        c.arg("--json");
    }
    let o = c
        .args(&args)
        .env("HLFS_SOCKET", d.dbus_socket())
        .stdin(Stdio::null())
        .output()
        .expect("run hlfs");
    let code = o.status.code().expect("hlfs killed by a signal");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let shown = args.join(" ").replace(&tmp, "<TMP>");
    // Error paths: exit 1 with the D-Bus error name.
    if code != 0 {
        assert_eq!(code, 1, "{shown}: exit {code}\n{stderr}");
        if json {
            let v: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| {
                panic!("{shown}: stderr is not one JSON object ({e}): {stderr}")
            });
            let name = v["error"]["name"].as_str().unwrap_or_default();
            assert!(name.starts_with("org.hlfs.Error."), "{shown}: {stderr}");
            assert!(stdout.is_empty(), "{shown}: output on a failure: {stdout}");
        } else {
            let last = stderr.trim_end().lines().last().unwrap_or_default();
            assert!(
                last.starts_with("hlfs: ") && last.contains("[org.hlfs.Error."),
                "{shown}: {stderr}"
            );
        }
    }
    let stdout = if json && !stdout.trim().is_empty() {
        let mut v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{shown}: stdout is not JSON ({e}): {stdout}"));
        normalise_json(&mut v);
        serde_json::to_string_pretty(&v).unwrap() + "\n"
    } else {
        normalise_fields(&stdout)
    };
    let mut out = format!("$ hlfs {}{shown}\n", if json { "--json " } else { "" });
    out += stdout.trim_end();
    if !stdout.trim().is_empty() {
        out.push('\n');
    }
    for l in stderr.lines() {
        out += &format!("stderr: {l}\n");
    }
    out += &format!("[exit {code}]\n");
    normalise_dates(&out.replace(&tmp, "<TMP>"))
}

/// A daemon with the images the script imports.
fn daemon(tag: &str) -> Daemon {
    let d = Daemon::start(tag, &[]);
    let src = d.dir.path().join("src.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "4M"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xa5 0 1M",
            src.to_str().unwrap(),
        ],
    );
    std::fs::write(
        d.dir.path().join("garbage.qcow2"),
        b"QFI\xfbnot really a qcow2 image",
    )
    .unwrap();
    d
}

#[test]
fn every_command_in_both_forms_matches_its_golden_output() {
    let human = daemon("golden-h");
    let json = daemon("golden-j");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0");
    let dir = golden_dir();
    let mut bad = Vec::new();
    for step in SCRIPT {
        let got = format!(
            "{}\n{}",
            run_step(&human, step, false),
            run_step(&json, step, true)
        );
        let file = dir.join(format!("{}.txt", step.name));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if want != got {
            bad.push(format!(
                "--- {} (expected)\n{want}+++ (got)\n{got}",
                file.display()
            ));
        }
    }
    // No golden file outlives its step.
    let names: Vec<String> = SCRIPT.iter().map(|s| format!("{}.txt", s.name)).collect();
    for e in std::fs::read_dir(&dir).unwrap() {
        let f = e.unwrap().file_name().into_string().unwrap();
        if !names.contains(&f) {
            if update {
                std::fs::remove_file(dir.join(&f)).unwrap();
            } else {
                bad.push(format!("stale golden file {f}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} golden output(s) differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Without a daemon: the places tried, `Unavailable`, exit 1, in both forms.
#[test]
fn no_daemon_is_unavailable_in_both_forms() {
    for json in [false, true] {
        let mut c = Command::new(hlfs_exe());
        if json {
            c.arg("--json");
        }
        let o = c
            .args(["--socket", "/nonexistent/dbus.sock", "volume", "list"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(o.stdout.is_empty());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("cannot reach hlfsd at /nonexistent/dbus.sock"),
            "{e}"
        );
        if json {
            let v: serde_json::Value = serde_json::from_str(e.trim()).unwrap();
            assert_eq!(v["error"]["name"], "org.hlfs.Error.Unavailable");
        } else {
            assert!(
                e.trim_end().ends_with("[org.hlfs.Error.Unavailable]"),
                "{e}"
            );
        }
    }
}
