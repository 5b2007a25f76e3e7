//! hlfs: the HLFS admin CLI. Talks to hlfsd through the typed proxies of `hlfs-client`, over its
//! peer-to-peer D-Bus socket (default) or a bus; see docs/cli.md and docs/dbus.md.
//!
//! Each noun has its module; every command returns a [`render::Report`], printed as text or,
//! under `--json`, as JSON. Errors print their D-Bus error name and exit 1; Ctrl-C exits 130
//! (and cancels the job being followed).

mod args;
mod ctx;
mod error;
mod image;
mod job;
mod pool;
mod progress;
mod render;
mod snapshot;
mod time;
mod volume;

use args::{Cli, Cmd, ShellArg};
use clap::{CommandFactory, Parser};
use error::{CliError, Result};
use render::Report;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use tokio::sync::watch;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(r) = generate(&cli.cmd) {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hlfs: cannot write to stdout: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hlfs: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match rt.block_on(main_async(cli)) {
        Ok(report) => {
            let ok = print(json, report.as_ref());
            match report.failure() {
                Some(e) => fail(json, &e),
                None if ok => ExitCode::SUCCESS,
                None => ExitCode::FAILURE,
            }
        }
        Err(e) => fail(json, &e),
    }
}

/// `hlfs completions` and `hlfs man`: generated from the command definition, no daemon needed.
fn generate(cmd: &Cmd) -> Option<std::io::Result<()>> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Cmd::Completions { shell } => {
            let shell = match shell {
                ShellArg::Bash => clap_complete::Shell::Bash,
                ShellArg::Zsh => clap_complete::Shell::Zsh,
                ShellArg::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "hlfs", &mut out);
            Some(out.flush())
        }
        Cmd::Man => Some(clap_mangen::Man::new(Cli::command()).render(&mut out)),
        _ => None,
    }
}

/// Prints a report on stdout; false if stdout cannot be written.
fn print(json: bool, r: &dyn Report) -> bool {
    let text = if json {
        serde_json::to_string_pretty(&r.json()).unwrap_or_default()
    } else {
        r.human()
    };
    if text.is_empty() {
        return true;
    }
    writeln!(std::io::stdout().lock(), "{}", text.trim_end()).is_ok()
}

/// Prints an error on stderr (one JSON object under --json) and gives its exit status.
fn fail(json: bool, e: &CliError) -> ExitCode {
    let msg = e.message();
    match (json, e.name()) {
        (true, Some(name)) => {
            eprintln!(
                "{}",
                serde_json::json!({"error": {"name": name, "message": msg}})
            )
        }
        (true, None) => eprintln!(
            "{}",
            serde_json::json!({"error": {"signal": "SIGINT", "message": msg}})
        ),
        (false, Some(name)) => eprintln!("hlfs: {msg} [{name}]"),
        (false, None) => eprintln!("hlfs: {msg}"),
    }
    ExitCode::from(e.exit_code())
}

/// Whether the command starts a job: Ctrl-C then cancels the job rather than leaving it.
fn starts_job(cmd: &Cmd) -> bool {
    use args::{SnapCmd, VolumeCmd};
    matches!(
        cmd,
        Cmd::Import { .. }
            | Cmd::Export { .. }
            | Cmd::Flatten { .. }
            | Cmd::Volume(VolumeCmd::Clean { .. })
            | Cmd::Snapshot(SnapCmd::Export { .. })
    )
}

async fn main_async(cli: Cli) -> Result<Box<dyn Report>> {
    // SIGINT is caught from the start: a job started while it arrives is cancelled at once.
    let (tx, rx) = watch::channel(0u32);
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| hlfs_client::HlfsError::Io(format!("cannot catch SIGINT: {e}")))?;
    tokio::spawn(async move {
        while sigint.recv().await.is_some() {
            tx.send_modify(|n| *n += 1);
        }
    });
    let follow = progress::Follow {
        bar: !cli.json && !cli.no_progress && std::io::stderr().is_terminal(),
        interrupt: rx.clone(),
    };
    if starts_job(&cli.cmd) {
        return run(&cli, &follow).await;
    }
    let mut rx = rx;
    tokio::select! {
        r = run(&cli, &follow) => r,
        _ = rx.wait_for(|&n| n > 0) => Err(CliError::Interrupted("interrupted".into())),
    }
}

async fn run(cli: &Cli, f: &progress::Follow) -> Result<Box<dyn Report>> {
    let c = ctx::Ctx::connect(cli.socket.as_deref(), cli.bus.map(Into::into)).await?;
    match &cli.cmd {
        Cmd::Pool(cmd) => pool::run(&c, cmd).await,
        Cmd::Volume(cmd) => volume::run(&c, cmd, f).await,
        Cmd::Snapshot(cmd) => snapshot::run(&c, cmd, f).await,
        Cmd::Job(cmd) => job::run(&c, cmd).await,
        Cmd::Clone { source, new } => volume::clone(&c, source, new).await,
        Cmd::Flatten { volume } => volume::flatten(&c, volume, f).await,
        Cmd::Import {
            image,
            volume,
            format,
        } => image::import(&c, image, volume, format.as_deref(), f).await,
        Cmd::Export {
            volume,
            image: img,
            format,
        } => {
            let t = c.resolve(volume).await?;
            image::export(&c, &t, img, format, f).await
        }
        // Handled in main, before connecting.
        Cmd::Completions { .. } | Cmd::Man => {
            Err(hlfs_client::HlfsError::Invalid("nothing to do".into()).into())
        }
    }
}
