//! Compiling and swapping in a whole configuration: 10,000 domains (the
//! seed's four-rule document, each pointing at its own upstream) and
//! 10,000 upstreams of two servers. Target: under 1 s.
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use elb_userspace::{
    config::{ConfigManager, KeyLayout},
    store::Kv,
};

const DOMAINS: usize = 10_000;

/// `distinct_patterns`: every domain gets its own regexes (the worst case
/// for compile time; real configurations repeat a few patterns).
fn large_config(layout: &KeyLayout, distinct_patterns: bool) -> Kv {
    let mut kv = Kv::new();
    for i in 0..DOMAINS {
        let tag = if distinct_patterns {
            i.to_string()
        } else {
            String::new()
        };
        let doc = serde_json::json!({"init": "r1", "rules": {
            "r1": {"type": "ua", "args": {"pattern": format!("httpie{tag}(\\S+)$"), "succ": "r4", "fail": "r3"}},
            "r2": {"type": "backend", "args": {"servername": format!("up{i}")}},
            "r3": {"type": "backend", "args": {"servername": format!("up{}", (i + 1) % DOMAINS)}},
            "r4": {"type": "path", "args": {"regex": true, "pattern": format!("^\\/blog{tag}\\/(\\S+)$"),
                                            "succ": "r2", "fail": "r3", "rewrite": false}}}});
        kv.insert(
            layout.rule_key(&format!("d{i}.example.com")),
            doc.to_string(),
        );
        let up = format!("up{i}");
        let port = 1024 + (i % 60_000) as u16;
        kv.insert(
            layout.server_key(&up, &format!("10.0.{}.{}:{port}", i / 250, i % 250)),
            String::new(),
        );
        kv.insert(
            layout.server_key(&up, &format!("10.1.{}.{}:{port}", i / 250, i % 250)),
            "weight=3 max_fails=2".into(),
        );
    }
    kv
}

fn compile_and_swap(c: &mut Criterion) {
    let layout = KeyLayout::new("ELB");
    let mut group = c.benchmark_group("config");
    group.sample_size(10);
    for (label, distinct) in [("shared_patterns", false), ("distinct_patterns", true)] {
        let kv = large_config(&layout, distinct);
        group.bench_function(
            format!("compile_and_swap_10k_domains_10k_upstreams/{label}"),
            |b| {
                b.iter_batched(
                    || (ConfigManager::new(layout.clone()), kv.clone()),
                    |(mut manager, kv)| {
                        let skipped = manager.replace_all(kv);
                        assert!(skipped.is_empty());
                        assert_eq!(manager.snapshot_handle().load().domain_count(), DOMAINS);
                        black_box(manager)
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, compile_and_swap);
criterion_main!(benches);
