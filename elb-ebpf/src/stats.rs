//! Per-CPU counters. Each CPU writes only its own copy, so plain adds are
//! race-free; userspace sums the copies.
use elb_common::l4::GlobalStats;

use crate::maps::{GLOBAL_STATS, NAT_FAILURES, SERVER_STATS, SERVICE_STATS};

#[inline(always)]
pub fn global(bump: impl FnOnce(&mut GlobalStats)) {
    if let Some(stats) = GLOBAL_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot.
        bump(unsafe { &mut *stats });
    }
}

#[inline(always)]
pub fn flow_packet(service_id: u16, server_id: u16, bytes: u64) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(u32::from(service_id)) {
        // SAFETY: this CPU's own slot.
        let stats = unsafe { &mut *stats };
        stats.packets = stats.packets.wrapping_add(1);
        stats.bytes = stats.bytes.wrapping_add(bytes);
    }
    if let Some(stats) = SERVER_STATS.get_ptr_mut(u32::from(server_id)) {
        // SAFETY: this CPU's own slot.
        unsafe { (*stats).add(1, bytes) };
    }
}

/// A new flow to `server_id` found no NAT port.
#[inline(always)]
pub fn port_alloc_failure(server_id: u32) {
    global(|s| s.port_alloc_failures += 1);
    if let Some(count) = NAT_FAILURES.get_ptr_mut(server_id) {
        // SAFETY: this CPU's own slot.
        unsafe { *count = (*count).wrapping_add(1) };
    }
}

/// A flow was created (or a closing one reopened) for the service; its
/// packet is counted by [`flow_packet`].
#[inline(always)]
pub fn new_flow(service_id: u32) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: this CPU's own slot.
        let stats = unsafe { &mut *stats };
        stats.new_flows = stats.new_flows.wrapping_add(1);
    }
}
