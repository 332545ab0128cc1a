//! Four field elements at once with AVX2: the same arithmetic as `field.rs`, on four
//! independent values per instruction, for the search's hot loop.
//!
//! A field multiplication is mostly 64-bit products. x86-64's scalar multiplier does one per
//! cycle; AVX2's `vpmuludq` does four 32×32→64-bit products per instruction. To use it the
//! elements are split into ten limbs of alternately 26 and 25 bits (radix 2^25.5: limb i sits
//! at bit ⌈25.5·i⌉), and each 64-bit lane of a vector holds one limb of one of four elements.
//! This file is hand-written (fiat-crypto generates no vector code), so its bounds are spelled
//! out below and its results are checked against fiat-crypto's in the tests.
//!
//! Bounds, with w_i = 26 for even i and 25 for odd i:
//! - **tight** ([`Fe4`], output of a multiplication): limb i ≤ 2^w_i + 2^17. The value is then
//!   below 2^255 + 2^141 < 2p.
//! - **loose** ([`LooseFe4`], tight + tight, or tight − tight + 2p): limb i < 2^(w_i + 1.6).
//! - A multiplication takes loose inputs. `vpmuludq` reads only the low 32 bits of a lane, so
//!   every operand must be below 2^32: 19 × (an even loose limb) < 19 · 2^27.6 < 2^31.9, and
//!   2 × (an odd loose limb) < 2^27.6. Each of the ten products summed into one output limb is
//!   below 2^27.6 · 2^31.9 = 2^59.5, so the sum stays below 2^62.9: no lane overflows.
//! - Carrying the product (see [`reduce`]) leaves limb 1 ≤ 2^25 + 2^16.1, limb 5 ≤ 2^25 + 2^12
//!   and all others below 2^w_i: tight again.
//!
//! Everything is unsigned; subtraction adds 2p first so that no limb goes negative (each limb
//! of 2p is at least 2^26 − 2, more than any tight limb).
//!
//! Values of these types exist only once [`Avx2::detect`] has confirmed that the processor
//! supports AVX2, which is what makes their safe methods sound.

use core::arch::x86_64::{
    __m256i, _mm256_add_epi64, _mm256_and_si256, _mm256_castsi256_pd, _mm256_cmpeq_epi64,
    _mm256_movemask_pd, _mm256_mul_epu32, _mm256_or_si256, _mm256_set1_epi64x, _mm256_slli_epi64,
    _mm256_srli_epi64, _mm256_sub_epi64,
};

use super::field::Fe;

/// Proof that the running processor supports AVX2: the only way to create [`Fe4`] values.
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    /// `Some` if this processor has AVX2.
    pub(super) fn detect() -> Option<Avx2> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

/// Four field elements, tight (see the module documentation).
#[derive(Clone, Copy)]
pub(super) struct Fe4([__m256i; 10]);

/// Four field elements, loose: the result of one addition or subtraction.
#[derive(Clone, Copy)]
pub(super) struct LooseFe4([__m256i; 10]);

/// Bit widths of the ten limbs.
const WIDTH: [u32; 10] = [26, 25, 26, 25, 26, 25, 26, 25, 26, 25];

/// 2p in the limb representation: 2·(2^26 − 19), then 2·(2^w − 1).
const TWO_P: [u64; 10] = [
    (1 << 27) - 38,
    (1 << 26) - 2,
    (1 << 27) - 2,
    (1 << 26) - 2,
    (1 << 27) - 2,
    (1 << 26) - 2,
    (1 << 27) - 2,
    (1 << 26) - 2,
    (1 << 27) - 2,
    (1 << 26) - 2,
];

/// The lanes of a vector. Sound: `__m256i` is 32 bytes of plain data, like `[u64; 4]`.
#[inline(always)]
fn to_lanes(v: __m256i) -> [u64; 4] {
    // SAFETY: both types are 32 bytes and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<__m256i, [u64; 4]>(v) }
}

#[inline(always)]
fn from_lanes(lanes: [u64; 4]) -> __m256i {
    // SAFETY: as in `to_lanes`.
    unsafe { core::mem::transmute::<[u64; 4], __m256i>(lanes) }
}

/// Splits a tight radix-2^51 element into radix-2^25.5 limbs: each 51-bit limb of fiat's
/// representation is exactly one 26-bit and one 25-bit limb of ours.
fn split(x: &Fe) -> [u64; 10] {
    let wide = x.limbs();
    let mut limbs = [0u64; 10];
    for i in 0..5 {
        limbs[2 * i] = wide[i] & ((1 << 26) - 1);
        limbs[2 * i + 1] = wide[i] >> 26;
    }
    limbs
}

impl Avx2 {
    /// The same element in all four lanes.
    pub(super) fn splat(self, x: &Fe) -> Fe4 {
        let limbs = split(x);
        Fe4(core::array::from_fn(|i| from_lanes([limbs[i]; 4])))
    }

    /// Four elements, one per lane.
    pub(super) fn gather(self, xs: [&Fe; 4]) -> Fe4 {
        let limbs = xs.map(split);
        Fe4(core::array::from_fn(|i| {
            from_lanes([limbs[0][i], limbs[1][i], limbs[2][i], limbs[3][i]])
        }))
    }
}

impl Fe4 {
    /// The element in `lane` (0..4).
    pub(super) fn lane(&self, lane: usize) -> Fe {
        let mut wide = [0u64; 5];
        for (i, limb) in wide.iter_mut().enumerate() {
            let low = to_lanes(self.0[2 * i])[lane];
            let high = to_lanes(self.0[2 * i + 1])[lane];
            // At most 2^26 + 2^17 + (2^25 + 2^17)·2^26 < 3·2^51: fiat's loose bound.
            *limb = low + (high << 26);
        }
        Fe::from_loose_limbs(wide)
    }

    #[inline(always)]
    pub(super) fn relax(&self) -> LooseFe4 {
        LooseFe4(self.0)
    }

    #[inline(always)]
    pub(super) fn add(&self, other: &Fe4) -> LooseFe4 {
        // SAFETY (all intrinsics in this file): an `Fe4` exists only after `Avx2::detect`.
        LooseFe4(core::array::from_fn(|i| unsafe {
            _mm256_add_epi64(self.0[i], other.0[i])
        }))
    }

    #[inline(always)]
    pub(super) fn sub(&self, other: &Fe4) -> LooseFe4 {
        LooseFe4(core::array::from_fn(|i| unsafe {
            let biased = _mm256_add_epi64(self.0[i], _mm256_set1_epi64x(TWO_P[i] as i64));
            _mm256_sub_epi64(biased, other.0[i])
        }))
    }

    #[inline(always)]
    pub(super) fn mul(&self, other: &Fe4) -> Fe4 {
        self.relax().mul(&other.relax())
    }

    #[inline(always)]
    pub(super) fn square(&self) -> Fe4 {
        self.mul(self)
    }

    /// For each lane, the two candidates for the low 64 bits of the canonical encoding, as in
    /// `Fe::low_u64_hint`: the value is below 2p, so its canonical form is v or v − p, and
    /// modulo 2^64 those are v and v + 19. Limbs 0, 1 and 2 (at bits 0, 26 and 51) are the only
    /// ones below bit 64. Returns a bit mask of the lanes where either matches `mask`/`value`.
    #[inline(always)]
    pub(super) fn lanes_matching_low_u64(&self, mask: u64, value: u64) -> u32 {
        unsafe {
            let low = _mm256_add_epi64(
                _mm256_add_epi64(self.0[0], _mm256_slli_epi64::<26>(self.0[1])),
                _mm256_slli_epi64::<51>(self.0[2]),
            );
            let reduced = _mm256_add_epi64(low, _mm256_set1_epi64x(19));
            let mask = _mm256_set1_epi64x(mask as i64);
            let value = _mm256_set1_epi64x(value as i64);
            let hit = _mm256_or_si256(
                _mm256_cmpeq_epi64(_mm256_and_si256(low, mask), value),
                _mm256_cmpeq_epi64(_mm256_and_si256(reduced, mask), value),
            );
            _mm256_movemask_pd(_mm256_castsi256_pd(hit)) as u32
        }
    }
}

impl LooseFe4 {
    /// Schoolbook multiplication with the wrap-around folded in: output limb k collects
    /// f_i·g_j for i + j = k and 19·f_i·g_j for i + j = k + 10 (2^255 ≡ 19), doubled when
    /// i and j are both odd (two 25-bit limbs meet half a bit lower than their positions sum).
    #[inline(always)]
    pub(super) fn mul(&self, other: &LooseFe4) -> Fe4 {
        let f = &self.0;
        let g = &other.0;
        unsafe {
            let nineteen = _mm256_set1_epi64x(19);
            let g19: [__m256i; 10] = core::array::from_fn(|j| _mm256_mul_epu32(g[j], nineteen));
            let f2: [__m256i; 10] = core::array::from_fn(|i| _mm256_add_epi64(f[i], f[i]));
            // Column by column, so that only one sum is live at a time.
            let h = [
                column::<0>(f, &f2, g, &g19),
                column::<1>(f, &f2, g, &g19),
                column::<2>(f, &f2, g, &g19),
                column::<3>(f, &f2, g, &g19),
                column::<4>(f, &f2, g, &g19),
                column::<5>(f, &f2, g, &g19),
                column::<6>(f, &f2, g, &g19),
                column::<7>(f, &f2, g, &g19),
                column::<8>(f, &f2, g, &g19),
                column::<9>(f, &f2, g, &g19),
            ];
            Fe4(reduce(h))
        }
    }
}

/// Output limb K of the product: the sum over i of f_i·g_j with j = (K − i) mod 10 (with the
/// doubling and the factor 19 described at [`LooseFe4::mul`]).
#[inline(always)]
unsafe fn column<const K: usize>(
    f: &[__m256i; 10],
    f2: &[__m256i; 10],
    g: &[__m256i; 10],
    g19: &[__m256i; 10],
) -> __m256i {
    let term = |i: usize| {
        let j = (K + 10 - i) % 10;
        let left = if i % 2 == 1 && j % 2 == 1 {
            f2[i]
        } else {
            f[i]
        };
        let right = if i > K { g19[j] } else { g[j] };
        _mm256_mul_epu32(left, right)
    };
    let mut sum = term(0);
    for i in 1..10 {
        sum = _mm256_add_epi64(sum, term(i));
    }
    sum
}

/// Carries limb sums below 2^63 into tight limbs, in two interleaved chains (0→1…→5 and
/// 4→5…→9) that then wrap 9→0 with a factor 19 and finish with 0→1; the bounds are in the
/// module documentation.
#[inline(always)]
unsafe fn reduce(mut h: [__m256i; 10]) -> [__m256i; 10] {
    #[inline(always)]
    unsafe fn carry(h: &mut [__m256i; 10], i: usize) {
        let (shifted, masked) = if WIDTH[i] == 26 {
            (
                _mm256_srli_epi64::<26>(h[i]),
                _mm256_and_si256(h[i], _mm256_set1_epi64x((1 << 26) - 1)),
            )
        } else {
            (
                _mm256_srli_epi64::<25>(h[i]),
                _mm256_and_si256(h[i], _mm256_set1_epi64x((1 << 25) - 1)),
            )
        };
        h[i] = masked;
        if i == 9 {
            // 19·c = 16c + 2c + c; c < 2^38 does not fit vpmuludq's 32-bit operands.
            let c19 = _mm256_add_epi64(
                _mm256_add_epi64(
                    _mm256_slli_epi64::<4>(shifted),
                    _mm256_slli_epi64::<1>(shifted),
                ),
                shifted,
            );
            h[0] = _mm256_add_epi64(h[0], c19);
        } else {
            h[i + 1] = _mm256_add_epi64(h[i + 1], shifted);
        }
    }
    for (a, b) in [(0, 4), (1, 5), (2, 6), (3, 7), (4, 8)] {
        carry(&mut h, a);
        carry(&mut h, b);
    }
    carry(&mut h, 9);
    carry(&mut h, 0);
    h
}

#[cfg(test)]
mod tests {
    use super::super::field::tests::random_fe;
    use super::*;

    fn avx2() -> Option<Avx2> {
        let found = Avx2::detect();
        if found.is_none() {
            eprintln!("no AVX2 on this processor: skipping");
        }
        found
    }

    fn random4() -> [Fe; 4] {
        core::array::from_fn(|_| random_fe())
    }

    #[test]
    fn lanes_round_trip() {
        let Some(avx2) = avx2() else { return };
        let xs = random4();
        let packed = avx2.gather([&xs[0], &xs[1], &xs[2], &xs[3]]);
        for lane in 0..4 {
            assert!(packed.lane(lane) == xs[lane]);
            assert!(avx2.splat(&xs[lane]).lane(3 - lane) == xs[lane]);
        }
    }

    #[test]
    fn arithmetic_matches_fiat_crypto() {
        let Some(avx2) = avx2() else { return };
        for _ in 0..2000 {
            let (xs, ys) = (random4(), random4());
            let x4 = avx2.gather([&xs[0], &xs[1], &xs[2], &xs[3]]);
            let y4 = avx2.gather([&ys[0], &ys[1], &ys[2], &ys[3]]);
            // Loose operands of a multiplication, the widest case the bounds allow.
            let sum_times_difference = x4.add(&y4).mul(&x4.sub(&y4));
            let product = x4.mul(&y4);
            for lane in 0..4 {
                let (x, y) = (xs[lane], ys[lane]);
                assert!(product.lane(lane) == x.mul(&y));
                assert!(x4.square().lane(lane) == x.square());
                assert!(sum_times_difference.lane(lane) == x.add(&y).mul(&x.sub(&y)));
            }
        }
    }

    #[test]
    fn extreme_limbs_stay_exact() {
        // All limbs at the top of the tight bound, in every operand: the largest products.
        let Some(avx2) = avx2() else { return };
        let top: [u64; 10] = core::array::from_fn(|i| (1 << WIDTH[i]) + (1 << 17));
        let x4 = Fe4(core::array::from_fn(|i| from_lanes([top[i]; 4])));
        let zero = avx2.splat(&Fe::ZERO);
        let x = x4.lane(0);
        let wide = zero.sub(&x4).mul(&x4.add(&x4));
        let expected = Fe::ZERO.sub(&x).carry().mul(&x.add(&x).carry());
        for lane in 0..4 {
            assert!(wide.lane(lane) == expected);
        }
    }

    #[test]
    fn low_bit_filter_finds_every_match() {
        let Some(avx2) = avx2() else { return };
        for _ in 0..2000 {
            let xs = random4();
            let x4 = avx2
                .gather([&xs[0], &xs[1], &xs[2], &xs[3]])
                .mul(&avx2.splat(&Fe::ONE));
            for lane in 0..4 {
                let canonical = u64::from_le_bytes(xs[lane].to_bytes()[..8].try_into().unwrap());
                let mask = 0x00ff_00ff_0000_f0f0;
                let hits = x4.lanes_matching_low_u64(mask, canonical & mask);
                assert_ne!(hits & (1 << lane), 0);
            }
        }
    }
}
