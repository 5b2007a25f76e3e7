//! What users and clients type: pool/volume/snapshot names, sizes, pool URIs, NBD export names,
//! `--create-volume` specs, D-Bus object path elements and the engine's object names.

use hlfs_agent::dbus::paths::{escape, unescape};
use hlfs_agent::names::{check_name, parse_size, ExportName, PoolUri, VolumeSpec};
use hlfs_engine::format::{checkpoint_name, parse_name, segment_name};

/// Feeds the input (as UTF-8, lossily) to every parser, and checks their round trips.
pub fn names(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    let name_ok = check_name("volume", s).is_ok();
    if name_ok {
        // Names become directory names: never a path separator, never `.`/`..`.
        assert!(
            !s.contains('/') && s != "." && s != "..",
            "name {s:?} accepted"
        );
        assert!(
            !s.starts_with('.') && !s.starts_with('-'),
            "name {s:?} accepted"
        );
    }

    if let Ok(n) = parse_size(s) {
        // Plain digits parse to themselves.
        if s.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(Ok(n), s.parse::<u64>(), "size {s:?}");
        }
    }

    if let Ok(uri) = PoolUri::parse(s) {
        let text = uri.to_uri();
        match PoolUri::parse(&text) {
            Ok(again) => assert_eq!(again, uri, "pool URI {s:?} -> {text:?}"),
            Err(e) => panic!("pool URI {s:?} prints as {text:?}, which does not parse: {e}"),
        }
        if let PoolUri::Local(p) = &uri {
            assert!(p.is_absolute(), "local pool {s:?} -> relative {p:?}");
            assert!(
                !p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir)),
                "local pool {s:?} -> {p:?} escapes with '..'"
            );
        }
    }

    if let Ok(e) = ExportName::parse(s) {
        for part in [Some(&e.pool), Some(&e.volume), e.snapshot.as_ref()]
            .into_iter()
            .flatten()
        {
            assert!(check_name("part", part).is_ok(), "export {s:?}: {part:?}");
        }
        let text = e.to_string();
        match ExportName::parse(&text) {
            Ok(again) => assert_eq!(again, e, "export {s:?} -> {text:?}"),
            Err(err) => panic!("export {s:?} prints as {text:?}, which does not parse: {err}"),
        }
    }

    if let Ok(spec) = s.parse::<VolumeSpec>() {
        assert!(
            check_name("pool", &spec.pool).is_ok() && check_name("volume", &spec.volume).is_ok()
        );
    }

    // D-Bus object path elements: escape is injective and unescape inverts it. (The empty
    // name escapes to "_", which does not unescape: no object is named "".)
    let esc = escape(s);
    assert!(
        esc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "escape({s:?}) = {esc:?} is not a valid object path element"
    );
    if !s.is_empty() {
        assert_eq!(
            unescape(&esc).as_deref(),
            Some(s),
            "escape({s:?}) = {esc:?}"
        );
    }
    if let Some(u) = unescape(s) {
        if !u.is_empty() {
            // Whatever unescapes names one object: its canonical form unescapes to the same.
            assert_eq!(unescape(&escape(&u)).as_deref(), Some(u.as_str()));
        }
    }

    for prefix in ["seg-", "ckpt-"] {
        if let Some(n) = parse_name(s, prefix) {
            let canon = if prefix == "seg-" {
                segment_name(n)
            } else {
                checkpoint_name(n)
            };
            assert_eq!(parse_name(&canon, prefix), Some(n), "{s:?} -> {canon:?}");
        }
    }
    let _ = hlfs_engine::check_snapshot_name(s);
}
