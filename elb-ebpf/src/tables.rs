//! The two connection tables behind one interface, chosen at compile time:
//! every use is then a constant map reference, as the verifier requires of
//! map helpers, and one function body serves both tables.
use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use elb_common::l4::{FlowEntry, FlowKey};

use crate::maps::{EMBRYOS, FLOWS};

pub trait FlowTable {
    fn get(key: &FlowKey) -> Option<*mut FlowEntry>;
    /// Inserts or replaces; false if the kernel refused.
    fn put(key: &FlowKey, entry: &FlowEntry) -> bool;
    /// Inserts only if the key is absent.
    fn claim(key: &FlowKey, entry: &FlowEntry) -> bool;
    fn remove(key: &FlowKey);
}

/// `elb_flows`: flows whose handshake is complete.
pub struct Established;
/// `elb_embryos`: flows still in their handshake.
pub struct Embryonic;

impl FlowTable for Established {
    #[inline(always)]
    fn get(key: &FlowKey) -> Option<*mut FlowEntry> {
        FLOWS.get_ptr_mut(key)
    }
    #[inline(always)]
    fn put(key: &FlowKey, entry: &FlowEntry) -> bool {
        FLOWS.insert(key, entry, BPF_ANY as u64).is_ok()
    }
    #[inline(always)]
    fn claim(key: &FlowKey, entry: &FlowEntry) -> bool {
        FLOWS.insert(key, entry, BPF_NOEXIST as u64).is_ok()
    }
    #[inline(always)]
    fn remove(key: &FlowKey) {
        let _ = FLOWS.remove(key);
    }
}

impl FlowTable for Embryonic {
    #[inline(always)]
    fn get(key: &FlowKey) -> Option<*mut FlowEntry> {
        EMBRYOS.get_ptr_mut(key)
    }
    #[inline(always)]
    fn put(key: &FlowKey, entry: &FlowEntry) -> bool {
        EMBRYOS.insert(key, entry, BPF_ANY as u64).is_ok()
    }
    #[inline(always)]
    fn claim(key: &FlowKey, entry: &FlowEntry) -> bool {
        EMBRYOS.insert(key, entry, BPF_NOEXIST as u64).is_ok()
    }
    #[inline(always)]
    fn remove(key: &FlowKey) {
        let _ = EMBRYOS.remove(key);
    }
}
