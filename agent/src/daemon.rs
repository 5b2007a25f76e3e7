//! hlfsd's life cycle ([`serve`], startable in-process): lock the data directory, open the pool
//! registry (adding the embedded `default` pool), create requested volumes, listen, and when
//! told to stop (SIGTERM/SIGINT for `hlfsd`) stop accepting, cancel and wait for jobs, let
//! connections finish, then flush and close every volume.

use crate::config::{Cli, Settings};
use crate::dbus;
use crate::error::{Error, Result};
use crate::fsutil::{self, LockFile, OwnedSocket};
use crate::manager::Manager;
use crate::names::PoolUri;
use crate::nbd;
use crate::pools::{PoolEnv, Registry};
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Name of the pool the embedded default creates in the data directory.
pub const DEFAULT_POOL: &str = "default";
/// How often volumes changed by NBD clients are announced (PropertiesChanged): often enough
/// for a monitoring client, rarely enough that a busy volume costs one signal a second.
const CHANGE_ANNOUNCE_PERIOD: Duration = Duration::from_secs(1);
/// How long connections get to finish in-flight requests at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs to stderr; `RUST_LOG` overrides the `info` default.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// File that holds the data directory's lock: one daemon per data directory.
pub const DATA_LOCK_FILE: &str = "hlfsd.lock";
/// File that holds the runtime directory's lock: one daemon per runtime directory, so that a
/// daemon refused there never touches the sockets of the one that runs.
pub const RUNTIME_LOCK_FILE: &str = "hlfsd-runtime.lock";

/// Takes the data and runtime directories' locks (creating the directories: the data directory
/// private, the runtime directory searchable so that every user can reach the D-Bus socket).
fn lock_dirs(settings: &Settings) -> Result<(LockFile, Option<LockFile>)> {
    let dir = &settings.data_dir;
    let ours = dir.join(DATA_LOCK_FILE).exists() || dir.join(crate::pools::REGISTRY_FILE).exists();
    fsutil::create_dir_with_mode(dir, fsutil::PRIVATE_DIR)?;
    if ours {
        fsutil::tighten_dir(dir)?;
    }
    let data = LockFile::acquire(
        &dir.join(DATA_LOCK_FILE),
        &format!(
            "another hlfsd is running on data directory {}",
            dir.display()
        ),
    )?;
    let run = &settings.runtime_dir;
    fsutil::create_dir_with_mode(run, 0o755)?;
    let same = |a: &std::path::Path, b: &std::path::Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    let runtime = if same(dir, run) {
        None // the data directory's lock covers it
    } else {
        Some(LockFile::acquire(
            &run.join(RUNTIME_LOCK_FILE),
            &format!(
                "runtime directory {} is in use by a running server (another hlfsd)",
                run.display()
            ),
        )?)
    };
    Ok((data, runtime))
}

/// Runs the daemon until SIGTERM or SIGINT. Blocking: builds its own runtime and runs
/// [`serve`] on it.
pub fn run(cli: Cli) -> Result<()> {
    let settings = Settings::resolve(&cli)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hlfsd")
        .build()
        .map_err(|e| Error::io("start runtime", "tokio", e))?;
    rt.block_on(async {
        let signals = Signals::install()?;
        serve(settings, signals.recv()).await
    })
}

/// Runs a daemon with `settings` until `shutdown` completes: locks the data and runtime
/// directories, opens the pools, creates the volumes asked for, serves NBD and D-Bus; then stops
/// accepting, cancels the running jobs and waits for them, lets connections finish their
/// in-flight requests, and flushes and closes every volume. `hlfsd` runs it with SIGTERM and
/// SIGINT as `shutdown`; tests (and the FUSE view's and the plugin's) start it in-process with
/// any future, on a multi-threaded tokio runtime.
pub async fn serve(settings: Settings, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    fsutil::set_private_umask();
    let settings = Arc::new(settings);
    // Blocking work (directory locks, HDFS connections, volume creation): not on the async
    // threads.
    let s = settings.clone();
    let (locks, mgr) = blocking(move || open_state(&s)).await?;
    let served = serve_with(&settings, mgr.clone(), shutdown).await;
    let errors = blocking(move || Ok(mgr.close_all())).await?;
    drop(locks);
    for e in &errors {
        tracing::error!(error = %e, "closing failed");
    }
    served?;
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Runs blocking start-up or shutdown work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Busy(format!("internal task failed: {e}")))?
}

/// The directory locks (held while serving) and the manager over the opened pools, with the
/// volumes `--create-volume` asked for.
type State = ((LockFile, Option<LockFile>), Arc<Manager>);

fn open_state(settings: &Settings) -> Result<State> {
    let locks = lock_dirs(settings)?;
    let mut registry = Registry::load_with(PoolEnv {
        data_dir: settings.data_dir.clone(),
        hdfs: settings.hdfs.clone(),
    })?;
    for (name, uri) in &settings.pools {
        if registry.add_configured(name, uri.clone())? {
            tracing::info!(pool = %name, uri = %uri.to_uri(), "added pool from the configuration");
        }
    }
    if registry.get(DEFAULT_POOL).is_none() {
        let uri = PoolUri::Local(settings.data_dir.join("pools").join(DEFAULT_POOL));
        registry.add(DEFAULT_POOL, uri)?;
    }
    let mgr = Arc::new(
        Manager::new(registry, settings.cache_bytes).with_cleaner(settings.cleaner.clone()),
    );
    for spec in &settings.create_volumes {
        if mgr.ensure_volume(spec)? {
            tracing::info!(volume = %format!("{}/{}", spec.pool, spec.volume), size = spec.size, "created volume");
        }
    }
    Ok((locks, mgr))
}

async fn serve_with(
    settings: &Settings,
    mgr: Arc<Manager>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let unix = nbd::bind_unix(&settings.nbd_unix)?;
    // Removed when serving ends, if still ours.
    let _nbd_socket = OwnedSocket::new(&settings.nbd_unix);
    fsutil::set_socket_access(&settings.nbd_unix, &settings.nbd_access)?;
    let tcp = match settings.nbd_tcp {
        Some(a) => Some(nbd::bind_tcp(a).await?),
        None => None,
    };
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let limits = nbd::Limits::new(&settings.limits);
    hlfs_engine::backend::local::set_open_file_limit(settings.limits.open_segment_files);
    servers.spawn(nbd::serve(
        nbd::Listener::Unix(unix),
        mgr.clone(),
        limits.clone(),
        stop_rx.clone(),
    ));
    if let Some(l) = tcp {
        servers.spawn(nbd::serve(
            nbd::Listener::Tcp(l),
            mgr.clone(),
            limits,
            stop_rx.clone(),
        ));
    }
    let svc = crate::service::Service::new(mgr.clone(), settings.nbd_unix.clone());
    let svc_jobs = svc.clone();
    // Before D-Bus: its FuseMountpoint property is known from the first call.
    let fuse = crate::fuse::start(
        &svc,
        tokio::runtime::Handle::current(),
        &settings.fuse,
        &settings.data_dir,
    )?;
    let fuse_path = fuse.as_ref().map(|f| f.path().to_path_buf());
    let announcer = svc.start_change_announcer(CHANGE_ANNOUNCE_PERIOD, stop_rx.clone());
    let publisher = dbus::Publisher::start(svc);
    publisher.sync().await;
    let p2p = dbus::bind_p2p(&settings.dbus_socket)?;
    let _dbus_socket = OwnedSocket::new(&settings.dbus_socket);
    let p2p_task = tokio::spawn(dbus::serve_p2p(
        p2p,
        publisher.clone(),
        settings.limits.clone(),
        stop_rx.clone(),
    ));
    let _bus = match settings.bus {
        Some(kind) => {
            let c = dbus::serve_bus(kind, publisher.clone()).await?;
            tracing::info!(bus = ?kind, name = dbus::paths::SERVICE, "on the bus");
            Some(c)
        }
        None => None,
    };
    // Listing pools may block on HDFS: not on the async threads.
    let m = mgr.clone();
    let (pools, exports) = tokio::task::spawn_blocking(move || {
        let pools: Vec<(String, String, Option<String>)> = m
            .pools()
            .into_iter()
            .map(|(name, uri)| {
                let status = m.pool_status(&name).ok().flatten();
                (name, uri, status)
            })
            .collect();
        (pools, m.exports())
    })
    .await
    .map_err(|e| Error::Busy(format!("internal task failed: {e}")))?;
    print_banner(settings, &pools, &exports, tcp_addr, fuse_path.as_deref());
    tracing::info!(socket = %settings.nbd_unix.display(), tcp = ?tcp_addr, "serving NBD");

    shutdown.await;
    tracing::info!(
        "shutting down: cancelling jobs, then no new connections, finishing in-flight requests"
    );
    // Jobs first, while their NBD connections still work: a job ends cancelled, not failed.
    svc_jobs.shutdown(DRAIN_TIMEOUT).await;
    let _ = stop_tx.send(true);
    if let Some(f) = fuse {
        f.unmount(DRAIN_TIMEOUT).await;
    }
    let _ = p2p_task.await;
    // No more change signals: they would read (and so reopen) volumes being closed.
    let _ = announcer.await;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still busy after {DRAIN_TIMEOUT:?}; closing volumes anyway");
        servers.abort_all();
    }
    Ok(())
}

/// SIGTERM and SIGINT, installed before serving starts (so that a signal during start-up is
/// not lost, and an installation failure is an error rather than a daemon that cannot stop).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let io = |e| Error::io("install signal handler", "SIGTERM/SIGINT", e);
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(io)?,
            int: signal(SignalKind::interrupt()).map_err(io)?,
        })
    }

    /// Completes at the first of them.
    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
    }
}

/// Tells a person where everything is and what to paste to try it.
fn print_banner(
    settings: &Settings,
    pools: &[(String, String, Option<String>)],
    exports: &[String],
    tcp: Option<std::net::SocketAddr>,
    fuse: Option<&std::path::Path>,
) {
    let mut out = String::new();
    out.push_str(&format!("hlfsd {} ready\n", env!("CARGO_PKG_VERSION")));
    out.push_str(&format!(
        "  data directory:    {}\n",
        settings.data_dir.display()
    ));
    out.push_str(&format!(
        "  runtime directory: {}\n",
        settings.runtime_dir.display()
    ));
    for (name, uri, status) in pools {
        let status = match status {
            Some(why) => format!(" (unavailable: {why})"),
            None => String::new(),
        };
        out.push_str(&format!("  {:<19}{uri}{status}\n", format!("pool {name}:")));
    }
    let a = &settings.nbd_access;
    out.push_str(&format!(
        "  NBD socket:        {} (mode {:04o}{})\n",
        settings.nbd_unix.display(),
        a.mode,
        a.group
            .as_ref()
            .map(|(g, _)| format!(", group {g}"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "  D-Bus socket:      {}\n",
        settings.dbus_socket.display()
    ));
    if let Some(a) = tcp {
        out.push_str(&format!("  NBD TCP:           {a}\n"));
    }
    if let Some(m) = fuse {
        out.push_str(&format!("  FUSE view:         {}\n", m.display()));
    }
    out.push_str(&format!(
        "  volumes:           {}\n",
        if exports.is_empty() {
            "(none)".to_string()
        } else {
            exports.join(", ")
        }
    ));
    let example = exports
        .first()
        .cloned()
        .unwrap_or_else(|| format!("{DEFAULT_POOL}/VOLUME"));
    if exports.is_empty() {
        out.push_str(
            "Create a volume at start-up with: hlfsd --create-volume default/VOLUME:10G\n",
        );
    }
    out.push_str("Try:\n");
    out.push_str(&format!(
        "  qemu-img info 'nbd+unix:///{example}?socket={}'\n",
        settings.nbd_unix.display()
    ));
    if let Some(a) = tcp {
        out.push_str(&format!("  qemu-img info 'nbd://{a}/{example}'\n"));
    }
    out.push_str(&format!(
        "  hlfs --socket {} volume list\n",
        settings.dbus_socket.display()
    ));
    let mut stdout = std::io::stdout().lock();
    // The banner is a courtesy: a closed stdout must not stop the daemon.
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
