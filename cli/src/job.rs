//! `hlfs job ...`: running and recently finished jobs (import, export, clean, flatten).

use crate::args::JobCmd;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::render::{table, Col, Human, Report};
use hlfs_client::{paths, HlfsError};
use serde::Serialize;
use zbus::zvariant::OwnedObjectPath;

pub async fn run(c: &Ctx, cmd: &JobCmd) -> Result<Box<dyn Report>> {
    Ok(match cmd {
        JobCmd::List => Box::new(list(c).await?),
        JobCmd::Cancel { id } => {
            let path = paths::job(*id);
            let job = c.job(&path).await?;
            let cancelled = c.at(&path, job.cancel().await).await?;
            Box::new(Cancelled { id: *id, cancelled })
        }
    })
}

/// `job cancel`: whether the job was running (and is now being stopped).
#[derive(Serialize)]
pub struct Cancelled {
    pub id: u32,
    pub cancelled: bool,
}

impl Human for Cancelled {
    fn human(&self) -> String {
        if self.cancelled {
            format!("cancelled job {}", self.id)
        } else {
            format!("job {} was not running", self.id)
        }
    }
}

/// One job; `progress` in percent, `error` empty unless it failed.
#[derive(Serialize)]
pub struct JobRow {
    pub id: u32,
    pub kind: String,
    pub state: String,
    pub progress: f64,
    pub description: String,
    pub error: String,
}

#[derive(Serialize)]
#[serde(transparent)]
pub struct JobList(pub Vec<JobRow>);

impl Human for JobList {
    fn human(&self) -> String {
        table(
            &[
                Col("ID", true),
                Col("KIND", false),
                Col("STATE", false),
                Col("DONE", true),
                Col("DESCRIPTION", false),
            ],
            self.0.iter().map(|j| {
                let mut d = j.description.clone();
                if !j.error.is_empty() {
                    d = format!("{d}: {}", j.error);
                }
                vec![
                    j.id.to_string(),
                    j.kind.clone(),
                    j.state.clone(),
                    format!("{:.1}%", j.progress),
                    d,
                ]
            }),
        )
    }
}

/// The job objects are the children of ROOT/job, read by introspection (the ObjectManager is
/// not served to a p2p connection before its first call is answered).
async fn list(c: &Ctx) -> Result<JobList> {
    let root = format!("{}/job", paths::ROOT);
    let intro = zbus::fdo::IntrospectableProxy::builder(c.conn())
        .destination(paths::SERVICE)
        .map_err(HlfsError::from)?
        .path(root.as_str())
        .map_err(HlfsError::from)?
        .build()
        .await
        .map_err(HlfsError::from)?;
    let xml = match intro.introspect().await {
        Ok(x) => x,
        // No job yet: no ROOT/job node.
        Err(zbus::fdo::Error::UnknownObject(_)) => String::new(),
        Err(e) => return Err(HlfsError::from(e).into()),
    };
    let mut ids: Vec<u32> = xml
        .split("<node name=\"")
        .skip(1)
        .filter_map(|r| r.split('"').next()?.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut rows = Vec::new();
    for id in ids {
        let path: OwnedObjectPath = paths::job(id);
        let j = match c.job(&path).await {
            Ok(j) => j,
            // Gone meanwhile (finished jobs expire).
            Err(crate::error::CliError::Api(HlfsError::NotFound(_))) => continue,
            Err(e) => return Err(e),
        };
        let e = HlfsError::from;
        rows.push(JobRow {
            id,
            kind: j.kind().await.map_err(e)?,
            state: j.state().await.map_err(e)?,
            progress: j.progress().await.map_err(e)?,
            description: j.description().await.map_err(e)?,
            error: j.error().await.map_err(e)?,
        });
    }
    Ok(JobList(rows))
}
