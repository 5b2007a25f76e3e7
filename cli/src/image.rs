//! `hlfs import` and `hlfs export`: raw and qcow2 images in and out, as jobs inside hlfsd
//! (qemu-img as an NBD client of hlfsd's own socket). Image paths are made absolute here
//! because hlfsd opens them, from its own working directory.

use crate::ctx::{Ctx, Target};
use crate::error::Result;
use crate::progress::{self, Follow};
use crate::render::Report;
use hlfs_client::{paths, HlfsError};
use std::path::{Path, PathBuf};

/// `image` as an absolute UTF-8 path (D-Bus strings are UTF-8).
fn absolute(image: &Path) -> Result<String> {
    let abs: PathBuf = std::path::absolute(image).map_err(|e| {
        HlfsError::Io(format!(
            "cannot resolve image path {}: {e}",
            image.display()
        ))
    })?;
    Ok(abs
        .to_str()
        .ok_or_else(|| HlfsError::invalid("image path", &abs.display().to_string(), "not UTF-8"))?
        .to_string())
}

/// `hlfs import IMAGE VOL [-f FORMAT]`: hlfsd creates VOL with the image's virtual size and
/// copies it in; a failed or cancelled import leaves no volume.
pub async fn import(
    c: &Ctx,
    image: &Path,
    volume: &str,
    format: Option<&str>,
    f: &Follow,
) -> Result<Box<dyn Report>> {
    let t = c.resolve_volume(volume).await?;
    let src = absolute(image)?;
    let p = c.pool(&t.pool, false).await?;
    let (vol, job) = c
        .at(
            &paths::pool(&t.pool),
            p.import_volume(&t.volume, &src, format.unwrap_or("")).await,
        )
        .await?;
    let size = match c.volume_at(&vol, true).await {
        Ok(v) => v.size().await.ok(),
        Err(_) => None,
    };
    let what = format!("import {src} -> {t}");
    Ok(Box::new(progress::follow(c, job, what, size, f).await?))
}

/// `hlfs export VOL[%SNAP] IMAGE` and `hlfs snapshot export`: a snapshot's frozen contents
/// (`Snapshot1.Export`), or the volume's head.
pub async fn export(
    c: &Ctx,
    t: &Target,
    image: &Path,
    format: &str,
    f: &Follow,
) -> Result<Box<dyn Report>> {
    let dest = absolute(image)?;
    let (job, size) = match &t.snapshot {
        Some(s) => {
            let path = paths::snapshot(&t.pool, &t.volume, s);
            let snap = c.snapshot_at(&path).await?;
            let size = snap.size().await.ok();
            (c.at(&path, snap.export(&dest, format).await).await?, size)
        }
        None => {
            let v = c.volume(t, true).await?;
            let size = v.size().await.ok();
            (
                c.at(&t.volume_path(), v.export(&dest, format).await)
                    .await?,
                size,
            )
        }
    };
    let what = format!("export {t} -> {dest}");
    Ok(Box::new(progress::follow(c, job, what, size, f).await?))
}
