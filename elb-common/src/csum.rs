//! Incremental Internet checksum updates (RFC 1624, eqn. 3):
//! `HC' = ~(~HC + ~m + m')`, summed over every 16-bit word that changed.
//!
//! NAT changes a few fixed-size fields (addresses, ports), so the checksums
//! are patched from those alone; nothing is summed over variable-length
//! packet data (which `bpf_csum_diff` cannot do safely, aya issue 1562).
//! Headers elb writes whole (a TCP RST) get a checksum from scratch with
//! [`Sum`], again over fixed-size fields only.

/// The one's-complement sum of `~old + new` over changed words, not yet
/// folded. Build it with [`Delta::replace`], apply it with [`Delta::apply`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// Adds the change of a field from `old` to `new`. `N` must be even; the
    /// field must start at an even offset of the checksummed data (true for
    /// IP addresses and TCP/UDP ports).
    #[inline(always)]
    pub fn replace<const N: usize>(self, old: &[u8; N], new: &[u8; N]) -> Self {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            let old_word = u16::from_be_bytes([old[i], old[i + 1]]);
            let new_word = u16::from_be_bytes([new[i], new[i + 1]]);
            sum += u32::from(!old_word) + u32::from(new_word);
            i += 2;
        }
        // At most 16 words per call: fold now so sums never overflow.
        Self(fold_once(fold_once(sum)))
    }

    /// The checksum field (as stored in the packet) after the change.
    #[inline(always)]
    pub fn apply(self, check: [u8; 2]) -> [u8; 2] {
        let sum = u32::from(!u16::from_be_bytes(check)) + self.0;
        let folded = fold_once(fold_once(sum)) as u16;
        (!folded).to_be_bytes()
    }

    /// As [`Delta::apply`] for a UDP checksum: 0 means "no checksum" over
    /// IPv4 and stays 0, and a computed 0 is sent as 0xFFFF (RFC 768).
    #[inline(always)]
    pub fn apply_udp(self, check: [u8; 2]) -> [u8; 2] {
        if check == [0, 0] {
            return check;
        }
        match self.apply(check) {
            [0, 0] => [0xFF, 0xFF],
            other => other,
        }
    }
}

/// A checksum computed from scratch (RFC 1071) over a few fixed-size
/// fields, for headers elb writes whole (the TCP RST it answers with).
/// Build it with [`Sum::add_field`], read it with [`Sum::checksum`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sum(u32);

impl Sum {
    /// Adds `bytes` as 16-bit big-endian words. `N` must be even and the
    /// field must start at an even offset of the checksummed data.
    #[inline(always)]
    pub fn add_field<const N: usize>(self, bytes: &[u8; N]) -> Self {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        // Fields are small (at most a few dozen words): folding after
        // each keeps the running sum far from overflowing.
        Self(fold_once(fold_once(sum)))
    }

    /// The checksum field's value: the complement of the folded sum.
    #[inline(always)]
    pub fn checksum(self) -> [u8; 2] {
        (!(fold_once(fold_once(self.0)) as u16)).to_be_bytes()
    }
}

#[inline(always)]
fn fold_once(sum: u32) -> u32 {
    (sum & 0xFFFF) + (sum >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight RFC 1071 checksum, the reference the deltas must agree with.
    fn checksum(data: &[u8]) -> [u8; 2] {
        let mut sum: u64 = 0;
        for chunk in data.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u64::from(word);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        (!(sum as u16)).to_be_bytes()
    }

    /// A 20-byte IPv4 header with its checksum at bytes 10..12.
    fn ipv4_header(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c);
        h
    }

    #[test]
    fn rewriting_addresses_matches_a_full_recomputation() {
        let cases = [
            (
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                [192, 168, 7, 9],
                [172, 16, 0, 200],
            ),
            (
                [0, 0, 0, 0],
                [255, 255, 255, 255],
                [255, 255, 255, 255],
                [0, 0, 0, 0],
            ),
            ([1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4], [5, 6, 7, 8]),
        ];
        for (src, dst, new_src, new_dst) in cases {
            let header = ipv4_header(src, dst);
            let delta = Delta::default()
                .replace(&src, &new_src)
                .replace(&dst, &new_dst);
            let patched = delta.apply([header[10], header[11]]);
            assert_eq!(patched, ipv4_header(new_src, new_dst)[10..12]);
        }
    }

    #[test]
    fn every_single_word_change_matches_recomputation() {
        // Exhaustive over one word's old and new values at a coarse stride,
        // including the 0x0000 / 0xFFFF edge cases of one's complement.
        let values: Vec<u16> = (0..=u16::MAX)
            .step_by(257)
            .chain([0xFFFF, 0xFFFE, 1])
            .collect();
        for &old in &values {
            for &new in &values {
                let mut data = [0x12, 0x34, 0, 0, 0xAB, 0xCD];
                data[2..4].copy_from_slice(&old.to_be_bytes());
                let before = checksum(&data);
                data[2..4].copy_from_slice(&new.to_be_bytes());
                let after = checksum(&data);
                let patched = Delta::default()
                    .replace(&old.to_be_bytes(), &new.to_be_bytes())
                    .apply(before);
                // 0x0000 and 0xFFFF are the same number in one's complement;
                // a receiver accepts either.
                let same = patched == after
                    || (patched == [0, 0] && after == [0xFF, 0xFF])
                    || (patched == [0xFF, 0xFF] && after == [0, 0]);
                assert!(same, "old {old:#x} new {new:#x}: {patched:?} vs {after:?}");
            }
        }
    }

    #[test]
    fn ipv6_addresses_and_ports_in_one_delta() {
        let mut segment = [0u8; 40];
        for (i, b) in segment.iter_mut().enumerate() {
            *b = (i * 37 % 251) as u8;
        }
        let before = checksum(&segment);
        let old_addr: [u8; 16] = segment[0..16].try_into().expect("16 bytes");
        let old_port: [u8; 2] = segment[32..34].try_into().expect("2 bytes");
        let new_addr = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
        ];
        let new_port = [0x4e, 0x20];
        segment[0..16].copy_from_slice(&new_addr);
        segment[32..34].copy_from_slice(&new_port);
        let delta = Delta::default()
            .replace(&old_addr, &new_addr)
            .replace(&old_port, &new_port);
        assert_eq!(delta.apply(before), checksum(&segment));
    }

    #[test]
    fn sum_matches_a_straight_checksum_over_the_same_bytes() {
        let mut data = [0u8; 56];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 151 % 256) as u8;
        }
        let head: [u8; 16] = data[..16].try_into().expect("16 bytes");
        let word: [u8; 2] = data[16..18].try_into().expect("2 bytes");
        let tail: [u8; 38] = data[18..].try_into().expect("38 bytes");
        let sum = Sum::default()
            .add_field(&head)
            .add_field(&word)
            .add_field(&tail);
        assert_eq!(sum.checksum(), checksum(&data));
        // All-ones data: the folded sum is 0xFFFF and the checksum 0.
        assert_eq!(Sum::default().add_field(&[0xFF; 40]).checksum(), [0, 0]);
        assert_eq!(Sum::default().checksum(), [0xFF, 0xFF]);
    }

    #[test]
    fn a_header_carrying_its_sum_checks_to_zero() {
        let mut header = [
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 77, 0, 100, 10, 77, 0, 2,
        ];
        let check = Sum::default().add_field(&header).checksum();
        header[10..12].copy_from_slice(&check);
        assert_eq!(Sum::default().add_field(&header).checksum(), [0, 0]);
    }

    #[test]
    fn udp_zero_checksum_is_kept_and_computed_zero_is_sent_as_ffff() {
        let delta = Delta::default().replace(&[0, 1], &[0, 2]);
        assert_eq!(delta.apply_udp([0, 0]), [0, 0]);
        // ~HC + ~m + m' = 0x0001 + 0xFFFE = 0xFFFF → HC' = 0, which UDP
        // must send as 0xFFFF.
        assert_eq!(
            Delta::default()
                .replace(&[0, 1], &[0, 0])
                .apply([0xFF, 0xFE]),
            [0, 0]
        );
        assert_eq!(
            Delta::default()
                .replace(&[0, 1], &[0, 0])
                .apply_udp([0xFF, 0xFE]),
            [0xFF, 0xFF]
        );
    }
}
