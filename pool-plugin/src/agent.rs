//! hlfsd as the plugin sees it: its pools and volumes through `hlfs-client`'s proxies, found
//! with the client crate's socket rule, and where its NBD socket and FUSE view are.

use crate::domain_xml::PoolTable;
use hlfs_client::paths;
use hlfs_client::proxy::{Manager1Proxy, Pool1Proxy, Volume1Proxy};
use hlfs_client::socket::{self, Endpoint};
use hlfs_client::{HlfsError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use zbus::zvariant::Value;

/// A connection to hlfsd.
pub struct Agent {
    pub conn: zbus::Connection,
    pub endpoint: Endpoint,
}

/// One volume with what `vol-list` and `vol-dumpxml` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    pub name: String,
    pub size: u64,
    pub allocated: u64,
    pub physical: u64,
    pub base: String,
}

impl Agent {
    /// Connects by the socket rule (`socket`, `$HLFS_SOCKET`, the caller's own daemon, the system
    /// daemon, the system bus).
    pub async fn connect(socket: Option<&Path>) -> Result<Agent> {
        let eps = socket::endpoints(socket, None);
        let (conn, endpoint) = socket::connect(&eps).await?;
        Ok(Agent { conn, endpoint })
    }

    /// hlfsd's NBD socket: `explicit`, else `$HLFS_NBD_SOCKET`, else what hlfsd says it
    /// serves NBD on (Manager1 `NbdSocket`). An hlfsd too old to say is an error naming the
    /// option, rather than a guess that would put a wrong path into a domain.
    pub async fn nbd_socket(&self, explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("HLFS_NBD_SOCKET").filter(|s| !s.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let s = self.manager().await?.nbd_socket().await.map_err(|e| {
            HlfsError::NotSupported(format!(
                "hlfsd did not say where it serves NBD (Manager1 NbdSocket: {e}); \
                 give --nbd-socket PATH"
            ))
        })?;
        if s.is_empty() {
            return Err(HlfsError::Unavailable(
                "hlfsd serves no NBD Unix socket (Manager1 NbdSocket is empty)".into(),
            ));
        }
        Ok(PathBuf::from(s))
    }

    /// Where hlfsd's FUSE view is mounted (Manager1 `FuseMountpoint`), `None` when it is not
    /// (or when this hlfsd has no FUSE view).
    pub async fn fuse_mountpoint(&self) -> Option<PathBuf> {
        let p = zbus::Proxy::new(&self.conn, paths::SERVICE, paths::ROOT, "org.hlfs.Manager1")
            .await
            .ok()?;
        let m: String = p.get_property("FuseMountpoint").await.ok()?;
        (!m.is_empty()).then(|| PathBuf::from(m))
    }

    async fn manager(&self) -> Result<Manager1Proxy<'_>> {
        Ok(Manager1Proxy::new(&self.conn).await?)
    }

    async fn pool_proxy(&self, name: &str) -> Result<Pool1Proxy<'_>> {
        Ok(Pool1Proxy::builder(&self.conn)
            .path(paths::pool(name))?
            .build()
            .await?)
    }

    async fn volume_proxy(&self, pool: &str, vol: &str) -> Result<Volume1Proxy<'_>> {
        Ok(Volume1Proxy::builder(&self.conn)
            .path(paths::volume(pool, vol))?
            .build()
            .await?)
    }

    /// Every pool as `(name, uri)`.
    pub async fn pools(&self) -> Result<PoolTable> {
        let mut pools = Vec::new();
        for (name, _) in self.manager().await?.list_pools().await? {
            let uri = self.pool_proxy(&name).await?.uri().await?;
            pools.push((name, uri));
        }
        Ok(PoolTable { pools })
    }

    /// The pool a user named: its name, its URI, or the seeds' `hlfs:URI` target path.
    pub async fn find_pool(&self, arg: &str) -> Result<(String, String)> {
        let table = self.pools().await?;
        let a = arg.strip_prefix("hlfs:").unwrap_or(arg);
        table
            .by_name(a)
            .or_else(|| table.by_uri(a))
            .cloned()
            .ok_or_else(|| {
                HlfsError::NotFound(format!("no HLFS pool named {arg:?} (by name or URI)"))
            })
    }

    /// Adds a pool; whether it was new.
    pub async fn create_pool(&self, name: &str, uri: &str) -> Result<bool> {
        Ok(self.manager().await?.create_pool(name, uri).await?.1)
    }

    /// Forgets an empty pool.
    pub async fn delete_pool(&self, name: &str) -> Result<bool> {
        self.manager().await?.delete_pool(name).await
    }

    /// The volumes of a pool with their figures.
    pub async fn volumes(&self, pool: &str) -> Result<Vec<VolumeEntry>> {
        let mut out = Vec::new();
        for (name, _) in self.pool_proxy(pool).await?.list_volumes().await? {
            out.push(self.volume(pool, &name).await?);
        }
        Ok(out)
    }

    /// One volume's figures.
    pub async fn volume(&self, pool: &str, name: &str) -> Result<VolumeEntry> {
        let v = self.volume_proxy(pool, name).await?;
        let size = v.size().await.map_err(|e| not_found(pool, name, e))?;
        Ok(VolumeEntry {
            name: name.to_string(),
            size,
            allocated: v.allocated().await.unwrap_or(0),
            physical: v.physical().await.unwrap_or(0),
            base: v.base().await.unwrap_or_default(),
        })
    }

    /// Creates a volume of `size` bytes.
    pub async fn create_volume(&self, pool: &str, name: &str, size: u64) -> Result<()> {
        let opts: HashMap<&str, Value<'_>> = HashMap::new();
        self.pool_proxy(pool)
            .await?
            .create_volume(name, size, opts)
            .await?;
        Ok(())
    }

    /// Clones `base_pool/base_vol@snap` into `pool/name`.
    pub async fn clone_volume(
        &self,
        base_pool: &str,
        base_vol: &str,
        snap: &str,
        pool: &str,
        name: &str,
    ) -> Result<()> {
        self.volume_proxy(base_pool, base_vol)
            .await?
            .clone(snap, pool, name)
            .await?;
        Ok(())
    }

    /// Resizes a volume.
    pub async fn resize_volume(&self, pool: &str, name: &str, size: u64) -> Result<bool> {
        self.volume_proxy(pool, name).await?.resize(size).await
    }

    /// Deletes a volume and its data.
    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<bool> {
        self.pool_proxy(pool).await?.delete_volume(name).await
    }
}

fn not_found(pool: &str, name: &str, e: zbus::Error) -> HlfsError {
    match &e {
        zbus::Error::MethodError(n, _, _)
            if n.as_str() == "org.freedesktop.DBus.Error.UnknownObject"
                || n.as_str() == "org.freedesktop.DBus.Error.UnknownMethod"
                || n.as_str() == "org.freedesktop.DBus.Error.UnknownInterface" =>
        {
            HlfsError::NotFound(format!("no volume {name:?} in HLFS pool {pool:?}"))
        }
        _ => HlfsError::ZBus(e),
    }
}
