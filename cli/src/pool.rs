//! `hlfs pool ...`: pools by name, on `local:///DIR` or `hdfs://HOST:PORT/DIR`.

use crate::args::PoolCmd;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::render::{fields, table, Col, Human, Report};
use hlfs_client::names::check_name;
use hlfs_client::HlfsError;
use serde::Serialize;

pub async fn run(c: &Ctx, cmd: &PoolCmd) -> Result<Box<dyn Report>> {
    Ok(match cmd {
        PoolCmd::Create { name, uri } => {
            let m = c.manager().await?;
            let (path, changed) = m.create_pool(name, uri).await?;
            Box::new(Created {
                pool: name.clone(),
                uri: uri.clone(),
                object: path.to_string(),
                changed,
            })
        }
        PoolCmd::List => Box::new(list(c).await?),
        PoolCmd::Info { name } => Box::new(info(c, name).await?),
        PoolCmd::Delete { name } => {
            check_name("pool", name)?;
            let m = c.manager().await?;
            m.delete_pool(name).await?;
            Box::new(Deleted {
                pool: name.clone(),
                deleted: true,
            })
        }
    })
}

/// `pool create`: `changed` is false when the same pool already existed.
#[derive(Serialize)]
pub struct Created {
    pub pool: String,
    #[serde(skip)]
    pub uri: String,
    pub object: String,
    pub changed: bool,
}

impl Human for Created {
    fn human(&self) -> String {
        if self.changed {
            format!("created pool {} on {}", self.pool, self.uri)
        } else {
            format!("pool {} already exists on {}", self.pool, self.uri)
        }
    }
}

#[derive(Serialize)]
pub struct Deleted {
    pub pool: String,
    pub deleted: bool,
}

impl Human for Deleted {
    fn human(&self) -> String {
        format!("deleted pool {}", self.pool)
    }
}

/// One line of `pool list`; `status` is empty for a pool that answers, else `unavailable: why`.
#[derive(Serialize)]
pub struct PoolRow {
    pub name: String,
    pub uri: String,
    pub volumes: usize,
    pub status: String,
}

#[derive(Serialize)]
#[serde(transparent)]
pub struct PoolList(pub Vec<PoolRow>);

impl Human for PoolList {
    fn human(&self) -> String {
        table(
            &[
                Col("POOL", false),
                Col("VOLUMES", true),
                Col("STATUS", false),
                Col("URI", false),
            ],
            self.0.iter().map(|r| {
                vec![
                    r.name.clone(),
                    r.volumes.to_string(),
                    if r.status.is_empty() {
                        "ok".into()
                    } else {
                        r.status.clone()
                    },
                    r.uri.clone(),
                ]
            }),
        )
    }
}

async fn list(c: &Ctx) -> Result<PoolList> {
    let mut rows = Vec::new();
    for (name, _) in c.pools().await? {
        let p = c.pool(&name, true).await?;
        rows.push(PoolRow {
            uri: p.uri().await.map_err(HlfsError::from)?,
            volumes: p.volumes().await.map_err(HlfsError::from)?.len(),
            status: p.status().await.map_err(HlfsError::from)?,
            name,
        });
    }
    Ok(PoolList(rows))
}

/// `pool info`.
#[derive(Serialize)]
pub struct PoolInfo {
    pub name: String,
    pub uri: String,
    pub status: String,
    pub volumes: Vec<String>,
}

impl Human for PoolInfo {
    fn human(&self) -> String {
        fields(&[
            ("pool", self.name.clone()),
            ("uri", self.uri.clone()),
            (
                "status",
                if self.status.is_empty() {
                    "ok".into()
                } else {
                    self.status.clone()
                },
            ),
            (
                "volumes",
                if self.volumes.is_empty() {
                    "(none)".into()
                } else {
                    self.volumes.join(", ")
                },
            ),
        ])
    }
}

async fn info(c: &Ctx, name: &str) -> Result<PoolInfo> {
    check_name("pool", name)?;
    let path = hlfs_client::paths::pool(name);
    let p = c.pool(name, true).await?;
    let vols = c.at(&path, p.list_volumes().await).await?;
    Ok(PoolInfo {
        name: name.to_string(),
        uri: p.uri().await.map_err(HlfsError::from)?,
        status: p.status().await.map_err(HlfsError::from)?,
        volumes: vols.into_iter().map(|(n, _)| n).collect(),
    })
}
