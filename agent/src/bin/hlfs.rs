//! hlfs: the HLFS admin CLI. Talks to hlfsd over its peer-to-peer D-Bus socket (default) or a
//! bus; every command is one or a few D-Bus calls (see docs/cli.md and docs/dbus.md).

use clap::{Parser, Subcommand};
use hlfs_agent::client::{
    prop_bool, prop_f64, prop_str, prop_u32, prop_u64, Client, Props, VolRef,
};
use hlfs_agent::names::parse_size;
use hlfs_agent::{Error, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use zbus::zvariant::{OwnedObjectPath, Value as ZValue};

const POOL: &str = "org.hlfs.Pool1";
const VOLUME: &str = "org.hlfs.Volume1";
const MANAGER: &str = "org.hlfs.Manager1";
const SNAPSHOT: &str = "org.hlfs.Snapshot1";

/// A bus to reach hlfsd through.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BusArg {
    Session,
    System,
}

#[derive(Debug, Parser)]
#[command(
    name = "hlfs",
    version,
    about = "HLFS admin CLI: pools, volumes, snapshots, import and export"
)]
struct Cli {
    /// hlfsd's peer-to-peer D-Bus socket [default: your own daemon's RUNTIME_DIR/dbus.sock,
    /// then /run/hlfs/dbus.sock, then the system bus]
    #[arg(long, value_name = "PATH", global = true, env = "HLFS_SOCKET")]
    socket: Option<PathBuf>,
    /// Reach hlfsd through a bus instead
    #[arg(long, value_enum, global = true, conflicts_with = "socket")]
    bus: Option<BusArg>,
    /// Machine-readable output
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Pools: create, list, info, delete
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Volumes: create, list, info, resize, delete
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshots: create, list (tree), delete, rollback, export
    #[command(subcommand)]
    Snapshot(SnapCmd),
    /// Jobs (import, export, clean, flatten): list, cancel
    #[command(subcommand)]
    Job(JobCmd),
    /// Create volume NEW (pool/name or name) from snapshot VOLUME%SNAP, instantly
    Clone { source: String, new: String },
    /// Copy everything a clone reads from its base into it
    Flatten { volume: String },
    /// Create volume VOLUME from a raw or qcow2 image
    Import {
        image: PathBuf,
        volume: String,
        /// Image format (raw or qcow2) [probed]
        #[arg(long, short = 'f')]
        format: Option<String>,
    },
    /// Copy VOLUME (or snapshot VOLUME%SNAP) into a new raw or qcow2 image
    Export {
        volume: String,
        image: PathBuf,
        /// Output format (raw or qcow2)
        #[arg(long, short = 'O', default_value = "raw")]
        format: String,
    },
    /// Print the completion script for SHELL (packaging installs them)
    Completions { shell: ShellArg },
    /// Print the man page hlfs(1), in roff
    Man,
}

/// A shell to complete for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

/// `hlfs completions` and `hlfs man`: generated from the command definition, no daemon needed.
fn generate(cmd: &Cmd) -> Option<std::io::Result<()>> {
    use clap::CommandFactory;
    let mut out = std::io::stdout().lock();
    match cmd {
        Cmd::Completions { shell } => {
            let shell = match shell {
                ShellArg::Bash => clap_complete::Shell::Bash,
                ShellArg::Zsh => clap_complete::Shell::Zsh,
                ShellArg::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "hlfs", &mut out);
            Some(out.flush())
        }
        Cmd::Man => Some(clap_mangen::Man::new(Cli::command()).render(&mut out)),
        _ => None,
    }
}

#[derive(Debug, Subcommand)]
enum JobCmd {
    /// Running and recently finished jobs (finished ones stay 5 minutes)
    List,
    /// Stop running job ID (waits for nothing: see `job list`)
    Cancel { id: u32 },
}

#[derive(Debug, Subcommand)]
enum PoolCmd {
    /// Add pool NAME on URI (local:///DIR or hdfs://HOST:PORT/DIR)
    Create {
        name: String,
        uri: String,
    },
    List,
    Info {
        name: String,
    },
    /// Remove an empty pool
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// Create VOLUME (pool/name, name, local:///dir/name or hdfs://host:port/dir/name) of SIZE (e.g. 10G)
    Create {
        volume: String,
        size: String,
        /// Block size in bytes (512 to 65536)
        #[arg(long)]
        block_size: Option<u32>,
        /// Segment size, e.g. 32M
        #[arg(long)]
        segment_size: Option<String>,
        /// Store blocks uncompressed
        #[arg(long)]
        no_compression: bool,
    },
    /// List volumes (of POOL, or of every pool)
    List {
        pool: Option<String>,
    },
    Info {
        volume: String,
    },
    Resize {
        volume: String,
        size: String,
    },
    Delete {
        volume: String,
    },
    /// Run a cleaner pass now (reclaims space of overwritten data)
    Clean {
        volume: String,
    },
}

#[derive(Debug, Subcommand)]
enum SnapCmd {
    /// Take snapshot VOLUME%SNAP
    Create {
        snapshot: String,
        /// The guest's filesystems are frozen (e.g. virsh domfsfreeze): record the snapshot as
        /// consistent, not merely crash-consistent
        #[arg(long)]
        frozen: bool,
    },
    /// Show the snapshots of VOLUME as a tree
    List {
        volume: String,
    },
    Delete {
        snapshot: String,
    },
    /// Name the newest snapshot of VOLUME taken at or before TIME (Unix seconds, or UTC
    /// `YYYY-MM-DD[THH:MM[:SS]][Z]`)
    Before {
        volume: String,
        time: String,
    },
    /// Make VOLUME's contents those of VOLUME%SNAP
    Rollback {
        snapshot: String,
    },
    /// Copy snapshot VOLUME%SNAP into a new raw or qcow2 image
    Export {
        snapshot: String,
        image: PathBuf,
        /// Output format (raw or qcow2)
        #[arg(long, short = 'O', default_value = "raw")]
        format: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match generate(&cli.cmd) {
        Some(Ok(())) => return std::process::ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("hlfs: cannot write to stdout: {e}");
            return std::process::ExitCode::FAILURE;
        }
        None => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hlfs: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Every error carries its D-Bus name: hlfsd's, or the one its kind maps to.
            let name = match &e {
                Error::Remote { name, .. } => name.clone(),
                _ => e.kind().dbus_name().to_string(),
            };
            if json {
                let v = serde_json::json!({"error": {"name": name, "message": e.to_string()}});
                eprintln!("{v}");
            } else {
                eprintln!("hlfs: {e} [{name}]");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> Result<Client> {
    let bus = cli.bus.map(|b| match b {
        BusArg::Session => hlfs_client::socket::Bus::Session,
        BusArg::System => hlfs_client::socket::Bus::System,
    });
    Client::connect(cli.socket.as_deref(), bus).await
}

/// Prints JSON, or the human text.
fn out(json: bool, v: Value, human: impl FnOnce() -> String) {
    let text = if json {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        human()
    };
    if !text.is_empty() {
        println!("{}", text.trim_end());
    }
}

/// Unix seconds, or a UTC date and time `YYYY-MM-DD[THH:MM[:SS]][Z]` (a space may replace `T`).
fn parse_time(s: &str) -> Result<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let bad = || {
        Error::invalid(
            "time",
            s,
            "expected Unix seconds or YYYY-MM-DD[THH:MM[:SS]][Z]",
        )
    };
    let t = s.trim_end_matches('Z');
    let (date, clock) = t.split_once(['T', ' ']).unwrap_or((t, "00:00:00"));
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let c: Vec<&str> = clock.split(':').collect();
    if d.len() != 3 || !(2..=3).contains(&c.len()) {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, min) = (num(c[0])?, num(c[1])?);
    let sec = c.get(2).map_or(Ok(0), |x| num(x))?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return Err(bad());
    }
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + min * 60 + sec).map_err(|_| bad())
}

fn human_size(n: u64) -> String {
    const U: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn need_snapshot(r: &VolRef, spec: &str) -> Result<String> {
    r.snapshot
        .clone()
        .ok_or_else(|| Error::invalid("snapshot", spec, "expected VOLUME%SNAPSHOT"))
}

/// A volume's properties, or the agent's reason they cannot be read (a damaged superblock):
/// GetAll leaves out what fails, and a `Get` of `Size` brings the error itself.
async fn volume_props(c: &Client, path: &str) -> Result<Props> {
    let p = c.props(path, VOLUME).await?;
    if !p.contains_key("Size") {
        let _: zbus::zvariant::OwnedValue = c
            .call(
                path,
                "org.freedesktop.DBus.Properties",
                "Get",
                &(VOLUME, "Size"),
            )
            .await?;
    }
    Ok(p)
}

fn volume_json(p: &Props) -> Value {
    json!({
        "pool": prop_str(p, "Pool"), "name": prop_str(p, "Name"), "size": prop_u64(p, "Size"),
        "allocated": prop_u64(p, "Allocated"), "physical": prop_u64(p, "Physical"),
        "reclaimable": prop_u64(p, "Reclaimable"),
        "compression": prop_bool(p, "Compression"), "block_size": prop_u32(p, "BlockSize"),
        "base": prop_str(p, "Base"), "segments": prop_u64(p, "Segments"),
        "live_ratio": prop_f64(p, "LiveRatio"), "export": prop_str(p, "ExportName"),
    })
}

async fn run(cli: Cli) -> Result<()> {
    let c = connect(&cli).await?;
    let json = cli.json;
    match &cli.cmd {
        Cmd::Pool(PoolCmd::Create { name, uri }) => {
            let (path, new): (OwnedObjectPath, bool) = c
                .call(
                    hlfs_agent::dbus::paths::ROOT,
                    MANAGER,
                    "CreatePool",
                    &(name, uri),
                )
                .await?;
            out(
                json,
                json!({"pool": name, "object": path.as_str(), "changed": new}),
                || {
                    if new {
                        format!("created pool {name} on {uri}")
                    } else {
                        format!("pool {name} already exists on {uri}")
                    }
                },
            );
        }
        Cmd::Pool(PoolCmd::List) => {
            let mut rows = Vec::new();
            for (name, path) in c.pools().await? {
                let p = c.props(path.as_str(), POOL).await?;
                let n = p
                    .get("Volumes")
                    .and_then(|v| <Vec<OwnedObjectPath>>::try_from(v.try_clone().ok()?).ok())
                    .map_or(0, |v| v.len());
                rows.push(
                    json!({"name": name, "uri": prop_str(&p, "Uri"), "volumes": n,
                    "status": prop_str(&p, "Status")}),
                );
            }
            out(json, Value::Array(rows.clone()), || {
                let mut s = format!("{:<16} {:>7}  {}\n", "POOL", "VOLUMES", "URI");
                for r in &rows {
                    let status = r["status"].as_str().unwrap_or("");
                    s += &format!(
                        "{:<16} {:>7}  {}{}\n",
                        r["name"].as_str().unwrap_or(""),
                        r["volumes"],
                        r["uri"].as_str().unwrap_or(""),
                        if status.is_empty() {
                            String::new()
                        } else {
                            format!("  ({status})")
                        }
                    );
                }
                s
            });
        }
        Cmd::Pool(PoolCmd::Info { name }) => {
            let path = hlfs_agent::dbus::paths::pool(name);
            let p = c.props(path.as_str(), POOL).await?;
            let vols: Vec<(String, OwnedObjectPath)> =
                c.call(path.as_str(), POOL, "ListVolumes", &()).await?;
            let names: Vec<&str> = vols.iter().map(|(n, _)| n.as_str()).collect();
            out(
                json,
                json!({"name": name, "uri": prop_str(&p, "Uri"), "volumes": names}),
                || {
                    format!(
                        "pool:    {name}\nuri:     {}\nvolumes: {}\n",
                        prop_str(&p, "Uri"),
                        if names.is_empty() {
                            "(none)".into()
                        } else {
                            names.join(", ")
                        }
                    )
                },
            );
        }
        Cmd::Pool(PoolCmd::Delete { name }) => {
            let _: bool = c
                .call(
                    hlfs_agent::dbus::paths::ROOT,
                    MANAGER,
                    "DeletePool",
                    &(name,),
                )
                .await?;
            out(json, json!({"pool": name, "deleted": true}), || {
                format!("deleted pool {name}")
            });
        }
        Cmd::Volume(VolumeCmd::Create {
            volume,
            size,
            block_size,
            segment_size,
            no_compression,
        }) => {
            let r = c.resolve_volume(volume).await?;
            let size = parse_size(size)?;
            let mut opts: HashMap<&str, ZValue> = HashMap::new();
            if let Some(b) = block_size {
                opts.insert("block_size", ZValue::U32(*b));
            }
            if let Some(s) = segment_size {
                let s = u32::try_from(parse_size(s)?)
                    .map_err(|_| Error::invalid("segment size", s, "too large"))?;
                opts.insert("segment_size", ZValue::U32(s));
            }
            if *no_compression {
                opts.insert("compression", ZValue::Bool(false));
            }
            let pool_path = hlfs_agent::dbus::paths::pool(&r.pool);
            let _: OwnedObjectPath = c
                .call(
                    pool_path.as_str(),
                    POOL,
                    "CreateVolume",
                    &(&r.volume, size, opts),
                )
                .await?;
            out(
                json,
                json!({"volume": r.to_string(), "size": size, "export": r.to_string()}),
                || format!("created volume {r} ({})", human_size(size)),
            );
        }
        Cmd::Volume(VolumeCmd::List { pool }) => {
            let pools: Vec<String> = match pool {
                Some(p) => vec![p.clone()],
                None => c.pools().await?.into_iter().map(|(n, _)| n).collect(),
            };
            let mut rows = Vec::new();
            let mut damaged = Vec::new();
            for p in pools {
                let path = hlfs_agent::dbus::paths::pool(&p);
                let vols: Vec<(String, OwnedObjectPath)> =
                    c.call(path.as_str(), POOL, "ListVolumes", &()).await?;
                for (name, vp) in vols {
                    match volume_props(&c, vp.as_str()).await {
                        Ok(props) => rows.push(volume_json(&props)),
                        Err(e) => {
                            damaged.push(format!("{p}/{name}: {e}"));
                            rows.push(json!({"pool": p, "name": name, "error": e.to_string()}));
                        }
                    }
                }
            }
            out(json, Value::Array(rows.clone()), || {
                let mut s = format!(
                    "{:<28} {:>10} {:>10} {:>10}  {}\n",
                    "VOLUME", "SIZE", "ALLOCATED", "PHYSICAL", "COMPRESSION"
                );
                for r in &rows {
                    if let Some(e) = r["error"].as_str() {
                        s += &format!(
                            "{:<28} DAMAGED: {e}\n",
                            format!(
                                "{}/{}",
                                r["pool"].as_str().unwrap_or(""),
                                r["name"].as_str().unwrap_or("")
                            )
                        );
                        continue;
                    }
                    s += &format!(
                        "{:<28} {:>10} {:>10} {:>10}  {}\n",
                        format!(
                            "{}/{}",
                            r["pool"].as_str().unwrap_or(""),
                            r["name"].as_str().unwrap_or("")
                        ),
                        human_size(r["size"].as_u64().unwrap_or(0)),
                        human_size(r["allocated"].as_u64().unwrap_or(0)),
                        human_size(r["physical"].as_u64().unwrap_or(0)),
                        if r["compression"].as_bool().unwrap_or(false) {
                            "lz4"
                        } else {
                            "off"
                        }
                    );
                }
                s
            });
            if !damaged.is_empty() {
                return Err(Error::Remote {
                    name: "org.hlfs.Error.Corrupt".into(),
                    message: format!(
                        "{} volume(s) cannot be read: {}",
                        damaged.len(),
                        damaged.join("; ")
                    ),
                });
            }
        }
        Cmd::Volume(VolumeCmd::Info { volume }) => {
            let r = c.resolve_volume(volume).await?;
            let p = volume_props(&c, &r.path()).await?;
            let v = volume_json(&p);
            out(json, v.clone(), || {
                format!(
                    "volume:      {r}\nsize:        {} ({} bytes)\nallocated:   {}\nphysical:    {} (log)\nreclaimable: {}\nsegments:    {}\nlive ratio:  {:.2}\nblock size:  {}\ncompression: {}\nbase:        {}\nexport:      {}\n",
                    human_size(prop_u64(&p, "Size")), prop_u64(&p, "Size"), human_size(prop_u64(&p, "Allocated")),
                    human_size(prop_u64(&p, "Physical")), human_size(prop_u64(&p, "Reclaimable")), prop_u64(&p, "Segments"), prop_f64(&p, "LiveRatio"),
                    prop_u32(&p, "BlockSize"), if prop_bool(&p, "Compression") { "lz4" } else { "off" },
                    if prop_str(&p, "Base").is_empty() { "(none)".into() } else { prop_str(&p, "Base") },
                    prop_str(&p, "ExportName")
                )
            });
        }
        Cmd::Volume(VolumeCmd::Resize { volume, size }) => {
            let r = c.resolve_volume(volume).await?;
            let size = parse_size(size)?;
            let changed: bool = c.call(&r.path(), VOLUME, "Resize", &(size,)).await?;
            out(
                json,
                json!({"volume": r.to_string(), "size": size, "changed": changed}),
                || {
                    format!(
                        "volume {r} is {} ({size} bytes){}",
                        human_size(size),
                        if changed { "" } else { ", unchanged" }
                    )
                },
            );
        }
        Cmd::Volume(VolumeCmd::Delete { volume }) => {
            let r = c.resolve_volume(volume).await?;
            let pool_path = hlfs_agent::dbus::paths::pool(&r.pool);
            let _: bool = c
                .call(pool_path.as_str(), POOL, "DeleteVolume", &(&r.volume,))
                .await?;
            out(
                json,
                json!({"volume": r.to_string(), "deleted": true}),
                || format!("deleted volume {r}"),
            );
        }
        Cmd::Snapshot(SnapCmd::Create { snapshot, frozen }) => {
            let r = c.resolve(snapshot).await?;
            let s = need_snapshot(&r, snapshot)?;
            let method = if *frozen {
                "CreateFrozenSnapshot"
            } else {
                "CreateSnapshot"
            };
            let _: OwnedObjectPath = c.call(&r.path(), VOLUME, method, &(&s,)).await?;
            out(json, json!({"snapshot": r.to_string()}), || {
                format!("created snapshot {r}")
            });
        }
        Cmd::Snapshot(SnapCmd::Delete { snapshot }) => {
            let r = c.resolve(snapshot).await?;
            let s = need_snapshot(&r, snapshot)?;
            let _: bool = c.call(&r.path(), VOLUME, "DeleteSnapshot", &(&s,)).await?;
            out(
                json,
                json!({"snapshot": r.to_string(), "deleted": true}),
                || format!("deleted snapshot {r}"),
            );
        }
        Cmd::Snapshot(SnapCmd::Rollback { snapshot }) => {
            let r = c.resolve(snapshot).await?;
            let s = need_snapshot(&r, snapshot)?;
            let _: bool = c.call(&r.path(), VOLUME, "Rollback", &(&s,)).await?;
            out(
                json,
                json!({"volume": r.to_string(), "rolled_back_to": s}),
                || format!("rolled {}/{} back to {s}", r.pool, r.volume),
            );
        }
        Cmd::Snapshot(SnapCmd::List { volume }) => snapshot_tree(&c, json, volume).await?,
        Cmd::Snapshot(SnapCmd::Before { volume, time }) => {
            let r = c.resolve_volume(volume).await?;
            let t = parse_time(time)?;
            let (name, path): (String, OwnedObjectPath) =
                c.call(&r.path(), VOLUME, "SnapshotBefore", &(t,)).await?;
            let p = c.props(path.as_str(), "org.hlfs.Snapshot1").await?;
            let created = prop_u64(&p, "Created");
            out(
                json,
                json!({"snapshot": format!("{}/{}%{name}", r.pool, r.volume), "created": created}),
                || format!("{}/{}%{name} (created {created})", r.pool, r.volume),
            );
        }
        Cmd::Clone { source, new } => {
            let src = c.resolve(source).await?;
            let s = need_snapshot(&src, source)?;
            let dst = c.resolve_volume(new).await?;
            let _: OwnedObjectPath = c
                .call(&src.path(), VOLUME, "Clone", &(&s, &dst.pool, &dst.volume))
                .await?;
            out(
                json,
                json!({"volume": dst.to_string(), "base": src.to_string()}),
                || format!("created clone {dst} of {src}"),
            );
        }
        Cmd::Volume(VolumeCmd::Clean { volume }) => {
            let r = c.resolve_volume(volume).await?;
            let job: OwnedObjectPath = c.call(&r.path(), VOLUME, "Clean", &()).await?;
            follow_job(&c, json, job.as_str(), &format!("clean {r}")).await?;
        }
        Cmd::Flatten { volume } => {
            let r = c.resolve_volume(volume).await?;
            let job: OwnedObjectPath = c.call(&r.path(), VOLUME, "Flatten", &()).await?;
            follow_job(&c, json, job.as_str(), &format!("flatten {r}")).await?;
        }
        Cmd::Import {
            image,
            volume,
            format,
        } => {
            let r = c.resolve_volume(volume).await?;
            let img = std::path::absolute(image).map_err(|e| Error::io("resolve", image, e))?;
            let src = img.to_str().ok_or_else(|| {
                Error::invalid("image path", img.display().to_string(), "not UTF-8")
            })?;
            let pool_path = hlfs_agent::dbus::paths::pool(&r.pool);
            let (_, job): (OwnedObjectPath, OwnedObjectPath) = c
                .call(
                    pool_path.as_str(),
                    POOL,
                    "ImportVolume",
                    &(&r.volume, src, format.as_deref().unwrap_or("")),
                )
                .await?;
            follow_job(
                &c,
                json,
                job.as_str(),
                &format!("import {} -> {r}", img.display()),
            )
            .await?;
        }
        Cmd::Export {
            volume,
            image,
            format,
        } => {
            let r = c.resolve(volume).await?;
            export(&c, json, &r, image, format).await?;
        }
        Cmd::Snapshot(SnapCmd::Export {
            snapshot,
            image,
            format,
        }) => {
            let r = c.resolve(snapshot).await?;
            need_snapshot(&r, snapshot)?;
            export(&c, json, &r, image, format).await?;
        }
        Cmd::Job(JobCmd::List) => {
            // The job objects are the children of ROOT/job (the ObjectManager is not served
            // to a p2p connection before its first call is answered).
            let root = format!("{}/job", hlfs_agent::dbus::paths::ROOT);
            let xml: String = match c
                .call(
                    &root,
                    "org.freedesktop.DBus.Introspectable",
                    "Introspect",
                    &(),
                )
                .await
            {
                Ok(x) => x,
                Err(Error::NotFound(_)) => String::new(),
                Err(e) => return Err(e),
            };
            let ids: Vec<u32> = xml
                .split("<node name=\"")
                .skip(1)
                .filter_map(|r| r.split('"').next()?.parse().ok())
                .collect();
            let mut rows: Vec<(u32, Value)> = Vec::new();
            for id in ids {
                let path = hlfs_agent::dbus::paths::job(id);
                let p = match c.props(path.as_str(), "org.hlfs.Job1").await {
                    Ok(p) => p,
                    // Gone meanwhile (finished jobs expire).
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                rows.push((
                    id,
                    json!({"id": id, "kind": prop_str(&p, "Kind"),
                    "state": prop_str(&p, "State"), "progress": prop_f64(&p, "Progress"),
                    "description": prop_str(&p, "Description"), "error": prop_str(&p, "Error")}),
                ));
            }
            rows.sort_by_key(|(id, _)| *id);
            let rows: Vec<Value> = rows.into_iter().map(|(_, v)| v).collect();
            out(json, Value::Array(rows.clone()), || {
                let mut s = format!(
                    "{:>4}  {:<8} {:<10} {:>6}  DESCRIPTION\n",
                    "ID", "KIND", "STATE", "DONE"
                );
                for r in &rows {
                    s += &format!(
                        "{:>4}  {:<8} {:<10} {:>5.1}%  {}\n",
                        r["id"].as_u64().unwrap_or(0),
                        r["kind"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["progress"].as_f64().unwrap_or(0.0),
                        r["description"].as_str().unwrap_or("")
                    );
                }
                s
            });
        }
        Cmd::Job(JobCmd::Cancel { id }) => {
            let path = hlfs_agent::dbus::paths::job(*id);
            let was_running: bool = c
                .call(path.as_str(), "org.hlfs.Job1", "Cancel", &())
                .await?;
            out(json, json!({"id": id, "cancelled": was_running}), || {
                if was_running {
                    format!("cancelled job {id}")
                } else {
                    format!("job {id} was not running")
                }
            });
        }
        // Handled in main, before connecting.
        Cmd::Completions { .. } | Cmd::Man => {}
    }
    Ok(())
}

/// Exports a volume, or its snapshot when `r` names one (`Snapshot1.Export`: the snapshot's
/// frozen contents, not the head's), and follows the job. The image path is made absolute
/// here because hlfsd opens it, from its own working directory.
async fn export(c: &Client, json: bool, r: &VolRef, image: &Path, format: &str) -> Result<()> {
    let img = std::path::absolute(image).map_err(|e| Error::io("resolve", image, e))?;
    let dest = img
        .to_str()
        .ok_or_else(|| Error::invalid("image path", img.display().to_string(), "not UTF-8"))?;
    let job: OwnedObjectPath = match &r.snapshot {
        Some(s) => {
            let path = hlfs_agent::dbus::paths::snapshot(&r.pool, &r.volume, s);
            c.call(path.as_str(), SNAPSHOT, "Export", &(dest, format))
                .await?
        }
        None => c.call(&r.path(), VOLUME, "Export", &(dest, format)).await?,
    };
    follow_job(c, json, job.as_str(), &format!("export {r} -> {dest}")).await
}

/// Polls a job until it ends, drawing a progress bar on a terminal.
async fn follow_job(c: &Client, json: bool, job: &str, what: &str) -> Result<()> {
    let bar = !json && std::io::stderr().is_terminal();
    loop {
        let p = c.props(job, "org.hlfs.Job1").await?;
        let state = prop_str(&p, "State");
        let pct = prop_f64(&p, "Progress");
        if bar {
            let filled = (pct / 100.0 * 40.0).round() as usize;
            eprint!(
                "\r{what} [{}{}] {pct:5.1}%",
                "#".repeat(filled.min(40)),
                ".".repeat(40 - filled.min(40))
            );
            let _ = std::io::stderr().flush();
        }
        if state != "running" {
            if bar {
                eprintln!();
            }
            return match state.as_str() {
                "done" => {
                    out(
                        json,
                        json!({"job": job, "state": state, "what": what}),
                        || format!("{what}: done"),
                    );
                    Ok(())
                }
                _ => Err(Error::Remote {
                    name: format!("job {state}"),
                    message: format!("{what}: {state}: {}", prop_str(&p, "Error")),
                }),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Prints the snapshots as a tree (children under their parent, by sequence).
async fn snapshot_tree(c: &Client, json: bool, volume: &str) -> Result<()> {
    let r = c.resolve_volume(volume).await?;
    let snaps: Vec<(String, OwnedObjectPath)> =
        c.call(&r.path(), VOLUME, "ListSnapshots", &()).await?;
    let mut rows = Vec::new();
    for (name, path) in snaps {
        let p = c.props(path.as_str(), "org.hlfs.Snapshot1").await?;
        rows.push(json!({"name": name, "sequence": prop_u64(&p, "Sequence"), "created": prop_u64(&p, "Created"),
            "parent": prop_str(&p, "Parent"), "consistency": prop_str(&p, "Consistency"),
            "size": prop_u64(&p, "Size"), "allocated": prop_u64(&p, "Allocated"),
            "exclusive": prop_u64(&p, "ExclusiveBytes")}));
    }
    rows.sort_by_key(|r| r["sequence"].as_u64().unwrap_or(0));
    out(json, Value::Array(rows.clone()), || {
        let mut s = format!("{r}\n");
        fn walk(rows: &[Value], parent: &str, indent: &str, s: &mut String) {
            let kids: Vec<&Value> = rows
                .iter()
                .filter(|r| r["parent"].as_str() == Some(parent))
                .collect();
            for (i, k) in kids.iter().enumerate() {
                let last = i + 1 == kids.len();
                let name = k["name"].as_str().unwrap_or("");
                *s += &format!(
                    "{indent}{}{name} (seq {}, {}, {} exclusive)\n",
                    if last { "└─" } else { "├─" },
                    k["sequence"],
                    k["consistency"].as_str().unwrap_or(""),
                    human_size(k["exclusive"].as_u64().unwrap_or(0))
                );
                walk(
                    rows,
                    name,
                    &format!("{indent}{}", if last { "  " } else { "│ " }),
                    s,
                );
            }
        }
        walk(&rows, "", "", &mut s);
        if rows.is_empty() {
            s += "(no snapshots)\n";
        }
        s
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("0").ok(), Some(0));
        assert_eq!(parse_time("1970-01-01").ok(), Some(0));
        assert_eq!(parse_time("2026-11-22T05:00:00Z").ok(), Some(1_795_323_600));
        assert_eq!(parse_time("2026-11-22 05:00").ok(), Some(1_795_323_600));
        assert_eq!(parse_time("2000-02-29T23:59:59").ok(), Some(951_868_799));
        assert_eq!(parse_time("2026-01-01").ok(), Some(1_767_225_600));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-22T25:00",
            "1969-12-31",
            "2026-11",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }
}
