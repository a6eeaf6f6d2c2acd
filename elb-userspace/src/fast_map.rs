//! The hash map for lookups on every request by names from the
//! configuration: hosts, upstream and server names.
//!
//! std's SipHash cost about 200 instructions a lookup there (callgrind,
//! four a proxied request); foldhash costs a fraction, and is still seeded
//! per process. The keys of these maps come from the configuration, never
//! from clients, so no client can fill them with colliding keys; a client's
//! Host is only looked up.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
