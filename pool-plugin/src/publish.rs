//! Publication: every HLFS pool appears in libvirt as a persistent, autostarted `dir` pool of the
//! same name on its FUSE-view directory `MOUNT/pools/POOL`, so stock virsh and virt-manager list,
//! create, resize and delete HLFS volumes unmodified.
//!
//! It is a mode of `hlfs-virsh` (`hlfs-virsh publish`), run as a service next to hlfsd: one
//! binary carries the agent and libvirt code, the lookups and the error handling that the verbs
//! already use, and there is a single thing to install. It compares hlfsd's pools with libvirt's
//! ([`plan`]), carries out the difference, and does it again on every ObjectManager signal
//! (pools and volumes added or removed: a pool refresh), on every libvirt storage pool event
//! (a pool stopped, undefined or defined by someone else: [`crate::libvirt_events`]), every
//! 30 s, and after reconnecting to hlfsd or libvirtd. It only ever touches libvirt pools it would create: type `dir` with target
//! exactly `MOUNT/pools/NAME`; a libvirt pool of the same name that is anything else is left
//! alone and reported.

use crate::agent::Agent;
use crate::domain_xml::PoolTable;
use crate::xmldoc;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

/// A libvirt pool as publication sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtPool {
    pub name: String,
    pub pool_type: String,
    pub target: String,
    pub active: bool,
    pub autostart: bool,
}

/// One step to bring libvirt in line with hlfsd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Define `name` as a dir pool on `target`, autostart it, start it.
    Define { name: String, target: PathBuf },
    /// Make an existing published pool autostarted and active, and refresh it.
    Ensure {
        name: String,
        autostart: bool,
        start: bool,
    },
    /// Stop and undefine a published pool whose HLFS pool is gone.
    Remove { name: String, active: bool },
    /// A libvirt pool of that name that publication did not make: left alone.
    Conflict { name: String, why: String },
}

/// The FUSE-view directory of pool `name`.
pub fn pool_dir(mount: &Path, name: &str) -> PathBuf {
    mount.join("pools").join(name)
}

/// What to do so that libvirt has exactly one published pool per HLFS pool. A published-looking
/// pool with no HLFS pool is withdrawn if it is active or was an HLFS pool in `known` (what this
/// publisher has seen): an inactive one it never saw may be a user's `pool-define-as` waiting
/// for its `pool-build`, which makes the HLFS pool.
pub fn plan(
    hlfs: &PoolTable,
    libvirt: &[LibvirtPool],
    mount: &Path,
    known: &HashSet<String>,
) -> Vec<Action> {
    let ours =
        |p: &LibvirtPool| p.pool_type == "dir" && Path::new(&p.target) == pool_dir(mount, &p.name);
    let mut actions = Vec::new();
    for (name, _) in &hlfs.pools {
        match libvirt.iter().find(|p| &p.name == name) {
            None => actions.push(Action::Define {
                name: name.clone(),
                target: pool_dir(mount, name),
            }),
            Some(p) if ours(p) => actions.push(Action::Ensure {
                name: name.clone(),
                autostart: !p.autostart,
                start: !p.active,
            }),
            Some(p) => actions.push(Action::Conflict {
                name: name.clone(),
                why: format!(
                    "libvirt already has a {} pool {name:?} on {:?}, not {:?}",
                    p.pool_type,
                    p.target,
                    pool_dir(mount, name)
                ),
            }),
        }
    }
    for p in libvirt {
        if ours(p) && hlfs.by_name(&p.name).is_none() && (p.active || known.contains(&p.name)) {
            actions.push(Action::Remove {
                name: p.name.clone(),
                active: p.active,
            });
        }
    }
    actions
}

/// The XML of a published pool.
pub fn dir_pool_xml(name: &str, target: &Path) -> String {
    format!(
        "<pool type='dir'>\n  <name>{}</name>\n  <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
        xmldoc::esc(name),
        xmldoc::esc(&target.to_string_lossy())
    )
}

/// libvirt's pools with their type and target.
pub fn libvirt_pools(
    conn: &virt::connect::Connect,
) -> Result<Vec<LibvirtPool>, virt::error::Error> {
    let mut out = Vec::new();
    for p in conn.list_all_storage_pools(0)? {
        let xml = p.xml_desc(0)?;
        let (pool_type, target) = match xmldoc::parse(&xml) {
            Ok(root) => (
                root.attr("type").unwrap_or_default().to_string(),
                root.child("target")
                    .and_then(|t| t.child("path"))
                    .map(|p| p.text.trim().to_string())
                    .unwrap_or_default(),
            ),
            Err(_) => (String::new(), String::new()),
        };
        out.push(LibvirtPool {
            name: p.name()?,
            pool_type,
            target,
            active: p.is_active()?,
            autostart: p.autostart()?,
        });
    }
    Ok(out)
}

/// Carries out `actions`; returns what was done, one line each, and how many steps failed. A
/// failing step is logged and the others still run (the next pass retries it).
pub fn apply(conn: &virt::connect::Connect, actions: &[Action]) -> (Vec<String>, usize) {
    let mut done = Vec::new();
    let mut failed = 0;
    for a in actions {
        let r: Result<Option<String>, virt::error::Error> = (|| match a {
            Action::Define { name, target } => {
                let p = conn.define_storage_pool_xml(&dir_pool_xml(name, target), 0)?;
                p.set_autostart(true)?;
                if target.is_dir() {
                    p.create(0)?;
                }
                Ok(Some(format!("published {name} on {}", target.display())))
            }
            Action::Ensure {
                name,
                autostart,
                start,
            } => {
                let p = conn.lookup_storage_pool_by_name(name)?;
                if *autostart {
                    p.set_autostart(true)?;
                }
                if *start {
                    p.create(0)?;
                    return Ok(Some(format!("started {name}")));
                }
                p.refresh(0)?;
                Ok(None)
            }
            Action::Remove { name, active } => {
                let p = conn.lookup_storage_pool_by_name(name)?;
                if *active {
                    p.destroy()?;
                }
                p.undefine()?;
                Ok(Some(format!("withdrew {name}")))
            }
            Action::Conflict { name, why } => {
                warn!(pool = %name, "{why}");
                Ok(None)
            }
        })();
        match r {
            Ok(Some(line)) => {
                info!("{line}");
                done.push(line);
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                warn!(action = ?a, "libvirt: {e}");
            }
        }
    }
    (done, failed)
}

/// Options of `hlfs-virsh publish`.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub libvirt_uri: Option<String>,
    pub dbus_socket: Option<PathBuf>,
    /// Overrides hlfsd's `FuseMountpoint`.
    pub mountpoint: Option<PathBuf>,
    /// One pass, then exit.
    pub once: bool,
}

/// One pass: returns what was done, or why nothing could be.
pub async fn sync_once(
    agent: &Agent,
    o: &PublishOptions,
    known: &mut HashSet<String>,
) -> Result<Vec<String>, String> {
    let mount = match &o.mountpoint {
        Some(m) => m.clone(),
        None => agent.fuse_mountpoint().await.ok_or(
            "hlfsd's FUSE view is not mounted (FuseMountpoint is empty): nothing to publish on",
        )?,
    };
    let hlfs = agent.pools().await.map_err(|e| e.to_string())?;
    let conn = virt::connect::Connect::open(o.libvirt_uri.as_deref())
        .map_err(|e| format!("cannot connect to libvirt: {e}"))?;
    let lv = libvirt_pools(&conn).map_err(|e| format!("libvirt: {e}"))?;
    let actions = plan(&hlfs, &lv, &mount, known);
    known.extend(hlfs.pools.iter().map(|(n, _)| n.clone()));
    match apply(&conn, &actions) {
        (done, 0) => Ok(done),
        (_, n) => Err(format!("{n} libvirt step(s) failed")),
    }
}

/// `hlfs-virsh publish`: keeps libvirt in step with hlfsd until killed (or one pass, `once`).
pub async fn run(o: PublishOptions) -> Result<(), String> {
    if o.once {
        let agent = Agent::connect(o.dbus_socket.as_deref())
            .await
            .map_err(|e| e.message())?;
        for line in sync_once(&agent, &o, &mut HashSet::new()).await? {
            println!("{line}");
        }
        return Ok(());
    }
    // HLFS pools seen, kept across reconnections (see `plan`).
    let mut known = HashSet::new();
    let mut events = match crate::libvirt_events::follow(o.libvirt_uri.clone()) {
        Ok(rx) => Some(rx),
        Err(e) => {
            warn!("{e}; following libvirt by the periodic check only");
            None
        }
    };
    loop {
        let agent = match Agent::connect(o.dbus_socket.as_deref()).await {
            Ok(a) => a,
            Err(e) => {
                warn!("{}; retrying in 5 s", e.message());
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if let Err(e) = follow(&agent, &o, &mut known, &mut events).await {
            warn!("{e}; reconnecting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The next libvirt pool event; never, without the event thread.
async fn libvirt_event(
    events: &mut Option<UnboundedReceiver<crate::libvirt_events::PoolsChanged>>,
) {
    match events {
        Some(rx) => {
            if rx.recv().await.is_none() {
                *events = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// Syncs on every ObjectManager signal, every libvirt pool event and every 30 s while the
/// connection lasts.
async fn follow(
    agent: &Agent,
    o: &PublishOptions,
    known: &mut HashSet<String>,
    events: &mut Option<UnboundedReceiver<crate::libvirt_events::PoolsChanged>>,
) -> Result<(), String> {
    let om = zbus::fdo::ObjectManagerProxy::builder(&agent.conn)
        .destination(hlfs_client::paths::SERVICE)
        .and_then(|b| b.path(hlfs_client::paths::ROOT))
        .map_err(|e| e.to_string())?
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let mut added = om
        .receive_interfaces_added()
        .await
        .map_err(|e| e.to_string())?;
    let mut removed = om
        .receive_interfaces_removed()
        .await
        .map_err(|e| e.to_string())?;
    // Any call makes a p2p connection "ready" for signals (docs/dbus.md).
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        // A pass that failed (libvirtd down or restarting) is retried soon, not in 30 s: a
        // restarted libvirtd is re-synced within seconds.
        let retry = match sync_once(agent, o, known).await {
            Ok(_) => Duration::from_secs(3600),
            Err(e) => {
                warn!("{e}; retrying in 2 s");
                Duration::from_secs(2)
            }
        };
        // Also proves the connection is alive: a dead hlfsd ends this pass.
        agent.pools().await.map_err(|e| e.message())?;
        tokio::select! {
            a = added.next() => { if a.is_none() { return Err("hlfsd closed the connection".into()); } }
            r = removed.next() => { if r.is_none() { return Err("hlfsd closed the connection".into()); } }
            _ = libvirt_event(events) => {}
            _ = tick.tick() => {}
            _ = tokio::time::sleep(retry) => {}
        }
        // Signals come in bursts (a pool and its volumes): let them settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(name: &str, t: &str, target: &str, active: bool, autostart: bool) -> LibvirtPool {
        LibvirtPool {
            name: name.into(),
            pool_type: t.into(),
            target: target.into(),
            active,
            autostart,
        }
    }

    #[test]
    fn plan_defines_adopts_withdraws_and_leaves_others_alone() {
        let hlfs = PoolTable {
            pools: vec![
                ("a".into(), "local:///a".into()),
                ("b".into(), "local:///b".into()),
                ("c".into(), "local:///c".into()),
            ],
        };
        let m = Path::new("/m");
        let lv = [
            lp("b", "dir", "/m/pools/b", false, true),
            lp("c", "dir", "/var/lib/libvirt/images", true, true),
            lp("gone", "dir", "/m/pools/gone", true, true),
            lp("default", "dir", "/var/lib/libvirt/images", true, true),
            lp("x", "logical", "/m/pools/x", true, true),
            // pool-define-as, pool-build to come: not withdrawn until seen as an HLFS pool.
            lp("fresh", "dir", "/m/pools/fresh", false, false),
            lp("old", "dir", "/m/pools/old", false, true),
        ];
        let known: HashSet<String> = ["old".to_string()].into();
        let a = plan(&hlfs, &lv, m, &known);
        assert_eq!(a.len(), 5, "{a:?}");
        assert_eq!(
            a[0],
            Action::Define {
                name: "a".into(),
                target: "/m/pools/a".into()
            }
        );
        assert_eq!(
            a[1],
            Action::Ensure {
                name: "b".into(),
                autostart: false,
                start: true
            }
        );
        assert!(matches!(&a[2], Action::Conflict { name, .. } if name == "c"));
        assert_eq!(
            a[3],
            Action::Remove {
                name: "gone".into(),
                active: true
            }
        );
        assert_eq!(
            a[4],
            Action::Remove {
                name: "old".into(),
                active: false
            }
        );
        assert!(dir_pool_xml("a", Path::new("/m/pools/a")).contains("<path>/m/pools/a</path>"));
    }
}
