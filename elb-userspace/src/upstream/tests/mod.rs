//! Tests of the upstream module through its public API.

mod address;
mod balancing;
mod health;
mod params;
mod params_errors;
mod properties;
mod serialization;
