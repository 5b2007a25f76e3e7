//! Every XML example in docs/libvirt.md and in tests/data validates (xmllint) against the
//! project's schemas in xml-schemas/, and, where it is plain libvirt XML, against libvirt's own
//! schemas; the malformed examples fail. Translated domain XML is checked in offline.rs.

mod common;
use common::*;
use std::path::Path;

/// The schemas a document must validate against: ours, and libvirt's when libvirt takes it as is.
fn schemas_for(xml: &str) -> Vec<std::path::PathBuf> {
    let root = xml
        .split('<')
        .map(str::trim_start)
        .find(|t| !t.starts_with('?') && !t.starts_with('!') && !t.is_empty())
        .unwrap_or_default();
    let hlfs = xml.contains("'hlfs'") || xml.contains("\"hlfs\"");
    let (ours, theirs) = if root.starts_with("pool") {
        ("hlfs-storagepool.rng", "storagepool.rng")
    } else if root.starts_with("volume") {
        ("hlfs-storagevol.rng", "storagevol.rng")
    } else if root.starts_with("domain") {
        ("hlfs-domain.rng", "domain.rng")
    } else {
        panic!("no schema for an example starting with <{root}");
    };
    let hlfs_backing =
        xml.contains("<backingStore>") && (xml.contains('%') || xml.contains("local://"));
    let mut v = vec![schema(ours)];
    if !hlfs && !hlfs_backing {
        v.push(libvirt_schema(theirs));
    }
    v
}

fn check(what: &str, xml: &str) {
    for s in schemas_for(xml) {
        if let Err(e) = relaxng(&s, xml) {
            panic!(
                "{what} does not validate against {}:\n{e}\n{xml}",
                s.display()
            );
        }
    }
}

#[test]
fn examples_in_docs_validate() {
    let doc = std::fs::read_to_string(repo().join("docs/libvirt.md")).unwrap();
    let mut n = 0;
    let mut in_xml = false;
    let mut cur = String::new();
    for line in doc.lines() {
        if in_xml {
            if line.trim_start().starts_with("```") {
                n += 1;
                check(&format!("docs/libvirt.md example {n}"), &cur);
                cur.clear();
                in_xml = false;
            } else {
                cur += line;
                cur += "\n";
            }
        } else if line.trim() == "```xml" {
            in_xml = true;
        }
    }
    assert!(n >= 6, "only {n} XML examples found in docs/libvirt.md");
}

#[test]
fn test_data_validates_and_malformed_examples_do_not() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let xml = std::fs::read_to_string(&p).unwrap();
        if name.starts_with("malformed") || name.starts_with("bad-") {
            let s = schemas_for(&xml);
            assert!(relaxng(&s[0], &xml).is_err(), "{name} validates");
        } else {
            check(&name, &xml);
        }
        n += 1;
    }
    assert!(n >= 8, "{n} files");
}

#[test]
fn the_schemas_still_refuse_what_libvirt_refuses() {
    for (rng, xml) in [
        ("hlfs-storagepool.rng", "<pool type='bogus'><name>p</name></pool>"),
        ("hlfs-storagepool.rng", "<pool type='hlfs'><name>p</name><source><name>file:///x</name></source></pool>"),
        ("hlfs-storagevol.rng", "<volume><name>v</name><backingStore><path>relative</path></backingStore></volume>"),
        ("hlfs-domain.rng", "<domain type='qemu'><name>d</name><memory>1</memory><os><type>hvm</type></os><devices><disk type='network'><source protocol='hlfs' name='not-a-uri'/><target dev='vda'/></disk></devices></domain>"),
    ] {
        assert!(relaxng(&schema(rng), xml).is_err(), "{rng} accepted {xml}");
    }
}
