//! Steady-state overhead of the audit layer per record (null sink).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};

fn bench(_c: &mut Criterion) {}

criterion_group!(benches, bench);
criterion_main!(benches);
