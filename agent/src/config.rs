//! Command-line flags and the TOML configuration file, merged into [`Settings`]. Flags win over
//! the file; the file wins over the embedded defaults (see `paths`).

use crate::error::{Error, Result};
use crate::names::{check_name, parse_size, PoolUri, VolumeSpec};
use crate::paths;
use crate::pools::HdfsSettings;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Default NBD port (IANA), used when `--nbd-tcp` gives only a host.
pub const NBD_PORT: u16 = 10809;
/// Default read cache per open volume.
pub const DEFAULT_CACHE: u64 = 64 << 20;

/// `hlfsd` flags.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "hlfsd",
    version,
    about = "HLFS host agent: serves HLFS volumes to QEMU over NBD",
    long_about = "HLFS host agent: serves HLFS volumes to QEMU over NBD.\n\n\
                  With no arguments it starts an embedded default: a local pool named 'default' \
                  in the data directory and an NBD Unix socket in the runtime directory."
)]
pub struct Cli {
    /// Directory for pools and the pool registry [root: /var/lib/hlfs, else $XDG_DATA_HOME/hlfs]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory for sockets [root: /run/hlfs, else $XDG_RUNTIME_DIR/hlfs or /tmp/hlfs-$UID]
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// TOML configuration file (pools, listeners, cache size)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NBD Unix socket path [RUNTIME_DIR/nbd.sock]
    #[arg(long, value_name = "PATH")]
    pub nbd_socket: Option<PathBuf>,
    /// Also serve NBD over TCP on ADDR: PORT (loopback), HOST or HOST:PORT [port 10809]
    #[arg(long, value_name = "ADDR")]
    pub nbd_tcp: Option<String>,
    /// Read cache per open volume, e.g. 64M
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Create a volume at start-up unless it exists (repeatable), e.g. default/vm1:10G
    #[arg(long, value_name = "POOL/NAME:SIZE")]
    pub create_volume: Vec<String>,
    /// Peer-to-peer D-Bus socket path [RUNTIME_DIR/dbus.sock]
    #[arg(long, value_name = "PATH")]
    pub dbus_socket: Option<PathBuf>,
    /// Also serve the D-Bus API on the session bus as org.hlfs.Hlfs1
    #[arg(long, conflicts_with = "system_bus")]
    pub session_bus: bool,
    /// Also serve the D-Bus API on the system bus as org.hlfs.Hlfs1 (needs the policy file)
    #[arg(long)]
    pub system_bus: bool,
    /// Mount the FUSE view (volumes as files) on DIR [RUNTIME_DIR/mnt when /dev/fuse is usable]
    #[arg(long, value_name = "DIR", conflicts_with = "no_fuse")]
    pub fuse_mount: Option<PathBuf>,
    /// Do not mount the FUSE view
    #[arg(long)]
    pub no_fuse: bool,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    /// Read cache per open volume: bytes or a size such as "64M".
    pub cache_size: Option<SizeValue>,
    #[serde(default)]
    pub nbd: NbdSection,
    /// `[[pool]]` tables.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolEntry>,
    /// `[cleaner]`: inline cleaning policy of every volume.
    pub cleaner: Option<CleanerSection>,
    /// `[hdfs]`: how HDFS pools reach HDFS and size their local journals.
    pub hdfs: Option<HdfsSection>,
    /// `[limits]`: connection, memory and descriptor limits.
    pub limits: Option<LimitsSection>,
    /// `[fuse]`: the FUSE view.
    pub fuse: Option<FuseSection>,
}

/// `[fuse]`: where the FUSE view is mounted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuseSection {
    /// Mount point; the daemon fails to start if it cannot mount there.
    pub mountpoint: Option<PathBuf>,
    /// false: no FUSE view. Default true (at RUNTIME_DIR/mnt when /dev/fuse is usable).
    pub enabled: Option<bool>,
}

/// Whether and where to mount the FUSE view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuseMount {
    /// No FUSE view.
    Off,
    /// The embedded default: mounted if FUSE is usable here, else the daemon logs why and
    /// goes on without it.
    Default(PathBuf),
    /// Asked for (`--fuse-mount`, `[fuse] mountpoint`): failing to mount is an error.
    Explicit(PathBuf),
}

/// `[hdfs]`: settings of every HDFS pool.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HdfsSection {
    /// Local write journal per open HDFS volume (bytes or "256M"); writes wait for uploads
    /// when it is full. Default 256M, at least 16M.
    pub journal_size: Option<SizeValue>,
    /// Seconds to wait for a NameNode at first contact. Default 10.
    pub connect_timeout: Option<f64>,
    /// Seconds any later HDFS call may take. Default 30.
    pub op_timeout: Option<f64>,
}

/// `[cleaner]`: when and how much the cleaner reclaims.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanerSection {
    /// false: clean only on request (`hlfs volume clean`, D-Bus `Clean`).
    pub enabled: Option<bool>,
    /// Clean when a volume's log exceeds its capacity x (1 + this). Default 0.25.
    pub space_overhead: Option<f64>,
    /// Segments more live than this are never cleaned. Default 0.8.
    pub max_live_ratio: Option<f64>,
    /// Segments cleaned per pass at most. Default 4.
    pub max_segments_per_pass: Option<usize>,
    /// false: no background cleaner (inline passes at segment seals only). Default true.
    pub background: Option<bool>,
    /// Background cleaner: bytes copied per second at most (0: no limit). Default 64M.
    pub rate: Option<SizeValue>,
    /// Background cleaner: also clean when reclaimable space exceeds this fraction of the log.
    /// Default 0.5.
    pub reclaimable_ratio: Option<f64>,
    /// Background cleaner: milliseconds between ticks. Default 100.
    pub interval_ms: Option<u64>,
    /// Background cleaner: size of the token bucket that paces copying at `rate`, i.e. the
    /// largest burst of copying above the rate (at least 64K is used). Default 1M.
    pub step: Option<SizeValue>,
    /// Background cleaner: relay out a volume (rewrite its data in LBA order, 64 MiB per
    /// tick) once nobody has written it for this many milliseconds. Default 0: never.
    pub relayout_idle_ms: Option<u64>,
}

/// A size written as a number of bytes or as text with a suffix.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// `[nbd]` listeners.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdSection {
    /// Unix socket path.
    pub unix: Option<PathBuf>,
    /// TCP address (same forms as `--nbd-tcp`).
    pub tcp: Option<String>,
    /// Group of the Unix socket. Default: `libvirt-qemu` (the user Debian's libvirt runs
    /// QEMU as) when the daemon is root and that group exists, else the daemon's own group.
    pub socket_group: Option<String>,
    /// Mode of the Unix socket, in octal ("0660"). Default 0660 with a group from
    /// `socket_group`, else 0600. Never writable by others.
    pub socket_mode: Option<String>,
}

/// Group that Debian's libvirt runs QEMU as: the NBD socket's default group, so that guests
/// defined in libvirt can open it.
pub const LIBVIRT_QEMU_GROUP: &str = "libvirt-qemu";

/// Who may connect to the NBD Unix socket (connecting needs write permission on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    /// `(name, gid)` of the socket's group; None: the daemon's own group.
    pub group: Option<(String, u32)>,
    pub mode: u32,
}

impl SocketAccess {
    /// The rule from `[nbd] socket_group` and `socket_mode` (see [`NbdSection`]). A named
    /// group must exist; the default group is used only if it does.
    pub fn resolve(sec: &NbdSection, daemon_is_root: bool) -> Result<SocketAccess> {
        let group = match &sec.socket_group {
            Some(name) => match crate::users::group_info(name) {
                Some((gid, _)) => Some((name.clone(), gid)),
                None => {
                    return Err(Error::invalid(
                        "[nbd] socket_group",
                        name.as_str(),
                        "no such group",
                    ))
                }
            },
            None if daemon_is_root => crate::users::group_info(LIBVIRT_QEMU_GROUP)
                .map(|(gid, _)| (LIBVIRT_QEMU_GROUP.to_string(), gid)),
            None => None,
        };
        let mode = match &sec.socket_mode {
            Some(text) => {
                let m = u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| {
                    Error::invalid(
                        "[nbd] socket_mode",
                        text.as_str(),
                        "expected octal, e.g. 0660",
                    )
                })?;
                if m & !0o777 != 0 {
                    return Err(Error::invalid(
                        "[nbd] socket_mode",
                        text.as_str(),
                        "only permission bits (at most 0777) are allowed",
                    ));
                }
                if m & 0o002 != 0 {
                    return Err(Error::invalid(
                        "[nbd] socket_mode",
                        text.as_str(),
                        "the NBD socket must never be writable by others: anyone could read \
                         and write every volume",
                    ));
                }
                m
            }
            None if group.is_some() => 0o660,
            None => 0o600,
        };
        Ok(SocketAccess { group, mode })
    }
}

/// One `[[pool]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    pub name: String,
    pub uri: String,
}

/// Everything the daemon needs to start, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub cache_bytes: usize,
    pub nbd_unix: PathBuf,
    /// Group and mode of the NBD Unix socket.
    pub nbd_access: SocketAccess,
    pub nbd_tcp: Option<SocketAddr>,
    pub dbus_socket: PathBuf,
    pub bus: Option<crate::dbus::BusKind>,
    /// Pools named in the configuration file.
    pub pools: Vec<(String, PoolUri)>,
    pub create_volumes: Vec<VolumeSpec>,
    /// None: the cleaner runs only on request.
    pub cleaner: Option<crate::manager::CleanerSettings>,
    /// Settings of HDFS pools.
    pub hdfs: HdfsSettings,
    /// Connection, memory and descriptor limits.
    pub limits: crate::limits::LimitSettings,
    /// The FUSE view.
    pub fuse: FuseMount,
}

impl ConfigFile {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read config", path, e))?;
        ConfigFile::parse(&text, path)
    }

    /// Parses the text of a configuration file (`path` is for error messages).
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile> {
        toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    }
}

fn size_of(v: &SizeValue) -> Result<u64> {
    match v {
        SizeValue::Bytes(n) => Ok(*n),
        SizeValue::Text(s) => parse_size(s),
    }
}

/// Parses a TCP listen address: `PORT` (loopback), `HOST` (port 10809) or `HOST:PORT`.
pub fn parse_tcp_addr(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, NBD_PORT));
    }
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{NBD_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| Error::invalid("TCP address", s, e.to_string()))?
        .next()
        .ok_or_else(|| Error::invalid("TCP address", s, "resolves to no address"))
}

impl Settings {
    /// Merges flags, the configuration file (if any) and the defaults.
    pub fn resolve(cli: &Cli) -> Result<Settings> {
        let file = match &cli.config {
            Some(p) => ConfigFile::load(p)?,
            None => ConfigFile::default(),
        };
        Settings::resolve_with(cli, &file)
    }

    /// Merges flags, a parsed configuration file (`cli.config` names it in errors) and the
    /// defaults. Reads no file; a TCP address given as a host name is resolved.
    pub fn resolve_with(cli: &Cli, file: &ConfigFile) -> Result<Settings> {
        let data_dir = cli
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(paths::default_data_dir);
        let runtime_dir = cli
            .runtime_dir
            .clone()
            .or(file.runtime_dir.clone())
            .unwrap_or_else(paths::default_runtime_dir);
        let cache = match (&cli.cache_size, &file.cache_size) {
            (Some(s), _) => parse_size(s)?,
            (None, Some(v)) => size_of(v)?,
            (None, None) => DEFAULT_CACHE,
        };
        let cache_bytes = usize::try_from(cache)
            .map_err(|_| Error::invalid("cache size", cache.to_string(), "too large"))?;
        let nbd_unix = cli
            .nbd_socket
            .clone()
            .or(file.nbd.unix.clone())
            .unwrap_or_else(|| runtime_dir.join("nbd.sock"));
        let dbus_socket = cli
            .dbus_socket
            .clone()
            .unwrap_or_else(|| runtime_dir.join("dbus.sock"));
        let bus = match (cli.session_bus, cli.system_bus) {
            (true, _) => Some(crate::dbus::BusKind::Session),
            (_, true) => Some(crate::dbus::BusKind::System),
            _ => None,
        };
        let nbd_tcp = match cli.nbd_tcp.as_deref().or(file.nbd.tcp.as_deref()) {
            Some(a) => Some(parse_tcp_addr(a)?),
            None => None,
        };
        let mut pools = Vec::new();
        for p in &file.pools {
            check_name("pool", &p.name)?;
            if pools.iter().any(|(n, _): &(String, PoolUri)| *n == p.name) {
                return Err(Error::Config {
                    path: cli.config.clone().unwrap_or_default(),
                    why: format!("pool {:?} is defined twice", p.name),
                });
            }
            pools.push((p.name.clone(), PoolUri::parse(&p.uri)?));
        }
        let cleaner = match &file.cleaner {
            Some(c) if c.enabled == Some(false) => None,
            c => {
                let d = crate::manager::CleanerSettings::default();
                let c = c.as_ref();
                let bad = |why: &str| Error::Config {
                    path: cli.config.clone().unwrap_or_default(),
                    why: format!("[cleaner] {why}"),
                };
                let bd = crate::background::BackgroundSettings::default();
                let background = match c.and_then(|c| c.background) {
                    Some(false) => None,
                    _ => {
                        let size = |v: Option<&SizeValue>, d: u64| v.map_or(Ok(d), size_of);
                        let b = crate::background::BackgroundSettings {
                            rate: size(c.and_then(|c| c.rate.as_ref()), bd.rate)?,
                            reclaimable_ratio: c
                                .and_then(|c| c.reclaimable_ratio)
                                .unwrap_or(bd.reclaimable_ratio),
                            interval: c
                                .and_then(|c| c.interval_ms)
                                .map_or(bd.interval, std::time::Duration::from_millis),
                            step_bytes: size(c.and_then(|c| c.step.as_ref()), bd.step_bytes)?,
                            relayout_idle: c
                                .and_then(|c| c.relayout_idle_ms)
                                .filter(|ms| *ms > 0)
                                .map(std::time::Duration::from_millis),
                        };
                        if !(b.reclaimable_ratio > 0.0 && b.reclaimable_ratio <= 1.0) {
                            return Err(bad("reclaimable_ratio must be in (0, 1]"));
                        }
                        if b.interval.is_zero() || b.step_bytes == 0 {
                            return Err(bad("interval_ms and step must be positive"));
                        }
                        Some(b)
                    }
                };
                let s = crate::manager::CleanerSettings {
                    space_overhead: c.and_then(|c| c.space_overhead).unwrap_or(d.space_overhead),
                    max_live_ratio: c.and_then(|c| c.max_live_ratio).unwrap_or(d.max_live_ratio),
                    max_segments_per_pass: c
                        .and_then(|c| c.max_segments_per_pass)
                        .unwrap_or(d.max_segments_per_pass),
                    background,
                };
                if !(s.space_overhead >= 0.0 && s.space_overhead.is_finite()) {
                    return Err(bad("space_overhead must be a number >= 0"));
                }
                if !(s.max_live_ratio > 0.0 && s.max_live_ratio < 1.0) {
                    return Err(bad("max_live_ratio must be between 0 and 1"));
                }
                if s.max_segments_per_pass == 0 {
                    return Err(bad("max_segments_per_pass must be at least 1"));
                }
                Some(s)
            }
        };
        let hdfs = hdfs_settings(file.hdfs.as_ref(), cli.config.as_deref())?;
        let limits = limit_settings(file.limits.as_ref(), cli.config.as_deref())?;
        let create_volumes = cli
            .create_volume
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<VolumeSpec>>>()?;
        let fuse_section = file.fuse.as_ref();
        let fuse = match (
            &cli.fuse_mount,
            fuse_section.and_then(|f| f.mountpoint.clone()),
        ) {
            _ if cli.no_fuse => FuseMount::Off,
            (Some(d), _) => FuseMount::Explicit(d.clone()),
            _ if fuse_section.and_then(|f| f.enabled) == Some(false) => FuseMount::Off,
            (None, Some(d)) => FuseMount::Explicit(d),
            (None, None) => FuseMount::Default(runtime_dir.join("mnt")),
        };
        let fuse_dir = match &fuse {
            FuseMount::Default(d) | FuseMount::Explicit(d) => Some(d),
            FuseMount::Off => None,
        };
        for d in [&data_dir, &runtime_dir].into_iter().chain(fuse_dir) {
            if !d.is_absolute() {
                return Err(Error::invalid(
                    "directory",
                    d.display().to_string(),
                    "must be an absolute path",
                ));
            }
        }
        let nbd_access = SocketAccess::resolve(&file.nbd, paths::euid() == 0)?;
        Ok(Settings {
            data_dir,
            runtime_dir,
            cache_bytes,
            nbd_unix,
            nbd_access,
            nbd_tcp,
            dbus_socket,
            bus,
            pools,
            create_volumes,
            cleaner,
            hdfs,
            limits,
            fuse,
        })
    }
}

/// The `[hdfs]` section over the defaults, checked.
fn hdfs_settings(sec: Option<&HdfsSection>, path: Option<&Path>) -> Result<HdfsSettings> {
    let mut s = HdfsSettings::default();
    let Some(sec) = sec else { return Ok(s) };
    let bad = |why: String| Error::Config {
        path: path.map(Path::to_path_buf).unwrap_or_default(),
        why: format!("[hdfs] {why}"),
    };
    if let Some(v) = &sec.journal_size {
        s.journal_bytes = size_of(v)?;
        if s.journal_bytes < 16 << 20 {
            return Err(bad(format!(
                "journal_size {} is below the minimum of 16M",
                s.journal_bytes
            )));
        }
    }
    let secs = |name: &str, v: Option<f64>, d: std::time::Duration| match v {
        None => Ok(d),
        Some(x) if x > 0.0 && x <= 3600.0 => Ok(std::time::Duration::from_secs_f64(x)),
        Some(x) => Err(bad(format!(
            "{name} = {x}: expected seconds above 0 and at most 3600"
        ))),
    };
    s.connect_timeout = secs("connect_timeout", sec.connect_timeout, s.connect_timeout)?;
    s.op_timeout = secs("op_timeout", sec.op_timeout, s.op_timeout)?;
    Ok(s)
}

// ---- [limits] (issue 17: lock-out defences; see crate::limits) ----

/// `[limits]`: caps on connections, in-flight memory and open files. Defaults are sized from
/// the descriptor limit (see docs/nbd.md and docs/dbus.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// NBD connections in all (Unix socket and TCP).
    pub nbd_connections: Option<usize>,
    /// NBD connections of one uid (Unix socket) or one IP address (TCP).
    pub nbd_connections_per_peer: Option<usize>,
    /// Of `nbd_connections`, slots only root may use.
    pub nbd_root_reserve: Option<usize>,
    /// NBD payload bytes in flight over all connections.
    pub nbd_in_flight: Option<SizeValue>,
    /// NBD payload bytes in flight for one uid or IP address.
    pub nbd_in_flight_per_peer: Option<SizeValue>,
    /// Of `nbd_in_flight`, bytes only root's connections may use.
    pub nbd_in_flight_root_reserve: Option<SizeValue>,
    /// Seconds an NBD connection may stay without a request after the handshake; 0: forever.
    pub nbd_idle_timeout: Option<f64>,
    /// D-Bus p2p connections in all.
    pub dbus_connections: Option<usize>,
    /// D-Bus p2p connections of one uid.
    pub dbus_connections_per_uid: Option<usize>,
    /// Of `dbus_connections`, slots only root may use.
    pub dbus_root_reserve: Option<usize>,
    /// Seconds a D-Bus p2p client may stay without sending anything; 0: forever.
    pub dbus_idle_timeout: Option<f64>,
    /// Seconds a D-Bus p2p client has to authenticate.
    pub dbus_auth_timeout: Option<f64>,
    /// Segment files kept open for reading, over all local volumes.
    pub open_segment_files: Option<usize>,
}

/// The `[limits]` section over the defaults (sized from the descriptor limit), checked.
fn limit_settings(
    sec: Option<&LimitsSection>,
    path: Option<&Path>,
) -> Result<crate::limits::LimitSettings> {
    let mut s = crate::limits::LimitSettings::default();
    let bad = |why: String| Error::Config {
        path: path.map(Path::to_path_buf).unwrap_or_default(),
        why: format!("[limits] {why}"),
    };
    if let Some(sec) = sec {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=86400.0 * 365.0).contains(&v) {
                Ok(std::time::Duration::from_secs_f64(v))
            } else {
                Err(bad(format!("{name} = {v}: expected seconds, 0 or more")))
            }
        };
        let size = |v: &SizeValue| {
            size_of(v).and_then(|n| {
                usize::try_from(n).map_err(|_| bad(format!("{n} bytes is too large")))
            })
        };
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut s.nbd.total, sec.nbd_connections);
        set(&mut s.nbd.per_peer, sec.nbd_connections_per_peer);
        set(&mut s.nbd.root_reserve, sec.nbd_root_reserve);
        set(&mut s.dbus.total, sec.dbus_connections);
        set(&mut s.dbus.per_peer, sec.dbus_connections_per_uid);
        set(&mut s.dbus.root_reserve, sec.dbus_root_reserve);
        set(&mut s.open_segment_files, sec.open_segment_files);
        if let Some(v) = &sec.nbd_in_flight {
            s.nbd_in_flight = size(v)?;
        }
        if let Some(v) = &sec.nbd_in_flight_per_peer {
            s.nbd_in_flight_per_peer = size(v)?;
        }
        if let Some(v) = &sec.nbd_in_flight_root_reserve {
            s.nbd_in_flight_root_reserve = size(v)?;
        }
        let off_if_zero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        if let Some(v) = sec.nbd_idle_timeout {
            s.nbd_idle_timeout = off_if_zero(secs("nbd_idle_timeout", v)?);
        }
        if let Some(v) = sec.dbus_idle_timeout {
            s.dbus_idle_timeout = off_if_zero(secs("dbus_idle_timeout", v)?);
        }
        if let Some(v) = sec.dbus_auth_timeout {
            s.dbus_auth_timeout = secs("dbus_auth_timeout", v)?;
            if s.dbus_auth_timeout.is_zero() {
                return Err(bad("dbus_auth_timeout must be above 0".into()));
            }
        }
    }
    s.check().map_err(bad)?;
    Ok(s)
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    fn parse(text: &str) -> Result<crate::limits::LimitSettings> {
        let f: ConfigFile = toml::from_str(text).map_err(|e| Error::Config {
            path: PathBuf::new(),
            why: e.to_string(),
        })?;
        limit_settings(f.limits.as_ref(), None)
    }

    #[test]
    fn limits_section() {
        let d = parse("").expect("defaults");
        assert_eq!(d, crate::limits::LimitSettings::default());
        assert_eq!(d.nbd_idle_timeout, None);
        let s = parse(
            "[limits]\nnbd_connections = 10\nnbd_connections_per_peer = 4\n\
             nbd_root_reserve = 2\nnbd_in_flight = \"512M\"\nnbd_idle_timeout = 30\n\
             dbus_idle_timeout = 0\n",
        )
        .expect("set");
        assert_eq!(
            (s.nbd.total, s.nbd.per_peer, s.nbd.root_reserve),
            (10, 4, 2)
        );
        assert_eq!(s.nbd_in_flight, 512 << 20);
        assert_eq!(s.nbd_idle_timeout, Some(std::time::Duration::from_secs(30)));
        assert_eq!(s.dbus_idle_timeout, None);
        for bad in [
            "[limits]\nnbd_connections = 0\n",
            "[limits]\nnbd_connections = 4\nnbd_root_reserve = 4\n",
            "[limits]\nnbd_in_flight_per_peer = \"1M\"\n",
            "[limits]\ndbus_auth_timeout = 0\n",
            "[limits]\nnbd_idle_timeout = -1\n",
            "[limits]\nbogus = 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}

#[cfg(test)]
mod cleaner_tests {
    use super::*;
    use clap::Parser;

    fn resolve_with(toml_text: &str) -> Result<Settings> {
        let dir = std::env::temp_dir().join(format!(
            "hlfs-cfg-{}-{}",
            std::process::id(),
            toml_text.len()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
        let f = dir.join("hlfsd.toml");
        std::fs::write(&f, toml_text).map_err(|e| Error::io("write", &f, e))?;
        let cli = Cli::parse_from([
            "hlfsd",
            "--config",
            f.to_str().unwrap_or_default(),
            "--data-dir",
            "/tmp/x",
            "--runtime-dir",
            "/tmp/y",
        ]);
        Settings::resolve(&cli)
    }

    #[test]
    fn cleaner_section() {
        let s = resolve_with("").expect("default");
        assert_eq!(s.cleaner, Some(crate::manager::CleanerSettings::default()));
        let s = resolve_with("[cleaner]\nspace_overhead = 0.5\nmax_segments_per_pass = 2\n")
            .expect("set");
        let c = s.cleaner.expect("on");
        assert_eq!(
            (c.space_overhead, c.max_segments_per_pass, c.max_live_ratio),
            (0.5, 2, 0.8)
        );
        assert!(resolve_with("[cleaner]\nenabled = false\n")
            .expect("off")
            .cleaner
            .is_none());
        assert!(resolve_with("[cleaner]\nmax_live_ratio = 1.5\n").is_err());
        assert!(resolve_with("[cleaner]\nbogus = 1\n").is_err());
        let c =
            resolve_with("[cleaner]\nrate = \"8M\"\nreclaimable_ratio = 0.3\ninterval_ms = 50\n")
                .expect("background")
                .cleaner
                .expect("on");
        let b = c.background.expect("background on");
        assert_eq!(
            (b.rate, b.reclaimable_ratio, b.interval.as_millis()),
            (8 << 20, 0.3, 50)
        );
        assert_eq!(b.relayout_idle, None, "relayout is off by default");
        let b = resolve_with("[cleaner]\nrelayout_idle_ms = 30000\n")
            .expect("relayout")
            .cleaner
            .and_then(|c| c.background)
            .expect("background on");
        assert_eq!(b.relayout_idle, Some(std::time::Duration::from_secs(30)));
        assert!(resolve_with("[cleaner]\nbackground = false\n")
            .expect("no background")
            .cleaner
            .expect("inline on")
            .background
            .is_none());
        assert!(resolve_with("[cleaner]\nreclaimable_ratio = 0\n").is_err());
    }

    #[test]
    fn fuse_section_and_flags() {
        assert_eq!(
            resolve_with("").expect("default").fuse,
            FuseMount::Default(PathBuf::from("/tmp/y/mnt"))
        );
        assert_eq!(
            resolve_with("[fuse]\nmountpoint = \"/srv/hlfs\"\n")
                .expect("set")
                .fuse,
            FuseMount::Explicit(PathBuf::from("/srv/hlfs"))
        );
        assert_eq!(
            resolve_with("[fuse]\nenabled = false\n").expect("off").fuse,
            FuseMount::Off
        );
        assert!(resolve_with("[fuse]\nmountpoint = \"relative\"\n").is_err());
        assert!(resolve_with("[fuse]\nbogus = 1\n").is_err());
        let flags = |extra: &[&str]| {
            let mut a = vec!["hlfsd", "--data-dir", "/tmp/x", "--runtime-dir", "/tmp/y"];
            a.extend(extra);
            Settings::resolve(&Cli::parse_from(a)).expect("flags").fuse
        };
        assert_eq!(
            flags(&["--fuse-mount", "/mnt/h"]),
            FuseMount::Explicit(PathBuf::from("/mnt/h"))
        );
        assert_eq!(flags(&["--no-fuse"]), FuseMount::Off);
        assert!(Cli::try_parse_from(["hlfsd", "--no-fuse", "--fuse-mount", "/m"]).is_err());
    }

    #[test]
    fn hdfs_section() {
        let s = resolve_with("").expect("default");
        assert_eq!(s.hdfs, HdfsSettings::default());
        let s =
            resolve_with("[hdfs]\njournal_size = \"64M\"\nconnect_timeout = 2.5\n").expect("set");
        assert_eq!(s.hdfs.journal_bytes, 64 << 20);
        assert_eq!(
            s.hdfs.connect_timeout,
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(s.hdfs.op_timeout, HdfsSettings::default().op_timeout);
        for bad in [
            "[hdfs]\njournal_size = \"1M\"\n",
            "[hdfs]\nconnect_timeout = 0\n",
            "[hdfs]\nop_timeout = -1\n",
            "[hdfs]\nbogus = 1\n",
        ] {
            assert!(resolve_with(bad).is_err(), "{bad:?} accepted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses() {
        assert_eq!(
            parse_tcp_addr("10810").unwrap(),
            "127.0.0.1:10810".parse().unwrap()
        );
        assert_eq!(
            parse_tcp_addr("127.0.0.1").unwrap(),
            "127.0.0.1:10809".parse().unwrap()
        );
        assert_eq!(
            parse_tcp_addr("[::1]:5").unwrap(),
            "[::1]:5".parse().unwrap()
        );
        assert!(parse_tcp_addr("nonsense:port").is_err());
    }

    #[test]
    fn config_file() {
        let f: ConfigFile = toml::from_str(
            "cache_size = \"32M\"\n[nbd]\ntcp = \"10810\"\n[[pool]]\nname = \"p\"\nuri = \"local:///tmp/p\"\n",
        )
        .unwrap();
        assert_eq!(size_of(f.cache_size.as_ref().unwrap()).unwrap(), 32 << 20);
        assert_eq!(f.pools[0].name, "p");
        assert!(toml::from_str::<ConfigFile>("bogus = 1").is_err());
    }
}

/// The configuration file the package installs as /etc/hlfs/hlfsd.toml must name every setting,
/// commented out at its default.
#[cfg(test)]
mod packaged_config_tests {
    use super::*;

    const PACKAGED: &str = include_str!("../../packaging/etc/hlfsd.toml");

    /// The packaged file with every `#key = value` line uncommented (examples, written
    /// `# key = value`, stay comments).
    fn uncommented(keep_group: bool) -> String {
        PACKAGED
            .lines()
            .filter(|l| {
                keep_group || !(l.starts_with("#socket_group") || l.starts_with("#socket_mode"))
            })
            .map(|l| {
                let setting = l.len() > 1
                    && l[1..].starts_with(|c: char| c.is_ascii_lowercase())
                    && l.contains(" = ");
                if l.starts_with('#') && setting {
                    &l[1..]
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn packaged_config_is_all_comments_and_names_every_setting() {
        let as_shipped = ConfigFile::parse(PACKAGED, Path::new("hlfsd.toml")).expect("parses");
        let empty = ConfigFile::default();
        assert_eq!(format!("{as_shipped:?}"), format!("{empty:?}").replace(
            "cleaner: None, hdfs: None, limits: None",
            "cleaner: Some(CleanerSection { enabled: None, space_overhead: None, max_live_ratio: None, max_segments_per_pass: None, background: None, rate: None, reclaimable_ratio: None, interval_ms: None, step: None, relayout_idle_ms: None }), hdfs: Some(HdfsSection { journal_size: None, connect_timeout: None, op_timeout: None }), limits: Some(LimitsSection { nbd_connections: None, nbd_connections_per_peer: None, nbd_root_reserve: None, nbd_in_flight: None, nbd_in_flight_per_peer: None, nbd_in_flight_root_reserve: None, nbd_idle_timeout: None, dbus_connections: None, dbus_connections_per_uid: None, dbus_root_reserve: None, dbus_idle_timeout: None, dbus_auth_timeout: None, open_segment_files: None })",
        ).replace("fuse: None", "fuse: Some(FuseSection { mountpoint: None, enabled: None })"));
        let all = ConfigFile::parse(&uncommented(true), Path::new("hlfsd.toml"))
            .expect("uncommented, it parses");
        // Two settings are shown as examples (`# tcp = ...`, `# mountpoint = ...`): NBD over TCP
        // is off by default, and naming a FUSE mount point makes a failed mount fatal.
        let shown = format!("{all:?}")
            .replace("tcp: None", "tcp: example")
            .replace("mountpoint: None", "mountpoint: example");
        assert!(
            !shown.contains("None"),
            "a setting is missing from packaging/etc/hlfsd.toml: {shown}"
        );
    }

    #[test]
    fn packaged_config_values_are_the_defaults() {
        use clap::Parser;
        // The default socket group applies only to root and only where libvirt-qemu exists.
        let group_applies =
            crate::paths::euid() == 0 && crate::users::group_info(LIBVIRT_QEMU_GROUP).is_some();
        let text = uncommented(group_applies);
        let file = ConfigFile::parse(&text, Path::new("hlfsd.toml")).expect("parses");
        // The limits written in the file are those for the unit's LimitNOFILE=65536.
        let cli = Cli::parse_from(["hlfsd"]);
        let mut set = Settings::resolve_with(&cli, &file).expect("resolves");
        let mut def = Settings::resolve_with(&cli, &ConfigFile::default()).expect("defaults");
        assert_eq!(
            set.limits,
            crate::limits::LimitSettings {
                nofile: set.limits.nofile,
                ..crate::limits::LimitSettings::for_nofile(65536)
            }
        );
        set.limits = def.limits.clone();
        // Paths are the root defaults in the file; a test run by a user resolves its own.
        if crate::paths::euid() != 0 {
            set.data_dir = def.data_dir.clone();
            set.runtime_dir = def.runtime_dir.clone();
            set.nbd_unix = def.nbd_unix.clone();
            set.dbus_socket = def.dbus_socket.clone();
        }
        def.limits = set.limits.clone();
        assert_eq!(format!("{set:?}"), format!("{def:?}"));
    }
}

#[cfg(test)]
mod socket_access_tests {
    use super::*;

    fn nbd(group: Option<&str>, mode: Option<&str>) -> NbdSection {
        NbdSection {
            socket_group: group.map(str::to_string),
            socket_mode: mode.map(str::to_string),
            ..NbdSection::default()
        }
    }

    #[test]
    fn socket_access() {
        // A user's daemon: no group, the user's only.
        let a = SocketAccess::resolve(&nbd(None, None), false).expect("default");
        assert_eq!(
            a,
            SocketAccess {
                group: None,
                mode: 0o600
            }
        );
        // Root's daemon: group libvirt-qemu and 0660 where the group exists.
        let a = SocketAccess::resolve(&nbd(None, None), true).expect("default");
        match crate::users::group_info(LIBVIRT_QEMU_GROUP) {
            Some((gid, _)) => assert_eq!(
                a,
                SocketAccess {
                    group: Some((LIBVIRT_QEMU_GROUP.into(), gid)),
                    mode: 0o660
                }
            ),
            None => assert_eq!(a.mode, 0o600),
        }
        let a = SocketAccess::resolve(&nbd(Some("root"), Some("0640")), false).expect("named");
        assert_eq!(
            a,
            SocketAccess {
                group: Some(("root".into(), 0)),
                mode: 0o640
            }
        );
        assert_eq!(
            SocketAccess::resolve(&nbd(Some("root"), None), false)
                .expect("group")
                .mode,
            0o660
        );
        for (g, m) in [
            (Some("no-such-group-hlfs"), None),
            (None, Some("0666")),
            (None, Some("0662")),
            (None, Some("4660")),
            (None, Some("rw")),
        ] {
            assert!(
                SocketAccess::resolve(&nbd(g, m), true).is_err(),
                "{g:?} {m:?} accepted"
            );
        }
    }
}
