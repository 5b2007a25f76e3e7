//! The FUSE view (as sheepfs was for Sheepdog): pools and volumes as files, snapshots as
//! read-only files, status files; see docs/fuse.md. Served by hlfsd itself through the same
//! manager and service as NBD and D-Bus, with the `fuser` crate's own mount code (no libfuse;
//! root mounts directly, a user through `fusermount3`).
//!
//! Layout: `pools/POOL/VOLUME`, `snapshots/POOL/VOLUME/SNAPSHOT`, `status/{agent,pools,
//! volumes}[.json]`.

mod fs;
pub mod mountpoint;
mod nodes;
pub mod owners;
mod status;

use crate::config::FuseMount;
use crate::error::{Error, Result};
use crate::service::Service;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Threads serving FUSE requests (each with its own cloned `/dev/fuse` descriptor): enough
/// for a queue of direct I/O from one guest or fio job while others list directories.
const THREADS: usize = 8;

/// A mounted view; unmounted by [`FuseView::unmount`] (or, failing that, when the process
/// exits: the kernel then fails accesses with ENOTCONN until the next start clears it).
pub struct FuseView {
    session: fuser::BackgroundSession,
    path: PathBuf,
    svc: Arc<Service>,
}

/// Mounts the view as `mount` asks. The embedded default gives up quietly (a warning that
/// says why) where FUSE is not usable; a mount point that was asked for must work.
pub fn start(
    svc: &Arc<Service>,
    rt: tokio::runtime::Handle,
    mount: &FuseMount,
    data_dir: &Path,
) -> Result<Option<FuseView>> {
    let (path, explicit) = match mount {
        FuseMount::Off => return Ok(None),
        FuseMount::Default(p) => (p, false),
        FuseMount::Explicit(p) => (p, true),
    };
    if let Some(why) = mountpoint::unusable() {
        if explicit {
            return Err(Error::Unsupported(format!(
                "cannot mount the FUSE view on {}: {why}",
                path.display()
            )));
        }
        tracing::warn!("FUSE view not mounted: {why}");
        return Ok(None);
    }
    match FuseView::mount(svc, rt, path, data_dir) {
        Ok(v) => Ok(Some(v)),
        Err(e) if !explicit => {
            tracing::warn!(error = %e, "FUSE view not mounted (pass --no-fuse to skip it)");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl FuseView {
    fn mount(
        svc: &Arc<Service>,
        rt: tokio::runtime::Handle,
        path: &Path,
        data_dir: &Path,
    ) -> Result<FuseView> {
        mountpoint::prepare(path)?;
        let fs = fs::HlfsFs::new(svc.clone(), rt, data_dir.to_path_buf())?;
        let root = crate::paths::euid() == 0;
        let mut options = vec![
            fuser::MountOption::FSName("hlfs".into()),
            fuser::MountOption::Subtype("hlfs".into()),
            // The kernel enforces each file's stored mode and owner.
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoAtime,
        ];
        let mut config = fuser::Config::default();
        // Root's view serves every user (libvirt, qemu as their own users; the permissions
        // above decide). A user's view serves that user alone, unless /etc/fuse.conf lets
        // users pass allow_other (`user_allow_other`): then root too, and fusermount3 stays
        // to unmount the view if hlfsd dies (auto_unmount needs allow_other). Without it, a
        // view left by a killed daemon is cleared at the next start.
        config.acl = if root {
            fuser::SessionACL::All
        } else if mountpoint::users_may_allow_other() {
            options.push(fuser::MountOption::AutoUnmount);
            fuser::SessionACL::RootAndOwner
        } else {
            fuser::SessionACL::Owner
        };
        tracing::debug!(acl = ?config.acl, "FUSE view: who may use it");
        config.mount_options = options;
        config.n_threads = Some(THREADS);
        config.clone_fd = true;
        let session = fuser::Session::new(fs, path, &config)
            .and_then(fuser::Session::spawn)
            .map_err(|e| Error::io("mount the FUSE view on", path, e))?;
        svc.set_fuse_mountpoint(&path.to_string_lossy());
        tracing::info!(mountpoint = %path.display(), "FUSE view mounted");
        Ok(FuseView {
            session,
            path: path.to_path_buf(),
            svc: svc.clone(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits (at most `timeout`) for the request threads to end. A process still
    /// inside the mount keeps it busy: then the mount is detached lazily and the daemon goes
    /// on with its shutdown.
    pub async fn unmount(self, timeout: Duration) {
        self.svc.set_fuse_mountpoint("");
        let path = self.path.clone();
        let session = self.session;
        let join = tokio::task::spawn_blocking(move || session.umount_and_join());
        match tokio::time::timeout(timeout, join).await {
            Ok(Ok(Ok(()))) => tracing::info!(mountpoint = %path.display(), "FUSE view unmounted"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(mountpoint = %path.display(), error = %e, "FUSE view: unmount failed; detaching");
                if let Err(e) = mountpoint::unmount(&path) {
                    tracing::warn!(error = %e, "FUSE view: detach failed");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "FUSE view: unmount task failed"),
            Err(_) => {
                tracing::warn!(mountpoint = %path.display(), "FUSE view still in use after {timeout:?}; detached, going on")
            }
        }
    }
}
