//! A small deterministic PRNG (xorshift64*), so that a failure replays from its seed.

/// xorshift64*: fast enough not to show in a profile, good enough for test data and operation
/// choices. The same seed gives the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill_random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    /// Fills `buf` with either random bytes or a compressible pattern (never all zeros), as
    /// guests write both.
    pub fn fill(&mut self, buf: &mut [u8]) {
        if self.below(2) == 0 {
            self.fill_random(buf);
        } else {
            let b = self.next() as u8 | 1;
            for (i, x) in buf.iter_mut().enumerate() {
                *x = b.wrapping_add((i / 100) as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next()).collect::<Vec<_>>());
        assert_ne!(xs, (0..8).map(|_| Rng::new(8).next()).collect::<Vec<_>>());
        assert!((0..1000).all(|_| a.below(10) < 10));
        let mut buf = [0u8; 333];
        a.fill(&mut buf);
        assert!(buf.iter().any(|&x| x != 0));
    }
}
