//! The proxies in `src/proxy.rs` against the introspection XML kept in the repo
//! (`agent/dbus/org.hlfs.Hlfs1.xml`, itself checked against the running hlfsd by the agent's
//! `dbus_cli` test): every interface, method, property and signal on both sides, with the same
//! D-Bus signatures. And the XML is well-formed (xmllint reads it as any tool would).

use std::collections::BTreeMap;

const XML: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agent/dbus/org.hlfs.Hlfs1.xml"
);
const PROXY: &str = include_str!("../src/proxy.rs");

/// `interface -> member description -> signature(s)`; a description is `method Name`,
/// `property Name` or `signal Name`; a method's signature is `in -> out`.
type Api = BTreeMap<String, BTreeMap<String, String>>;

fn from_xml(text: &str) -> Api {
    let doc = roxmltree::Document::parse_with_options(
        text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("the XML parses");
    let mut api = Api::new();
    for i in doc.descendants().filter(|n| n.has_tag_name("interface")) {
        let name = i.attribute("name").unwrap().to_string();
        let members = api.entry(name).or_default();
        for m in i.children().filter(|n| n.is_element()) {
            let mname = m.attribute("name").unwrap();
            let args = |dir: &str| {
                m.children()
                    .filter(|a| a.has_tag_name("arg"))
                    .filter(|a| a.attribute("direction").unwrap_or("out") == dir)
                    .map(|a| a.attribute("type").unwrap())
                    .collect::<String>()
            };
            match m.tag_name().name() {
                "method" => {
                    members.insert(
                        format!("method {mname}"),
                        format!("{} -> {}", args("in"), args("out")),
                    );
                }
                "property" => {
                    members.insert(
                        format!("property {mname}"),
                        m.attribute("type").unwrap().to_string(),
                    );
                }
                "signal" => {
                    members.insert(format!("signal {mname}"), args("out"));
                }
                other => panic!("unexpected <{other}> in {mname}"),
            }
        }
    }
    api
}

/// The D-Bus signature of a Rust type as written in the proxies.
fn sig(ty: &str) -> String {
    let t = ty.trim();
    if let Some(inner) = t.strip_prefix("Vec<").and_then(|r| r.strip_suffix('>')) {
        return format!("a{}", sig(inner));
    }
    if let Some(inner) = t.strip_prefix("HashMap<").and_then(|r| r.strip_suffix('>')) {
        let (k, v) = split_top(inner)
            .into_iter()
            .fold((None, None), |acc, x| match acc {
                (None, _) => (Some(x), None),
                (k, _) => (k, Some(x)),
            });
        return format!("a{{{}{}}}", sig(k.unwrap()), sig(v.unwrap()));
    }
    if let Some(inner) = t.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let parts: String = split_top(inner).into_iter().map(sig).collect();
        return format!("({parts})");
    }
    match t {
        "&str" | "String" => "s",
        "u64" => "t",
        "u32" => "u",
        "i32" => "i",
        "bool" => "b",
        "f64" => "d",
        "OwnedObjectPath" | "ObjectPath<'_>" => "o",
        "Value<'_>" | "OwnedValue" => "v",
        other => panic!("the test knows no D-Bus signature for Rust type {other:?}"),
    }
    .to_string()
}

/// Splits `A, B<C, D>, (E, F)` at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn from_proxies(src: &str) -> Api {
    let mut api = Api::new();
    let mut rest = src;
    while let Some(i) = rest.find("interface = \"") {
        let after = &rest[i + "interface = \"".len()..];
        let iface = after.split('"').next().unwrap().to_string();
        let body_start = after.find("pub trait ").unwrap();
        let body = &after[body_start..];
        let open = body.find('{').unwrap();
        let close = body.find("\n}").unwrap();
        let members = api.entry(iface).or_default();
        // Items end with ';'; comments are dropped first.
        let code: String = body[open + 1..close]
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join(" ");
        for item in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (attrs, f) = item.split_once("fn ").expect("an fn");
            let name = &f[..f.find('(').unwrap()];
            let args_end = f.rfind(") ->").expect("a return type");
            let args: Vec<&str> = split_top(&f[name.len() + 1..args_end])
                .into_iter()
                .filter(|a| *a != "&self")
                .collect();
            let ret = f[args_end + ") ->".len()..].trim();
            let ok = ret
                .strip_prefix("Result<")
                .or_else(|| ret.strip_prefix("zbus::Result<"))
                .and_then(|r| r.strip_suffix('>'))
                .expect("a Result");
            let ok = split_top(ok)[0];
            let out = match ok.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
                Some(inner) => split_top(inner).into_iter().map(sig).collect(),
                None => sig(ok),
            };
            let ins: String = args
                .iter()
                .map(|a| sig(a.split_once(':').expect("name: type").1))
                .collect();
            let kind = if attrs.contains("zbus(property)") {
                "property"
            } else if attrs.contains("zbus(signal)") {
                "signal"
            } else {
                "method"
            };
            let desc = format!("{kind} {}", camel(name));
            let s = match kind {
                "method" => format!("{ins} -> {out}"),
                "property" => out,
                _ => ins,
            };
            assert!(members.insert(desc.clone(), s).is_none(), "{desc} twice");
        }
        rest = &after[close..];
    }
    api
}

#[test]
fn the_xml_is_well_formed() {
    let out = std::process::Command::new("xmllint")
        .args(["--noout", XML])
        .output()
        .expect("run xmllint (package libxml2-utils)");
    assert!(
        out.status.success(),
        "{XML}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_proxy_member_matches_the_xml() {
    let xml = from_xml(&std::fs::read_to_string(XML).expect("read the XML"));
    let proxies = from_proxies(PROXY);
    assert_eq!(
        xml.keys().collect::<Vec<_>>(),
        [
            "org.hlfs.Job1",
            "org.hlfs.Manager1",
            "org.hlfs.Pool1",
            "org.hlfs.Snapshot1",
            "org.hlfs.Volume1"
        ]
    );
    // Spot checks that the parsers read what they should.
    assert_eq!(
        proxies["org.hlfs.Pool1"]["method CreateVolume"],
        "sta{sv} -> o"
    );
    assert_eq!(xml["org.hlfs.Manager1"]["method CreatePool"], "ss -> ob");
    for (iface, members) in &xml {
        let Some(p) = proxies.get(iface) else {
            panic!("no proxy for {iface}");
        };
        for (m, s) in members {
            assert_eq!(p.get(m), Some(s), "{iface} {m}: proxy differs from the XML");
        }
        for m in p.keys() {
            assert!(members.contains_key(m), "{iface} {m}: not in the XML");
        }
    }
    assert_eq!(
        proxies.len(),
        xml.len(),
        "a proxy for an interface the XML lacks"
    );
}
