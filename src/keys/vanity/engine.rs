//! The two ways the batch arithmetic can run: one field element at a time ([`Serial`], any
//! processor, fiat-crypto's code) or four at a time ([`Avx2`], x86-64 processors with AVX2).
//!
//! `walk.rs` is written once against the [`Engine`] trait; each engine fixes how many
//! candidates (lanes) one value of its element type carries. The search picks the fastest
//! engine the processor supports at run time.

use std::fmt;

use super::field::{Fe, LooseFe};
#[cfg(target_arch = "x86_64")]
use super::field_avx2::{Avx2, Fe4, LooseFe4};
use super::prefix::PrefixFilter;

/// Which field arithmetic a search runs on (for reports; the fastest available is chosen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    /// Four elements at a time with AVX2 (most x86-64 processors since 2013).
    Avx2,
    /// One element at a time with fiat-crypto's code: any processor.
    Portable,
}

impl fmt::Display for Arithmetic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arithmetic::Avx2 => "AVX2",
            Arithmetic::Portable => "portable",
        })
    }
}

/// Field arithmetic on `LANES` independent elements at once.
///
/// Multiplications come in three forms so that no operand is ever copied into another type
/// first (copying a four-lane element moves 320 bytes): tight × tight, loose × loose, and
/// loose × tight.
pub(super) trait Engine: Copy + Send + Sync + 'static {
    const ARITHMETIC: Arithmetic;
    /// Elements per value.
    const LANES: usize;
    /// `LANES` tight field elements.
    type Elem: Copy + Send + Sync;
    /// `LANES` loose field elements: the result of one addition or subtraction, which a
    /// multiplication accepts but nothing else does (see `field.rs`).
    type Loose: Copy;

    /// `x` in every lane.
    fn splat(self, x: &Fe) -> Self::Elem;
    /// `xs[l]` in lane l; `xs.len()` is `LANES`.
    fn gather(self, xs: &[Fe]) -> Self::Elem;
    /// The element in `lane`.
    fn lane(self, x: &Self::Elem, lane: usize) -> Fe;
    fn add(self, x: &Self::Elem, y: &Self::Elem) -> Self::Loose;
    fn sub(self, x: &Self::Elem, y: &Self::Elem) -> Self::Loose;
    fn mul(self, x: &Self::Elem, y: &Self::Elem) -> Self::Elem;
    fn mul_loose(self, x: &Self::Loose, y: &Self::Loose) -> Self::Elem;
    fn mul_mixed(self, x: &Self::Loose, y: &Self::Elem) -> Self::Elem;
    fn square(self, x: &Self::Elem) -> Self::Elem;
    /// Bit l set if lane l's canonical encoding may match `filter` (never misses a match;
    /// the caller confirms with the exact encoding).
    fn lanes_maybe_matching(self, x: &Self::Elem, filter: &PrefixFilter) -> u32;
}

/// One element at a time, with fiat-crypto's arithmetic.
#[derive(Clone, Copy)]
pub(super) struct Serial;

impl Engine for Serial {
    const ARITHMETIC: Arithmetic = Arithmetic::Portable;
    const LANES: usize = 1;
    type Elem = Fe;
    type Loose = LooseFe;

    #[inline(always)]
    fn splat(self, x: &Fe) -> Fe {
        *x
    }
    fn gather(self, xs: &[Fe]) -> Fe {
        xs[0]
    }
    fn lane(self, x: &Fe, _lane: usize) -> Fe {
        *x
    }
    #[inline(always)]
    fn add(self, x: &Fe, y: &Fe) -> LooseFe {
        x.add(y)
    }
    #[inline(always)]
    fn sub(self, x: &Fe, y: &Fe) -> LooseFe {
        x.sub(y)
    }
    #[inline(always)]
    fn mul(self, x: &Fe, y: &Fe) -> Fe {
        x.mul(y)
    }
    #[inline(always)]
    fn mul_loose(self, x: &LooseFe, y: &LooseFe) -> Fe {
        x.mul(y)
    }
    #[inline(always)]
    fn mul_mixed(self, x: &LooseFe, y: &Fe) -> Fe {
        x.mul(&y.relax())
    }
    #[inline(always)]
    fn square(self, x: &Fe) -> Fe {
        x.square()
    }
    #[inline(always)]
    fn lanes_maybe_matching(self, x: &Fe, filter: &PrefixFilter) -> u32 {
        let [low, low_if_reduced] = x.low_u64_hint();
        u32::from(filter.matches_first8(low) || filter.matches_first8(low_if_reduced))
    }
}

#[cfg(target_arch = "x86_64")]
impl Engine for Avx2 {
    const ARITHMETIC: Arithmetic = Arithmetic::Avx2;
    const LANES: usize = 4;
    type Elem = Fe4;
    type Loose = LooseFe4;

    #[inline(always)]
    fn splat(self, x: &Fe) -> Fe4 {
        Avx2::splat(self, x)
    }
    fn gather(self, xs: &[Fe]) -> Fe4 {
        Avx2::gather(self, [&xs[0], &xs[1], &xs[2], &xs[3]])
    }
    fn lane(self, x: &Fe4, lane: usize) -> Fe {
        x.lane(lane)
    }
    #[inline(always)]
    fn add(self, x: &Fe4, y: &Fe4) -> LooseFe4 {
        x.add(y)
    }
    #[inline(always)]
    fn sub(self, x: &Fe4, y: &Fe4) -> LooseFe4 {
        x.sub(y)
    }
    #[inline(always)]
    fn mul(self, x: &Fe4, y: &Fe4) -> Fe4 {
        x.mul(y)
    }
    #[inline(always)]
    fn mul_loose(self, x: &LooseFe4, y: &LooseFe4) -> Fe4 {
        x.mul(y)
    }
    #[inline(always)]
    fn mul_mixed(self, x: &LooseFe4, y: &Fe4) -> Fe4 {
        x.mul_tight(y)
    }
    #[inline(always)]
    fn square(self, x: &Fe4) -> Fe4 {
        x.square()
    }
    #[inline(always)]
    fn lanes_maybe_matching(self, x: &Fe4, filter: &PrefixFilter) -> u32 {
        x.lanes_matching_low_u64(filter.mask(), filter.value())
    }
}
