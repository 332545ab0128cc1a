//! Choosing which backend introduction points go into the master descriptor.
//!
//! A client picks an introduction point from the descriptor at random, so a backend's share
//! of the traffic is its share of the listed introduction points. The merge is therefore
//! round-robin: every healthy backend gives its first introduction point, then its second,
//! and so on, until the cap of 20 (rend-spec-v3 §2.5.2.2: clients reject more) or the
//! backends run out. When there are more introduction points than places, which backends get
//! the extra places rotates with `seed`, so no backend is always the one cut short.
//!
//! No two listed introduction points may sit on the same relay. A C-tor client that picks an
//! introduction point builds a circuit to its relay and then, once the circuit is open, looks
//! up *which* introduction point it reached by the relay's identity: the first one listed on
//! that relay (tor's `setup_intro_circ_auth_key`). A C-tor service never lists two on one
//! relay, but backends choose their relays independently, so a merged list can: every later
//! one on a shared relay then leads to the first one's backend, and a backend whose every
//! introduction point sits behind another's is never reached at all (measured: 8 backends
//! with 3 each on a 9-relay network, 20 listed, 5 backends reached in 100 fetches). The merge
//! therefore lists at most one introduction point per relay, chosen so that as many backends
//! as possible are listed: first one introduction point per backend on relays of their own (a
//! maximum matching of backends to relays, backends taken in the seed's rotated order, each
//! trying its introduction points from one the seed chooses), then the rest round-robin on
//! relays still free. The others are left out.
//!
//! A descriptor must also stay strictly below the HSDirs' size limit. Whether a list fits is
//! only known by building the signed descriptor, so the caller supplies that test; the
//! longest fitting prefix of the round-robin order is found by bisection (the test is
//! monotone: dropping introduction points never makes a descriptor larger). The test is
//! called with ever longer fitting prefixes, so the caller may keep the last descriptor that
//! fitted: it is the one for the returned list.
//!
//! Pure and deterministic: same input and seed, same output.

/// One backend's introduction points, in the order its own descriptor lists them.
#[derive(Debug, Clone)]
pub struct BackendIntroPoints<'a, T> {
    pub backend: &'a str,
    pub intro_points: &'a [T],
}

/// Why introduction points were left out of the merged list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOutReason {
    /// Another listed introduction point sits on the same relay (a client could not use it).
    SharedRelay,
    /// The descriptor already lists the maximum number of introduction points.
    Cap,
    /// Listing them would make the descriptor too large for the HSDirs.
    Size,
}

/// Introduction points of one backend that did not make it into the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub backend: String,
    pub count: usize,
    pub reason: LeftOutReason,
}

/// The merge's result: what goes into the descriptor, and what did not and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged<T> {
    pub intro_points: Vec<T>,
    /// The backend each entry of `intro_points` came from (same order).
    pub sources: Vec<String>,
    pub left_out: Vec<LeftOut>,
}

/// Merge round-robin, one introduction point per relay (`relay_of` names an introduction
/// point's relay), at most `cap` entries, the longest prefix for which `fits` holds.
pub fn merge<T: Clone, R: Eq + std::hash::Hash>(
    backends: &[BackendIntroPoints<'_, T>],
    cap: usize,
    seed: u64,
    relay_of: impl Fn(&T) -> R,
    mut fits: impl FnMut(&[T]) -> bool,
) -> Merged<T> {
    let (order, shared_relay) = one_per_relay_order(backends, seed, relay_of);
    let capped = order.len().min(cap);

    let candidates: Vec<T> = order
        .iter()
        .map(|&(backend, index)| backends[backend].intro_points[index].clone())
        .collect();

    // Largest n <= capped with fits(candidates[..n]); fits(&[]) is taken as true. The whole
    // capped list nearly always fits (20 introduction points take about 20 KB of 50 KB), so
    // it is tried first: one build in the common case.
    let (mut fitting, mut too_long) = if capped > 0 && fits(&candidates[..capped]) {
        (capped, capped + 1)
    } else {
        (0, capped)
    };
    while fitting + 1 < too_long {
        let middle = (fitting + too_long) / 2;
        if fits(&candidates[..middle]) {
            fitting = middle;
        } else {
            too_long = middle;
        }
    }

    let mut left_out = Vec::new();
    for (entries, reason) in [
        (&shared_relay[..], LeftOutReason::SharedRelay),
        (&order[fitting..capped], LeftOutReason::Size),
        (&order[capped..], LeftOutReason::Cap),
    ] {
        for (backend_index, backend) in backends.iter().enumerate() {
            let count = entries.iter().filter(|(b, _)| *b == backend_index).count();
            if count > 0 {
                left_out.push(LeftOut {
                    backend: backend.backend.to_owned(),
                    count,
                    reason,
                });
            }
        }
    }

    let mut intro_points = candidates;
    intro_points.truncate(fitting);
    Merged {
        sources: order[..fitting]
            .iter()
            .map(|&(b, _)| backends[b].backend.to_owned())
            .collect(),
        intro_points,
        left_out,
    }
}

/// An introduction point by position: (backend index, index in that backend's list).
type Entry = (usize, usize);

/// The order in which introduction points are listed, one per relay, and those left out
/// because their relay is taken. First one introduction point for every backend that can
/// have a relay of its own (a maximum matching, found with augmenting paths: a backend whose
/// relays are all taken may move an earlier backend to another of its relays), in
/// round-robin order; then the remaining introduction points in round-robin order, each
/// if its relay is still free.
fn one_per_relay_order<T, R: Eq + std::hash::Hash>(
    backends: &[BackendIntroPoints<'_, T>],
    seed: u64,
    relay_of: impl Fn(&T) -> R,
) -> (Vec<Entry>, Vec<Entry>) {
    // Relays as small numbers, per backend and introduction point.
    let mut relay_numbers = std::collections::HashMap::new();
    let relays: Vec<Vec<usize>> = backends
        .iter()
        .map(|backend| {
            backend
                .intro_points
                .iter()
                .map(|ip| {
                    let next = relay_numbers.len();
                    *relay_numbers.entry(relay_of(ip)).or_insert(next)
                })
                .collect()
        })
        .collect();

    let round_robin = round_robin_order(backends, seed);
    // Which of its introduction points a backend tries first for a relay of its own turns with
    // the seed too: merges with seeds `first + k * backends` start the round-robin at the same
    // backend but, where the relays allow several choices, list different introduction points.
    let preference_shift = (seed / backends.len().max(1) as u64) as usize;
    // Backends in the order of their first turn.
    let backend_turns: Vec<usize> = round_robin
        .iter()
        .filter(|(_, index)| *index == 0)
        .map(|(backend, _)| *backend)
        .collect();
    // relay -> (backend, introduction point) holding it in the matching.
    let mut holder: Vec<Option<(usize, usize)>> = vec![None; relay_numbers.len()];
    for &backend in &backend_turns {
        let mut visited = vec![false; relay_numbers.len()];
        assign(
            backend,
            &relays,
            preference_shift,
            &mut holder,
            &mut visited,
        );
    }
    let mut matched: Vec<Option<usize>> = vec![None; backends.len()];
    for (backend, index) in holder.iter().flatten() {
        matched[*backend] = Some(*index);
    }

    let mut taken = vec![false; relay_numbers.len()];
    let mut order = Vec::new();
    for &backend in &backend_turns {
        if let Some(index) = matched[backend] {
            taken[relays[backend][index]] = true;
            order.push((backend, index));
        }
    }
    let mut shared = Vec::new();
    for (backend, index) in round_robin {
        if matched[backend] == Some(index) {
            continue;
        }
        let relay = relays[backend][index];
        if taken[relay] {
            shared.push((backend, index));
        } else {
            taken[relay] = true;
            order.push((backend, index));
        }
    }
    (order, shared)
}

/// Kuhn's augmenting path from `backend`: give it a free relay of one of its introduction
/// points (tried from the `shift`-th on), or one whose holder can move to another of its own.
/// Depth at most the number of backends.
fn assign(
    backend: usize,
    relays: &[Vec<usize>],
    shift: usize,
    holder: &mut [Option<(usize, usize)>],
    visited: &mut [bool],
) -> bool {
    let count = relays[backend].len();
    for index in (0..count).map(|k| (k + shift) % count) {
        let relay = relays[backend][index];
        if visited[relay] {
            continue;
        }
        visited[relay] = true;
        let free = match holder[relay] {
            None => true,
            Some((other, _)) => assign(other, relays, shift, holder, visited),
        };
        if free {
            holder[relay] = Some((backend, index));
            return true;
        }
    }
    false
}

/// `(backend index, intro point index)` pairs: round 0 of every backend, then round 1, ...;
/// within a round, backends start at `seed % backends` and wrap around.
fn round_robin_order<T>(backends: &[BackendIntroPoints<'_, T>], seed: u64) -> Vec<(usize, usize)> {
    let count = backends.len();
    if count == 0 {
        return Vec::new();
    }
    let first = (seed % count as u64) as usize;
    let rounds = backends
        .iter()
        .map(|b| b.intro_points.len())
        .max()
        .unwrap_or(0);
    let mut order = Vec::new();
    for round in 0..rounds {
        for offset in 0..count {
            let backend = (first + offset) % count;
            if round < backends[backend].intro_points.len() {
                order.push((backend, round));
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(backend: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{backend}{i}")).collect()
    }

    fn input<'a>(lists: &'a [(&'a str, Vec<String>)]) -> Vec<BackendIntroPoints<'a, String>> {
        lists
            .iter()
            .map(|(name, ips)| BackendIntroPoints {
                backend: name,
                intro_points: ips,
            })
            .collect()
    }

    fn count_from(merged: &Merged<String>, backend: &str) -> usize {
        merged.sources.iter().filter(|s| *s == backend).count()
    }

    #[test]
    fn each_backend_contributes_in_turn() {
        let lists = [("a", points("a", 3)), ("b", points("b", 3))];
        let merged = merge(&input(&lists), 20, 0, String::clone, |_| true);
        assert_eq!(merged.intro_points, ["a0", "b0", "a1", "b1", "a2", "b2"]);
        assert!(merged.left_out.is_empty());
    }

    #[test]
    fn the_cap_is_shared_fairly_and_reported() {
        // 4 backends × 10 intro points, cap 20: each backend gets exactly 5.
        let lists: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| (*n, points(n, 10)))
            .collect();
        let merged = merge(&input(&lists), 20, 7, String::clone, |_| true);
        assert_eq!(merged.intro_points.len(), 20);
        for backend in ["a", "b", "c", "d"] {
            assert_eq!(count_from(&merged, backend), 5, "{backend}");
        }
        let capped: usize = merged
            .left_out
            .iter()
            .filter(|l| l.reason == LeftOutReason::Cap)
            .map(|l| l.count)
            .sum();
        assert_eq!(capped, 20);
    }

    #[test]
    fn one_introduction_point_per_relay() {
        // `<backend><n>@<relay>`: a's first and b's second share relay r1.
        let lists = [
            ("a", vec!["a0@r1".to_owned(), "a1@r2".to_owned()]),
            (
                "b",
                vec!["b0@r3".to_owned(), "b1@r1".to_owned(), "b2@r4".to_owned()],
            ),
        ];
        let relay = |ip: &String| ip.split('@').nth(1).unwrap().to_owned();
        let merged = merge(&input(&lists), 20, 0, relay, |_| true);
        assert_eq!(merged.intro_points, ["a0@r1", "b0@r3", "a1@r2", "b2@r4"]);
        assert_eq!(
            merged.left_out,
            [LeftOut {
                backend: "b".into(),
                count: 1,
                reason: LeftOutReason::SharedRelay
            }]
        );
        // c's only relay is a's first: a moves to its second, and every backend is listed.
        let lists = [
            ("a", vec!["a0@r1".to_owned(), "a1@r2".to_owned()]),
            ("c", vec!["c0@r1".to_owned()]),
        ];
        let merged = merge(&input(&lists), 20, 0, relay, |_| true);
        assert_eq!(merged.intro_points, ["a1@r2", "c0@r1"]);
        assert_eq!(merged.left_out[0].backend, "a");
    }

    /// Random small networks: relays never repeat, and as many backends are listed as any
    /// one-relay-each choice could list (found by trying every choice).
    #[test]
    fn as_many_backends_as_relays_allow() {
        let mut seed = 0x5eed_u64;
        let mut next = |bound: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % bound
        };
        for case in 0..300 {
            let backends = 1 + next(6) as usize;
            let relays = 1 + next(5);
            let lists: Vec<(String, Vec<String>)> = (0..backends)
                .map(|b| {
                    let count = 1 + next(3) as usize;
                    let ips = (0..count)
                        .map(|i| format!("b{b}i{i}@r{}", next(relays)))
                        .collect();
                    (format!("b{b}"), ips)
                })
                .collect();
            let input: Vec<BackendIntroPoints<'_, String>> = lists
                .iter()
                .map(|(name, ips)| BackendIntroPoints {
                    backend: name,
                    intro_points: ips,
                })
                .collect();
            let relay = |ip: &String| ip.split('@').nth(1).unwrap().to_owned();
            let merged = merge(&input, 20, case, relay, |_| true);
            let used: std::collections::HashSet<String> =
                merged.intro_points.iter().map(relay).collect();
            assert_eq!(
                used.len(),
                merged.intro_points.len(),
                "case {case}: a relay twice"
            );
            let listed: std::collections::HashSet<&String> = merged.sources.iter().collect();
            assert_eq!(
                listed.len(),
                best_cover(&lists, 0, &mut Vec::new()),
                "case {case}: {lists:?}"
            );
            let left: usize = merged.left_out.iter().map(|l| l.count).sum();
            let total: usize = lists.iter().map(|(_, ips)| ips.len()).sum();
            assert_eq!(merged.intro_points.len() + left, total, "case {case}");
        }
    }

    /// The most backends that can each have one introduction point on a relay of its own.
    fn best_cover(lists: &[(String, Vec<String>)], from: usize, used: &mut Vec<String>) -> usize {
        let Some((_, ips)) = lists.get(from) else {
            return 0;
        };
        let mut best = best_cover(lists, from + 1, used);
        for ip in ips {
            let relay = ip.split('@').nth(1).unwrap().to_owned();
            if !used.contains(&relay) {
                used.push(relay);
                best = best.max(1 + best_cover(lists, from + 1, used));
                used.pop();
            }
        }
        best
    }

    #[test]
    fn a_small_backend_leaves_its_places_to_the_others() {
        let lists = [("a", points("a", 1)), ("b", points("b", 30))];
        let merged = merge(&input(&lists), 20, 0, String::clone, |_| true);
        assert_eq!(count_from(&merged, "a"), 1);
        assert_eq!(count_from(&merged, "b"), 19);
    }

    #[test]
    fn the_seed_rotates_who_gets_the_odd_places() {
        // 3 backends × 7 = 21 intro points for 20 places: one backend loses one.
        let lists: Vec<_> = ["a", "b", "c"].iter().map(|n| (*n, points(n, 7))).collect();
        let losers: Vec<String> = (0..3)
            .map(|seed| {
                merge(&input(&lists), 20, seed, String::clone, |_| true).left_out[0]
                    .backend
                    .clone()
            })
            .collect();
        assert_eq!(losers.len(), 3);
        assert!(
            losers.contains(&"a".into())
                && losers.contains(&"b".into())
                && losers.contains(&"c".into())
        );
    }

    #[test]
    fn same_input_and_seed_give_the_same_output() {
        let lists: Vec<_> = ["a", "b", "c"].iter().map(|n| (*n, points(n, 9))).collect();
        assert_eq!(
            merge(&input(&lists), 20, 42, String::clone, |_| true),
            merge(&input(&lists), 20, 42, String::clone, |_| true)
        );
    }

    #[test]
    fn size_limit_keeps_the_longest_fitting_prefix() {
        let lists = [("a", points("a", 10)), ("b", points("b", 10))];
        // Pretend each intro point costs 1000 bytes and the limit is 12 500 bytes.
        let merged = merge(&input(&lists), 20, 0, String::clone, |ips| {
            ips.len() * 1000 < 12_500
        });
        assert_eq!(merged.intro_points.len(), 12);
        assert_eq!(count_from(&merged, "a"), 6);
        assert_eq!(count_from(&merged, "b"), 6);
        let sized: usize = merged
            .left_out
            .iter()
            .filter(|l| l.reason == LeftOutReason::Size)
            .map(|l| l.count)
            .sum();
        assert_eq!(sized, 8);
    }

    #[test]
    fn size_limit_boundary_is_strict() {
        // Exactly at the limit does not fit (tor rejects len >= limit); one below does.
        let lists = [("a", points("a", 5))];
        let at_limit = merge(&input(&lists), 20, 0, String::clone, |ips| {
            ips.len() * 1000 < 3000
        });
        assert_eq!(at_limit.intro_points.len(), 2);
        let below = merge(&input(&lists), 20, 0, String::clone, |ips| {
            ips.len() * 1000 < 3001
        });
        assert_eq!(below.intro_points.len(), 3);
    }

    #[test]
    fn a_list_that_fits_is_built_once() {
        let lists = [("a", points("a", 10)), ("b", points("b", 10))];
        let mut calls = Vec::new();
        let merged = merge(&input(&lists), 20, 0, String::clone, |ips| {
            calls.push(ips.len());
            true
        });
        assert_eq!(calls, [20]);
        assert_eq!(merged.intro_points.len(), 20);
    }

    #[test]
    fn the_last_fitting_call_is_the_final_list() {
        let lists = [("a", points("a", 10)), ("b", points("b", 10))];
        let mut last_fit = 0;
        let merged = merge(&input(&lists), 20, 0, String::clone, |ips| {
            let fits = ips.len() <= 13;
            if fits {
                last_fit = ips.len();
            }
            fits
        });
        assert_eq!(merged.intro_points.len(), 13);
        assert_eq!(last_fit, 13);
    }

    #[test]
    fn nothing_in_nothing_out() {
        let merged = merge(&[], 20, 0, String::clone, |_| true);
        assert!(merged.intro_points.is_empty() && merged.left_out.is_empty());
    }
}
