//! The check-driven part of a target's state: consecutive check outcomes
//! against the AWS thresholds. Pure: the caller passes the time in.
use std::{fmt, time::Duration, time::Instant};

use super::probe::CheckOutcome;
use crate::config::policy::HealthCheck;

/// The ALB target states. Checks move a target between `Initial`,
/// `Healthy` and `Unhealthy`; `Draining` and `Unused` come from
/// registration, which the caller tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetState {
    Initial,
    Healthy,
    Unhealthy,
    Draining,
    Unused,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Draining => "draining",
            Self::Unused => "unused",
        }
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const INITIAL_REASON: &str = "Initial health checking is in progress";

/// The most recent check of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCheck {
    pub passed: bool,
    pub status: Option<u16>,
    pub latency: Duration,
    pub reason: String,
    pub at: Instant,
}

/// A change of state, returned once so the caller logs it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: TargetState,
    pub to: TargetState,
    pub reason: String,
}

/// One server's check counter: its check-driven state (only ever
/// `Initial`, `Healthy` or `Unhealthy`), the current streak, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRecord {
    state: TargetState,
    passes: u32,
    failures: u32,
    since: Instant,
    reason: String,
    last: Option<LastCheck>,
}

impl CheckRecord {
    pub fn new(now: Instant) -> Self {
        Self {
            state: TargetState::Initial,
            passes: 0,
            failures: 0,
            since: now,
            reason: INITIAL_REASON.to_owned(),
            last: None,
        }
    }

    pub fn state(&self) -> TargetState {
        self.state
    }

    /// Consecutive passed checks (zero after a failure).
    pub fn consecutive_passes(&self) -> u32 {
        self.passes
    }

    /// Consecutive failed checks (zero after a pass).
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why the server is in its state, as of entering it; the latest
    /// check's own reason is in [`CheckRecord::last`].
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn last(&self) -> Option<&LastCheck> {
        self.last.as_ref()
    }

    /// Counts one check. `unhealthy_threshold` consecutive failures make
    /// an initial or healthy server unhealthy; `healthy_threshold`
    /// consecutive passes make an initial or unhealthy server healthy.
    pub fn record(
        &mut self,
        outcome: &CheckOutcome,
        check: &HealthCheck,
        now: Instant,
    ) -> Option<Transition> {
        self.last = Some(LastCheck {
            passed: outcome.passed,
            status: outcome.status,
            latency: outcome.latency,
            reason: outcome.reason.clone(),
            at: now,
        });
        let (to, reason) = if outcome.passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            let can_become_healthy =
                matches!(self.state, TargetState::Initial | TargetState::Unhealthy);
            if !can_become_healthy || self.passes < check.healthy_threshold {
                return None;
            }
            (
                TargetState::Healthy,
                format!("Passed {} consecutive health checks", self.passes),
            )
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            let can_become_unhealthy =
                matches!(self.state, TargetState::Initial | TargetState::Healthy);
            if !can_become_unhealthy || self.failures < check.unhealthy_threshold {
                return None;
            }
            (
                TargetState::Unhealthy,
                format!(
                    "Failed {} consecutive health checks: {}",
                    self.failures, outcome.reason
                ),
            )
        };
        let from = self.state;
        self.state = to;
        self.since = now;
        self.reason = reason.clone();
        Some(Transition { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy_threshold: u32, unhealthy_threshold: u32) -> HealthCheck {
        HealthCheck {
            healthy_threshold,
            unhealthy_threshold,
            ..HealthCheck::default()
        }
    }

    fn pass() -> CheckOutcome {
        CheckOutcome {
            passed: true,
            status: Some(200),
            latency: Duration::from_millis(3),
            reason: "Passed: HTTP 200 from /health".to_owned(),
        }
    }

    fn fail(reason: &str) -> CheckOutcome {
        CheckOutcome {
            passed: false,
            status: None,
            latency: Duration::from_millis(200),
            reason: reason.to_owned(),
        }
    }

    /// Feeds outcomes one second apart; returns the transitions with the
    /// index of the check that caused each.
    fn feed(
        record: &mut CheckRecord,
        check: &HealthCheck,
        start: Instant,
        outcomes: &[CheckOutcome],
    ) -> Vec<(usize, Transition)> {
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, outcome)| {
                let at = start + Duration::from_secs(i as u64 + 1);
                record.record(outcome, check, at).map(|t| (i, t))
            })
            .collect()
    }

    #[test]
    fn a_new_record_is_initial() {
        let now = Instant::now();
        let record = CheckRecord::new(now);
        assert_eq!(record.state(), TargetState::Initial);
        assert_eq!(record.reason(), "Initial health checking is in progress");
        assert_eq!(record.since(), now);
        assert_eq!(record.last(), None);
        assert_eq!(
            (record.consecutive_passes(), record.consecutive_failures()),
            (0, 0)
        );
    }

    #[test]
    fn healthy_threshold_passes_make_an_initial_server_healthy() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(3, 2);
        let transitions = feed(
            &mut record,
            &check,
            start,
            &[pass(), pass(), pass(), pass()],
        );
        assert_eq!(
            transitions,
            vec![(
                2,
                Transition {
                    from: TargetState::Initial,
                    to: TargetState::Healthy,
                    reason: "Passed 3 consecutive health checks".to_owned(),
                }
            )],
            "exactly one transition, on the third pass"
        );
        assert_eq!(record.state(), TargetState::Healthy);
        assert_eq!(record.since(), start + Duration::from_secs(3));
        assert_eq!(record.reason(), "Passed 3 consecutive health checks");
        assert_eq!(record.consecutive_passes(), 4);
    }

    #[test]
    fn unhealthy_threshold_failures_make_an_initial_server_unhealthy() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(3, 2);
        let refused = fail("Connection refused by 127.0.0.1:8080");
        let transitions = feed(&mut record, &check, start, &[refused.clone(), refused]);
        assert_eq!(
            transitions,
            vec![(
                1,
                Transition {
                    from: TargetState::Initial,
                    to: TargetState::Unhealthy,
                    reason: "Failed 2 consecutive health checks: Connection refused by \
                             127.0.0.1:8080"
                        .to_owned(),
                }
            )]
        );
        assert_eq!(record.since(), start + Duration::from_secs(2));
    }

    #[test]
    fn a_healthy_server_turns_unhealthy_with_the_failing_checks_reason() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(2, 3);
        let outcomes = [
            pass(),
            pass(),
            fail("No response from 127.0.0.1:8080 within 200ms"),
            fail("No response from 127.0.0.1:8080 within 200ms"),
            fail("HTTP 503 from /health (expected 200-399)"),
            fail("HTTP 503 from /health (expected 200-399)"),
        ];
        let transitions = feed(&mut record, &check, start, &outcomes);
        assert_eq!(transitions.len(), 2, "{transitions:?}");
        assert_eq!(transitions[0].0, 1);
        assert_eq!(transitions[1].0, 4);
        assert_eq!(
            transitions[1].1,
            Transition {
                from: TargetState::Healthy,
                to: TargetState::Unhealthy,
                reason: "Failed 3 consecutive health checks: HTTP 503 from /health \
                         (expected 200-399)"
                    .to_owned(),
            },
            "the reason is the check that crossed the threshold"
        );
        assert_eq!(record.state(), TargetState::Unhealthy);
        assert_eq!(record.since(), start + Duration::from_secs(5));
        assert_eq!(record.consecutive_failures(), 4);
    }

    #[test]
    fn an_unhealthy_server_needs_healthy_threshold_passes() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(3, 2);
        let down = fail("Connection refused by 127.0.0.1:8080");
        let outcomes = [down.clone(), down, pass(), pass(), pass()];
        let transitions = feed(&mut record, &check, start, &outcomes);
        assert_eq!(transitions.len(), 2, "{transitions:?}");
        assert_eq!(
            transitions[1],
            (
                4,
                Transition {
                    from: TargetState::Unhealthy,
                    to: TargetState::Healthy,
                    reason: "Passed 3 consecutive health checks".to_owned(),
                }
            )
        );
    }

    #[test]
    fn a_failure_resets_the_pass_streak() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(3, 5);
        let blip = fail("HTTP 500 from / (expected 200-399)");
        let outcomes = [pass(), pass(), blip, pass(), pass()];
        assert_eq!(feed(&mut record, &check, start, &outcomes), vec![]);
        assert_eq!(record.state(), TargetState::Initial);
        assert_eq!(record.consecutive_passes(), 2);
        let later = start + Duration::from_secs(10);
        assert!(record.record(&pass(), &check, later).is_some());
        assert_eq!(record.state(), TargetState::Healthy);
    }

    #[test]
    fn a_pass_resets_the_failure_streak() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(1, 2);
        let down = fail("Connection refused by 127.0.0.1:8080");
        // Healthy after one pass; then fail, pass, fail never reaches 2.
        let outcomes = [pass(), down.clone(), pass(), down.clone(), pass(), down];
        let transitions = feed(&mut record, &check, start, &outcomes);
        assert_eq!(transitions.len(), 1, "{transitions:?}");
        assert_eq!(record.state(), TargetState::Healthy);
        assert_eq!(record.consecutive_failures(), 1);
        assert_eq!(record.since(), start + Duration::from_secs(1));
    }

    #[test]
    fn more_of_the_same_keeps_the_state_and_its_reason() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(2, 2);
        let refused = fail("Connection refused by 127.0.0.1:8080");
        let timeout = fail("No response from 127.0.0.1:8080 within 5s");
        let outcomes = [refused.clone(), refused, timeout.clone(), timeout];
        let transitions = feed(&mut record, &check, start, &outcomes);
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            record.reason(),
            "Failed 2 consecutive health checks: Connection refused by 127.0.0.1:8080"
        );
        assert_eq!(record.since(), start + Duration::from_secs(2));
        let last = record.last().expect("last check");
        assert_eq!(last.reason, "No response from 127.0.0.1:8080 within 5s");
        assert_eq!(last.at, start + Duration::from_secs(4));
        assert!(!last.passed);
    }

    #[test]
    fn threshold_one_flips_on_every_change() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let check = check(1, 1);
        let down = fail("Connection refused by 127.0.0.1:8080");
        let outcomes = [pass(), down.clone(), pass(), down];
        let states: Vec<TargetState> = feed(&mut record, &check, start, &outcomes)
            .into_iter()
            .map(|(_, t)| t.to)
            .collect();
        assert_eq!(
            states,
            [
                TargetState::Healthy,
                TargetState::Unhealthy,
                TargetState::Healthy,
                TargetState::Unhealthy
            ]
        );
    }

    #[test]
    fn the_last_check_is_kept() {
        let start = Instant::now();
        let mut record = CheckRecord::new(start);
        let at = start + Duration::from_secs(7);
        record.record(&pass(), &check(3, 2), at);
        assert_eq!(
            record.last(),
            Some(&LastCheck {
                passed: true,
                status: Some(200),
                latency: Duration::from_millis(3),
                reason: "Passed: HTTP 200 from /health".to_owned(),
                at,
            })
        );
    }

    #[test]
    fn states_have_the_alb_names() {
        let names: Vec<&str> = [
            TargetState::Initial,
            TargetState::Healthy,
            TargetState::Unhealthy,
            TargetState::Draining,
            TargetState::Unused,
        ]
        .into_iter()
        .map(TargetState::as_str)
        .collect();
        assert_eq!(
            names,
            ["initial", "healthy", "unhealthy", "draining", "unused"]
        );
        assert_eq!(TargetState::Healthy.to_string(), "healthy");
    }
}
