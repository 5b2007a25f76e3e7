//! Long operations (import, export) as jobs with progress. A job runs `qemu-img` as an NBD
//! client of this daemon: qemu-img already reads and writes every image format, so the agent
//! only has to follow its progress (`-p` prints `(NN.NN/100%)`).

use crate::caller_files::CallerFile;
use crate::error::{Error, Result};
use crate::service::{Event, Service};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// How long a finished job stays visible.
pub const KEEP_FINISHED: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Import,
    Export,
    Clean,
    Flatten,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Import => "import",
            JobKind::Export => "export",
            JobKind::Clean => "clean",
            JobKind::Flatten => "flatten",
        }
    }
}

/// `running`, `done`, `failed` or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobStatus {
    pub state: JobState,
    /// Percent, 0 to 100.
    pub progress: f64,
    /// Why it failed; empty otherwise.
    pub error: String,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub id: u32,
    pub kind: JobKind,
    pub pool: String,
    pub volume: String,
    pub description: String,
    status: Mutex<JobStatus>,
    cancel: watch::Sender<bool>,
}

impl Job {
    pub fn new(id: u32, kind: JobKind, pool: &str, volume: &str, description: String) -> Job {
        Job {
            id,
            kind,
            pool: pool.to_string(),
            volume: volume.to_string(),
            description,
            status: Mutex::new(JobStatus {
                state: JobState::Running,
                progress: 0.0,
                error: String::new(),
            }),
            cancel: watch::channel(false).0,
        }
    }

    pub fn status(&self) -> JobStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Asks a running job to stop; returns whether it was running.
    pub fn cancel(&self) -> bool {
        let running = self.status().state == JobState::Running;
        if running {
            self.cancel.send_replace(true);
        }
        running
    }

    /// Sets the progress (percent) of a job run in-process.
    pub fn set_progress(&self, pct: f64) {
        self.update(|s| s.progress = pct.clamp(0.0, 100.0));
    }

    /// Records the outcome of a job run in-process (`Ok(summary)` or the error).
    pub fn finish(&self, r: Result<String>) {
        self.update(|s| match r {
            Ok(summary) => {
                s.state = JobState::Done;
                s.progress = 100.0;
                tracing::info!(job = self.id, %summary, "{}", self.description);
            }
            Err(e) => {
                s.state = JobState::Failed;
                s.error = e.to_string();
            }
        });
    }

    /// Runs `qemu-img ARGS` to completion (or until cancelled), following its progress. The
    /// outcome is not published yet: the caller cleans up first (a cancelled import removes
    /// its volume), then calls [`Job::settle`], so that a client that sees the job end sees
    /// its effects too. `file`: a caller's image that `args` name by its `/proc/self/fd` path.
    pub async fn run_qemu_img(
        &self,
        svc: &Service,
        args: Vec<String>,
        file: Option<&CallerFile>,
    ) -> Result<JobState> {
        self.run_inner(svc, args, file).await
    }

    /// Publishes the outcome of [`Job::run_qemu_img`] (state, error, a PropertiesChanged);
    /// returns whether the job is done.
    pub fn settle(&self, svc: &Service, r: Result<JobState>) -> bool {
        self.update(|s| match r {
            Ok(JobState::Done) => {
                s.state = JobState::Done;
                s.progress = 100.0;
            }
            Ok(other) => s.state = other,
            Err(e) => {
                s.state = JobState::Failed;
                s.error = e.to_string();
            }
        });
        let st = self.status();
        tracing::info!(job = self.id, state = st.state.as_str(), error = %st.error, "{}", self.description);
        svc.emit(Event::Job(self.id));
        st.state == JobState::Done
    }

    async fn run_inner(
        &self,
        svc: &Service,
        args: Vec<String>,
        file: Option<&CallerFile>,
    ) -> Result<JobState> {
        let mut cancel = self.cancel.subscribe();
        let mut cmd = tokio::process::Command::new("qemu-img");
        if let Some(f) = file {
            inherit(&mut cmd, f);
        }
        let mut child = cmd
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Tool {
                tool: "qemu-img",
                why: format!("cannot start (is qemu-utils installed?): {e}"),
            })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let err_task = tokio::spawn(async move {
            let mut s = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut s).await;
            }
            s
        });
        let mut buf = [0u8; 256];
        let mut pending = String::new();
        let mut last_sent = 0.0f64;
        while let Some(out) = stdout.as_mut() {
            tokio::select! {
                n = out.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if let Some(p) = last_progress(&pending) {
                        self.update(|s| s.progress = p);
                        if p - last_sent >= 1.0 {
                            last_sent = p;
                            svc.emit(Event::Job(self.id));
                        }
                    }
                    if let Some(i) = pending.rfind(['\r', '\n']) {
                        pending.drain(..=i);
                    }
                }
                _ = cancel.changed() => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Ok(JobState::Cancelled);
                }
            }
        }
        let status = child.wait().await.map_err(|e| Error::Tool {
            tool: "qemu-img",
            why: e.to_string(),
        })?;
        let mut err = err_task.await.unwrap_or_default();
        if let Some(f) = file {
            err = f.describe(&err);
        }
        if status.success() {
            Ok(JobState::Done)
        } else {
            Err(Error::Tool {
                tool: "qemu-img",
                why: format!("{status}: {}", err.trim()),
            })
        }
    }
}

/// The last `(NN.NN/100%)` in qemu-img's progress output.
fn last_progress(s: &str) -> Option<f64> {
    let end = s.rfind("/100%)")?;
    let start = s[..end].rfind('(')?;
    s[start + 1..end].trim().parse().ok()
}

/// Lets the child inherit the caller's file (descriptors are close-on-exec by default).
fn inherit(cmd: &mut tokio::process::Command, f: &CallerFile) {
    let fd = f.raw_fd();
    // SAFETY: the hook only makes fcntl system calls (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || crate::caller_files::clear_cloexec(fd));
    }
}

/// Virtual size of the caller's image `file` (format probed unless given), from
/// `qemu-img info`. An image with a backing file is refused: qemu-img, run by the daemon,
/// would open that file with the daemon's rights, not the caller's.
pub async fn image_size(file: &CallerFile, format: Option<&str>) -> Result<u64> {
    let path = file.path.as_str();
    let mut cmd = tokio::process::Command::new("qemu-img");
    inherit(&mut cmd, file);
    cmd.args(["info", "--output=json"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    let out = cmd
        .arg(file.proc_path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Tool {
            tool: "qemu-img",
            why: format!("cannot start (is qemu-utils installed?): {e}"),
        })?;
    if !out.status.success() {
        let msg = file.describe(String::from_utf8_lossy(&out.stderr).trim());
        if msg.contains("No such file") {
            return Err(Error::NotFound(format!("image {path}")));
        }
        return Err(Error::Tool {
            tool: "qemu-img",
            why: msg,
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| Error::Tool {
        tool: "qemu-img",
        why: format!("unreadable `info` output: {e}"),
    })?;
    if let Some(b) = v
        .get("backing-filename")
        .and_then(serde_json::Value::as_str)
    {
        return Err(Error::invalid(
            "image",
            path,
            format!(
                "it has a backing file ({b}); import a standalone image \
                 (qemu-img convert -O qcow2 {path} NEW.qcow2 makes one)"
            ),
        ));
    }
    v.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .filter(|&s| s > 0)
        .ok_or_else(|| Error::invalid("image", path, "qemu-img reports no virtual size"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_parsing() {
        assert_eq!(
            super::last_progress("    (0.00/100%)\r    (12.50/100%)\r"),
            Some(12.5)
        );
        assert_eq!(super::last_progress("(100.00/100%)\n"), Some(100.0));
        assert_eq!(super::last_progress("nothing"), None);
    }
}
