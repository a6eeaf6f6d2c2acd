use proptest::prelude::*;

use super::*;

fn server(key: &str, weight: u32) -> MaglevServer<'_> {
    MaglevServer {
        key: key.as_bytes(),
        weight,
    }
}

fn servers_of<'a>(keys: &'a [String], weights: &[u32]) -> Vec<MaglevServer<'a>> {
    keys.iter()
        .zip(weights)
        .map(|(k, &w)| server(k, w))
        .collect()
}

/// The table with each slot resolved to its server's key, so tables built
/// from differently ordered inputs can be compared.
fn keys_per_slot<'a>(servers: &[MaglevServer<'a>], table: &[u32]) -> Vec<&'a [u8]> {
    table.iter().map(|&i| servers[i as usize].key).collect()
}

fn slots_per_server(table: &[u32], servers: usize) -> Vec<u32> {
    let mut counts = vec![0u32; servers];
    for &i in table {
        counts[i as usize] += 1;
    }
    counts
}

/// Katran's weighted loop (`genMaglevTable`, v2), written literally with full
/// turns and `(offset + j * skip) mod M`: the reference `populate` must match.
fn katran_reference(servers: &[MaglevServer<'_>], table_size: u32) -> Vec<u32> {
    let m = u64::from(table_size);
    let mut order: Vec<usize> = (0..servers.len())
        .filter(|&i| servers[i].weight > 0)
        .collect();
    order.sort_by_key(|&i| servers[i].key);
    let max_weight = order.iter().map(|&i| servers[i].weight).max().unwrap();
    let mut next = vec![0u64; order.len()];
    let mut credit = vec![0u64; order.len()];
    let mut table = vec![EMPTY; table_size as usize];
    let mut filled = 0;
    loop {
        for (j, &i) in order.iter().enumerate() {
            credit[j] += u64::from(servers[i].weight);
            if credit[j] < u64::from(max_weight) {
                continue;
            }
            credit[j] -= u64::from(max_weight);
            let offset = siphash24(OFFSET_KEY, servers[i].key) % m;
            let skip = siphash24(SKIP_KEY, servers[i].key) % (m - 1) + 1;
            let mut slot = (offset + next[j] * skip) % m;
            while table[slot as usize] != EMPTY {
                next[j] += 1;
                slot = (offset + next[j] * skip) % m;
            }
            table[slot as usize] = i as u32;
            next[j] += 1;
            filled += 1;
            if filled == table_size {
                return table;
            }
        }
    }
}

/// Runs one of the two fill strategies directly, bypassing the choice.
fn fill_with(
    servers: &[MaglevServer<'_>],
    table_size: u32,
    fill: fn(&mut [Candidate], u32, &mut [u32]),
) -> Vec<u32> {
    let mut candidates = candidates(servers, table_size).unwrap();
    let max_weight = max_weight(&candidates);
    let mut table = vec![EMPTY; table_size as usize];
    fill(&mut candidates, max_weight, &mut table);
    table
}

// ---- is_prime ----

#[test]
fn is_prime_small_values() {
    let primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47];
    for n in 0..50 {
        assert_eq!(is_prime(n), primes.contains(&n), "{n}");
    }
}

#[test]
fn is_prime_table_sizes() {
    assert!(is_prime(DEFAULT_TABLE_SIZE));
    assert!(is_prime(MAX_TABLE_SIZE));
    assert!(is_prime(65521)); // largest prime below 2^16
    assert!(is_prime(4_294_967_291)); // largest prime below 2^32
}

#[test]
fn is_prime_composites() {
    for n in [
        0,
        1,
        4,
        9,
        25,
        49,
        561, // Carmichael number
        65535,
        65536,
        131_073,
        65521 * 65521, // square of a prime: checks the loop bound
        u32::MAX,      // 3 * 5 * 17 * 257 * 65537
    ] {
        assert!(!is_prime(n), "{n}");
    }
}

// ---- errors ----

#[test]
fn rejects_out_of_range_table_size() {
    let servers = [server("10.0.0.1:80", 1)];
    for size in [0, 1, MAX_TABLE_SIZE + 1, 200_000, u32::MAX] {
        assert_eq!(
            build_table(&servers, size),
            Err(MaglevError::OutOfRange(size))
        );
    }
}

#[test]
fn rejects_non_prime_table_size() {
    let servers = [server("10.0.0.1:80", 1)];
    for size in [4, 9, 65536, 131_070] {
        assert_eq!(
            build_table(&servers, size),
            Err(MaglevError::NotPrime(size))
        );
    }
}

#[test]
fn rejects_more_servers_than_slots() {
    let keys: Vec<String> = (0..8).map(|i| format!("10.0.0.{i}:80")).collect();
    let servers = servers_of(&keys, &[1; 8]);
    assert_eq!(
        build_table(&servers, 7),
        Err(MaglevError::TooManyServers {
            servers: 8,
            table_size: 7
        })
    );
    // Servers with weight 0 do not need a slot.
    let mut weights = [1; 8];
    weights[3] = 0;
    let servers = servers_of(&keys, &weights);
    assert!(build_table(&servers, 7).is_ok());
}

#[test]
fn rejects_no_servers() {
    assert_eq!(build_table(&[], 7), Err(MaglevError::NoServers));
    let servers = [server("10.0.0.1:80", 0), server("10.0.0.2:80", 0)];
    assert_eq!(build_table(&servers, 7), Err(MaglevError::NoServers));
}

#[test]
fn rejects_duplicate_keys() {
    let servers = [
        server("10.0.0.1:80", 1),
        server("10.0.0.2:80", 1),
        server("10.0.0.1:80", 3),
    ];
    assert_eq!(
        build_table(&servers, 7),
        Err(MaglevError::DuplicateKey("10.0.0.1:80".into()))
    );
    // A duplicate is a configuration error even when one copy is drained.
    let servers = [server("10.0.0.1:80", 0), server("10.0.0.1:80", 1)];
    assert_eq!(
        build_table(&servers, 7),
        Err(MaglevError::DuplicateKey("10.0.0.1:80".into()))
    );
}

#[test]
fn duplicate_key_is_shown_as_lossy_utf8() {
    let key: &[u8] = b"\xff:80";
    let servers = [
        MaglevServer { key, weight: 1 },
        MaglevServer { key, weight: 1 },
    ];
    assert_eq!(
        build_table(&servers, 7),
        Err(MaglevError::DuplicateKey("\u{fffd}:80".into()))
    );
}

#[test]
fn table_size_is_checked_before_servers() {
    assert_eq!(build_table(&[], 1), Err(MaglevError::OutOfRange(1)));
    assert_eq!(build_table(&[], 8), Err(MaglevError::NotPrime(8)));
}

#[test]
fn error_messages_name_the_value() {
    let cases = [
        (
            MaglevError::NotPrime(65536),
            "table_size 65536 is not a prime number",
        ),
        (
            MaglevError::OutOfRange(200_000),
            "table_size 200000 is out of range 2..=131071",
        ),
        (
            MaglevError::TooManyServers {
                servers: 1000,
                table_size: 7,
            },
            "1000 servers do not fit in a table of 7 slots",
        ),
        (MaglevError::NoServers, "no server has a weight above 0"),
        (
            MaglevError::DuplicateKey("10.0.0.1:80".into()),
            "server 10.0.0.1:80 is listed twice",
        ),
    ];
    for (err, msg) in cases {
        assert_eq!(err.to_string(), msg);
    }
}

// ---- population ----

#[test]
fn single_server_gets_all_slots() {
    let servers = [server("10.0.0.1:80", 5)];
    let table = build_table(&servers, DEFAULT_TABLE_SIZE).unwrap();
    assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
    assert!(table.iter().all(|&i| i == 0));
}

#[test]
fn zero_weight_servers_get_no_slots() {
    let servers = [
        server("10.0.0.1:80", 0),
        server("10.0.0.2:80", 1),
        server("10.0.0.3:80", 0),
        server("10.0.0.4:80", 2),
    ];
    let table = build_table(&servers, DEFAULT_TABLE_SIZE).unwrap();
    let counts = slots_per_server(&table, servers.len());
    assert_eq!(counts[0], 0);
    assert_eq!(counts[2], 0);
    assert_eq!(counts[1] + counts[3], DEFAULT_TABLE_SIZE);
}

#[test]
fn smallest_table_and_full_table() {
    let servers = [server("a", 1), server("b", 1)];
    let mut counts = slots_per_server(&build_table(&servers, 2).unwrap(), 2);
    counts.sort_unstable();
    assert_eq!(counts, [1, 1]);
    // As many servers as slots: each gets exactly one.
    let keys: Vec<String> = (0..13).map(|i| format!("10.0.0.{i}:80")).collect();
    let servers = servers_of(&keys, &[7; 13]);
    let table = build_table(&servers, 13).unwrap();
    assert_eq!(slots_per_server(&table, 13), [1; 13]);
}

#[test]
fn extreme_weights_stay_proportional() {
    // One weight dwarfs the other: the light server still gets its share.
    let servers = [server("heavy", u32::MAX), server("light", 1 << 16)];
    let table = build_table(&servers, MAX_TABLE_SIZE).unwrap();
    let counts = slots_per_server(&table, 2);
    // 131071 * 2^16 / (2^32 - 1 + 2^16) is just under 2.
    assert_eq!(counts[1], 1);
    assert_eq!(counts[0], MAX_TABLE_SIZE - 1);
    assert_eq!(table, katran_reference(&servers, MAX_TABLE_SIZE));
    assert_eq!(table, fill_with(&servers, MAX_TABLE_SIZE, fill_by_turns));
}

#[test]
fn strategy_choice() {
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
        .collect();
    let pick = |weights: &[u32]| {
        let candidates = candidates(&servers_of(&keys, weights), DEFAULT_TABLE_SIZE).unwrap();
        turn_loop_is_cheap(&candidates, max_weight(&candidates))
    };
    // Equal or mildly mixed weights: few idle visits, the plain loop wins.
    assert!(pick(&[1; 1000]));
    let mixed: Vec<u32> = (0..1000).map(|i| 1 + i % 10).collect();
    assert!(pick(&mixed));
    // One dominant weight: most turns would visit 999 idle servers.
    let mut skewed = vec![1; 1000];
    skewed[0] = 100;
    assert!(!pick(&skewed));
}

/// Guards the exact output: a change of hash, seeds, key ordering or claim
/// order reshuffles the tables of every deployed balancer (and breaks
/// consistency between daemons of different versions), so it must be a
/// deliberate decision that updates this value.
#[test]
fn golden_table_hash() {
    let servers = [
        server("10.0.0.1:80", 1),
        server("10.0.0.2:80", 2),
        server("10.0.0.3:80", 3),
    ];
    let table = build_table(&servers, DEFAULT_TABLE_SIZE).unwrap();
    let bytes: Vec<u8> = table.iter().flat_map(|i| i.to_le_bytes()).collect();
    let digest = siphash24(SipKey { k0: 0, k1: 0 }, &bytes);
    assert_eq!(
        digest, 0x88ac_16ca_2027_30cc,
        "golden table changed: {digest:#018x}"
    );
    assert_eq!(slots_per_server(&table, 3), [10923, 21846, 32768]);
    // Both fill strategies must produce this same table.
    assert_eq!(
        table,
        fill_with(&servers, DEFAULT_TABLE_SIZE, fill_by_turns)
    );
    assert_eq!(
        table,
        fill_with(&servers, DEFAULT_TABLE_SIZE, fill_by_schedule)
    );
}

// ---- properties ----

/// Distinct "10.0.x.y:port" keys.
fn keys(count: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set((any::<u8>(), any::<u8>(), 1..=u16::MAX), count).prop_map(|set| {
        set.into_iter()
            .map(|(x, y, port)| format!("10.0.{x}.{y}:{port}"))
            .collect()
    })
}

/// Keys with one weight each, drawn from `weight`.
fn weighted(
    count: std::ops::RangeInclusive<usize>,
    weight: impl Strategy<Value = u32> + Clone,
) -> impl Strategy<Value = (Vec<String>, Vec<u32>)> {
    keys(count).prop_flat_map(move |keys| {
        let n = keys.len();
        (Just(keys), prop::collection::vec(weight.clone(), n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn shares_follow_weights((keys, weights) in weighted(1..=50, 1..=100u32)) {
        let servers = servers_of(&keys, &weights);
        let table = build_table(&servers, DEFAULT_TABLE_SIZE).unwrap();
        let total: u32 = weights.iter().sum();
        let m = f64::from(DEFAULT_TABLE_SIZE);
        for (i, slots) in slots_per_server(&table, keys.len()).into_iter().enumerate() {
            let got = f64::from(slots) / m;
            let want = f64::from(weights[i]) / f64::from(total);
            prop_assert!((got - want).abs() <= 0.01, "{}: {got} vs {want}", keys[i]);
        }
    }

    #[test]
    fn removing_a_server_moves_few_slots(keys in keys(2..=50), victim in any::<prop::sample::Index>()) {
        let before = servers_of(&keys, &vec![1; keys.len()]);
        let mut after = before.clone();
        after.remove(victim.index(keys.len()));
        let old = build_table(&before, DEFAULT_TABLE_SIZE).unwrap();
        let new = build_table(&after, DEFAULT_TABLE_SIZE).unwrap();
        let old = keys_per_slot(&before, &old);
        let new = keys_per_slot(&after, &new);
        let moved = old.iter().zip(&new).filter(|(a, b)| a != b).count();
        let limit = (1.0 / keys.len() as f64 + 0.02) * f64::from(DEFAULT_TABLE_SIZE);
        prop_assert!(moved as f64 <= limit, "{moved} slots moved, limit {limit}");
    }

    #[test]
    fn input_order_does_not_matter(
        (servers, shuffled) in weighted(1..=50, 0..=100u32).prop_flat_map(|(keys, weights)| {
            let pairs: Vec<(String, u32)> = keys.into_iter().zip(weights).collect();
            (Just(pairs.clone()), Just(pairs).prop_shuffle())
        })
    ) {
        prop_assume!(servers.iter().any(|(_, w)| *w > 0));
        let a: Vec<MaglevServer<'_>> = servers.iter().map(|(k, w)| server(k, *w)).collect();
        let b: Vec<MaglevServer<'_>> = shuffled.iter().map(|(k, w)| server(k, *w)).collect();
        let ta = build_table(&a, DEFAULT_TABLE_SIZE).unwrap();
        let tb = build_table(&b, DEFAULT_TABLE_SIZE).unwrap();
        prop_assert_eq!(keys_per_slot(&a, &ta), keys_per_slot(&b, &tb));
    }

    #[test]
    fn matches_katran_loop(
        (keys, weights) in weighted(1..=20, prop_oneof![0..=10u32, 1..=u32::MAX]),
        table_size in prop::sample::select(vec![23u32, 97, 1009, 4099]),
    ) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        let servers = servers_of(&keys, &weights);
        let reference = katran_reference(&servers, table_size);
        prop_assert_eq!(&fill_with(&servers, table_size, fill_by_turns), &reference);
        prop_assert_eq!(&fill_with(&servers, table_size, fill_by_schedule), &reference);
        prop_assert_eq!(build_table(&servers, table_size).unwrap(), reference);
    }
}
