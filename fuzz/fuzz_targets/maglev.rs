//! Maglev tables from arbitrary servers, weights and table sizes.
//!
//! Properties:
//! - the errors are exactly the documented ones (size out of range or not
//!   prime, no server with weight, duplicate keys, more servers than slots);
//! - a built table has `table_size` slots, every one assigned, and only to
//!   servers with a positive weight;
//! - equal weights get shares within one slot of each other, and a heavier
//!   server never gets more than one slot fewer than a lighter one;
//! - the table does not depend on the order the servers are listed in.
//!
//! Input: the table size on the first line, then `key weight` a line.
#![no_main]

use std::collections::BTreeSet;

use elb_common::maglev::{MAX_TABLE_SIZE, MaglevError, MaglevServer, build_table, is_prime};
use libfuzzer_sys::fuzz_target;

/// Input: the table size on the first line, then one server a line,
/// `key weight` (a line without a valid weight is a server of weight 1).
fn parse(text: &str) -> Option<(u32, Vec<(&str, u32)>)> {
    let mut lines = text.lines();
    let table_size = lines.next()?.trim().parse().ok()?;
    let servers = lines
        .map(|line| match line.rsplit_once(' ') {
            Some((key, weight)) => match weight.parse() {
                Ok(weight) => (key, weight),
                Err(_) => (line, 1),
            },
            None => (line, 1),
        })
        .collect();
    Some((table_size, servers))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((table_size, input)) = parse(text) else {
        return;
    };
    // Building is O(table size): sizes that pass the range check are kept
    // below 8192 so runs stay fast; the range checks still see every size.
    let table_size = if (8192..=MAX_TABLE_SIZE).contains(&table_size) {
        table_size % 8192
    } else {
        table_size
    };
    let servers: Vec<MaglevServer<'_>> = input
        .iter()
        .map(|&(key, weight)| MaglevServer {
            key: key.as_bytes(),
            weight,
        })
        .collect();
    let result = build_table(&servers, table_size);

    let positive = servers.iter().filter(|s| s.weight > 0).count();
    let distinct: BTreeSet<&[u8]> = servers.iter().map(|s| s.key).collect();
    let expected_error = if !(2..=MAX_TABLE_SIZE).contains(&table_size) {
        Some(MaglevError::OutOfRange(table_size))
    } else if !is_prime(table_size) {
        Some(MaglevError::NotPrime(table_size))
    } else if distinct.len() != servers.len() {
        None // DuplicateKey, checked below
    } else if positive == 0 {
        Some(MaglevError::NoServers)
    } else if positive > table_size as usize {
        Some(MaglevError::TooManyServers {
            servers: positive,
            table_size,
        })
    } else {
        None
    };
    let table = match (result, expected_error) {
        (Err(err), Some(expected)) => return assert_eq!(err, expected),
        (Err(MaglevError::DuplicateKey(_)), None) if distinct.len() != servers.len() => return,
        (Err(err), None) => panic!("unexpected error {err}"),
        (Ok(_), Some(expected)) => panic!("built a table, expected {expected}"),
        (Ok(table), None) => {
            assert_eq!(
                distinct.len(),
                servers.len(),
                "duplicate keys were accepted"
            );
            table
        }
    };

    assert_eq!(table.len(), table_size as usize);
    let mut slots = vec![0u64; servers.len()];
    for &index in &table {
        let server = servers
            .get(index as usize)
            .unwrap_or_else(|| panic!("slot holds {index}, there are {} servers", servers.len()));
        assert!(server.weight > 0, "a server with weight 0 got a slot");
        slots[index as usize] += 1;
    }
    for (a, sa) in servers.iter().zip(&slots) {
        for (b, sb) in servers.iter().zip(&slots) {
            if a.weight >= b.weight && b.weight > 0 {
                assert!(
                    sa + 1 >= *sb,
                    "weight {} got {sa} slots, weight {} got {sb}",
                    a.weight,
                    b.weight
                );
            }
        }
    }

    // Listed the other way round: the same server in every slot.
    let reversed: Vec<MaglevServer<'_>> = servers.iter().rev().copied().collect();
    let again = build_table(&reversed, table_size).expect("the same servers build again");
    let n = servers.len() as u32;
    assert!(
        table
            .iter()
            .zip(&again)
            .all(|(&first, &second)| first == n - 1 - second),
        "the order of the servers changed the table"
    );
});
