//! TCP flag bits, and the reset elb's XDP program sends for a segment of a
//! flow whose server was drained: as far as the client's peer goes, the
//! connection no longer exists (RFC 9293 §3.10.7.1). Pure, so both the
//! eBPF program and host tests use the same rules.

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// True for the first segment of a connection: SYN without ACK. On a
/// drained flow such a segment starts a new flow; any other is reset.
#[inline(always)]
pub fn is_connection_start(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Sequence number, acknowledgment number and flags of a RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    pub seq: u32,
    /// 0 unless `flags` has ACK.
    pub ack: u32,
    pub flags: u8,
}

/// The RST answering a segment (`flags`, `seq`, `ack`, `data_len` bytes of
/// payload) that belongs to no (longer existing) connection, per RFC 9293
/// §3.10.7.1:
/// - with ACK: `<SEQ=SEG.ACK><CTL=RST>`;
/// - without: `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`, where SEG.LEN
///   counts SYN and FIN as one each.
///
/// None for a RST: one is never answered (that could loop between two
/// resetting ends), it is dropped.
#[inline(always)]
pub fn reset_for(flags: u8, seq: u32, ack: u32, data_len: u32) -> Option<Reset> {
    if flags & TCP_RST != 0 {
        return None;
    }
    if flags & TCP_ACK != 0 {
        return Some(Reset {
            seq: ack,
            ack: 0,
            flags: TCP_RST,
        });
    }
    let controls = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    Some(Reset {
        seq: 0,
        ack: seq.wrapping_add(data_len).wrapping_add(controls),
        flags: TCP_RST | TCP_ACK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_with_ack_gets_a_bare_rst_at_its_ack_number() {
        for flags in [
            TCP_ACK,
            TCP_ACK | TCP_FIN,
            TCP_ACK | TCP_SYN,
            TCP_ACK | 0x08,
        ] {
            assert_eq!(
                reset_for(flags, 1000, 0xDEAD_BEEF, 19),
                Some(Reset {
                    seq: 0xDEAD_BEEF,
                    ack: 0,
                    flags: TCP_RST
                }),
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn a_segment_without_ack_gets_rst_ack_covering_data_syn_and_fin() {
        let cases = [
            // (flags, data length, acknowledged up to seq + ...)
            (0, 0, 0),
            (0, 19, 19),
            (TCP_FIN, 0, 1),
            (TCP_FIN, 19, 20),
            (TCP_SYN, 0, 1),
            (TCP_SYN | TCP_FIN, 5, 7),
        ];
        for (flags, data_len, advance) in cases {
            assert_eq!(
                reset_for(flags, 1000, 77, data_len),
                Some(Reset {
                    seq: 0,
                    ack: 1000 + advance,
                    flags: TCP_RST | TCP_ACK
                }),
                "flags {flags:#x}, {data_len} bytes"
            );
        }
    }

    #[test]
    fn the_ack_number_wraps_around() {
        let reset = reset_for(TCP_FIN, u32::MAX - 1, 0, 3).expect("answered");
        assert_eq!(reset.ack, 2);
    }

    #[test]
    fn a_rst_is_never_answered() {
        for flags in [TCP_RST, TCP_RST | TCP_ACK, TCP_RST | TCP_SYN] {
            assert_eq!(reset_for(flags, 1, 2, 0), None, "flags {flags:#x}");
        }
    }

    #[test]
    fn only_syn_without_ack_starts_a_connection() {
        assert!(is_connection_start(TCP_SYN));
        assert!(is_connection_start(TCP_SYN | 0x08));
        assert!(!is_connection_start(TCP_SYN | TCP_ACK));
        assert!(!is_connection_start(TCP_ACK));
        assert!(!is_connection_start(TCP_FIN));
        assert!(!is_connection_start(0));
    }
}
