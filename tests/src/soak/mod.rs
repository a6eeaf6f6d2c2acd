//! `cargo xtask soak`: steady mixed load through a real elb while a seeded
//! fault plan kills backends and etcd and churns the configuration. The
//! pure parts live here (the plan, the request mix, the report); the runner
//! in `src/bin/soak.rs` does the I/O.
pub mod plan;
pub mod report;
