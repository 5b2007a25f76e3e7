//! Pools: a pool is a named directory (a `local:///` backend URI) whose subdirectories are
//! volumes, one engine namespace each. The registry of pools is a small TOML file in the data
//! directory, so that pools created at run time reopen at the next start.

use crate::error::{Error, Result};
use crate::names::{check_name, PoolUri};
use hlfs_engine::{Backend, CreateOptions, LocalBackend, OpenOptions, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Registry file name inside the data directory.
pub const REGISTRY_FILE: &str = "pools.toml";

/// One pool.
#[derive(Debug, Clone)]
pub struct Pool {
    name: String,
    uri: PoolUri,
}

impl Pool {
    /// A pool on `uri`; its directory is created if missing.
    pub fn open(name: &str, uri: PoolUri) -> Result<Pool> {
        check_name("pool", name)?;
        let PoolUri::Local(dir) = &uri;
        fs::create_dir_all(dir).map_err(|e| Error::io("create pool directory", dir, e))?;
        Ok(Pool {
            name: name.to_string(),
            uri,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uri(&self) -> &PoolUri {
        &self.uri
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        let PoolUri::Local(dir) = &self.uri;
        dir
    }

    /// The directory of volume `name` (validated, so it is always inside the pool).
    pub fn volume_dir(&self, name: &str) -> Result<PathBuf> {
        check_name("volume", name)?;
        Ok(self.dir().join(name))
    }

    fn label(&self, volume: &str) -> String {
        format!("volume {}/{}", self.name, volume)
    }

    /// Whether volume `name` exists.
    pub fn has_volume(&self, name: &str) -> Result<bool> {
        Ok(self.volume_dir(name)?.is_dir())
    }

    /// Names of the volumes in the pool, sorted. Entries that are not valid volume names (stray
    /// files, hidden directories) are ignored.
    pub fn list_volumes(&self) -> Result<Vec<String>> {
        let rd = fs::read_dir(self.dir()).map_err(|e| Error::io("list pool", self.dir(), e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list pool", self.dir(), e))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                if check_name("volume", name).is_ok() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates volume `name` (size and layout from `opts`) and returns it open. Fails if it
    /// exists.
    pub fn create_volume(
        &self,
        name: &str,
        opts: &CreateOptions,
        open: &OpenOptions,
    ) -> Result<Volume> {
        let dir = self.volume_dir(name)?;
        let size = opts.size;
        if size == 0 {
            return Err(Error::invalid(
                "size",
                "0",
                "a volume needs a size above zero",
            ));
        }
        if size > hlfs_engine::MAX_SIZE {
            return Err(Error::invalid(
                "size",
                size.to_string(),
                format!("the largest volume is {} bytes", hlfs_engine::MAX_SIZE),
            ));
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::Exists(self.label(name)))
            }
            Err(e) => return Err(Error::io("create volume directory", &dir, e)),
        }
        let made = (|| {
            let backend: Arc<dyn Backend> = Arc::new(
                LocalBackend::new(&dir)
                    .map_err(|e| Error::engine(format!("create {}", self.label(name)), e))?,
            );
            Volume::create(backend, opts, open)
                .map_err(|e| Error::engine(format!("create {}", self.label(name)), e))
        })();
        if made.is_err() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a half-created volume");
            }
        }
        made
    }

    /// Creates volume `name` as a clone of `base`'s snapshot `snapshot` (no data copied; the
    /// snapshot becomes protected) and returns it open. Fails if it exists.
    pub fn create_clone(
        &self,
        name: &str,
        base: &mut Volume,
        snapshot: &str,
        open: &OpenOptions,
    ) -> Result<Volume> {
        let dir = self.volume_dir(name)?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::Exists(self.label(name)))
            }
            Err(e) => return Err(Error::io("create volume directory", &dir, e)),
        }
        let what = format!(
            "clone {}%{snapshot} as {}",
            base.location(),
            self.label(name)
        );
        let ctx = || what.clone();
        let made = LocalBackend::new(&dir)
            .map_err(|e| Error::engine(ctx(), e))
            .and_then(|b| {
                let backend: Arc<dyn Backend> = Arc::new(b);
                Volume::create_clone(base, snapshot, backend, &CreateOptions::default(), open)
                    .map_err(|e| Error::engine(ctx(), e))
            });
        if made.is_err() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a half-created clone");
            }
        }
        made
    }

    /// Opens volume `name` for writing (recovering it if the last run crashed).
    pub fn open_volume(&self, name: &str, open: &OpenOptions) -> Result<Volume> {
        let dir = self.volume_dir(name)?;
        if !dir.is_dir() {
            return Err(Error::NotFound(self.label(name)));
        }
        let ctx = || format!("open {}", self.label(name));
        let backend: Arc<dyn Backend> =
            Arc::new(LocalBackend::new(&dir).map_err(|e| Error::engine(ctx(), e))?);
        Volume::open(backend, open).map_err(|e| Error::engine(ctx(), e))
    }

    /// Removes the pool's directory if it is empty (a pool with volumes is never removed).
    pub fn remove_dir_if_empty(&self) -> Result<()> {
        if !self.list_volumes()?.is_empty() {
            return Err(Error::Busy(format!("pool {} has volumes", self.name)));
        }
        match fs::remove_dir(self.dir()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            // Stray files that are not volumes: keep the directory, forget the pool anyway.
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Ok(()),
            Err(e) => Err(Error::io("remove pool directory", self.dir(), e)),
        }
    }

    /// Deletes volume `name` and all its data. Takes the volume's writer lease first, so a
    /// volume open anywhere (this daemon or another process) is never deleted under its user.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let dir = self.volume_dir(name)?;
        if !dir.is_dir() {
            return Err(Error::NotFound(self.label(name)));
        }
        let backend = LocalBackend::new(&dir)
            .map_err(|e| Error::engine(format!("delete {}", self.label(name)), e))?;
        let _lease = backend.lease("hlfsd (deleting)").map_err(|e| match e {
            hlfs_engine::Error::Locked { holder, .. } => Error::Busy(format!(
                "{} is open (by {holder}); close it first",
                self.label(name)
            )),
            e => Error::engine(format!("delete {}", self.label(name)), e),
        })?;
        fs::remove_dir_all(&dir).map_err(|e| Error::io("delete volume", &dir, e))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default, rename = "pool")]
    pools: Vec<RegistryEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryEntry {
    name: String,
    uri: String,
}

/// The persistent set of pools.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    pools: BTreeMap<String, Pool>,
}

impl Registry {
    /// Loads the registry from `data_dir` (an absent file is an empty registry).
    pub fn load(data_dir: &Path) -> Result<Registry> {
        let path = data_dir.join(REGISTRY_FILE);
        let file: RegistryFile = match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::Config {
                path: path.clone(),
                why: format!("pool registry unreadable: {e}"),
            })?,
            Err(e) if e.kind() == ErrorKind::NotFound => RegistryFile::default(),
            Err(e) => return Err(Error::io("read pool registry", &path, e)),
        };
        let mut pools = BTreeMap::new();
        for p in file.pools {
            let pool = Pool::open(&p.name, PoolUri::parse(&p.uri)?)?;
            pools.insert(p.name, pool);
        }
        Ok(Registry { path, pools })
    }

    /// Adds a pool and saves the registry. Re-adding a pool with the same URI is a no-op;
    /// the same name on another URI is an error. Returns whether anything changed.
    pub fn add(&mut self, name: &str, uri: PoolUri) -> Result<bool> {
        if let Some(p) = self.pools.get(name) {
            if *p.uri() == uri {
                return Ok(false);
            }
            return Err(Error::Exists(format!(
                "pool {name} (on {}, not {})",
                p.uri().to_uri(),
                uri.to_uri()
            )));
        }
        let pool = Pool::open(name, uri)?;
        self.pools.insert(name.to_string(), pool);
        if let Err(e) = self.save() {
            self.pools.remove(name);
            return Err(e);
        }
        Ok(true)
    }

    /// Forgets a pool (its data stays where it is) and saves the registry.
    pub fn remove(&mut self, name: &str) -> Result<Pool> {
        let pool = self
            .pools
            .remove(name)
            .ok_or_else(|| Error::NotFound(format!("pool {name}")))?;
        if let Err(e) = self.save() {
            self.pools.insert(name.to_string(), pool);
            return Err(e);
        }
        Ok(pool)
    }

    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Pools in name order.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Writes the registry atomically (temporary file, fsync, rename).
    fn save(&self) -> Result<()> {
        let file = RegistryFile {
            pools: self
                .pools
                .values()
                .map(|p| RegistryEntry {
                    name: p.name.clone(),
                    uri: p.uri.to_uri(),
                })
                .collect(),
        };
        let text = toml::to_string(&file).map_err(|e| Error::Config {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("create data directory", dir, e))?;
        }
        let tmp = self.path.with_extension("toml.tmp");
        let mut f =
            fs::File::create(&tmp).map_err(|e| Error::io("write pool registry", &tmp, e))?;
        f.write_all(b"# HLFS pool registry, maintained by hlfsd.\n")
            .and_then(|()| f.write_all(text.as_bytes()))
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write pool registry", &tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| Error::io("replace pool registry", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hlfs-pools-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn registry_persists_and_volumes_live_in_pools() {
        let data = tmp("reg");
        let mut r = Registry::load(&data).unwrap();
        let uri = PoolUri::Local(data.join("pools/p1"));
        assert!(r.add("p1", uri.clone()).unwrap());
        assert!(!r.add("p1", uri.clone()).unwrap());
        assert!(matches!(
            r.add("p1", PoolUri::Local(data.join("x"))),
            Err(Error::Exists(_))
        ));
        let r2 = Registry::load(&data).unwrap();
        let p = r2.get("p1").unwrap();
        assert_eq!(p.uri(), &uri);

        let o = OpenOptions::default();
        let sz = |size| CreateOptions {
            size,
            ..Default::default()
        };
        let v = p.create_volume("vol", &sz(1 << 20), &o).unwrap();
        assert_eq!(v.size(), 1 << 20);
        assert!(matches!(
            p.create_volume("vol", &sz(1 << 20), &o),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            p.create_volume("../evil", &sz(1 << 20), &o),
            Err(Error::InvalidName { .. })
        ));
        assert!(p.create_volume("zero", &sz(0), &o).is_err());
        assert!(!p.has_volume("zero").unwrap());
        assert_eq!(p.list_volumes().unwrap(), vec!["vol".to_string()]);
        assert!(matches!(p.delete_volume("vol"), Err(Error::Busy(_))));
        v.close().unwrap();
        let v = p.open_volume("vol", &o).unwrap();
        v.close().unwrap();
        p.delete_volume("vol").unwrap();
        assert!(p.list_volumes().unwrap().is_empty());
        assert!(matches!(p.open_volume("vol", &o), Err(Error::NotFound(_))));

        let mut r3 = Registry::load(&data).unwrap();
        r3.remove("p1").unwrap();
        assert!(Registry::load(&data).unwrap().get("p1").is_none());
        fs::remove_dir_all(&data).unwrap();
    }
}
