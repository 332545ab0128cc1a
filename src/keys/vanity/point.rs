//! Ed25519 curve points on top of [`Fe`], for the parts of the search that run once per batch
//! or once per thread: building the offset table, moving the batch centre, and bringing a
//! starting point computed by curve25519-dalek into our own coordinates.
//!
//! The curve is −x² + y² = 1 + d·x²·y² (RFC 8032 §5.1). Points are kept in extended twisted
//! Edwards coordinates (X : Y : Z : T) with x = X/Z, y = Y/Z, x·y = T/Z, and added with the
//! unified formula of Hisil, Wong, Carter and Dawson ("Twisted Edwards Curves Revisited", 2008,
//! §3.1), which is complete on ed25519 because d is not a square: it also doubles correctly.

use super::field::Fe;

/// A point in extended coordinates.
#[derive(Clone, Copy)]
pub(super) struct ExtendedPoint {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// A point in affine coordinates (Z = 1).
#[derive(Clone, Copy)]
pub(super) struct AffinePoint {
    pub(super) x: Fe,
    pub(super) y: Fe,
}

impl AffinePoint {
    pub(super) fn to_extended(self) -> ExtendedPoint {
        ExtendedPoint {
            x: self.x,
            y: self.y,
            z: Fe::ONE,
            t: self.x.mul(&self.y),
        }
    }

    /// The 32-byte ed25519 encoding: y little-endian, sign of x in the top bit (RFC 8032 §5.1.2).
    /// The search never needs it (it compares y only); the tests compare with dalek through it.
    #[cfg(test)]
    pub(super) fn compress(&self) -> [u8; 32] {
        let mut bytes = self.y.to_bytes();
        bytes[31] |= u8::from(self.x.is_negative()) << 7;
        bytes
    }

    /// The point encoded by `bytes` (RFC 8032 §5.1.3), or `None` if there is none.
    ///
    /// Solves x² = (y² − 1)/(d·y² + 1) with the single-exponentiation square root
    /// x = u·v³·(u·v⁷)^((p−5)/8), fixed up by √−1 when it yields the root of −u/v.
    pub(super) fn decompress(bytes: &[u8; 32]) -> Option<AffinePoint> {
        let x_sign = bytes[31] >> 7 == 1;
        let mut y_bytes = *bytes;
        y_bytes[31] &= 0x7f;
        let y = Fe::from_bytes(&y_bytes);
        if y.to_bytes() != y_bytes {
            return None; // a non-canonical y (≥ p)
        }
        let y2 = y.square();
        let u = y2.sub(&Fe::ONE).carry();
        let v = Fe::D.mul(&y2).add(&Fe::ONE).carry();
        let v3 = v.square().mul(&v);
        let v7 = v3.square().mul(&v);
        let mut x = u.mul(&v3).mul(&u.mul(&v7).pow_p58());
        let vx2 = v.mul(&x.square());
        if vx2 == u {
            // x is a root of u/v.
        } else if vx2 == u.neg() {
            x = x.mul(&Fe::SQRT_M1);
        } else {
            return None;
        }
        if x.is_zero() && x_sign {
            return None; // −0 is not a valid encoding
        }
        if x.is_negative() != x_sign {
            x = x.neg();
        }
        Some(AffinePoint { x, y })
    }
}

impl ExtendedPoint {
    /// P + Q (also correct for P = Q).
    pub(super) fn add(&self, other: &ExtendedPoint) -> ExtendedPoint {
        let a = self.y.sub(&self.x).mul(&other.y.sub(&other.x));
        let b = self.y.add(&self.x).mul(&other.y.add(&other.x));
        let c = self.t.mul(&Fe::D2).mul(&other.t);
        let zz = self.z.mul(&other.z);
        let d = zz.add(&zz).carry();
        let e = b.sub(&a);
        let f = d.sub(&c);
        let g = d.add(&c);
        let h = b.add(&a);
        ExtendedPoint {
            x: e.mul(&f),
            y: g.mul(&h),
            z: f.mul(&g),
            t: e.mul(&h),
        }
    }

    /// `n·self` by double-and-add; `n` is public here (a table index), never a secret.
    pub(super) fn mul_public(&self, n: u64) -> ExtendedPoint {
        let mut acc = AffinePoint {
            x: Fe::ZERO,
            y: Fe::ONE,
        }
        .to_extended();
        for bit in (0..u64::BITS - n.leading_zeros()).rev() {
            acc = acc.add(&acc);
            if (n >> bit) & 1 == 1 {
                acc = acc.add(self);
            }
        }
        acc
    }

    /// The projective Z coordinate, so a caller can fold its inversion into a batch.
    pub(super) fn z(&self) -> Fe {
        self.z
    }

    /// The affine point, given `z_inv = 1/Z` (computed by the caller, usually in a batch).
    pub(super) fn to_affine_with(self, z_inv: &Fe) -> AffinePoint {
        AffinePoint {
            x: self.x.mul(z_inv),
            y: self.y.mul(z_inv),
        }
    }

    pub(super) fn to_affine(self) -> AffinePoint {
        self.to_affine_with(&self.z.invert())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::Scalar;

    fn base_point() -> AffinePoint {
        AffinePoint::decompress(ED25519_BASEPOINT_POINT.compress().as_bytes())
            .expect("the base point decompresses")
    }

    #[test]
    fn decompress_then_compress_matches_dalek_for_random_points() {
        for _ in 0..100 {
            let scalar = Scalar::from_bytes_mod_order(rand::random());
            let encoded = (ED25519_BASEPOINT_POINT * scalar).compress().to_bytes();
            let point = AffinePoint::decompress(&encoded).expect("a valid point");
            assert_eq!(point.compress(), encoded);
        }
    }

    #[test]
    fn decompress_rejects_non_points() {
        // About half of all y values have no x; all of them must be refused, never mis-decoded.
        let mut refused = 0;
        for _ in 0..200 {
            let bytes: [u8; 32] = rand::random();
            let ours = AffinePoint::decompress(&bytes).map(|p| p.compress());
            let dalek = curve25519_dalek::edwards::CompressedEdwardsY(bytes)
                .decompress()
                .map(|p| p.compress().to_bytes());
            if dalek.is_none() {
                refused += 1;
            }
            // dalek accepts a few non-canonical encodings that we refuse; never the reverse.
            if let Some(ours) = ours {
                assert_eq!(Some(ours), dalek);
            }
        }
        assert!(refused > 50);
    }

    #[test]
    fn addition_and_multiples_match_dalek() {
        let b = base_point().to_extended();
        for n in [1u64, 2, 3, 8, 255, 4097, 123_456_789, u64::MAX] {
            let ours = b.mul_public(n).to_affine().compress();
            let dalek = (ED25519_BASEPOINT_POINT * Scalar::from(n))
                .compress()
                .to_bytes();
            assert_eq!(ours, dalek, "{n}·B");
        }
    }
}
