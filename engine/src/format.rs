//! On-disk encodings: the volume superblock, segment headers, records, segment footers and
//! checkpoints. All integers are little-endian; every structure carries a CRC32C.
//! `docs/format.md` describes the layout for humans.

/// Superblock object name.
pub const META_OBJECT: &str = "volume.meta";
pub const META_MAGIC: &[u8; 8] = b"HLFSVOL1";
pub const SEG_MAGIC: &[u8; 8] = b"HLFSSEG1";
pub const FOOTER_MAGIC: &[u8; 8] = b"HLFSEND1";
pub const CKPT_MAGIC: &[u8; 8] = b"HLFSCKP1";
pub const RECORD_MAGIC: u32 = 0x3152_4c48; // "HLR1"

pub const SEG_HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 40;
pub const UNIT_HEADER_LEN: usize = 8;
pub const TRAILER_LEN: usize = 24;
/// Bit 31 of a unit's stored length: the unit is LZ4-compressed.
pub const UNIT_COMPRESSED: u32 = 1 << 31;

/// Name of segment `seq`.
pub fn segment_name(seq: u32) -> String {
    format!("seg-{seq:08x}")
}

/// Name of checkpoint number `id` (numbers only grow; the newest valid one wins).
pub fn checkpoint_name(id: u32) -> String {
    format!("ckpt-{id:08x}")
}

/// Parses `seg-XXXXXXXX` / `ckpt-XXXXXXXX`.
pub fn parse_name(name: &str, prefix: &str) -> Option<u32> {
    let hex = name.strip_prefix(prefix)?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// A little-endian byte builder.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Appends the CRC32C of everything so far.
    pub fn seal_crc(&mut self) -> &mut Self {
        let c = crc32c::crc32c(&self.0);
        self.u32(c)
    }
}

/// A bounds-checked little-endian reader: running off the end yields `None`, never a panic.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// Checks that the last 4 bytes of `buf` are the CRC32C of the rest.
pub fn crc_ok(buf: &[u8]) -> bool {
    if buf.len() < 4 {
        return false;
    }
    let (body, tail) = buf.split_at(buf.len() - 4);
    tail.try_into().map(u32::from_le_bytes).ok() == Some(crc32c::crc32c(body))
}

/// The immutable volume superblock, written once at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub uuid: [u8; 16],
    pub block_size: u32,
    pub segment_size: u32,
    pub unit_blocks: u32,
    pub compression: bool,
    pub created_unix: u64,
    pub initial_size: u64,
    pub checkpoint_interval: u64,
    /// For a clone: where its base volume lives and which snapshot of it.
    pub base: Option<BaseRef>,
}

/// A clone's base: a volume's location (a backend URI, possibly another pool or backend) and
/// a snapshot name. A location, not an in-process pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRef {
    pub location: String,
    pub snapshot: String,
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(META_MAGIC)
            .bytes(&self.uuid)
            .u32(self.block_size)
            .u32(self.segment_size)
            .u32(self.unit_blocks)
            .u32(u32::from(self.compression))
            .u64(self.created_unix)
            .u64(self.initial_size)
            .u64(self.checkpoint_interval);
        match &self.base {
            Some(b) => {
                e.u8(1)
                    .u16(b.location.len() as u16)
                    .bytes(b.location.as_bytes())
                    .u16(b.snapshot.len() as u16)
                    .bytes(b.snapshot.as_bytes());
            }
            None => {
                e.u8(0);
            }
        }
        e.seal_crc();
        e.0
    }

    pub fn decode(buf: &[u8]) -> Option<Meta> {
        if !crc_ok(buf) {
            return None;
        }
        let mut d = Dec::new(buf);
        if d.take(8)? != META_MAGIC {
            return None;
        }
        let uuid = d.take(16)?.try_into().ok()?;
        let mut m = Meta {
            uuid,
            block_size: d.u32()?,
            segment_size: d.u32()?,
            unit_blocks: d.u32()?,
            compression: d.u32()? != 0,
            created_unix: d.u64()?,
            initial_size: d.u64()?,
            checkpoint_interval: d.u64()?,
            base: None,
        };
        if d.u8()? == 1 {
            let n = d.u16()? as usize;
            let location = String::from_utf8(d.take(n)?.to_vec()).ok()?;
            let n = d.u16()? as usize;
            let snapshot = String::from_utf8(d.take(n)?.to_vec()).ok()?;
            m.base = Some(BaseRef { location, snapshot });
        }
        m.plausible().then_some(m)
    }

    /// Whether the layout is one the engine can create (a superblock with a valid CRC but an
    /// impossible block, segment or unit size would make recovery divide by zero or allocate
    /// gigabytes). Unit size is checked loosely: at most a segment.
    fn plausible(&self) -> bool {
        let (bs, seg) = (u64::from(self.block_size), u64::from(self.segment_size));
        self.block_size.is_power_of_two()
            && (512..=65536).contains(&self.block_size)
            && (64 << 10..=1 << 30).contains(&seg)
            && seg >= 8 * bs
            && self.unit_blocks >= 1
            && u64::from(self.unit_blocks) * bs <= seg
            && self.initial_size <= crate::volume::MAX_SIZE
            && self.checkpoint_interval > 0
    }
}

/// The first bytes of every segment.
pub fn encode_segment_header(uuid: &[u8; 16], seq: u32) -> Vec<u8> {
    let mut e = Enc::default();
    e.bytes(SEG_MAGIC).bytes(uuid).u32(seq).seal_crc();
    e.0
}

/// Validates a segment header against the volume's uuid and the expected sequence number.
pub fn segment_header_ok(buf: &[u8], uuid: &[u8; 16], seq: u32) -> bool {
    buf.len() >= SEG_HEADER_LEN
        && crc_ok(&buf[..SEG_HEADER_LEN])
        && &buf[..8] == SEG_MAGIC
        && &buf[8..24] == uuid
        && buf[24..28] == seq.to_le_bytes()
}

/// What a record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Data for `nblocks` blocks at `lba`, as units.
    Write = 1,
    /// `nblocks` blocks at `lba` read as zeros from now on (trim and write-zeroes).
    Zero = 2,
    /// The volume's size becomes `arg` bytes.
    Resize = 3,
    /// Snapshot `arg` of the head is taken; body: created u64, frozen u8, name (u16 + bytes).
    Snapshot = 4,
    /// Snapshot `arg` is deleted.
    SnapshotDelete = 5,
    /// The head returns to snapshot `arg`.
    Rollback = 6,
    /// The cleaner copied a unit: body = old segment u32, old offset u32, then the unit as
    /// stored; `arg` = the unit's first block, `nblocks` = its blocks. Every map that pointed at
    /// the old place now points here.
    Copy = 7,
    /// A clone stops reading from its base (flatten finished).
    Detach = 8,
    /// Snapshot `arg` gains a clone; body = the clone's location.
    CloneAdd = 9,
    /// Snapshot `arg` loses a clone; body = the clone's location.
    CloneRemove = 10,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RecordKind::Write),
            2 => Some(RecordKind::Zero),
            3 => Some(RecordKind::Resize),
            4 => Some(RecordKind::Snapshot),
            5 => Some(RecordKind::SnapshotDelete),
            6 => Some(RecordKind::Rollback),
            7 => Some(RecordKind::Copy),
            8 => Some(RecordKind::Detach),
            9 => Some(RecordKind::CloneAdd),
            10 => Some(RecordKind::CloneRemove),
            _ => None,
        }
    }
}

/// Record flag: more records of the same atomic group follow.
pub const FLAG_CONTINUED: u8 = 1;

/// A record header. An operation is a group of records applied all-or-nothing at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    /// `FLAG_CONTINUED` on all but the last record of a group.
    pub flags: u8,
    pub serial: u64,
    /// LBA (in blocks) for Write/Zero, new size in bytes for Resize.
    pub arg: u64,
    pub nblocks: u32,
    pub body_len: u32,
    pub body_crc: u32,
}

impl RecordHeader {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&[self.flags, 0, 0]);
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.arg.to_le_bytes());
        out.extend_from_slice(&self.nblocks.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.body_crc.to_le_bytes());
        let c = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&c.to_le_bytes());
    }

    pub fn decode(buf: &[u8]) -> Option<RecordHeader> {
        let h = buf.get(..RECORD_HEADER_LEN)?;
        if !crc_ok(h) {
            return None;
        }
        let mut d = Dec::new(h);
        if d.u32()? != RECORD_MAGIC {
            return None;
        }
        let kind = RecordKind::from_u8(d.u8()?)?;
        let flags = d.u8()?;
        d.take(2)?;
        Some(RecordHeader {
            kind,
            flags,
            serial: d.u64()?,
            arg: d.u64()?,
            nblocks: d.u32()?,
            body_len: d.u32()?,
            body_crc: d.u32()?,
        })
    }
}

/// The units a write record holds, from its offset in the segment, its first block and its
/// footer meta (one `stored` word per unit): (first block, offset of the unit's header, stored
/// word) of each. Replay and the cleaner's planning both walk records this way.
pub fn write_record_units(
    rec_off: u64,
    first_lba: u64,
    unit_blocks: u64,
    meta: &[u8],
) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
    let mut off = rec_off + RECORD_HEADER_LEN as u64;
    meta.chunks_exact(4).enumerate().map(move |(i, st)| {
        let stored = u32::from_le_bytes([st[0], st[1], st[2], st[3]]);
        let at = off;
        off += (UNIT_HEADER_LEN + (stored & !UNIT_COMPRESSED) as usize) as u64;
        (first_lba + i as u64 * unit_blocks, at, stored)
    })
}

/// Offset of the unit a copy record carries: after the record header and the old location.
pub fn copy_record_unit_offset(rec_off: u64) -> u64 {
    rec_off + (RECORD_HEADER_LEN + 8) as u64
}

/// Appends one unit (`stored u32 | crc u32 | bytes`) for blocks starting at `lba` to `out` and
/// returns its `stored` word. With `compress`, the unit is stored LZ4-compressed only when that
/// saves at least an eighth (as ZFS requires): data that barely compresses would cost LZ4 on
/// every write and read for a few percent of space.
pub fn append_unit(out: &mut Vec<u8>, lba: u64, data: &[u8], compress: bool) -> u32 {
    append_unit_crc(out, lba, data, compress).0
}

/// `append_unit`, also returning the CRC-32C of all it appended (header and bytes), which a
/// caller combines into the record's body CRC instead of reading the body again.
pub fn append_unit_crc(out: &mut Vec<u8>, lba: u64, data: &[u8], compress: bool) -> (u32, u32) {
    let start = out.len();
    out.extend_from_slice(&[0; UNIT_HEADER_LEN]);
    let stored = match compress.then(|| append_compressed(out, data)).flatten() {
        Some(n) => n as u32 | UNIT_COMPRESSED,
        None => {
            out.extend_from_slice(data);
            data.len() as u32
        }
    };
    // One pass over the bytes: the unit CRC (LBA first) and the CRC of the appended piece
    // (header first) both extend the CRC of the bytes alone.
    let bytes = &out[start + UNIT_HEADER_LEN..];
    let tail = crc32c::crc32c(bytes);
    let shift = crc_math::zeros_cached(bytes.len());
    let crc = crc_math::concat(crc32c::crc32c(&lba.to_le_bytes()), tail, shift);
    out[start..start + 4].copy_from_slice(&stored.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let head = crc32c::crc32c(&out[start..start + UNIT_HEADER_LEN]);
    (stored, crc_math::concat(head, tail, shift))
}

/// The header (`stored | crc`) of a raw unit holding `data` for blocks from `lba`, and the
/// CRC-32C of header and data together (what `append_unit_crc` returns), computed over `data`
/// in place: the encoder writes the unit as this header and the caller's bytes, uncopied.
pub fn raw_unit_header(lba: u64, data: &[u8]) -> ([u8; UNIT_HEADER_LEN], u32) {
    let tail = crc32c::crc32c(data);
    let shift = crc_math::zeros_cached(data.len());
    let crc = crc_math::concat(crc32c::crc32c(&lba.to_le_bytes()), tail, shift);
    let mut hdr = [0u8; UNIT_HEADER_LEN];
    hdr[..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
    hdr[4..].copy_from_slice(&crc.to_le_bytes());
    let head = crc32c::crc32c(&hdr);
    (hdr, crc_math::concat(head, tail, shift))
}

/// CRC-32C of concatenations from the CRCs of their pieces (as zlib's crc32_combine, with the
/// operator for the second piece's length computed once and reused): lets a writer checksum
/// each byte once although a unit and the record around it each carry a CRC.
pub mod crc_math {
    /// CRC-32C's polynomial, bit-reflected.
    const POLY: u32 = 0x82F6_3B78;

    /// `a * b` modulo the polynomial (bit-reflected: `1 << 31` is 1).
    fn mul(a: u32, mut b: u32) -> u32 {
        let mut m = 1u32 << 31;
        let mut p = 0;
        while m != 0 {
            if a & m != 0 {
                p ^= b;
            }
            b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
            m >>= 1;
        }
        p
    }

    /// The operator that appends `n` zero bytes: x^(8n) modulo the polynomial.
    pub(crate) fn zeros(mut n: usize) -> u32 {
        let mut p = 1u32 << 31;
        let mut x = 1u32 << (31 - 8);
        while n > 0 {
            if n & 1 != 0 {
                p = mul(x, p);
            }
            x = mul(x, x);
            n >>= 1;
        }
        p
    }

    thread_local! {
        /// The last two lengths asked and their operators: a record's units alternate between
        /// a unit's stored length and that plus its header.
        static LAST: std::cell::Cell<[(usize, u32); 2]> =
            const { std::cell::Cell::new([(0, 1 << 31); 2]) };
    }

    /// `zeros(n)`, remembering the last two lengths asked on this thread.
    pub fn zeros_cached(n: usize) -> u32 {
        LAST.with(|c| {
            let [a, b] = c.get();
            if a.0 == n {
                return a.1;
            }
            if b.0 == n {
                c.set([b, a]);
                return b.1;
            }
            let op = zeros(n);
            c.set([(n, op), a]);
            op
        })
    }

    /// CRC of `a ++ b` from `crc(a)`, `crc(b)` and `zeros(len(b))`.
    pub fn concat(crc_a: u32, crc_b: u32, zeros_b: u32) -> u32 {
        mul(zeros_b, crc_a) ^ crc_b
    }
}

/// Appends `data` LZ4-compressed with its size prepended, if that takes at most 7/8 of it;
/// returns the bytes appended, or `None` (and appends nothing).
fn append_compressed(out: &mut Vec<u8>, data: &[u8]) -> Option<usize> {
    let at = out.len();
    let limit = data.len() - data.len() / 8;
    out.resize(
        at + 4 + lz4_flex::block::get_maximum_output_size(data.len()),
        0,
    );
    out[at..at + 4].copy_from_slice(&(data.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(data, &mut out[at + 4..]) {
        Ok(n) if 4 + n <= limit => {
            out.truncate(at + 4 + n);
            Some(4 + n)
        }
        _ => {
            out.truncate(at);
            None
        }
    }
}

/// The CRC of a unit covers its first LBA too, so data written to the wrong place is caught.
pub fn unit_crc(lba: u64, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lba.to_le_bytes()), data)
}

/// Encodes the segment footer: every record header and the unit lengths of writes, so replay
/// of a sealed segment reads only this.
pub fn encode_trailer(footer: &mut Vec<u8>, footer_start: u64, count: u32) {
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(footer),
        &[footer_start.to_le_bytes().as_slice(), &count.to_le_bytes()].concat(),
    );
    footer.extend_from_slice(&footer_start.to_le_bytes());
    footer.extend_from_slice(&count.to_le_bytes());
    footer.extend_from_slice(&crc.to_le_bytes());
    footer.extend_from_slice(FOOTER_MAGIC);
}

/// Parses a trailer: `(footer_start, count, crc)`.
pub fn decode_trailer(buf: &[u8]) -> Option<(u64, u32, u32)> {
    if buf.len() != TRAILER_LEN || &buf[16..24] != FOOTER_MAGIC {
        return None;
    }
    let mut d = Dec::new(buf);
    Some((d.u64()?, d.u32()?, d.u32()?))
}

/// Checks a footer body against its trailer.
pub fn footer_ok(body: &[u8], start: u64, count: u32, crc: u32) -> bool {
    crc32c::crc32c_append(
        crc32c::crc32c(body),
        &[start.to_le_bytes().as_slice(), &count.to_le_bytes()].concat(),
    ) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The combined CRCs equal CRCs computed over the bytes, for compressed and stored units
    /// of several lengths appended one after another as a record body.
    #[test]
    fn unit_and_body_crcs_match_a_direct_computation() {
        let mut body = Vec::new();
        let mut body_crc = 0;
        let mut x = 0x1234_5678_9abc_def0u64;
        for (i, len) in [16384usize, 16384, 4096, 16384, 512, 1, 65536]
            .iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..*len)
                .map(|j| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i % 2 == 0 {
                        x as u8
                    } else {
                        (j % 7) as u8
                    }
                })
                .collect();
            let at = body.len();
            let lba = 1000 + i as u64;
            let (stored, piece) = append_unit_crc(&mut body, lba, &data, true);
            assert_eq!(piece, crc32c::crc32c(&body[at..]), "piece {i}");
            let crc = u32::from_le_bytes([body[at + 4], body[at + 5], body[at + 6], body[at + 7]]);
            assert_eq!(
                crc,
                unit_crc(lba, &body[at + UNIT_HEADER_LEN..]),
                "unit {i}"
            );
            assert_eq!(
                u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]),
                stored
            );
            let n = body.len() - at;
            body_crc = crc_math::concat(body_crc, piece, crc_math::zeros(n));
            assert_eq!(body_crc, crc32c::crc32c(&body), "body after unit {i}");
        }
    }
}
