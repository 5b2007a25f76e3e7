//! Crash tests kill a child process with SIGKILL: the child is an ignored test of the same
//! test binary, which writes and prints what it made durable.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the ignored test `name` of the current test binary in a child process with `env`, kills
/// it with SIGKILL after `after`, and returns the lines it printed until then.
pub fn run_child_and_kill(name: &str, env: &[(&str, String)], after: Duration) -> Vec<String> {
    let exe = std::env::current_exe().expect("test executable");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    std::thread::sleep(after);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait for the child");
    reader.join().expect("child output reader")
}
