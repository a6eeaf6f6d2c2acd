//! Discovery providers keep upstreams in step with outside sources.
pub mod leader;
