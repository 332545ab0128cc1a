//! The key-encryption key (KEK): the key `master.key` is encrypted under, and where it lives.
//!
//! A node's `master.key` is sealed (`sealed.rs`) under a random 32-byte KEK that is kept out of
//! the config directory on purpose: a backup or a leaked copy of `/etc/rustbalance` then holds
//! ciphertext only. The KEK is a systemd credential named `rustbalance-master-kek`
//! ([`params::KEK_CREDENTIAL_NAME`]), looked for in this order:
//!
//! 1. `$CREDENTIALS_DIRECTORY/rustbalance-master-kek`: systemd puts it there for a unit with
//!    `LoadCredential=` or `LoadCredentialEncrypted=` (which first decrypts it with the TPM or
//!    the host's credential key), readable by the service's user only, while the unit runs.
//! 2. `<credstore>/rustbalance-master-kek`, where credstore is `$RUSTBALANCE_CREDSTORE` or
//!    `/etc/credstore`: systemd's own credential store, which `LoadCredential=` reads from.
//!    `init` and `join` create the KEK there when neither place has one (directory 0700,
//!    file 0600, written atomically, never replacing an existing KEK: every master key sealed
//!    under it would be lost).
//!
//! The file holds one line: the 32 bytes in base64 (standard alphabet, padded).
//!
//! The environment is read once, at the edge ([`KekSource::from_env`]); everything else takes a
//! [`KekSource`], so tests point it at temporary directories and never touch the real store.
//! Neither `Debug` nor any error shows KEK bytes.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::rngs::SysRng;
use rand::TryRng;
use zeroize::Zeroizing;

use super::RandomnessError;
use crate::params::{
    CREDENTIALS_DIRECTORY_ENV, CREDSTORE_ENV, DEFAULT_CREDSTORE_DIR, KEK_CREDENTIAL_NAME,
};
use crate::storage::fsutil::{create_private_dir, write_new_atomic, PRIVATE_FILE_MODE};

/// Length of the KEK: an AES-256 key.
pub const KEK_LEN: usize = 32;

/// A KEK file is one line of 44 base64 characters; anything much larger is not one, and is
/// refused unread.
const MAX_KEK_FILE_BYTES: u64 = 4096;

/// The key-encryption key. Wiped from memory on drop; `Debug` never shows it, and there is no
/// `Display`.
pub struct Kek(Zeroizing<[u8; KEK_LEN]>);

/// Where to look for the KEK, and where to create it (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekSource {
    /// `$CREDENTIALS_DIRECTORY`, set by systemd for a unit that loads credentials.
    pub credentials_dir: Option<PathBuf>,
    /// The credential store directory: `$RUSTBALANCE_CREDSTORE`, else `/etc/credstore`.
    pub credstore: PathBuf,
}

/// Why the KEK could not be found, read or created.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error(
        "the key-encryption key was found neither at {} nor at {}: give it to the service with \
         LoadCredential= or LoadCredentialEncrypted= (credential name {KEK_CREDENTIAL_NAME}), \
         or set {CREDSTORE_ENV} to the directory that holds it",
        describe_credential(.credentials_dir.as_deref()),
        .credstore_file.display()
    )]
    Missing {
        credentials_dir: Option<PathBuf>,
        credstore_file: PathBuf,
    },
    #[error("cannot read the key-encryption key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not a key-encryption key ({reason}): it must be one line of base64 holding \
         {KEK_LEN} bytes"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot write the key-encryption key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a key-encryption key: {0}")]
    Randomness(#[from] RandomnessError),
}

impl Kek {
    /// A new random KEK (from the operating system's random number generator).
    pub fn generate() -> Result<Kek, RandomnessError> {
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        SysRng.try_fill_bytes(&mut bytes[..])?;
        Ok(Kek(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEK_LEN]) -> Kek {
        Kek(Zeroizing::new(bytes))
    }

    /// The AES-256 key, for the sealing code.
    pub(super) fn as_bytes(&self) -> &[u8; KEK_LEN] {
        &self.0
    }

    /// The file form: one line of base64.
    pub fn to_file_contents(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(BASE64.encode(&self.0[..]));
        text.push('\n');
        text
    }

    /// Reads the file form; white space around the base64 (a trailing newline, or none, as
    /// `systemd-creds` may leave it) is ignored. The reason for a refusal never quotes the
    /// contents.
    pub fn from_file_contents(contents: &[u8]) -> Result<Kek, String> {
        let text = std::str::from_utf8(contents).map_err(|_| "not text".to_owned())?;
        let bytes = Zeroizing::new(
            BASE64
                .decode(text.trim())
                .map_err(|_| "not base64".to_owned())?,
        );
        let bytes: &[u8; KEK_LEN] = bytes[..]
            .try_into()
            .map_err(|_| format!("{} bytes instead of {KEK_LEN}", bytes.len()))?;
        Ok(Kek(Zeroizing::new(*bytes)))
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(redacted)")
    }
}

impl KekSource {
    /// Where to look, from the environment: `$CREDENTIALS_DIRECTORY` and
    /// `$RUSTBALANCE_CREDSTORE` (default `/etc/credstore`). Empty variables count as unset.
    pub fn from_env() -> KekSource {
        let dir = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        KekSource {
            credentials_dir: dir(CREDENTIALS_DIRECTORY_ENV),
            credstore: dir(CREDSTORE_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_CREDSTORE_DIR)),
        }
    }

    /// The KEK's file in the credential store: where it is created.
    pub fn credstore_file(&self) -> PathBuf {
        self.credstore.join(KEK_CREDENTIAL_NAME)
    }

    /// The KEK's file among the systemd credentials, if systemd passed any.
    pub fn credential_file(&self) -> Option<PathBuf> {
        self.credentials_dir
            .as_ref()
            .map(|dir| dir.join(KEK_CREDENTIAL_NAME))
    }

    /// The KEK and the file it was read from: the systemd credential if there is one, else
    /// the credential store's file. A file that exists but cannot be read, or is not a KEK,
    /// is an error rather than a reason to look further: using another key would fail later
    /// with a less helpful message.
    pub fn find(&self) -> Result<(PathBuf, Kek), KekError> {
        for path in self
            .credential_file()
            .into_iter()
            .chain([self.credstore_file()])
        {
            if let Some(kek) = read_kek_file(&path)? {
                return Ok((path, kek));
            }
        }
        Err(KekError::Missing {
            credentials_dir: self.credentials_dir.clone(),
            credstore_file: self.credstore_file(),
        })
    }
}

/// The KEK that [`KekSource::find`] finds, or, when there is none, a new one created in the
/// credential store (directory 0700 if it has to be created, file 0600). An existing KEK is
/// never replaced, also when another process creates one at the same moment.
pub fn ensure_kek(source: &KekSource) -> Result<Kek, KekError> {
    match source.find() {
        Ok((_, kek)) => return Ok(kek),
        Err(KekError::Missing { .. }) => {}
        Err(other) => return Err(other),
    }
    let path = source.credstore_file();
    create_private_dir(&source.credstore).map_err(|error| KekError::Write {
        path: source.credstore.clone(),
        source: error,
    })?;
    let kek = Kek::generate()?;
    match write_new_atomic(&path, kek.to_file_contents().as_bytes(), PRIVATE_FILE_MODE) {
        Ok(()) => {
            tracing::info!(
                "created the key-encryption key {}: master.key is encrypted under it, so keep a \
                 backup of it apart from the config directory",
                path.display()
            );
            Ok(kek)
        }
        // Created by another process since we looked: that one is the KEK.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => read_kek_file(&path)?
            .ok_or_else(|| KekError::Read {
                path: path.clone(),
                source: error,
            }),
        Err(error) => Err(KekError::Write {
            path,
            source: error,
        }),
    }
}

/// The KEK in `path`, or `None` if there is no such file.
fn read_kek_file(path: &Path) -> Result<Option<Kek>, KekError> {
    let read_error = |source| KekError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(read_error(error)),
    };
    let metadata = file.metadata().map_err(read_error)?;
    if metadata.len() > MAX_KEK_FILE_BYTES {
        return Err(KekError::Damaged {
            path: path.to_owned(),
            reason: format!("{} bytes long", metadata.len()),
        });
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "the key-encryption key {} can be read by other users: `chmod 600` it",
            path.display()
        );
    }
    let mut contents = Zeroizing::new(Vec::new());
    file.take(MAX_KEK_FILE_BYTES)
        .read_to_end(&mut contents)
        .map_err(read_error)?;
    Kek::from_file_contents(&contents)
        .map(Some)
        .map_err(|reason| KekError::Damaged {
            path: path.to_owned(),
            reason,
        })
}

/// The first place looked at, for the error that says the KEK is missing.
fn describe_credential(credentials_dir: Option<&Path>) -> String {
    match credentials_dir {
        Some(dir) => dir.join(KEK_CREDENTIAL_NAME).display().to_string(),
        None => format!(
            "${CREDENTIALS_DIRECTORY_ENV}/{KEK_CREDENTIAL_NAME} (${CREDENTIALS_DIRECTORY_ENV} is \
             not set: no systemd credential was passed)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn source_in(root: &Path, with_credentials: bool) -> KekSource {
        KekSource {
            credentials_dir: with_credentials.then(|| root.join("credentials")),
            credstore: root.join("credstore"),
        }
    }

    fn write_kek(dir: &Path, kek: &Kek) {
        crate::storage::fsutil::create_private_dir(dir).unwrap();
        std::fs::write(
            dir.join(KEK_CREDENTIAL_NAME),
            kek.to_file_contents().as_bytes(),
        )
        .unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_file_form_is_one_base64_line_that_reads_back() {
        let kek = Kek::from_bytes([3; KEK_LEN]);
        let text = kek.to_file_contents();
        assert_eq!(text.lines().count(), 1);
        assert_eq!(text.trim(), BASE64.encode([3; KEK_LEN]));
        let again = Kek::from_file_contents(text.trim().as_bytes()).unwrap();
        assert_eq!(again.as_bytes(), kek.as_bytes());

        assert_eq!(Kek::from_file_contents(b"%%%").unwrap_err(), "not base64");
        assert_eq!(
            Kek::from_file_contents(BASE64.encode([1; 31]).as_bytes()).unwrap_err(),
            "31 bytes instead of 32"
        );
        assert_eq!(
            Kek::from_file_contents(&[0xff, 0xfe]).unwrap_err(),
            "not text"
        );
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let kek = Kek::from_bytes([0x5a; KEK_LEN]);
        let shown = format!("{kek:?}");
        assert_eq!(shown, "Kek(redacted)");
    }

    #[test]
    fn the_systemd_credential_is_preferred_over_the_credential_store() {
        let root = scratch();
        let source = source_in(root.path(), true);
        write_kek(
            source.credentials_dir.as_ref().unwrap(),
            &Kek::from_bytes([1; 32]),
        );
        write_kek(&source.credstore, &Kek::from_bytes([2; 32]));

        let (path, kek) = source.find().unwrap();
        assert_eq!(path, source.credential_file().unwrap());
        assert_eq!(kek.as_bytes(), &[1; 32]);
    }

    #[test]
    fn the_credential_store_is_used_when_systemd_passed_no_kek() {
        let root = scratch();
        // $CREDENTIALS_DIRECTORY set (other credentials) but without ours, and not set at all.
        for with_credentials in [true, false] {
            let source = source_in(root.path(), with_credentials);
            write_kek(&source.credstore, &Kek::from_bytes([2; 32]));
            let (path, kek) = source.find().unwrap();
            assert_eq!(path, source.credstore_file());
            assert_eq!(kek.as_bytes(), &[2; 32]);
        }
    }

    #[test]
    fn a_missing_kek_names_both_places_and_how_to_provide_it() {
        let root = scratch();
        for with_credentials in [true, false] {
            let source = source_in(root.path(), with_credentials);
            let error = source.find().unwrap_err();
            assert!(matches!(error, KekError::Missing { .. }), "{error:?}");
            let message = error.to_string();
            assert_eq!(message.lines().count(), 1, "{message}");
            assert!(
                message.contains(&source.credstore_file().display().to_string()),
                "{message}"
            );
            let first_place = match &source.credential_file() {
                Some(path) => path.display().to_string(),
                None => "$CREDENTIALS_DIRECTORY/rustbalance-master-kek".to_owned(),
            };
            assert!(message.contains(&first_place), "{message}");
            assert!(message.contains("LoadCredential"), "{message}");
            assert!(message.contains("RUSTBALANCE_CREDSTORE"), "{message}");
        }
    }

    #[test]
    fn a_damaged_kek_is_an_error_naming_the_file_not_a_reason_to_look_further() {
        let root = scratch();
        let source = source_in(root.path(), true);
        let credentials = source.credentials_dir.clone().unwrap();
        crate::storage::fsutil::create_private_dir(&credentials).unwrap();
        let secret_b64 = BASE64.encode([0x77; 40]);
        std::fs::write(credentials.join(KEK_CREDENTIAL_NAME), &secret_b64).unwrap();
        write_kek(&source.credstore, &Kek::from_bytes([2; 32]));

        let message = source.find().unwrap_err().to_string();
        assert!(
            message.contains(&source.credential_file().unwrap().display().to_string()),
            "{message}"
        );
        assert!(message.contains("40 bytes instead of 32"), "{message}");
        assert!(!message.contains(&secret_b64), "{message}");
    }

    #[test]
    fn ensure_kek_creates_a_private_kek_once_and_then_reuses_it() {
        let root = scratch();
        let source = source_in(root.path(), false);
        let first = ensure_kek(&source).unwrap();
        assert_eq!(mode(&source.credstore), 0o700);
        assert_eq!(mode(&source.credstore_file()), 0o600);
        let (path, found) = source.find().unwrap();
        assert_eq!(path, source.credstore_file());
        assert_eq!(found.as_bytes(), first.as_bytes());

        let second = ensure_kek(&source).unwrap();
        assert_eq!(second.as_bytes(), first.as_bytes());
        // Only the KEK: no temporary files left behind.
        assert_eq!(fs::read_dir(&source.credstore).unwrap().count(), 1);
    }

    #[test]
    fn ensure_kek_uses_the_systemd_credential_and_creates_nothing() {
        let root = scratch();
        let source = source_in(root.path(), true);
        write_kek(
            source.credentials_dir.as_ref().unwrap(),
            &Kek::from_bytes([1; 32]),
        );
        let kek = ensure_kek(&source).unwrap();
        assert_eq!(kek.as_bytes(), &[1; 32]);
        assert!(!source.credstore.exists());
    }

    #[test]
    fn ensure_kek_never_replaces_a_damaged_kek() {
        let root = scratch();
        let source = source_in(root.path(), false);
        crate::storage::fsutil::create_private_dir(&source.credstore).unwrap();
        std::fs::write(source.credstore_file(), "not a key").unwrap();
        let error = ensure_kek(&source).unwrap_err();
        assert!(matches!(error, KekError::Damaged { .. }), "{error}");
        assert_eq!(
            std::fs::read(source.credstore_file()).unwrap(),
            b"not a key"
        );
    }
}
