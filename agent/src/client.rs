//! The `hlfs` CLI's side of the D-Bus API: a connection (p2p socket or bus), untyped calls
//! and property reads, and the volume references users type (`pool/vol`, `vol`,
//! `local:///dir/vol`, `hdfs://host:port/dir/vol`, with `%snap` or `@snap`).

use crate::dbus::paths;
use crate::error::{Error, Result};
use crate::names::check_name;
use hlfs_client::socket;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use zbus::zvariant::{DynamicType, OwnedObjectPath, OwnedValue};

/// Properties of one object interface.
pub type Props = HashMap<String, OwnedValue>;

/// A connection to hlfsd.
pub struct Client {
    conn: zbus::Connection,
}

fn connect_err(context: String) -> impl FnOnce(zbus::Error) -> Error {
    move |e| Error::Connect {
        context,
        why: e.to_string(),
    }
}

fn remote(e: zbus::Error) -> Error {
    match e {
        zbus::Error::MethodError(name, msg, _) => Error::Remote {
            name: name.to_string(),
            message: msg.unwrap_or_else(|| name.to_string()),
        },
        zbus::Error::FDO(fe) => Error::Remote {
            name: "org.freedesktop.DBus.Error".into(),
            message: fe.to_string(),
        },
        e => Error::Connect {
            context: "D-Bus call".into(),
            why: e.to_string(),
        },
    }
}

impl Client {
    /// Connects by the socket rule ([`hlfs_client::socket`]): `socket` or `bus` alone if given,
    /// else `$HLFS_SOCKET`, else the caller's own daemon, `/run/hlfs/dbus.sock`, the system bus.
    pub async fn connect(socket: Option<&Path>, bus: Option<socket::Bus>) -> Result<Client> {
        let eps = socket::endpoints(socket, bus);
        match socket::try_connect(&eps).await {
            Ok((conn, _)) => Ok(Client { conn }),
            Err(tried) => Err(match &tried[..] {
                [(e, why)] => Error::Connect {
                    context: format!("cannot reach hlfsd at {e} (is it running?)"),
                    why: why.clone(),
                },
                _ => Error::Connect {
                    context: "cannot reach hlfsd (is it running?)".into(),
                    why: format!(
                        "tried {}",
                        tried
                            .iter()
                            .map(|(e, why)| format!("{e} ({why})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            }),
        }
    }

    /// Connects to hlfsd's peer-to-peer socket.
    pub async fn p2p(socket: &Path) -> Result<Client> {
        let ctx = format!(
            "cannot reach hlfsd at {} (is it running?)",
            socket.display()
        );
        let s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| Error::Connect {
                context: ctx.clone(),
                why: e.to_string(),
            })?;
        let conn = zbus::connection::Builder::unix_stream(s)
            .p2p()
            .build()
            .await
            .map_err(connect_err(ctx))?;
        Ok(Client { conn })
    }

    /// Connects through the session or system bus.
    pub async fn bus(system: bool) -> Result<Client> {
        let which = if system { "system" } else { "session" };
        let b = if system {
            zbus::connection::Builder::system()
        } else {
            zbus::connection::Builder::session()
        }
        .map_err(connect_err(format!("{which} bus")))?;
        let conn = b
            .build()
            .await
            .map_err(connect_err(format!("{which} bus")))?;
        Ok(Client { conn })
    }

    /// Calls `iface.method(body)` on `path` and decodes the reply.
    pub async fn call<B, R>(&self, path: &str, iface: &str, method: &str, body: &B) -> Result<R>
    where
        B: Serialize + DynamicType,
        R: DeserializeOwned + zbus::zvariant::Type,
    {
        let msg = match self
            .conn
            .call_method(Some(paths::SERVICE), path, Some(iface), method, body)
            .await
        {
            Ok(m) => m,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.UnknownObject" =>
            {
                return Err(self.not_found(path).await)
            }
            Err(e) => return Err(remote(e)),
        };
        msg.body().deserialize::<R>().map_err(|e| Error::Connect {
            context: format!("reply to {method}"),
            why: e.to_string(),
        })
    }

    /// The error for an unknown object. Volumes of a pool that is unavailable (an HDFS pool
    /// whose NameNode does not answer) have no objects: then that is the reason to give.
    async fn not_found(&self, path: &str) -> Error {
        let parts = path_parts(path);
        if let ["pool", pool, _, ..] = parts.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            let status = self
                .conn
                .call_method(
                    Some(paths::SERVICE),
                    paths::pool(pool).as_str(),
                    Some("org.freedesktop.DBus.Properties"),
                    "Get",
                    &("org.hlfs.Pool1", "Status"),
                )
                .await
                .ok()
                .and_then(|m| m.body().deserialize::<OwnedValue>().ok())
                .and_then(|v| String::try_from(v).ok());
            if let Some(why) = status
                .as_deref()
                .and_then(|s| s.strip_prefix("unavailable: "))
            {
                return Error::Unavailable {
                    what: format!("pool {pool}"),
                    why: why.to_string(),
                };
            }
        }
        Error::NotFound(describe(path))
    }

    /// All properties of `iface` on `path`.
    pub async fn props(&self, path: &str, iface: &str) -> Result<Props> {
        self.call(path, "org.freedesktop.DBus.Properties", "GetAll", &(iface,))
            .await
    }

    /// `(name, path)` of every pool.
    pub async fn pools(&self) -> Result<Vec<(String, OwnedObjectPath)>> {
        self.call(paths::ROOT, "org.hlfs.Manager1", "ListPools", &())
            .await
    }

    /// Resolves what the user typed for a command that acts on a volume: a snapshot reference
    /// (`VOLUME%SNAP`) is refused, never silently taken for its volume (a `volume delete` of
    /// `vm%snap` must not delete `vm`).
    pub async fn resolve_volume(&self, spec: &str) -> Result<VolRef> {
        let r = self.resolve(spec).await?;
        match &r.snapshot {
            Some(s) => Err(Error::invalid(
                "volume",
                spec,
                format!(
                    "this command takes a volume, and {spec:?} names snapshot {s:?} of {}/{} \
                     (snapshots are managed with `hlfs snapshot ...`)",
                    r.pool, r.volume
                ),
            )),
            None => Ok(r),
        }
    }

    /// Resolves what the user typed into `(pool, volume, snapshot)`.
    pub async fn resolve(&self, spec: &str) -> Result<VolRef> {
        let (path, snap) = split_snapshot(spec);
        let scheme = ["local://", "hdfs://"]
            .into_iter()
            .find(|s| path.starts_with(s));
        let (pool, volume) = if let Some(scheme) = scheme {
            let rest = &path[scheme.len()..];
            let (dir, vol) = rest.rsplit_once('/').ok_or_else(|| {
                Error::invalid(
                    "volume",
                    spec,
                    "expected local:///POOL-DIR/VOLUME or hdfs://HOST:PORT/POOL-DIR/VOLUME",
                )
            })?;
            let want = format!("{scheme}{}", dir.trim_end_matches('/'));
            let mut found = None;
            for (name, p) in self.pools().await? {
                let props = self.props(p.as_str(), "org.hlfs.Pool1").await?;
                if prop_str(&props, "Uri") == want {
                    found = Some(name);
                    break;
                }
            }
            let pool = found.ok_or_else(|| {
                Error::NotFound(format!("a pool on {want} (see `hlfs pool list`)"))
            })?;
            (pool, vol.to_string())
        } else if let Some((p, v)) = path.split_once('/') {
            (p.to_string(), v.to_string())
        } else {
            (crate::daemon::DEFAULT_POOL.to_string(), path.to_string())
        };
        check_name("pool", &pool)?;
        check_name("volume", &volume)?;
        if let Some(s) = &snap {
            check_name("snapshot", s)?;
        }
        Ok(VolRef {
            pool,
            volume,
            snapshot: snap,
        })
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
fn describe(path: &str) -> String {
    let parts = path_parts(path);
    match parts.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["pool", p] => format!("pool {p}"),
        ["pool", p, v] => format!("volume {p}/{v}"),
        ["pool", p, v, s] => format!("snapshot {p}/{v}%{s}"),
        ["job", j] => format!("job {j}"),
        _ => format!("object {path}"),
    }
}

/// A resolved volume (or snapshot) reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolRef {
    pub pool: String,
    pub volume: String,
    pub snapshot: Option<String>,
}

impl VolRef {
    pub fn path(&self) -> String {
        paths::volume(&self.pool, &self.volume).to_string()
    }
}

impl std::fmt::Display for VolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.volume)?;
        if let Some(s) = &self.snapshot {
            write!(f, "%{s}")?;
        }
        Ok(())
    }
}

/// Splits `X%snap` or `X@snap` (HLFS URI and NBD export forms).
fn split_snapshot(s: &str) -> (&str, Option<String>) {
    match s.rsplit_once(['%', '@']) {
        Some((p, snap)) => (p, Some(snap.to_string())),
        None => (s, None),
    }
}

pub fn prop_str(p: &Props, k: &str) -> String {
    p.get(k)
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_default()
}

pub fn prop_u64(p: &Props, k: &str) -> u64 {
    p.get(k).and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

pub fn prop_u32(p: &Props, k: &str) -> u32 {
    p.get(k).and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

pub fn prop_f64(p: &Props, k: &str) -> f64 {
    p.get(k).and_then(|v| f64::try_from(v).ok()).unwrap_or(0.0)
}

pub fn prop_bool(p: &Props, k: &str) -> bool {
    p.get(k)
        .and_then(|v| bool::try_from(v).ok())
        .unwrap_or(false)
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
    }

    #[test]
    fn snapshot_suffixes() {
        assert_eq!(super::split_snapshot("p/v%s"), ("p/v", Some("s".into())));
        assert_eq!(super::split_snapshot("v@s"), ("v", Some("s".into())));
        assert_eq!(
            super::split_snapshot("local:///d/v"),
            ("local:///d/v", None)
        );
    }
}
