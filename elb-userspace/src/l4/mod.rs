//! The L4 data plane's userspace side: planning services (shared with the
//! userspace fallback) and writing them into the XDP program's maps.
pub mod ids;
pub mod ifaddrs;
pub mod maps;
pub mod plan;
pub mod sync;
