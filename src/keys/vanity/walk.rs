//! One thread's walk through consecutive candidate keys, at about five field multiplications
//! per candidate and no scalar multiplication.
//!
//! A walk starts from a random ed25519 expanded key `a ‖ h` (SHA-512 of a random seed, clamped
//! as RFC 8032 §5.1.5 does) and tries the public keys of `a + 8k` for k = 0, 1, 2, …, keeping h.
//! Adding multiples of 8 keeps the scalar clamped (low three bits clear, bit 254 set, bit 255
//! clear) until it would pass 2^255, which `Walk::key_at` checks for every hit. Since
//! (a + 8k)·B = A + k·(8B), the public keys are points spaced by 8B.
//!
//! The points are visited in batches around a centre C (offset k_c) with a table of
//! Q_j = j·8B (j = 1..M): the batch is C, C + Q_j and C − Q_j, that is offsets k_c − M ..= k_c + M.
//! An onion address depends only on the y coordinate (for prefixes shorter than 52 characters),
//! and with affine C = (x1, y1) and Q_j = (x2, y2) the twisted Edwards addition law gives
//!
//! ```text
//!     y(C + Q_j) = (y1·y2 + x1·x2) / (1 − c)      y(C − Q_j) = (y1·y2 − x1·x2) / (1 + c)
//!     with c = d·x1·x2·y1·y2 = (x1·y1)·(d·x2·y2)
//! ```
//!
//! so both candidates share the products a = y1·y2, b = x1·x2 and c (d·x2·y2 is in the table).
//! Writing D = (1 − c)(1 + c) = 1 − c², the two quotients are (a + b)(1 + c)/D and (a − b)(1 − c)/D:
//! one inversion per pair. On ed25519 (d is not a square) 1 ± c is never zero, so neither is D.
//! All inversions of a batch, plus the one that makes the next centre affine, are done with
//! Montgomery's trick: a running product forward, one field inversion, and the individual
//! inverses peeled off backward (three multiplications per pair). Per pair: a, b, c, the two
//! numerators, c², three for the inversion and two for the quotients: ten multiplications and
//! a squaring for two candidates.
//!
//! The arithmetic runs on an [`Engine`] that handles `LANES` pairs per value (1, or 4 with
//! AVX2). Each lane keeps its own running product; the lanes' totals and the next centre's Z
//! then share one inversion.

use zeroize::Zeroizing;

use super::engine::Engine;
use super::field::Fe;
use super::point::{AffinePoint, ExtendedPoint};
use super::prefix::PrefixFilter;
use super::SearchError;
use crate::keys::onion_address::OnionAddress;
use crate::keys::MasterKey;

/// Pairs per batch in normal operation (M), rounded up to a multiple of the engine's lanes.
/// A batch holds 2M + 1 candidates and costs one field inversion. Measured on our machines,
/// 1024 was the fastest of 256 to 2048: smaller batches pay for the inversion (about 4 % of a
/// batch at this size) more often, larger ones (table and scratch take about 560 bytes per
/// pair with AVX2) spill out of a 512 KiB level-2 cache.
pub(super) const PAIRS_PER_BATCH: usize = 1024;

/// The precomputed multiples of 8B that every walk shares (read-only), grouped by lanes.
pub(super) struct OffsetTable<E: Engine> {
    engine: E,
    /// Group g, lane l describes Q_j = j·8B for j = g·LANES + l + 1.
    groups: Vec<TableGroup<E>>,
    /// Q_M, to put the first centre M steps after the walk's start (so no offset is negative).
    first_centre_offset: ExtendedPoint,
    /// (2M + 1)·8B, from one batch centre to the next.
    centre_step: ExtendedPoint,
}

#[derive(Clone, Copy)]
struct TableGroup<E: Engine> {
    x: E::Elem,
    y: E::Elem,
    /// d·x·y
    dxy: E::Elem,
}

impl<E: Engine> OffsetTable<E> {
    /// The table for batches of at least `pairs` pairs (M; rounded up to whole groups).
    pub(super) fn new(engine: E, pairs: usize) -> OffsetTable<E> {
        let pairs = pairs.max(1).div_ceil(E::LANES) * E::LANES;
        let eight_b = base_point().to_extended().mul_public(8);
        let mut points = Vec::with_capacity(pairs);
        let mut q = eight_b;
        for _ in 0..pairs {
            points.push(q);
            q = q.add(&eight_b);
        }
        let mut z_inverses: Vec<Fe> = points.iter().map(ExtendedPoint::z).collect();
        invert_all(&mut z_inverses);
        let affine: Vec<AffinePoint> = points
            .iter()
            .zip(&z_inverses)
            .map(|(point, z_inv)| point.to_affine_with(z_inv))
            .collect();
        let groups = affine
            .chunks_exact(E::LANES)
            .map(|chunk| {
                let xs: Vec<Fe> = chunk.iter().map(|p| p.x).collect();
                let ys: Vec<Fe> = chunk.iter().map(|p| p.y).collect();
                let dxys: Vec<Fe> = chunk.iter().map(|p| Fe::D.mul(&p.x).mul(&p.y)).collect();
                TableGroup {
                    x: engine.gather(&xs),
                    y: engine.gather(&ys),
                    dxy: engine.gather(&dxys),
                }
            })
            .collect();
        OffsetTable {
            engine,
            groups,
            first_centre_offset: points[pairs - 1],
            centre_step: eight_b.mul_public(2 * pairs as u64 + 1),
        }
    }

    fn pairs(&self) -> usize {
        self.groups.len() * E::LANES
    }

    /// Candidates per batch: 2M + 1.
    pub(super) fn batch_len(&self) -> u64 {
        2 * self.pairs() as u64 + 1
    }
}

/// The ed25519 base point, decoded from curve25519-dalek's encoding of it.
fn base_point() -> AffinePoint {
    use curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED;
    // The standard base point is a valid canonical encoding, so decoding cannot fail
    // (`point::tests` checks it against dalek on every test run).
    AffinePoint::decompress(ED25519_BASEPOINT_COMPRESSED.as_bytes())
        .expect("the ed25519 base point decompresses")
}

/// Replaces every element by its inverse with one field inversion (Montgomery's trick). For
/// the cold path; no element may be zero.
fn invert_all(elements: &mut [Fe]) {
    let mut prefix = Vec::with_capacity(elements.len());
    let mut running = Fe::ONE;
    for element in elements.iter() {
        prefix.push(running);
        running = running.mul(element);
    }
    let mut inverse = running.invert();
    for (element, before) in elements.iter_mut().zip(&prefix).rev() {
        let original = *element;
        *element = inverse.mul(before);
        inverse = inverse.mul(&original);
    }
}

/// Per-group values kept between the forward and backward passes of a batch.
#[derive(Clone, Copy)]
struct GroupScratch<E: Engine> {
    /// (a + b)(1 + c): numerator of y(C + Q_j) over D.
    plus: E::Elem,
    /// (a − b)(1 − c): numerator of y(C − Q_j) over D.
    minus: E::Elem,
    /// D = 1 − c².
    denominator: E::Loose,
    /// Per lane, the product of this lane's denominators up to this group (Montgomery's
    /// prefix product; each lane is its own chain).
    prefix: E::Elem,
}

/// One thread's position in its walk, and the scratch space for a batch.
pub(super) struct Walk<E: Engine> {
    /// The key at offset 0 (its secret is wiped on drop).
    start: MasterKey,
    centre: AffinePoint,
    /// k_c: the centre's public key is that of `a + 8·k_c`.
    centre_offset: u64,
    scratch: Vec<GroupScratch<E>>,
}

impl<E: Engine> Walk<E> {
    /// A walk from a fresh random key (from the operating system's generator).
    pub(super) fn new(table: &OffsetTable<E>) -> Result<Walk<E>, SearchError> {
        Walk::from_start(table, MasterKey::generate()?)
    }

    /// A walk whose offset 0 is `start_key`.
    fn from_start(table: &OffsetTable<E>, start_key: MasterKey) -> Result<Walk<E>, SearchError> {
        let start = AffinePoint::decompress(&start_key.public_key()).ok_or(SearchError::Bug(
            "a public key computed by dalek does not decode",
        ))?;
        let first_centre = start.to_extended().add(&table.first_centre_offset);
        let engine = table.engine;
        let zero = engine.splat(&Fe::ZERO);
        Ok(Walk {
            start: start_key,
            centre: first_centre.to_affine(),
            centre_offset: table.pairs() as u64,
            scratch: vec![
                GroupScratch {
                    plus: zero,
                    minus: zero,
                    denominator: engine.add(&zero, &zero),
                    prefix: zero,
                };
                table.groups.len()
            ],
        })
    }

    /// Visits the next batch of 2M + 1 candidates: calls `visit(y, k)` for each candidate
    /// whose public key matches `filter`, with its affine y coordinate and its offset k (the
    /// candidate's secret scalar is `a + 8k`).
    #[inline(always)]
    pub(super) fn next_batch(
        &mut self,
        table: &OffsetTable<E>,
        filter: &PrefixFilter,
        mut visit: impl FnMut(&Fe, u64),
    ) {
        let e = table.engine;
        let lanes = E::LANES;
        let AffinePoint { x: x1, y: y1 } = self.centre;
        let centre_offset = self.centre_offset;
        if filter.matches(&y1.to_bytes()) {
            visit(&y1, centre_offset);
        }
        let t1 = x1.mul(&y1);
        let (x1s, y1s, t1s) = (e.splat(&x1), e.splat(&y1), e.splat(&t1));
        let one = e.splat(&Fe::ONE);

        // Forward pass: numerators, denominators and each lane's running product.
        for g in 0..self.scratch.len() {
            let group = &table.groups[g];
            let a = e.mul(&y1s, &group.y);
            let b = e.mul(&x1s, &group.x);
            let c = e.mul(&t1s, &group.dxy);
            let plus = e.mul_loose(&e.add(&a, &b), &e.add(&one, &c));
            let minus = e.mul_loose(&e.sub(&a, &b), &e.sub(&one, &c));
            let denominator = e.sub(&one, &e.square(&c));
            let prefix = match g {
                0 => e.mul_mixed(&denominator, &one),
                _ => e.mul_mixed(&denominator, &self.scratch[g - 1].prefix),
            };
            let scratch = &mut self.scratch[g];
            scratch.plus = plus;
            scratch.minus = minus;
            scratch.denominator = denominator;
            scratch.prefix = prefix;
        }
        let running = &self.scratch[self.scratch.len() - 1].prefix;

        // One inversion for every lane's product and the next centre's Z.
        let next_centre = AffinePoint { x: x1, y: y1 }
            .to_extended()
            .add(&table.centre_step);
        let mut inverses: Vec<Fe> = (0..lanes).map(|lane| e.lane(running, lane)).collect();
        inverses.push(next_centre.z());
        invert_all(&mut inverses);
        let next_z_inverse = inverses[lanes];
        // Per lane: 1 / (product of all of the lane's denominators).
        let mut suffix_inverse = e.gather(&inverses[..lanes]);

        // Backward pass: peel one denominator off each lane's inverted product at a time.
        for g in (0..self.scratch.len()).rev() {
            let scratch = &self.scratch[g];
            let (y_plus, y_minus) = match g {
                0 => (
                    e.mul(&scratch.plus, &suffix_inverse),
                    e.mul(&scratch.minus, &suffix_inverse),
                ),
                _ => {
                    let pair_inverse = e.mul(&suffix_inverse, &self.scratch[g - 1].prefix);
                    suffix_inverse = e.mul_mixed(&scratch.denominator, &suffix_inverse);
                    (
                        e.mul(&scratch.plus, &pair_inverse),
                        e.mul(&scratch.minus, &pair_inverse),
                    )
                }
            };
            // Lane l of group g is pair j = g·LANES + l, at offsets k_c ± (j + 1).
            let first_step = (g * lanes) as u64 + 1;
            let plus_offset = |lane: u32| centre_offset + first_step + u64::from(lane);
            let minus_offset = |lane: u32| centre_offset - (first_step + u64::from(lane));
            visit_matching(e, &y_plus, filter, plus_offset, &mut visit);
            visit_matching(e, &y_minus, filter, minus_offset, &mut visit);
        }

        self.centre = next_centre.to_affine_with(&next_z_inverse);
        self.centre_offset += table.batch_len();
    }

    /// The key at offset `k` of this walk, rebuilt from scratch and verified: the scalar
    /// `a + 8k` (with the walk's own h), still clamped, its public key from a full scalar
    /// multiplication, whose address starts with `prefix` and survives a round trip through
    /// the address parser (checksum included). `Ok(None)`: the scalar ran past 2^255 and the
    /// walk must restart (about once in 2^200 walks). An address that does not match is a bug
    /// in the batch arithmetic and is reported as such, never written.
    pub(super) fn key_at(
        &self,
        k: u64,
        prefix: &super::VanityPrefix,
    ) -> Result<Option<MasterKey>, SearchError> {
        let mut expanded = Zeroizing::new(*self.start.expanded_secret());
        if !add_multiple_of_8(&mut expanded[..32], k) {
            return Ok(None);
        }
        let Ok(key) = MasterKey::from_expanded(&expanded) else {
            return Ok(None); // not clamped any more: bit 255 got set
        };
        let address = key.onion_address();
        if !prefix.matches(&address) {
            return Err(SearchError::Bug(
                "a batch candidate's address does not match after a full re-derivation",
            ));
        }
        let reparsed: Result<OnionAddress, _> = address.to_string().parse();
        if reparsed.as_ref() != Ok(&address) {
            return Err(SearchError::Bug("a found address does not parse back"));
        }
        Ok(Some(key))
    }
}

/// Calls `visit` for each lane of `y` whose exact encoding matches `filter`.
#[inline(always)]
fn visit_matching<E: Engine>(
    e: E,
    y: &E::Elem,
    filter: &PrefixFilter,
    offset_of_lane: impl Fn(u32) -> u64,
    visit: &mut impl FnMut(&Fe, u64),
) {
    let mut maybe = e.lanes_maybe_matching(y, filter);
    while maybe != 0 {
        let lane = maybe.trailing_zeros();
        maybe &= maybe - 1;
        let candidate = e.lane(y, lane as usize);
        if filter.matches(&candidate.to_bytes()) {
            visit(&candidate, offset_of_lane(lane));
        }
    }
}

/// `scalar += 8·k` on a 32-byte little-endian number; false if the sum does not fit.
fn add_multiple_of_8(scalar: &mut [u8], k: u64) -> bool {
    let mut carry = u128::from(k) << 3;
    for byte in scalar.iter_mut() {
        let sum = u128::from(*byte) + (carry & 0xff);
        *byte = sum as u8;
        carry = (carry >> 8) + (sum >> 8);
    }
    carry == 0
}

#[cfg(test)]
mod tests {
    use super::super::engine::Serial;
    #[cfg(target_arch = "x86_64")]
    use super::super::field_avx2::Avx2;
    use super::super::VanityPrefix;
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::Scalar;
    use std::collections::BTreeMap;

    /// The y coordinate (public key without the sign bit) of `(a + 8k)·B`, the slow way.
    fn expected_y<E: Engine>(walk: &Walk<E>, k: u64) -> [u8; 32] {
        let mut scalar = [0u8; 32];
        scalar.copy_from_slice(&walk.start.expanded_secret()[..32]);
        assert!(add_multiple_of_8(&mut scalar, k));
        let mut y = (ED25519_BASEPOINT_POINT * Scalar::from_bytes_mod_order(scalar))
            .compress()
            .to_bytes();
        y[31] &= 0x7f;
        y
    }

    /// Every candidate of the next batch, by offset.
    fn run_batch<E: Engine>(walk: &mut Walk<E>, table: &OffsetTable<E>) -> BTreeMap<u64, [u8; 32]> {
        let mut seen = BTreeMap::new();
        walk.next_batch(table, &PrefixFilter::ANY, |y, k| {
            assert!(seen.insert(k, y.to_bytes()).is_none(), "offset {k} twice");
        });
        seen
    }

    /// Runs three batches from each of many random starts and compares every candidate with
    /// curve25519-dalek: the start's public key by scalar multiplication, then each following
    /// offset by adding 8B, and at each batch's last offset a fresh scalar multiplication.
    fn batches_match_plain_curve_arithmetic<E: Engine>(engine: E) {
        let eight_b = ED25519_BASEPOINT_POINT * Scalar::from(8u8);
        // Pairs per batch: one or two groups of lanes, so every lane position is exercised.
        for pairs in [E::LANES, 2 * E::LANES + 1] {
            let table = OffsetTable::new(engine, pairs);
            let batch_len = table.batch_len();
            for _ in 0..12 {
                let mut walk = Walk::new(&table).unwrap();
                let mut scalar = [0u8; 32];
                scalar.copy_from_slice(&walk.start.expanded_secret()[..32]);
                let mut expected = ED25519_BASEPOINT_POINT * Scalar::from_bytes_mod_order(scalar);
                for batch in 0..3u64 {
                    let seen = run_batch(&mut walk, &table);
                    // Each batch covers the next 2M + 1 offsets exactly: no gap, no overlap.
                    let first = batch * batch_len;
                    let offsets: Vec<u64> = seen.keys().copied().collect();
                    assert_eq!(offsets, (first..first + batch_len).collect::<Vec<_>>());
                    for (k, y) in &seen {
                        let mut expected_y = expected.compress().to_bytes();
                        expected_y[31] &= 0x7f;
                        assert_eq!(*y, expected_y, "offset {k}");
                        expected += eight_b;
                    }
                    let last = first + batch_len - 1;
                    assert_eq!(seen[&last], expected_y(&walk, last));
                }
            }
        }
    }

    #[test]
    fn serial_batches_match_plain_curve_arithmetic_for_many_random_starts() {
        batches_match_plain_curve_arithmetic(Serial);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_batches_match_plain_curve_arithmetic_for_many_random_starts() {
        match Avx2::detect() {
            Some(avx2) => batches_match_plain_curve_arithmetic(avx2),
            None => eprintln!("no AVX2 on this processor: skipping"),
        }
    }

    fn full_size_batch_matches_at_sampled_offsets<E: Engine>(engine: E) {
        let table = OffsetTable::new(engine, PAIRS_PER_BATCH);
        let mut walk = Walk::new(&table).unwrap();
        run_batch(&mut walk, &table);
        let seen = run_batch(&mut walk, &table);
        assert_eq!(seen.len() as u64, table.batch_len());
        for (k, y) in seen.iter().step_by(97) {
            assert_eq!(*y, expected_y(&walk, *k), "offset {k}");
        }
        let (last, y) = seen.iter().next_back().unwrap();
        assert_eq!(*y, expected_y(&walk, *last));
    }

    #[test]
    fn full_size_batches_match_at_sampled_offsets() {
        full_size_batch_matches_at_sampled_offsets(Serial);
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = Avx2::detect() {
            full_size_batch_matches_at_sampled_offsets(avx2);
        }
    }

    #[test]
    fn the_filter_passes_exactly_the_matching_candidates() {
        #[cfg(target_arch = "x86_64")]
        let Some(engine) = Avx2::detect() else {
            return;
        };
        #[cfg(not(target_arch = "x86_64"))]
        let engine = Serial;
        let table = OffsetTable::new(engine, 64);
        let start = MasterKey::generate().unwrap();
        let same_start = MasterKey::from_expanded(start.expanded_secret()).unwrap();
        let mut unfiltered = Walk::from_start(&table, start).unwrap();
        let mut filtered = Walk::from_start(&table, same_start).unwrap();
        let prefix: VanityPrefix = "q".parse().unwrap();
        let mut everything = BTreeMap::new();
        let mut matching = Vec::new();
        for _ in 0..4 {
            everything.extend(run_batch(&mut unfiltered, &table));
            filtered.next_batch(&table, &prefix.filter(), |_, k| matching.push(k));
        }
        let expected: Vec<u64> = everything
            .iter()
            .filter(|(_, y)| {
                OnionAddress::from_public_key(**y)
                    .to_string()
                    .starts_with('q')
            })
            .map(|(k, _)| *k)
            .collect();
        matching.sort();
        assert_eq!(matching, expected);
        assert!(!expected.is_empty());
    }

    #[test]
    fn a_hit_is_rebuilt_into_a_clamped_key_with_the_same_address() {
        let table = OffsetTable::new(Serial, 64);
        let mut walk = Walk::new(&table).unwrap();
        let prefix: VanityPrefix = "a".parse().unwrap();
        let mut hits = Vec::new();
        while hits.len() < 5 {
            walk.next_batch(&table, &prefix.filter(), |_, k| hits.push(k));
        }
        for k in hits {
            let key = walk.key_at(k, &prefix).unwrap().expect("no overflow here");
            assert!(key.onion_address().to_string().starts_with('a'));
            assert_eq!(
                &key.expanded_secret()[32..],
                &walk.start.expanded_secret()[32..]
            );
        }
        // A prefix that the candidate does not have is a bug report, never a key.
        let start_address = walk.start.onion_address().to_string();
        let other = if start_address.starts_with('b') {
            "c"
        } else {
            "b"
        };
        assert!(matches!(
            walk.key_at(0, &other.parse().unwrap()),
            Err(SearchError::Bug(_))
        ));
    }

    #[test]
    fn offsets_that_leave_the_clamped_range_are_refused() {
        let mut scalar = [0u8; 32];
        scalar[31] = 0x7f;
        scalar[..31].fill(0xff);
        scalar[0] = 0xf8;
        let mut bumped = scalar;
        assert!(add_multiple_of_8(&mut bumped, 0));
        assert!(add_multiple_of_8(&mut bumped, 1)); // fits in 32 bytes but sets bit 255
        assert_eq!(bumped[31], 0x80);
        let mut full = [0xffu8; 32];
        assert!(!add_multiple_of_8(&mut full, 1));
    }
}
