//! Types and pure logic shared by the elb XDP program (`elb-ebpf`) and the
//! userspace daemon (`elb-userspace`).
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` with explicit,
//! padding-free layout so that both sides (and `bpftool`, through BTF) agree
//! on it byte for byte.
#![cfg_attr(not(any(test, feature = "user")), no_std)]

pub mod counters;
pub mod csum;
pub mod embryo;
pub mod l4;
#[cfg(any(test, feature = "user"))]
pub mod maglev;
pub mod maps;
pub mod nat;
pub mod tcp;
pub mod vip_ports;

#[cfg(feature = "user")]
mod pod;
