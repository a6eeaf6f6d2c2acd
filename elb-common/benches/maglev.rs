//! Maglev table population: one full default-size table for a large pool.
//!
//! Run with `cargo bench -p elb-common --features user --bench maglev`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use elb_common::maglev::{DEFAULT_TABLE_SIZE, MaglevServer, build_table};

fn build_65537_slots_1000_servers(c: &mut Criterion) {
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("10.{}.{}.1:8080", i / 250, i % 250))
        .collect();
    let servers: Vec<MaglevServer<'_>> = keys
        .iter()
        .zip(0u32..)
        .map(|(key, i)| MaglevServer {
            key: key.as_bytes(),
            weight: 1 + i % 10,
        })
        .collect();
    c.bench_function("build_65537_slots_1000_servers", |b| {
        b.iter(|| build_table(black_box(&servers), black_box(DEFAULT_TABLE_SIZE)))
    });
}

criterion_group!(maglev, build_65537_slots_1000_servers);
criterion_main!(maglev);
