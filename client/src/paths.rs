//! Object paths of the API (shared by hlfsd and its clients). Names may hold `-`, `.` and `+`, which object paths do not allow, so path
//! elements escape every byte outside `[A-Za-z0-9]` as `_XX` (lower-case hex), as systemd does.

use zbus::zvariant::OwnedObjectPath;

/// Well-known name on a bus.
pub const SERVICE: &str = "org.hlfs.Hlfs1";
/// The manager object; also the ObjectManager root.
pub const ROOT: &str = "/org/hlfs/Hlfs1";

/// Escapes one path element.
pub fn escape(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            s.push(b as char);
        } else {
            s.push_str(&format!("_{b:02x}"));
        }
    }
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// Inverse of [`escape`]; `None` for text it cannot have produced.
pub fn unescape(elem: &str) -> Option<String> {
    let b = elem.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = elem.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn path(s: String) -> OwnedObjectPath {
    // Escaped elements are always valid; fall back to the root rather than panic.
    OwnedObjectPath::try_from(s)
        .unwrap_or_else(|_| OwnedObjectPath::try_from(ROOT).unwrap_or_default())
}

pub fn pool(p: &str) -> OwnedObjectPath {
    path(format!("{ROOT}/pool/{}", escape(p)))
}

pub fn volume(p: &str, v: &str) -> OwnedObjectPath {
    path(format!("{ROOT}/pool/{}/{}", escape(p), escape(v)))
}

pub fn snapshot(p: &str, v: &str, s: &str) -> OwnedObjectPath {
    path(format!(
        "{ROOT}/pool/{}/{}/{}",
        escape(p),
        escape(v),
        escape(s)
    ))
}

pub fn job(id: u32) -> OwnedObjectPath {
    path(format!("{ROOT}/job/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for n in ["vm1", "disk-0_1.img", "A+B", ""] {
            let e = escape(n);
            assert!(e.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
            if !n.is_empty() {
                assert_eq!(unescape(&e).as_deref(), Some(n));
            }
        }
        assert_eq!(escape("a-b"), "a_2db");
        assert_eq!(
            volume("default", "vm.1").as_str(),
            "/org/hlfs/Hlfs1/pool/default/vm_2e1"
        );
    }
}
