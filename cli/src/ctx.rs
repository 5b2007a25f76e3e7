//! The connection to hlfsd, typed proxies of its objects, and what the user typed resolved into
//! objects (`POOL/VOLUME`, `VOLUME`, HLFS URIs, `%SNAP` or `@SNAP`).

use crate::error::Result;
use hlfs_client::names::{check_name, Location, PoolRef};
use hlfs_client::proxy::{Job1Proxy, Manager1Proxy, Pool1Proxy, Snapshot1Proxy, Volume1Proxy};
use hlfs_client::{paths, HlfsError};
use std::path::Path;
use zbus::proxy::{CacheProperties, Defaults};
use zbus::zvariant::OwnedObjectPath;

/// The pool a bare volume name belongs to (hlfsd's embedded default pool).
pub const DEFAULT_POOL: &str = "default";

/// A connection to hlfsd.
pub struct Ctx {
    conn: zbus::Connection,
}

impl Ctx {
    /// Connects by the socket rule ([`hlfs_client::socket`]); the error (`Unavailable`) names
    /// every place tried.
    pub async fn connect(
        socket: Option<&Path>,
        bus: Option<hlfs_client::socket::Bus>,
    ) -> Result<Ctx> {
        let eps = hlfs_client::socket::endpoints(socket, bus);
        let (conn, _) = hlfs_client::socket::connect(&eps).await?;
        Ok(Ctx { conn })
    }

    /// A proxy of type `P` for the object at `path`. `cached`: all its properties are read at
    /// once (one GetAll) and kept current by PropertiesChanged signals.
    async fn proxy<P>(&self, path: &OwnedObjectPath, cached: bool) -> Result<P>
    where
        P: From<zbus::Proxy<'static>> + Defaults,
    {
        let cache = if cached {
            CacheProperties::Yes
        } else {
            CacheProperties::No
        };
        let built = zbus::proxy::Builder::<P>::new(&self.conn)
            .path(path.clone())
            .map_err(HlfsError::from)?
            .cache_properties(cache)
            .build()
            .await;
        match built {
            Ok(p) => Ok(p),
            Err(e) => Err(self.absent(path, e.into()).await.into()),
        }
    }

    pub async fn manager(&self) -> Result<Manager1Proxy<'static>> {
        self.proxy(
            &OwnedObjectPath::try_from(paths::ROOT).map_err(HlfsError::from)?,
            false,
        )
        .await
    }

    pub async fn pool(&self, name: &str, cached: bool) -> Result<Pool1Proxy<'static>> {
        self.proxy(&paths::pool(name), cached).await
    }

    pub async fn volume(&self, t: &Target, cached: bool) -> Result<Volume1Proxy<'static>> {
        self.proxy(&t.volume_path(), cached).await
    }

    pub async fn volume_at(
        &self,
        path: &OwnedObjectPath,
        cached: bool,
    ) -> Result<Volume1Proxy<'static>> {
        self.proxy(path, cached).await
    }

    pub async fn snapshot_at(&self, path: &OwnedObjectPath) -> Result<Snapshot1Proxy<'static>> {
        self.proxy(path, true).await
    }

    pub async fn job(&self, path: &OwnedObjectPath) -> Result<Job1Proxy<'static>> {
        self.proxy(path, true).await
    }

    pub fn conn(&self) -> &zbus::Connection {
        &self.conn
    }

    /// `r`, with an unknown object turned into `NotFound` naming what the path stands for.
    pub async fn at<T>(&self, path: &OwnedObjectPath, r: Result<T, HlfsError>) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.absent(path, e).await.into()),
        }
    }

    /// The error for a call on `path` that failed with `e`: an unknown object is `NotFound`,
    /// or `Unavailable` when its pool is an HDFS pool whose NameNode does not answer (the
    /// volumes of such a pool have no objects).
    pub async fn absent(&self, path: &OwnedObjectPath, e: HlfsError) -> HlfsError {
        if e.error_name() != "org.freedesktop.DBus.Error.UnknownObject" {
            return e;
        }
        let parts = path_parts(path.as_str());
        if let ["pool", pool, _, ..] = parts.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            let status = pool_status(&self.conn, pool).await.ok();
            if let Some(why) = status
                .as_deref()
                .and_then(|s| s.strip_prefix("unavailable: "))
            {
                return HlfsError::Unavailable(format!("pool {pool} is unavailable: {why}"));
            }
        }
        HlfsError::NotFound(format!("{} not found", describe(path.as_str())))
    }

    /// `(name, object)` of every pool.
    pub async fn pools(&self) -> Result<Vec<(String, OwnedObjectPath)>> {
        let m = self.manager().await?;
        Ok(m.list_pools().await?)
    }

    /// Resolves what the user typed into a volume or a snapshot of one.
    pub async fn resolve(&self, spec: &str) -> Result<Target> {
        // `VOL%SNAP` and `VOL@SNAP` name a snapshot of a volume of the default pool, as `VOL`
        // names the volume.
        let bare_snapshot =
            !spec.contains("://") && !spec.contains('/') && spec.contains(['%', '@']);
        let loc = if bare_snapshot {
            Location::parse(&format!("{DEFAULT_POOL}/{spec}"))?
        } else {
            Location::parse_volume(spec, DEFAULT_POOL)?
        };
        let pool = match &loc.pool {
            PoolRef::Name(n) => n.clone(),
            PoolRef::Uri(want) => {
                let mut found = None;
                for (name, _) in self.pools().await? {
                    let p = self.pool(&name, false).await?;
                    if p.uri().await.map_err(HlfsError::from)? == *want {
                        found = Some(name);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    HlfsError::NotFound(format!(
                        "a pool on {want} not found (see `hlfs pool list`)"
                    ))
                })?
            }
        };
        let volume = loc.volume.clone().unwrap_or_default();
        check_name("volume", &volume)?;
        Ok(Target {
            pool,
            volume,
            snapshot: loc.snapshot,
        })
    }

    /// Resolves a reference for a command that acts on a volume: a snapshot reference
    /// (`VOLUME%SNAP`) is refused, never silently taken for its volume (a `volume delete` of
    /// `vm%snap` must not delete `vm`).
    pub async fn resolve_volume(&self, spec: &str) -> Result<Target> {
        let t = self.resolve(spec).await?;
        match &t.snapshot {
            Some(s) => Err(HlfsError::invalid(
                "volume",
                spec,
                format!(
                    "this command takes a volume, and {spec:?} names snapshot {s:?} of {}/{} \
                     (snapshots are managed with `hlfs snapshot ...`)",
                    t.pool, t.volume
                ),
            )
            .into()),
            None => Ok(t),
        }
    }

    /// Resolves a reference for a command that acts on a snapshot (`VOLUME%SNAP`).
    pub async fn resolve_snapshot(&self, spec: &str) -> Result<(Target, String)> {
        let t = self.resolve(spec).await?;
        match t.snapshot.clone() {
            Some(s) => Ok((t, s)),
            None => Err(HlfsError::invalid("snapshot", spec, "expected VOLUME%SNAPSHOT").into()),
        }
    }
}

/// The `Status` of pool `name` (empty, or `unavailable: why`).
async fn pool_status(conn: &zbus::Connection, name: &str) -> zbus::Result<String> {
    Pool1Proxy::builder(conn)
        .path(paths::pool(name))?
        .cache_properties(CacheProperties::No)
        .build()
        .await?
        .status()
        .await
}

/// A resolved volume, or snapshot of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pool: String,
    pub volume: String,
    pub snapshot: Option<String>,
}

impl Target {
    pub fn volume_path(&self) -> OwnedObjectPath {
        paths::volume(&self.pool, &self.volume)
    }

    /// `POOL/VOLUME`, without the snapshot.
    pub fn volume_name(&self) -> String {
        format!("{}/{}", self.pool, self.volume)
    }
}

impl std::fmt::Display for Target {
    /// `POOL/VOLUME[%SNAP]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.volume)?;
        if let Some(s) = &self.snapshot {
            write!(f, "%{s}")?;
        }
        Ok(())
    }
}

/// The unescaped elements of an object path below the root: `["pool", "p", "v"]`.
fn path_parts(path: &str) -> Vec<String> {
    let rest = path.strip_prefix(paths::ROOT).unwrap_or(path);
    rest.split('/')
        .filter(|s| !s.is_empty())
        .map(|e| paths::unescape(e).unwrap_or_else(|| e.to_string()))
        .collect()
}

/// What an object path names, for "not found" messages: `volume pool/vol`, `pool p`, ...
pub fn describe(path: &str) -> String {
    let parts = path_parts(path);
    match parts.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["pool", p] => format!("pool {p}"),
        ["pool", p, v] => format!("volume {p}/{v}"),
        ["pool", p, v, s] => format!("snapshot {p}/{v}%{s}"),
        ["job", j] => format!("job {j}"),
        _ => format!("object {path}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn describes_paths() {
        assert_eq!(
            super::describe("/org/hlfs/Hlfs1/pool/a/disk_2d1"),
            "volume a/disk-1"
        );
        assert_eq!(super::describe("/org/hlfs/Hlfs1/pool/a"), "pool a");
        assert_eq!(
            super::describe("/org/hlfs/Hlfs1/pool/a/v/s"),
            "snapshot a/v%s"
        );
        assert_eq!(super::describe("/org/hlfs/Hlfs1/job/7"), "job 7");
    }
}
