//! Names of the BPF maps the XDP program declares.
//!
//! Kernel object names are limited to 15 characters (`BPF_OBJ_NAME_LEN - 1`);
//! userspace finds maps and pins them under these names, so they live here.

/// Per-CPU array of [`crate::counters::PacketCounter`], indexed by
/// [`crate::counters::ProtoCounter`].
pub const PROTO_STATS: &str = "elb_proto_stats";

/// Every map the program declares, in the order userspace pins them.
pub const ALL: &[&str] = &[PROTO_STATS];

/// The XDP program's function name in the object file.
pub const XDP_PROGRAM: &str = "elb_xdp";

const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].len() <= 15, "BPF object names are at most 15 bytes");
        i += 1;
    }
};
