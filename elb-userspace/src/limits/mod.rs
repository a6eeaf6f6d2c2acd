//! Guards on what elb does under abuse or misconfiguration. [`Episode`]
//! and [`Throttle`] log a limit once per episode, not once per request.
mod episode;

pub use episode::{Episode, Throttle};
