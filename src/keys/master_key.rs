//! The onion service's master (identity) key.
//!
//! Tor keeps the master key in ed25519's *expanded* form `a ‖ h` (RFC 8032 §5.1.5): the
//! clamped secret scalar a, whose multiple a·B is the public key, and the 32-byte prefix h that
//! seeds signature nonces. A normal key is derived from a 32-byte seed (`SHA-512(seed)`, with a
//! clamped), but a vanity key is found by changing a directly, so it has no seed: the expanded
//! form is the only one every key has, and the one this type keeps. The blinded signing keys
//! derive their nonce prefix from h (rend-spec-v3 appendix A.2), so h must be kept as is.

use std::fmt;

use curve25519_dalek::{EdwardsPoint, Scalar};
use rand::rngs::{SysError, SysRng};
use rand::TryRng;
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::onion_address::OnionAddress;

/// The master identity key: expanded secret and public key. The secret is wiped from memory
/// when the value is dropped, and neither `Debug` nor `Display` shows it (they show the
/// address).
pub struct MasterKey {
    /// `a ‖ h`.
    expanded: Zeroizing<[u8; 64]>,
    /// `a·B`, compressed.
    public: [u8; 32],
}

/// The expanded secret's scalar is not clamped, so it was not made by ed25519 key generation
/// (or by a vanity search): the bytes are not a master key, or are damaged. Tor's own
/// scalar multiplication assumes clamped scalars, so such a key could give tor and us
/// different addresses; it is refused rather than guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the secret scalar is not clamped as ed25519 requires (low 3 bits clear, bit 254 set, \
     bit 255 clear): these bytes are not an ed25519 expanded secret key, or they are damaged"
)]
pub struct NotClampedError;

/// The operating system could not provide random bytes for a new key.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessError(#[from] SysError);

impl MasterKey {
    /// A new random key (from the operating system's random number generator).
    pub fn generate() -> Result<MasterKey, RandomnessError> {
        Ok(MasterKey::from_seed(&*random_seed()?))
    }

    /// The key ed25519 derives from a 32-byte seed (RFC 8032 §5.1.5): `SHA-512(seed)`, with
    /// the first half clamped.
    pub fn from_seed(seed: &[u8; 32]) -> MasterKey {
        let mut expanded = Zeroizing::new([0u8; 64]);
        let mut digest = Sha512::digest(seed);
        expanded.copy_from_slice(&digest);
        digest.as_mut_slice().zeroize();
        // ed25519 clamping: clear the low 3 bits and bit 255, set bit 254.
        expanded[0] &= 0b1111_1000;
        expanded[31] &= 0b0111_1111;
        expanded[31] |= 0b0100_0000;
        // The scalar was clamped on the line above.
        MasterKey::from_expanded(&expanded).expect("a freshly clamped scalar is clamped")
    }

    /// The key whose expanded secret is `a ‖ h` (the 64 bytes after the header in tor's
    /// `hs_ed25519_secret_key`). The public key is computed with a full scalar multiplication.
    pub fn from_expanded(expanded: &[u8; 64]) -> Result<MasterKey, NotClampedError> {
        let mut scalar_bytes = Zeroizing::new([0u8; 32]);
        scalar_bytes.copy_from_slice(&expanded[..32]);
        if !is_clamped(&scalar_bytes[..]) {
            return Err(NotClampedError);
        }
        // a < 2^255 and B has order ℓ, so (a mod ℓ)·B = a·B: the reduction changes nothing.
        let mut scalar = Scalar::from_bytes_mod_order(*scalar_bytes);
        let public = EdwardsPoint::mul_base(&scalar).compress().to_bytes();
        scalar.zeroize();
        Ok(MasterKey {
            expanded: Zeroizing::new(*expanded),
            public,
        })
    }

    /// The ed25519 public key (the service's identity key).
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The expanded secret `a ‖ h`, for the signing code and for writing key files.
    pub fn expanded_secret(&self) -> &[u8; 64] {
        &self.expanded
    }

    /// The service's .onion address.
    pub fn onion_address(&self) -> OnionAddress {
        OnionAddress::from_public_key(self.public)
    }
}

/// 32 random bytes from the operating system, for a seed.
fn random_seed() -> Result<Zeroizing<[u8; 32]>, RandomnessError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    SysRng.try_fill_bytes(&mut seed[..])?;
    Ok(seed)
}

fn is_clamped(scalar: &[u8]) -> bool {
    scalar[0] & 0b0000_0111 == 0 && scalar[31] & 0b1100_0000 == 0b0100_0000
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, secret redacted)", self.onion_address())
    }
}

impl fmt::Display for MasterKey {
    /// The address only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.onion_address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn seed_gives_the_rfc8032_public_key() {
        // RFC 8032 §7.1, TEST 1.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = MasterKey::from_seed(&seed.try_into().unwrap());
        assert_eq!(
            key.public_key().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
    }

    #[test]
    fn expanded_form_round_trips_and_must_be_clamped() {
        let key = MasterKey::generate().unwrap();
        let again = MasterKey::from_expanded(key.expanded_secret()).unwrap();
        assert_eq!(again.public_key(), key.public_key());

        for (byte, bits) in [(0, 0b001), (31, 0b1000_0000)] {
            let mut damaged = *key.expanded_secret();
            damaged[byte] |= bits;
            assert_eq!(
                MasterKey::from_expanded(&damaged).unwrap_err(),
                NotClampedError
            );
        }
        let mut damaged = *key.expanded_secret();
        damaged[31] &= !0b0100_0000;
        assert_eq!(
            MasterKey::from_expanded(&damaged).unwrap_err(),
            NotClampedError
        );
    }

    #[test]
    fn debug_and_display_show_the_address_but_no_secret() {
        let key = MasterKey::from_seed(&[7; 32]);
        let address = key.onion_address().to_string();
        for shown in [format!("{key:?}"), format!("{key}")] {
            assert!(shown.contains(&address));
            let secret_hex: String = key.expanded_secret()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(!shown.contains(&secret_hex));
        }
    }
}
