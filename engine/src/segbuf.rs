//! The open segment's bytes in memory, kept as the parts they were built from.
//!
//! Unsealed data is served from memory, so the open segment stays there until it is sealed.
//! Holding it as parts lets a large record body stay the buffer the encoder produced (a 1 MiB
//! write is not copied once more into one big segment buffer); small pieces (record headers,
//! small bodies) are copied into a shared tail part so that appends stay few and large.

/// Bodies at least this large are kept as their own part.
const OWN_PART: usize = 16 << 10;
/// A tail part for small pieces grows up to this size.
const TAIL_MAX: usize = 256 << 10;

#[derive(Debug, Default)]
pub(crate) struct SegBuf {
    parts: Vec<Vec<u8>>,
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
        if b.is_empty() {
            return;
        }
        let open_tail = self.parts.len() > self.appended;
        match self.parts.last_mut() {
            Some(last) if open_tail && last.len() + b.len() <= TAIL_MAX => {
                last.extend_from_slice(b)
            }
            _ => {
                let mut p = Vec::with_capacity(b.len().max(4096));
                p.extend_from_slice(b);
                self.starts.push(self.len);
                self.parts.push(p);
            }
        }
        self.len += b.len();
    }

    /// Appends `b`, keeping a large buffer as it is.
    pub fn push(&mut self, b: Vec<u8>) {
        if b.len() < OWN_PART {
            self.extend(&b);
            return;
        }
        self.starts.push(self.len);
        self.len += b.len();
        self.parts.push(b);
    }

    /// Bytes `off .. off+len` if they lie within one part (a unit always does: a body is never
    /// split between parts).
    pub fn get(&self, off: usize, len: usize) -> Option<&[u8]> {
        let i = self.starts.partition_point(|s| *s <= off).checked_sub(1)?;
        let at = off - self.starts[i];
        self.parts[i].get(at..at.checked_add(len)?)
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
            .map(|p| p.as_slice())
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
            let end = self.starts[self.appended] + self.parts[self.appended].len();
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
                s.push(b);
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
            s.push(b);
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
}
