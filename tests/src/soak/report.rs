//! Turning the soak's records into figures, a verdict and a Markdown table.
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// One request of the load, as the client saw it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Start, since the start of the run.
    pub at: Duration,
    pub latency: Duration,
    pub method: &'static str,
    pub idempotent: bool,
    /// `None`: a correct answer; else why it failed.
    pub failure: Option<String>,
}

/// elb's RSS and open descriptors at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    /// The anonymous part of the RSS (heap, stacks), without the pages of
    /// the binary itself, which grow as new code paths first run.
    pub anon_kib: u64,
    pub fds: u64,
}

/// A fault as it happened (for explaining failures).
#[derive(Clone, Debug)]
pub struct FaultEvent {
    pub at: Duration,
    pub what: String,
}

/// The run's phases, from the start of the run.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    /// Load only, no faults: the baseline latency.
    pub calm_end: Duration,
    /// End of the warm-up: RSS is compared with its level from here.
    pub warm_end: Duration,
    pub faults_end: Duration,
    pub total: Duration,
}

impl Phases {
    /// Calm 15% (at least 5 s), warm-up until 25%, faults until the last
    /// 5% (at least 3 s), which is calm again so that fds settle.
    pub fn for_run(total: Duration) -> Self {
        let calm_end = (total.mul_f64(0.15))
            .max(Duration::from_secs(5))
            .min(total / 2);
        let warm_end = total.mul_f64(0.25).max(calm_end);
        let tail = total.mul_f64(0.05).max(Duration::from_secs(3));
        let faults_end = total.saturating_sub(tail).max(warm_end);
        Self {
            calm_end,
            warm_end,
            faults_end,
            total,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Admin {
    pub ok: BTreeMap<&'static str, u64>,
    /// Refused while etcd was down (a 500 that says so is correct).
    pub refused_etcd_down: u64,
    /// Failed for another reason: reason → count.
    pub failed: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default)]
pub struct L4Probes {
    pub ok: u64,
    pub failed: BTreeMap<String, u64>,
}

/// Everything the runner collected.
pub struct Records {
    pub outcomes: Vec<Outcome>,
    pub samples: Vec<Sample>,
    pub faults: Vec<FaultEvent>,
    pub admin: Admin,
    pub l4: L4Probes,
    pub phases: Phases,
    pub seed: u64,
    pub clients: String,
}

pub struct Summary {
    pub total: u64,
    pub by_method: BTreeMap<&'static str, u64>,
    /// Reason (with the fault it followed) → count.
    pub idempotent_failures: BTreeMap<String, u64>,
    pub non_idempotent_failures: BTreeMap<String, u64>,
    pub p50_calm_ms: f64,
    pub p99_calm_ms: f64,
    pub p50_faults_ms: f64,
    pub p99_faults_ms: f64,
    pub rss_baseline_kib: u64,
    pub rss_final_kib: u64,
    pub rss_max_kib: u64,
    pub rss_growth_pct: f64,
    pub anon_baseline_kib: u64,
    pub anon_final_kib: u64,
    pub fds_min: u64,
    pub fds_baseline_max: u64,
    pub fds_final: u64,
    pub fds_max: u64,
    pub fds_flat: bool,
    pub backend_kills: u64,
    pub etcd_kills: u64,
}

/// Descriptors the final level may exceed the warm baseline's maximum by
/// (connections that happen to be open at that second).
pub const FD_SLACK: u64 = 8;
/// RSS growth allowed on a run of at least 10 minutes.
pub const RSS_GROWTH_LIMIT_PCT: f64 = 5.0;

pub fn summarize(records: &Records) -> Summary {
    let phases = records.phases;
    let mut by_method = BTreeMap::new();
    let mut idempotent_failures = BTreeMap::new();
    let mut non_idempotent_failures = BTreeMap::new();
    let mut calm = Vec::new();
    let mut faulted = Vec::new();
    for outcome in &records.outcomes {
        *by_method.entry(outcome.method).or_default() += 1;
        if let Some(reason) = &outcome.failure {
            let key = format!(
                "{} {reason} ({})",
                outcome.method,
                explain(&records.faults, outcome.at, outcome.latency)
            );
            let map = if outcome.idempotent {
                &mut idempotent_failures
            } else {
                &mut non_idempotent_failures
            };
            *map.entry(key).or_default() += 1;
        }
        let ms = outcome.latency.as_secs_f64() * 1e3;
        if outcome.at < phases.calm_end {
            calm.push(ms);
        } else if outcome.at < phases.faults_end {
            faulted.push(ms);
        }
    }
    let window = phases.total.mul_f64(0.10).max(Duration::from_secs(2));
    let baseline: Vec<Sample> = records
        .samples
        .iter()
        .filter(|s| s.at >= phases.warm_end && s.at < phases.warm_end + window)
        .copied()
        .collect();
    let last: Vec<Sample> = records
        .samples
        .iter()
        .filter(|s| s.at + window >= phases.total)
        .copied()
        .collect();
    let rss_baseline_kib = median_u64(baseline.iter().map(|s| s.rss_kib));
    let rss_final_kib = median_u64(last.iter().map(|s| s.rss_kib));
    let anon_baseline_kib = median_u64(baseline.iter().map(|s| s.anon_kib));
    let anon_final_kib = median_u64(last.iter().map(|s| s.anon_kib));
    let fds_baseline_max = baseline.iter().map(|s| s.fds).max().unwrap_or(0);
    let fds_final = median_u64(last.iter().map(|s| s.fds));
    let count = |prefix: &str| {
        records
            .faults
            .iter()
            .filter(|f| f.what.starts_with(prefix))
            .count() as u64
    };
    Summary {
        total: records.outcomes.len() as u64,
        by_method,
        idempotent_failures,
        non_idempotent_failures,
        p50_calm_ms: percentile(&mut calm.clone(), 0.50),
        p99_calm_ms: percentile(&mut calm, 0.99),
        p50_faults_ms: percentile(&mut faulted.clone(), 0.50),
        p99_faults_ms: percentile(&mut faulted, 0.99),
        rss_baseline_kib,
        rss_final_kib,
        rss_max_kib: records.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        rss_growth_pct: if rss_baseline_kib == 0 {
            0.0
        } else {
            (rss_final_kib as f64 / rss_baseline_kib as f64 - 1.0) * 100.0
        },
        anon_baseline_kib,
        anon_final_kib,
        fds_min: records.samples.iter().map(|s| s.fds).min().unwrap_or(0),
        fds_baseline_max,
        fds_final,
        fds_max: records.samples.iter().map(|s| s.fds).max().unwrap_or(0),
        fds_flat: fds_final <= fds_baseline_max + FD_SLACK,
        backend_kills: count("kill -9 backend"),
        etcd_kills: count("kill -9 etcd"),
    }
}

/// The most recent fault that started within 3 s before the request ended.
fn explain(faults: &[FaultEvent], at: Duration, latency: Duration) -> String {
    let end = at + latency;
    faults
        .iter()
        .rev()
        .find(|f| f.at <= end && f.at + Duration::from_secs(3) >= at)
        .map(|f| format!("after {}", f.what))
        .unwrap_or_else(|| "no fault within 3 s".to_owned())
}

/// Why the run fails, if it does.
pub fn verdict(summary: &Summary, total: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let failed: u64 = summary.idempotent_failures.values().sum();
    if failed > 0 {
        problems.push(format!("{failed} idempotent requests failed"));
    }
    if !summary.fds_flat {
        problems.push(format!(
            "elb's descriptors grew: {} at the end, at most {} after warm-up (+{FD_SLACK} allowed)",
            summary.fds_final, summary.fds_baseline_max
        ));
    }
    if total >= Duration::from_secs(600) && summary.rss_growth_pct > RSS_GROWTH_LIMIT_PCT {
        problems.push(format!(
            "elb's RSS grew {:.1}% after warm-up (limit {RSS_GROWTH_LIMIT_PCT}%)",
            summary.rss_growth_pct
        ));
    }
    problems
}

pub fn markdown(records: &Records, summary: &Summary) -> String {
    let phases = records.phases;
    let mut out = String::new();
    let secs = |d: Duration| d.as_secs_f64();
    let _ = writeln!(out, "| measure | figure | target |");
    let _ = writeln!(out, "|---|---|---|");
    let methods: Vec<String> = summary
        .by_method
        .iter()
        .map(|(m, n)| format!("{m} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "| requests | **{}** in {:.0} s ({:.0}/s; {}); {} | |",
        summary.total,
        secs(phases.total),
        summary.total as f64 / secs(phases.total).max(1e-9),
        methods.join(", "),
        records.clients
    );
    let _ = writeln!(
        out,
        "| phases | calm 0–{:.0} s, faults {:.0}–{:.0} s, calm tail to {:.0} s; RSS warm-up until {:.0} s; seed {} | |",
        secs(phases.calm_end),
        secs(phases.calm_end),
        secs(phases.faults_end),
        secs(phases.total),
        secs(phases.warm_end),
        records.seed
    );
    let admin_ok: u64 = records.admin.ok.values().sum();
    let admin_kinds: Vec<String> = records
        .admin
        .ok
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let admin_failed: u64 = records.admin.failed.values().sum();
    let _ = writeln!(
        out,
        "| faults | {} backend `kill -9` + restart, {} etcd `kill -9` + restart; admin writes: {admin_ok} applied ({}), {} refused while etcd was down, {admin_failed} failed otherwise{} | |",
        summary.backend_kills,
        summary.etcd_kills,
        admin_kinds.join(", "),
        records.admin.refused_etcd_down,
        reasons(&records.admin.failed)
    );
    let l4_failed: u64 = records.l4.failed.values().sum();
    let _ = writeln!(
        out,
        "| L4 service probes (userspace data plane, a connection through the VIP after each add) | {} ok, {l4_failed} failed{} | |",
        records.l4.ok,
        reasons(&records.l4.failed)
    );
    let idem: u64 = summary.idempotent_failures.values().sum();
    let _ = writeln!(
        out,
        "| failed idempotent requests (GET, HEAD, PUT, DELETE) | **{idem}**{} | 0 |",
        reasons(&summary.idempotent_failures)
    );
    let non: u64 = summary.non_idempotent_failures.values().sum();
    let _ = writeln!(
        out,
        "| failed non-idempotent requests (POST) | **{non}**{} | reported |",
        reasons(&summary.non_idempotent_failures)
    );
    let _ = writeln!(
        out,
        "| latency, calm phase | p50 {:.1} ms, **p99 {:.1} ms** | |",
        summary.p50_calm_ms, summary.p99_calm_ms
    );
    let _ = writeln!(
        out,
        "| latency, during faults | p50 {:.1} ms, **p99 {:.1} ms** | |",
        summary.p50_faults_ms, summary.p99_faults_ms
    );
    let _ = writeln!(
        out,
        "| elb RSS | {:.1} MiB after warm-up → {:.1} MiB at the end (**{:+.1}%**), max {:.1} MiB | ≤ +{RSS_GROWTH_LIMIT_PCT}% (10-min run) |",
        summary.rss_baseline_kib as f64 / 1024.0,
        summary.rss_final_kib as f64 / 1024.0,
        summary.rss_growth_pct,
        summary.rss_max_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| of which anonymous (heap, stacks) | {:.1} MiB → {:.1} MiB | |",
        summary.anon_baseline_kib as f64 / 1024.0,
        summary.anon_final_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| elb fds | {} at the end, at most {} after warm-up; range {}–{} over the run (**{}**) | flat (+{FD_SLACK}) |",
        summary.fds_final,
        summary.fds_baseline_max,
        summary.fds_min,
        summary.fds_max,
        if summary.fds_flat { "flat" } else { "grew" }
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| t (s) | RSS (MiB) | anonymous (MiB) | fds |");
    let _ = writeln!(out, "|---|---|---|---|");
    let step = (records.samples.len() / 12).max(1);
    for (i, sample) in records.samples.iter().enumerate() {
        if i % step == 0 || i + 1 == records.samples.len() {
            let _ = writeln!(
                out,
                "| {:.0} | {:.1} | {:.1} | {} |",
                secs(sample.at),
                sample.rss_kib as f64 / 1024.0,
                sample.anon_kib as f64 / 1024.0,
                sample.fds
            );
        }
    }
    out
}

/// The machine-readable line.
pub fn summary_json(
    records: &Records,
    summary: &Summary,
    problems: &[String],
) -> serde_json::Value {
    serde_json::json!({
        "seconds": records.phases.total.as_secs_f64(),
        "seed": records.seed,
        "requests": summary.total,
        "idempotent_failures": summary.idempotent_failures.values().sum::<u64>(),
        "idempotent_failure_reasons": summary.idempotent_failures,
        "non_idempotent_failures": summary.non_idempotent_failures.values().sum::<u64>(),
        "non_idempotent_failure_reasons": summary.non_idempotent_failures,
        "p99_calm_ms": summary.p99_calm_ms,
        "p99_faults_ms": summary.p99_faults_ms,
        "rss_baseline_kib": summary.rss_baseline_kib,
        "rss_final_kib": summary.rss_final_kib,
        "rss_growth_pct": summary.rss_growth_pct,
        "anon_baseline_kib": summary.anon_baseline_kib,
        "anon_final_kib": summary.anon_final_kib,
        "fds_baseline_max": summary.fds_baseline_max,
        "fds_final": summary.fds_final,
        "fds_flat": summary.fds_flat,
        "backend_kills": summary.backend_kills,
        "etcd_kills": summary.etcd_kills,
        "admin_applied": records.admin.ok.values().sum::<u64>(),
        "admin_refused_etcd_down": records.admin.refused_etcd_down,
        "admin_failed": records.admin.failed.values().sum::<u64>(),
        "pass": problems.is_empty(),
        "problems": problems,
    })
}

fn reasons(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let list: Vec<String> = map.iter().map(|(r, n)| format!("{n}× {r}")).collect();
    format!(": {}", list.join("; ").replace('|', "/"))
}

/// Nearest-rank percentile; 0 for an empty list.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(samples: Vec<Sample>, outcomes: Vec<Outcome>) -> Records {
        Records {
            outcomes,
            samples,
            faults: vec![FaultEvent {
                at: Duration::from_secs(50),
                what: "kill -9 backend b1".to_owned(),
            }],
            admin: Admin::default(),
            l4: L4Probes::default(),
            phases: Phases::for_run(Duration::from_secs(100)),
            seed: 1,
            clients: String::new(),
        }
    }

    fn sample(at: u64, rss_kib: u64, fds: u64) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            rss_kib,
            anon_kib: rss_kib,
            fds,
        }
    }

    #[test]
    fn phases_of_a_ten_minute_run() {
        let p = Phases::for_run(Duration::from_secs(600));
        assert_eq!(p.calm_end, Duration::from_secs(90));
        assert_eq!(p.warm_end, Duration::from_secs(150));
        assert_eq!(p.faults_end, Duration::from_secs(570));
    }

    #[test]
    fn growth_and_flatness_compare_the_end_with_after_warm_up() {
        let samples: Vec<Sample> = (0..100).map(|t| sample(t, 1000 + t, 20 + t / 10)).collect();
        let summary = summarize(&records(samples, Vec::new()));
        assert_eq!(summary.rss_baseline_kib, 1030);
        assert_eq!(summary.rss_final_kib, 1095);
        assert!((summary.rss_growth_pct - 6.31).abs() < 0.01);
        assert!(summary.fds_flat, "29 ≤ 23 + {FD_SLACK}");
        let samples: Vec<Sample> = (0..100).map(|t| sample(t, 1000, 20 + t / 5)).collect();
        let summary = summarize(&records(samples, Vec::new()));
        assert!(!summary.fds_flat);
        assert_eq!(verdict(&summary, Duration::from_secs(100)).len(), 1);
    }

    #[test]
    fn failures_are_split_by_idempotence_and_name_the_fault() {
        let outcome = |method, idempotent, failure: Option<&str>| Outcome {
            at: Duration::from_millis(50_500),
            latency: Duration::from_millis(3),
            method,
            idempotent,
            failure: failure.map(str::to_owned),
        };
        let summary = summarize(&records(
            Vec::new(),
            vec![
                outcome("GET", true, None),
                outcome("POST", false, Some("502")),
                outcome("PUT", true, Some("502")),
            ],
        ));
        assert_eq!(summary.total, 3);
        assert_eq!(
            summary
                .non_idempotent_failures
                .keys()
                .next()
                .map(String::as_str),
            Some("POST 502 (after kill -9 backend b1)")
        );
        assert_eq!(summary.idempotent_failures.values().sum::<u64>(), 1);
        assert!(!verdict(&summary, Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut values, 0.5), 50.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }
}
