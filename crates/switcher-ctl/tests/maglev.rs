//! The Maglev table builder and flow hash (`switcher_ctl::maglev`), as issue 15 asks:
//! distribution within 2% of the weights over 1 M flows, disruption when one origin leaves at
//! most its share + 1%, determinism pinned by golden values, weight 0 means no slot, up to 16
//! backends and beyond.
//!
//! The 1 M flows are deterministic (splitmix64 with a fixed seed): three in four IPv4, one in
//! four IPv6, random client address and port, to a fixed VIP (192.0.2.1:8080, [2001:db8::1]:8080)
//! over TCP. They are hashed once ([`flow_hashes`]) and counted per slot of the full-size
//! table ([`DEFAULT_TABLE_SIZE`], 65,537: fast enough in debug builds, no smaller prime needed),
//! so "fraction of flows" below is exact over those 1 M flows, not sampled again per test.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use switcher_ctl::maglev::{
    Backend, DEFAULT_TABLE_SIZE, FLOW_HASH_SEED, MaglevError, NO_BACKEND, Permutation, Table,
    backend_permutation, build, flow_hash_v4, flow_hash_v6, fnv1a64, jhash2, slot_index,
};

const FLOWS: usize = 1_000_000;
const TCP: u8 = 6;

/// Weight sets with 2 to 16 backends, even and skewed, small and large weights. The smallest
/// share is 1/36 (2.8%, about 28,000 of the 1 M flows), so sampling noise (about 0.6% of
/// that share, one standard deviation) stays well inside the 2% tolerance.
const WEIGHT_SETS: &[&[u32]] = &[
    &[1, 1],
    &[1, 3],
    &[1000, 3000],
    &[2, 3, 5],
    &[1, 1, 1, 1],
    &[4, 1, 1, 2, 2],
    &[1, 2, 3, 4, 5, 6, 7, 8],
    &[1; 16],
    &[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2],
    &[
        100, 150, 200, 250, 100, 150, 200, 250, 100, 150, 200, 250, 100, 150, 200, 250,
    ],
];

/// splitmix64 (Steele, Lea, Flood, OOPSLA 2014): a tiny deterministic generator for the test
/// flows.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The flow hashes of the 1 M test flows, computed once for all tests of this binary.
fn flow_hashes() -> &'static [u32] {
    static HASHES: OnceLock<Vec<u32>> = OnceLock::new();
    HASHES.get_or_init(|| {
        let mut rng = SplitMix64(0x5eed);
        let vip4 = Ipv4Addr::new(192, 0, 2, 1);
        let vip6: Ipv6Addr = "2001:db8::1".parse().expect("VIP literal");
        (0..FLOWS)
            .map(|i| {
                let r = rng.next();
                let port = 1024 + (r >> 48) as u16 % (u16::MAX - 1024);
                if i % 4 == 3 {
                    let src = Ipv6Addr::from(u128::from(r) << 64 | u128::from(rng.next()));
                    flow_hash_v6(src, port, vip6, 8080, TCP)
                } else {
                    flow_hash_v4(Ipv4Addr::from(r as u32), port, vip4, 8080, TCP)
                }
            })
            .collect()
    })
}

/// How many of the 1 M flows land in each slot of the default-size table.
fn flows_per_slot() -> &'static [u32] {
    static COUNTS: OnceLock<Vec<u32>> = OnceLock::new();
    COUNTS.get_or_init(|| {
        let mut counts = vec![0u32; DEFAULT_TABLE_SIZE as usize];
        for &h in flow_hashes() {
            counts[slot_index(h, DEFAULT_TABLE_SIZE) as usize] += 1;
        }
        counts
    })
}

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("origin-{i}")).collect()
}

fn backends<'a>(names: &'a [String], weights: &[u32]) -> Vec<Backend<'a>> {
    names
        .iter()
        .zip(weights)
        .map(|(name, &weight)| Backend { name, weight })
        .collect()
}

/// The name owning each slot (`None` for an empty slot): the caller-order-free view of a table.
fn owners<'a>(table: &Table, backends: &[Backend<'a>]) -> Vec<Option<&'a str>> {
    table
        .slots()
        .iter()
        .map(|&s| (s != NO_BACKEND).then(|| backends[s as usize].name))
        .collect()
}

/// Fraction of the 1 M flows that each backend receives through `table` (default size).
fn flow_shares(table: &Table, n: usize) -> Vec<f64> {
    let mut flows = vec![0u64; n];
    for (&owner, &count) in table.slots().iter().zip(flows_per_slot()) {
        flows[owner as usize] += u64::from(count);
    }
    flows.iter().map(|&f| f as f64 / FLOWS as f64).collect()
}

#[test]
fn flows_spread_within_two_percent_of_the_weights() {
    for weights in WEIGHT_SETS {
        let names = names(weights.len());
        let backends = backends(&names, weights);
        let table = build(&backends, DEFAULT_TABLE_SIZE).expect("valid input");
        let total: u32 = weights.iter().sum();
        for (i, share) in flow_shares(&table, weights.len()).into_iter().enumerate() {
            let expected = f64::from(weights[i]) / f64::from(total);
            let error = (share - expected).abs() / expected;
            assert!(
                error <= 0.02,
                "weights {weights:?}: backend {i} got {share:.5} of the flows, expected \
                 {expected:.5} (relative error {error:.4})"
            );
        }
    }
}

#[test]
fn slots_follow_the_weights_within_rounding() {
    // Weighted turns: after R rounds backend i has taken floor(R w_i / w_max) turns, plus at
    // most one in the unfinished round, and the table holds sum_j of those. So its slot count
    // is within 1 + N w_i / W of M w_i / W (W the sum of the weights): a few slots of 65,537.
    for weights in WEIGHT_SETS {
        let names = names(weights.len());
        let table = build(&backends(&names, weights), DEFAULT_TABLE_SIZE).expect("valid input");
        let total = f64::from(weights.iter().sum::<u32>());
        let n = weights.len() as f64;
        let counts = table.entry_counts(weights.len());
        assert_eq!(
            counts.iter().sum::<u32>(),
            DEFAULT_TABLE_SIZE,
            "every slot is owned"
        );
        for (i, &count) in counts.iter().enumerate() {
            let share = f64::from(weights[i]) / total;
            let expected = f64::from(DEFAULT_TABLE_SIZE) * share;
            assert!(
                (f64::from(count) - expected).abs() <= 1.0 + n * share,
                "weights {weights:?}: backend {i} owns {count} slots, expected {expected:.1}"
            );
        }
    }
}

#[test]
fn one_origin_leaving_moves_at_most_its_share_plus_one_percent() {
    let per_slot = flows_per_slot();
    for weights in WEIGHT_SETS {
        let names = names(weights.len());
        let all = backends(&names, weights);
        let before = build(&all, DEFAULT_TABLE_SIZE).expect("valid input");
        let total: u32 = weights.iter().sum();
        for leaving in 0..all.len() {
            let mut rest = all.clone();
            rest.remove(leaving);
            let after = build(&rest, DEFAULT_TABLE_SIZE).expect("valid input");
            let (before_owners, after_owners) = (owners(&before, &all), owners(&after, &rest));
            let mut moved = 0u64;
            let mut had_leaving = 0u64;
            for slot in 0..per_slot.len() {
                let flows = u64::from(per_slot[slot]);
                if before_owners[slot] == Some(all[leaving].name) {
                    had_leaving += flows;
                }
                if before_owners[slot] != after_owners[slot] {
                    moved += flows;
                }
            }
            let moved = moved as f64 / FLOWS as f64;
            let share = f64::from(weights[leaving]) / f64::from(total);
            assert!(
                moved <= share + 0.01,
                "weights {weights:?}: backend {leaving} (share {share:.4}) leaving moved \
                 {moved:.4} of the flows"
            );
            // Its own flows must all move (they do: it owns no slot any more), so the bound
            // above leaves at most 1% for flows of the others.
            assert!(moved >= had_leaving as f64 / FLOWS as f64);
            assert!(after.entry_counts(rest.len()).iter().all(|&c| c > 0));
        }
    }
}

#[test]
fn same_inputs_give_the_same_table() {
    let names = names(16);
    let weights: Vec<u32> = (1..=16).collect();
    let backends = backends(&names, &weights);
    let first = build(&backends, DEFAULT_TABLE_SIZE).expect("valid input");
    let second = build(&backends, DEFAULT_TABLE_SIZE).expect("valid input");
    assert_eq!(first, second);

    // Another edge may list the same origins in another order: the same name owns each slot.
    let mut reversed = backends.clone();
    reversed.reverse();
    let third = build(&reversed, DEFAULT_TABLE_SIZE).expect("valid input");
    assert_ne!(
        first.slots(),
        third.slots(),
        "slot values index the caller's slice"
    );
    assert_eq!(owners(&first, &backends), owners(&third, &reversed));
}

#[test]
fn golden_small_table() {
    // Pinned: a change here is a change of the hash, the seeds or the population, which
    // reshuffles viewers across a release and splits edges running different versions.
    let backends = [
        Backend {
            name: "alpha",
            weight: 1,
        },
        Backend {
            name: "beta",
            weight: 2,
        },
        Backend {
            name: "gamma",
            weight: 1,
        },
    ];
    let table = build(&backends, 13).expect("valid input");
    assert_eq!(table.slots(), GOLDEN_13);
    assert_eq!(table.entry_counts(3), [3, 7, 3]);
}

/// Derived independently: a Python transcription of the module docs' formulas (paper's
/// `(offset + j * skip) % M` form, not the builder's incremental one) gave these values.
const GOLDEN_13: &[u32] = &[2, 1, 1, 1, 1, 0, 2, 1, 1, 2, 0, 0, 1];

#[test]
fn golden_checksum_of_a_full_size_table() {
    let names = names(16);
    let weights: Vec<u32> = (1..=16).collect();
    let table = build(&backends(&names, &weights), DEFAULT_TABLE_SIZE).expect("valid input");
    let bytes: Vec<u8> = table.slots().iter().flat_map(|s| s.to_le_bytes()).collect();
    assert_eq!(
        fnv1a64(&bytes),
        0xa296_26a4_7443_cc85,
        "FNV-1a-64 of the slots, little-endian u32s"
    );
}

#[test]
fn golden_permutations() {
    assert_eq!(
        backend_permutation("primary", DEFAULT_TABLE_SIZE),
        Permutation {
            offset: 27191,
            skip: 48390
        }
    );
    assert_eq!(
        backend_permutation("backup", DEFAULT_TABLE_SIZE),
        Permutation {
            offset: 3177,
            skip: 11688
        }
    );
}

#[test]
fn fnv1a64_matches_the_published_vectors() {
    // draft-eastlake-fnv, test vectors for FNV-1a 64.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn jhash2_matches_the_kernel() {
    // Values from a C transcription of include/linux/jhash.h's jhash2(), compiled with gcc:
    // keys [1], [1, 2], ... [1..=7] (every tail length and 0, 1, 2 mix rounds), initval 0.
    let expected = [
        0xdead_beef,
        0x72a8_2a9b,
        0x8b4c_7979,
        0xa461_58f5,
        0x6649_1246,
        0x6291_29c0,
        0xe3e3_6b25,
        0x3e60_6a2c,
    ];
    for (n, want) in expected.into_iter().enumerate() {
        let key: Vec<u32> = (1..=n as u32).collect();
        assert_eq!(jhash2(&key, 0), want, "key of {n} words");
    }
    // Katran's jhash_2words(a, b, initval) is jhash2 of [a, b].
    assert_eq!(jhash2(&[0x0102_0304, 0x0506_0708], 7), 0xa8a6_3639);
}

#[test]
fn flow_hash_matches_words_loaded_from_the_wire() {
    // Values from the same C program, building the words by memcpy from the packet's bytes
    // (IP addresses as from inet_pton, ports via htons) on little-endian x86: what the data
    // plane loads on bpfel. Seed FLOW_HASH_SEED.
    assert_eq!(FLOW_HASH_SEED, 0x484c_5365);
    let v4 = |a: &str| a.parse::<Ipv4Addr>().expect("literal");
    let v6 = |a: &str| a.parse::<Ipv6Addr>().expect("literal");
    assert_eq!(
        flow_hash_v4(v4("198.51.100.7"), 40000, v4("192.0.2.1"), 8080, TCP),
        0x0d1e_febe
    );
    assert_eq!(
        flow_hash_v4(v4("10.0.0.1"), 1024, v4("10.0.0.2"), 8080, TCP),
        0xb446_0bb3
    );
    assert_eq!(
        flow_hash_v6(v6("2001:db8::7"), 40000, v6("2001:db8::1"), 8080, TCP),
        0xb8b1_0165
    );
}

#[test]
fn every_part_of_the_tuple_changes_the_flow_hash() {
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let base = flow_hash_v4(a, 1000, b, 8080, TCP);
    for other in [
        flow_hash_v4(b, 1000, b, 8080, TCP),
        flow_hash_v4(a, 1001, b, 8080, TCP),
        flow_hash_v4(a, 1000, a, 8080, TCP),
        flow_hash_v4(a, 1000, b, 8081, TCP),
        flow_hash_v4(a, 1000, b, 8080, 17),
        // Swapped ports are another flow.
        flow_hash_v4(a, 8080, b, 1000, TCP),
    ] {
        assert_ne!(base, other);
    }
}

#[test]
fn weight_zero_backends_get_no_slot() {
    let names = names(16);
    let weights = [3, 0, 1, 0, 2, 2, 0, 1, 5, 0, 1, 1, 0, 4, 1, 0];
    let with_zeros = backends(&names, &weights);
    let table = build(&with_zeros, DEFAULT_TABLE_SIZE).expect("valid input");
    for (i, count) in table.entry_counts(16).into_iter().enumerate() {
        assert_eq!(
            count == 0,
            weights[i] == 0,
            "backend {i} (weight {})",
            weights[i]
        );
    }
    // Weight 0 is the same as leaving the backend out: the same names own the same slots.
    let without: Vec<Backend> = with_zeros
        .iter()
        .copied()
        .filter(|b| b.weight > 0)
        .collect();
    let table_without = build(&without, DEFAULT_TABLE_SIZE).expect("valid input");
    assert_eq!(
        owners(&table, &with_zeros),
        owners(&table_without, &without)
    );
}

#[test]
fn no_backend_in_rotation_gives_an_empty_table() {
    let names = names(3);
    for backends in [vec![], backends(&names, &[0, 0, 0])] {
        let table = build(&backends, DEFAULT_TABLE_SIZE).expect("valid input");
        assert!(table.is_empty());
        assert_eq!(table.size(), DEFAULT_TABLE_SIZE);
        assert!(table.slots().iter().all(|&s| s == NO_BACKEND));
        assert_eq!(table.lookup(0), None);
        assert_eq!(table.lookup(flow_hashes()[0]), None);
    }
    let one = build(&backends(&names, &[0, 7, 0]), 251).expect("valid input");
    assert!(!one.is_empty());
    assert!(
        one.slots().iter().all(|&s| s == 1),
        "a single backend owns every slot"
    );
}

#[test]
fn lookup_is_the_slot_of_the_flow_hash() {
    let names = names(4);
    let table = build(&backends(&names, &[1, 2, 3, 4]), DEFAULT_TABLE_SIZE).expect("valid");
    for &h in &flow_hashes()[..1000] {
        // The multiply-shift range reduction: hash * size / 2^32.
        let slot = table.slots()[((u64::from(h) * u64::from(DEFAULT_TABLE_SIZE)) >> 32) as usize];
        assert_eq!(table.lookup(h), Some(slot as usize));
    }
    // Its ends: every hash has a slot, the last hash the last slot.
    assert_eq!(slot_index(0, DEFAULT_TABLE_SIZE), 0);
    assert_eq!(
        slot_index(u32::MAX, DEFAULT_TABLE_SIZE),
        DEFAULT_TABLE_SIZE - 1
    );
    assert_eq!(slot_index(u32::MAX, 251), 250);
}

#[test]
fn many_backends_each_get_their_slots() {
    let names = names(100);
    let weights = vec![1; 100];
    let table = build(&backends(&names, &weights), DEFAULT_TABLE_SIZE).expect("valid input");
    let counts = table.entry_counts(100);
    // 65,537 / 100 = 655.4 each, within rounding.
    assert!(
        counts.iter().all(|&c| (654..=657).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let names = names(2);
    let ok = backends(&names, &[1, 1]);
    for size in [0, 1, 4, 65_536, 65_535] {
        assert_eq!(build(&ok, size), Err(MaglevError::SizeNotPrime(size)));
    }
    for size in [2, 3, 13, 251, 4093, DEFAULT_TABLE_SIZE] {
        assert!(build(&ok, size).is_ok(), "{size} is prime");
    }
    let dup = [
        Backend {
            name: "a",
            weight: 1,
        },
        Backend {
            name: "b",
            weight: 1,
        },
        Backend {
            name: "a",
            weight: 0,
        },
    ];
    assert_eq!(
        build(&dup, 13),
        Err(MaglevError::DuplicateName("a".to_owned()))
    );
}
