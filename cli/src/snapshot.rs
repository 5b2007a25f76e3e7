//! `hlfs snapshot ...`: O(1) snapshots of a volume, as a tree (a rollback starts a branch).

use crate::args::SnapCmd;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::image;
use crate::progress::Follow;
use crate::render::{human_size, Human, Report};
use crate::time::{format_utc, parse_time};
use hlfs_client::{HlfsError, SnapshotInfo};
use serde::Serialize;

pub async fn run(c: &Ctx, cmd: &SnapCmd, f: &Follow) -> Result<Box<dyn Report>> {
    Ok(match cmd {
        SnapCmd::Create { snapshot, frozen } => {
            let (t, s) = c.resolve_snapshot(snapshot).await?;
            let v = c.volume(&t, false).await?;
            let r = if *frozen {
                v.create_frozen_snapshot(&s).await
            } else {
                v.create_snapshot(&s).await
            };
            c.at(&t.volume_path(), r).await?;
            Box::new(Created {
                snapshot: t.to_string(),
            })
        }
        SnapCmd::Delete { snapshot } => {
            let (t, s) = c.resolve_snapshot(snapshot).await?;
            let v = c.volume(&t, false).await?;
            c.at(&t.volume_path(), v.delete_snapshot(&s).await).await?;
            Box::new(Deleted {
                snapshot: t.to_string(),
                deleted: true,
            })
        }
        SnapCmd::Rollback { snapshot } => {
            let (t, s) = c.resolve_snapshot(snapshot).await?;
            let v = c.volume(&t, false).await?;
            c.at(&t.volume_path(), v.rollback(&s).await).await?;
            Box::new(RolledBack {
                volume: t.volume_name(),
                rolled_back_to: s,
            })
        }
        SnapCmd::List { volume } => Box::new(list(c, volume).await?),
        SnapCmd::Before { volume, time } => {
            let t = c.resolve_volume(volume).await?;
            let at = parse_time(time)?;
            let v = c.volume(&t, false).await?;
            let (name, path) = c.at(&t.volume_path(), v.snapshot_before(at).await).await?;
            let s = c.snapshot_at(&path).await?;
            Box::new(Before {
                snapshot: format!("{}%{name}", t.volume_name()),
                created: s.created().await.map_err(HlfsError::from)?,
            })
        }
        SnapCmd::Export {
            snapshot,
            image: img,
            format,
        } => {
            let (t, _) = c.resolve_snapshot(snapshot).await?;
            image::export(c, &t, img, format, f).await?
        }
    })
}

#[derive(Serialize)]
pub struct Created {
    pub snapshot: String,
}

impl Human for Created {
    fn human(&self) -> String {
        format!("created snapshot {}", self.snapshot)
    }
}

#[derive(Serialize)]
pub struct Deleted {
    pub snapshot: String,
    pub deleted: bool,
}

impl Human for Deleted {
    fn human(&self) -> String {
        format!("deleted snapshot {}", self.snapshot)
    }
}

#[derive(Serialize)]
pub struct RolledBack {
    pub volume: String,
    pub rolled_back_to: String,
}

impl Human for RolledBack {
    fn human(&self) -> String {
        format!("rolled {} back to {}", self.volume, self.rolled_back_to)
    }
}

/// `snapshot before`: the snapshot found and when it was taken (Unix seconds).
#[derive(Serialize)]
pub struct Before {
    pub snapshot: String,
    pub created: u64,
}

impl Human for Before {
    fn human(&self) -> String {
        format!("{} (created {})", self.snapshot, format_utc(self.created))
    }
}

/// `snapshot list`: a JSON array by sequence; as text a tree, children under their parent.
#[derive(Serialize)]
#[serde(transparent)]
pub struct SnapList {
    #[serde(skip)]
    pub volume: String,
    pub rows: Vec<SnapshotInfo>,
}

impl Human for SnapList {
    fn human(&self) -> String {
        let mut s = self.volume.clone();
        walk(&self.rows, "", "", &mut s);
        if self.rows.is_empty() {
            s += "\n(no snapshots)";
        }
        s
    }
}

fn walk(rows: &[SnapshotInfo], parent: &str, indent: &str, s: &mut String) {
    let kids: Vec<&SnapshotInfo> = rows.iter().filter(|r| r.parent == parent).collect();
    for (i, k) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        s.push_str(&format!(
            "\n{indent}{}{} (seq {}, {}, {}, {} exclusive)",
            if last { "└─" } else { "├─" },
            k.name,
            k.sequence,
            format_utc(k.created),
            k.consistency,
            human_size(k.exclusive)
        ));
        let deeper = format!("{indent}{}", if last { "  " } else { "│ " });
        walk(rows, &k.name, &deeper, s);
    }
}

async fn list(c: &Ctx, volume: &str) -> Result<SnapList> {
    let t = c.resolve_volume(volume).await?;
    let v = c.volume(&t, false).await?;
    let snaps = c.at(&t.volume_path(), v.list_snapshots().await).await?;
    let mut rows = Vec::new();
    for (_, path) in snaps {
        let p = c.snapshot_at(&path).await?;
        rows.push(SnapshotInfo::read(&p).await?);
    }
    rows.sort_by_key(|r| r.sequence);
    Ok(SnapList {
        volume: t.to_string(),
        rows,
    })
}
