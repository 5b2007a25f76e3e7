//! Parsing of what users type: pool and volume names, sizes, backend URIs, export names and
//! `--create-volume` specs. Names become directory names, so they are checked strictly: a name
//! can never escape its pool directory or collide with the URI and export syntax (`/`, `@`, `%`).

use crate::error::{Error, Result};
use std::path::PathBuf;

/// Longest pool or volume name, in bytes.
pub const MAX_NAME: usize = hlfs_client::names::MAX_NAME;

/// Checks a pool or volume name by the client crate's rule ([`hlfs_client::names::name_problem`]):
/// 1 to 128 characters from `A-Z a-z 0-9 _ - . +`, not starting with `.` or `-` (no hidden
/// files, no option look-alikes, no `..`).
pub fn check_name(kind: &'static str, name: &str) -> Result<()> {
    match hlfs_client::names::name_problem(name) {
        Some(why) => Err(Error::InvalidName {
            kind,
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Parses a size by the client crate's rule ([`hlfs_client::names::size_value`]): bytes, or a
/// number with a binary suffix `K`, `M`, `G`, `T`, `P`, `E` (optionally followed by `B` or
/// `iB`, any case). `"10G"` = 10 GiB.
pub fn parse_size(s: &str) -> Result<u64> {
    hlfs_client::names::size_value(s).map_err(|why| Error::invalid("size", s, why))
}

/// A backend URI for a pool: `local:///absolute/path` or `hdfs://host:port/absolute/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolUri {
    /// A directory on this host.
    Local(PathBuf),
    /// A directory on HDFS, as a normalized URL `hdfs://host:port/path` (no trailing slash).
    Hdfs(String),
}

impl PoolUri {
    /// Parses `local:///abs/path` or `hdfs://host:port/abs/path` with the one parser of backend
    /// URIs ([`hlfs_types::BackendUri`]), refusing `%` besides.
    pub fn parse(s: &str) -> Result<PoolUri> {
        if s.chars().any(char::is_control) {
            return Err(Error::invalid(
                "pool URI",
                s,
                "control characters are not allowed",
            ));
        }
        // '%' separates a snapshot in volume locations (`URI/VOLUME%SNAPSHOT`).
        if s.contains('%') {
            return Err(Error::invalid(
                "pool URI",
                s,
                "'%' is not allowed (it separates a snapshot in HLFS URIs)",
            ));
        }
        let uri =
            hlfs_types::BackendUri::parse(s).map_err(|e| Error::invalid("pool URI", s, e.why))?;
        Ok(match uri.scheme() {
            hlfs_types::Scheme::Local => PoolUri::Local(PathBuf::from(uri.path())),
            hlfs_types::Scheme::Hdfs => PoolUri::Hdfs(uri.to_string()),
        })
    }

    /// The URI as text.
    pub fn to_uri(&self) -> String {
        match self {
            PoolUri::Local(p) => format!("local://{}", p.display()),
            PoolUri::Hdfs(url) => url.clone(),
        }
    }
}

/// What an NBD client asked for: `POOL/VOLUME` or `POOL/VOLUME@SNAPSHOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportName {
    pub pool: String,
    pub volume: String,
    pub snapshot: Option<String>,
}

impl ExportName {
    /// Parses and validates an export name. Names are exact: `/POOL/VOLUME` is refused (NBD URI
    /// clients such as qemu and libnbd take the path's first `/` off themselves, so a name
    /// that still has one was typed with two).
    pub fn parse(s: &str) -> Result<ExportName> {
        if s.starts_with('/') {
            return Err(Error::InvalidName {
                kind: "export",
                name: s.to_string(),
                why: "export names have no leading '/' (POOL/VOLUME)".into(),
            });
        }
        let Some((pool, rest)) = s.split_once('/') else {
            return Err(Error::InvalidName {
                kind: "export",
                name: s.to_string(),
                why: "expected POOL/VOLUME or POOL/VOLUME@SNAPSHOT".into(),
            });
        };
        let (volume, snapshot) = match rest.split_once('@') {
            Some((v, snap)) => (v, Some(snap)),
            None => (rest, None),
        };
        check_name("pool", pool)?;
        check_name("volume", volume)?;
        if let Some(snap) = snapshot {
            check_name("snapshot", snap)?;
        }
        Ok(ExportName {
            pool: pool.to_string(),
            volume: volume.to_string(),
            snapshot: snapshot.map(str::to_string),
        })
    }
}

impl std::fmt::Display for ExportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.volume)?;
        if let Some(s) = &self.snapshot {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

/// A `--create-volume POOL/NAME:SIZE` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub pool: String,
    pub volume: String,
    pub size: u64,
}

impl std::str::FromStr for VolumeSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<VolumeSpec> {
        let Some((path, size)) = s.rsplit_once(':') else {
            return Err(Error::invalid(
                "volume spec",
                s,
                "expected POOL/NAME:SIZE, e.g. default/vm1:10G",
            ));
        };
        let Some((pool, volume)) = path.split_once('/') else {
            return Err(Error::invalid(
                "volume spec",
                s,
                "expected POOL/NAME:SIZE, e.g. default/vm1:10G",
            ));
        };
        check_name("pool", pool)?;
        check_name("volume", volume)?;
        let size = parse_size(size)?;
        Ok(VolumeSpec {
            pool: pool.to_string(),
            volume: volume.to_string(),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["vm1", "a", "disk-0_1.img", "A+B"] {
            check_name("volume", ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a@b",
            "a%b",
            "a\nb",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(check_name("volume", bad).is_err(), "{bad:?} accepted");
        }
        let e = check_name("volume", "a/b").unwrap_err().to_string();
        assert!(e.contains("path separator"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
        assert_eq!(parse_size("2K").unwrap(), 2048);
        for bad in ["", "G", "-1", "1.5G", "10X", "99999999999999999999", "16E"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uris() {
        assert_eq!(
            PoolUri::parse("local:///var/lib/hlfs/p").unwrap(),
            PoolUri::Local("/var/lib/hlfs/p".into())
        );
        assert_eq!(
            PoolUri::parse("local:///x/").unwrap().to_uri(),
            "local:///x"
        );
        assert_eq!(
            PoolUri::parse("hdfs://h:9000/a/p/").unwrap(),
            PoolUri::Hdfs("hdfs://h:9000/a/p".into())
        );
        PoolUri::parse("hdfs://[::1]:9000/a").unwrap();
        PoolUri::parse("hdfs://nn/a").unwrap();
        for bad in [
            "local://rel",
            "local:///a/../b",
            "local:///a%b",
            "file:///x",
            "/x",
            "hdfs://h:9000",
            "hdfs://h:9000/",
            "hdfs:///p",
            "hdfs://h:9000/a/../b",
            "hdfs://h:9000/a//b",
            "hdfs://h:9000/a%b",
            "hdfs://u@h:9000/a",
            "hdfs://:0/x",
            "hdfs://:9000/x",
            "hdfs://h:0/x",
            "hdfs://h:99999/x",
            "hdfs://h:port/x",
        ] {
            assert!(PoolUri::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn exports_and_specs() {
        let e = ExportName::parse("default/vm1@snap").unwrap();
        assert_eq!(
            (e.pool.as_str(), e.volume.as_str(), e.snapshot.as_deref()),
            ("default", "vm1", Some("snap"))
        );
        assert_eq!(ExportName::parse("p/v").unwrap().to_string(), "p/v");
        for bad in ["", "vm1", "p/", "p/../x", "p/v/w", "../v", "/p/v", "//p/v"] {
            assert!(ExportName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let s: VolumeSpec = "default/vm1:1G".parse().unwrap();
        assert_eq!(
            s,
            VolumeSpec {
                pool: "default".into(),
                volume: "vm1".into(),
                size: 1 << 30
            }
        );
        assert!("default:1G".parse::<VolumeSpec>().is_err());
        assert!("default/vm1".parse::<VolumeSpec>().is_err());
    }
}
