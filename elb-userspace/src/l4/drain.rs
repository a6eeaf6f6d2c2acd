//! The end of a server's drain in the connection table: every entry of the
//! server, both directions, is marked `FLOW_DRAINED`. XDP then ends each
//! flow on its next packet (a RST to the client's TCP segment, a new flow
//! for its SYN or UDP datagram, a drop for the server's late packets) and
//! removes both entries; the LRU takes the ones never seen again.
//!
//! Marking rather than deleting: a flow whose entries are merely gone
//! (evicted, maps re-created) is re-created by XDP on its next packet, and
//! must be; only a mark tells a drained flow from a lost one.
use std::borrow::BorrowMut;

use aya::maps::{HashMap, IterableMap, MapData};
use elb_common::{
    l4::{FLOW_DRAINED, FLOW_REPLY, FlowEntry, FlowKey},
    maps,
};

use super::maps::{L4MapError, map_err, not_found};

/// `BPF_EXIST` (uapi `linux/bpf.h`): update an element only if it exists,
/// so a mark never resurrects an entry XDP or the LRU removed meanwhile.
const BPF_EXIST: u64 = 2;

/// Marks every entry of server `server_id` in `flows` (the connection
/// table, `elb_flows`) drained; returns how many it marked (entries already
/// marked are not counted again).
///
/// `server_id` must still be the drained server's, not yet given to another
/// server, or that server's flows are marked too.
///
/// The entries are collected first, then each is read again and written
/// back with the mark (`BPF_EXIST`), unless it vanished or is no longer the
/// same flow (its key reused by a new one) in between. What XDP wrote to an
/// entry between that read and the write (`last_seen`, a closing mark) is
/// lost; nothing that matters to a flow about to end.
pub fn drain_flows<T: BorrowMut<MapData>>(
    flows: &mut HashMap<T, FlowKey, FlowEntry>,
    server_id: u32,
) -> Result<usize, L4MapError> {
    drain_table(flows, maps::FLOWS, server_id)
}

/// [`drain_flows`] on either connection table (`name`, for errors).
pub fn drain_table<T: BorrowMut<MapData>>(
    flows: &mut HashMap<T, FlowKey, FlowEntry>,
    name: &'static str,
    server_id: u32,
) -> Result<usize, L4MapError> {
    let err = map_err(name);
    // The kernel restarts the walk from the first key when the current one
    // vanished (LRU eviction), so a table that keeps churning could keep it
    // going forever: it stops after twice the capacity.
    let capacity = flows.map().info().map_err(&err)?.max_entries();
    let limit = 2 * capacity as usize;
    let mut visited = 0;
    let mut found = Vec::new();
    for item in flows.iter().take(limit) {
        let (key, entry) = item.map_err(&err)?;
        visited += 1;
        if to_drain(&entry, server_id) {
            found.push((key, entry));
        }
    }
    if visited == limit {
        tracing::warn!(
            server_id,
            visited,
            "the connection table kept changing during the drain: some of the server's flows may be left unmarked"
        );
    }
    let mut marked = 0;
    for (key, seen) in found {
        let current = match flows.get(&key, 0) {
            Ok(current) => current,
            Err(error) if not_found(&error) => continue,
            Err(error) => return Err(err(error)),
        };
        let Some(drained) = mark(&seen, &current) else {
            continue;
        };
        match flows.insert(&key, &drained, BPF_EXIST) {
            Ok(()) => marked += 1,
            // Gone since the read: ended by XDP or evicted.
            Err(error) if not_found(&error) => {}
            Err(error) => return Err(err(error)),
        }
    }
    Ok(marked)
}

/// Whether a connection-table entry (either direction) belongs to server
/// `server_id`. Ids beyond the entry's 16 bits match nothing.
pub fn flow_of_server(entry: &FlowEntry, server_id: u32) -> bool {
    u32::from(entry.server_id) == server_id
}

/// Whether the drain of server `server_id` has to mark `entry`: the
/// server's, and not marked yet.
pub fn to_drain(entry: &FlowEntry, server_id: u32) -> bool {
    flow_of_server(entry, server_id) && entry.flags & FLOW_DRAINED == 0
}

/// `current` (the entry as it is now) with the drained mark, if it is still
/// the flow `seen` during the walk (same server, same direction, same
/// rewrite) and not marked yet; None otherwise.
pub fn mark(seen: &FlowEntry, current: &FlowEntry) -> Option<FlowEntry> {
    let same_flow = current.server_id == seen.server_id
        && current.flags & FLOW_REPLY == seen.flags & FLOW_REPLY
        && current.new_src == seen.new_src
        && current.new_dst == seen.new_dst
        && current.new_src_port == seen.new_src_port
        && current.new_dst_port == seen.new_dst_port;
    (same_flow && current.flags & FLOW_DRAINED == 0).then_some(FlowEntry {
        flags: current.flags | FLOW_DRAINED,
        ..*current
    })
}

#[cfg(test)]
mod tests {
    use elb_common::l4::FLOW_CLOSING;

    use super::*;

    fn entry(server_id: u16, flags: u32) -> FlowEntry {
        FlowEntry {
            new_src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            new_dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            new_src_port: 21_000u16.to_be_bytes(),
            new_dst_port: 8080u16.to_be_bytes(),
            server_id,
            flags,
            last_seen: 42,
            ..FlowEntry::default()
        }
    }

    #[test]
    fn a_flow_belongs_to_the_server_it_names_in_either_direction() {
        for flags in [0, FLOW_REPLY] {
            let entry = entry(7, flags);
            assert!(flow_of_server(&entry, 7));
            assert!(!flow_of_server(&entry, 8));
            assert!(!flow_of_server(&entry, 0));
            assert!(to_drain(&entry, 7));
            assert!(!to_drain(&entry, 8));
        }
    }

    #[test]
    fn ids_beyond_16_bits_are_not_truncated_into_a_match() {
        assert!(!flow_of_server(&entry(7, 0), 0x1_0007));
        assert!(!to_drain(&entry(7, 0), 0x1_0007));
    }

    #[test]
    fn an_entry_already_marked_is_not_marked_again() {
        let drained = entry(7, FLOW_REPLY | FLOW_DRAINED);
        assert!(!to_drain(&drained, 7));
        assert_eq!(mark(&entry(7, FLOW_REPLY), &drained), None);
    }

    #[test]
    fn the_mark_keeps_the_entry_as_it_is_now_and_adds_only_the_flag() {
        let seen = entry(7, FLOW_REPLY);
        // XDP saw a FIN and a later packet since the walk.
        let current = FlowEntry {
            flags: FLOW_REPLY | FLOW_CLOSING,
            last_seen: 99,
            ..seen
        };
        let marked = mark(&seen, &current).expect("the same flow");
        assert_eq!(
            marked,
            FlowEntry {
                flags: FLOW_REPLY | FLOW_CLOSING | FLOW_DRAINED,
                ..current
            }
        );
    }

    #[test]
    fn a_key_reused_by_another_flow_since_the_walk_is_left_alone() {
        let seen = entry(7, 0);
        let others = [
            FlowEntry {
                server_id: 8,
                ..seen
            },
            FlowEntry {
                flags: FLOW_REPLY,
                ..seen
            },
            FlowEntry {
                new_dst: [10, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..seen
            },
            FlowEntry {
                new_src_port: 21_001u16.to_be_bytes(),
                ..seen
            },
            FlowEntry {
                new_dst_port: 8081u16.to_be_bytes(),
                ..seen
            },
            FlowEntry {
                new_src: [10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..seen
            },
        ];
        for other in others {
            assert_eq!(mark(&seen, &other), None, "{other:?}");
        }
    }
}
