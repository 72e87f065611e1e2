//! criterion benchmarks live in `benches/`; run `cargo bench -p corral-benches`.
