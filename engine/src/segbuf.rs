//! The open segment's bytes in memory, kept as the parts they were built from.
//!
//! Unsealed data is served from memory, so the open segment stays there until it is sealed.
//! Holding it as parts lets a large record body stay the buffers it was built from (a 1 MiB
//! write's data stays the buffer the request arrived in, its unit headers one small buffer
//! beside it), so that each byte is copied once, by the vectored write into the segment file;
//! small pieces (record headers, small bodies) are copied into a shared tail part so that
//! appends stay few and large.

use std::sync::Arc;

/// Bodies at least this large are kept as their own parts.
const OWN_PART: usize = 16 << 10;
/// A tail part for small pieces grows up to this size.
const TAIL_MAX: usize = 256 << 10;

/// A range of a shared buffer (a request's data, or the unit headers built for it).
#[derive(Debug, Clone)]
pub(crate) struct Slice {
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
}

impl Slice {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// A record body as the slices it is made of, in order.
#[derive(Debug, Default)]
pub(crate) struct Body {
    slices: Vec<Slice>,
    len: usize,
}

impl Body {
    /// A body that is one buffer.
    pub fn flat(v: Vec<u8>) -> Body {
        let mut b = Body::default();
        let n = v.len();
        b.push(&Arc::new(v), 0..n);
        b
    }

    /// Appends `buf[range]`, merged with the last slice when it continues it.
    pub fn push(&mut self, buf: &Arc<Vec<u8>>, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.len += range.len();
        if let Some(last) = self.slices.last_mut() {
            if Arc::ptr_eq(&last.buf, buf) && last.end == range.start {
                last.end = range.end;
                return;
            }
        }
        self.slices.push(Slice {
            buf: buf.clone(),
            start: range.start,
            end: range.end,
        });
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The body's slices, in order.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.slices.iter().map(Slice::bytes)
    }
}

#[derive(Debug)]
enum Part {
    /// Bytes copied in (the tail of small pieces).
    Own(Vec<u8>),
    /// A slice of a body, kept as it was built.
    Shared(Slice),
}

impl Part {
    fn bytes(&self) -> &[u8] {
        match self {
            Part::Own(v) => v,
            Part::Shared(s) => s.bytes(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct SegBuf {
    parts: Vec<Part>,
    /// Segment offset of each part.
    starts: Vec<usize>,
    len: usize,
    /// Parts already handed to the backend: never changed again.
    appended: usize,
    /// Bytes of part `appended` handed to the backend too (an append a full disk cut short).
    part_off: usize,
}

impl SegBuf {
    /// Bytes in the segment so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends a copy of `b` (meant for small pieces).
    pub fn extend(&mut self, b: &[u8]) {
        self.extend_all(&[b]);
    }

    /// Appends a copy of the pieces, all into one part (a small body is never split).
    fn extend_all(&mut self, pieces: &[&[u8]]) {
        let n: usize = pieces.iter().map(|p| p.len()).sum();
        if n == 0 {
            return;
        }
        let open_tail = self.parts.len() > self.appended;
        let fits = matches!(self.parts.last(),
            Some(Part::Own(last)) if open_tail && last.len() + n <= TAIL_MAX);
        if !fits {
            self.starts.push(self.len);
            self.parts.push(Part::Own(Vec::with_capacity(n.max(4096))));
        }
        if let Some(Part::Own(last)) = self.parts.last_mut() {
            for p in pieces {
                last.extend_from_slice(p);
            }
        }
        self.len += n;
    }

    /// Appends a body: a small one is copied into the tail, a large one kept as its slices.
    pub fn push(&mut self, b: Body) {
        if b.len() < OWN_PART {
            let pieces: Vec<&[u8]> = b.slices().collect();
            self.extend_all(&pieces);
            return;
        }
        for s in b.slices {
            self.starts.push(self.len);
            self.len += s.end - s.start;
            self.parts.push(Part::Shared(s));
        }
    }

    /// Bytes `off .. off+len` if they lie within one part (a unit's header and its stored
    /// bytes each do: a slice is never split between parts).
    pub fn get(&self, off: usize, len: usize) -> Option<&[u8]> {
        let i = self.starts.partition_point(|s| *s <= off).checked_sub(1)?;
        let at = off - self.starts[i];
        self.parts[i].bytes().get(at..at.checked_add(len)?)
    }

    /// Bytes not yet handed to the backend.
    pub fn pending_bytes(&self) -> usize {
        self.len - self.appended_len()
    }

    /// Bytes handed to the backend (the object's length).
    pub fn appended_len(&self) -> usize {
        self.starts
            .get(self.appended)
            .map_or(self.len, |s| s + self.part_off)
    }

    /// The parts not yet handed to the backend, in order.
    pub fn pending(&self) -> Vec<&[u8]> {
        let mut out: Vec<&[u8]> = self.parts[self.appended..]
            .iter()
            .map(Part::bytes)
            .collect();
        if let Some(first) = out.first_mut() {
            *first = &first[self.part_off..];
        }
        out
    }

    /// Records that every part so far was handed to the backend.
    pub fn mark_appended(&mut self) {
        self.appended = self.parts.len();
        self.part_off = 0;
    }

    /// Records that the object now holds the first `total` bytes of the segment (an append
    /// that stopped part-way); the rest stays pending.
    pub fn mark_appended_to(&mut self, total: usize) {
        let total = total.min(self.len);
        while self.appended < self.parts.len() {
            let end = self.starts[self.appended] + self.parts[self.appended].bytes().len();
            if total < end {
                self.part_off = total - self.starts[self.appended];
                return;
            }
            self.appended += 1;
            self.part_off = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_serve_every_range_they_hold() {
        let mut s = SegBuf::default();
        let mut whole = Vec::new();
        let mut ranges = Vec::new();
        for i in 0..200usize {
            let n = if i % 7 == 0 {
                OWN_PART + i
            } else {
                40 + i * 13
            };
            let b: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            ranges.push((whole.len(), n));
            whole.extend_from_slice(&b);
            if i % 2 == 0 {
                s.push(Body::flat(b));
            } else {
                s.extend(&b);
            }
            if i % 50 == 49 {
                let flat: Vec<u8> = s.pending().concat();
                assert_eq!(flat.len(), s.pending_bytes());
                s.mark_appended();
                assert_eq!(s.pending_bytes(), 0);
            }
        }
        assert_eq!(s.len(), whole.len());
        for (off, n) in ranges {
            assert_eq!(s.get(off, n), Some(&whole[off..off + n]));
        }
        assert_eq!(s.get(whole.len(), 1), None);
    }

    #[test]
    fn an_append_cut_short_leaves_exactly_the_rest_pending() {
        let mut s = SegBuf::default();
        let mut whole = Vec::new();
        for i in 0..40usize {
            let b: Vec<u8> = (0..(OWN_PART / 3 + i * 997))
                .map(|j| (i + j) as u8)
                .collect();
            whole.extend_from_slice(&b);
            s.push(Body::flat(b));
        }
        let mut on_disk: Vec<u8> = Vec::new();
        // A disk that takes an odd number of bytes per append, as a filling one does.
        for cut in [1usize, 5000, 16 << 10, 3, 100_000] {
            let flat = s.pending().concat();
            assert_eq!(flat.len(), s.pending_bytes());
            assert_eq!(flat, whole[on_disk.len()..]);
            let take = cut.min(flat.len());
            on_disk.extend_from_slice(&flat[..take]);
            s.mark_appended_to(on_disk.len());
            assert_eq!(s.appended_len(), on_disk.len());
            s.extend(b"more");
            whole.extend_from_slice(b"more");
        }
        on_disk.extend(s.pending().concat());
        s.mark_appended();
        assert_eq!(on_disk, whole);
        assert_eq!(s.pending_bytes(), 0);
    }

    /// A large body kept as slices of two buffers (unit headers, the caller's data): every
    /// slice is served where it lies, the pending parts are the bytes in order, and an
    /// append cut short inside a slice leaves exactly the rest pending.
    #[test]
    fn sliced_bodies_keep_their_buffers_and_their_order() {
        let data = Arc::new(
            (0..64 << 10)
                .map(|i| (i * 7 + 3) as u8)
                .collect::<Vec<u8>>(),
        );
        let side = Arc::new((0..64).map(|i| 200 - i as u8).collect::<Vec<u8>>());
        let mut s = SegBuf::default();
        s.extend(b"record header");
        let mut body = Body::default();
        let mut whole = b"record header".to_vec();
        let mut units = Vec::new();
        for u in 0..8 {
            body.push(&side, u * 8..u * 8 + 8);
            body.push(&data, u * 8192..u * 8192 + 8192);
            units.push((whole.len(), u));
            whole.extend_from_slice(&side[u * 8..u * 8 + 8]);
            whole.extend_from_slice(&data[u * 8192..u * 8192 + 8192]);
        }
        assert_eq!(body.len(), 8 * (8 + 8192));
        s.push(body);
        assert_eq!(s.len(), whole.len());
        for (off, u) in units {
            assert_eq!(s.get(off, 8), Some(&side[u * 8..u * 8 + 8]));
            assert_eq!(s.get(off + 8, 8192), Some(&data[u * 8192..u * 8192 + 8192]));
        }
        // The data was not copied: the segment holds the caller's buffer.
        assert!(Arc::strong_count(&data) > 1);
        assert_eq!(s.pending().concat(), whole);
        s.mark_appended_to(13 + 8 + 100);
        assert_eq!(s.pending().concat(), whole[13 + 8 + 100..]);
        s.mark_appended();
        assert_eq!(s.pending_bytes(), 0);
    }
}
