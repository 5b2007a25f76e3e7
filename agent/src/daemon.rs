//! hlfsd's life cycle: resolve settings, lock the data directory, open the pool registry (adding
//! the embedded `default` pool), create requested volumes, listen, and on SIGTERM/SIGINT stop
//! accepting, let connections finish, then flush and close every volume.

use crate::config::{Cli, Settings};
use crate::dbus;
use crate::error::{Error, Result};
use crate::fsutil::{self, LockFile, OwnedSocket};
use crate::manager::Manager;
use crate::names::PoolUri;
use crate::nbd;
use crate::pools::{PoolEnv, Registry};
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

/// Runs the daemon until a termination signal. Blocking: builds its own runtime.
pub fn run(cli: Cli) -> Result<()> {
    let settings = Settings::resolve(&cli)?;
    fsutil::set_private_umask();
    let _locks = lock_dirs(&settings)?;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hlfsd")
        .build()
        .map_err(|e| Error::io("start runtime", "tokio", e))?;
    let served = rt.block_on(serve(&settings, mgr.clone()));
    let errors = mgr.close_all();
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

async fn serve(settings: &Settings, mgr: Arc<Manager>) -> Result<()> {
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
    print_banner(settings, &pools, &exports, tcp_addr);
    tracing::info!(socket = %settings.nbd_unix.display(), tcp = ?tcp_addr, "serving NBD");

    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
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

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |e| Error::io("install signal handler", "SIGTERM/SIGINT", e);
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}

/// Tells a person where everything is and what to paste to try it.
fn print_banner(
    settings: &Settings,
    pools: &[(String, String, Option<String>)],
    exports: &[String],
    tcp: Option<std::net::SocketAddr>,
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
