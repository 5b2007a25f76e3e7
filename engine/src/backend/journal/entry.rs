//! Journal entries and journal file names: the bytes the journal writes and the decoder
//! replay reads them back with (a damaged or torn entry decodes to `None`).

pub(super) const ENTRY_MAGIC: u32 = 0x314a_4c48; // "HLJ1"
pub(super) const ENTRY_HEADER: usize = 4 + 1 + 1 + 4 + 8;
pub(super) const KIND_CREATE: u8 = 1;
pub(super) const KIND_APPEND: u8 = 2;
pub(super) const KIND_DELETE: u8 = 3;

pub(super) fn journal_name(n: u64) -> String {
    format!("journal-{n:016x}.log")
}

pub(super) fn parse_journal_name(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("journal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub(super) fn encode_entry(kind: u8, name: &str, off: u64, data: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(ENTRY_HEADER + name.len() + data.len() + 4);
    e.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
    e.push(kind);
    e.push(name.len() as u8);
    e.extend_from_slice(&(data.len() as u32).to_le_bytes());
    e.extend_from_slice(&off.to_le_bytes());
    e.extend_from_slice(name.as_bytes());
    e.extend_from_slice(data);
    let crc = crc32c::crc32c(&e);
    e.extend_from_slice(&crc.to_le_bytes());
    e
}

/// One decoded entry: kind, name, object offset, data offset in the file, data length, and
/// the entry's total length.
pub(super) struct Entry {
    pub(super) kind: u8,
    pub(super) name: String,
    pub(super) off: u64,
    pub(super) data_off: u64,
    pub(super) data_len: u64,
    pub(super) total: u64,
}

pub(super) fn decode_entry(buf: &[u8], at: usize) -> Option<Entry> {
    let h = buf.get(at..at + ENTRY_HEADER)?;
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != ENTRY_MAGIC {
        return None;
    }
    let kind = h[4];
    let name_len = h[5] as usize;
    let data_len = u32::from_le_bytes([h[6], h[7], h[8], h[9]]) as usize;
    let mut o = [0u8; 8];
    o.copy_from_slice(&h[10..18]);
    let off = u64::from_le_bytes(o);
    let body_end = at + ENTRY_HEADER + name_len + data_len;
    let crc_b = buf.get(body_end..body_end + 4)?;
    let crc = u32::from_le_bytes([crc_b[0], crc_b[1], crc_b[2], crc_b[3]]);
    if crc32c::crc32c(&buf[at..body_end]) != crc {
        return None;
    }
    let name = std::str::from_utf8(&buf[at + ENTRY_HEADER..at + ENTRY_HEADER + name_len])
        .ok()?
        .to_string();
    if !matches!(kind, KIND_CREATE | KIND_APPEND | KIND_DELETE) {
        return None;
    }
    Some(Entry {
        kind,
        name,
        off,
        data_off: (at + ENTRY_HEADER + name_len) as u64,
        data_len: data_len as u64,
        total: (body_end + 4 - at) as u64,
    })
}
