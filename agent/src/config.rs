//! Command-line flags and the TOML configuration file, merged into [`Settings`]. Flags win over
//! the file; the file wins over the embedded defaults (see `paths`).

use crate::error::{Error, Result};
use crate::names::{check_name, parse_size, PoolUri, VolumeSpec};
use crate::paths;
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
    pub nbd_tcp: Option<SocketAddr>,
    pub dbus_socket: PathBuf,
    pub bus: Option<crate::dbus::BusKind>,
    /// Pools named in the configuration file.
    pub pools: Vec<(String, PoolUri)>,
    pub create_volumes: Vec<VolumeSpec>,
}

impl ConfigFile {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read config", path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config {
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
        let create_volumes = cli
            .create_volume
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<VolumeSpec>>>()?;
        for d in [&data_dir, &runtime_dir] {
            if !d.is_absolute() {
                return Err(Error::invalid(
                    "directory",
                    d.display().to_string(),
                    "must be an absolute path",
                ));
            }
        }
        Ok(Settings {
            data_dir,
            runtime_dir,
            cache_bytes,
            nbd_unix,
            nbd_tcp,
            dbus_socket,
            bus,
            pools,
            create_volumes,
        })
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
