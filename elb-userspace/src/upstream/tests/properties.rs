//! proptest properties of parsing and balancing.
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::upstream::{Balancer, Server, ServerParams, parse_params};

fn any_parseable_params() -> impl Strategy<Value = ServerParams> {
    (
        1..=u32::MAX,
        any::<u32>(),
        prop_oneof![0..=2_147_483_647_000u64, 0..=100_000u64],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(weight, max_fails, fail_timeout_ms, backup, down, tls, h2)| ServerParams {
                weight,
                max_fails,
                fail_timeout: Duration::from_millis(fail_timeout_ms),
                backup,
                down,
                zone: None,
                max_conns: 0,
                tls,
                h2,
            },
        )
}

fn server(index: usize, params: ServerParams) -> Server {
    Server::new(format!("10.0.0.{index}:80"), params)
}

fn weighted(weight: u32) -> ServerParams {
    ServerParams {
        weight,
        ..ServerParams::default()
    }
}

/// One step of a random workload against a balancer.
#[derive(Debug, Clone)]
enum Step {
    Pick { tried: Vec<usize> },
    Fail { index: usize },
    Succeed { index: usize },
    Wait { millis: u64 },
}

fn any_step(servers: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec(0..servers + 1, 0..4).prop_map(|tried| Step::Pick { tried }),
        2 => (0..servers + 1).prop_map(|index| Step::Fail { index }),
        1 => (0..servers + 1).prop_map(|index| Step::Succeed { index }),
        1 => (0..4_000u64).prop_map(|millis| Step::Wait { millis }),
    ]
}

fn any_workload() -> impl Strategy<Value = (Vec<ServerParams>, Vec<Step>)> {
    let server_params = (
        1..=5u32,
        0..=3u32,
        0..=3u64,
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(weight, max_fails, secs, backup, down)| ServerParams {
            weight,
            max_fails,
            fail_timeout: Duration::from_secs(secs),
            backup,
            down,
            zone: None,
            max_conns: 0,
            tls: false,
            h2: false,
        });
    prop::collection::vec(server_params, 0..6).prop_flat_map(|params| {
        let count = params.len();
        (Just(params), prop::collection::vec(any_step(count), 0..80))
    })
}

proptest! {
    #[test]
    fn canonical_string_parses_back(params in any_parseable_params()) {
        prop_assert_eq!(parse_params(&params.to_nginx_string()), Ok(params));
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,40}") {
        let _ = parse_params(&text);
        let _ = crate::upstream::validate_server_address(&text);
    }

    #[test]
    fn parsing_near_miss_tokens_never_panics(
        tokens in prop::collection::vec(
            "(weight|max_fails|fail_timeout|backup|down)(=[0-9a-zA-Z+-]{0,6})?", 0..6)
    ) {
        let _ = parse_params(&tokens.join(" "));
    }

    #[test]
    fn each_full_cycle_gives_every_server_exactly_its_weight(
        weights in prop::collection::vec(1..=20u32, 1..8),
        cycles in 1..=3usize,
    ) {
        let balancer = Balancer::new(
            weights.iter().enumerate().map(|(i, &w)| server(i, weighted(w))).collect(),
        );
        let now = Instant::now();
        let total: usize = weights.iter().map(|&w| w as usize).sum();
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..total * cycles {
            let index = balancer.pick(now, &[]).expect("all servers are live");
            counts[index] += 1;
        }
        let expected: Vec<usize> = weights.iter().map(|&w| w as usize * cycles).collect();
        prop_assert_eq!(counts, expected);
    }

    #[test]
    fn pick_only_returns_eligible_servers((params, steps) in any_workload()) {
        let balancer = Balancer::new(
            params.iter().cloned().enumerate().map(|(i, p)| server(i, p)).collect(),
        );
        let mut now = Instant::now();
        for step in steps {
            match step {
                Step::Pick { tried } => {
                    let live: Vec<bool> =
                        (0..params.len()).map(|i| balancer.is_live(i, now)).collect();
                    let eligible = |backup: bool| {
                        (0..params.len())
                            .filter(|&i| params[i].backup == backup && live[i] && !tried.contains(&i))
                            .count()
                    };
                    match balancer.pick(now, &tried) {
                        Some(index) => {
                            prop_assert!(!params[index].down);
                            prop_assert!(!tried.contains(&index));
                            prop_assert!(live[index]);
                            if params[index].backup {
                                prop_assert_eq!(eligible(false), 0, "backup while a primary is left");
                            }
                        }
                        None => {
                            prop_assert_eq!(eligible(false) + eligible(true), 0);
                        }
                    }
                }
                Step::Fail { index } => balancer.report_failure(index, now),
                Step::Succeed { index } => balancer.report_success(index),
                Step::Wait { millis } => now += Duration::from_millis(millis),
            }
        }
    }
}
