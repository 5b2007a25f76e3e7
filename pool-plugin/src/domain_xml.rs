//! Domain XML translation ("online mode"): `<disk type='network'>` with
//! `<source protocol='hlfs' name='URI[%SNAP]'/>`, and `<disk type='volume'>` whose `pool` is an
//! HLFS pool, become stock NBD network disks on hlfsd's Unix socket:
//!
//! ```xml
//! <source protocol='nbd' name='POOL/VOLUME'>      <!-- POOL/VOLUME@SNAP for a snapshot -->
//!   <host transport='unix' socket='/run/hlfs/nbd.sock'/>
//! </source>
//! ```
//!
//! A snapshot is served read-only, so its disk gets `<readonly/>` (for a writable boot from a
//! snapshot, clone it: `vol-create` with a `<backingStore>`). Everything else in the document is
//! written back byte for byte (quick-xml events); inside a translated disk only the `type`
//! attribute and the `<source>` element change.

use crate::xmldoc::{line_of, XmlError};
use hlfs_client::names::{Location, PoolRef};
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use std::path::Path;

/// hlfsd's pools as `(name, uri)`, to resolve HLFS URIs to NBD export names.
#[derive(Debug, Clone, Default)]
pub struct PoolTable {
    pub pools: Vec<(String, String)>,
}

impl PoolTable {
    /// The pool named `name`.
    pub fn by_name(&self, name: &str) -> Option<&(String, String)> {
        self.pools.iter().find(|(n, _)| n == name)
    }

    /// The pool whose URI is `uri` (a trailing `/` ignored).
    pub fn by_uri(&self, uri: &str) -> Option<&(String, String)> {
        let u = uri.trim_end_matches('/');
        self.pools
            .iter()
            .find(|(_, pu)| pu.trim_end_matches('/') == u)
    }

    /// `(pool, volume, snapshot)` named by a location: `URI/VOL[%SNAP]` or `POOL/VOL[@SNAP]`.
    pub fn resolve(&self, text: &str) -> Result<(String, String, Option<String>), String> {
        let loc = Location::parse(text).map_err(|e| e.message())?;
        let loc = match (&loc.pool, &loc.volume) {
            (PoolRef::Uri(_), None) => loc
                .as_volume()
                .ok_or_else(|| format!("{text:?} does not name a volume (URI/VOLUME)"))?,
            (PoolRef::Name(_), None) => {
                return Err(format!("{text:?} names a pool, not a volume"));
            }
            _ => loc,
        };
        let pool = match &loc.pool {
            PoolRef::Name(n) => self
                .by_name(n)
                .map(|p| p.0.clone())
                .ok_or_else(|| format!("hlfsd has no pool {n:?}"))?,
            PoolRef::Uri(u) => self.by_uri(u).map(|p| p.0.clone()).ok_or_else(|| {
                format!(
                    "no hlfsd pool has URI {u} (pools: {})",
                    self.pools
                        .iter()
                        .map(|(n, u)| format!("{n} = {u}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
        };
        Ok((pool, loc.volume.unwrap_or_default(), loc.snapshot))
    }
}

/// One disk the translation rewrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslatedDisk {
    /// What the XML named: the HLFS URI, or `POOL/VOLUME` of a volume disk.
    pub from: String,
    /// The NBD export: `POOL/VOLUME` or `POOL/VOLUME@SNAP`.
    pub export: String,
    pub readonly: bool,
}

/// The translated document and what changed.
#[derive(Debug, Clone)]
pub struct Translation {
    pub xml: String,
    pub disks: Vec<TranslatedDisk>,
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name.as_bytes())
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn name_of(e: &BytesStart<'_>) -> Vec<u8> {
    e.name().as_ref().to_vec()
}

/// Translates a domain XML document for hlfsd's NBD socket `socket`.
pub fn translate(xml: &str, pools: &PoolTable, socket: &Path) -> Result<Translation, XmlError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut out = Writer::new(Vec::new());
    let mut disk: Vec<(Event<'static>, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut disks = Vec::new();
    let mut root_seen = false;
    loop {
        let pos = reader.buffer_position() as usize;
        let line = line_of(xml, pos + xml[pos.min(xml.len())..].find('<').unwrap_or(0));
        let ev = reader.read_event().map_err(|err| XmlError {
            line: line_of(xml, reader.error_position() as usize),
            element: None,
            message: format!("malformed XML: {err}"),
        })?;
        if let Event::Eof = ev {
            break;
        }
        if !root_seen {
            if let Event::Start(e) | Event::Empty(e) = &ev {
                root_seen = true;
                if e.name().as_ref() != b"domain" {
                    return Err(XmlError {
                        line,
                        element: Some(String::from_utf8_lossy(e.name().as_ref()).into_owned()),
                        message: "expected a <domain> document".into(),
                    });
                }
            }
        }
        if disk.is_empty() {
            if let Event::Start(e) = &ev {
                if e.name().as_ref() == b"disk" {
                    depth = 1;
                    disk.push((ev.into_owned(), line));
                    continue;
                }
            }
            out.write_event(ev).map_err(|e| io_err(line, e))?;
            continue;
        }
        match &ev {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth -= 1,
            _ => {}
        }
        disk.push((ev.into_owned(), line));
        if depth == 0 {
            let events = std::mem::take(&mut disk);
            match rewrite_disk(&events, pools, socket)? {
                Some((new, d)) => {
                    disks.push(d);
                    for e in new {
                        out.write_event(e).map_err(|e| io_err(line, e))?;
                    }
                }
                None => {
                    for (e, _) in events {
                        out.write_event(e).map_err(|e| io_err(line, e))?;
                    }
                }
            }
        }
    }
    if !disk.is_empty() {
        return Err(XmlError {
            line: disk[0].1,
            element: Some("disk".into()),
            message: "not closed before the end of the document".into(),
        });
    }
    let xml = String::from_utf8(out.into_inner()).map_err(|_| XmlError {
        line: 1,
        element: None,
        message: "not UTF-8".into(),
    })?;
    Ok(Translation { xml, disks })
}

fn io_err(line: usize, e: impl std::fmt::Display) -> XmlError {
    XmlError {
        line,
        element: None,
        message: format!("cannot write XML: {e}"),
    }
}

/// The events of a rewritten disk, or `None` to keep it as written.
fn rewrite_disk(
    events: &[(Event<'static>, usize)],
    pools: &PoolTable,
    socket: &Path,
) -> Result<Option<(Vec<Event<'static>>, TranslatedDisk)>, XmlError> {
    let Some((Event::Start(start), _)) = events.first() else {
        return Ok(None);
    };
    let disk_type = attr(start, "type").unwrap_or_default();
    // The <source> child (depth 1): its index, and the index of its end (same for an empty one).
    let mut depth = 0usize;
    let mut source: Option<(usize, usize, usize)> = None; // (start, end, line)
    let mut has_readonly = false;
    for (i, (ev, line)) in events.iter().enumerate() {
        match ev {
            Event::Start(e) => {
                depth += 1;
                if depth == 2 && e.name().as_ref() == b"source" && source.is_none() {
                    source = Some((i, i, *line));
                }
            }
            Event::End(e) => {
                if depth == 2 && e.name().as_ref() == b"source" {
                    if let Some(s) = source.as_mut() {
                        if s.1 == s.0 {
                            s.1 = i;
                        }
                    }
                }
                depth -= 1;
            }
            Event::Empty(e) if depth == 1 => {
                if e.name().as_ref() == b"source" && source.is_none() {
                    source = Some((i, i, *line));
                }
                if e.name().as_ref() == b"readonly" {
                    has_readonly = true;
                }
            }
            _ => {}
        }
    }
    let Some((s_start, s_end, s_line)) = source else {
        return Ok(None);
    };
    let src = match &events[s_start].0 {
        Event::Start(e) | Event::Empty(e) => e.clone(),
        _ => return Ok(None),
    };
    let bad = |message: String| XmlError {
        line: s_line,
        element: Some("source".into()),
        message,
    };
    let (from, (pool, volume, snapshot)) = match disk_type.as_str() {
        "network" if attr(&src, "protocol").as_deref() == Some("hlfs") => {
            let name =
                attr(&src, "name").ok_or_else(|| bad("protocol='hlfs' needs name='URI'".into()))?;
            let r = pools.resolve(&name).map_err(bad)?;
            (name, r)
        }
        "volume" => {
            let (Some(p), Some(v)) = (attr(&src, "pool"), attr(&src, "volume")) else {
                return Ok(None);
            };
            if pools.by_name(&p).is_none() {
                return Ok(None); // another libvirt pool: libvirt handles it
            }
            (format!("{p}/{v}"), (p, v, None))
        }
        _ => return Ok(None),
    };
    let export = match &snapshot {
        Some(s) => format!("{pool}/{volume}@{s}"),
        None => format!("{pool}/{volume}"),
    };
    let readonly = snapshot.is_some();

    // Indentation of the <source> line, to lay out the new element alike.
    let indent = match s_start.checked_sub(1).map(|i| &events[i].0) {
        Some(Event::Text(t)) => {
            let t = String::from_utf8_lossy(t).into_owned();
            t.rsplit('\n').next().unwrap_or_default().to_string()
        }
        _ => String::new(),
    };
    let nl = |extra: &str| Event::Text(BytesText::new(&format!("\n{indent}{extra}")).into_owned());

    let mut new_start = BytesStart::new(String::from_utf8_lossy(&name_of(start)).into_owned());
    for a in start.attributes().flatten() {
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = if key == "type" {
            "network".to_string()
        } else {
            a.unescape_value()
                .map(|v| v.into_owned())
                .unwrap_or_default()
        };
        new_start.push_attribute((key.as_str(), value.as_str()));
    }

    let mut src_start = BytesStart::new("source");
    src_start.push_attribute(("protocol", "nbd"));
    src_start.push_attribute(("name", export.as_str()));
    let mut host = BytesStart::new("host");
    host.push_attribute(("transport", "unix"));
    host.push_attribute(("socket", socket.to_string_lossy().as_ref()));

    // A network disk keeps its start tag byte for byte; a volume disk changes only its type.
    let first = if disk_type == "network" {
        Event::Start(start.clone())
    } else {
        Event::Start(new_start)
    };
    let mut new = vec![first];
    for (ev, _) in &events[1..s_start] {
        new.push(ev.clone());
    }
    new.push(Event::Start(src_start));
    // Children of the old <source> other than <host> (seclabel, reservations...) stay.
    let mut skip = 0usize;
    let inner = if s_end > s_start {
        &events[s_start + 1..s_end]
    } else {
        &[][..]
    };
    for (ev, _) in inner {
        match ev {
            Event::Start(e) if skip > 0 || e.name().as_ref() == b"host" => skip += 1,
            Event::End(_) if skip > 0 => skip -= 1,
            Event::Empty(e) if skip == 0 && e.name().as_ref() == b"host" => {}
            _ if skip > 0 => {}
            Event::Text(t) if t.iter().all(u8::is_ascii_whitespace) => {}
            other => {
                new.push(nl("  "));
                new.push(other.clone());
            }
        }
    }
    new.push(nl("  "));
    new.push(Event::Empty(host));
    new.push(nl(""));
    new.push(Event::End(BytesEnd::new("source")));
    if readonly && !has_readonly {
        new.push(nl(""));
        new.push(Event::Empty(BytesStart::new("readonly")));
    }
    for (ev, _) in &events[s_end + 1..] {
        new.push(ev.clone());
    }
    Ok(Some((
        new,
        TranslatedDisk {
            from,
            export,
            readonly,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> PoolTable {
        PoolTable {
            pools: vec![
                ("testenv".into(), "local:///tmp/testenv".into()),
                ("h".into(), "hdfs://nn:9000/hlfs/h".into()),
            ],
        }
    }

    const SEED: &str = "<domain type='qemu'>\n  <name>vm</name>\n  <!-- keep me -->\n  <devices>\n    <disk type='network' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source protocol=\"hlfs\" name=\"local:///tmp/testenv/testfs\"/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type=\"file\" device=\"cdrom\"><source file=\"/x.iso\"/><target dev=\"hdc\"/></disk>\n  </devices>\n</domain>\n";

    #[test]
    fn the_seeds_disk_becomes_an_nbd_disk_and_nothing_else_changes() {
        let t = translate(SEED, &pools(), Path::new("/run/hlfs/nbd.sock")).unwrap();
        let want = SEED.replace(
            "<source protocol=\"hlfs\" name=\"local:///tmp/testenv/testfs\"/>",
            "<source protocol=\"nbd\" name=\"testenv/testfs\">\n        <host transport=\"unix\" socket=\"/run/hlfs/nbd.sock\"/>\n      </source>",
        );
        assert_eq!(t.xml, want);
        assert_eq!(
            t.disks,
            [TranslatedDisk {
                from: "local:///tmp/testenv/testfs".into(),
                export: "testenv/testfs".into(),
                readonly: false
            }]
        );
    }

    #[test]
    fn snapshots_are_read_only_and_volume_disks_of_hlfs_pools_translate() {
        let x = SEED.replace("testfs\"/>", "testfs%snapshot1\"/>");
        let t = translate(&x, &pools(), Path::new("/s")).unwrap();
        assert!(
            t.xml.contains("name=\"testenv/testfs@snapshot1\""),
            "{}",
            t.xml
        );
        assert!(t.xml.contains("</source>\n      <readonly/>"), "{}", t.xml);
        assert!(t.disks[0].readonly);

        let x = "<domain><devices><disk type='volume' device='disk'><source pool='h' volume='v1'/><target dev='vda'/></disk><disk type='volume'><source pool='other' volume='v'/></disk></devices></domain>";
        let t = translate(x, &pools(), Path::new("/s")).unwrap();
        assert!(
            t.xml.contains(
                "<disk type=\"network\" device=\"disk\"><source protocol=\"nbd\" name=\"h/v1\">"
            ),
            "{}",
            t.xml
        );
        assert!(
            t.xml
                .contains("<disk type='volume'><source pool='other' volume='v'/></disk>"),
            "{}",
            t.xml
        );
    }

    #[test]
    fn unknown_uris_and_malformed_xml_name_the_line() {
        let x = SEED.replace("/tmp/testenv/testfs", "/nowhere/testfs");
        let e = translate(&x, &pools(), Path::new("/s")).unwrap_err();
        assert_eq!((e.line, e.element.as_deref()), (7, Some("source")), "{e}");
        assert!(
            e.message.contains("no hlfsd pool has URI local:///nowhere"),
            "{e}"
        );
        let x = SEED
            .replace("</target>", "")
            .replace("bus='virtio'/>", "bus='virtio'>");
        let e = translate(&x, &pools(), Path::new("/s")).unwrap_err();
        assert!(e.line >= 8, "{e}");
        let e = translate("<pool/>", &pools(), Path::new("/s")).unwrap_err();
        assert_eq!(e.element.as_deref(), Some("pool"));
    }
}
