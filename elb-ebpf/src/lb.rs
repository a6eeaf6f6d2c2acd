//! The L4 load balancer: deny-list, VIP lookup, connection table, Maglev
//! choice of a server for new flows, full NAT and forwarding; the flows of
//! a drained server end here (a client's TCP segment is answered with a
//! RST, `reset`).
use core::ptr::NonNull;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::XdpContext,
};
use elb_common::{
    counters::IPPROTO_TCP,
    l4::{
        FAMILY_IPV4, FAMILY_IPV6, FLOW_CLOSING, FLOW_DRAINED, FLOW_REPLY, FlowEntry, FlowKey,
        GEN_ACL, GEN_ROUTE, IFACE_HAS_V4, IFACE_HAS_V6, LAST_SEEN_GRANULARITY_NS, NAT_PORT_MAX,
        NAT_PORT_MIN, NAT_PORT_TRIES, SERVICE_HAS_SNAT, ServerEntry, ServiceEntry, TCP_CLOSING_NS,
        TCP_IDLE_NS, UDP_IDLE_NS, VipKey, flow_hash, nat_port_candidate,
    },
    tcp::is_connection_start,
};

use crate::{
    fib::{self, FibParams, Lookup},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, TCP_FIN, TCP_RST},
    maps::{
        ACL_V4, ACL_V6, FLOWS, GENERATIONS, IFACE_ADDRS, L7_PORTS, MAGLEV, SCRATCH, SERVERS,
        SERVICES, Scratch,
    },
    nat,
    parse::{L4Packet, Portless, header_at},
    reset, stats,
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
        return to_service(ctx, packet, scratch, &service);
    }
    let dst_port = u16::from_be_bytes(key.dst_port);
    if key.proto == IPPROTO_TCP
        && L7_PORTS.get_ptr(&u32::from(dst_port)).is_some()
        && denied(key.family, &key.src)
    {
        stats::global(|s| s.acl_drops += 1);
        return DROP;
    }
    // Replies come back to a NAT port; everything else is the node's own.
    if (NAT_PORT_MIN..=NAT_PORT_MAX).contains(&dst_port)
        && let Some(flow) = FLOWS.get_ptr_mut(key)
    {
        // SAFETY: the entry stays valid for this run (RCU); fields are
        // plain integers, so a concurrent writer cannot make them invalid.
        let flags = unsafe { (*flow).flags };
        if flags & FLOW_REPLY != 0 {
            // The server's late packets of a drained flow: the client was
            // (or will be, on its next segment) reset by XDP. Not passed
            // up either, not counted as the server's.
            if flags & FLOW_DRAINED != 0 {
                stats::global(|s| s.drained_drops += 1);
                return DROP;
            }
            // An expired reply entry still serves while its flow's client
            // side is alive (the server was silent, the client was not).
            // SAFETY: as above.
            if !unsafe { abandoned(&*flow, key, &mut scratch.owner_key, now()) } {
                stats::global(|s| s.flow_hits += 1);
                return follow(ctx, packet, flow, &mut scratch.fib, false);
            }
        }
    }
    PASS
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

#[inline(always)]
fn to_service(
    ctx: &XdpContext,
    packet: &L4Packet,
    scratch: &mut Scratch,
    service: &ServiceEntry,
) -> u32 {
    let now = now();
    let key = &scratch.key;
    let flow = FLOWS.get_ptr_mut(key);
    if acl_denies(key, flow, &mut scratch.entry.acl_gen) {
        stats::global(|s| s.acl_drops += 1);
        return DROP;
    }
    if let Some(flow) = flow {
        // SAFETY: see `handle`.
        let flags = unsafe { (*flow).flags };
        if flags & FLOW_DRAINED != 0 {
            // Its server was drained: the flow ends here, whatever its age
            // or closing state (never reopened: the entry's server id may
            // be another server's by now). A SYN or a UDP datagram then
            // starts a new flow below, on a live server.
            forget(scratch, flow);
            if packet.ip_proto == IPPROTO_TCP && !is_connection_start(packet.tcp_flags) {
                return reset::answer(ctx, packet, &scratch.key);
            }
        } else {
            // An expired client-side entry still serves while the server
            // side of its flow is alive (the client was silent, the server
            // was not).
            // SAFETY: see `handle`.
            let expired = unsafe { expired(&*flow, key.proto, now) }
                && !server_side_alive(scratch, flow, now);
            let syn_only = is_connection_start(packet.tcp_flags);
            if !expired && !(syn_only && flags & FLOW_CLOSING != 0) {
                stats::global(|s| s.flow_hits += 1);
                return follow(ctx, packet, flow, &mut scratch.fib, false);
            }
            // A SYN on a closing flow is a new connection from a reused
            // client port. If the flow's server is still the Maglev choice,
            // it keeps that server and its NAT port, as conntrack does; a
            // busy client cycles through its ports faster than closed flows
            // free theirs.
            if !expired && reopen(scratch, flow, service, now) {
                stats::global(|s| s.flow_hits += 1);
                return follow(ctx, packet, flow, &mut scratch.fib, true);
            }
        }
    }
    // No live entry (none, expired, evicted, lost with re-created maps, or
    // a drained one just removed): a new flow, whatever the packet. For a
    // mid-stream segment whose entry was lost, Maglev picks the same server
    // and the first NAT port candidate is the same port, so the connection
    // usually carries on.
    stats::global(|s| s.flow_misses += 1);
    // Called one after the other, not nested, so their stack frames do not
    // add up.
    match new_flow(ctx, packet, scratch, service, now) {
        Some(flow) => follow(ctx, packet, flow.as_ptr(), &mut scratch.fib, true),
        None => DROP,
    }
}

/// Rewrites and forwards a packet of a known flow. A BPF subprogram of its
/// own (not inlined): its three call sites would otherwise each get their
/// own stack copies and overflow the 512-byte stack.
#[inline(never)]
fn follow(
    ctx: &XdpContext,
    packet: &L4Packet,
    flow: *mut FlowEntry,
    fib_params: &mut FibParams,
    new: bool,
) -> u32 {
    let now = now();
    // SAFETY: see `handle`.
    let entry = unsafe { &mut *flow };
    if now.wrapping_sub(entry.last_seen) > LAST_SEEN_GRANULARITY_NS {
        entry.last_seen = now;
    }
    if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 && entry.flags & FLOW_CLOSING == 0 {
        entry.flags |= FLOW_CLOSING;
    }
    stats::flow_packet(entry.service_id, entry.server_id, frame_len(ctx), new);
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
    entry.new_src = key.dst;
    entry.new_dst = key.src;
    entry.new_src_port = key.dst_port;
    entry.new_dst_port = key.src_port;
    entry.service_id = service.id as u16;
    entry.server_id = server_id as u16;
    entry.flags = FLOW_REPLY;
    entry.last_seen = now;
    let hop_gen = entry.route_gen;
    // Replies need their own next hop (towards the client).
    entry.route_gen = 0;
    let reply_key = &mut scratch.reply_key;
    reply_key.src = server.addr;
    reply_key.dst = snat;
    reply_key.src_port = server.port;
    reply_key.proto = key.proto;
    reply_key.family = key.family;
    reply_key._pad = [0; 2];
    let Some(nat_port) = allocate_port(reply_key, &mut scratch.owner_key, entry, hash, now) else {
        stats::global(|s| s.port_alloc_failures += 1);
        return None;
    };

    entry.new_src = snat;
    entry.new_dst = server.addr;
    entry.new_src_port = nat_port;
    entry.new_dst_port = server.port;
    entry.flags = 0;
    entry.route_gen = hop_gen;
    if FLOWS.insert(key, entry, BPF_ANY as u64).is_err() {
        return None;
    }
    // NonNull, so the Option is one register: a BPF function returns r0 only.
    FLOWS.get_ptr_mut(key).and_then(NonNull::new)
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
fn reopen(scratch: &mut Scratch, flow: *mut FlowEntry, service: &ServiceEntry, now: u64) -> bool {
    let key = &scratch.key;
    // SAFETY: see `handle`.
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
    let Some(reply) = FLOWS.get_ptr_mut(reply_key) else {
        return false;
    };
    // SAFETY: see `handle`.
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
fn server_side_alive(scratch: &mut Scratch, flow: *const FlowEntry, now: u64) -> bool {
    let key = &scratch.key;
    // SAFETY: see `handle`.
    let entry = unsafe { &*flow };
    let reply_key = &mut scratch.reply_key;
    fill_reply_key(reply_key, entry, key);
    let Some(reply) = FLOWS.get_ptr(reply_key) else {
        return false;
    };
    // SAFETY: see `handle`.
    let reply = unsafe { &*reply };
    reply.flags & (FLOW_REPLY | FLOW_DRAINED) == FLOW_REPLY
        && reply.new_dst == key.src
        && reply.new_dst_port == key.src_port
        && reply.new_src == key.dst
        && reply.new_src_port == key.dst_port
        && !expired(reply, key.proto, now)
}

/// Deletes a drained flow's entries: the reply entry (its key is the
/// forward entry's rewrite, reversed) if it still maps back to this
/// client, since an expired one may have been taken over by another flow;
/// then the forward entry, at `scratch.key`. Everything is read before
/// anything is deleted: a deleted LRU element may be reused at once.
#[inline(never)]
fn forget(scratch: &mut Scratch, flow: *const FlowEntry) {
    let key = &scratch.key;
    // SAFETY: see `handle`.
    let entry = unsafe { &*flow };
    let reply_key = &mut scratch.reply_key;
    fill_reply_key(reply_key, entry, key);
    if let Some(reply) = FLOWS.get_ptr(reply_key) {
        // SAFETY: see `handle`.
        let reply = unsafe { &*reply };
        if reply.flags & FLOW_REPLY != 0
            && reply.new_dst == key.src
            && reply.new_dst_port == key.src_port
            && reply.new_src == key.dst
            && reply.new_src_port == key.dst_port
        {
            let _ = FLOWS.remove(reply_key);
        }
    }
    let _ = FLOWS.remove(key);
}

/// Inserts the reply entry at the first free NAT port, claiming the reverse
/// tuple with `BPF_NOEXIST` so two flows never share one. An entry in the
/// way is taken over only when its flow is over ([`abandoned`]).
#[inline(never)]
fn allocate_port(
    reply_key: &mut FlowKey,
    owner_key: &mut FlowKey,
    reply: &FlowEntry,
    hash: u32,
    now: u64,
) -> Option<[u8; 2]> {
    for attempt in 0..NAT_PORT_TRIES {
        let port = nat_port_candidate(hash, attempt).to_be_bytes();
        reply_key.dst_port = port;
        if FLOWS.insert(reply_key, reply, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
        if let Some(existing) = FLOWS.get_ptr(reply_key) {
            // SAFETY: see `handle`.
            if unsafe { abandoned(&*existing, reply_key, owner_key, now) }
                && FLOWS.insert(reply_key, reply, BPF_ANY as u64).is_ok()
            {
                return Some(port);
            }
        }
    }
    None
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
fn abandoned(existing: &FlowEntry, reply_key: &FlowKey, owner_key: &mut FlowKey, now: u64) -> bool {
    expired(existing, reply_key.proto, now)
        && !client_side_alive(existing, reply_key, owner_key, now)
}

/// Whether the client-side entry of the reply entry `existing`'s flow is
/// there, still NATs to this port (not drained) and has not expired. Not
/// inlined: it runs only for expired entries, off the hot paths.
#[inline(never)]
fn client_side_alive(
    existing: &FlowEntry,
    reply_key: &FlowKey,
    owner_key: &mut FlowKey,
    now: u64,
) -> bool {
    // The reply's rewrite, reversed, is the client-side key.
    fill_reply_key(owner_key, existing, reply_key);
    let Some(owner) = FLOWS.get_ptr(owner_key) else {
        return false;
    };
    // SAFETY: see `handle`.
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
fn transmit(ctx: &XdpContext, ifindex: u32, src_mac: &[u8; 6], dst_mac: &[u8; 6]) -> u32 {
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
        // SAFETY: see `handle`.
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
            key.src = (*ip).src;
            key.dst = (*ip).dst;
        }
        key.family = FAMILY_IPV6;
    } else {
        let Some(ip) = header_at::<Ipv4Hdr>(ctx, packet.l3_offset) else {
            return false;
        };
        // SAFETY: bounds checked by header_at.
        unsafe {
            key.src = widen((*ip).src);
            key.dst = widen((*ip).dst);
        }
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
