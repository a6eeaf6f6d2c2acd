//! Upstream servers: their nginx-style parameters (`weight=3 backup`, stored as
//! the value of `/$ELBNAME/upstreams/$upstream/$server`) and the balancer that
//! spreads requests over them with nginx's smooth weighted round robin and
//! passive health checks.
//!
//! Everything here is pure logic: time is passed in, nothing does I/O.

pub mod balancer;
pub mod params;

pub use balancer::{Balancer, Server};
pub use params::{ParamsError, ServerParams, parse_params, validate_server_address};

#[cfg(test)]
mod tests;
