//! HDFS pools: a directory on HDFS whose subdirectories are volumes. Volume directories are
//! created, listed and deleted through the HDFS client (never the local file system), and
//! volumes are opened through a `JournaledBackend` whose local write journal lives in
//! `DATA/journal/POOL/VOLUME` (so that a flush is one local fsync). A pool whose NameNode does
//! not answer stays registered but unavailable: its calls fail with a clear error, and it is
//! reconnected on a later call (at most every `retry_after`).

use super::{volume_label, MakeVolume, OpenedVolume, PoolStore};
use crate::error::{Error, Result};
use hlfs_engine::backend::{HdfsBackend, HdfsOptions, JournalOptions, JournaledBackend};
use hlfs_engine::format::META_OBJECT;
use hlfs_engine::{Backend, OpenOptions, Volume};
use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How HDFS pools reach HDFS and size their journals (the `[hdfs]` configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct HdfsSettings {
    /// Local journal per open volume: bytes before writes wait for uploads (at least 16 MiB).
    pub journal_bytes: u64,
    /// Bound on the first contact with a NameNode (pool creation, volume open).
    pub connect_timeout: Duration,
    /// Bound on every later HDFS call.
    pub op_timeout: Duration,
    /// An unavailable pool is not retried more often than this: calls in between fail at once
    /// with the last error instead of each waiting `connect_timeout`.
    pub retry_after: Duration,
    /// Bound on closing a volume: it waits for its journal to upload for most of it, then
    /// gives up the HDFS calls in flight and leaves the lease to this host (what is left stays
    /// in the journal and is replayed at the next open). Short, so that a shutdown with HDFS
    /// down is not held up; never more than `op_timeout`.
    pub drain_timeout: Duration,
}

impl Default for HdfsSettings {
    fn default() -> Self {
        HdfsSettings {
            journal_bytes: JournalOptions::default().max_bytes,
            connect_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl HdfsSettings {
    fn backend_options(&self) -> HdfsOptions {
        HdfsOptions {
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
            ..HdfsOptions::default()
        }
    }

    fn journal_options(&self) -> JournalOptions {
        JournalOptions {
            max_bytes: self.journal_bytes,
            drain_timeout: self.drain_timeout.min(self.op_timeout),
            ..JournalOptions::default()
        }
    }
}

/// An HDFS pool: its connection (made lazily, retried after failures) and journal root.
#[derive(Debug)]
pub(super) struct HdfsStore {
    pool: String,
    url: String,
    journal_root: PathBuf,
    settings: HdfsSettings,
    conn: Mutex<Conn>,
}

#[derive(Debug, Default)]
struct Conn {
    /// The pool directory's backend, once connected.
    dir: Option<Arc<HdfsBackend>>,
    /// The last failed connection attempt.
    failed: Option<(String, Instant)>,
}

impl HdfsStore {
    /// The store on `url`, journals under `journal_root`. Connects (and creates the directory)
    /// now: with `strict`, failing to is an error; otherwise it is logged and the pool stays
    /// unavailable until a later call reconnects.
    pub fn open(
        pool: &str,
        url: &str,
        journal_root: PathBuf,
        settings: &HdfsSettings,
        strict: bool,
    ) -> Result<HdfsStore> {
        let s = HdfsStore {
            pool: pool.to_string(),
            url: url.to_string(),
            journal_root,
            settings: settings.clone(),
            conn: Mutex::new(Conn::default()),
        };
        match s.dir() {
            Ok(_) => {}
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::error!(pool = %pool, error = %e, "HDFS pool unavailable; its calls fail until it answers")
            }
        }
        Ok(s)
    }

    fn label(&self, volume: &str) -> String {
        volume_label(&self.pool, volume)
    }

    fn unavailable(&self, why: &str) -> Error {
        Error::Unavailable {
            what: format!("pool {} ({})", self.pool, self.url),
            why: why.to_string(),
        }
    }

    /// The pool directory on HDFS, connecting (and creating the directory) if needed. A pool
    /// that failed less than `retry_after` ago fails at once with the same error.
    fn dir(&self) -> Result<Arc<HdfsBackend>> {
        let mut c = lock(&self.conn);
        if let Some(d) = &c.dir {
            return Ok(d.clone());
        }
        if let Some((why, at)) = &c.failed {
            if at.elapsed() < self.settings.retry_after {
                return Err(self.unavailable(why));
            }
        }
        match HdfsBackend::connect_with(&self.url, self.settings.backend_options()) {
            Ok(b) => {
                if c.failed.take().is_some() {
                    tracing::info!(pool = %self.pool, uri = %self.url, "HDFS pool is available again");
                }
                let b = Arc::new(b);
                c.dir = Some(b.clone());
                Ok(b)
            }
            Err(e) => {
                let why = e.to_string();
                c.failed = Some((why.clone(), Instant::now()));
                Err(self.unavailable(&why))
            }
        }
    }

    /// The last connection error, if the pool is not connected.
    fn conn_status(&self) -> Option<String> {
        let c = lock(&self.conn);
        match (&c.dir, &c.failed) {
            (Some(_), _) => None,
            (None, Some((why, _))) => Some(why.clone()),
            (None, None) => Some("not connected yet".into()),
        }
    }

    /// Whether `name` is a volume of this pool: a directory holding a superblock object (a
    /// directory that is not a volume is never listed as one, opened or deleted).
    fn volume_exists(&self, name: &str) -> Result<bool> {
        let ctx = || format!("look up volume {}/{name}", self.pool);
        if !self
            .dir()?
            .dir_exists(name)
            .map_err(|e| Error::engine(ctx(), e))?
        {
            return Ok(false);
        }
        let remote =
            HdfsBackend::connect_with(&self.volume_url(name), self.settings.backend_options())
                .map_err(|e| Error::engine(ctx(), e))?;
        let objects = remote.list().map_err(|e| Error::engine(ctx(), e))?;
        Ok(objects.iter().any(|o| o.name == META_OBJECT))
    }

    fn volume_url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn journal_dir(&self, name: &str) -> PathBuf {
        self.journal_root.join(name)
    }

    /// Opens volume `name`'s backend: HDFS with the local write journal in front (which takes
    /// the volume's writer lease and replays what a crash left in the journal).
    fn open_backend(&self, name: &str) -> hlfs_engine::Result<Arc<JournaledBackend>> {
        let remote =
            HdfsBackend::connect_with(&self.volume_url(name), self.settings.backend_options())?;
        Ok(Arc::new(JournaledBackend::open(
            Arc::new(remote),
            self.journal_dir(name),
            self.settings.journal_options(),
        )?))
    }

    /// Removes volume `name`'s journal directory (absent is fine).
    fn remove_journal(&self, name: &str) -> Result<()> {
        let dir = self.journal_dir(name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete volume journal", &dir, e)),
        }
    }

    /// Creates the volume directory `name` on HDFS, then the volume with `make` on its backend;
    /// on failure removes both the directory and the journal again.
    fn create_with(
        &self,
        label: &str,
        name: &str,
        what: &str,
        make: MakeVolume<'_>,
    ) -> Result<OpenedVolume> {
        let dir = self.dir()?;
        if !dir
            .create_dir(name)
            .map_err(|e| Error::engine(format!("create {label}"), e))?
        {
            return Err(Error::Exists(label.to_string()));
        }
        // A journal without a volume directory is what a failed delete left: it must not be
        // replayed into the new volume.
        if self.journal_dir(name).exists() {
            tracing::warn!(volume = %label, dir = %self.journal_dir(name).display(), "removing a stale journal");
            self.remove_journal(name)?;
        }
        let made = self.open_backend(name).and_then(|b| {
            let v = make(b.clone() as Arc<dyn Backend>)?;
            Ok(OpenedVolume {
                volume: v,
                journal: Some(b),
            })
        });
        match made {
            Ok(v) => Ok(v),
            Err(e) => {
                // The backend (journal, lease) is dropped by now: remove what was made.
                if let Err(e) = dir.delete_dir(name) {
                    tracing::warn!(volume = %label, error = %e, "could not remove a half-created volume");
                }
                if let Err(e) = self.remove_journal(name) {
                    tracing::warn!(volume = %label, error = %e, "could not remove a half-created volume's journal");
                }
                Err(Error::engine(what.to_string(), e))
            }
        }
    }
}

impl PoolStore for HdfsStore {
    fn status(&self) -> Option<String> {
        self.conn_status()
    }

    fn volume_at<'a>(&self, loc: &'a str) -> Option<&'a str> {
        loc.strip_prefix(self.url.as_str())?.strip_prefix('/')
    }

    fn has_volume(&self, name: &str) -> Result<bool> {
        self.volume_exists(name)
    }

    fn list_volumes(&self) -> Result<Vec<String>> {
        self.dir()?
            .list_dirs()
            .map_err(|e| Error::engine(format!("list pool {}", self.pool), e))
    }

    fn create(&self, name: &str, what: &str, make: MakeVolume<'_>) -> Result<OpenedVolume> {
        self.create_with(&self.label(name), name, what, make)
    }

    fn open(&self, name: &str, open: &OpenOptions) -> Result<OpenedVolume> {
        let ctx = || format!("open {}", self.label(name));
        let b = self
            .open_backend(name)
            .map_err(|e| Error::engine(ctx(), e))?;
        let volume = Volume::open(b.clone(), open).map_err(|e| Error::engine(ctx(), e))?;
        Ok(OpenedVolume {
            volume,
            journal: Some(b),
        })
    }

    fn space(&self) -> Result<crate::fsutil::Space> {
        let (total, free) = self
            .dir()?
            .space()
            .map_err(|e| Error::engine(format!("space of pool {}", self.pool), e))?;
        Ok(crate::fsutil::Space {
            total,
            free,
            avail: free,
        })
    }

    fn remove_if_empty(&self) -> Result<()> {
        // Stray entries keep the HDFS directory (false), as for a local pool.
        self.dir()?
            .delete_root_if_empty()
            .map_err(|e| Error::engine(format!("remove pool {}", self.pool), e))?;
        match fs::remove_dir_all(&self.journal_root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove pool journals", &self.journal_root, e)),
        }
    }

    fn delete(&self, name: &str, busy: &dyn Fn(hlfs_engine::Error) -> Error) -> Result<()> {
        let ctx = || format!("delete {}", self.label(name));
        let dir = self.dir()?;
        let remote =
            HdfsBackend::connect_with(&self.volume_url(name), self.settings.backend_options())
                .map_err(|e| Error::engine(ctx(), e))?;
        let lease = remote.lease("hlfsd (deleting)").map_err(busy)?;
        dir.delete_dir(name).map_err(|e| Error::engine(ctx(), e))?;
        drop(lease);
        // After the data: a journal without its volume is never replayed (see
        // `create_with`), a volume without its journal would lose writes.
        self.remove_journal(name)
    }
}
