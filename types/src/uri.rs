//! Backend URIs: `local:///absolute/path` and `hdfs://host[:port]/absolute/path`, the names of
//! pools and volumes on their stores (the original HLFS's URIs). Parsed once, into
//! [`BackendUri`]; callers add their own rules on top (the agent refuses `%`, which separates a
//! snapshot in volume locations; the client splits `%SNAPSHOT` off first).

use std::fmt;

/// Which store a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// A directory on this host: `local:///path`.
    Local,
    /// A directory on HDFS: `hdfs://host:port/path`.
    Hdfs,
}

impl Scheme {
    /// The prefix that introduces it, `local://` or `hdfs://`.
    pub const fn prefix(self) -> &'static str {
        match self {
            Scheme::Local => "local://",
            Scheme::Hdfs => "hdfs://",
        }
    }

    /// The scheme `s` starts with and what follows it, without checking the rest: for URIs the
    /// engine wrote itself (a clone's base), which may name a relative local directory.
    pub fn split(s: &str) -> Option<(Scheme, &str)> {
        [Scheme::Local, Scheme::Hdfs]
            .into_iter()
            .find_map(|sc| s.strip_prefix(sc.prefix()).map(|rest| (sc, rest)))
    }
}

/// Why a string is not a backend URI. The message names the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    pub uri: String,
    pub why: String,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.uri, self.why)
    }
}

impl std::error::Error for UriError {}

/// A parsed backend URI: its scheme, the NameNode `host[:port]` (HDFS only) and an absolute,
/// normalized path (no `.` or `..`, no trailing `/` except for the root itself; HDFS paths
/// have no empty components and are never the root).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendUri {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl BackendUri {
    /// Parses and checks `s`: control characters, `?` and `#` are refused everywhere; an HDFS
    /// URI needs a host and, if it gives a port, one from 1 to 65535, so that a typo is an
    /// invalid argument rather than a connection error later.
    pub fn parse(s: &str) -> Result<BackendUri, UriError> {
        let bad = |why: &str| UriError {
            uri: s.to_string(),
            why: why.to_string(),
        };
        let Some((scheme, rest)) = Scheme::split(s) else {
            return Err(bad(
                "expected local:///absolute/path or hdfs://host:port/absolute/path",
            ));
        };
        if s.chars().any(char::is_control) || s.contains(['?', '#']) {
            return Err(bad("control characters, '?' and '#' are not allowed"));
        }
        let (authority, path) = match scheme {
            Scheme::Local => ("", rest),
            Scheme::Hdfs => match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            },
        };
        if scheme == Scheme::Hdfs {
            check_authority(authority).map_err(|why| bad(&why))?;
        }
        if !path.starts_with('/') {
            return Err(bad(match scheme {
                Scheme::Local => "expected local:///absolute/path",
                Scheme::Hdfs => "names no directory (hdfs://host:port/path)",
            }));
        }
        if path.split('/').any(|c| c == "." || c == "..") {
            return Err(bad("'.' and '..' are not allowed in the path"));
        }
        let trimmed = path.trim_end_matches('/');
        let path = match scheme {
            Scheme::Local if trimmed.is_empty() => "/",
            Scheme::Local => trimmed,
            Scheme::Hdfs if trimmed.is_empty() => {
                return Err(bad("names no directory (hdfs://host:port/path)"))
            }
            Scheme::Hdfs if trimmed.contains("//") => {
                return Err(bad("the path must be absolute and normalized"))
            }
            Scheme::Hdfs => trimmed,
        };
        Ok(BackendUri {
            scheme,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The NameNode's `host[:port]` (empty for a local URI).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The absolute path on the store.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Scheme and authority without the path: `hdfs://host:port` (what an HDFS client
    /// connects to), `local://`.
    pub fn root(&self) -> String {
        format!("{}{}", self.scheme.prefix(), self.authority)
    }

    /// The URI of `name` inside this directory.
    pub fn join(&self, name: &str) -> BackendUri {
        let sep = if self.path.ends_with('/') { "" } else { "/" };
        BackendUri {
            scheme: self.scheme,
            authority: self.authority.clone(),
            path: format!("{}{sep}{name}", self.path),
        }
    }

    /// The last element of the path and the URI of the directory holding it (None for the
    /// root, or an HDFS directory directly under it).
    pub fn split_last(&self) -> Option<(BackendUri, &str)> {
        let (dir, last) = self.path.rsplit_once('/')?;
        if last.is_empty() || (dir.is_empty() && self.scheme == Scheme::Hdfs) {
            return None;
        }
        let dir = if dir.is_empty() { "/" } else { dir };
        Some((
            BackendUri {
                scheme: self.scheme,
                authority: self.authority.clone(),
                path: dir.to_string(),
            },
            last,
        ))
    }
}

impl fmt::Display for BackendUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.root(), self.path)
    }
}

impl std::str::FromStr for BackendUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        BackendUri::parse(s)
    }
}

/// Checks the `host[:port]` of an HDFS URI: a host (no user part), and a port from 1 to 65535
/// or none (the NameNode's default).
fn check_authority(authority: &str) -> Result<(), String> {
    if authority.contains(['@', ' ']) {
        return Err("expected hdfs://host:port/absolute/path".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        // `[v6]:port`, or `host:port`, but not a bare IPv6 address.
        Some((h, p)) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => (h, Some(p)),
        Some(("", _)) => return Err("the NameNode host is missing (hdfs://host:port/path)".into()),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err("the NameNode host is missing (hdfs://host:port/path)".into());
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        let u = BackendUri::parse("local:///var/lib/hlfs/p/").unwrap();
        assert_eq!((u.scheme(), u.path()), (Scheme::Local, "/var/lib/hlfs/p"));
        assert_eq!(u.to_string(), "local:///var/lib/hlfs/p");
        assert_eq!(BackendUri::parse("local:///").unwrap().path(), "/");
        let h = BackendUri::parse("hdfs://nn:9000/a/p/").unwrap();
        assert_eq!((h.authority(), h.path()), ("nn:9000", "/a/p"));
        assert_eq!(h.root(), "hdfs://nn:9000");
        assert_eq!(h.join("v").to_string(), "hdfs://nn:9000/a/p/v");
        let v = h.join("v");
        let (dir, last) = v.split_last().unwrap();
        assert_eq!((dir, last), (h.clone(), "v"));
        assert!(BackendUri::parse("hdfs://nn:9000/a")
            .unwrap()
            .split_last()
            .is_none());
        BackendUri::parse("hdfs://[::1]:9000/a").unwrap();
        BackendUri::parse("hdfs://nn/a").unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_uri() {
        for s in [
            "",
            "/tmp/p",
            "file:///tmp/p",
            "local://rel",
            "local:///a/../b",
            "local:///a/./b",
            "local:///a\nb",
            "hdfs://h:9000",
            "hdfs://h:9000/",
            "hdfs:///p",
            "hdfs://:9000/p",
            "hdfs://u@h:9000/p",
            "hdfs://h:0/p",
            "hdfs://h:99999/p",
            "hdfs://h:x/p",
            "hdfs://h:9000/a/../b",
            "hdfs://h:9000/a//b",
            "hdfs://h:9000/a?b",
            "hdfs://h:9000/a#b",
        ] {
            let e = BackendUri::parse(s).expect_err(s);
            assert_eq!(e.uri, s);
            assert!(!e.why.is_empty());
        }
    }
}
