//! The registry of pools: a small TOML file in the data directory, so that pools created at
//! run time reopen at the next start, and the rules on where a pool may be.

use super::local::is_local_volume;
use super::{Pool, PoolEnv, REGISTRY_FILE};
use crate::error::{Error, Result};
use crate::names::PoolUri;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// `path` with symlinks resolved as far as it exists (the rest appended as written), so that
/// paths can be compared for overlap before the pool directory is made.
fn resolve_path(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = cur.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(c)) => {
                rest.push(c.to_os_string());
                cur = parent;
            }
            _ => return path.to_path_buf(),
        }
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
    env: PoolEnv,
    pools: BTreeMap<String, Pool>,
}

impl Registry {
    /// Loads the registry from `data_dir` (an absent file is an empty registry), with default
    /// HDFS settings.
    pub fn load(data_dir: &Path) -> Result<Registry> {
        Registry::load_with(PoolEnv::new(data_dir))
    }

    /// Loads the registry from `env.data_dir`. HDFS pools that cannot be reached are kept,
    /// unavailable (logged), so that one dead NameNode does not stop the daemon.
    pub fn load_with(env: PoolEnv) -> Result<Registry> {
        let path = env.data_dir.join(REGISTRY_FILE);
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
            let pool = Pool::open(&p.name, PoolUri::parse(&p.uri)?, &env, false)?;
            pools.insert(p.name, pool);
        }
        Ok(Registry { path, env, pools })
    }

    /// Adds a pool and saves the registry. Re-adding a pool with the same URI is a no-op;
    /// the same name on another URI is an error. A new HDFS pool must answer (a wrong host,
    /// port or path is an error within the connect timeout). Returns whether anything changed.
    pub fn add(&mut self, name: &str, uri: PoolUri) -> Result<bool> {
        self.add_pool(name, uri, true)
    }

    /// As [`Registry::add`], for pools the configuration file declares: an HDFS pool that does
    /// not answer is registered anyway, unavailable (logged), so the daemon still starts.
    pub fn add_configured(&mut self, name: &str, uri: PoolUri) -> Result<bool> {
        self.add_pool(name, uri, false)
    }

    fn add_pool(&mut self, name: &str, uri: PoolUri, strict: bool) -> Result<bool> {
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
        self.check_overlap(&uri)?;
        let pool = Pool::open(name, uri, &self.env, strict)?;
        self.pools.insert(name.to_string(), pool);
        if let Err(e) = self.save() {
            self.pools.remove(name);
            return Err(e);
        }
        Ok(true)
    }

    /// Refuses a pool location that overlaps what is not its own: the root or a system tree
    /// (`/proc`, `/sys`, `/dev`), the daemon's data directory (other than a directory under
    /// `DATA/pools`) or one of its ancestors, another pool's directory (the same, inside it, or
    /// around it), or anything inside a volume. Symlinks are resolved first, so `/proc/self`
    /// or a link to another pool is seen for what it is.
    fn check_overlap(&self, uri: &PoolUri) -> Result<()> {
        let refuse = |why: String| Err(Error::invalid("pool URI", uri.to_uri(), why));
        match uri {
            PoolUri::Local(dir) => {
                let real = resolve_path(dir);
                if real == Path::new("/") {
                    return refuse("the root directory cannot be a pool".into());
                }
                for sys in ["/proc", "/sys", "/dev"] {
                    // /dev/shm is a tmpfs: a place for scratch volumes, not a device tree.
                    if real.starts_with(sys) && !real.starts_with("/dev/shm/") {
                        return refuse(format!("{sys} is not a place for volumes"));
                    }
                }
                for top in [
                    "/bin", "/boot", "/etc", "/lib", "/lib64", "/sbin", "/usr", "/var", "/home",
                    "/root", "/run", "/tmp", "/srv", "/opt", "/mnt", "/media",
                ] {
                    if real == Path::new(top) {
                        return refuse(format!(
                            "{top} is a system directory; use a directory of its own below it"
                        ));
                    }
                }
                let data = resolve_path(&self.env.data_dir);
                if data.starts_with(&real) {
                    return refuse(format!(
                        "it contains hlfsd's data directory {}",
                        data.display()
                    ));
                }
                if real.starts_with(&data) && real.parent() != Some(&data.join("pools")) {
                    return refuse(format!(
                        "inside hlfsd's data directory only {}/NAME may be a pool",
                        data.join("pools").display()
                    ));
                }
                for p in self.pools.values() {
                    if let PoolUri::Local(other) = p.uri() {
                        let other = resolve_path(other);
                        if real.starts_with(&other) || other.starts_with(&real) {
                            return refuse(format!(
                                "it overlaps pool {} on {}",
                                p.name(),
                                other.display()
                            ));
                        }
                    }
                }
                if let Some(v) = real.ancestors().find(|a| is_local_volume(a)) {
                    return refuse(format!("{} is an HLFS volume", v.display()));
                }
            }
            PoolUri::Hdfs(url) => {
                let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
                for p in self.pools.values() {
                    if let PoolUri::Hdfs(other) = p.uri() {
                        if inside(url, other) || inside(other, url) {
                            return refuse(format!("it overlaps pool {} on {other}", p.name()));
                        }
                    }
                }
            }
        }
        Ok(())
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
                    name: p.name().to_string(),
                    uri: p.uri().to_uri(),
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
    use hlfs_engine::{CreateOptions, OpenOptions};

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
        let v = p.create_volume("vol", &sz(1 << 20), &o).unwrap().volume;
        assert_eq!(v.size(), 1 << 20);
        assert!(matches!(
            p.create_volume("vol", &sz(1 << 20), &o),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            p.create_volume("../evil", &sz(1 << 20), &o),
            Err(Error::InvalidName { .. })
        ));
        // A 0-byte volume is what the FUSE view's open(O_CREAT) makes (the API refuses size 0
        // in the service): it holds no bytes and grows by resize.
        let mut z = p.create_volume("zero", &sz(0), &o).unwrap().volume;
        assert_eq!(z.size(), 0);
        z.resize(8192).unwrap();
        z.write(4096, &[3u8; 4096]).unwrap();
        z.close().unwrap();
        p.delete_volume("zero").unwrap();
        assert!(!p.has_volume("zero").unwrap());
        assert_eq!(p.list_volumes().unwrap(), vec!["vol".to_string()]);
        assert!(matches!(p.delete_volume("vol"), Err(Error::Busy(_))));
        v.close().unwrap();
        let v = p.open_volume("vol", &o).unwrap().volume;
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
