//! The benchmarks' data generator: the tests' seeded RNG (`hlfs_test_support::Rng`), filled
//! with random bytes only (`fill_random`), so that LZ4 cannot flatter the numbers.

pub use hlfs_test_support::Rng;
