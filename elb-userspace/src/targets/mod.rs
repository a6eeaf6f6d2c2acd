//! The target-health model (AWS target groups): per server, its check
//! state, drain, slow start and zone ([`registry`]); which servers may take
//! new requests and flows ([`routing`], pure); and the per-server
//! [`gate::ServerGate`] that the L7 balancer and the L4 planner read.
pub mod gate;
pub mod registry;
pub mod routing;

pub use gate::ServerGate;
pub use registry::{CheckJob, LastCheck, TargetRegistry, TargetState, UpstreamConfig};
pub use routing::CheckState;
