//! Volume XML of HLFS pools: what `vol-create POOL FILE` reads and `vol-dumpxml` writes.
//! Grammar: `xml-schemas/hlfs-storagevol.rng` (libvirt's, where `<backingStore>` may name an
//! HLFS snapshot, `URI%SNAP` or `POOL/VOL@SNAP`, to make a clone). What `vol-dumpxml` writes
//! validates against libvirt's own storagevol.rng.

use crate::units;
use crate::xmldoc::{esc, Element, XmlError};
use hlfs_client::names::{check_name, Location};

/// What a volume XML asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    /// Bytes; `None` for a clone that keeps its base's size.
    pub capacity: Option<u64>,
    /// The snapshot to clone (`<backingStore>`).
    pub backing: Option<Location>,
}

fn size_of(el: &Element) -> Result<u64, XmlError> {
    units::scaled(el.text.trim(), el.attr("unit")).map_err(|why| el.error(why))
}

/// Reads a volume XML document (root `<volume>`).
pub fn parse_volume(root: &Element) -> Result<VolumeSpec, XmlError> {
    if root.name != "volume" {
        return Err(root.error("expected a <volume> document"));
    }
    if let Some(t) = root.attr("type") {
        if !matches!(t, "file" | "block" | "network") {
            return Err(root.error(format!("type {t:?} cannot be an HLFS volume")));
        }
    }
    root.only_children(&[
        "name",
        "key",
        "source",
        "capacity",
        "allocation",
        "physical",
        "target",
        "backingStore",
    ])?;
    let name_el = root
        .child("name")
        .ok_or_else(|| root.error("<name> is missing"))?;
    let name = name_el.required_text()?.to_string();
    check_name("volume", &name).map_err(|e| name_el.error(e.message()))?;
    let capacity = root.child("capacity").map(size_of).transpose()?;
    if let Some(a) = root.child("allocation") {
        size_of(a)?; // checked; HLFS volumes are thin, nothing is preallocated
    }
    if let Some(t) = root.child("target") {
        t.only_children(&[
            "path",
            "format",
            "permissions",
            "timestamps",
            "compat",
            "nocow",
            "features",
        ])?;
        if let Some(f) = t.child("format") {
            match f.attr("type") {
                Some("raw") | None => {}
                Some(other) => {
                    return Err(f.error(format!(
                        "format {other:?}: HLFS volumes are raw block devices (snapshots and clones are HLFS's own)"
                    )))
                }
            }
        }
    }
    let backing = match root.child("backingStore") {
        Some(b) => {
            b.only_children(&["path", "format", "permissions", "timestamps"])?;
            let p = b
                .child("path")
                .ok_or_else(|| b.error("<path> is missing"))?;
            let text = p.required_text()?;
            let loc = Location::parse(text).map_err(|e| p.error(e.message()))?;
            if loc.volume.is_none() || loc.snapshot.is_none() {
                return Err(p.error(format!(
                    "{text:?} does not name a snapshot (URI/VOLUME%SNAPSHOT or POOL/VOLUME@SNAPSHOT)"
                )));
            }
            Some(loc)
        }
        None => None,
    };
    if capacity.is_none() && backing.is_none() {
        return Err(root.error("<capacity> is missing"));
    }
    if capacity == Some(0) {
        return Err(root
            .child("capacity")
            .map(|c| c.error("a volume needs a capacity above 0"))
            .unwrap_or_else(|| root.error("capacity 0")));
    }
    Ok(VolumeSpec {
        name,
        capacity,
        backing,
    })
}

/// What `vol-dumpxml` shows of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub pool_uri: String,
    pub capacity: u64,
    pub allocation: u64,
    pub physical: u64,
    /// A clone's base, `URI%SNAP`; empty if none.
    pub base: String,
    /// The base snapshot's file in the FUSE view, when mounted.
    pub base_path: Option<String>,
}

impl VolumeInfo {
    /// The volume's key: its HLFS URI.
    pub fn key(&self) -> String {
        format!("{}/{}", self.pool_uri, self.name)
    }
}

/// The volume's XML (validates against libvirt's storagevol.rng).
pub fn volume_xml(v: &VolumeInfo) -> String {
    let mut s = String::from("<volume type='network'>\n");
    s += &format!("  <name>{}</name>\n", esc(&v.name));
    s += &format!("  <key>{}</key>\n", esc(&v.key()));
    s += &format!("  <capacity unit='bytes'>{}</capacity>\n", v.capacity);
    s += &format!("  <allocation unit='bytes'>{}</allocation>\n", v.allocation);
    s += &format!("  <physical unit='bytes'>{}</physical>\n", v.physical);
    s += "  <target>\n";
    s += &format!("    <path>hlfs:{}</path>\n", esc(&v.key()));
    s += "    <format type='raw'/>\n";
    s += "  </target>\n";
    if !v.base.is_empty() {
        // libvirt's grammar wants an absolute file path here: the snapshot's file in the FUSE
        // view when there is one, else the base is only told in a comment.
        match &v.base_path {
            Some(p) => {
                s += &format!("  <!-- clone of {} -->\n", v.base.replace("--", "- -"));
                s += &format!(
                    "  <backingStore>\n    <path>{}</path>\n    <format type='raw'/>\n  </backingStore>\n",
                    esc(p)
                );
            }
            None => s += &format!("  <!-- clone of {} -->\n", v.base.replace("--", "- -")),
        }
    }
    s += "</volume>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmldoc::parse;
    use hlfs_client::PoolRef;

    fn spec(x: &str) -> Result<VolumeSpec, XmlError> {
        parse_volume(&parse(x).unwrap())
    }

    #[test]
    fn sizes_in_libvirt_units_and_clones() {
        let s = spec("<volume><name>testfs</name><key>hlfs/testfs</key><capacity unit='KB'>2048</capacity><target><path>hlfs:local:///tmp/testenv/testfs</path></target></volume>").unwrap();
        assert_eq!(
            (s.name.as_str(), s.capacity, s.backing.is_none()),
            ("testfs", Some(2_048_000), true)
        );
        let s = spec("<volume><name>c</name><capacity unit='G'>1</capacity><backingStore><path>local:///tmp/testenv/testfs%snapshot1</path></backingStore></volume>").unwrap();
        let b = s.backing.unwrap();
        assert_eq!(b.pool, PoolRef::Uri("local:///tmp/testenv".into()));
        assert_eq!(
            (b.volume.as_deref(), b.snapshot.as_deref()),
            (Some("testfs"), Some("snapshot1"))
        );
        assert_eq!(s.capacity, Some(1 << 30));
        let s =
            spec("<volume><name>c</name><backingStore><path>p/v@s</path></backingStore></volume>")
                .unwrap();
        assert_eq!(s.capacity, None);
    }

    #[test]
    fn errors_name_the_line_and_element() {
        let cases = [
            ("<volume>\n<name>v</name>\n<capacity unit='XB'>1</capacity>\n</volume>", 3, "capacity"),
            ("<volume>\n<name>a/b</name>\n<capacity>1</capacity>\n</volume>", 2, "name"),
            ("<volume>\n<name>v</name>\n</volume>", 1, "volume"),
            ("<volume>\n<name>v</name>\n<capacity>1</capacity>\n<target>\n<format type='qcow2'/>\n</target>\n</volume>", 5, "format"),
            ("<volume>\n<name>v</name>\n<backingStore>\n<path>local:///p/v</path>\n</backingStore>\n</volume>", 4, "path"),
            ("<volume>\n<name>v</name>\n<capacity>0</capacity>\n</volume>", 3, "capacity"),
        ];
        for (x, line, el) in cases {
            let e = spec(x).unwrap_err();
            assert_eq!((e.line, e.element.as_deref()), (line, Some(el)), "{x}: {e}");
        }
    }

    #[test]
    fn dumped_xml_reads_back() {
        let v = VolumeInfo {
            name: "testfs".into(),
            pool_uri: "local:///tmp/testenv".into(),
            capacity: 1 << 20,
            allocation: 4096,
            physical: 8192,
            base: "local:///tmp/testenv/base%s1".into(),
            base_path: None,
        };
        let x = volume_xml(&v);
        assert!(x.contains("<key>local:///tmp/testenv/testfs</key>"), "{x}");
        assert!(
            x.contains("<path>hlfs:local:///tmp/testenv/testfs</path>"),
            "{x}"
        );
        let s = spec(&x).unwrap();
        assert_eq!((s.name.as_str(), s.capacity), ("testfs", Some(1 << 20)));
    }
}
