//! Choosing which backend introduction points go into the master descriptor.
//!
//! A client picks an introduction point from the descriptor at random, so a backend's share
//! of the traffic is its share of the listed introduction points. The merge is therefore
//! round-robin: every healthy backend gives its first introduction point, then its second,
//! and so on, until the cap of 20 (rend-spec-v3 §2.5.2.2: clients reject more) or the
//! backends run out. When there are more introduction points than places, which backends get
//! the extra places rotates with `seed`, so no backend is always the one cut short.
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

/// Merge round-robin, at most `cap` entries, the longest prefix for which `fits` holds.
pub fn merge<T: Clone>(
    backends: &[BackendIntroPoints<'_, T>],
    cap: usize,
    seed: u64,
    mut fits: impl FnMut(&[T]) -> bool,
) -> Merged<T> {
    let order = round_robin_order(backends, seed);
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
    for (range, reason) in [
        (fitting..capped, LeftOutReason::Size),
        (capped..order.len(), LeftOutReason::Cap),
    ] {
        for (backend_index, backend) in backends.iter().enumerate() {
            let count = order[range.clone()]
                .iter()
                .filter(|(b, _)| *b == backend_index)
                .count();
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
        let merged = merge(&input(&lists), 20, 0, |_| true);
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
        let merged = merge(&input(&lists), 20, 7, |_| true);
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
    fn a_small_backend_leaves_its_places_to_the_others() {
        let lists = [("a", points("a", 1)), ("b", points("b", 30))];
        let merged = merge(&input(&lists), 20, 0, |_| true);
        assert_eq!(count_from(&merged, "a"), 1);
        assert_eq!(count_from(&merged, "b"), 19);
    }

    #[test]
    fn the_seed_rotates_who_gets_the_odd_places() {
        // 3 backends × 7 = 21 intro points for 20 places: one backend loses one.
        let lists: Vec<_> = ["a", "b", "c"].iter().map(|n| (*n, points(n, 7))).collect();
        let losers: Vec<String> = (0..3)
            .map(|seed| {
                merge(&input(&lists), 20, seed, |_| true).left_out[0]
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
            merge(&input(&lists), 20, 42, |_| true),
            merge(&input(&lists), 20, 42, |_| true)
        );
    }

    #[test]
    fn size_limit_keeps_the_longest_fitting_prefix() {
        let lists = [("a", points("a", 10)), ("b", points("b", 10))];
        // Pretend each intro point costs 1000 bytes and the limit is 12 500 bytes.
        let merged = merge(&input(&lists), 20, 0, |ips| ips.len() * 1000 < 12_500);
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
        let at_limit = merge(&input(&lists), 20, 0, |ips| ips.len() * 1000 < 3000);
        assert_eq!(at_limit.intro_points.len(), 2);
        let below = merge(&input(&lists), 20, 0, |ips| ips.len() * 1000 < 3001);
        assert_eq!(below.intro_points.len(), 3);
    }

    #[test]
    fn a_list_that_fits_is_built_once() {
        let lists = [("a", points("a", 10)), ("b", points("b", 10))];
        let mut calls = Vec::new();
        let merged = merge(&input(&lists), 20, 0, |ips| {
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
        let merged = merge(&input(&lists), 20, 0, |ips| {
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
        let merged = merge::<String>(&[], 20, 0, |_| true);
        assert!(merged.intro_points.is_empty() && merged.left_out.is_empty());
    }
}
