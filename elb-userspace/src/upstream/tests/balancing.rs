//! Smooth weighted round robin, `down`, backups and `tried`.
use std::time::Instant;

use crate::upstream::{Balancer, Server, ServerParams, parse_params};

pub(super) fn balancer(servers: &[&str]) -> Balancer {
    Balancer::new(
        servers
            .iter()
            .enumerate()
            .map(|(index, params)| {
                Server::new(format!("10.0.0.{index}:80"), parse_params(params).unwrap())
            })
            .collect(),
    )
}

fn picks(balancer: &Balancer, now: Instant, count: usize, tried: &[usize]) -> Vec<usize> {
    (0..count)
        .map(|_| balancer.pick(now, tried).expect("a server is available"))
        .collect()
}

fn counts(balancer: &Balancer, now: Instant, count: usize) -> Vec<usize> {
    let mut counts = vec![0; balancer.servers().len()];
    for index in picks(balancer, now, count, &[]) {
        counts[index] += 1;
    }
    counts
}

#[test]
fn balancer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Balancer>();
}

#[test]
fn servers_are_kept_in_order() {
    let balancer = balancer(&["weight=2", "backup"]);
    let names: Vec<&str> = balancer.servers().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["10.0.0.0:80", "10.0.0.1:80"]);
    assert!(balancer.servers()[1].params.backup);
}

#[test]
fn nginx_documented_sequence_for_weights_5_1_1() {
    // ngx_http_upstream_round_robin.c: "a a b a c a a" for weights 5, 1, 1.
    let balancer = balancer(&["weight=5", "weight=1", "weight=1"]);
    let now = Instant::now();
    let cycle = [0, 0, 1, 0, 2, 0, 0];
    assert_eq!(picks(&balancer, now, 7, &[]), cycle);
    assert_eq!(picks(&balancer, now, 7, &[]), cycle, "the cycle repeats");
}

#[test]
fn equal_weights_alternate() {
    let balancer = balancer(&["", "", ""]);
    assert_eq!(picks(&balancer, Instant::now(), 6, &[]), [0, 1, 2, 0, 1, 2]);
}

#[test]
fn weights_1_to_10_split_exactly() {
    let balancer = balancer(&["weight=1", "weight=10"]);
    assert_eq!(counts(&balancer, Instant::now(), 1_100), [100, 1_000]);
}

#[test]
fn smooth_spreads_the_light_server_out() {
    // The weight-1 server is never picked twice in a row nor starved for
    // longer than a cycle.
    let balancer = balancer(&["weight=1", "weight=10"]);
    let sequence = picks(&balancer, Instant::now(), 110, &[]);
    for cycle in sequence.chunks(11) {
        assert_eq!(cycle.iter().filter(|&&index| index == 0).count(), 1);
    }
}

#[test]
fn concurrent_picks_keep_the_exact_split() {
    let balancer = balancer(&["weight=1", "weight=10"]);
    let now = Instant::now();
    let per_thread: Vec<Vec<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| picks(&balancer, now, 275, &[])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let light = per_thread.iter().flatten().filter(|&&i| i == 0).count();
    assert_eq!(light, 100);
}

#[test]
fn down_servers_are_never_picked() {
    let balancer = balancer(&["weight=50 down", "", "down"]);
    let now = Instant::now();
    assert!(picks(&balancer, now, 100, &[]).iter().all(|&i| i == 1));
    assert!(!balancer.is_live(0, now));
    assert!(balancer.is_live(1, now));
}

#[test]
fn nothing_when_everything_is_down_or_empty() {
    let now = Instant::now();
    assert_eq!(balancer(&["down", "down backup"]).pick(now, &[]), None);
    assert_eq!(Balancer::new(Vec::new()).pick(now, &[]), None);
    assert_eq!(Balancer::new(Vec::new()).servers(), &[]);
}

#[test]
fn tried_servers_are_skipped() {
    let balancer = balancer(&["weight=5", "", ""]);
    let now = Instant::now();
    assert!(picks(&balancer, now, 50, &[0]).iter().all(|&i| i != 0));
    assert!(picks(&balancer, now, 50, &[0, 2]).iter().all(|&i| i == 1));
    assert_eq!(balancer.pick(now, &[0, 1, 2]), None);
    // Indices past the end in `tried` are harmless.
    assert!(balancer.pick(now, &[7, 99]).is_some());
}

#[test]
fn retry_sequence_visits_each_server_once() {
    let balancer = balancer(&["", "", ""]);
    let now = Instant::now();
    let mut tried = Vec::new();
    while let Some(index) = balancer.pick(now, &tried) {
        tried.push(index);
    }
    tried.sort_unstable();
    assert_eq!(tried, [0, 1, 2]);
}

#[test]
fn backups_wait_while_a_primary_is_live() {
    let balancer = balancer(&["", "weight=100 backup", "backup"]);
    let now = Instant::now();
    assert!(picks(&balancer, now, 100, &[]).iter().all(|&i| i == 0));
}

#[test]
fn backups_serve_when_all_primaries_are_tried() {
    let balancer = balancer(&["", "", "backup"]);
    let now = Instant::now();
    assert_eq!(balancer.pick(now, &[0]), Some(1));
    assert_eq!(balancer.pick(now, &[0, 1]), Some(2));
    assert_eq!(balancer.pick(now, &[0, 1, 2]), None);
}

#[test]
fn backups_serve_when_all_primaries_are_down_or_failed() {
    let balancer = balancer(&["down", "", "backup"]);
    let now = Instant::now();
    assert_eq!(balancer.pick(now, &[]), Some(1));
    balancer.report_failure(1, now);
    assert_eq!(picks(&balancer, now, 5, &[]), [2; 5]);
    assert!(balancer.is_live(2, now), "a live backup counts as live");
}

#[test]
fn backups_share_by_smooth_weighted_round_robin() {
    let balancer = balancer(&["down", "backup weight=5", "backup", "backup"]);
    assert_eq!(
        picks(&balancer, Instant::now(), 7, &[]),
        [1, 1, 2, 1, 3, 1, 1]
    );
}

#[test]
fn hand_built_zero_weight_counts_as_one() {
    let zero = ServerParams {
        weight: 0,
        ..ServerParams::default()
    };
    let balancer = Balancer::new(vec![
        Server::new("a:1", zero),
        Server::new("b:1", ServerParams::default()),
    ]);
    assert_eq!(counts(&balancer, Instant::now(), 100), [50, 50]);
}
