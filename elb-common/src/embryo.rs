//! When a flow leaves the embryonic table for the main connection table.
//!
//! New flows start in a small table of their own (`elb_embryos`) and move
//! into the main table (`elb_flows`) only once both ends have shown they
//! are real: the server answered, and the client then sent a packet that
//! (for TCP) acknowledges the server's SYN-ACK. A flood of spoofed SYNs
//! never gets that far (its sources never see the SYN-ACK), so it churns
//! only the embryonic table, and established flows in the main table are
//! never evicted by it. This is conntrack's "assured" rule, with the
//! acknowledgment number checked the way a SYN-cookie check does.
//!
//! Pure, so the XDP program and host tests use the same rules.
use crate::{
    l4::{FLOW_CHECK_ACK, FLOW_SEEN_REPLY},
    tcp::{TCP_ACK, TCP_RST, TCP_SYN},
};

/// How far past the server's ISN + 1 the client's acknowledgment may be:
/// data the server sent with its SYN-ACK. A blind (spoofing) client guesses
/// right with a chance of this in 2^32.
pub const ACK_WINDOW: u32 = 1 << 16;

/// What the server's packet on an embryonic flow does to the flags of its
/// reply entry, and the sequence number to keep (its SYN-ACK's ISN).
///
/// - A TCP SYN-ACK: the server answered; the client must acknowledge this
///   ISN to promote the flow.
/// - A TCP RST: no answer (the server knows no such connection, as for a
///   spoofed mid-stream segment); flags unchanged.
/// - Anything else (UDP, a TCP segment of a flow whose entry was lost):
///   the server answered; no acknowledgment check (there is no ISN to
///   check against), unless an earlier SYN-ACK set one.
#[inline(always)]
pub fn on_server_packet(flags: u32, tcp: bool, tcp_flags: u8, seq: u32) -> (u32, Option<u32>) {
    if !tcp {
        return (flags | FLOW_SEEN_REPLY, None);
    }
    if tcp_flags & TCP_RST != 0 {
        return (flags, None);
    }
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        return (flags | FLOW_SEEN_REPLY | FLOW_CHECK_ACK, Some(seq));
    }
    (flags | FLOW_SEEN_REPLY, None)
}

/// Whether the client's packet (`tcp_flags`, acknowledgment `ack`) promotes
/// the embryonic flow whose reply entry has `reply_flags` and, under
/// `FLOW_CHECK_ACK`, the server's ISN `isn`. Never a SYN (a retransmitted
/// SYN is still a handshake) nor a RST (the client gave up).
#[inline(always)]
pub fn promotes(reply_flags: u32, isn: u32, tcp: bool, tcp_flags: u8, ack: u32) -> bool {
    if reply_flags & FLOW_SEEN_REPLY == 0 {
        return false;
    }
    if !tcp {
        return true;
    }
    if tcp_flags & (TCP_SYN | TCP_RST) != 0 {
        return false;
    }
    if reply_flags & FLOW_CHECK_ACK == 0 {
        return true;
    }
    tcp_flags & TCP_ACK != 0 && ack.wrapping_sub(isn.wrapping_add(1)) < ACK_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TCP_FIN;

    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;

    #[test]
    fn a_syn_ack_is_an_answer_whose_isn_the_client_must_acknowledge() {
        let (flags, isn) = on_server_packet(0, true, SYN_ACK, 7_000);
        assert_eq!(flags, FLOW_SEEN_REPLY | FLOW_CHECK_ACK);
        assert_eq!(isn, Some(7_000));
        assert!(promotes(flags, 7_000, true, TCP_ACK, 7_001));
        assert!(promotes(flags, 7_000, true, TCP_ACK | TCP_FIN, 7_001));
        assert!(promotes(
            flags,
            7_000,
            true,
            TCP_ACK,
            7_001 + ACK_WINDOW - 1
        ));
        assert!(!promotes(flags, 7_000, true, TCP_ACK, 7_001 + ACK_WINDOW));
        assert!(
            !promotes(flags, 7_000, true, TCP_ACK, 7_000),
            "no byte of the SYN acknowledged"
        );
        assert!(!promotes(flags, 7_000, true, TCP_ACK, 123), "a blind guess");
        assert!(!promotes(flags, 7_000, true, 0, 7_001), "no ACK flag");
    }

    #[test]
    fn the_isn_check_wraps_around_the_sequence_space() {
        let (flags, _) = on_server_packet(0, true, SYN_ACK, u32::MAX);
        assert!(promotes(flags, u32::MAX, true, TCP_ACK, 0));
        assert!(!promotes(flags, u32::MAX, true, TCP_ACK, u32::MAX));
    }

    #[test]
    fn without_an_answer_nothing_promotes() {
        assert!(!promotes(0, 0, true, TCP_ACK, 1));
        assert!(!promotes(0, 0, false, 0, 0));
        let (flags, isn) = on_server_packet(0, true, TCP_RST | TCP_ACK, 5);
        assert_eq!((flags, isn), (0, None), "a RST is no answer");
    }

    #[test]
    fn syns_and_rsts_of_the_client_never_promote() {
        let (flags, _) = on_server_packet(0, true, SYN_ACK, 10);
        assert!(!promotes(flags, 10, true, TCP_SYN, 11));
        assert!(!promotes(flags, 10, true, TCP_RST | TCP_ACK, 11));
    }

    #[test]
    fn a_mid_stream_answer_promotes_without_an_isn_check() {
        let (flags, isn) = on_server_packet(0, true, TCP_ACK, 99);
        assert_eq!((flags, isn), (FLOW_SEEN_REPLY, None));
        assert!(promotes(flags, 0, true, TCP_ACK, 12_345));
    }

    #[test]
    fn a_later_segment_keeps_the_syn_acks_check() {
        let (flags, _) = on_server_packet(0, true, SYN_ACK, 10);
        let (flags, isn) = on_server_packet(flags, true, TCP_ACK, 11);
        assert_eq!(isn, None);
        assert_eq!(flags, FLOW_SEEN_REPLY | FLOW_CHECK_ACK);
    }

    #[test]
    fn udp_promotes_on_the_clients_packet_after_any_answer() {
        let (flags, isn) = on_server_packet(0, false, 0, 0);
        assert_eq!((flags, isn), (FLOW_SEEN_REPLY, None));
        assert!(promotes(flags, 0, false, 0, 0));
    }
}
