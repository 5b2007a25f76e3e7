//! Local pools: a directory on this host whose subdirectories are volumes, each opened through
//! a `LocalBackend`.

use super::{volume_label, MakeVolume, OpenedVolume, PoolStore};
use crate::error::{Error, Result};
use crate::names::check_name;
use hlfs_engine::format::{parse_name, META_MAGIC, META_OBJECT};
use hlfs_engine::{Backend, LocalBackend, OpenOptions, Volume};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether local directory `dir` is an HLFS volume: a real directory (not a symlink) holding a
/// regular file `volume.meta` that starts with the superblock magic. Only such directories are
/// listed, opened or deleted, so a pool on a directory with other things in it never offers
/// them as volumes. A superblock that is damaged past its magic still names a volume (one that
/// reports itself damaged).
pub fn is_local_volume(dir: &Path) -> bool {
    let is_dir = fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
    let meta = dir.join(META_OBJECT);
    if !is_dir || !fs::symlink_metadata(&meta).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 8];
    fs::File::open(&meta)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == META_MAGIC)
}

/// Whether `name` is one of the files the engine keeps in a volume directory: the superblock,
/// segments, checkpoints and the lease file. Deleting a volume removes these and nothing else.
fn is_volume_file(name: &str) -> bool {
    name == META_OBJECT
        || name == "lock"
        || parse_name(name, "seg-").is_some()
        || parse_name(name, "ckpt-").is_some()
}

/// Removes local volume directory `vdir`'s own files (never following symlinks; the superblock
/// last, so that an interrupted delete leaves a volume that can be deleted again), then the
/// directory if nothing else is in it. Returns the names of what was left (the user's files).
pub(super) fn remove_local_volume(vdir: &Path) -> Result<Vec<String>> {
    let rd = fs::read_dir(vdir).map_err(|e| Error::io("list volume", vdir, e))?;
    let mut ours = Vec::new();
    let mut strays = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list volume", vdir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if regular && is_volume_file(&name) {
            ours.push(name);
        } else {
            strays.push(name);
        }
    }
    let last = |n: &String| match n.as_str() {
        "lock" => 2,
        META_OBJECT => 1,
        _ => 0,
    };
    ours.sort_by_key(last);
    for name in &ours {
        let p = vdir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("delete volume file", &p, e)),
        }
    }
    if strays.is_empty() {
        match fs::remove_dir(vdir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove volume directory", vdir, e)),
        }
    } else {
        strays.sort();
        tracing::warn!(dir = %vdir.display(), left = ?strays, "deleted the volume's files; kept files that are not the volume's, and so the directory");
    }
    Ok(strays)
}

/// A pool in a local directory.
#[derive(Debug)]
pub(super) struct LocalStore {
    pub pool: String,
    pub dir: PathBuf,
}

impl LocalStore {
    /// The store on `dir`, created if missing.
    pub fn open(pool: &str, dir: &Path) -> Result<LocalStore> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create pool directory", dir, e))?;
        Ok(LocalStore {
            pool: pool.to_string(),
            dir: dir.to_path_buf(),
        })
    }

    /// The directory of volume `name` (validated, so it is always inside the pool).
    fn volume_dir(&self, name: &str) -> Result<PathBuf> {
        check_name("volume", name)?;
        Ok(self.dir.join(name))
    }

    fn label(&self, volume: &str) -> String {
        volume_label(&self.pool, volume)
    }
}

/// Whether `vdir` (a real directory) holds nothing but what an interrupted create leaves.
fn leftover_of_create(vdir: &Path) -> bool {
    if !fs::symlink_metadata(vdir).is_ok_and(|m| m.is_dir()) {
        return false;
    }
    fs::read_dir(vdir).is_ok_and(|rd| {
        rd.into_iter()
            .all(|e| e.is_ok_and(|e| e.file_name() == "lock" && e.path().is_file()))
    })
}

impl PoolStore for LocalStore {
    fn status(&self) -> Option<String> {
        None
    }

    fn volume_at<'a>(&self, loc: &'a str) -> Option<&'a str> {
        let path = Path::new(loc.strip_prefix("local://")?);
        if path.parent()? != self.dir {
            return None;
        }
        path.file_name()?.to_str()
    }

    fn has_volume(&self, name: &str) -> Result<bool> {
        Ok(is_local_volume(&self.volume_dir(name)?))
    }

    fn list_volumes(&self) -> Result<Vec<String>> {
        let dir = &self.dir;
        let rd = fs::read_dir(dir).map_err(|e| Error::io("list pool", dir, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list pool", dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name("volume", &name).is_ok() && is_local_volume(&entry.path()) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Creates the volume directory and the volume in it; removes the directory if that fails.
    fn create(&self, name: &str, what: &str, make: MakeVolume<'_>) -> Result<OpenedVolume> {
        let vdir = self.volume_dir(name)?;
        match fs::create_dir(&vdir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if is_local_volume(&vdir) {
                    return Err(Error::Exists(self.label(name)));
                }
                // What a crash during a create leaves (an empty directory, or one with only the
                // lease file) is taken over; anything else is not ours.
                if !leftover_of_create(&vdir) {
                    return Err(Error::Exists(format!(
                        "{} (a directory {} that is not an HLFS volume)",
                        self.label(name),
                        vdir.display()
                    )));
                }
            }
            Err(e) => return Err(Error::io("create volume directory", &vdir, e)),
        }
        let made = LocalBackend::new(&vdir).and_then(|b| make(Arc::new(b)));
        match made {
            Ok(volume) => Ok(OpenedVolume {
                volume,
                journal: None,
            }),
            Err(e) => {
                if let Err(e) = remove_local_volume(&vdir) {
                    tracing::warn!(dir = %vdir.display(), error = %e, "could not remove a half-created volume");
                }
                Err(Error::engine(what.to_string(), e))
            }
        }
    }

    fn open(&self, name: &str, open: &OpenOptions) -> Result<OpenedVolume> {
        let ctx = || format!("open {}", self.label(name));
        let vdir = self.volume_dir(name)?;
        // Guest data is private, whatever mode an older version or a person gave it.
        crate::fsutil::tighten_dir(&vdir)?;
        let backend: Arc<dyn Backend> =
            Arc::new(LocalBackend::new(&vdir).map_err(|e| Error::engine(ctx(), e))?);
        let volume = Volume::open(backend, open).map_err(|e| Error::engine(ctx(), e))?;
        Ok(OpenedVolume {
            volume,
            journal: None,
        })
    }

    fn space(&self) -> Result<crate::fsutil::Space> {
        crate::fsutil::space_of(&self.dir)
    }

    fn remove_if_empty(&self) -> Result<()> {
        let dir = &self.dir;
        match fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            // Stray files that are not volumes: keep the directory, forget the pool anyway.
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Ok(()),
            Err(e) => Err(Error::io("remove pool directory", dir, e)),
        }
    }

    fn delete(&self, name: &str, busy: &dyn Fn(hlfs_engine::Error) -> Error) -> Result<()> {
        let ctx = || format!("delete {}", self.label(name));
        let vdir = self.volume_dir(name)?;
        let backend = LocalBackend::new(&vdir).map_err(|e| Error::engine(ctx(), e))?;
        let lease = backend.lease("hlfsd (deleting)").map_err(busy)?;
        drop(backend);
        let r = remove_local_volume(&vdir).map(|_| ());
        drop(lease);
        r
    }
}
