//! WireGuard key pairs in the form wg(8) uses: 32-byte x25519 keys written as base64.
//!
//! Operators may compare or generate keys with `wg genkey` / `wg pubkey`, so we read and write
//! exactly that form. The private key is wrapped so that it cannot reach a log line, an error
//! message or `Debug` output by accident, and is wiped from memory when dropped.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::Rng as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Length of a key in wg(8)'s base64 form (32 bytes, padded).
const BASE64_KEY_LEN: usize = 44;

/// Why a text is not a WireGuard key. Never contains the text itself: it may be a private key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a WireGuard key is 44 characters of base64 (as `wg genkey` prints), found {len}")]
    WrongLength { len: usize },
    #[error("a WireGuard key must be base64 (as `wg genkey` prints)")]
    NotBase64,
}

/// A node's WireGuard public key; the peers' config and the wire carry it in base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgPublicKey([u8; 32]);

impl WgPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        WgPublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(super) fn to_x25519(self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

impl FromStr for WgPublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        decode_key(text).map(|bytes| WgPublicKey(*bytes))
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

impl Serialize for WgPublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WgPublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's WireGuard private key. No `Display`, a redacted `Debug`, wiped on drop.
#[derive(Clone)]
pub struct WgPrivateKey(StaticSecret);

impl WgPrivateKey {
    /// A new random key, clamped as `wg genkey` clamps it.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut bytes[..]);
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        WgPrivateKey(StaticSecret::from(*bytes))
    }

    /// Reads a key in wg(8)'s base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text.trim()).map(|bytes| WgPrivateKey(StaticSecret::from(*bytes)))
    }

    /// The key in wg(8)'s base64 form, for writing the key file; wiped when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0.as_bytes()))
    }

    pub fn public_key(&self) -> WgPublicKey {
        WgPublicKey(PublicKey::from(&self.0).to_bytes())
    }

    pub(super) fn as_x25519(&self) -> &StaticSecret {
        &self.0
    }
}

impl fmt::Debug for WgPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPrivateKey([redacted], public {})", self.public_key())
    }
}

/// A fresh key pair, as `wg genkey | tee private | wg pubkey` would make.
pub fn generate_keypair() -> (WgPrivateKey, WgPublicKey) {
    let private = WgPrivateKey::generate();
    let public = private.public_key();
    (private, public)
}

/// Decodes 32 key bytes from base64, wiping the intermediate buffer.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    if text.len() != BASE64_KEY_LEN {
        return Err(KeyError::WrongLength { len: text.len() });
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    // 44 base64 characters with one '=' decode to exactly 32 bytes; anything else is an error.
    match BASE64.decode_slice(text.as_bytes(), &mut bytes[..]) {
        Ok(32) => Ok(bytes),
        _ => Err(KeyError::NotBase64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(text: &str) -> [u8; 32] {
        std::array::from_fn(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 §6.1, Alice's key pair.
        let private = from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let private = WgPrivateKey::from_base64(&BASE64.encode(private)).unwrap();
        assert_eq!(
            hex(private.public_key().as_bytes()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn keys_round_trip_through_base64() {
        let (private, public) = generate_keypair();
        let text = private.to_base64();
        assert_eq!(text.len(), BASE64_KEY_LEN);
        let again = WgPrivateKey::from_base64(&text).unwrap();
        assert_eq!(again.public_key(), public);
        assert_eq!(public.to_string().parse::<WgPublicKey>().unwrap(), public);
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(serde_json::from_str::<WgPublicKey>(&json).unwrap(), public);
    }

    #[test]
    fn generated_keys_are_clamped_like_wg_genkey() {
        let private = WgPrivateKey::generate();
        let bytes = private.as_x25519().to_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 0xc0, 0x40);
    }

    #[test]
    fn malformed_keys_are_rejected_without_echoing_them() {
        assert_eq!(
            "short".parse::<WgPublicKey>(),
            Err(KeyError::WrongLength { len: 5 })
        );
        let not_base64 = "!".repeat(BASE64_KEY_LEN);
        assert_eq!(
            WgPrivateKey::from_base64(&not_base64).err(),
            Some(KeyError::NotBase64)
        );
        // 44 characters that decode to 33 bytes' worth are not a key either.
        let unpadded = "A".repeat(BASE64_KEY_LEN);
        assert_eq!(unpadded.parse::<WgPublicKey>(), Err(KeyError::NotBase64));
        let error = WgPrivateKey::from_base64(&not_base64).err().unwrap();
        assert!(!error.to_string().contains(&not_base64));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let private = WgPrivateKey::generate();
        let shown = format!("{private:?}");
        assert!(!shown.contains(private.to_base64().as_str()));
        assert!(shown.contains("redacted"));
    }
}
