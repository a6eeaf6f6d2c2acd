//! Passive health: max_fails within fail_timeout, trial after the timeout,
//! recovery, max_fails=0, and the effective-weight ramp.
use std::time::{Duration, Instant};

use super::balancing::balancer;

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

const JUST_OVER: Duration = Duration::from_millis(1);

#[test]
fn max_fails_failures_within_fail_timeout_take_a_server_out() {
    let balancer = balancer(&["max_fails=2", ""]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    assert!(balancer.is_live(0, t0), "one failure of two allowed");
    balancer.report_failure(0, t0 + secs(5));
    assert!(!balancer.is_live(0, t0 + secs(5)));
    for _ in 0..20 {
        assert_eq!(balancer.pick(t0 + secs(6), &[]), Some(1));
    }
    // Out for fail_timeout from the failure that tripped it, inclusive.
    assert!(!balancer.is_live(0, t0 + secs(15)));
    assert!(balancer.is_live(0, t0 + secs(15) + JUST_OVER));
}

#[test]
fn failure_exactly_fail_timeout_apart_still_counts() {
    let balancer = balancer(&["max_fails=2"]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    balancer.report_failure(0, t0 + secs(10));
    assert!(!balancer.is_live(0, t0 + secs(10)));
}

#[test]
fn failures_further_apart_than_fail_timeout_do_not_add_up() {
    let balancer = balancer(&["max_fails=2"]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    balancer.report_failure(0, t0 + secs(10) + JUST_OVER);
    assert!(balancer.is_live(0, t0 + secs(11)), "the count restarted");
    balancer.report_failure(0, t0 + secs(12));
    assert!(!balancer.is_live(0, t0 + secs(12)));
}

#[test]
fn fail_timeout_parameter_sets_the_window_and_the_penalty() {
    let balancer = balancer(&["fail_timeout=500ms"]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    assert_eq!(balancer.pick(t0 + Duration::from_millis(500), &[]), None);
    assert_eq!(balancer.pick(t0 + Duration::from_millis(501), &[]), Some(0));
}

#[test]
fn after_fail_timeout_one_trial_pick_then_success_restores() {
    let balancer = balancer(&[""]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    assert_eq!(balancer.pick(t0 + secs(5), &[]), None);
    let t1 = t0 + secs(10) + JUST_OVER;
    assert!(balancer.is_live(0, t1));
    assert_eq!(balancer.pick(t1, &[]), Some(0), "the trial request");
    // Until the trial answers, nginx sends nothing else there.
    assert_eq!(balancer.pick(t1, &[]), None);
    assert!(!balancer.is_live(0, t1 + secs(1)));
    balancer.report_success(0);
    assert!(balancer.is_live(0, t1 + secs(1)));
    assert_eq!(balancer.pick(t1 + secs(1), &[]), Some(0));
    assert_eq!(balancer.pick(t1 + secs(1), &[]), Some(0));
}

#[test]
fn success_after_the_trial_resets_the_failure_count() {
    let balancer = balancer(&["max_fails=2"]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    balancer.report_failure(0, t0 + secs(1));
    let t1 = t0 + secs(12);
    assert_eq!(balancer.pick(t1, &[]), Some(0));
    balancer.report_success(0);
    // Fully back: one new failure is again one of two.
    balancer.report_failure(0, t1 + secs(1));
    assert!(balancer.is_live(0, t1 + secs(1)));
}

#[test]
fn a_failed_trial_takes_the_server_out_again_at_once() {
    let balancer = balancer(&["max_fails=3 fail_timeout=10s"]);
    let t0 = Instant::now();
    for offset in 0..3 {
        balancer.report_failure(0, t0 + secs(offset));
    }
    let t1 = t0 + secs(13);
    assert_eq!(balancer.pick(t1, &[]), Some(0));
    balancer.report_failure(0, t1 + secs(1));
    assert!(!balancer.is_live(0, t1 + secs(1)), "no fresh count of 3");
    assert!(!balancer.is_live(0, t1 + secs(11)));
    assert!(balancer.is_live(0, t1 + secs(11) + JUST_OVER));
}

#[test]
fn an_unanswered_trial_is_retried_after_another_fail_timeout() {
    let balancer = balancer(&[""]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    let t1 = t0 + secs(11);
    assert_eq!(balancer.pick(t1, &[]), Some(0));
    assert_eq!(balancer.pick(t1 + secs(10), &[]), None);
    assert_eq!(balancer.pick(t1 + secs(10) + JUST_OVER, &[]), Some(0));
}

#[test]
fn success_of_a_request_picked_before_the_failure_does_not_clear_it() {
    // nginx clears failures only on a success picked after them
    // (`accessed < checked`): in-flight requests that started before the
    // failure and still succeed do not hide it.
    let balancer = balancer(&["max_fails=2"]);
    let t0 = Instant::now();
    assert_eq!(balancer.pick(t0, &[]), Some(0));
    balancer.report_failure(0, t0 + secs(1));
    balancer.report_success(0);
    balancer.report_failure(0, t0 + secs(2));
    assert!(!balancer.is_live(0, t0 + secs(2)));
}

#[test]
fn failures_while_out_extend_the_penalty() {
    let balancer = balancer(&[""]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    balancer.report_failure(0, t0 + secs(8)); // a request in flight before
    assert!(!balancer.is_live(0, t0 + secs(18)));
    assert!(balancer.is_live(0, t0 + secs(18) + JUST_OVER));
}

#[test]
fn max_fails_zero_never_takes_a_server_out() {
    let balancer = balancer(&["max_fails=0", ""]);
    let t0 = Instant::now();
    for _ in 0..100 {
        balancer.report_failure(0, t0);
    }
    assert!(balancer.is_live(0, t0));
    // No effective-weight penalty either: the split stays even.
    let picked_first = (0..100)
        .filter(|_| balancer.pick(t0, &[]) == Some(0))
        .count();
    assert_eq!(picked_first, 50);
}

#[test]
fn down_flag_wins_over_health() {
    let balancer = balancer(&["down max_fails=0"]);
    let now = Instant::now();
    balancer.report_success(0);
    assert!(!balancer.is_live(0, now));
    assert_eq!(balancer.pick(now, &[]), None);
}

#[test]
fn everything_failed_means_none_not_a_reset() {
    let balancer = balancer(&["", "", "backup"]);
    let t0 = Instant::now();
    for index in 0..3 {
        balancer.report_failure(index, t0);
    }
    assert_eq!(balancer.pick(t0 + secs(1), &[]), None);
}

#[test]
fn primaries_back_from_failure_displace_the_backup() {
    let balancer = balancer(&["", "backup"]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    assert_eq!(balancer.pick(t0 + secs(1), &[]), Some(1));
    assert_eq!(balancer.pick(t0 + secs(11), &[]), Some(0));
}

#[test]
fn out_of_range_indices_are_ignored() {
    let balancer = balancer(&[""]);
    let now = Instant::now();
    balancer.report_failure(5, now);
    balancer.report_success(usize::MAX);
    assert!(!balancer.is_live(1, now));
    assert!(balancer.is_live(0, now));
}

#[test]
fn earlier_now_than_the_last_failure_does_not_panic() {
    // Threads may report with slightly older clocks.
    let balancer = balancer(&["max_fails=2"]);
    let t0 = Instant::now() + secs(60);
    balancer.report_failure(0, t0);
    balancer.report_failure(0, t0 - secs(30));
    assert!(!balancer.is_live(0, t0 - secs(40)));
    assert_eq!(balancer.pick(t0 - secs(40), &[]), None);
}

#[test]
fn a_recovered_server_regains_its_share_gradually() {
    // Each failure lowers the effective weight by weight / max_fails; every
    // pick raises it by one again (nginx's effective_weight).
    let balancer = balancer(&["weight=10", "weight=10"]);
    let t0 = Instant::now();
    balancer.report_failure(0, t0);
    let t1 = t0 + secs(11);
    let mut shares = [0usize; 2];
    for _ in 0..10 {
        let index = balancer.pick(t1, &[]).unwrap();
        if index == 0 {
            balancer.report_success(0);
        }
        shares[index] += 1;
    }
    assert!(shares[0] < shares[1], "{shares:?}");
    let later = (0..2_000)
        .filter(|_| balancer.pick(t1, &[]) == Some(0))
        .count();
    assert!(later.abs_diff(1_000) <= 1, "{later}");
}
