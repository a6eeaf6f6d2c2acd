//! Weighted Maglev lookup-table population.
//!
//! Maglev (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, section 3.4) maps flows to servers through a table of
//! `M` slots (`M` prime). Each server has its own permutation of the slots,
//! `(offset + j * skip) mod M`, derived from two hashes of its key; servers
//! take turns claiming their next still-free preferred slot until the table is
//! full. That gives every server an almost equal share, and adding or removing
//! one server moves few slots of the others.
//!
//! Weights work as in Katran's "maglev v2" and Cilium: every turn, a server's
//! credit grows by its weight, and it claims a slot only once the credit
//! reaches the largest weight (which is then subtracted), so slot shares are
//! proportional to weights.
//!
//! The table must be byte-identical in every process that builds it (several
//! daemons may program the same XDP map), so the hashes use fixed keys, the
//! servers are ordered by key, and nothing depends on addresses or
//! `RandomState`.

mod siphash;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use siphash::{SipKey, siphash24};

/// Default lookup-table size M (prime), as in Katran.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Largest table size accepted (2^17 - 1, a Mersenne prime).
pub const MAX_TABLE_SIZE: u32 = 131_071;

/// One backend as seen by [`build_table`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevServer<'a> {
    /// Stable identity of the server, e.g. its canonical "ip:port" text.
    pub key: &'a [u8],
    /// Relative weight; 0 means the server gets no slots.
    pub weight: u32,
}

/// Why [`build_table`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaglevError {
    /// `table_size` is not a prime number.
    NotPrime(u32),
    /// `table_size` is above [`MAX_TABLE_SIZE`] or below 2.
    OutOfRange(u32),
    /// Fewer slots than servers with a weight above 0.
    TooManyServers { servers: usize, table_size: u32 },
    /// No server has a weight above 0.
    NoServers,
    /// Two servers have the same key (shown as lossy UTF-8).
    DuplicateKey(String),
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPrime(size) => write!(f, "table_size {size} is not a prime number"),
            Self::OutOfRange(size) => {
                write!(f, "table_size {size} is out of range 2..={MAX_TABLE_SIZE}")
            }
            Self::TooManyServers {
                servers,
                table_size,
            } => write!(
                f,
                "{servers} servers do not fit in a table of {table_size} slots"
            ),
            Self::NoServers => f.write_str("no server has a weight above 0"),
            Self::DuplicateKey(key) => write!(f, "server {key} is listed twice"),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Whether `n` is prime (deterministic trial division; fast enough for table
/// sizes, which are at most a few hundred thousand).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Every prime above 3 is 6k +- 1.
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Builds the lookup table: `table[slot]` is the index of the chosen server
/// in `servers` as given by the caller.
///
/// The result does not depend on the order of `servers` (they are sorted by
/// key internally) and is identical across processes, runs and platforms.
/// Every slot is assigned; servers with weight 0 get none.
///
/// Keys must be unique across all servers, including those with weight 0.
/// `servers` must hold fewer than `u32::MAX` entries, or
/// [`MaglevError::TooManyServers`] is returned.
pub fn build_table(servers: &[MaglevServer<'_>], table_size: u32) -> Result<Vec<u32>, MaglevError> {
    check_table_size(table_size)?;
    let mut candidates = candidates(servers, table_size)?;
    Ok(populate(&mut candidates, table_size))
}

/// The servers with weight > 0, in key order, ready to walk their
/// permutations.
fn candidates(
    servers: &[MaglevServer<'_>],
    table_size: u32,
) -> Result<Vec<Candidate>, MaglevError> {
    let order = sorted_by_key(servers, table_size)?;
    let candidates: Vec<Candidate> = order
        .into_iter()
        .filter(|&i| servers[i as usize].weight > 0)
        .map(|i| Candidate::new(i, servers[i as usize], table_size))
        .collect();
    if candidates.is_empty() {
        return Err(MaglevError::NoServers);
    }
    if candidates.len() > table_size as usize {
        return Err(MaglevError::TooManyServers {
            servers: candidates.len(),
            table_size,
        });
    }
    Ok(candidates)
}

fn check_table_size(table_size: u32) -> Result<(), MaglevError> {
    if !(2..=MAX_TABLE_SIZE).contains(&table_size) {
        return Err(MaglevError::OutOfRange(table_size));
    }
    if !is_prime(table_size) {
        return Err(MaglevError::NotPrime(table_size));
    }
    Ok(())
}

/// Indices of all `servers`, ordered by key; rejects duplicate keys.
fn sorted_by_key(servers: &[MaglevServer<'_>], table_size: u32) -> Result<Vec<u32>, MaglevError> {
    // Indices are stored as u32 and u32::MAX marks a free slot.
    let Ok(count) = u32::try_from(servers.len()) else {
        return Err(too_many(servers.len(), table_size));
    };
    if count == u32::MAX {
        return Err(too_many(servers.len(), table_size));
    }
    let mut order: Vec<u32> = (0..count).collect();
    let key = |i: &u32| servers[*i as usize].key;
    order.sort_unstable_by_key(key);
    if let Some(pair) = order.windows(2).find(|w| key(&w[0]) == key(&w[1])) {
        let dup = String::from_utf8_lossy(key(&pair[0])).into_owned();
        return Err(MaglevError::DuplicateKey(dup));
    }
    Ok(order)
}

fn too_many(servers: usize, table_size: u32) -> MaglevError {
    MaglevError::TooManyServers {
        servers,
        table_size,
    }
}

/// Fixed SipHash keys for the two per-server hashes. Changing either one
/// reshuffles every table (see the golden test), so they are versioned.
const OFFSET_KEY: SipKey = SipKey {
    k0: u64::from_le_bytes(*b"elb magl"),
    k1: u64::from_le_bytes(*b"ev h1 v1"),
};
const SKIP_KEY: SipKey = SipKey {
    k0: u64::from_le_bytes(*b"elb magl"),
    k1: u64::from_le_bytes(*b"ev h2 v1"),
};

/// Marks a slot nobody has claimed yet.
const EMPTY: u32 = u32::MAX;

/// A server with weight > 0, walking its own permutation of the slots.
struct Candidate {
    /// Index into the caller's `servers`.
    index: u32,
    weight: u32,
    /// Step of the permutation, in 1..M, so coprime with the prime M.
    skip: u32,
    /// The next slot of the permutation to try.
    next: u32,
    /// Slots claimed so far.
    claims: u32,
    /// Weight accumulated but not yet spent on a claim (turn loop only).
    credit: u64,
}

impl Candidate {
    fn new(index: u32, server: MaglevServer<'_>, table_size: u32) -> Self {
        let m = u64::from(table_size);
        // Both remainders are below table_size, so the casts are lossless.
        let offset = (siphash24(OFFSET_KEY, server.key) % m) as u32;
        let skip = (siphash24(SKIP_KEY, server.key) % (m - 1)) as u32 + 1;
        Self {
            index,
            weight: server.weight,
            skip,
            next: offset,
            claims: 0,
            credit: 0,
        }
    }

    /// Takes the first free slot left in this server's permutation. The
    /// table must have a free slot; since `skip` is coprime with M, the walk
    /// then finds it within M steps.
    #[inline]
    fn claim(&mut self, table: &mut [u32]) {
        // table.len() is the table size, at most MAX_TABLE_SIZE.
        let m = table.len() as u32;
        let mut slot = self.next;
        while table[slot as usize] != EMPTY {
            slot = step(slot, self.skip, m);
        }
        table[slot as usize] = self.index;
        self.next = step(slot, self.skip, m);
        self.claims += 1;
    }

    /// The turn in which this server claims its next slot.
    ///
    /// With credit growing by `weight` per turn and `max_weight` spent per
    /// claim, the k-th claim (k >= 1) happens in the first turn `t` (from 0)
    /// where `(t + 1) * weight >= k * max_weight`, i.e.
    /// `t = ceil(k * max_weight / weight) - 1`. At most one claim per turn,
    /// since `weight <= max_weight`.
    fn next_turn(&self, max_weight: u32) -> u64 {
        let k = u64::from(self.claims) + 1;
        // k <= 2^17 and max_weight < 2^32: no overflow.
        (k * u64::from(max_weight)).div_ceil(u64::from(self.weight)) - 1
    }
}

/// `(slot + skip) mod m` for `slot, skip < m <= MAX_TABLE_SIZE` (no overflow).
#[inline(always)]
fn step(slot: u32, skip: u32, m: u32) -> u32 {
    let next = slot + skip;
    if next >= m { next - m } else { next }
}

/// Fills the table, claiming slots in the order of Katran's weighted loop:
/// turn by turn, and within a turn by position in `candidates` (key order).
/// Two equivalent ways to get that order; the cheaper one is picked.
fn populate(candidates: &mut [Candidate], table_size: u32) -> Vec<u32> {
    let max_weight = max_weight(candidates);
    let mut table = vec![EMPTY; table_size as usize];
    if turn_loop_is_cheap(candidates, max_weight) {
        fill_by_turns(candidates, max_weight, &mut table);
    } else {
        fill_by_schedule(candidates, max_weight, &mut table);
    }
    table
}

fn max_weight(candidates: &[Candidate]) -> u32 {
    candidates.iter().map(|c| c.weight).max().unwrap_or(1)
}

/// Whether visiting every server in every turn is cheaper than the heap.
///
/// A turn claims about `sum / max` slots, so the loop runs about
/// `M * N * max / sum` iterations against about `M * log N` heap operations,
/// each several times dearer. Measured on 1,000 servers, the loop wins while
/// `N * max / sum` (1 for equal weights) stays below about 13.
fn turn_loop_is_cheap(candidates: &[Candidate], max_weight: u32) -> bool {
    const MAX_RATIO: u64 = 8;
    // N <= 2^17 and weights < 2^32: neither side overflows.
    let sum: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    candidates.len() as u64 * u64::from(max_weight) <= MAX_RATIO * sum
}

/// Katran's loop as written: every turn, each server gains its weight in
/// credit and claims a slot once the credit reaches `max_weight`.
/// O(turns * N), which degrades when one weight dwarfs the others.
fn fill_by_turns(candidates: &mut [Candidate], max_weight: u32, table: &mut [u32]) {
    let max_weight = u64::from(max_weight);
    let mut free = table.len();
    // The heaviest server claims every turn, so this ends within M turns.
    while free > 0 {
        for candidate in candidates.iter_mut() {
            candidate.credit += u64::from(candidate.weight);
            if candidate.credit < max_weight {
                continue;
            }
            candidate.credit -= max_weight;
            candidate.claim(table);
            free -= 1;
            if free == 0 {
                return;
            }
        }
    }
}

/// The same claims, taken in the same order from a min-heap of each server's
/// next (turn, position), computed by [`Candidate::next_turn`]:
/// O(M log N) whatever the weights.
fn fill_by_schedule(candidates: &mut [Candidate], max_weight: u32, table: &mut [u32]) {
    // The heaviest server claims every turn, so the table is full before
    // turn M and later claims need no scheduling.
    let turn_limit = table.len() as u64;
    // A claim is packed as (turn << 32 | position) so that a min-heap of u64
    // pops by turn, then by key order; turns are below turn_limit <= 2^17.
    let event = |turn: u64, pos: usize| {
        if turn < turn_limit {
            Some(Reverse((turn << 32) | pos as u64))
        } else {
            None
        }
    };

    let mut queue: BinaryHeap<Reverse<u64>> = candidates
        .iter()
        .enumerate()
        .filter_map(|(pos, c)| event(c.next_turn(max_weight), pos))
        .collect();

    let mut free = table.len();
    while free > 0
        && let Some(Reverse(e)) = queue.pop()
    {
        // Positions fit in 32 bits: there are at most table_size candidates.
        let pos = (e & u64::from(u32::MAX)) as usize;
        let candidate = &mut candidates[pos];
        candidate.claim(table);
        free -= 1;
        if let Some(next) = event(candidate.next_turn(max_weight), pos) {
            queue.push(next);
        }
    }
    // The heaviest server keeps a scheduled turn until the table is full.
    debug_assert_eq!(free, 0, "maglev table left with free slots");
}
