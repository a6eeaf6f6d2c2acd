//! The L4 load balancer: deny-list, VIP lookup, connection tables, Maglev
//! choice of a server for new flows, full NAT and forwarding; the flows of
//! a drained server end here (a client's TCP segment is answered with a
//! RST, `reset`).
//!
//! A new flow's two entries go into the embryonic table, and move into the
//! main table once its handshake is complete (`promote`, with the rules of
//! `elb_common::embryo`): a flood of spoofed SYNs churns only the
//! embryonic table and cannot evict established flows.
use core::ptr::NonNull;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::lpm_trie::Key,
    cty::c_void,
    helpers::{bpf_ktime_get_coarse_ns, bpf_redirect, generated::bpf_loop},
    programs::XdpContext,
};
use elb_common::{
    counters::IPPROTO_TCP,
    embryo,
    l4::{
        EMBRYO_FLAGS, EMBRYO_ORPHAN_NS, FAMILY_IPV4, FAMILY_IPV6, FLOW_CLOSING, FLOW_DRAINED,
        FLOW_EMBRYONIC, FLOW_REPLY, FlowEntry, FlowKey, GEN_ACL, GEN_ROUTE, IFACE_HAS_V4,
        IFACE_HAS_V6, LAST_SEEN_GRANULARITY_NS, SERVICE_HAS_SNAT, SERVICE_SNAT_POOL, ServerEntry,
        ServiceEntry, TCP_CLOSING_NS, TCP_EMBRYONIC_NS, TCP_IDLE_NS, UDP_IDLE_NS, VipKey,
        flow_hash,
    },
    nat::{MAX_SNAT_POOL, NatCursor, NatPorts, snat_pool_start},
    tcp::is_connection_start,
};

use crate::{
    fib::{self, FibParams, Lookup},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, TCP_FIN, TCP_RST, TcpHdr},
    maps::{
        ACL_V4, ACL_V6, GENERATIONS, IFACE_ADDRS, L7_PORTS, MAGLEV, NAT_CURSORS, SCRATCH, SERVERS,
        SERVICE_VIPS, SERVICES, SNAT_POOLS, Scratch, VIP_PORTS,
    },
    nat,
    parse::{L4Packet, Portless, header_at},
    ports::nat_ports,
    reset, stats,
    tables::{Embryonic, Established, FlowTable},
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &L4Packet) -> u32 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's own scratch slot; XDP runs are not reentrant per CPU.
    let scratch = unsafe { &mut *scratch };
    if !fill_flow_key(ctx, packet, &mut scratch.key) {
        return PASS;
    }
    let key = &scratch.key;
    // One lookup of the 5-tuple serves every path below (an established
    // flow's packet, a service's other packets, a reply), made first, but
    // only to ports where it can find something: a service's or a NAT
    // port. The node's own traffic to other ports never pays for it.
    let dst_port = u16::from_be_bytes(key.dst_port);
    let to_nat_port = nat_ports().contains(dst_port);
    let looked_up = to_nat_port || vip_port(dst_port);
    let flow = if looked_up {
        Established::get(key)
    } else {
        None
    };
    if let Some(flow) = flow
        && let Some(action) = established(ctx, packet, scratch, flow)
    {
        return action;
    }
    // Built only here: the established path above does without it.
    let key = &scratch.key;
    let vip = VipKey {
        addr: key.dst,
        port: key.dst_port,
        proto: key.proto,
        family: key.family,
    };
    if let Some(service) = SERVICES.get_ptr(&vip) {
        // The deny-list is checked in `to_service`, where the flow entry
        // tells whether this source passed it since its last change.
        // SAFETY: a hash map value; copied out before use.
        let service = unsafe { *service };
        // A service port not (yet) in `VIP_PORTS` costs the lookup here.
        let flow = if looked_up {
            flow
        } else {
            Established::get(&scratch.key)
        };
        return to_service(ctx, packet, scratch, &service, flow);
    }
    let key = &scratch.key;
    if key.proto == IPPROTO_TCP
        && L7_PORTS.get_ptr(&u32::from(dst_port)).is_some()
        && denied(key.family, &key.src)
    {
        stats::global(|s| s.acl_drops += 1);
        return DROP;
    }
    // Replies come back to a NAT port; everything else is the node's own.
    if !to_nat_port {
        return PASS;
    }
    let now = now();
    if let Some(flow) = flow {
        match reply_entry::<Established>(flow, key, &mut scratch.owner_key, now) {
            Reply::Live => {
                stats::global(|s| s.flow_hits += 1);
                return follow(ctx, packet, flow, &mut scratch.fib, now);
            }
            Reply::Drained => return DROP,
            Reply::None => {}
        }
    }
    // A flow still in its handshake: the server's answer (usually its
    // SYN-ACK) is what makes the flow promotable.
    if let Some(flow) = Embryonic::get(&scratch.key) {
        match reply_entry::<Embryonic>(flow, &scratch.key, &mut scratch.owner_key, now) {
            Reply::Live => {
                answered(ctx, packet, flow);
                stats::global(|s| s.flow_hits += 1);
                return follow(ctx, packet, flow, &mut scratch.fib, now);
            }
            Reply::Drained => return DROP,
            Reply::None => {}
        }
    }
    PASS
}

/// What a packet to a NAT port finds in one table.
enum Reply {
    /// A reply entry of a flow that is not over: translate and forward.
    Live,
    /// A reply entry of a drained flow: dropped (and counted).
    Drained,
    /// No usable reply entry here.
    None,
}

#[inline(always)]
fn reply_entry<T: FlowTable>(
    flow: *mut FlowEntry,
    key: &FlowKey,
    owner_key: &mut FlowKey,
    now: u64,
) -> Reply {
    // SAFETY: the entry stays valid for this run (RCU); fields are plain
    // integers, so a concurrent writer cannot make them invalid.
    let flags = unsafe { (*flow).flags };
    if flags & FLOW_REPLY == 0 {
        return Reply::None;
    }
    // The server's late packets of a drained flow: the client was (or will
    // be, on its next segment) reset by XDP. Not passed up either, not
    // counted as the server's.
    if flags & FLOW_DRAINED != 0 {
        stats::global(|s| s.drained_drops += 1);
        return Reply::Drained;
    }
    // An expired reply entry still serves while its flow's client side is
    // alive (the server was silent, the client was not).
    // SAFETY: as above.
    if unsafe { abandoned::<T>(&*flow, key, owner_key, now) } {
        return Reply::None;
    }
    Reply::Live
}

/// Notes the server's answer on an embryonic flow's reply entry
/// (`embryo::on_server_packet`): its SYN-ACK's sequence number, which the
/// client must then acknowledge.
#[inline(never)]
fn answered(ctx: &XdpContext, packet: &L4Packet, flow: *mut FlowEntry) {
    let tcp = packet.ip_proto == IPPROTO_TCP;
    let seq = if tcp {
        match header_at::<TcpHdr>(ctx, packet.l4_offset) {
            // SAFETY: bounds checked by header_at.
            Some(hdr) => u32::from_be_bytes(unsafe { (*hdr).seq }),
            None => return,
        }
    } else {
        0
    };
    // SAFETY: see `reply_entry`.
    let entry = unsafe { &mut *flow };
    let (flags, isn) = embryo::on_server_packet(entry.flags, tcp, packet.tcp_flags, seq);
    if let Some(isn) = isn {
        entry.server_isn = isn.to_be_bytes();
    }
    if flags != entry.flags {
        entry.flags = flags;
    }
}

/// Packets without readable ports cannot be NAT'd: they go to the kernel
/// untouched and are counted, except from denied sources, which are
/// dropped (an extension header must not be a way around the deny-list).
#[inline(always)]
pub fn handle_portless(ctx: &XdpContext, packet: &Portless) -> u32 {
    let (family, src) = if packet.ipv6 {
        let Some(ip) = header_at::<Ipv6Hdr>(ctx, packet.l3_offset) else {
            return PASS;
        };
        // SAFETY: bounds checked by header_at.
        (FAMILY_IPV6, unsafe { (*ip).src })
    } else {
        let Some(ip) = header_at::<Ipv4Hdr>(ctx, packet.l3_offset) else {
            return PASS;
        };
        // SAFETY: bounds checked by header_at.
        (FAMILY_IPV4, widen(unsafe { (*ip).src }))
    };
    if denied(family, &src) {
        stats::global(|s| s.acl_drops += 1);
        return DROP;
    }
    stats::global(|s| s.unsupported_passes += 1);
    PASS
}

/// The common case, decided without the VIP's service entry: a packet of
/// a live flow in the main table whose service still serves this VIP
/// (`SERVICE_VIPS`, which userspace keeps in step with `SERVICES`).
/// Forwarded or, if the deny-list now refuses its source, dropped. None:
/// anything else (a reply entry, a drained, expired or closing flow, a
/// removed or moved service), which `to_service` and the reply path
/// handle as before.
#[inline(always)]
fn established(
    ctx: &XdpContext,
    packet: &L4Packet,
    scratch: &mut Scratch,
    flow: *mut FlowEntry,
) -> Option<u32> {
    // SAFETY: see `reply_entry`.
    let entry = unsafe { &*flow };
    let key = &scratch.key;
    if entry.flags & (FLOW_REPLY | FLOW_DRAINED) != 0 {
        return None;
    }
    if entry.flags & FLOW_CLOSING != 0 && is_connection_start(packet.tcp_flags) {
        return None;
    }
    let serves = SERVICE_VIPS.get(u32::from(entry.service_id))?;
    // The packet's VIP is its key's destination.
    if serves.addr != key.dst
        || serves.port != key.dst_port
        || serves.proto != key.proto
        || serves.family != key.family
    {
        return None;
    }
    let now = now();
    if expired(entry, key.proto, now) {
        return None;
    }
    if acl_denies(key, Some(flow), &mut scratch.entry.acl_gen) {
        stats::global(|s| s.acl_drops += 1);
        return Some(DROP);
    }
    stats::global(|s| s.flow_hits += 1);
    Some(follow(ctx, packet, flow, &mut scratch.fib, now))
}

/// A packet to a VIP that [`established`] did not take; `flow` is its
/// 5-tuple's main-table entry, if any.
#[inline(always)]
fn to_service(
    ctx: &XdpContext,
    packet: &L4Packet,
    scratch: &mut Scratch,
    service: &ServiceEntry,
    flow: Option<*mut FlowEntry>,
) -> u32 {
    let now = now();
    let key = &scratch.key;
    if acl_denies(key, flow, &mut scratch.entry.acl_gen) {
        stats::global(|s| s.acl_drops += 1);
        return DROP;
    }
    if let Some(flow) = flow {
        // SAFETY: see `reply_entry`.
        let flags = unsafe { (*flow).flags };
        if flags & FLOW_DRAINED != 0 {
            // Its server was drained: the flow ends here, whatever its age
            // or closing state (never reopened: the entry's server id may
            // be another server's by now). A SYN or a UDP datagram then
            // starts a new flow below, on a live server.
            forget::<Established>(scratch, flow);
            if packet.ip_proto == IPPROTO_TCP && !is_connection_start(packet.tcp_flags) {
                return reset::answer(ctx, packet, &scratch.key);
            }
        } else {
            // An expired client-side entry still serves while the server
            // side of its flow is alive (the client was silent, the server
            // was not).
            // SAFETY: see `reply_entry`.
            let expired = unsafe { expired(&*flow, key.proto, now) }
                && !server_side_alive::<Established>(scratch, flow, now);
            let syn_only = is_connection_start(packet.tcp_flags);
            if !expired && !(syn_only && flags & FLOW_CLOSING != 0) {
                stats::global(|s| s.flow_hits += 1);
                return follow(ctx, packet, flow, &mut scratch.fib, now);
            }
            // A SYN on a closing flow is a new connection from a reused
            // client port. If the flow's server is still the Maglev choice,
            // it keeps that server and its NAT port, as conntrack does; a
            // busy client cycles through its ports faster than closed flows
            // free theirs.
            if !expired && reopen::<Established>(scratch, flow, service, now) {
                stats::global(|s| s.flow_hits += 1);
                stats::new_flow(service.id);
                return follow(ctx, packet, flow, &mut scratch.fib, now);
            }
        }
    }
    // Not (or no longer) in the main table: a flow in its handshake?
    if let Some(flow) = Embryonic::get(&scratch.key) {
        // SAFETY: see `reply_entry`.
        let flags = unsafe { (*flow).flags };
        if flags & FLOW_DRAINED != 0 {
            forget::<Embryonic>(scratch, flow);
            if packet.ip_proto == IPPROTO_TCP && !is_connection_start(packet.tcp_flags) {
                return reset::answer(ctx, packet, &scratch.key);
            }
        } else {
            // The same rules as in the main table above.
            // SAFETY: see `reply_entry`.
            let expired = unsafe { expired(&*flow, scratch.key.proto, now) }
                && !server_side_alive::<Embryonic>(scratch, flow, now);
            let syn_only = is_connection_start(packet.tcp_flags);
            if !expired && !(syn_only && flags & FLOW_CLOSING != 0) {
                stats::global(|s| s.flow_hits += 1);
                // Called one after the other, not nested (see below).
                let target = match promote(ctx, packet, scratch, flow) {
                    Some(promoted) => promoted.as_ptr(),
                    None => flow,
                };
                return follow(ctx, packet, target, &mut scratch.fib, now);
            }
            if !expired && reopen::<Embryonic>(scratch, flow, service, now) {
                stats::global(|s| s.flow_hits += 1);
                stats::new_flow(service.id);
                return follow(ctx, packet, flow, &mut scratch.fib, now);
            }
        }
    }
    // No live entry (none, expired, evicted, lost with re-created maps, or
    // a drained one just removed): a new flow, whatever the packet. For a
    // mid-stream segment whose entry was lost, Maglev picks the same server
    // and, while the server's port space is lightly used, the flow's hashed
    // NAT port is the same port, so the connection usually carries on.
    stats::global(|s| s.flow_misses += 1);
    // Called one after the other, not nested, so their stack frames do not
    // add up.
    match new_flow(ctx, packet, scratch, service, now) {
        Some(flow) => {
            stats::new_flow(service.id);
            follow(ctx, packet, flow.as_ptr(), &mut scratch.fib, now)
        }
        None => DROP,
    }
}

/// Rewrites and forwards a packet of a known flow. A BPF subprogram of its
/// own (not inlined): its three call sites would otherwise each get their
/// own stack copies and overflow the 512-byte stack. `now` is the caller's
/// clock reading: one helper call per packet, not two. A new flow is
/// counted by the caller (`stats::new_flow`), which keeps this at the
/// five arguments a BPF function can take.
#[inline(never)]
fn follow(
    ctx: &XdpContext,
    packet: &L4Packet,
    flow: *mut FlowEntry,
    fib_params: &mut FibParams,
    now: u64,
) -> u32 {
    // SAFETY: see `reply_entry`.
    let entry = unsafe { &mut *flow };
    if now.wrapping_sub(entry.last_seen) > LAST_SEEN_GRANULARITY_NS {
        entry.last_seen = now;
    }
    if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 && entry.flags & FLOW_CLOSING == 0 {
        entry.flags |= FLOW_CLOSING;
    }
    stats::flow_packet(entry.service_id, entry.server_id, frame_len(ctx));
    if !nat::rewrite(ctx, packet, entry) {
        return DROP;
    }
    // The cached next hop serves until userspace reports a route,
    // neighbour or link change (a new route generation).
    let route_gen = generation(GEN_ROUTE);
    if entry.route_gen == 0 || entry.route_gen != route_gen {
        match fib::lookup(ctx, fib_params, packet.ipv6, &entry.new_src, &entry.new_dst) {
            Lookup::Found => {
                entry.ifindex = fib_params.ifindex;
                entry.src_mac = fib_params.smac;
                entry.dst_mac = fib_params.dmac;
                entry.route_gen = route_gen;
            }
            // The rewritten packet goes up; the kernel routes it and
            // resolves the neighbour, so the next packet finds it (the
            // cache stays invalid until then).
            Lookup::NoNeighbour | Lookup::Unroutable => {
                entry.route_gen = 0;
                stats::global(|s| s.fib_fallbacks += 1);
                return PASS;
            }
        }
    }
    transmit(ctx, entry.ifindex, &entry.src_mac, &entry.dst_mac)
}

/// Picks a server and claims a NAT port for a new flow; returns its entry
/// (None: dropped, and counted).
#[inline(never)]
fn new_flow(
    ctx: &XdpContext,
    packet: &L4Packet,
    scratch: &mut Scratch,
    service: &ServiceEntry,
    now: u64,
) -> Option<NonNull<FlowEntry>> {
    let key = &scratch.key;
    let hash = flow_hash(&key.src, &key.dst, key.src_port, key.dst_port, key.proto);
    let Some((server_id, server)) = maglev_choice(service, hash) else {
        stats::global(|s| s.no_server_drops += 1);
        return None;
    };
    // SAFETY: array values stay valid for this run.
    let server = unsafe { &*server };
    if server.family != key.family {
        stats::global(|s| s.no_server_drops += 1);
        return None;
    }

    // Read before the lookup: a change after it bumps past this value.
    let route_gen = generation(GEN_ROUTE);
    let egress = match fib::lookup(ctx, &mut scratch.fib, packet.ipv6, &key.dst, &server.addr) {
        Lookup::Found => {
            scratch.entry.ifindex = scratch.fib.ifindex;
            scratch.entry.src_mac = scratch.fib.smac;
            scratch.entry.dst_mac = scratch.fib.dmac;
            scratch.entry.route_gen = route_gen;
            scratch.fib.ifindex
        }
        Lookup::NoNeighbour => {
            scratch.entry.route_gen = 0;
            scratch.fib.ifindex
        }
        Lookup::Unroutable => {
            scratch.entry.route_gen = 0;
            0
        }
    };
    let Some(snat) = snat_address(service, egress, packet.ipv6) else {
        stats::global(|s| s.no_snat_drops += 1);
        return None;
    };

    // The reply direction first: it claims the NAT port.
    let entry = &mut scratch.entry;
    entry.service_id = service.id as u16;
    entry.server_id = server_id as u16;
    let hop_gen = entry.route_gen;
    embryonic_reply(entry, key, now);
    let reply_key = &mut scratch.reply_key;
    reply_key.src = server.addr;
    reply_key.dst = snat;
    reply_key.src_port = server.port;
    reply_key.proto = key.proto;
    reply_key.family = key.family;
    reply_key._pad = [0; 2];
    let Some(nat_port) = allocate_port(scratch, service, hash, now) else {
        stats::port_alloc_failure(server_id);
        return None;
    };

    let (key, entry) = (&scratch.key, &mut scratch.entry);
    // The SNAT address the port was found on (a pool's may differ).
    entry.new_src = scratch.reply_key.dst;
    entry.new_dst = server.addr;
    entry.new_src_port = nat_port;
    entry.new_dst_port = server.port;
    entry.flags = FLOW_EMBRYONIC;
    entry.route_gen = hop_gen;
    if !Embryonic::put(key, entry) {
        return None;
    }
    // The packet is forwarded with the copy in `scratch`, not the table's
    // entry: a lookup would mark the new entry referenced in the LRU, and
    // a table of entries all marked so makes every later insert's
    // eviction walk far longer. What `follow` writes then stays on the
    // copy: nothing, but for a first packet with a FIN or RST, whose entry
    // idles out on the embryonic timeout instead of the closing one.
    // NonNull, so the Option is one register: a BPF function returns r0
    // only.
    NonNull::new(entry as *mut FlowEntry)
}

/// Moves an embryonic flow (client-side entry `flow`, at `scratch.key`)
/// into the main table if this client packet completes its handshake
/// (`embryo::promotes`); returns its main-table entry. None: it stays
/// embryonic (no answer from the server yet, a retransmitted SYN, a wrong
/// acknowledgment, or the main table refused).
#[inline(never)]
fn promote(
    ctx: &XdpContext,
    packet: &L4Packet,
    scratch: &mut Scratch,
    flow: *mut FlowEntry,
) -> Option<NonNull<FlowEntry>> {
    let key = &scratch.key;
    // SAFETY: see `reply_entry`.
    let entry = unsafe { &*flow };
    let reply_key = &mut scratch.reply_key;
    fill_reply_key(reply_key, entry, key);
    let Some(reply) = Embryonic::get(reply_key) else {
        restore_reply(scratch, flow);
        return None;
    };
    // SAFETY: see `reply_entry`.
    let reply = unsafe { &*reply };
    if !maps_back(reply, key) {
        return None;
    }
    let tcp = key.proto == IPPROTO_TCP;
    let ack = if tcp {
        let hdr = header_at::<TcpHdr>(ctx, packet.l4_offset)?;
        // SAFETY: bounds checked by header_at.
        u32::from_be_bytes(unsafe { (*hdr).ack })
    } else {
        0
    };
    let isn = u32::from_be_bytes(reply.server_isn);
    if !embryo::promotes(reply.flags, isn, tcp, packet.tcp_flags, ack) {
        return None;
    }
    // Both entries are copied before either is deleted: a deleted LRU
    // element may be reused at once. The main table gets them first, so a
    // port the embryonic table frees is already taken there
    // (`claim_reply_tuple` claims the embryonic entry first, then checks
    // the main table).
    let copy = &mut scratch.entry;
    *copy = *reply;
    copy.flags &= !EMBRYO_FLAGS;
    copy.server_isn = [0; 4];
    if !Established::put(reply_key, copy) {
        return None;
    }
    *copy = *entry;
    copy.flags &= !EMBRYO_FLAGS;
    if !Established::put(key, copy) {
        Established::remove(reply_key);
        return None;
    }
    Embryonic::remove(reply_key);
    Embryonic::remove(key);
    stats::global(|s| s.promotions += 1);
    Established::get(key).and_then(NonNull::new)
}

/// Puts back the reply entry of an embryonic flow whose client-side entry
/// (`flow`, at `scratch.key`; its reply key in `scratch.reply_key`) is
/// still there but whose reply entry was evicted (a flood churns the
/// embryonic table entry by entry): without it the server's answers would
/// go to the kernel, which resets the connection. Its port is taken again
/// only if no other flow holds it meanwhile. The server's answer then
/// marks it as usual (without a SYN-ACK's ISN, which was lost with it).
#[inline(never)]
fn restore_reply(scratch: &mut Scratch, flow: *const FlowEntry) {
    let now = now();
    let key = &scratch.key;
    // SAFETY: see `reply_entry`.
    let reply = &mut scratch.entry;
    *reply = unsafe { *flow };
    embryonic_reply(reply, key, now);
    let (reply_key, owner_key) = (&scratch.reply_key, &mut scratch.owner_key);
    if !held::<Established>(reply_key, owner_key, &scratch.entry, now) {
        Embryonic::claim(reply_key, &scratch.entry);
    }
}

/// Makes `reply` the embryonic reply entry of the flow whose client-side
/// key is `key`: it translates back to the client, from the VIP. Its next
/// hop (towards the client) is its own, looked up at its first packet.
/// Server and service ids are the caller's.
#[inline(always)]
fn embryonic_reply(reply: &mut FlowEntry, key: &FlowKey, now: u64) {
    reply.new_src = key.dst;
    reply.new_dst = key.src;
    reply.new_src_port = key.dst_port;
    reply.new_dst_port = key.src_port;
    reply.flags = FLOW_REPLY | FLOW_EMBRYONIC;
    reply.server_isn = [0; 4];
    reply.route_gen = 0;
    reply.last_seen = now;
}

/// Whether `reply` (the entry at a flow's reply key) translates back to
/// the client of `key` (the flow's client-side key).
#[inline(always)]
fn maps_back(reply: &FlowEntry, key: &FlowKey) -> bool {
    reply.flags & FLOW_REPLY != 0
        && reply.new_dst == key.src
        && reply.new_dst_port == key.src_port
        && reply.new_src == key.dst
        && reply.new_src_port == key.dst_port
}

/// The server the service's Maglev table gives a flow with `hash`.
#[inline(always)]
fn maglev_choice(service: &ServiceEntry, hash: u32) -> Option<(u32, *const ServerEntry)> {
    let server_id = match service.table_size {
        0 => None,
        size => MAGLEV.get_value(service.id, &(hash % size)).copied(),
    };
    server_id.and_then(|id| SERVERS.get_ptr(id).map(|s| (id, s)))
}

/// Reopens a closing flow for a new connection on the same 5-tuple: true
/// if the Maglev choice is still the flow's server (same id, same address)
/// and the flow's reply entry still maps back to this client; both entries
/// then lose their closing mark. False: the caller makes a new flow.
#[inline(never)]
fn reopen<T: FlowTable>(
    scratch: &mut Scratch,
    flow: *mut FlowEntry,
    service: &ServiceEntry,
    now: u64,
) -> bool {
    let key = &scratch.key;
    // SAFETY: see `reply_entry`.
    let entry = unsafe { &mut *flow };
    let hash = flow_hash(&key.src, &key.dst, key.src_port, key.dst_port, key.proto);
    let Some((server_id, server)) = maglev_choice(service, hash) else {
        return false;
    };
    // SAFETY: array values stay valid for this run.
    let server = unsafe { &*server };
    if server_id != u32::from(entry.server_id)
        || server.addr != entry.new_dst
        || server.port != entry.new_dst_port
    {
        return false;
    }
    let reply_key = &mut scratch.reply_key;
    fill_reply_key(reply_key, entry, key);
    let Some(reply) = T::get(reply_key) else {
        return false;
    };
    // SAFETY: see `reply_entry`.
    let reply = unsafe { &mut *reply };
    if reply.flags & FLOW_REPLY == 0
        || reply.new_dst != key.src
        || reply.new_dst_port != key.src_port
    {
        return false;
    }
    reply.flags &= !FLOW_CLOSING;
    reply.last_seen = now;
    entry.flags &= !FLOW_CLOSING;
    entry.last_seen = now;
    true
}

/// Whether the server side of the flow whose client-side entry is `flow`
/// (at `scratch.key`) is alive: its reply entry maps back to this client,
/// is not drained and has not expired. A client-side entry expires on its
/// own while the client is silent and the server is not (a UDP stream to
/// the client); the flow then keeps its server and NAT port, as one timeout
/// for both directions (conntrack's) would.
#[inline(never)]
fn server_side_alive<T: FlowTable>(
    scratch: &mut Scratch,
    flow: *const FlowEntry,
    now: u64,
) -> bool {
    let key = &scratch.key;
    // SAFETY: see `reply_entry`.
    let entry = unsafe { &*flow };
    let reply_key = &mut scratch.reply_key;
    fill_reply_key(reply_key, entry, key);
    let Some(reply) = T::get(reply_key) else {
        return false;
    };
    // SAFETY: see `reply_entry`.
    let reply = unsafe { &*reply };
    reply.flags & FLOW_DRAINED == 0 && maps_back(reply, key) && !expired(reply, key.proto, now)
}

/// Deletes a drained flow's entries: the reply entry (its key is the
/// forward entry's rewrite, reversed) if it still maps back to this
/// client, since an expired one may have been taken over by another flow;
/// then the forward entry, at `scratch.key`. Everything is read before
/// anything is deleted: a deleted LRU element may be reused at once.
#[inline(never)]
fn forget<T: FlowTable>(scratch: &mut Scratch, flow: *const FlowEntry) {
    let key = &scratch.key;
    // SAFETY: see `reply_entry`.
    let entry = unsafe { &*flow };
    let reply_key = &mut scratch.reply_key;
    fill_reply_key(reply_key, entry, key);
    if let Some(reply) = T::get(reply_key) {
        // SAFETY: see `reply_entry`.
        if maps_back(unsafe { &*reply }, key) {
            T::remove(reply_key);
        }
    }
    T::remove(key);
}

/// Claims a NAT port for a new flow: inserts its reply entry
/// (`scratch.entry`) at the reply tuple `scratch.reply_key` with the first
/// free port, trying the service's SNAT addresses (a pool's from the one
/// the flow's hash picks; otherwise the one in `reply_key.dst`) until one
/// has a port. The order of ports is `elb_common::nat`'s. On success
/// `reply_key` is the claimed tuple.
#[inline(never)]
fn allocate_port(
    scratch: &mut Scratch,
    service: &ServiceEntry,
    hash: u32,
    now: u64,
) -> Option<[u8; 2]> {
    let pooled = service.flags & SERVICE_SNAT_POOL != 0;
    let count = match pooled.then(|| SNAT_POOLS.get_ptr(service.id)).flatten() {
        // SAFETY: array values stay valid for this run; read once.
        Some(pool) => unsafe { (*pool).count }.clamp(1, MAX_SNAT_POOL),
        None => 1,
    };
    let mut walk = PoolWalk {
        service_id: service.id,
        pooled: u32::from(pooled),
        count,
        start: snat_pool_start(hash, count),
        server_id: u32::from(scratch.entry.server_id),
        hash,
        now,
        found: 0,
        port: [0; 2],
        _pad: [0; 2],
    };
    // bpf_loop, not an unrolled loop over the pool: the verifier checks
    // the step (and the scan and the claim inside it) once, where eight
    // inlined copies, each with its own scan, are beyond its budget.
    // SAFETY: the helper calls `pool_step` with a pointer to `walk`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            count,
            pool_step as *mut c_void,
            &mut walk as *mut PoolWalk as *mut c_void,
            0,
        )
    };
    (walk.found != 0).then_some(walk.port)
}

/// The state of one walk over a service's SNAT addresses, shared with
/// [`pool_step`].
#[repr(C)]
struct PoolWalk {
    service_id: u32,
    /// 1: the service has a pool (`elb_snat_pools`); 0: one address,
    /// already in the reply key.
    pooled: u32,
    count: u32,
    /// The pool index the flow's hash picks; the walk starts there.
    start: u32,
    server_id: u32,
    hash: u32,
    now: u64,
    found: u32,
    port: [u8; 2],
    _pad: [u8; 2],
}

/// One SNAT address of a walk (a `bpf_loop` callback): sets it in the
/// reply key and tries it ([`allocate_on`]). Returns 1 (stop) once a port
/// is claimed, or when the pool cannot be read.
extern "C" fn pool_step(step: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `PoolWalk` `allocate_port` passed to bpf_loop.
    let walk = unsafe { &mut *(ctx as *mut PoolWalk) };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, the one `allocate_port`'s caller
    // holds; it does not touch it while the helper runs.
    let scratch = unsafe { &mut *scratch };
    let turn = walk.start + step as u32;
    let index = if turn >= walk.count {
        turn - walk.count
    } else {
        turn
    };
    if walk.pooled != 0 {
        let Some(pool) = SNAT_POOLS.get_ptr(walk.service_id) else {
            return 1;
        };
        // SAFETY: array values stay valid for this run.
        let Some(addr) = (unsafe { (*pool).addrs.get(index as usize) }) else {
            return 1;
        };
        scratch.reply_key.dst = *addr;
    }
    let Some(cursor) = NAT_CURSORS.get_ptr_mut(NatCursor::slot(walk.server_id, index)) else {
        return 0;
    };
    // SAFETY: a shared array value; plain integers, so a concurrent
    // writer makes it stale, never invalid (it is only a hint).
    let cursor = unsafe { &mut *cursor };
    match allocate_on(scratch, cursor, nat_ports(), walk.hash, walk.now) {
        Some(port) => {
            walk.found = 1;
            walk.port = port;
            1
        }
        None => 0,
    }
}

/// One SNAT address's turn: the flow's hashed port (unless the cursor
/// says it is mostly taken), then the ports from the cursor on.
#[inline(always)]
fn allocate_on(
    scratch: &mut Scratch,
    cursor: &mut NatCursor,
    ports: NatPorts,
    hash: u32,
    now: u64,
) -> Option<[u8; 2]> {
    if cursor.try_hashed() {
        let port = ports.hashed(hash).to_be_bytes();
        let won = claim_reply_tuple(scratch, port, now);
        cursor.hashed_result(won);
        if won {
            return Some(port);
        }
    }
    let mut scan = Scan {
        ports,
        offset: cursor.next,
        found: 0,
        port: [0; 2],
        _pad: [0; 2],
        now,
    };
    // bpf_loop: the verifier checks the step once, where an open-coded
    // loop of NAT_SCAN_PROBES claims per pool address is beyond its
    // budget.
    // SAFETY: the helper calls `scan_step` with a pointer to `scan`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            cursor.scan_len(now),
            scan_step as *mut c_void,
            &mut scan as *mut Scan as *mut c_void,
            0,
        )
    };
    if scan.found != 0 {
        cursor.found(scan.offset);
        return Some(scan.port);
    }
    cursor.missed(ports, scan.offset, now);
    None
}

/// The state of one scan from a cursor, shared with [`scan_step`].
#[repr(C)]
struct Scan {
    ports: NatPorts,
    offset: u32,
    found: u32,
    port: [u8; 2],
    _pad: [u8; 2],
    now: u64,
}

/// One probe of a scan (a `bpf_loop` callback): claims the port at the
/// scan's offset, moving the offset on. Returns 1 (stop) once claimed.
extern "C" fn scan_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` `allocate_on` passed to bpf_loop.
    let scan = unsafe { &mut *(ctx as *mut Scan) };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, the one `allocate_on`'s caller
    // holds; it does not touch it while the helper runs.
    let scratch = unsafe { &mut *scratch };
    let port = scan.ports.at(scan.offset).to_be_bytes();
    scan.offset = scan.ports.next_offset(scan.offset);
    if claim_reply_tuple(scratch, port, scan.now) {
        scan.found = 1;
        scan.port = port;
        return 1;
    }
    0
}

/// Claims the reply tuple `scratch.reply_key` with NAT port `port` for the
/// new flow's reply entry (`scratch.entry`, embryonic): true if it was
/// free, or held by a flow that is over ([`abandoned`] in the main table,
/// [`orphaned`] in the embryonic one) and now taken over. The one place
/// that decides whether a reply tuple is taken, in either table, so two
/// flows never share one:
/// - a live flow in the main table holds it: taken (a lookup first, so a
///   taken port is cheap; a failed insert into an LRU map costs far more);
/// - the embryonic entry is inserted with `BPF_NOEXIST`, the arbiter
///   between new flows;
/// - then the main table is checked again and the claim undone if a flow
///   there holds the tuple: in that order, a flow promoted meanwhile (main
///   table first, then its embryonic entries deleted) is always seen.
#[inline(never)]
fn claim_reply_tuple(scratch: &mut Scratch, port: [u8; 2], now: u64) -> bool {
    let reply_key = &mut scratch.reply_key;
    reply_key.dst_port = port;
    let owner_key = &mut scratch.owner_key;
    let reply = &scratch.entry;
    if held::<Established>(reply_key, owner_key, reply, now) {
        return false;
    }
    let claimed = match Embryonic::get(reply_key) {
        None => Embryonic::claim(reply_key, reply),
        Some(existing) => {
            // SAFETY: see `reply_entry`.
            let existing = unsafe { &*existing };
            let free =
                same_client(existing, reply) || orphaned(existing, reply_key, owner_key, now);
            free && Embryonic::put(reply_key, reply)
        }
    };
    if !claimed {
        return false;
    }
    if held::<Established>(reply_key, owner_key, reply, now) {
        Embryonic::remove(reply_key);
        return false;
    }
    true
}

/// Whether another flow that is not over holds `reply_key` in table `T`
/// (`reply`: the reply entry of the flow asking).
#[inline(always)]
fn held<T: FlowTable>(
    reply_key: &FlowKey,
    owner_key: &mut FlowKey,
    reply: &FlowEntry,
    now: u64,
) -> bool {
    match T::get(reply_key) {
        Some(existing) => {
            // SAFETY: see `reply_entry`.
            let existing = unsafe { &*existing };
            !same_client(existing, reply) && !abandoned::<T>(existing, reply_key, owner_key, now)
        }
        None => false,
    }
}

/// Whether `existing` is the reply entry of the very flow `reply` would
/// be: the same server, translating back to the same client and VIP. A
/// flow whose client-side entry was lost (evicted under a flood) finds its
/// own reply entry at its hashed port and keeps that port, so the server's
/// connection still matches.
#[inline(always)]
fn same_client(existing: &FlowEntry, reply: &FlowEntry) -> bool {
    existing.flags & (FLOW_REPLY | FLOW_DRAINED) == FLOW_REPLY
        && existing.server_id == reply.server_id
        && existing.new_dst == reply.new_dst
        && existing.new_dst_port == reply.new_dst_port
        && existing.new_src == reply.new_src
        && existing.new_src_port == reply.new_src_port
}

/// Whether the flow of the reply entry `existing` (at `reply_key`) is
/// over, so that its replies go to the kernel and its NAT port may be taken
/// over: the entry has expired, and so has the flow's client side
/// ([`client_side_alive`]). A reply entry expires on its own while the
/// server is silent (one-way UDP, TCP after the server's FIN) and the
/// client keeps the flow alive, still sending from this port; taking the
/// port then would give the server's next packets to another client, and
/// two flows one server-side tuple. `owner_key` is room for the
/// client-side key.
#[inline(always)]
fn abandoned<T: FlowTable>(
    existing: &FlowEntry,
    reply_key: &FlowKey,
    owner_key: &mut FlowKey,
    now: u64,
) -> bool {
    expired(existing, reply_key.proto, now)
        && !client_side_alive::<T>(existing, reply_key, owner_key, now)
}

/// Whether the embryonic reply entry `existing` (at `reply_key`) no longer
/// holds its NAT port against a new flow: its server has been silent for
/// `EMBRYO_ORPHAN_NS` (250 ms) and its client side is gone or over
/// ([`client_side_alive`]). This covers [`abandoned`] (every idle timeout
/// is longer) and the flows a flood evicted the client side of, which a
/// new flow could not take over for `TCP_EMBRYONIC_NS` otherwise. The
/// reply path still serves such an entry ([`reply_entry`]): the client's
/// next packet may bring its flow back at this port ([`same_client`]).
#[inline(always)]
fn orphaned(existing: &FlowEntry, reply_key: &FlowKey, owner_key: &mut FlowKey, now: u64) -> bool {
    now.wrapping_sub(existing.last_seen) > EMBRYO_ORPHAN_NS
        && !client_side_alive::<Embryonic>(existing, reply_key, owner_key, now)
}

/// Whether the client-side entry of the reply entry `existing`'s flow is
/// there, still NATs to this port (not drained) and has not expired. Not
/// inlined: it runs only for expired or silent entries, off the hot
/// paths.
#[inline(never)]
fn client_side_alive<T: FlowTable>(
    existing: &FlowEntry,
    reply_key: &FlowKey,
    owner_key: &mut FlowKey,
    now: u64,
) -> bool {
    // The reply's rewrite, reversed, is the client-side key.
    fill_reply_key(owner_key, existing, reply_key);
    let Some(owner) = T::get(owner_key) else {
        return false;
    };
    // SAFETY: see `reply_entry`.
    let owner = unsafe { &*owner };
    owner.flags & (FLOW_REPLY | FLOW_DRAINED) == 0
        && owner.new_src == reply_key.dst
        && owner.new_src_port == reply_key.dst_port
        && owner.new_dst == reply_key.src
        && owner.new_dst_port == reply_key.src_port
        && !expired(owner, reply_key.proto, now)
}

#[inline(always)]
fn snat_address(service: &ServiceEntry, egress: u32, ipv6: bool) -> Option<[u8; 16]> {
    if service.flags & SERVICE_HAS_SNAT != 0 {
        return Some(service.snat);
    }
    let addrs = IFACE_ADDRS.get_ptr(&egress)?;
    // SAFETY: hash map value; read once.
    let addrs = unsafe { &*addrs };
    if ipv6 {
        (addrs.flags & IFACE_HAS_V6 != 0).then_some(addrs.v6)
    } else {
        (addrs.flags & IFACE_HAS_V4 != 0).then(|| widen(addrs.v4))
    }
}

#[inline(always)]
pub(crate) fn transmit(
    ctx: &XdpContext,
    ifindex: u32,
    src_mac: &[u8; 6],
    dst_mac: &[u8; 6],
) -> u32 {
    let Some(eth) = header_at::<EthHdr>(ctx, 0) else {
        return DROP;
    };
    let eth = eth as *mut EthHdr;
    // SAFETY: bounds checked by header_at.
    unsafe {
        (*eth).src = *src_mac;
        (*eth).dst = *dst_mac;
    }
    // SAFETY: ctx.ctx is this invocation's xdp_md.
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

#[inline(always)]
fn expired(flow: &FlowEntry, proto: u8, now: u64) -> bool {
    let idle = if flow.flags & FLOW_CLOSING != 0 {
        TCP_CLOSING_NS
    } else if proto == IPPROTO_TCP && flow.flags & FLOW_EMBRYONIC != 0 {
        TCP_EMBRYONIC_NS
    } else if proto == IPPROTO_TCP {
        TCP_IDLE_NS
    } else {
        UDP_IDLE_NS
    };
    now.wrapping_sub(flow.last_seen) > idle
}

/// Whether the deny-list drops a packet to a VIP from `key.src`. A flow
/// entry remembers the [`GEN_ACL`] generation its source last passed at;
/// while that is current, its packets skip the LPM lookup, and the first
/// packet after a change is checked again (a newly denied source is cut at
/// its next packet). `stamp` gets the generation a new flow's entries
/// carry: read before the lookup, so a change after it is never missed.
#[inline(always)]
fn acl_denies(key: &FlowKey, flow: Option<*mut FlowEntry>, stamp: &mut u32) -> bool {
    let acl_gen = generation(GEN_ACL);
    *stamp = acl_gen;
    if let Some(flow) = flow {
        // SAFETY: see `reply_entry`.
        let entry = unsafe { &mut *flow };
        if entry.acl_gen != 0 && entry.acl_gen == acl_gen {
            return false;
        }
        if denied(key.family, &key.src) {
            return true;
        }
        entry.acl_gen = acl_gen;
        return false;
    }
    denied(key.family, &key.src)
}

/// Whether some service listens on `port` (`VIP_PORTS`).
#[inline(always)]
fn vip_port(port: u16) -> bool {
    VIP_PORTS.get(0).is_some_and(|ports| ports.contains(port))
}

/// The current generation in `slot` of `elb_l4_gen`; 0 (never bumped)
/// matches no entry, so nothing is cached then.
#[inline(always)]
fn generation(slot: u32) -> u32 {
    GENERATIONS.get(slot).copied().unwrap_or(0)
}

#[inline(always)]
fn denied(family: u8, src: &[u8; 16]) -> bool {
    if family == FAMILY_IPV6 {
        ACL_V6.get(&Key::new(128, *src)).is_some()
    } else {
        ACL_V4
            .get(&Key::new(32, [src[0], src[1], src[2], src[3]]))
            .is_some()
    }
}

/// The key of the other direction of the flow `entry` translates (`key`
/// is the entry's own key): the entry's rewrite, reversed. For a forward
/// entry that is its reply entry's key, and the other way round.
#[inline(always)]
fn fill_reply_key(reply_key: &mut FlowKey, entry: &FlowEntry, key: &FlowKey) {
    reply_key.src = entry.new_dst;
    reply_key.dst = entry.new_src;
    reply_key.src_port = entry.new_dst_port;
    reply_key.dst_port = entry.new_src_port;
    reply_key.proto = key.proto;
    reply_key.family = key.family;
    reply_key._pad = [0; 2];
}

/// Fills `key` with the packet's 5-tuple; false if a header is cut short.
#[inline(always)]
pub(crate) fn fill_flow_key(ctx: &XdpContext, packet: &L4Packet, key: &mut FlowKey) -> bool {
    if packet.ipv6 {
        let Some(ip) = header_at::<Ipv6Hdr>(ctx, packet.l3_offset) else {
            return false;
        };
        // SAFETY: bounds checked by header_at.
        unsafe {
            put_v6(&mut key.src, &(*ip).src);
            put_v6(&mut key.dst, &(*ip).dst);
        }
        key.family = FAMILY_IPV6;
    } else {
        let Some(ip) = header_at::<Ipv4Hdr>(ctx, packet.l3_offset) else {
            return false;
        };
        // SAFETY: bounds checked by header_at.
        let (src, dst) = unsafe { ((*ip).src, (*ip).dst) };
        put_v4_addresses(key, src, dst);
        key.family = FAMILY_IPV4;
    }
    // Source and destination ports are the first 4 bytes of TCP and UDP.
    let Some(ports) = header_at::<[u8; 4]>(ctx, packet.l4_offset) else {
        return false;
    };
    // SAFETY: bounds checked by header_at.
    let ports = unsafe { *ports };
    key.src_port = [ports[0], ports[1]];
    key.dst_port = [ports[2], ports[3]];
    key.proto = packet.ip_proto;
    key._pad = [0; 2];
    true
}

/// Writes IPv4 `src` and `dst` as the key's addresses (each in the first 4
/// bytes, the rest zero) with one 4-byte store per word. Plain code gets
/// its zeroing merged by LLVM into a call of the `memset` subprogram, a
/// byte-at-a-time loop (about 60 instructions per address on every
/// packet); volatile stores are never merged.
#[inline(always)]
fn put_v4_addresses(key: &mut FlowKey, src: [u8; 4], dst: [u8; 4]) {
    const _: () = assert!(
        align_of::<FlowKey>() >= 4 && core::mem::offset_of!(FlowKey, dst) == 16,
        "FlowKey's addresses must be 4-byte words at 0 and 16"
    );
    let words = (key as *mut FlowKey).cast::<u32>();
    let (src, dst) = (u32::from_ne_bytes(src), u32::from_ne_bytes(dst));
    let values = [src, 0, 0, 0, dst, 0, 0, 0];
    for (i, value) in values.into_iter().enumerate() {
        // SAFETY: words 0..8 are `src` and `dst`, inside the key, and
        // aligned (asserted above).
        unsafe { core::ptr::write_volatile(words.add(i), value) };
    }
}

/// Copies an IPv6 address out of the packet one byte at a time, for the
/// same reason as [`put_v4_addresses`]: the plain copy becomes a call of the
/// byte-loop `memmove` subprogram.
#[inline(always)]
fn put_v6(addr: &mut [u8; 16], v6: &[u8; 16]) {
    for (byte, value) in addr.iter_mut().zip(v6) {
        // SAFETY: a valid, exclusive byte of `addr`.
        unsafe { core::ptr::write_volatile(byte, *value) };
    }
}

#[inline(always)]
fn widen(v4: [u8; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[0] = v4[0];
    addr[1] = v4[1];
    addr[2] = v4[2];
    addr[3] = v4[3];
    addr
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call. Coarse is enough for idle timeouts.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}
