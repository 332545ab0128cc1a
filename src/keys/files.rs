//! Master-key files: reading the formats operators already have, writing the ones we need.
//!
//! Read (the format is recognised from the content, not the file name):
//! - a sealed master key (`sealed.rs`): what `init` and `join` write as a node's `master.key`,
//!   the key encrypted under the key-encryption key (`kek.rs`), which is looked for where
//!   [`KekSource`] says.
//! - tor's `hs_ed25519_secret_key`: the 32-byte header `== ed25519v1-secret: type0 ==` padded
//!   with NULs, then the 64-byte expanded key `a ‖ h` (C tor `crypto_write_tagged_contents_to_file`).
//! - a HiddenServiceDir, or a key directory written by mkp224o (the same three files): the
//!   secret key above, checked against `hs_ed25519_public_key` and `hostname` when present.
//! - Onionbalance's master key: PEM "PRIVATE KEY", PKCS#8 (RFC 8410) holding a 32-byte seed.
//! - a raw 32-byte ed25519 seed.
//!
//! Every format but the sealed one holds the key in clear; a node still runs from such a file,
//! with a warning in its log, so that existing keys keep working.
//!
//! Write: a node's `master.key` sealed ([`write_sealed_master_key`]); and a HiddenServiceDir
//! exactly as tor writes one (`hs_ed25519_secret_key`, `hs_ed25519_public_key`, `hostname`;
//! directory 0700, files 0600), which tor, mkp224o users and Onionbalance can all load. Each
//! file is written atomically (`fsutil`: temporary file in the same directory, fsync, then
//! rename or link, fsync of the directory) and an existing key is never overwritten.
//!
//! Errors name the file and what is wrong with it; no error message ever contains key bytes.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519::pkcs8::DecodePrivateKey;
use zeroize::Zeroizing;

use super::kek::{Kek, KekError, KekSource};
use super::sealed::{self, SealedMasterKey, UnsealError};
use super::{MasterKey, NotClampedError};
use crate::storage::fsutil::{
    create_private_dir, write_atomic, write_new_atomic, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE,
};

/// File names inside a HiddenServiceDir (C tor `hs_service.c`).
pub const SECRET_KEY_FILE: &str = "hs_ed25519_secret_key";
pub const PUBLIC_KEY_FILE: &str = "hs_ed25519_public_key";
pub const HOSTNAME_FILE: &str = "hostname";

/// tor's tagged-file header: `== <type>: <tag> ==`, NUL-padded to 32 bytes.
const HEADER_LEN: usize = 32;
const SECRET_HEADER: &[u8] = b"== ed25519v1-secret: type0 ==";
const PUBLIC_HEADER: &[u8] = b"== ed25519v1-public: type0 ==";
/// Every tor ed25519 key file starts with this, whatever its tag.
const TOR_KEY_MAGIC: &[u8] = b"== ed25519v1-";

/// No key file in any accepted format is near this size; larger files are refused unread.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Why a key file or directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {len} bytes long, far too large for a key file")]
    TooLarge { path: PathBuf, len: u64 },
    #[error(
        "{path} is not a key file rustbalance understands: expected a sealed master.key, tor's \
         hs_ed25519_secret_key, an onion service directory (tor's HiddenServiceDir or mkp224o's \
         output), an Onionbalance PEM key, or a raw 32-byte ed25519 seed"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path} is a sealed master key, but {source}")]
    Sealed {
        path: PathBuf,
        #[source]
        source: UnsealError,
    },
    #[error("{path} is encrypted, but {source}")]
    Kek {
        path: PathBuf,
        #[source]
        source: KekError,
    },
    #[error(
        "cannot decrypt {path} with the key-encryption key {kek} (wrong key-encryption key, or \
         the file was altered)"
    )]
    CannotDecrypt { path: PathBuf, kek: PathBuf },
    #[error(
        "{path} is tor's public key file; the master key is the secret one, {SECRET_KEY_FILE} \
         in the same directory"
    )]
    PublicKeyGiven { path: PathBuf },
    #[error("{path} is not in tor's secret-key format (it lacks the \"== ed25519v1-secret: type0 ==\" header)")]
    NotTorSecretKey { path: PathBuf },
    #[error("{path} has a tor key header but is not an ed25519 secret key of type0 (header: {header:?})")]
    UnsupportedTorKey { path: PathBuf, header: String },
    #[error("{path} has tor's secret-key header but is {len} bytes long instead of 96 (truncated or damaged?)")]
    TorKeyLength { path: PathBuf, len: usize },
    #[error("{path}: {source}")]
    BadExpandedKey {
        path: PathBuf,
        #[source]
        source: NotClampedError,
    },
    #[error(
        "{path} is an encrypted PEM key; decrypt it first (openssl pkey -in {path} -out plain.pem)"
    )]
    EncryptedPem { path: PathBuf },
    #[error("{path} is not a usable PKCS#8 ed25519 PEM key: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path} holds a public key that does not belong to its private key")]
    PemPublicKeyMismatch { path: PathBuf },
    #[error("the directory {dir} has no {SECRET_KEY_FILE}")]
    NoSecretKeyInDir { dir: PathBuf },
    #[error(
        "{path} does not match {SECRET_KEY_FILE} in the same directory ({what}); the directory \
         mixes files from different keys"
    )]
    DirMismatch { path: PathBuf, what: &'static str },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is not empty and others may read it, which tor refuses for a HiddenServiceDir; \
         use a new directory or `chmod 700` this one"
    )]
    DirectoryTooOpen { path: PathBuf },
    #[error(
        "refusing to overwrite the existing key file {path}; choose an empty or new directory"
    )]
    AlreadyExists { path: PathBuf },
}

/// Loads a master key from `path`: a key file in any accepted format, or a directory holding
/// `hs_ed25519_secret_key` (see the module documentation). A sealed key is decrypted with the
/// key-encryption key found through the environment ([`KekSource::from_env`]); a key in clear
/// is accepted with a warning.
pub fn load_master_key(path: &Path) -> Result<MasterKey, KeyFileError> {
    load_master_key_with(path, &KekSource::from_env())
}

/// [`load_master_key`], looking for the key-encryption key where `kek_source` says.
pub fn load_master_key_with(
    path: &Path,
    kek_source: &KekSource,
) -> Result<MasterKey, KeyFileError> {
    let (key, storage) = read_master_key(path, kek_source)?;
    if storage == Storage::Clear {
        tracing::warn!(
            "{} holds the master key unencrypted: anyone who gets a copy of it has the key. \
             To store it encrypted, set the node up from it in a new config directory with \
             `rustbalance init --import-key {}` (see README, \"Secrets and threat model\")",
            path.display(),
            path.display()
        );
    }
    Ok(key)
}

/// Loads a master key to import it (`init --import-key`): like [`load_master_key`], without
/// the warning about a key in clear, which is about to be stored sealed.
pub fn import_master_key(path: &Path) -> Result<MasterKey, KeyFileError> {
    read_master_key(path, &KekSource::from_env()).map(|(key, _)| key)
}

/// How a key file holds the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    Sealed,
    Clear,
}

fn read_master_key(
    path: &Path,
    kek_source: &KekSource,
) -> Result<(MasterKey, Storage), KeyFileError> {
    let metadata = fs::metadata(path).map_err(|source| read_error(path, source))?;
    if metadata.is_dir() {
        return Ok((load_hidden_service_dir(path)?, Storage::Clear));
    }
    let contents = read_small_file(path)?;
    if sealed::is_sealed(&contents) {
        return Ok((unseal_file(path, &contents, kek_source)?, Storage::Sealed));
    }
    let key = if contents.starts_with(TOR_KEY_MAGIC) {
        parse_tor_secret_key(path, &contents)?
    } else if looks_like_pem(&contents) {
        parse_pem(path, &contents)?
    } else if let Ok(seed) = <&[u8; 32]>::try_from(&contents[..]) {
        MasterKey::from_seed(seed)
    } else {
        return Err(KeyFileError::UnknownFormat {
            path: path.to_owned(),
        });
    };
    Ok((key, Storage::Clear))
}

/// The key in the sealed file `path`: its text is checked first, so a damaged file is reported
/// as such whether or not the key-encryption key is at hand.
fn unseal_file(
    path: &Path,
    contents: &[u8],
    kek_source: &KekSource,
) -> Result<MasterKey, KeyFileError> {
    let sealed_error = |source| KeyFileError::Sealed {
        path: path.to_owned(),
        source,
    };
    let sealed = SealedMasterKey::parse(contents).map_err(sealed_error)?;
    let (kek_path, kek) = kek_source.find().map_err(|source| KeyFileError::Kek {
        path: path.to_owned(),
        source,
    })?;
    sealed.open(&kek).map_err(|error| match error {
        UnsealError::WrongKeyOrAltered => KeyFileError::CannotDecrypt {
            path: path.to_owned(),
            kek: kek_path,
        },
        other => sealed_error(other),
    })
}

/// Loads the key of a HiddenServiceDir (tor's or mkp224o's): `hs_ed25519_secret_key`, checked
/// against `hs_ed25519_public_key` and `hostname` if they exist.
pub fn load_hidden_service_dir(dir: &Path) -> Result<MasterKey, KeyFileError> {
    let secret_path = dir.join(SECRET_KEY_FILE);
    let contents = match read_small_file(&secret_path) {
        Err(KeyFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(KeyFileError::NoSecretKeyInDir {
                dir: dir.to_owned(),
            })
        }
        other => other?,
    };
    let key = parse_tor_secret_key(&secret_path, &contents)?;

    let public_path = dir.join(PUBLIC_KEY_FILE);
    if let Some(public_file) = read_if_exists(&public_path)? {
        if public_file[..] != public_key_file_contents(&key)[..] {
            return Err(KeyFileError::DirMismatch {
                path: public_path,
                what: "different public key",
            });
        }
    }
    let hostname_path = dir.join(HOSTNAME_FILE);
    if let Some(hostname) = read_if_exists(&hostname_path)? {
        if String::from_utf8_lossy(&hostname).trim() != key.onion_address().to_string() {
            return Err(KeyFileError::DirMismatch {
                path: hostname_path,
                what: "different address",
            });
        }
    }
    Ok(key)
}

/// Writes `key` into `dir` as tor writes a HiddenServiceDir. Creates `dir` (mode 0700) if
/// needed; an existing empty directory is set to 0700, an existing non-empty one must already
/// be private. Refuses to replace any of the three files if one already exists.
pub fn write_hidden_service_dir(dir: &Path, key: &MasterKey) -> Result<(), KeyFileError> {
    match fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => {
            return Err(KeyFileError::NotADirectory {
                path: dir.to_owned(),
            })
        }
        Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => {
            // tor refuses a service directory that others can read. Tightening an empty
            // directory is what the operator wants; a full one may be theirs for other uses.
            let mut entries = fs::read_dir(dir).map_err(|source| read_error(dir, source))?;
            if entries.next().is_some() {
                return Err(KeyFileError::DirectoryTooOpen {
                    path: dir.to_owned(),
                });
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
                .map_err(|source| write_error(dir, source))?
        }
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_private_dir(dir).map_err(|source| write_error(dir, source))?
        }
        Err(source) => return Err(read_error(dir, source)),
    }
    for name in [SECRET_KEY_FILE, PUBLIC_KEY_FILE, HOSTNAME_FILE] {
        let path = dir.join(name);
        if path.symlink_metadata().is_ok() {
            return Err(KeyFileError::AlreadyExists { path });
        }
    }
    let hostname = format!("{}\n", key.onion_address());
    let files: [(&str, &[u8]); 3] = [
        (SECRET_KEY_FILE, &secret_key_file_contents(key)),
        (PUBLIC_KEY_FILE, &public_key_file_contents(key)),
        (HOSTNAME_FILE, hostname.as_bytes()),
    ];
    for (name, contents) in files {
        let path = dir.join(name);
        write_atomic(&path, contents, PRIVATE_FILE_MODE)
            .map_err(|source| write_error(&path, source))?;
    }
    Ok(())
}

/// Writes `key` sealed under `kek` to the single file `path` (mode 0600, atomically).
/// Refuses to replace an existing file.
pub fn write_sealed_master_key(
    path: &Path,
    key: &MasterKey,
    kek: &Kek,
) -> Result<(), KeyFileError> {
    let text = sealed::seal(key, kek, &mut rand::rng());
    write_new_atomic(path, text.as_bytes(), PRIVATE_FILE_MODE).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            write_error(path, source)
        }
    })
}

/// tor's `hs_ed25519_secret_key`: header, then `a ‖ h`.
fn secret_key_file_contents(key: &MasterKey) -> Zeroizing<Vec<u8>> {
    let mut contents = Zeroizing::new(tagged_header(SECRET_HEADER).to_vec());
    contents.extend_from_slice(key.expanded_secret());
    contents
}

/// tor's `hs_ed25519_public_key`: header, then the public key.
fn public_key_file_contents(key: &MasterKey) -> Vec<u8> {
    let mut contents = tagged_header(PUBLIC_HEADER).to_vec();
    contents.extend_from_slice(&key.public_key());
    contents
}

fn tagged_header(text: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..text.len()].copy_from_slice(text);
    header
}

fn parse_tor_secret_key(path: &Path, contents: &[u8]) -> Result<MasterKey, KeyFileError> {
    if !contents.starts_with(TOR_KEY_MAGIC) {
        // Not even a tor key header; say nothing about the bytes, which may be secret.
        return Err(KeyFileError::NotTorSecretKey {
            path: path.to_owned(),
        });
    }
    if contents.starts_with(PUBLIC_HEADER) {
        return Err(KeyFileError::PublicKeyGiven {
            path: path.to_owned(),
        });
    }
    if contents.len() < HEADER_LEN || contents[..HEADER_LEN] != tagged_header(SECRET_HEADER) {
        return Err(KeyFileError::UnsupportedTorKey {
            path: path.to_owned(),
            header: printable_header(contents),
        });
    }
    let expanded: &[u8; 64] =
        contents[HEADER_LEN..]
            .try_into()
            .map_err(|_| KeyFileError::TorKeyLength {
                path: path.to_owned(),
                len: contents.len(),
            })?;
    MasterKey::from_expanded(expanded).map_err(|source| KeyFileError::BadExpandedKey {
        path: path.to_owned(),
        source,
    })
}

/// The text of a tor key header (which starts with `== ed25519v1-`), up to its NUL padding,
/// with anything unprintable replaced.
fn printable_header(contents: &[u8]) -> String {
    contents
        .iter()
        .take(HEADER_LEN)
        .take_while(|&&byte| byte != 0)
        .map(|&byte| match byte {
            b' '..=b'~' => byte as char,
            _ => '?',
        })
        .collect()
}

fn looks_like_pem(contents: &[u8]) -> bool {
    let start = contents
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(contents.len());
    contents[start..].starts_with(b"-----BEGIN ")
}

/// Onionbalance writes its master key with Python's `cryptography`:
/// `private_bytes(PEM, PKCS8, NoEncryption())`, a seed in a PKCS#8 structure (RFC 8410 §7).
fn parse_pem(path: &Path, contents: &[u8]) -> Result<MasterKey, KeyFileError> {
    let bad = |reason: String| KeyFileError::BadPem {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(contents).map_err(|_| bad("not text".into()))?;
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(KeyFileError::EncryptedPem {
            path: path.to_owned(),
        });
    }
    // The decoder's messages describe structure (tags, lengths, algorithm), never key bytes.
    let keypair = ed25519::pkcs8::KeypairBytes::from_pkcs8_pem(text.trim())
        .map_err(|e| bad(e.to_string()))?;
    let key = MasterKey::from_seed(&keypair.secret_key);
    if let Some(public) = &keypair.public_key {
        if public.to_bytes() != key.public_key() {
            return Err(KeyFileError::PemPublicKeyMismatch {
                path: path.to_owned(),
            });
        }
    }
    Ok(key)
}

fn read_small_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let file = fs::File::open(path).map_err(|source| read_error(path, source))?;
    let len = file
        .metadata()
        .map_err(|source| read_error(path, source))?
        .len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
            len,
        });
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(len as usize));
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_end(&mut contents)
        .map_err(|source| read_error(path, source))?;
    Ok(contents)
}

fn read_if_exists(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, KeyFileError> {
    match read_small_file(path) {
        Ok(contents) => Ok(Some(contents)),
        Err(KeyFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

fn read_error(path: &Path, source: io::Error) -> KeyFileError {
    KeyFileError::Read {
        path: path.to_owned(),
        source,
    }
}

fn write_error(path: &Path, source: io::Error) -> KeyFileError {
    KeyFileError::Write {
        path: path.to_owned(),
        source,
    }
}
