//! The ports some L4 service listens on (`elb_vip_ports`), as a bitmap the
//! XDP program tests with one array read. A packet to another port belongs
//! to no service's flow, so it skips the connection-table lookup that
//! comes before the VIP's service lookup (`elb-ebpf/src/lb.rs`). A port
//! missing here costs speed only: such a packet finds its flow after the
//! service lookup, as before.

/// 65,536 ports, 64 to a word.
pub const WORDS: usize = 1 << 10;

/// `elb_vip_ports`' one value: bit `port % 64` of word `port / 64`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VipPorts {
    pub bits: [u64; WORDS],
}

impl VipPorts {
    pub const EMPTY: Self = Self { bits: [0; WORDS] };

    pub fn insert(&mut self, port: u16) {
        self.bits[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        // port >> 6 < WORDS for every u16: no bounds check is emitted.
        self.bits[usize::from(port >> 6)] >> (port & 63) & 1 != 0
    }
}

impl Default for VipPorts {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl FromIterator<u16> for VipPorts {
    fn from_iter<I: IntoIterator<Item = u16>>(ports: I) -> Self {
        let mut set = Self::EMPTY;
        for port in ports {
            set.insert(port);
        }
        set
    }
}

impl core::fmt::Debug for VipPorts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set()
            .entries((0..=u16::MAX).filter(|&port| self.contains(port)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_the_ports_put_in_at_both_ends_of_every_word() {
        let ports = [0, 1, 63, 64, 80, 443, 8080, 65472, 65535];
        let set: VipPorts = ports.into_iter().collect();
        for port in 0..=u16::MAX {
            assert_eq!(set.contains(port), ports.contains(&port), "port {port}");
        }
        assert_eq!(
            format!("{set:?}"),
            "{0, 1, 63, 64, 80, 443, 8080, 65472, 65535}"
        );
    }

    #[test]
    fn is_a_padding_free_8_kib_value() {
        assert_eq!(size_of::<VipPorts>(), 8192);
        assert!(!VipPorts::EMPTY.contains(80));
    }
}
