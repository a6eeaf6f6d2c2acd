//! Active health checks in the AWS target-group model: [`probe`] checks a
//! server once, [`state`] turns consecutive outcomes into the check-driven
//! target state (initial, healthy, unhealthy), and [`checker`] runs one
//! server's checks on its interval. [`monitor`] runs the checks the
//! target registry ([`crate::targets`]) asks for and feeds it the results.
pub mod checker;
pub mod monitor;
pub mod probe;
pub mod state;

pub use checker::spawn_checker;
pub use probe::{CheckOutcome, probe};
pub use state::{CheckRecord, LastCheck, TargetState, Transition};
