//! elb's userspace daemon as a library, so integration tests can drive the
//! same code the `elb` binary runs.

pub mod access_log;
pub mod admin;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod bpffs;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod discovery;
pub mod fast_map;
pub mod health;
pub mod http_util;
pub mod instance_lock;
pub mod l4;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod os_error;
pub mod proxy;
pub mod rules;
pub mod run_record;
pub mod sd_notify;
pub mod server;
pub mod statsd;
pub mod status;
pub mod store;
pub mod sync;
pub mod sys;
pub mod takeover;
pub mod targets;
pub mod tls;
pub mod upstream;

/// The XDP program built by `cargo xtask build-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ELB_EBPF_OBJECT_PATH"));
