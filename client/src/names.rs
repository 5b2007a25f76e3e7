//! What users type: pool, volume and snapshot names, sizes, and locations of pools, volumes and
//! snapshots (one [`Location`] type for HLFS URIs and `POOL/VOLUME@SNAPSHOT`). The agent checks
//! names with the same rules ([`name_problem`], [`size_value`]).

use crate::error::{HlfsError, Result};

/// Longest pool, volume or snapshot name, in bytes.
pub const MAX_NAME: usize = 128;

/// Why `name` is not an acceptable pool, volume or snapshot name, or `None` if it is: 1 to 128
/// characters from `A-Z a-z 0-9 _ - . +`, not starting with `.` or `-` (no hidden files, no
/// option look-alikes, no `..`; names become directory names).
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > MAX_NAME {
        return Some(format!("it is longer than {MAX_NAME} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+')))
    {
        return Some(match c {
            '/' => "'/' would be a path separator".to_string(),
            '@' => "'@' separates a snapshot in export names".to_string(),
            '%' => "'%' separates a snapshot in HLFS URIs".to_string(),
            c if c.is_control() => format!("control character {c:?} is not allowed"),
            c => {
                format!("character {c:?} is not allowed (use letters, digits, '_', '-', '.', '+')")
            }
        });
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Some("it must not start with '.' or '-'".into());
    }
    None
}

/// Checks a `kind` (`pool`, `volume`, `snapshot`) name; see [`name_problem`].
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    match name_problem(name) {
        Some(why) => Err(HlfsError::Invalid(format!(
            "invalid {kind} name {name:?}: {why}"
        ))),
        None => Ok(()),
    }
}

/// The bytes a size stands for: a number, or a number with a binary suffix `K`, `M`, `G`, `T`,
/// `P`, `E` (optionally followed by `B` or `iB`, any case): `"10G"` = 10 GiB. The error says why not.
pub fn size_value(s: &str) -> std::result::Result<u64, &'static str> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("expected a number such as 4096, 512M or 10G");
    }
    let n: u64 = t[..digits].parse().map_err(|_| "number too large")?;
    let shift = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return Err("unknown suffix (use K, M, G, T, P or E)"),
    };
    n.checked_mul(1u64 << shift).ok_or("too large")
}

/// Parses a size; see [`size_value`].
pub fn parse_size(s: &str) -> Result<u64> {
    size_value(s).map_err(|why| HlfsError::invalid("size", s, why))
}

/// How a location names its pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolRef {
    /// By name (`POOL/VOLUME`).
    Name(String),
    /// By its backend URI, `local:///dir` or `hdfs://host:port/dir` (no trailing `/`).
    Uri(String),
}

/// A pool, a volume or a snapshot, as users and libvirt write them:
/// `local:///dir[/vol][%snap]`, `hdfs://host:port/dir[/vol][%snap]`, or `POOL[/VOL[@SNAP]]`
/// (`%SNAP` is accepted there too).
///
/// An HLFS URI without `%snap` does not say whether its last element is a volume or part of the
/// pool's directory: [`Location::parse`] keeps the whole URI as the pool and
/// [`Location::as_volume`] reads the last element as the volume; only the pools hlfsd has can
/// tell which is meant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub pool: PoolRef,
    pub volume: Option<String>,
    pub snapshot: Option<String>,
}

/// Checks a URI's scheme, host and path with the one parser of backend URIs
/// ([`hlfs_types::BackendUri`], which the engine and hlfsd use too).
fn check_uri(s: &str, uri: &str) -> Result<()> {
    hlfs_types::BackendUri::parse(uri)
        .map(drop)
        .map_err(|e| HlfsError::invalid("HLFS URI", s, e.why))
}

impl Location {
    /// Parses a location. Names are checked ([`check_name`]); a URI's scheme, host and path
    /// are checked for shape (hlfsd checks the rest when it matches pools).
    pub fn parse(s: &str) -> Result<Location> {
        if hlfs_types::Scheme::split(s).is_some() {
            let (uri, snapshot) = match s.rsplit_once('%') {
                Some((u, snap)) => (u, Some(snap.to_string())),
                None => (s, None),
            };
            let uri = uri.trim_end_matches('/');
            check_uri(s, uri)?;
            let loc = Location {
                pool: PoolRef::Uri(uri.to_string()),
                volume: None,
                snapshot: None,
            };
            return match snapshot {
                // Only volumes have snapshots: the last element is the volume.
                Some(snap) => {
                    check_name("snapshot", &snap)?;
                    let mut l = loc.as_volume().ok_or_else(|| {
                        HlfsError::invalid("HLFS URI", s, "expected URI/VOLUME%SNAPSHOT")
                    })?;
                    l.snapshot = Some(snap);
                    Ok(l)
                }
                None => Ok(loc),
            };
        }
        let (path, snapshot) = match s.rsplit_once(['@', '%']) {
            Some((p, snap)) => (p, Some(snap.to_string())),
            None => (s, None),
        };
        let (pool, volume) = match path.split_once('/') {
            Some((p, v)) => (p, Some(v.to_string())),
            None => (path, None),
        };
        check_name("pool", pool)?;
        if let Some(v) = &volume {
            check_name("volume", v)?;
        }
        if let Some(snap) = &snapshot {
            if volume.is_none() {
                return Err(HlfsError::invalid(
                    "location",
                    s,
                    "a snapshot needs its volume: POOL/VOLUME@SNAPSHOT",
                ));
            }
            check_name("snapshot", snap)?;
        }
        Ok(Location {
            pool: PoolRef::Name(pool.to_string()),
            volume,
            snapshot,
        })
    }

    /// Parses what a command that takes a volume (or a snapshot of one) was given: as
    /// [`Location::parse`], but a bare `NAME` is volume `NAME` of `default_pool`, and a URI's
    /// last element is the volume.
    pub fn parse_volume(s: &str, default_pool: &str) -> Result<Location> {
        let l = Location::parse(s)?;
        match (&l.pool, &l.volume) {
            (_, Some(_)) => Ok(l),
            (PoolRef::Name(n), None) => Ok(Location {
                pool: PoolRef::Name(default_pool.to_string()),
                volume: Some(n.clone()),
                snapshot: None,
            }),
            (PoolRef::Uri(_), None) => l.as_volume().ok_or_else(|| {
                HlfsError::invalid(
                    "volume",
                    s,
                    "expected local:///POOL-DIR/VOLUME or hdfs://HOST:PORT/POOL-DIR/VOLUME",
                )
            }),
        }
    }

    /// A pool URI location read as `POOL-URI/VOLUME` (its last element the volume); `None` if
    /// that leaves no pool directory or the element is not a volume name.
    pub fn as_volume(&self) -> Option<Location> {
        let PoolRef::Uri(u) = &self.pool else {
            return None;
        };
        if self.volume.is_some() {
            return None;
        }
        let uri = hlfs_types::BackendUri::parse(u).ok()?;
        let (dir, vol) = uri.split_last()?;
        // A pool directory must remain (`/` alone is not one).
        let has_dir = dir.path() != "/";
        if !has_dir || name_problem(vol).is_some() {
            return None;
        }
        Some(Location {
            pool: PoolRef::Uri(dir.to_string()),
            volume: Some(vol.to_string()),
            snapshot: self.snapshot.clone(),
        })
    }
}

impl std::str::FromStr for Location {
    type Err = HlfsError;

    fn from_str(s: &str) -> Result<Location> {
        Location::parse(s)
    }
}

impl std::fmt::Display for Location {
    /// URIs as `URI[/VOL][%SNAP]`, names as `POOL[/VOL][@SNAP]` (the NBD export form).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (pool, sep) = match &self.pool {
            PoolRef::Name(n) => (n, '@'),
            PoolRef::Uri(u) => (u, '%'),
        };
        f.write_str(pool)?;
        if let Some(v) = &self.volume {
            write!(f, "/{v}")?;
        }
        if let Some(s) = &self.snapshot {
            write!(f, "{sep}{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(p: PoolRef, v: Option<&str>, s: Option<&str>) -> Location {
        Location {
            pool: p,
            volume: v.map(String::from),
            snapshot: s.map(String::from),
        }
    }

    #[test]
    fn names_and_sizes() {
        for ok in ["vm1", "a", "disk-0_1.img", "A+B", &"x".repeat(128)] {
            check_name("volume", ok).unwrap();
        }
        for bad in [
            "", ".", "..", ".h", "-x", "a/b", "a@b", "a%b", "a\nb", "a b", "é",
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?} accepted");
        }
        assert!(name_problem(&"x".repeat(129)).is_some());
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "-1", "1.5G", "10X", "16E", "99999999999999999999"] {
            let e = parse_size(bad).unwrap_err();
            assert_eq!(e.error_name(), "org.hlfs.Error.Invalid", "{bad:?}");
        }
    }

    #[test]
    fn locations() {
        let n = |s: &str| PoolRef::Name(s.into());
        let u = |s: &str| PoolRef::Uri(s.into());
        assert_eq!(Location::parse("p").unwrap(), loc(n("p"), None, None));
        assert_eq!(
            Location::parse("p/v@s").unwrap(),
            loc(n("p"), Some("v"), Some("s"))
        );
        assert_eq!(
            Location::parse("p/v%s").unwrap(),
            loc(n("p"), Some("v"), Some("s"))
        );
        assert_eq!(
            Location::parse("local:///srv/p/").unwrap(),
            loc(u("local:///srv/p"), None, None)
        );
        assert_eq!(
            Location::parse("local:///srv/p/vm%s1").unwrap(),
            loc(u("local:///srv/p"), Some("vm"), Some("s1"))
        );
        assert_eq!(
            Location::parse("hdfs://nn:9000/hlfs/p/vm%s").unwrap(),
            loc(u("hdfs://nn:9000/hlfs/p"), Some("vm"), Some("s"))
        );
        assert_eq!(
            Location::parse_volume("vm1", "default").unwrap(),
            loc(n("default"), Some("vm1"), None)
        );
        assert_eq!(
            Location::parse_volume("local:///srv/p/vm", "default").unwrap(),
            loc(u("local:///srv/p"), Some("vm"), None)
        );
        for s in ["p/v@s", "local:///srv/p/vm%s1", "hdfs://nn:9000/d/v%s", "p"] {
            assert_eq!(Location::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "",
            "p/",
            "p/v/w",
            "p@s",
            "../v",
            "p/v@",
            "local://rel/v",
            "local:///a/../b",
            "local:///v%s",
            "hdfs://nn:9000",
            "hdfs://:9000/x",
            "hdfs://u@h:1/x",
            "hdfs://nn:9000/v%s",
            "file:///x",
            "local:///a\n",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Location::parse_volume("local:///", "d").is_err());
    }
}
