//! Four field elements at once with AVX2: the same arithmetic as `field.rs`, on four
//! independent values per instruction, for the search's hot loop.
//!
//! A field multiplication is mostly 64-bit products. x86-64's scalar multiplier does one per
//! cycle; AVX2's `vpmuludq` does four 32×32→64-bit products per instruction. To use it the
//! elements are split into ten limbs of alternately 26 and 25 bits (radix 2^25.5: limb i sits
//! at bit ⌈25.5·i⌉), and each 64-bit lane of a vector holds one limb of one of four elements.
//! This file is hand-written (fiat-crypto generates no vector code), so its bounds are spelled
//! out below and its results are checked against fiat-crypto's in the tests, including inputs
//! at the very top of the bounds. Multiplication and squaring are assembly (see [`product`]);
//! the rest uses the compiler's AVX2 intrinsics.
//!
//! Bounds, with w_i = 26 for even i and 25 for odd i:
//! - **tight** ([`Fe4`], output of a multiplication): limb i ≤ 2^w_i + 2^17. The value is then
//!   below 2^255 + 2^141 < 2p.
//! - **loose** ([`LooseFe4`], tight + tight, or tight − tight + 2p): limb i < 2^(w_i + 1.6).
//! - A multiplication takes loose inputs. `vpmuludq` reads only the low 32 bits of a lane, so
//!   every operand must be below 2^32: 19 × (an even loose limb) < 19 · 2^27.6 < 2^31.9, and
//!   2 × (an odd loose limb) < 2^27.6. Each of the ten products summed into one output limb is
//!   below 2^27.6 · 2^31.9 = 2^59.5, so the sum stays below 2^62.9: no lane overflows.
//! - Carrying the product (see [`product`]) leaves limb 1 ≤ 2^25 + 2^16.1, limb 5 ≤ 2^25 + 2^12
//!   and all others below 2^w_i: tight again.
//!
//! Everything is unsigned; subtraction adds 2p first so that no limb goes negative (each limb
//! of 2p is at least 2^26 − 2, more than any tight limb).
//!
//! Values of these types exist only once [`Avx2::detect`] has confirmed that the processor
//! supports AVX2, which is what makes their safe methods sound.

use core::arch::x86_64::{
    __m256i, _mm256_add_epi64, _mm256_and_si256, _mm256_castsi256_pd, _mm256_cmpeq_epi64,
    _mm256_movemask_pd, _mm256_or_si256, _mm256_set1_epi64x, _mm256_setzero_si256,
    _mm256_slli_epi64, _mm256_sub_epi64,
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
    pub(super) fn add(&self, other: &Fe4) -> LooseFe4 {
        // SAFETY (all intrinsics and the assembly in this file): an `Fe4` or `LooseFe4` exists
        // only after `Avx2::detect` has confirmed AVX2.
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
        unsafe { product(&self.0, &other.0) }
    }

    #[inline(always)]
    pub(super) fn square(&self) -> Fe4 {
        unsafe { square(&self.0) }
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
    #[inline(always)]
    pub(super) fn mul(&self, other: &LooseFe4) -> Fe4 {
        unsafe { product(&self.0, &other.0) }
    }

    #[inline(always)]
    pub(super) fn mul_tight(&self, other: &Fe4) -> Fe4 {
        unsafe { product(&self.0, &other.0) }
    }
}

/// The carry chain that ends both [`product`] and [`square`] (the order and the ×19 wrap are
/// those of `reduce`): on entry ymm0..ymm9 hold the ten column sums, on exit a tight element.
/// Clobbers ymm12..ymm15; needs the `{constants}` operand (2^26 − 1 at +8, 2^25 − 1 at +16).
macro_rules! carry_chain {
    () => {
        concat!(
            // ymm13 = 2^26 − 1, ymm14 = 2^25 − 1.
            "vpbroadcastq ymm13, qword ptr [{constants} + 8]\n",
            "vpbroadcastq ymm14, qword ptr [{constants} + 16]\n",
            // carry 0 → 1
            "vpsrlq ymm12, ymm0, 26\n",
            "vpand ymm0, ymm0, ymm13\n",
            "vpaddq ymm1, ymm1, ymm12\n",
            // carry 4 → 5
            "vpsrlq ymm12, ymm4, 26\n",
            "vpand ymm4, ymm4, ymm13\n",
            "vpaddq ymm5, ymm5, ymm12\n",
            // carry 1 → 2
            "vpsrlq ymm12, ymm1, 25\n",
            "vpand ymm1, ymm1, ymm14\n",
            "vpaddq ymm2, ymm2, ymm12\n",
            // carry 5 → 6
            "vpsrlq ymm12, ymm5, 25\n",
            "vpand ymm5, ymm5, ymm14\n",
            "vpaddq ymm6, ymm6, ymm12\n",
            // carry 2 → 3
            "vpsrlq ymm12, ymm2, 26\n",
            "vpand ymm2, ymm2, ymm13\n",
            "vpaddq ymm3, ymm3, ymm12\n",
            // carry 6 → 7
            "vpsrlq ymm12, ymm6, 26\n",
            "vpand ymm6, ymm6, ymm13\n",
            "vpaddq ymm7, ymm7, ymm12\n",
            // carry 3 → 4
            "vpsrlq ymm12, ymm3, 25\n",
            "vpand ymm3, ymm3, ymm14\n",
            "vpaddq ymm4, ymm4, ymm12\n",
            // carry 7 → 8
            "vpsrlq ymm12, ymm7, 25\n",
            "vpand ymm7, ymm7, ymm14\n",
            "vpaddq ymm8, ymm8, ymm12\n",
            // carry 4 → 5
            "vpsrlq ymm12, ymm4, 26\n",
            "vpand ymm4, ymm4, ymm13\n",
            "vpaddq ymm5, ymm5, ymm12\n",
            // carry 8 → 9
            "vpsrlq ymm12, ymm8, 26\n",
            "vpand ymm8, ymm8, ymm13\n",
            "vpaddq ymm9, ymm9, ymm12\n",
            // carry 9 → 0 (×19)
            "vpsrlq ymm12, ymm9, 25\n",
            "vpand ymm9, ymm9, ymm14\n",
            "vpsllq ymm15, ymm12, 4\n",
            "vpaddq ymm15, ymm15, ymm12\n",
            "vpaddq ymm12, ymm12, ymm12\n",
            "vpaddq ymm15, ymm15, ymm12\n",
            "vpaddq ymm0, ymm0, ymm15\n",
            // carry 0 → 1
            "vpsrlq ymm12, ymm0, 26\n",
            "vpand ymm0, ymm0, ymm13\n",
            "vpaddq ymm1, ymm1, ymm12\n",
        )
    };
}

/// The product of four pairs of loose elements, tight.
///
/// Schoolbook multiplication with the wrap-around folded in: output limb k collects f_i·g_j
/// for i + j = k and 19·f_i·g_j for i + j = k + 10 (as 2^255 ≡ 19), doubled when i and j are
/// both odd (two 25-bit limbs meet half a bit below the sum of their positions). Then the
/// carries: two interleaved chains 0→1→…→5 and 4→5→…→9, the wrap 9→0 with a factor 19, and a
/// last 0→1 (the resulting bounds are in the module documentation).
///
/// Written in assembly because compilers spill this computation badly: it needs ten
/// accumulators (ymm0–ymm9), f_i and 2·f_i (ymm10, ymm11), a temporary (ymm12) and constants
/// (ymm13–ymm15), exactly the sixteen AVX2 registers, with every g operand read from memory
/// by the multiplication itself. The instruction list is regular (row i pairs f_i with all
/// g_j); the tests compare it with fiat-crypto lane by lane.
#[target_feature(enable = "avx2")]
fn product(f: &[__m256i; 10], g: &[__m256i; 10]) -> Fe4 {
    /// 19 and the two limb masks.
    const CONSTANTS: [u64; 3] = [19, (1 << 26) - 1, (1 << 25) - 1];
    // g19[j] = 19·g[j]; g19[0] is never read.
    let mut g19 = [_mm256_setzero_si256(); 10];
    let mut h = [_mm256_setzero_si256(); 10];
    // SAFETY: the assembly reads 320 bytes at `f` and `g` and the three constants, writes
    // 320 bytes at `g19` (all 32-byte aligned, as `__m256i` is), and touches no other memory.
    unsafe {
        core::arch::asm!(
            // g19[j] = 19·g[j] for j = 1..=9 (ymm15 = 19 in every lane).
            "vpbroadcastq ymm15, qword ptr [{constants}]",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 32]",
            "vmovdqa ymmword ptr [{g19} + 32], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 64]",
            "vmovdqa ymmword ptr [{g19} + 64], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 96]",
            "vmovdqa ymmword ptr [{g19} + 96], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 128]",
            "vmovdqa ymmword ptr [{g19} + 128], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 160]",
            "vmovdqa ymmword ptr [{g19} + 160], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 192]",
            "vmovdqa ymmword ptr [{g19} + 192], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 224]",
            "vmovdqa ymmword ptr [{g19} + 224], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 256]",
            "vmovdqa ymmword ptr [{g19} + 256], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{g} + 288]",
            "vmovdqa ymmword ptr [{g19} + 288], ymm12",
            // Row 0: h[(i + j) mod 10] += f[0]·g[j]; the first row initialises h0..h9.
            "vmovdqa ymm10, ymmword ptr [{f} + 0]",
            "vpmuludq ymm0, ymm10, ymmword ptr [{g} + 0]",
            "vpmuludq ymm1, ymm10, ymmword ptr [{g} + 32]",
            "vpmuludq ymm2, ymm10, ymmword ptr [{g} + 64]",
            "vpmuludq ymm3, ymm10, ymmword ptr [{g} + 96]",
            "vpmuludq ymm4, ymm10, ymmword ptr [{g} + 128]",
            "vpmuludq ymm5, ymm10, ymmword ptr [{g} + 160]",
            "vpmuludq ymm6, ymm10, ymmword ptr [{g} + 192]",
            "vpmuludq ymm7, ymm10, ymmword ptr [{g} + 224]",
            "vpmuludq ymm8, ymm10, ymmword ptr [{g} + 256]",
            "vpmuludq ymm9, ymm10, ymmword ptr [{g} + 288]",
            // Row 1: h[(i + j) mod 10] += f[1]·g[j] (doubled for odd j), from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 32]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 32]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 64]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 96]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 128]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 160]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 192]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 224]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 256]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 288]",
            "vpaddq ymm0, ymm0, ymm12",
            // Row 2: h[(i + j) mod 10] += f[2]·g[j], from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 64]",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 32]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 64]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 96]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 128]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 160]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 192]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 224]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 288]",
            "vpaddq ymm1, ymm1, ymm12",
            // Row 3: h[(i + j) mod 10] += f[3]·g[j] (doubled for odd j), from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 96]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 32]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 64]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 96]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 128]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 160]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 192]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 224]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 288]",
            "vpaddq ymm2, ymm2, ymm12",
            // Row 4: h[(i + j) mod 10] += f[4]·g[j], from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 128]",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 32]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 64]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 96]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 128]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 160]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 192]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 224]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 288]",
            "vpaddq ymm3, ymm3, ymm12",
            // Row 5: h[(i + j) mod 10] += f[5]·g[j] (doubled for odd j), from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 160]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 32]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 64]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 96]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 128]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 160]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 192]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 224]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 288]",
            "vpaddq ymm4, ymm4, ymm12",
            // Row 6: h[(i + j) mod 10] += f[6]·g[j], from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 192]",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 32]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 64]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 96]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 128]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 160]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 192]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 224]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 288]",
            "vpaddq ymm5, ymm5, ymm12",
            // Row 7: h[(i + j) mod 10] += f[7]·g[j] (doubled for odd j), from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 224]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g} + 32]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 64]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 96]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 128]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 160]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 192]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 224]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 288]",
            "vpaddq ymm6, ymm6, ymm12",
            // Row 8: h[(i + j) mod 10] += f[8]·g[j], from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 256]",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 32]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 64]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 96]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 128]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 160]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 192]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 224]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 288]",
            "vpaddq ymm7, ymm7, ymm12",
            // Row 9: h[(i + j) mod 10] += f[9]·g[j] (doubled for odd j), from g19 where i + j ≥ 10.
            "vmovdqa ymm10, ymmword ptr [{f} + 288]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g} + 0]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 32]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 64]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 96]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 128]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 160]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 192]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 224]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm10, ymmword ptr [{g19} + 256]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{g19} + 288]",
            "vpaddq ymm8, ymm8, ymm12",
            carry_chain!(),
            f = in(reg) f.as_ptr(),
            g = in(reg) g.as_ptr(),
            g19 = in(reg) g19.as_mut_ptr(),
            constants = in(reg) CONSTANTS.as_ptr(),
            out("ymm0") h[0], out("ymm1") h[1], out("ymm2") h[2], out("ymm3") h[3],
            out("ymm4") h[4], out("ymm5") h[5], out("ymm6") h[6], out("ymm7") h[7],
            out("ymm8") h[8], out("ymm9") h[9], out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack, preserves_flags),
        );
    }
    Fe4(h)
}

/// The squares of four tight elements: [`product`] with f = g, where each product f_i·f_j with
/// i ≠ j appears twice and is computed once, doubled (55 multiplications instead of 100).
/// Operands: f_i (ymm10), 2·f_i (ymm11) and, for odd i, 4·f_i (ymm13) against f_j or 19·f_j
/// from memory; all stay below 2^31 for tight input.
#[target_feature(enable = "avx2")]
fn square(f: &[__m256i; 10]) -> Fe4 {
    const CONSTANTS: [u64; 3] = [19, (1 << 26) - 1, (1 << 25) - 1];
    let mut f19 = [_mm256_setzero_si256(); 10];
    let mut h = [_mm256_setzero_si256(); 10];
    // SAFETY: as in `product`: reads `f` and the constants, writes `f19`, nothing else.
    unsafe {
        core::arch::asm!(
            // f19[j] = 19·f[j] for j = 1..=9 (ymm15 = 19 in every lane).
            "vpbroadcastq ymm15, qword ptr [{constants}]",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 32]",
            "vmovdqa ymmword ptr [{f19} + 32], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 64]",
            "vmovdqa ymmword ptr [{f19} + 64], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 96]",
            "vmovdqa ymmword ptr [{f19} + 96], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 128]",
            "vmovdqa ymmword ptr [{f19} + 128], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 160]",
            "vmovdqa ymmword ptr [{f19} + 160], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 192]",
            "vmovdqa ymmword ptr [{f19} + 192], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 224]",
            "vmovdqa ymmword ptr [{f19} + 224], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 256]",
            "vmovdqa ymmword ptr [{f19} + 256], ymm12",
            "vpmuludq ymm12, ymm15, ymmword ptr [{f} + 288]",
            "vmovdqa ymmword ptr [{f19} + 288], ymm12",
            // Row 0: f[0]·f[j] for j ≥ 0, doubled for j > 0.
            "vmovdqa ymm10, ymmword ptr [{f} + 0]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm0, ymm10, ymmword ptr [{f} + 0]",
            "vpmuludq ymm1, ymm11, ymmword ptr [{f} + 32]",
            "vpmuludq ymm2, ymm11, ymmword ptr [{f} + 64]",
            "vpmuludq ymm3, ymm11, ymmword ptr [{f} + 96]",
            "vpmuludq ymm4, ymm11, ymmword ptr [{f} + 128]",
            "vpmuludq ymm5, ymm11, ymmword ptr [{f} + 160]",
            "vpmuludq ymm6, ymm11, ymmword ptr [{f} + 192]",
            "vpmuludq ymm7, ymm11, ymmword ptr [{f} + 224]",
            "vpmuludq ymm8, ymm11, ymmword ptr [{f} + 256]",
            "vpmuludq ymm9, ymm11, ymmword ptr [{f} + 288]",
            // Row 1: f[1]·f[j] for j ≥ 1, doubled for j > 1 and again for odd j.
            "vmovdqa ymm10, ymmword ptr [{f} + 32]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpaddq ymm13, ymm11, ymm11",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 32]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 64]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f} + 96]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 128]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f} + 160]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 192]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f} + 224]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 256]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f19} + 288]",
            "vpaddq ymm0, ymm0, ymm12",
            // Row 2: f[2]·f[j] for j ≥ 2, doubled for j > 2.
            "vmovdqa ymm10, ymmword ptr [{f} + 64]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{f} + 64]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 96]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 128]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 160]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 192]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 224]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 256]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 288]",
            "vpaddq ymm1, ymm1, ymm12",
            // Row 3: f[3]·f[j] for j ≥ 3, doubled for j > 3 and again for odd j.
            "vmovdqa ymm10, ymmword ptr [{f} + 96]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpaddq ymm13, ymm11, ymm11",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 96]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 128]",
            "vpaddq ymm7, ymm7, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f} + 160]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 192]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f19} + 224]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 256]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f19} + 288]",
            "vpaddq ymm2, ymm2, ymm12",
            // Row 4: f[4]·f[j] for j ≥ 4, doubled for j > 4.
            "vmovdqa ymm10, ymmword ptr [{f} + 128]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{f} + 128]",
            "vpaddq ymm8, ymm8, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f} + 160]",
            "vpaddq ymm9, ymm9, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 192]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 224]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 256]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 288]",
            "vpaddq ymm3, ymm3, ymm12",
            // Row 5: f[5]·f[j] for j ≥ 5, doubled for j > 5 and again for odd j.
            "vmovdqa ymm10, ymmword ptr [{f} + 160]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpaddq ymm13, ymm11, ymm11",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 160]",
            "vpaddq ymm0, ymm0, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 192]",
            "vpaddq ymm1, ymm1, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f19} + 224]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 256]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f19} + 288]",
            "vpaddq ymm4, ymm4, ymm12",
            // Row 6: f[6]·f[j] for j ≥ 6, doubled for j > 6.
            "vmovdqa ymm10, ymmword ptr [{f} + 192]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{f19} + 192]",
            "vpaddq ymm2, ymm2, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 224]",
            "vpaddq ymm3, ymm3, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 256]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 288]",
            "vpaddq ymm5, ymm5, ymm12",
            // Row 7: f[7]·f[j] for j ≥ 7, doubled for j > 7 and again for odd j.
            "vmovdqa ymm10, ymmword ptr [{f} + 224]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpaddq ymm13, ymm11, ymm11",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 224]",
            "vpaddq ymm4, ymm4, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 256]",
            "vpaddq ymm5, ymm5, ymm12",
            "vpmuludq ymm12, ymm13, ymmword ptr [{f19} + 288]",
            "vpaddq ymm6, ymm6, ymm12",
            // Row 8: f[8]·f[j] for j ≥ 8, doubled for j > 8.
            "vmovdqa ymm10, ymmword ptr [{f} + 256]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpmuludq ymm12, ymm10, ymmword ptr [{f19} + 256]",
            "vpaddq ymm6, ymm6, ymm12",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 288]",
            "vpaddq ymm7, ymm7, ymm12",
            // Row 9: f[9]·f[j] for j ≥ 9, doubled for j > 9 and again for odd j.
            "vmovdqa ymm10, ymmword ptr [{f} + 288]",
            "vpaddq ymm11, ymm10, ymm10",
            "vpaddq ymm13, ymm11, ymm11",
            "vpmuludq ymm12, ymm11, ymmword ptr [{f19} + 288]",
            "vpaddq ymm8, ymm8, ymm12",
            carry_chain!(),
            f = in(reg) f.as_ptr(),
            f19 = in(reg) f19.as_mut_ptr(),
            constants = in(reg) CONSTANTS.as_ptr(),
            out("ymm0") h[0], out("ymm1") h[1], out("ymm2") h[2], out("ymm3") h[3],
            out("ymm4") h[4], out("ymm5") h[5], out("ymm6") h[6], out("ymm7") h[7],
            out("ymm8") h[8], out("ymm9") h[9], out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack, preserves_flags),
        );
    }
    Fe4(h)
}

#[cfg(test)]
mod tests {
    use super::super::field::tests::random_fe;
    use super::*;

    /// Bit widths of the ten limbs.
    const WIDTH: [u32; 10] = [26, 25, 26, 25, 26, 25, 26, 25, 26, 25];

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
        for (lane, x) in xs.iter().enumerate() {
            assert!(packed.lane(lane) == *x);
            assert!(avx2.splat(x).lane(3 - lane) == *x);
        }
    }

    #[test]
    fn arithmetic_matches_fiat_crypto() {
        let Some(avx2) = avx2() else { return };
        for _ in 0..2000 {
            let (xs, ys) = (random4(), random4());
            let x4 = avx2.gather([&xs[0], &xs[1], &xs[2], &xs[3]]);
            let y4 = avx2.gather([&ys[0], &ys[1], &ys[2], &ys[3]]);
            // Loose operands of a multiplication, as the search uses them.
            let sum_times_difference = x4.add(&y4).mul(&x4.sub(&y4));
            let difference_times_y = x4.sub(&y4).mul_tight(&y4);
            let product = x4.mul(&y4);
            let square = x4.square();
            for (lane, (x, y)) in xs.iter().zip(&ys).enumerate() {
                assert!(product.lane(lane) == x.mul(y));
                assert!(square.lane(lane) == x.square());
                assert!(sum_times_difference.lane(lane) == x.add(y).mul(&x.sub(y)));
                assert!(difference_times_y.lane(lane) == x.sub(y).mul(&y.relax()));
            }
        }
    }

    #[test]
    fn extreme_limbs_stay_exact() {
        // Every limb at the top of the tight bound, and, after adding 2p, at the top of the
        // loose bound: the largest operands and limb sums the bounds allow.
        let Some(avx2) = avx2() else { return };
        let top: [u64; 10] = core::array::from_fn(|i| (1 << WIDTH[i]) + (1 << 17));
        let x4 = Fe4(core::array::from_fn(|i| from_lanes([top[i]; 4])));
        let zero = avx2.splat(&Fe::ZERO);
        let x = x4.lane(0);
        let biggest = x4.sub(&zero);
        let results = [
            (biggest.mul(&biggest), x.square()),
            (biggest.mul_tight(&x4), x.square()),
            (x4.square(), x.square()),
            (
                zero.sub(&x4).mul(&x4.add(&x4)),
                x.neg().mul(&x.add(&x).carry()),
            ),
        ];
        for (ours, expected) in results {
            for lane in 0..4 {
                assert!(ours.lane(lane) == expected);
            }
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
            for (lane, x) in xs.iter().enumerate() {
                let canonical = u64::from_le_bytes(x.to_bytes()[..8].try_into().unwrap());
                let mask = 0x00ff_00ff_0000_f0f0;
                let hits = x4.lanes_matching_low_u64(mask, canonical & mask);
                assert_ne!(hits & (1 << lane), 0);
            }
        }
    }
}
