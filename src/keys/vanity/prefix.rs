//! The address prefix a vanity search looks for, checked once and pre-decoded for the hot loop.
//!
//! An onion address is the base32 encoding of the public key followed by a checksum and a
//! version byte (rend-spec-v3 §6), so its first n characters are exactly the first 5·n bits of
//! the public key. Instead of encoding each candidate key, the search compares those bits
//! directly: the prefix becomes a 64-bit value and mask over the key's first 8 bytes. That caps
//! a prefix at 12 characters (60 bits), far beyond what any machine can find: 32^12 ≈ 1.2·10^18
//! tries, thousands of core-years.

use std::fmt;
use std::str::FromStr;

use crate::keys::onion_address::{base32_value, OnionAddress};

/// A checked vanity prefix: 1 to [`VanityPrefix::MAX_LEN`] lower-case base32 characters.
#[derive(Clone, PartialEq, Eq)]
pub struct VanityPrefix {
    text: String,
    filter: PrefixFilter,
}

/// The prefix as a test on the public key's first 8 bytes, read as a little-endian `u64`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct PrefixFilter {
    /// The bits that the prefix fixes.
    mask: u64,
    /// Their required values.
    value: u64,
}

impl PrefixFilter {
    /// Lets every key through: for tests that want to see every candidate.
    #[cfg(test)]
    pub(super) const ANY: PrefixFilter = PrefixFilter { mask: 0, value: 0 };

    #[cfg(target_arch = "x86_64")]
    pub(super) fn mask(&self) -> u64 {
        self.mask
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) fn value(&self) -> u64 {
        self.value
    }

    /// Whether a public key whose first 8 bytes, read little-endian, are `first8` matches.
    #[inline(always)]
    pub(super) fn matches_first8(&self, first8: u64) -> bool {
        first8 & self.mask == self.value
    }

    /// Whether the public key (or y coordinate) encoded as `bytes` matches.
    pub(super) fn matches(&self, bytes: &[u8; 32]) -> bool {
        let mut first8 = [0u8; 8];
        first8.copy_from_slice(&bytes[..8]);
        self.matches_first8(u64::from_le_bytes(first8))
    }
}

/// Why a string is not a usable vanity prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("the vanity prefix is empty")]
    Empty,
    #[error(
        "the vanity prefix has {len} characters; at most {max} are supported \
         (each character multiplies the search time by 32)"
    )]
    TooLong { len: usize, max: usize },
    #[error(
        "{character:?} (character {position} of the vanity prefix) never appears in an onion \
         address: only a-z and 2-7 do (no 0, 1, 8 or 9)"
    )]
    BadCharacter { character: char, position: usize },
}

impl VanityPrefix {
    /// The longest prefix accepted; see the module documentation.
    pub const MAX_LEN: usize = 12;

    /// The prefix in lower case, as it will appear in the address.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Number of characters.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Always false: an empty prefix is refused when parsing.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// How many candidates a search tries on average before a hit: 32^len.
    pub fn expected_tries(&self) -> u64 {
        // len ≤ 12, so 32^len ≤ 2^60 fits.
        1u64 << (5 * self.len())
    }

    /// The fast form of the test, for the search loop.
    pub(super) fn filter(&self) -> PrefixFilter {
        self.filter
    }

    /// Whether `address` starts with this prefix: the slow, obviously right check used to
    /// confirm a hit before it is reported.
    pub fn matches(&self, address: &OnionAddress) -> bool {
        address.base32().starts_with(&self.text)
    }
}

impl FromStr for VanityPrefix {
    type Err = PrefixError;

    /// Accepts upper or lower case; surrounding white space is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim().to_ascii_lowercase();
        if text.is_empty() {
            return Err(PrefixError::Empty);
        }
        let len = text.chars().count();
        if len > Self::MAX_LEN {
            return Err(PrefixError::TooLong {
                len,
                max: Self::MAX_LEN,
            });
        }
        // The prefix as a big-endian bit string, left-aligned in 64 bits: that is how base32
        // reads the key's bytes (most significant bit of byte 0 first).
        let mut bits: u64 = 0;
        for (index, character) in text.chars().enumerate() {
            let value = u8::try_from(character).ok().and_then(base32_value).ok_or(
                PrefixError::BadCharacter {
                    character,
                    position: index + 1,
                },
            )?;
            bits = (bits << 5) | u64::from(value);
        }
        let used = 5 * len as u32; // ≤ 60
        let value_be = bits << (64 - used);
        let mask_be = u64::MAX << (64 - used);
        // Reading the key's first 8 bytes little-endian reverses the byte order.
        Ok(VanityPrefix {
            text,
            filter: PrefixFilter {
                mask: mask_be.swap_bytes(),
                value: value_be.swap_bytes(),
            },
        })
    }
}

impl fmt::Display for VanityPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for VanityPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VanityPrefix({:?})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_counts_expected_tries() {
        let prefix: VanityPrefix = " RustB ".parse().unwrap();
        assert_eq!(prefix.as_str(), "rustb");
        assert_eq!(prefix.expected_tries(), 32u64.pow(5));
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        assert_eq!("".parse::<VanityPrefix>(), Err(PrefixError::Empty));
        assert_eq!(
            "abcdefghijklm".parse::<VanityPrefix>(),
            Err(PrefixError::TooLong { len: 13, max: 12 })
        );
        assert_eq!(
            "ab1".parse::<VanityPrefix>(),
            Err(PrefixError::BadCharacter {
                character: '1',
                position: 3
            })
        );
        assert!(matches!(
            "aé".parse::<VanityPrefix>(),
            Err(PrefixError::BadCharacter {
                character: 'é', ..
            })
        ));
        assert!("abcdefghijkl".parse::<VanityPrefix>().is_ok());
    }

    #[test]
    fn bit_test_agrees_with_the_encoded_address() {
        // Short prefixes so that many random keys match and many do not.
        for text in ["a", "7", "q2", "zz", "mk7", "rust", "abcdefghijkl"] {
            let prefix: VanityPrefix = text.parse().unwrap();
            let mut hits = 0;
            for round in 0..4_000 {
                let mut key: [u8; 32] = rand::random();
                // Force every other key to match, so long prefixes are tested both ways.
                if round % 2 == 0 {
                    let value = prefix.filter.value.to_le_bytes();
                    let mask = prefix.filter.mask.to_le_bytes();
                    for i in 0..8 {
                        key[i] = (key[i] & !mask[i]) | value[i];
                    }
                }
                let address = OnionAddress::from_public_key(key);
                assert_eq!(
                    prefix.filter.matches(&key),
                    prefix.matches(&address),
                    "{text}"
                );
                hits += usize::from(prefix.matches(&address));
            }
            assert!((2_000..4_000).contains(&hits), "{text}");
        }
    }
}
