//! Following a job to its end: driven by the Job1 PropertiesChanged signals (no polling), drawn
//! as an indicatif bar (bytes, rate, ETA) on a terminal; Ctrl-C cancels the job in hlfsd and
//! waits until it has ended (a cancelled import has then removed its volume); a second Ctrl-C
//! leaves without waiting.

use crate::ctx::Ctx;
use crate::error::{CliError, Result};
use crate::render::Human;
use futures_util::StreamExt;
use hlfs_client::HlfsError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;
use zbus::zvariant::OwnedObjectPath;

/// How to follow a job.
#[derive(Clone)]
pub struct Follow {
    /// Draw a progress bar on stderr.
    pub bar: bool,
    /// How many times Ctrl-C was pressed.
    pub interrupt: watch::Receiver<u32>,
}

/// A job that ended as it should (`state` is `done`).
#[derive(Serialize, Debug)]
pub struct JobReport {
    /// The job's object path.
    pub job: String,
    pub id: u32,
    pub kind: String,
    pub state: String,
    pub what: String,
}

impl Human for JobReport {
    fn human(&self) -> String {
        format!("{}: {}", self.what, self.state)
    }
}

/// Scale of the bar when the job has no byte count (clean): hundredths of a percent.
const PERCENT_SCALE: u64 = 10_000;

fn bar(what: &str, total: Option<u64>) -> ProgressBar {
    let (len, template) = match total {
        Some(t) if t > 0 => (
            t,
            "[{bar:25}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
        ),
        _ => (
            PERCENT_SCALE,
            "[{bar:25}] {percent:>3}% ETA {eta} {wide_msg}",
        ),
    };
    let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_string());
    b
}

/// Follows job `path` (described by `what`; `total` bytes, if known) until it ends.
pub async fn follow(
    c: &Ctx,
    path: OwnedObjectPath,
    what: String,
    total: Option<u64>,
    f: &Follow,
) -> Result<JobReport> {
    let job = c.job(&path).await?;
    let id: u32 = path
        .as_str()
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let e = HlfsError::from;
    let mut progress = job.receive_progress_changed().await;
    let mut states = job.receive_state_changed().await;
    let bar = f.bar.then(|| bar(&what, total));
    let len = bar.as_ref().and_then(ProgressBar::length).unwrap_or(0);
    let mut interrupt = f.interrupt.clone();
    let mut cancelled = false;
    let mut signals_gone = false;
    // The first value is where the job already is: no rate to learn from that jump.
    let mut first = true;
    // Signals say nothing when hlfsd dies: a ping every few seconds tells.
    let peer = zbus::fdo::PeerProxy::builder(c.conn())
        .destination(hlfs_client::paths::SERVICE)
        .map_err(e)?
        .path(hlfs_client::paths::ROOT)
        .map_err(e)?
        .build()
        .await
        .map_err(e)?;
    let mut alive = tokio::time::interval(std::time::Duration::from_secs(3));
    alive.tick().await;
    loop {
        let presses = *interrupt.borrow();
        if presses >= 2 {
            // A second Ctrl-C: leave without waiting (hlfsd goes on cancelling).
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(CliError::Interrupted(format!(
                "interrupted again: left while job {id} ({what}) was being cancelled"
            )));
        }
        if !cancelled && presses >= 1 {
            cancelled = true;
            if let Some(b) = &bar {
                b.set_message(format!("{what} (cancelling)"));
            }
            c.at(&path, job.cancel().await).await?;
        }
        let state = job.state().await.map_err(e)?;
        if state != "running" {
            break;
        }
        tokio::select! {
            Some(p) = progress.next() => {
                if let (Some(b), Ok(pct)) = (&bar, p.get().await) {
                    b.set_position((pct.clamp(0.0, 100.0) / 100.0 * len as f64) as u64);
                    if std::mem::take(&mut first) {
                        b.reset_eta();
                    }
                }
            }
            Some(_) = states.next() => {}
            r = interrupt.changed(), if !signals_gone => {
                // Err: no more signals can come; follow to the end.
                signals_gone = r.is_err();
            }
            _ = alive.tick() => {
                if let Err(err) = peer.ping().await {
                    return Err(HlfsError::Unavailable(format!(
                        "hlfsd stopped answering while job {id} ({what}) ran: {err}"
                    ))
                    .into());
                }
            }
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let state = job.state().await.map_err(e)?;
    let kind = job.kind().await.map_err(e)?;
    match state.as_str() {
        "done" => Ok(JobReport {
            job: path.to_string(),
            id,
            kind,
            state,
            what,
        }),
        "cancelled" if cancelled => Err(CliError::Interrupted(format!(
            "interrupted: cancelled job {id} ({what}){}",
            if kind == "import" {
                "; the import left no volume"
            } else {
                ""
            }
        ))),
        "cancelled" => Err(HlfsError::Io(format!("{what}: cancelled (job {id})")).into()),
        _ => {
            let why = job.error().await.map_err(e)?;
            Err(HlfsError::Io(format!("{what}: {state}: {why}")).into())
        }
    }
}
