//! The verbs of `hlfs-virsh` and the pass-through to virsh.

use hlfs_client::names::{Location, PoolRef};
use hlfs_pool_plugin::agent::Agent;
use hlfs_pool_plugin::domain_xml::{self, PoolTable};
use hlfs_pool_plugin::pool_xml::{self, PoolInfo};
use hlfs_pool_plugin::publish::{self, PublishOptions};
use hlfs_pool_plugin::volume_xml::{self, VolumeInfo};
use hlfs_pool_plugin::xmldoc;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use tracing::debug;

const USAGE: &str = "\
hlfs-virsh: virsh for HLFS (see docs/libvirt.md)

usage: hlfs-virsh [-c URI] [--hlfs-socket PATH] [--nbd-socket PATH] VERB ARGS...

HLFS pools and volumes (the seeds' XML, type='hlfs', HLFS URIs):
  pool-create FILE | pool-define FILE    add an HLFS pool
  pool-destroy POOL                      (HLFS pools stay active while hlfsd runs)
  pool-undefine POOL                     forget an empty HLFS pool
  pool-dumpxml POOL                      the pool's XML
  vol-create POOL FILE                   new volume; <backingStore> URI%SNAP makes a clone
  vol-delete VOL [--pool POOL]           VOL: URI (the key), hlfs:URI, POOL/VOL, or NAME --pool
  vol-list POOL                          volumes and their paths
  vol-dumpxml VOL [--pool POOL]          the volume's XML
Domains with protocol='hlfs' disks (or type='volume' disks of HLFS pools):
  define FILE | create FILE              translate and define/start through libvirt
  translate FILE                         print the translated XML
Publication of HLFS pools as libvirt dir pools on the FUSE view:
  publish [--once] [--mountpoint DIR]

POOL: an HLFS pool name or URI (local:///DIR, hdfs://HOST:PORT/DIR).
Every other verb, and these verbs on what is not HLFS's, run virsh with the same arguments.
";

/// Global options, and the arguments to give virsh on pass-through (ours removed).
struct Globals {
    libvirt_uri: Option<String>,
    dbus_socket: Option<PathBuf>,
    nbd_socket: Option<PathBuf>,
    virsh_args: Vec<String>,
    rest: Vec<String>,
}

fn globals(args: Vec<String>) -> Result<Globals, String> {
    let mut g = Globals {
        libvirt_uri: None,
        dbus_socket: None,
        nbd_socket: None,
        virsh_args: Vec::new(),
        rest: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--hlfs-socket" => g.dbus_socket = Some(value(&a)?.into()),
            "--nbd-socket" => g.nbd_socket = Some(value(&a)?.into()),
            "-c" | "--connect" => {
                let v = value(&a)?;
                g.virsh_args.push(a.clone());
                g.virsh_args.push(v.clone());
                g.libvirt_uri = Some(v);
            }
            s if s.starts_with("--hlfs-socket=") => {
                g.dbus_socket = Some(s["--hlfs-socket=".len()..].into())
            }
            s if s.starts_with("--nbd-socket=") => {
                g.nbd_socket = Some(s["--nbd-socket=".len()..].into())
            }
            s if s.starts_with("--connect=") => {
                g.libvirt_uri = Some(s["--connect=".len()..].into());
                g.virsh_args.push(a.clone());
            }
            s if s.starts_with('-') && g.rest.is_empty() => g.virsh_args.push(a.clone()),
            _ => {
                g.rest.push(a.clone());
                g.rest.extend(it.by_ref());
                break;
            }
        }
    }
    Ok(g)
}

/// Runs virsh with `args` in place of this process.
fn virsh(g: &Globals) -> i32 {
    // What this process printed must come out before virsh replaces it.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let err = std::process::Command::new(std::env::var_os("HLFS_VIRSH").unwrap_or("virsh".into()))
        .args(&g.virsh_args)
        .args(&g.rest)
        .exec();
    eprintln!("error: cannot run virsh: {err}");
    1
}

/// What a verb did: done here, or not HLFS's (pass through).
enum Outcome {
    Done,
    PassThrough,
}

pub async fn main(args: Vec<String>) -> i32 {
    let g = match globals(args) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let Some(verb) = g.rest.first().cloned() else {
        // `hlfs-virsh --help`: ours first, then virsh's.
        if g.virsh_args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{USAGE}");
        }
        return virsh(&g);
    };
    let args: Vec<String> = g.rest[1..].to_vec();
    let r = match verb.as_str() {
        "hlfs-help" => {
            print!("{USAGE}");
            Ok(Outcome::Done)
        }
        // Ours first, then virsh's own (every other verb is virsh's).
        "help" if args.is_empty() => {
            println!("{USAGE}");
            Ok(Outcome::PassThrough)
        }
        "pool-create" | "pool-define" => pool_create(&g, &verb, &args).await,
        "pool-destroy" => pool_destroy(&g, &args).await,
        "pool-undefine" => pool_undefine(&g, &args).await,
        "pool-dumpxml" => pool_dumpxml(&g, &args).await,
        "vol-create" => vol_create(&g, &args).await,
        "vol-delete" => vol_delete(&g, &args).await,
        "vol-list" => vol_list(&g, &args).await,
        "vol-dumpxml" => vol_dumpxml(&g, &args).await,
        "define" | "create" | "translate" => domain(&g, &verb, &args).await,
        "publish" => publish_verb(&g, &args).await,
        _ => Ok(Outcome::PassThrough),
    };
    match r {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::PassThrough) => virsh(&g),
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Positional arguments and `--pool P` / `--file F` style options.
fn split_opts(args: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            if let Some((k, v)) = name.split_once('=') {
                opts.push((k.to_string(), v.to_string()));
            } else if matches!(name, "pool" | "file" | "vol" | "mountpoint") {
                opts.push((name.to_string(), it.next().cloned().unwrap_or_default()));
            } else {
                opts.push((name.to_string(), String::new()));
            }
        } else {
            pos.push(a.clone());
        }
    }
    (pos, opts)
}

fn opt<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn looks_hlfs(s: &str) -> bool {
    let s = s.strip_prefix("hlfs:").unwrap_or(s);
    s.starts_with("local://") || s.starts_with("hdfs://")
}

async fn agent(g: &Globals) -> Result<Agent, String> {
    Agent::connect(g.dbus_socket.as_deref())
        .await
        .map_err(|e| e.message())
}

/// hlfsd, if it answers; a name that is not a URI may then be libvirt's, so no error yet.
async fn agent_for(g: &Globals, arg: &str) -> Result<Option<Agent>, String> {
    match agent(g).await {
        Ok(a) => Ok(Some(a)),
        Err(e) if looks_hlfs(arg) => Err(e),
        Err(e) => {
            debug!("hlfsd not reachable ({e}): {arg} is left to virsh");
            Ok(None)
        }
    }
}

/// The HLFS pool `arg` names, or `None` if it is not one (then virsh gets the verb).
async fn hlfs_pool(g: &Globals, arg: &str) -> Result<Option<(Agent, String, String)>, String> {
    let Some(a) = agent_for(g, arg).await? else {
        return Ok(None);
    };
    match a.find_pool(arg).await {
        Ok((name, _)) if !looks_hlfs(arg) && libvirt_has_own_pool(g, &a, &name).await => {
            debug!(
                "libvirt has a pool {name:?} of its own: left to virsh (use the URI for hlfsd's)"
            );
            Ok(None)
        }
        Ok((name, uri)) => Ok(Some((a, name, uri))),
        Err(e) if looks_hlfs(arg) => Err(e.message()),
        Err(_) => Ok(None),
    }
}

/// Whether libvirt has a pool named `name` that is not the publication of hlfsd's pool of that
/// name (a `dir` pool on its FUSE-view directory): then a bare name means libvirt's pool (e.g.
/// libvirt's `default` and hlfsd's `default`), and hlfsd's is reached by its URI.
async fn libvirt_has_own_pool(g: &Globals, a: &Agent, name: &str) -> bool {
    let Ok(conn) = virt::connect::Connect::open(g.libvirt_uri.as_deref()) else {
        return false;
    };
    let Ok(pool) = conn.lookup_storage_pool_by_name(name) else {
        return false;
    };
    let Ok(root) = pool.xml_desc(0).map(|x| xmldoc::parse(&x)) else {
        return true;
    };
    let Ok(root) = root else {
        return true;
    };
    let target = root
        .child("target")
        .and_then(|t| t.child("path"))
        .map(|p| PathBuf::from(p.text.trim()));
    let mount = a.fuse_mountpoint().await;
    let published = root.attr("type") == Some("dir")
        && target.is_some_and(|t| match &mount {
            Some(m) => t == publish::pool_dir(m, name),
            // FUSE view not mounted now (or `publish --mountpoint`): its layout still tells.
            None => t.ends_with(Path::new("pools").join(name)),
        });
    !published
}

async fn pool_create(g: &Globals, verb: &str, args: &[String]) -> Result<Outcome, String> {
    let (pos, opts) = split_opts(args);
    let Some(file) = pos.first().map(String::as_str).or(opt(&opts, "file")) else {
        return Ok(Outcome::PassThrough); // pool-create-as style or an error virsh reports
    };
    let text = read_file(file)?;
    let root = xmldoc::parse(&text).map_err(|e| format!("{file}: {e}"))?;
    if pool_xml::pool_type(&root) != Some("hlfs") {
        return Ok(Outcome::PassThrough);
    }
    let spec = pool_xml::parse_pool(&root).map_err(|e| format!("{file}: {e}"))?;
    let a = agent(g).await?;
    let changed = a
        .create_pool(&spec.name, &spec.uri)
        .await
        .map_err(|e| e.message())?;
    if verb == "pool-create" && !changed {
        return Err(format!(
            "Failed to create pool from {file}\nerror: pool '{}' already exists with URI {}",
            spec.name, spec.uri
        ));
    }
    let what = if verb == "pool-create" {
        "created"
    } else {
        "defined"
    };
    println!("Pool {} {what} from {file}\n", spec.name);
    Ok(Outcome::Done)
}

async fn pool_destroy(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (pos, _) = split_opts(args);
    let Some(arg) = pos.first() else {
        return Ok(Outcome::PassThrough);
    };
    let Some((_, name, _)) = hlfs_pool(g, arg).await? else {
        return Ok(Outcome::PassThrough);
    };
    println!(
        "Pool {name} stays active: hlfsd serves its pools while it runs (pool-undefine forgets an empty pool)\n"
    );
    Ok(Outcome::Done)
}

async fn pool_undefine(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (pos, _) = split_opts(args);
    let Some(arg) = pos.first() else {
        return Ok(Outcome::PassThrough);
    };
    let Some((a, name, _)) = hlfs_pool(g, arg).await? else {
        return Ok(Outcome::PassThrough);
    };
    a.delete_pool(&name).await.map_err(|e| e.message())?;
    println!("Pool {name} has been undefined\n");
    Ok(Outcome::Done)
}

async fn pool_dumpxml(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (pos, _) = split_opts(args);
    let Some(arg) = pos.first() else {
        return Ok(Outcome::PassThrough);
    };
    let Some((a, name, uri)) = hlfs_pool(g, arg).await? else {
        return Ok(Outcome::PassThrough);
    };
    let vols = a.volumes(&name).await.map_err(|e| e.message())?;
    let mount = a.fuse_mountpoint().await;
    let info = PoolInfo {
        capacity: vols.iter().map(|v| v.size).sum(),
        allocation: vols.iter().map(|v| v.physical).sum(),
        target: mount.map(|m| publish::pool_dir(&m, &name).to_string_lossy().into_owned()),
        name,
        uri,
    };
    print!("{}", pool_xml::pool_xml(&info));
    Ok(Outcome::Done)
}

async fn vol_create(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (pos, opts) = split_opts(args);
    // virsh's forms: `vol-create POOL FILE`, `vol-create --pool POOL FILE`, `--file FILE`.
    let mut pos = pos.iter().map(String::as_str);
    let pool_arg = opt(&opts, "pool").or_else(|| pos.next());
    let file = opt(&opts, "file").or_else(|| pos.next());
    let (Some(pool_arg), Some(file)) = (pool_arg, file) else {
        return Ok(Outcome::PassThrough);
    };
    let Some((a, pool, _)) = hlfs_pool(g, pool_arg).await? else {
        return Ok(Outcome::PassThrough);
    };
    let text = read_file(file)?;
    let root = xmldoc::parse(&text).map_err(|e| format!("{file}: {e}"))?;
    let spec = volume_xml::parse_volume(&root).map_err(|e| format!("{file}: {e}"))?;
    match &spec.backing {
        Some(base) => {
            let table = a.pools().await.map_err(|e| e.message())?;
            let (bp, bv, snap) = table.resolve(&base.to_string())?;
            let snap = snap.unwrap_or_default();
            a.clone_volume(&bp, &bv, &snap, &pool, &spec.name)
                .await
                .map_err(|e| e.message())?;
            if let Some(cap) = spec.capacity {
                let now = a.volume(&pool, &spec.name).await.map_err(|e| e.message())?;
                if cap > now.size {
                    a.resize_volume(&pool, &spec.name, cap)
                        .await
                        .map_err(|e| e.message())?;
                }
            }
        }
        None => {
            let cap = spec.capacity.unwrap_or_default();
            a.create_volume(&pool, &spec.name, cap)
                .await
                .map_err(|e| e.message())?;
        }
    }
    println!("Vol {} created from {file}\n", spec.name);
    Ok(Outcome::Done)
}

/// `(agent, pool, volume)` of a volume argument: a URI (key), `hlfs:URI` (path), `POOL/VOL`,
/// or a name with `--pool`.
async fn hlfs_volume(
    g: &Globals,
    vol: &str,
    pool: Option<&str>,
) -> Result<Option<(Agent, String, String)>, String> {
    if let Some(p) = pool {
        let Some((a, name, _)) = hlfs_pool(g, p).await? else {
            return Ok(None);
        };
        return Ok(Some((a, name, vol.to_string())));
    }
    let v = vol.strip_prefix("hlfs:").unwrap_or(vol);
    let loc = match Location::parse_volume(v, "") {
        Ok(l) if l.snapshot.is_none() && !matches!(&l.pool, PoolRef::Name(n) if n.is_empty()) => l,
        _ if looks_hlfs(vol) => return Err(format!("{vol:?} does not name an HLFS volume")),
        _ => return Ok(None),
    };
    let Some(a) = agent_for(g, vol).await? else {
        return Ok(None);
    };
    let table = a.pools().await.map_err(|e| e.message())?;
    match table.resolve(&loc.to_string()) {
        Ok((p, v, _)) => Ok(Some((a, p, v))),
        Err(e) if looks_hlfs(vol) => Err(e),
        Err(_) => Ok(None),
    }
}

async fn vol_delete(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (pos, opts) = split_opts(args);
    let Some(vol) = pos.first().map(String::as_str).or(opt(&opts, "vol")) else {
        return Ok(Outcome::PassThrough);
    };
    let Some((a, pool, name)) = hlfs_volume(g, vol, opt(&opts, "pool")).await? else {
        return Ok(Outcome::PassThrough);
    };
    a.delete_volume(&pool, &name)
        .await
        .map_err(|e| format!("Failed to delete vol {vol}\nerror: {}", e.message()))?;
    println!("Vol {vol} deleted\n");
    Ok(Outcome::Done)
}

async fn vol_list(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (pos, opts) = split_opts(args);
    let Some(arg) = pos.first().map(String::as_str).or(opt(&opts, "pool")) else {
        return Ok(Outcome::PassThrough);
    };
    let Some((a, name, uri)) = hlfs_pool(g, arg).await? else {
        return Ok(Outcome::PassThrough);
    };
    let vols = a.volumes(&name).await.map_err(|e| e.message())?;
    let details = opt(&opts, "details").is_some();
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            let mut r = vec![v.name.clone(), format!("hlfs:{uri}/{}", v.name)];
            if details {
                r.push("network".into());
                r.push(human(v.size));
                r.push(human(v.physical));
            }
            r
        })
        .collect();
    let header: Vec<String> = if details {
        ["Name", "Path", "Type", "Capacity", "Allocation"]
    } else {
        ["Name", "Path", "", "", ""]
    }
    .iter()
    .filter(|s| !s.is_empty())
    .map(|s| s.to_string())
    .collect();
    print!("{}", table(&header, &rows));
    Ok(Outcome::Done)
}

/// virsh's table layout (vshTable): a leading space, columns padded and 3 spaces apart, a rule
/// of width + 3 dashes per column, a blank line after.
fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s += &format!(" {c:<width$}  ", width = w[i]);
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = line(header);
    s += &"-".repeat(w.iter().map(|x| x + 3).sum::<usize>());
    s += "\n";
    for r in rows {
        s += &line(r);
    }
    s += "\n";
    s
}

/// virsh's sizes: `1.00 GiB`.
fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2} {}", units[i])
}

async fn vol_dumpxml(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (pos, opts) = split_opts(args);
    let Some(vol) = pos.first().map(String::as_str).or(opt(&opts, "vol")) else {
        return Ok(Outcome::PassThrough);
    };
    let Some((a, pool, name)) = hlfs_volume(g, vol, opt(&opts, "pool")).await? else {
        return Ok(Outcome::PassThrough);
    };
    let table = a.pools().await.map_err(|e| e.message())?;
    let pool_uri = table
        .by_name(&pool)
        .map(|p| p.1.clone())
        .unwrap_or_default();
    let v = a.volume(&pool, &name).await.map_err(|e| e.message())?;
    let mount = a.fuse_mountpoint().await;
    let base_path = match (&mount, v.base.is_empty()) {
        (Some(m), false) => table.resolve(&v.base).ok().and_then(|(p, bv, s)| {
            s.map(|s| {
                m.join("snapshots")
                    .join(p)
                    .join(bv)
                    .join(s)
                    .to_string_lossy()
                    .into_owned()
            })
        }),
        _ => None,
    };
    let info = VolumeInfo {
        name: v.name,
        pool_uri,
        capacity: v.size,
        allocation: v.allocated,
        physical: v.physical,
        base: v.base,
        base_path,
    };
    print!("{}", volume_xml::volume_xml(&info));
    Ok(Outcome::Done)
}

async fn domain(g: &Globals, verb: &str, args: &[String]) -> Result<Outcome, String> {
    let (pos, opts) = split_opts(args);
    let Some(file) = pos.first().map(String::as_str).or(opt(&opts, "file")) else {
        return Ok(Outcome::PassThrough);
    };
    let text = read_file(file)?;
    let (pools, nbd) = match agent(g).await {
        Ok(a) => (
            a.pools().await.map_err(|e| e.message())?,
            a.nbd_socket(g.nbd_socket.as_deref())
                .await
                .map_err(|e| e.message())?,
        ),
        Err(e) if text.contains("hlfs") || verb == "translate" => return Err(e),
        Err(_) => (PoolTable::default(), PathBuf::new()),
    };
    let t = domain_xml::translate(&text, &pools, &nbd).map_err(|e| format!("{file}: {e}"))?;
    if verb == "translate" {
        print!("{}", t.xml);
        return Ok(Outcome::Done);
    }
    if t.disks.is_empty() {
        return Ok(Outcome::PassThrough); // nothing of HLFS's: virsh with all its options
    }
    let conn = virt::connect::Connect::open(g.libvirt_uri.as_deref())
        .map_err(|e| format!("failed to connect to the hypervisor: {e}"))?;
    let name = if verb == "define" {
        let d = conn
            .define_domain_xml_flags(&t.xml, virt::sys::VIR_DOMAIN_DEFINE_VALIDATE)
            .map_err(|e| format!("Failed to define domain from {file}\nerror: {e}"))?;
        d.name().unwrap_or_default()
    } else {
        let d = conn
            .create_domain_xml(&t.xml, virt::sys::VIR_DOMAIN_START_VALIDATE)
            .map_err(|e| format!("Failed to create domain from {file}\nerror: {e}"))?;
        d.name().unwrap_or_default()
    };
    for d in &t.disks {
        debug!(from = %d.from, export = %d.export, readonly = d.readonly, "HLFS disk");
    }
    let what = if verb == "define" {
        "defined"
    } else {
        "created"
    };
    println!("Domain '{name}' {what} from {file}\n");
    Ok(Outcome::Done)
}

async fn publish_verb(g: &Globals, args: &[String]) -> Result<Outcome, String> {
    let (_, opts) = split_opts(args);
    let o = PublishOptions {
        libvirt_uri: g.libvirt_uri.clone(),
        dbus_socket: g.dbus_socket.clone(),
        mountpoint: opt(&opts, "mountpoint").map(PathBuf::from),
        once: opt(&opts, "once").is_some(),
    };
    publish::run(o).await?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globals_and_pass_through_arguments() {
        let g = globals(
            [
                "-c",
                "qemu:///system",
                "--hlfs-socket",
                "/s",
                "-q",
                "vol-list",
                "--pool",
                "p",
            ]
            .map(String::from)
            .to_vec(),
        )
        .unwrap();
        assert_eq!(g.libvirt_uri.as_deref(), Some("qemu:///system"));
        assert_eq!(g.dbus_socket.as_deref(), Some(Path::new("/s")));
        assert_eq!(g.virsh_args, ["-c", "qemu:///system", "-q"]);
        assert_eq!(g.rest, ["vol-list", "--pool", "p"]);
        let (pos, opts) = split_opts(&g.rest[1..]);
        assert!(pos.is_empty());
        assert_eq!(opt(&opts, "pool"), Some("p"));
    }

    #[test]
    fn virsh_table() {
        let t = table(
            &["Name".into(), "Path".into()],
            &[vec!["v".into(), "hlfs:local:///p/v".into()]],
        );
        assert_eq!(
            t,
            " Name   Path\n---------------------------\n v      hlfs:local:///p/v\n\n"
        );
        assert_eq!(human(1 << 30), "1.00 GiB");
    }
}
