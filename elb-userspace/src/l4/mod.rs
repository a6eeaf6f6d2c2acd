//! The L4 data plane's userspace side: planning services, writing them into
//! the XDP program's maps, and the userspace fallback ([`fallback`]) that
//! serves the same services with the same choices when XDP cannot run.
pub mod drain;
pub mod exhaustion;
pub mod fallback;
pub mod generations;
pub mod ids;
pub mod ifaddrs;
pub mod maps;
pub mod plan;
pub mod port_range;
pub mod routes;
pub mod stats;
pub mod sync;
