//! The sealed form of `master.key`: the master key encrypted at rest under the KEK.
//!
//! ```text
//! rustbalance-sealed-master-key-v1
//! BASE64(nonce ‖ ciphertext ‖ tag)
//! ```
//!
//! AES-256-GCM under the key-encryption key (`kek.rs`), with a fresh random 12-byte nonce each
//! time a key is sealed. The plaintext is the 64-byte expanded secret `a ‖ h`, the one form
//! every master key has (a vanity key has no seed; see `MasterKey`). The first line is the
//! associated data, so a ciphertext cannot be passed off under another format version; the
//! tag makes any change to the file, like a wrong KEK, fail to decrypt rather than give a
//! different key. Base64 is the standard alphabet with padding.
//!
//! The first line also tells an operator who opens the file what it is, and lets the loader
//! recognise a sealed key before it tries tor's formats ([`is_sealed`]).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::CryptoRng;
use zeroize::Zeroizing;

use super::kek::Kek;
use super::MasterKey;

/// The first line of a sealed master key; the digit is the format's version.
pub const SEALED_HEADER: &str = "rustbalance-sealed-master-key-v1";
/// What the first line of every version starts with.
const SEALED_MAGIC: &str = "rustbalance-sealed-master-key-";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const EXPANDED_LEN: usize = 64;
/// nonce ‖ ciphertext ‖ tag.
const SEALED_LEN: usize = NONCE_LEN + EXPANDED_LEN + TAG_LEN;

/// Why sealed text did not give a master key. The messages complete "<file> is a sealed
/// master key, but ..." and never quote secret bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    #[error("it is not text (damaged?)")]
    NotText,
    #[error(
        "its first line is {found:?}, not {SEALED_HEADER:?}: it was written by a newer \
         RustBalance, or it is damaged"
    )]
    UnknownVersion { found: String },
    #[error("it has no encrypted key after its first line (truncated?)")]
    Truncated,
    #[error("its second line is not base64 (damaged?)")]
    BadBase64,
    #[error("its second line holds {found} bytes instead of {SEALED_LEN} (truncated or damaged?)")]
    BadLength { found: usize },
    #[error("it has more text after the encrypted key (damaged, or two files pasted together?)")]
    TrailingText,
    #[error("it does not decrypt (wrong key-encryption key, or the file was altered)")]
    WrongKeyOrAltered,
    #[error("it decrypts, but not to an ed25519 master key (written by a faulty program?)")]
    NotAMasterKey,
}

/// Whether `contents` is meant to be a sealed master key (of any version), judged by its first
/// line only: a damaged one is still recognised, so that [`unseal`] can say what is wrong.
pub fn is_sealed(contents: &[u8]) -> bool {
    contents.starts_with(SEALED_MAGIC.as_bytes())
}

/// `key` sealed under `kek`, as the text of a file. `rng` draws the nonce.
pub fn seal(key: &MasterKey, kek: &Kek, rng: &mut impl CryptoRng) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ciphertext = cipher(kek)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: key.expanded_secret(),
                aad: SEALED_HEADER.as_bytes(),
            },
        )
        // AES-GCM fails only for messages over 64 GiB; this one is 64 bytes.
        .expect("AES-GCM seals a 64-byte message");
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&ciphertext);
    format!("{SEALED_HEADER}\n{}\n", BASE64.encode(&blob))
}

/// The master key sealed in `contents` (the text [`seal`] wrote), decrypted with `kek`.
pub fn unseal(contents: &[u8], kek: &Kek) -> Result<MasterKey, UnsealError> {
    SealedMasterKey::parse(contents)?.open(kek)
}

/// A sealed master key whose text has been checked, not yet decrypted: a damaged file is
/// reported as such before anyone looks for its KEK.
pub struct SealedMasterKey {
    blob: [u8; SEALED_LEN],
}

impl SealedMasterKey {
    pub fn parse(contents: &[u8]) -> Result<SealedMasterKey, UnsealError> {
        let text = std::str::from_utf8(contents).map_err(|_| UnsealError::NotText)?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        if header != SEALED_HEADER {
            return Err(UnsealError::UnknownVersion {
                found: printable_header(header),
            });
        }
        let body = lines.next().ok_or(UnsealError::Truncated)?.trim();
        if body.is_empty() {
            return Err(UnsealError::Truncated);
        }
        if lines.any(|line| !line.trim().is_empty()) {
            return Err(UnsealError::TrailingText);
        }
        let blob = BASE64.decode(body).map_err(|_| UnsealError::BadBase64)?;
        let blob = <[u8; SEALED_LEN]>::try_from(&blob[..])
            .map_err(|_| UnsealError::BadLength { found: blob.len() })?;
        Ok(SealedMasterKey { blob })
    }

    /// Decrypts with `kek`.
    pub fn open(&self, kek: &Kek) -> Result<MasterKey, UnsealError> {
        open(SEALED_HEADER.as_bytes(), &self.blob, kek)
    }
}

/// Decrypts `nonce ‖ ciphertext ‖ tag` with `header` as associated data.
fn open(header: &[u8], blob: &[u8; SEALED_LEN], kek: &Kek) -> Result<MasterKey, UnsealError> {
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    let plaintext = Zeroizing::new(
        cipher(kek)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: header,
                },
            )
            .map_err(|_| UnsealError::WrongKeyOrAltered)?,
    );
    let mut expanded = Zeroizing::new([0u8; EXPANDED_LEN]);
    // GCM's plaintext is the ciphertext less the tag: 80 - 16 = 64 bytes.
    expanded.copy_from_slice(&plaintext);
    MasterKey::from_expanded(&expanded).map_err(|_| UnsealError::NotAMasterKey)
}

fn cipher(kek: &Kek) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(kek.as_bytes()))
}

/// The first line, shortened and with anything unprintable replaced, for an error message.
/// Only called on text that starts with [`SEALED_MAGIC`], which is no secret.
fn printable_header(line: &str) -> String {
    line.chars()
        .take(SEALED_MAGIC.len() + 16)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(11)
    }

    fn key() -> MasterKey {
        MasterKey::from_seed(&[9; 32])
    }

    fn kek() -> Kek {
        Kek::from_bytes([0x4b; 32])
    }

    fn sealed() -> String {
        seal(&key(), &kek(), &mut rng())
    }

    /// `sealed()` with its binary part changed by `edit`.
    fn with_blob(edit: impl FnOnce(&mut Vec<u8>)) -> String {
        let text = sealed();
        let body = text.lines().nth(1).unwrap();
        let mut blob = BASE64.decode(body).unwrap();
        edit(&mut blob);
        format!("{SEALED_HEADER}\n{}\n", BASE64.encode(&blob))
    }

    #[test]
    fn a_sealed_key_round_trips() {
        let text = sealed();
        assert!(text.starts_with("rustbalance-sealed-master-key-v1\n"));
        assert_eq!(text.lines().count(), 2);
        let again = unseal(text.as_bytes(), &kek()).unwrap();
        assert_eq!(again.expanded_secret(), key().expanded_secret());
        assert_eq!(again.onion_address(), key().onion_address());
    }

    #[test]
    fn each_sealing_draws_a_new_nonce() {
        let mut rng = rng();
        let first = seal(&key(), &kek(), &mut rng);
        let second = seal(&key(), &kek(), &mut rng);
        assert_ne!(first, second);
    }

    #[test]
    fn the_sealed_text_holds_no_key_bytes() {
        let text = sealed();
        let expanded = key().expanded_secret().to_vec();
        let hex: String = expanded.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex[..32]));
        assert!(!text.contains(&BASE64.encode(&expanded[..30])));
        assert!(!text.contains(&BASE64.encode(kek().as_bytes())));
    }

    #[test]
    fn a_wrong_kek_is_refused() {
        let other = Kek::from_bytes([0x4c; 32]);
        assert_eq!(
            unseal(sealed().as_bytes(), &other).unwrap_err(),
            UnsealError::WrongKeyOrAltered
        );
    }

    #[test]
    fn flipping_any_bit_of_nonce_ciphertext_or_tag_is_refused() {
        for index in 0..SEALED_LEN {
            let text = with_blob(|blob| blob[index] ^= 0x01);
            assert_eq!(
                unseal(text.as_bytes(), &kek()).unwrap_err(),
                UnsealError::WrongKeyOrAltered,
                "byte {index}"
            );
        }
    }

    #[test]
    fn the_header_is_bound_to_the_ciphertext() {
        // A version-2 reader would use its own header as associated data: a version-1
        // ciphertext relabelled as version 2 must not decrypt.
        let parsed = SealedMasterKey::parse(sealed().as_bytes()).unwrap();
        assert_eq!(
            open(b"rustbalance-sealed-master-key-v2", &parsed.blob, &kek()).unwrap_err(),
            UnsealError::WrongKeyOrAltered
        );
        // And the reader refuses any header but its own.
        let relabelled = sealed().replacen("-v1", "-v2", 1);
        assert!(is_sealed(relabelled.as_bytes()));
        assert_eq!(
            unseal(relabelled.as_bytes(), &kek()).unwrap_err(),
            UnsealError::UnknownVersion {
                found: "rustbalance-sealed-master-key-v2".into()
            }
        );
    }

    #[test]
    fn damaged_text_gets_its_own_error() {
        let text = sealed();
        let cases: [(String, UnsealError); 6] = [
            (SEALED_HEADER.to_owned(), UnsealError::Truncated),
            (format!("{SEALED_HEADER}\n\n"), UnsealError::Truncated),
            (format!("{SEALED_HEADER}\n%%%%\n"), UnsealError::BadBase64),
            (
                with_blob(|blob| {
                    blob.pop();
                }),
                UnsealError::BadLength {
                    found: SEALED_LEN - 1,
                },
            ),
            (format!("{text}{text}"), UnsealError::TrailingText),
            (
                format!("{SEALED_HEADER}x\n{}", text.lines().nth(1).unwrap()),
                UnsealError::UnknownVersion {
                    found: format!("{SEALED_HEADER}x"),
                },
            ),
        ];
        for (damaged, expected) in cases {
            assert_eq!(
                unseal(damaged.as_bytes(), &kek()).unwrap_err(),
                expected,
                "{damaged:?}"
            );
        }
        let mut not_text = text.into_bytes();
        not_text[40] = 0xff;
        assert_eq!(unseal(&not_text, &kek()).unwrap_err(), UnsealError::NotText);
        // Windows line ends and a missing final newline are fine.
        let crlf = sealed().replace('\n', "\r\n");
        assert!(unseal(crlf.trim_end().as_bytes(), &kek()).is_ok());
    }

    #[test]
    fn sealed_files_are_recognised_and_others_are_not() {
        assert!(is_sealed(sealed().as_bytes()));
        let mut tor = b"== ed25519v1-secret: type0 ==\0\0\0".to_vec();
        tor.extend_from_slice(key().expanded_secret());
        for other in [
            &tor[..],
            b"-----BEGIN PRIVATE KEY-----\n",
            &[9u8; 32][..],
            b"",
            b"rustbalance",
        ] {
            assert!(!is_sealed(other), "{other:?}");
        }
    }
}
