//! `hlfs volume ...`, `hlfs clone` and `hlfs flatten`: thin volumes of a pool.

use crate::args::VolumeCmd;
use crate::ctx::Ctx;
use crate::error::{CliError, Result};
use crate::progress::{self, Follow};
use crate::render::{fields, human_size, or_none, table, Col, Human, Report};
use hlfs_client::names::{check_name, parse_size};
use hlfs_client::{HlfsError, VolumeInfo};
use serde::Serialize;
use std::collections::HashMap;
use zbus::zvariant::Value;

pub async fn run(c: &Ctx, cmd: &VolumeCmd, f: &Follow) -> Result<Box<dyn Report>> {
    Ok(match cmd {
        VolumeCmd::Create {
            volume,
            size,
            block_size,
            segment_size,
            no_compression,
        } => {
            let t = c.resolve_volume(volume).await?;
            let size = parse_size(size)?;
            let mut opts: HashMap<&str, Value> = HashMap::new();
            if let Some(b) = block_size {
                opts.insert("block_size", Value::U32(*b));
            }
            if let Some(s) = segment_size {
                let n = u32::try_from(parse_size(s)?)
                    .map_err(|_| HlfsError::invalid("segment size", s, "too large"))?;
                opts.insert("segment_size", Value::U32(n));
            }
            if *no_compression {
                opts.insert("compression", Value::Bool(false));
            }
            let path = hlfs_client::paths::pool(&t.pool);
            let p = c.pool(&t.pool, false).await?;
            c.at(&path, p.create_volume(&t.volume, size, opts).await)
                .await?;
            Box::new(Created {
                volume: t.to_string(),
                size,
                export: t.to_string(),
            })
        }
        VolumeCmd::List { pool } => Box::new(list(c, pool.as_deref()).await?),
        VolumeCmd::Info { volume } => {
            let t = c.resolve_volume(volume).await?;
            let v = c.volume(&t, true).await?;
            Box::new(VolumeInfo::read(&v).await?)
        }
        VolumeCmd::Resize { volume, size } => {
            let t = c.resolve_volume(volume).await?;
            let size = parse_size(size)?;
            let v = c.volume(&t, false).await?;
            let changed = c.at(&t.volume_path(), v.resize(size).await).await?;
            Box::new(Resized {
                volume: t.to_string(),
                size,
                changed,
            })
        }
        VolumeCmd::Delete { volume } => {
            let t = c.resolve_volume(volume).await?;
            let path = hlfs_client::paths::pool(&t.pool);
            let p = c.pool(&t.pool, false).await?;
            c.at(&path, p.delete_volume(&t.volume).await).await?;
            Box::new(Deleted {
                volume: t.to_string(),
                deleted: true,
            })
        }
        VolumeCmd::Clean { volume } => {
            let t = c.resolve_volume(volume).await?;
            let v = c.volume(&t, false).await?;
            let job = c.at(&t.volume_path(), v.clean().await).await?;
            Box::new(progress::follow(c, job, format!("clean {t}"), None, f).await?)
        }
    })
}

/// `hlfs clone VOL%SNAP NEW`.
pub async fn clone(c: &Ctx, source: &str, new: &str) -> Result<Box<dyn Report>> {
    let (src, snap) = c.resolve_snapshot(source).await?;
    let dst = c.resolve_volume(new).await?;
    let v = c.volume(&src, false).await?;
    c.at(
        &src.volume_path(),
        v.clone(&snap, &dst.pool, &dst.volume).await,
    )
    .await?;
    Ok(Box::new(Cloned {
        volume: dst.to_string(),
        base: src.to_string(),
    }))
}

/// `hlfs flatten VOL`.
pub async fn flatten(c: &Ctx, volume: &str, f: &Follow) -> Result<Box<dyn Report>> {
    let t = c.resolve_volume(volume).await?;
    let v = c.volume(&t, true).await?;
    let size = v.size().await.ok();
    let job = c.at(&t.volume_path(), v.flatten().await).await?;
    Ok(Box::new(
        progress::follow(c, job, format!("flatten {t}"), size, f).await?,
    ))
}

#[derive(Serialize)]
pub struct Created {
    pub volume: String,
    pub size: u64,
    pub export: String,
}

impl Human for Created {
    fn human(&self) -> String {
        format!("created volume {} ({})", self.volume, human_size(self.size))
    }
}

#[derive(Serialize)]
pub struct Resized {
    pub volume: String,
    pub size: u64,
    pub changed: bool,
}

impl Human for Resized {
    fn human(&self) -> String {
        format!(
            "volume {} is {} ({} bytes){}",
            self.volume,
            human_size(self.size),
            self.size,
            if self.changed { "" } else { ", unchanged" }
        )
    }
}

#[derive(Serialize)]
pub struct Deleted {
    pub volume: String,
    pub deleted: bool,
}

impl Human for Deleted {
    fn human(&self) -> String {
        format!("deleted volume {}", self.volume)
    }
}

#[derive(Serialize)]
pub struct Cloned {
    pub volume: String,
    pub base: String,
}

impl Human for Cloned {
    fn human(&self) -> String {
        format!("created clone {} of {}", self.volume, self.base)
    }
}

fn compression(on: bool) -> &'static str {
    if on {
        "lz4"
    } else {
        "off"
    }
}

impl Human for VolumeInfo {
    fn human(&self) -> String {
        fields(&[
            ("volume", format!("{}/{}", self.pool, self.name)),
            (
                "size",
                format!("{} ({} bytes)", human_size(self.size), self.size),
            ),
            ("allocated", human_size(self.allocated)),
            ("physical", format!("{} (log)", human_size(self.physical))),
            ("reclaimable", human_size(self.reclaimable)),
            ("segments", self.segments.to_string()),
            ("live ratio", format!("{:.2}", self.live_ratio)),
            ("block size", self.block_size.to_string()),
            ("compression", compression(self.compression).into()),
            ("base", or_none(&self.base)),
            ("export", self.export.clone()),
        ])
    }
}

/// A row of `volume list`: the volume, or why it cannot be read.
#[derive(Serialize)]
#[serde(untagged)]
pub enum VolumeRow {
    Ok(VolumeInfo),
    Damaged {
        pool: String,
        name: String,
        error: String,
    },
}

#[derive(Serialize)]
#[serde(transparent)]
pub struct VolumeList(pub Vec<VolumeRow>);

impl Report for VolumeList {
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    fn human(&self) -> String {
        table(
            &[
                Col("VOLUME", false),
                Col("SIZE", true),
                Col("ALLOCATED", true),
                Col("PHYSICAL", true),
                Col("COMPRESSION", false),
                Col("BASE", false),
            ],
            self.0.iter().map(|r| match r {
                VolumeRow::Ok(v) => vec![
                    format!("{}/{}", v.pool, v.name),
                    human_size(v.size),
                    human_size(v.allocated),
                    human_size(v.physical),
                    compression(v.compression).into(),
                    v.base.clone(),
                ],
                VolumeRow::Damaged { pool, name, error } => vec![
                    format!("{pool}/{name}"),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("DAMAGED: {error}"),
                ],
            }),
        )
    }

    /// Damaged volumes are listed, and make the command fail.
    fn failure(&self) -> Option<CliError> {
        let damaged: Vec<String> = self
            .0
            .iter()
            .filter_map(|r| match r {
                VolumeRow::Damaged { pool, name, error } => Some(format!("{pool}/{name}: {error}")),
                VolumeRow::Ok(_) => None,
            })
            .collect();
        (!damaged.is_empty()).then(|| {
            CliError::Api(HlfsError::Corrupt(format!(
                "{} volume(s) cannot be read: {}",
                damaged.len(),
                damaged.join("; ")
            )))
        })
    }
}

async fn list(c: &Ctx, pool: Option<&str>) -> Result<VolumeList> {
    let pools: Vec<String> = match pool {
        Some(p) => {
            check_name("pool", p)?;
            vec![p.to_string()]
        }
        None => c.pools().await?.into_iter().map(|(n, _)| n).collect(),
    };
    let mut rows = Vec::new();
    for p in pools {
        let pp = c.pool(&p, false).await?;
        let vols = c
            .at(&hlfs_client::paths::pool(&p), pp.list_volumes().await)
            .await?;
        for (name, path) in vols {
            let read = match c.volume_at(&path, true).await {
                Ok(v) => VolumeInfo::read(&v).await.map_err(CliError::from),
                Err(e) => Err(e),
            };
            rows.push(match read {
                Ok(v) => VolumeRow::Ok(v),
                Err(e) => VolumeRow::Damaged {
                    pool: p.clone(),
                    name,
                    error: e.message(),
                },
            });
        }
    }
    Ok(VolumeList(rows))
}
