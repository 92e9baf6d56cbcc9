//! Benchmarks (see README.md).
