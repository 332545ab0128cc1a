//! Version-3 onion addresses (rend-spec-v3 §6, "Encoding onion addresses").
//!
//! An address is `base32(PUBKEY ‖ CHECKSUM ‖ VERSION) + ".onion"`, where `PUBKEY` is the
//! service's 32-byte ed25519 identity key, `VERSION` is `0x03` and
//! `CHECKSUM = SHA3-256(".onion checksum" ‖ PUBKEY ‖ VERSION)[..2]`. Operators type and paste
//! these strings into config files, so parsing verifies the checksum: a single mistyped
//! character must be caught here rather than surface as "descriptor not found" an hour later.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

/// The only onion-address version this program speaks (rend-spec-v3 §6).
const VERSION: u8 = 3;
/// Length of the base32 part of a v3 address: 35 bytes encode to 56 characters.
pub const ADDRESS_LEN: usize = 56;
/// The lower-case RFC 4648 base32 alphabet that Tor uses for onion addresses.
pub const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A checked v3 onion address, stored as the service's ed25519 identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OnionAddress {
    public_key: [u8; 32],
}

/// Why a string is not a v3 onion address. Each variant reads as the end of a sentence that
/// starts with the name of the offending config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnionAddressError {
    #[error("not a v3 onion address: expected 56 base32 characters followed by \".onion\", got {0} characters")]
    WrongLength(usize),
    #[error("not a v3 onion address: {0:?} is not a base32 character (a-z, 2-7)")]
    BadCharacter(char),
    #[error("not a v3 onion address: version byte is {0}, expected 3")]
    WrongVersion(u8),
    #[error("bad checksum (is a character mistyped?)")]
    BadChecksum,
}

impl OnionAddress {
    /// The address of the service whose identity public key is `public_key`.
    pub fn from_public_key(public_key: [u8; 32]) -> Self {
        OnionAddress { public_key }
    }

    /// The service's ed25519 identity public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// The 56 base32 characters without the ".onion" suffix.
    pub fn base32(&self) -> String {
        let mut raw = [0u8; 35];
        raw[..32].copy_from_slice(&self.public_key);
        raw[32..34].copy_from_slice(&checksum(&self.public_key));
        raw[34] = VERSION;
        base32_encode(&raw)
    }
}

/// `SHA3-256(".onion checksum" ‖ PUBKEY ‖ VERSION)[..2]`.
fn checksum(public_key: &[u8; 32]) -> [u8; 2] {
    let digest = Sha3_256::new()
        .chain_update(b".onion checksum")
        .chain_update(public_key)
        .chain_update([VERSION])
        .finalize();
    [digest[0], digest[1]]
}

/// Value (0..32) of a lower-case base32 character, or `None`.
pub fn base32_value(c: u8) -> Option<u8> {
    match c {
        b'a'..=b'z' => Some(c - b'a'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// Unpadded lower-case base32 (RFC 4648) of `bytes`.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32_ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

impl FromStr for OnionAddress {
    type Err = OnionAddressError;

    /// Accepts `<56 chars>.onion` or the bare 56 characters, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let encoded = lower.strip_suffix(".onion").unwrap_or(&lower);
        if encoded.len() != ADDRESS_LEN {
            return Err(OnionAddressError::WrongLength(encoded.chars().count()));
        }
        // 56 characters × 5 bits = 280 bits = exactly 35 bytes, so no padding bits remain.
        let mut raw = [0u8; 35];
        let mut buffer: u32 = 0;
        let mut bits = 0;
        let mut filled = 0;
        for c in encoded.bytes() {
            let value = base32_value(c).ok_or(OnionAddressError::BadCharacter(c as char))?;
            buffer = (buffer << 5) | u32::from(value);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                raw[filled] = (buffer >> bits) as u8;
                filled += 1;
            }
        }
        if raw[34] != VERSION {
            return Err(OnionAddressError::WrongVersion(raw[34]));
        }
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(&raw[..32]);
        if raw[32..34] != checksum(&public_key) {
            return Err(OnionAddressError::BadChecksum);
        }
        Ok(OnionAddress { public_key })
    }
}

impl TryFrom<String> for OnionAddress {
    type Error = OnionAddressError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<OnionAddress> for String {
    fn from(address: OnionAddress) -> String {
        address.to_string()
    }
}

impl fmt::Display for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.onion", self.base32())
    }
}

impl fmt::Debug for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionAddress({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Tor Project's own v3 address (a public, well-known vector).
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    #[test]
    fn parses_and_reencodes_a_known_address() {
        let address: OnionAddress = TORPROJECT.parse().unwrap();
        assert_eq!(address.to_string(), TORPROJECT);
    }

    #[test]
    fn accepts_upper_case_and_missing_suffix() {
        let address: OnionAddress = TORPROJECT
            .trim_end_matches(".onion")
            .to_uppercase()
            .parse()
            .unwrap();
        assert_eq!(address.to_string(), TORPROJECT);
    }

    #[test]
    fn one_mistyped_character_is_a_bad_checksum() {
        let typo = TORPROJECT.replacen("2gzy", "2gzz", 1);
        assert_eq!(
            typo.parse::<OnionAddress>(),
            Err(OnionAddressError::BadChecksum)
        );
    }

    #[test]
    fn rejects_wrong_length_characters_and_version() {
        assert_eq!(
            "abc.onion".parse::<OnionAddress>(),
            Err(OnionAddressError::WrongLength(3))
        );
        let bad_char = TORPROJECT.replacen('2', "1", 1);
        assert_eq!(
            bad_char.parse::<OnionAddress>(),
            Err(OnionAddressError::BadCharacter('1'))
        );
        // The last character carries the version's low bits: 'd' decodes to version 3, 'e' to 4.
        let version4 = TORPROJECT.replacen("wid.onion", "wie.onion", 1);
        assert!(matches!(
            version4.parse::<OnionAddress>(),
            Err(OnionAddressError::WrongVersion(_))
        ));
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10 test vectors, lower-cased and unpadded.
        assert_eq!(base32_encode(b"f"), "my");
        assert_eq!(base32_encode(b"fooba"), "mzxw6ytb");
        assert_eq!(base32_encode(b"foobar"), "mzxw6ytboi");
    }
}
