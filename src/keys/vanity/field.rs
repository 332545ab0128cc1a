//! Arithmetic in GF(2^255 − 19), the field under ed25519, for the vanity search.
//!
//! curve25519-dalek keeps its field elements private, and the search needs them: it works on
//! affine y coordinates directly (see `batch.rs`). The arithmetic itself is not written here: it
//! is fiat-crypto's `curve25519_64`, code generated together with a machine-checked proof that
//! each operation computes the right value modulo p as long as its inputs stay within the stated
//! limb bounds. This wrapper turns those bounds into two types so the compiler enforces them:
//!
//! - [`Fe`] ("tight"): what a multiplication or a carry returns; limbs ≤ 2^51.
//! - [`LooseFe`] ("loose"): what one addition, subtraction or negation of tight elements returns;
//!   limbs < 3·2^51. A multiplication takes loose inputs, so `(a + b)·(c − d)` needs no carry.
//!
//! Adding two loose elements is deliberately impossible: it could leave fiat's proven bounds.
//! Only two things are hand-written: the exponentiation chains in [`Fe::invert`] and
//! [`Fe::pow_p58`] (their exponents are checked by the tests below) and [`Fe::low_u64_hint`].

use fiat_crypto::curve25519_64 as fiat;

/// A field element with fiat's tight bounds (limbs ≤ 2^51, radix 2^51).
#[derive(Clone, Copy)]
pub(super) struct Fe(fiat::fiat_25519_tight_field_element);

/// A field element with fiat's loose bounds: the result of one addition or subtraction.
#[derive(Clone, Copy)]
pub(super) struct LooseFe(fiat::fiat_25519_loose_field_element);

impl Fe {
    pub(super) const ZERO: Fe = Fe(fiat::fiat_25519_tight_field_element([0; 5]));
    pub(super) const ONE: Fe = Fe(fiat::fiat_25519_tight_field_element([1, 0, 0, 0, 0]));
    /// The curve constant d = −121665/121666 (RFC 8032 §5.1), in radix-2^51 limbs.
    pub(super) const D: Fe = Fe(fiat::fiat_25519_tight_field_element([
        0x0003_4dca_1359_78a3,
        0x0001_a828_3b15_6ebd,
        0x0005_e7a2_6001_c029,
        0x0007_39c6_63a0_3cbb,
        0x0005_2036_cee2_b6ff,
    ]));
    /// 2·d, used by the extended-coordinates addition formula.
    pub(super) const D2: Fe = Fe(fiat::fiat_25519_tight_field_element([
        0x0006_9b94_26b2_f159,
        0x0003_5050_762a_dd7a,
        0x0003_cf44_c003_8052,
        0x0006_738c_c740_7977,
        0x0002_406d_9dc5_6dff,
    ]));
    /// A square root of −1, needed to take square roots when decompressing points.
    pub(super) const SQRT_M1: Fe = Fe(fiat::fiat_25519_tight_field_element([
        0x0006_1b27_4a0e_a0b0,
        0x0000_d5a5_fc8f_189d,
        0x0007_ef5e_9cbd_0c60,
        0x0007_8595_a680_4c9e,
        0x0002_b832_4804_fc1d,
    ]));

    /// The element whose little-endian encoding is `bytes`, ignoring the top bit (which in a
    /// compressed point carries the sign of x, not part of y).
    pub(super) fn from_bytes(bytes: &[u8; 32]) -> Fe {
        let mut masked = *bytes;
        masked[31] &= 0x7f;
        let mut out = Fe::ZERO;
        fiat::fiat_25519_from_bytes(&mut out.0, &masked);
        out
    }

    /// The five radix-2^51 limbs, each at most 2^51 (for conversion to the AVX2 layout).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn limbs(&self) -> [u64; 5] {
        self.0 .0
    }

    /// The element with these radix-2^51 limbs, which must be below fiat's loose bound 3·2^51
    /// (for conversion from the AVX2 layout).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn from_loose_limbs(limbs: [u64; 5]) -> Fe {
        // Checked, not assumed: fiat's proof covers nothing beyond this bound.
        assert!(
            limbs.iter().all(|&limb| limb < 3 << 51),
            "limb out of bounds"
        );
        LooseFe(fiat::fiat_25519_loose_field_element(limbs)).carry()
    }

    /// The canonical (fully reduced) little-endian encoding; the top bit is always 0.
    pub(super) fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        fiat::fiat_25519_to_bytes(&mut out, &self.0);
        out
    }

    /// A cheap, almost exact view of the low 64 bits of the canonical encoding.
    ///
    /// The value of a tight element is at most about 2^255 + 2^204, less than 2p, so its
    /// canonical form is `v` or `v − p`. Modulo 2^64 those are `v` and `v + 19` (2^255 vanishes),
    /// and `v mod 2^64` only involves the two low limbs. The search tests both values against the
    /// prefix and confirms any match with [`Fe::to_bytes`], so this never decides on its own.
    #[inline(always)]
    pub(super) fn low_u64_hint(&self) -> [u64; 2] {
        let limbs = &self.0 .0;
        let low = limbs[0].wrapping_add(limbs[1] << 51);
        [low, low.wrapping_add(19)]
    }

    #[inline(always)]
    pub(super) fn relax(&self) -> LooseFe {
        let mut out = LooseFe(fiat::fiat_25519_loose_field_element([0; 5]));
        fiat::fiat_25519_relax(&mut out.0, &self.0);
        out
    }

    #[inline(always)]
    pub(super) fn add(&self, other: &Fe) -> LooseFe {
        let mut out = LooseFe(fiat::fiat_25519_loose_field_element([0; 5]));
        fiat::fiat_25519_add(&mut out.0, &self.0, &other.0);
        out
    }

    #[inline(always)]
    pub(super) fn sub(&self, other: &Fe) -> LooseFe {
        let mut out = LooseFe(fiat::fiat_25519_loose_field_element([0; 5]));
        fiat::fiat_25519_sub(&mut out.0, &self.0, &other.0);
        out
    }

    pub(super) fn neg(&self) -> Fe {
        let mut loose = LooseFe(fiat::fiat_25519_loose_field_element([0; 5]));
        fiat::fiat_25519_opp(&mut loose.0, &self.0);
        loose.carry()
    }

    #[inline(always)]
    pub(super) fn mul(&self, other: &Fe) -> Fe {
        self.relax().mul(&other.relax())
    }

    #[inline(always)]
    pub(super) fn square(&self) -> Fe {
        self.relax().square()
    }

    /// `self^(2^n)`.
    fn square_n(&self, n: u32) -> Fe {
        let mut out = *self;
        for _ in 0..n {
            out = out.square();
        }
        out
    }

    /// `(self^(2^250 − 1), self^11)`: the shared head of the inversion and square-root chains.
    fn pow22501(&self) -> (Fe, Fe) {
        let z2 = self.square(); // z^2
        let z9 = z2.square_n(2).mul(self); // z^8 · z
        let z11 = z9.mul(&z2);
        let z_5_0 = z11.square().mul(&z9); // z^22 · z^9 = z^(2^5 − 1)
        let z_10_0 = z_5_0.square_n(5).mul(&z_5_0);
        let z_20_0 = z_10_0.square_n(10).mul(&z_10_0);
        let z_40_0 = z_20_0.square_n(20).mul(&z_20_0);
        let z_50_0 = z_40_0.square_n(10).mul(&z_10_0);
        let z_100_0 = z_50_0.square_n(50).mul(&z_50_0);
        let z_200_0 = z_100_0.square_n(100).mul(&z_100_0);
        let z_250_0 = z_200_0.square_n(50).mul(&z_50_0);
        (z_250_0, z11)
    }

    /// `self^(p − 2) = 1/self` (Fermat); 0 maps to 0.
    pub(super) fn invert(&self) -> Fe {
        let (z_250_0, z11) = self.pow22501();
        // (2^250 − 1)·2^5 + 11 = 2^255 − 21 = p − 2.
        z_250_0.square_n(5).mul(&z11)
    }

    /// `self^((p − 5)/8)`, the core of a square root modulo p (p ≡ 5 mod 8).
    pub(super) fn pow_p58(&self) -> Fe {
        let (z_250_0, _) = self.pow22501();
        // (2^250 − 1)·4 + 1 = 2^252 − 3 = (p − 5)/8.
        z_250_0.square_n(2).mul(self)
    }

    /// Whether the canonical value is odd: ed25519's "negative" x (RFC 8032 §5.1.2).
    pub(super) fn is_negative(&self) -> bool {
        self.to_bytes()[0] & 1 == 1
    }

    pub(super) fn is_zero(&self) -> bool {
        self.to_bytes() == [0u8; 32]
    }
}

impl PartialEq for Fe {
    /// Equality of values modulo p (the limbs themselves may differ).
    fn eq(&self, other: &Fe) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl LooseFe {
    #[inline(always)]
    pub(super) fn mul(&self, other: &LooseFe) -> Fe {
        let mut out = Fe::ZERO;
        fiat::fiat_25519_carry_mul(&mut out.0, &self.0, &other.0);
        out
    }

    #[inline(always)]
    pub(super) fn square(&self) -> Fe {
        let mut out = Fe::ZERO;
        fiat::fiat_25519_carry_square(&mut out.0, &self.0);
        out
    }

    pub(super) fn carry(&self) -> Fe {
        let mut out = Fe::ZERO;
        fiat::fiat_25519_carry(&mut out.0, &self.0);
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A uniformly random field element (from 255 random bits; the few values ≥ p wrap).
    pub(in crate::keys::vanity) fn random_fe() -> Fe {
        Fe::from_bytes(&rand::random::<[u8; 32]>())
    }

    fn small(n: u64) -> Fe {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        Fe::from_bytes(&bytes)
    }

    #[test]
    fn constants_match_their_definitions() {
        // d = −121665/121666  ⇔  d·121666 + 121665 = 0.
        assert!(Fe::D
            .mul(&small(121666))
            .add(&small(121665))
            .carry()
            .is_zero());
        assert!(Fe::D.add(&Fe::D).carry() == Fe::D2);
        assert!(Fe::SQRT_M1.square().add(&Fe::ONE).carry().is_zero());
    }

    #[test]
    fn inversion_gives_the_multiplicative_inverse() {
        for _ in 0..200 {
            let x = random_fe();
            assert!(x.mul(&x.invert()) == Fe::ONE);
        }
        assert!(Fe::ZERO.invert().is_zero());
    }

    #[test]
    fn pow_p58_has_the_right_exponent() {
        // For a square x = r², x^((p−5)/8) squared twice is x^((p−5)/2) = r^(p−5) = r^(−4):
        // multiplying by x² = r^4 must give 1.
        for _ in 0..50 {
            let r = random_fe();
            let x = r.square();
            assert!(x.pow_p58().square_n(2).mul(&x.square()) == Fe::ONE);
        }
    }

    #[test]
    fn encoding_round_trips_and_is_canonical() {
        for _ in 0..200 {
            let x = random_fe();
            let bytes = x.to_bytes();
            assert_eq!(bytes[31] & 0x80, 0);
            assert_eq!(Fe::from_bytes(&bytes).to_bytes(), bytes);
        }
        // p itself (and p + 1) must encode as 0 (and 1).
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(Fe::from_bytes(&p).is_zero());
        p[0] = 0xee;
        assert!(Fe::from_bytes(&p) == Fe::ONE);
    }

    #[test]
    fn low_u64_hint_contains_the_canonical_low_bits() {
        let check = |x: Fe| {
            let canonical = u64::from_le_bytes(x.to_bytes()[..8].try_into().expect("8 bytes"));
            assert!(x.low_u64_hint().contains(&canonical));
        };
        for _ in 0..1000 {
            check(random_fe().square());
        }
        // Values in [p, 2^255): the non-canonical case, produced as p + small by a carry.
        let mut p_plus_5 = [0xffu8; 32];
        p_plus_5[0] = 0xed + 5;
        p_plus_5[31] = 0x7f;
        let x = Fe::from_bytes(&p_plus_5);
        check(x);
        check(x.mul(&Fe::ONE));
    }
}
