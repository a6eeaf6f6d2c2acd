//! Thin wrappers over Linux interfaces that no crate in the tree covers.
pub mod bpf;
pub mod rtnetlink;
