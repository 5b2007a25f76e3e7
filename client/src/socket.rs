//! The socket rule: where a client finds hlfsd when it is told nothing.
//!
//! 1. `$HLFS_SOCKET` or an explicit socket, alone (nothing else is tried);
//! 2. otherwise the caller's own daemon, `RUNTIME_DIR/dbus.sock` (`/run/hlfs` for root, else
//!    `$XDG_RUNTIME_DIR/hlfs`, else `/tmp/hlfs-$UID`);
//! 3. then the system daemon's p2p socket, `/run/hlfs/dbus.sock` (a member of group `hlfs`
//!    manages it with no flags);
//! 4. then `org.hlfs.Hlfs1` on the system bus.
//!
//! When none answers, the error names every place tried and why each failed.

use crate::error::{HlfsError, Result};
use crate::paths;
use std::path::{Path, PathBuf};

/// The system daemon's runtime directory.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/hlfs";

/// Which bus, when reaching hlfsd through one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    Session,
    System,
}

/// A place where hlfsd may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// hlfsd's peer-to-peer D-Bus socket.
    Socket(PathBuf),
    /// `org.hlfs.Hlfs1` on a bus.
    Bus(Bus),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(p) => write!(f, "{}", p.display()),
            Endpoint::Bus(Bus::System) => write!(f, "the system bus"),
            Endpoint::Bus(Bus::Session) => write!(f, "the session bus"),
        }
    }
}

/// The runtime directory of a daemon run by `uid` with `xdg_runtime_dir` set as given (what
/// hlfsd itself uses when not told otherwise).
pub fn runtime_dir(uid: u32, xdg_runtime_dir: Option<&Path>) -> PathBuf {
    if uid == 0 {
        return PathBuf::from(SYSTEM_RUNTIME_DIR);
    }
    match xdg_runtime_dir.filter(|p| p.is_absolute()) {
        Some(d) => d.join("hlfs"),
        None => PathBuf::from(format!("/tmp/hlfs-{uid}")),
    }
}

/// Where to look, in order, for a caller with `uid` and `$XDG_RUNTIME_DIR`, given no socket.
pub fn default_endpoints(uid: u32, xdg_runtime_dir: Option<&Path>) -> Vec<Endpoint> {
    let own = runtime_dir(uid, xdg_runtime_dir).join("dbus.sock");
    let system = Path::new(SYSTEM_RUNTIME_DIR).join("dbus.sock");
    let mut v = vec![Endpoint::Socket(own.clone())];
    if own != system {
        v.push(Endpoint::Socket(system));
    }
    v.push(Endpoint::Bus(Bus::System));
    v
}

/// The endpoints for this process: `socket` (or `$HLFS_SOCKET`) alone if given, `bus` alone if
/// given, else [`default_endpoints`].
pub fn endpoints(socket: Option<&Path>, bus: Option<Bus>) -> Vec<Endpoint> {
    if let Some(b) = bus {
        return vec![Endpoint::Bus(b)];
    }
    if let Some(s) = socket {
        return vec![Endpoint::Socket(s.to_path_buf())];
    }
    if let Some(s) = std::env::var_os("HLFS_SOCKET").filter(|s| !s.is_empty()) {
        return vec![Endpoint::Socket(PathBuf::from(s))];
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    default_endpoints(uid, xdg.as_deref())
}

/// Connects to one endpoint. A bus counts only if hlfsd owns its name there.
pub async fn connect_to(e: &Endpoint) -> std::result::Result<zbus::Connection, String> {
    match e {
        Endpoint::Socket(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| e.to_string())?;
            zbus::connection::Builder::unix_stream(s)
                .p2p()
                .build()
                .await
                .map_err(|e| e.to_string())
        }
        Endpoint::Bus(b) => {
            let builder = match b {
                Bus::System => zbus::connection::Builder::system(),
                Bus::Session => zbus::connection::Builder::session(),
            }
            .map_err(|e| e.to_string())?;
            let conn = builder.build().await.map_err(|e| e.to_string())?;
            let dbus = zbus::fdo::DBusProxy::new(&conn)
                .await
                .map_err(|e| e.to_string())?;
            let name = zbus::names::BusName::try_from(paths::SERVICE).map_err(|e| e.to_string())?;
            match dbus.name_has_owner(name).await {
                Ok(true) => Ok(conn),
                // Bus activation may still start it: an activatable name counts.
                Ok(false) => {
                    let act = dbus
                        .list_activatable_names()
                        .await
                        .map_err(|e| e.to_string())?;
                    if act.iter().any(|n| n.as_str() == paths::SERVICE) {
                        Ok(conn)
                    } else {
                        Err(format!("no {} on it", paths::SERVICE))
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Connects to the first endpoint that answers; else every endpoint tried with why it failed.
pub async fn try_connect(
    endpoints: &[Endpoint],
) -> std::result::Result<(zbus::Connection, Endpoint), Vec<(Endpoint, String)>> {
    let mut tried = Vec::new();
    for e in endpoints {
        match connect_to(e).await {
            Ok(c) => return Ok((c, e.clone())),
            Err(why) => tried.push((e.clone(), why)),
        }
    }
    Err(tried)
}

/// The message for a failed [`try_connect`]: `cannot reach hlfsd at PATH (is it running?): WHY`
/// for one endpoint, else every endpoint tried and why each failed.
pub fn describe_failure(tried: &[(Endpoint, String)]) -> String {
    match tried {
        [(e, why)] => format!("cannot reach hlfsd at {e} (is it running?): {why}"),
        _ => format!(
            "cannot reach hlfsd (is it running?); tried {}",
            tried
                .iter()
                .map(|(e, why)| format!("{e} ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Connects to the first endpoint that answers; the error (`Unavailable`) lists each one
/// tried and why.
pub async fn connect(endpoints: &[Endpoint]) -> Result<(zbus::Connection, Endpoint)> {
    try_connect(endpoints)
        .await
        .map_err(|tried| HlfsError::Unavailable(describe_failure(&tried)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_for_users_and_root() {
        let s = |p: &str| Endpoint::Socket(PathBuf::from(p));
        assert_eq!(
            default_endpoints(1000, Some(Path::new("/run/user/1000"))),
            [
                s("/run/user/1000/hlfs/dbus.sock"),
                s("/run/hlfs/dbus.sock"),
                Endpoint::Bus(Bus::System)
            ]
        );
        assert_eq!(
            default_endpoints(1000, None),
            [
                s("/tmp/hlfs-1000/dbus.sock"),
                s("/run/hlfs/dbus.sock"),
                Endpoint::Bus(Bus::System)
            ]
        );
        assert_eq!(
            default_endpoints(0, Some(Path::new("/run/user/0"))),
            [s("/run/hlfs/dbus.sock"), Endpoint::Bus(Bus::System)]
        );
    }

    #[tokio::test]
    async fn the_error_names_every_place_tried() {
        let d = std::env::temp_dir().join(format!("hlfs-client-sock-{}", std::process::id()));
        let eps = [
            Endpoint::Socket(d.join("a.sock")),
            Endpoint::Socket(d.join("b.sock")),
        ];
        let e = connect(&eps).await.unwrap_err();
        assert_eq!(e.error_name(), "org.hlfs.Error.Unavailable");
        let m = e.message();
        assert!(m.contains("a.sock") && m.contains("b.sock"), "{m}");
    }
}
