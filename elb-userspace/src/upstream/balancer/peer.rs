//! Per-server mutable state, following nginx's `ngx_http_upstream_rr_peer_t`.
//!
//! Passive health, as nginx's round-robin module does it:
//! - A failure bumps `fails` and stamps `last_failure` and `checked`. Failures
//!   are counted within a `fail_timeout` window: when the previous failure is
//!   older than that and the server is not out, the count restarts (nginx
//!   only restarts it on a later success; the ERU contract says "max_fails
//!   failures within fail_timeout").
//! - `fails >= max_fails` (with `max_fails > 0`) takes the server out until
//!   `checked + fail_timeout`.
//! - After that the server may be picked again; that pick stamps `checked`,
//!   so it is a single trial: the server stays out for another `fail_timeout`
//!   unless the trial succeeds. A success after such a pick resets `fails` to
//!   0 (the server is fully back); a failure keeps `fails >= max_fails`, so it
//!   is out again at once. A success reported for a request picked before
//!   the last failure does not clear it (nginx's `accessed < checked`).
//! - Each failure also lowers the effective weight by `weight / max_fails`;
//!   every pick the server takes part in raises it by 1 back to `weight`, so a
//!   recovering server gets its share back gradually.
use std::time::Instant;

use crate::upstream::ServerParams;

#[derive(Debug, Clone)]
pub(super) struct PeerState {
    current_weight: i64,
    effective_weight: i64,
    fails: u32,
    /// nginx `accessed`: time of the last failure.
    last_failure: Option<Instant>,
    /// nginx `checked`: last failure, or the last pick that came more than
    /// `fail_timeout` after the previous stamp.
    checked: Option<Instant>,
}

/// A hand-built weight of 0 would never be picked fairly; treat it as 1 as
/// `parse_params` requires.
fn weight(params: &ServerParams) -> i64 {
    i64::from(params.weight.max(1))
}

fn is_tripped(fails: u32, params: &ServerParams) -> bool {
    params.max_fails > 0 && fails >= params.max_fails
}

impl PeerState {
    pub(super) fn new(params: &ServerParams) -> Self {
        Self {
            current_weight: 0,
            effective_weight: weight(params),
            fails: 0,
            last_failure: None,
            checked: None,
        }
    }

    /// Not taken out by passive health (`down` is the caller's business).
    pub(super) fn is_available(&self, params: &ServerParams, now: Instant) -> bool {
        !(is_tripped(self.fails, params)
            && self.checked.is_some_and(|checked| {
                now.saturating_duration_since(checked) <= params.fail_timeout
            }))
    }

    /// The per-pick step for each candidate: adds the effective weight to the
    /// current weight and returns (new current weight, weight added to the total).
    /// `max_weight` is the server's configured weight; a hand-built 0
    /// counts as 1.
    pub(super) fn accumulate(&mut self, max_weight: i64) -> (i64, i64) {
        let max_weight = max_weight.max(1);
        self.effective_weight = self.effective_weight.min(max_weight);
        let added = self.effective_weight;
        self.current_weight = self.current_weight.saturating_add(added);
        if self.effective_weight < max_weight {
            self.effective_weight += 1;
        }
        (self.current_weight, added)
    }

    /// The per-pick step during a slow start: `weight` as given (weights
    /// in thousandths), without the gradual recovery after failures.
    pub(super) fn accumulate_fixed(&mut self, weight: i64) -> (i64, i64) {
        self.current_weight = self.current_weight.saturating_add(weight);
        (self.current_weight, weight)
    }

    /// The chosen peer pays the round's total, and a pick long after the last
    /// stamp becomes the trial that a success can clear failures with.
    pub(super) fn take_pick(&mut self, total: i64, params: &ServerParams, now: Instant) {
        self.current_weight = self.current_weight.saturating_sub(total);
        let stale = self
            .checked
            .is_none_or(|checked| now.saturating_duration_since(checked) > params.fail_timeout);
        if stale {
            self.checked = Some(now);
        }
    }

    /// Returns true when this failure takes a working server out.
    pub(super) fn record_failure(&mut self, params: &ServerParams, now: Instant) -> bool {
        let was_tripped = is_tripped(self.fails, params);
        let window_expired = self
            .last_failure
            .is_some_and(|last| now.saturating_duration_since(last) > params.fail_timeout);
        if window_expired && !was_tripped {
            self.fails = 0;
        }
        self.fails = self.fails.saturating_add(1);
        self.last_failure = Some(now);
        self.checked = Some(now);
        if params.max_fails > 0 {
            let penalty = weight(params) / i64::from(params.max_fails);
            self.effective_weight = (self.effective_weight - penalty).max(0);
        }
        !was_tripped && is_tripped(self.fails, params)
    }

    pub(super) fn record_success(&mut self) {
        if let (Some(last_failure), Some(checked)) = (self.last_failure, self.checked)
            && last_failure < checked
        {
            self.fails = 0;
        }
    }

    pub(super) fn fails(&self) -> u32 {
        self.fails
    }
}
