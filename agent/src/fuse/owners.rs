//! Mode and owner of volume files, as set by `open(O_CREAT, mode)`, `chmod` and `chown` on the
//! FUSE view. Kept by the daemon in `DATA_DIR/fuse-owners.json`, keyed by the volume's UUID
//! (from its superblock) so that a volume deleted and created again under the same name does
//! not inherit the old owner, and a renamed pool keeps its files' owners. The kernel enforces
//! them (`default_permissions`), so that no user reads another's disks.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the store in the data directory.
pub const OWNERS_FILE: &str = "fuse-owners.json";

/// Permission bits and owner of a volume file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The store: volume UUID (hex) -> owner.
#[derive(Debug)]
pub struct Owners {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Owner>>,
    /// What a volume nobody set an owner for shows: the daemon's user, mode 0600.
    pub default: Owner,
}

/// The key of a volume.
pub fn key(uuid: &[u8; 16]) -> String {
    uuid.iter().map(|b| format!("{b:02x}")).collect()
}

impl Owners {
    /// Loads the store of data directory `dir` (empty if the file does not exist).
    pub fn load(dir: &Path, default: Owner) -> Result<Owners> {
        let path = dir.join(OWNERS_FILE);
        let map = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Config {
                path: path.clone(),
                why: format!("not a FUSE owner table: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        Ok(Owners {
            path,
            map: Mutex::new(map),
            default,
        })
    }

    /// The owner of the volume with key `k`.
    pub fn get(&self, k: &str) -> Owner {
        self.lock().get(k).copied().unwrap_or(self.default)
    }

    /// Sets the owner of `k` and saves the table (atomically: a crash leaves the old or the
    /// new table).
    pub fn set(&self, k: &str, o: Owner) -> Result<()> {
        let mut m = self.lock();
        let old = m.insert(k.to_string(), o);
        let r = self.save(&m);
        if r.is_err() {
            match old {
                Some(old) => m.insert(k.to_string(), old),
                None => m.remove(k),
            };
        }
        r
    }

    /// Forgets `k` (its volume was deleted).
    pub fn remove(&self, k: &str) -> Result<()> {
        let mut m = self.lock();
        if m.remove(k).is_some() {
            self.save(&m)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Owner>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, m: &BTreeMap<String, Owner>) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(m)
            .map_err(|e| Error::io("encode", &self.path, std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Error::io("write", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_persist_and_default() {
        let dir = std::env::temp_dir().join(format!("hlfs-owners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = Owner {
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        let o = Owners::load(&dir, d).unwrap();
        let k = key(&[0xab; 16]);
        assert_eq!(k.len(), 32);
        assert_eq!(o.get(&k), d);
        let alice = Owner {
            mode: 0o640,
            uid: 1000,
            gid: 100,
        };
        o.set(&k, alice).unwrap();
        let again = Owners::load(&dir, d).unwrap();
        assert_eq!(again.get(&k), alice);
        again.remove(&k).unwrap();
        assert_eq!(Owners::load(&dir, d).unwrap().get(&k), d);
        std::fs::write(dir.join(OWNERS_FILE), b"garbage").unwrap();
        assert!(Owners::load(&dir, d).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
