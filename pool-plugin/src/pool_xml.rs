//! Pool XML with `type='hlfs'` (the seeds' "offline mode"): what `pool-create`/`pool-define`
//! read and `pool-dumpxml` writes. Grammar: `xml-schemas/hlfs-storagepool.rng`.
//!
//! The seeds named a pool by its URI (`<name>local:///tmp/testenv</name>`); hlfsd's pool names
//! are directory names, so a URI `<name>` names the pool by its last path element (`testenv`)
//! and the URI is its backend.

use crate::xmldoc::{esc, Element, XmlError};
use hlfs_client::names::{name_problem, Location, PoolRef};

/// What a pool XML asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// hlfsd's pool name.
    pub name: String,
    /// Backend URI, `local:///dir` or `hdfs://host:port/dir`.
    pub uri: String,
}

/// The `type` of a `<pool>` document, to tell HLFS pools from those virsh handles itself.
pub fn pool_type(root: &Element) -> Option<&str> {
    (root.name == "pool").then(|| root.attr("type")).flatten()
}

fn pool_uri(el: &Element, s: &str) -> Result<String, XmlError> {
    match Location::parse(s) {
        Ok(Location {
            pool: PoolRef::Uri(u),
            volume: None,
            snapshot: None,
        }) => Ok(u),
        Ok(_) => Err(el.error(format!(
            "{s:?} is not a pool URI (expected local:///DIR or hdfs://HOST:PORT/DIR)"
        ))),
        Err(e) => Err(el.error(e.message())),
    }
}

fn is_uri(s: &str) -> bool {
    s.starts_with("local://") || s.starts_with("hdfs://")
}

/// Reads an HLFS pool XML document (root `<pool type='hlfs'>`).
pub fn parse_pool(root: &Element) -> Result<PoolSpec, XmlError> {
    if root.name != "pool" {
        return Err(root.error("expected a <pool> document"));
    }
    match root.attr("type") {
        Some("hlfs") => {}
        Some(t) => return Err(root.error(format!("type {t:?} is not an HLFS pool"))),
        None => return Err(root.error("the type attribute is missing (type='hlfs')")),
    }
    root.only_children(&[
        "name",
        "uuid",
        "capacity",
        "allocation",
        "available",
        "source",
        "target",
    ])?;
    let name_el = root
        .child("name")
        .ok_or_else(|| root.error("<name> is missing"))?;
    let name_text = name_el.required_text()?;

    let mut uri = None;
    if let Some(src) = root.child("source") {
        src.only_children(&["name", "host", "dir"])?;
        if let Some(n) = src.child("name") {
            uri = Some(pool_uri(n, n.required_text()?)?);
        }
        let dir = match src.child("dir") {
            Some(d) => Some(
                d.attr("path")
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| d.error("needs an absolute path attribute"))?,
            ),
            None => None,
        };
        let host = src.child("host");
        if let Some(h) = host {
            if h.attr("name").is_none_or(str::is_empty) {
                return Err(h.error("needs a name attribute"));
            }
        }
        if uri.is_none() {
            uri = match (host, dir) {
                (Some(h), Some(d)) => {
                    let host = h.attr("name").unwrap_or_default();
                    let s = match h.attr("port") {
                        Some(p) => format!("hdfs://{host}:{p}{d}"),
                        None => format!("hdfs://{host}{d}"),
                    };
                    Some(pool_uri(h, &s)?)
                }
                (None, Some(d)) => Some(pool_uri(src, &format!("local://{d}"))?),
                _ => None,
            };
        }
    }
    let name = if name_problem(name_text).is_none() {
        name_text.to_string()
    } else if is_uri(name_text) {
        let u = pool_uri(name_el, name_text)?;
        if let Some(src_uri) = &uri {
            if *src_uri != u {
                return Err(name_el.error(format!("names URI {u} but <source> names {src_uri}")));
            }
        }
        let last = u.rsplit('/').next().unwrap_or_default();
        if let Some(why) = name_problem(last) {
            return Err(name_el.error(format!(
                "the pool would be named {last:?} after the URI's last element, which is not a pool name: {why}"
            )));
        }
        uri = Some(u.clone());
        last.to_string()
    } else {
        return Err(name_el.error(format!(
            "{name_text:?} is neither a pool name nor an HLFS URI: {}",
            name_problem(name_text).unwrap_or_default()
        )));
    };
    let uri = uri.ok_or_else(|| {
        root.error(
            "no backend: give <source><name>local:///DIR</name></source> (or hdfs://HOST:PORT/DIR)",
        )
    })?;
    Ok(PoolSpec { name, uri })
}

/// What `pool-dumpxml` shows of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub uri: String,
    /// Sum of the volumes' capacities.
    pub capacity: u64,
    /// Sum of the volumes' logs (bytes the backend holds).
    pub allocation: u64,
    /// Its directory in the FUSE view, when mounted.
    pub target: Option<String>,
}

/// The pool's XML (validates against `xml-schemas/hlfs-storagepool.rng`).
pub fn pool_xml(p: &PoolInfo) -> String {
    let mut s = String::from("<pool type='hlfs'>\n");
    s += &format!("  <name>{}</name>\n", esc(&p.name));
    s += &format!("  <capacity unit='bytes'>{}</capacity>\n", p.capacity);
    s += &format!("  <allocation unit='bytes'>{}</allocation>\n", p.allocation);
    s += "  <source>\n";
    if let Some(rest) = p.uri.strip_prefix("hdfs://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => (h, Some(port)),
            _ => (authority, None),
        };
        match port {
            Some(port) => s += &format!("    <host name='{}' port='{port}'/>\n", esc(host)),
            None => s += &format!("    <host name='{}'/>\n", esc(host)),
        }
    }
    s += &format!("    <name>{}</name>\n", esc(&p.uri));
    s += "  </source>\n";
    let target = p
        .target
        .clone()
        .unwrap_or_else(|| format!("hlfs:{}", p.uri));
    s += &format!(
        "  <target>\n    <path>{}</path>\n  </target>\n",
        esc(&target)
    );
    s += "</pool>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmldoc::parse;

    fn spec(x: &str) -> Result<PoolSpec, XmlError> {
        parse_pool(&parse(x).unwrap())
    }

    #[test]
    fn the_seeds_pool_xml() {
        let s = spec("<pool type=\"hlfs\"><name>local:///tmp/testenv</name><source><name>local:///tmp/testenv</name><host name='localhost' port='7000'/></source></pool>").unwrap();
        assert_eq!(
            s,
            PoolSpec {
                name: "testenv".into(),
                uri: "local:///tmp/testenv".into()
            }
        );
    }

    #[test]
    fn other_forms() {
        let s = spec("<pool type='hlfs'><name>p1</name><source><host name='nn' port='9000'/><dir path='/hlfs/p1'/></source></pool>").unwrap();
        assert_eq!(s.uri, "hdfs://nn:9000/hlfs/p1");
        let s =
            spec("<pool type='hlfs'><name>p2</name><source><dir path='/srv/p2'/></source></pool>")
                .unwrap();
        assert_eq!(s.uri, "local:///srv/p2");
        let s = spec("<pool type='hlfs'><name>hdfs://nn:9000/x/y</name></pool>").unwrap();
        assert_eq!(
            (s.name.as_str(), s.uri.as_str()),
            ("y", "hdfs://nn:9000/x/y")
        );
    }

    #[test]
    fn errors_name_the_line_and_element() {
        let e = spec("<pool type='hlfs'>\n<name>p</name>\n<source>\n<name>file:///x</name>\n</source>\n</pool>").unwrap_err();
        assert_eq!((e.line, e.element.as_deref()), (4, Some("name")), "{e}");
        let e = spec("<pool type='hlfs'>\n<name>p</name>\n<bogus/>\n</pool>").unwrap_err();
        assert_eq!((e.line, e.element.as_deref()), (3, Some("bogus")), "{e}");
        let e = spec("<pool type='hlfs'>\n<name>p</name>\n</pool>").unwrap_err();
        assert!(e.to_string().contains("no backend"), "{e}");
        let e = spec("<pool type='hlfs'><name>a b</name><source><dir path='/x'/></source></pool>")
            .unwrap_err();
        assert_eq!(e.element.as_deref(), Some("name"));
        let e = spec("<pool type='hlfs'><name>local:///a</name><source><name>local:///b</name></source></pool>").unwrap_err();
        assert!(e.to_string().contains("local:///b"), "{e}");
    }

    #[test]
    fn dumped_xml_reads_back() {
        let info = PoolInfo {
            name: "p".into(),
            uri: "hdfs://nn:9000/hlfs/p".into(),
            capacity: 10,
            allocation: 5,
            target: None,
        };
        let x = pool_xml(&info);
        assert!(x.contains("<host name='nn' port='9000'/>"), "{x}");
        assert_eq!(
            spec(&x).unwrap(),
            PoolSpec {
                name: "p".into(),
                uri: info.uri.clone()
            }
        );
    }
}
