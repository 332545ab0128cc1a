//! Reading and writing master-key files in the formats of tor, mkp224o and Onionbalance, and
//! in the sealed form a node keeps its own `master.key` in.
//!
//! The fixtures in `tests/data/` were made by the real tools: `mkp224o/` is a key directory
//! written by mkp224o (`mkp224o -n 1 rb`), `onionbalance_master_key.pem` is a PKCS#8 key from
//! `openssl genpkey -algorithm ed25519` (the encoding Onionbalance's Python `cryptography`
//! writes). The expected addresses come from those tools, not from this program.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519::pkcs8::spki::der::pem::LineEnding;
use ed25519::pkcs8::{EncodePrivateKey, KeypairBytes, PublicKeyBytes};
use rustbalance::keys::files::{
    load_hidden_service_dir, load_master_key, load_master_key_with, write_hidden_service_dir,
    write_sealed_master_key, KeyFileError,
};
use rustbalance::keys::{ensure_kek, Kek, KekSource, MasterKey};

const MKP224O_ADDRESS: &str = "rbq4zncq5shykd3kv2gt5b6oivjkodio4nffdrqtn2n2olpugqng4lyd.onion";
/// From `openssl pkey -pubout` of the PEM file, encoded as rend-spec-v3 §6 says (by a script).
const ONIONBALANCE_ADDRESS: &str = "75w6bo2hfqkeyltppkrnaxrmo542ty5evcuuxkideukynzfqa32mu6ad.onion";

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(path)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn reads_a_key_directory_written_by_mkp224o() {
    let dir = data("mkp224o").join(MKP224O_ADDRESS);
    assert_eq!(load_master_key(&dir).unwrap().to_string(), MKP224O_ADDRESS);
    let secret_file = dir.join("hs_ed25519_secret_key");
    assert_eq!(
        load_master_key(&secret_file).unwrap().to_string(),
        MKP224O_ADDRESS
    );
}

#[test]
fn reads_an_onionbalance_pem_key() {
    let key = load_master_key(&data("onionbalance_master_key.pem")).unwrap();
    assert_eq!(key.to_string(), ONIONBALANCE_ADDRESS);
}

#[test]
fn reads_a_pem_key_that_also_carries_its_public_key_and_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let seed = [42u8; 32];
    let key = MasterKey::from_seed(&seed);
    let with_public = |public: [u8; 32]| {
        let keypair = KeypairBytes {
            secret_key: seed,
            public_key: Some(PublicKeyBytes(public)),
        };
        keypair.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    };
    let good = dir.path().join("good.pem");
    fs::write(&good, with_public(key.public_key())).unwrap();
    assert_eq!(
        load_master_key(&good).unwrap().public_key(),
        key.public_key()
    );

    let bad = dir.path().join("bad.pem");
    fs::write(&bad, with_public([9; 32])).unwrap();
    assert!(matches!(
        load_master_key(&bad),
        Err(KeyFileError::PemPublicKeyMismatch { .. })
    ));
}

#[test]
fn reads_a_raw_seed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed");
    fs::write(&path, [7u8; 32]).unwrap();
    let key = load_master_key(&path).unwrap();
    assert_eq!(
        key.public_key(),
        MasterKey::from_seed(&[7; 32]).public_key()
    );
}

#[test]
fn writes_a_hidden_service_dir_as_tor_does_and_reads_it_back() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("master");
    let key = MasterKey::generate().unwrap();
    write_hidden_service_dir(&dir, &key).unwrap();

    assert_eq!(mode(&dir), 0o700);
    let secret = fs::read(dir.join("hs_ed25519_secret_key")).unwrap();
    assert_eq!(secret.len(), 96);
    assert_eq!(&secret[..32], b"== ed25519v1-secret: type0 ==\0\0\0");
    assert_eq!(&secret[32..], key.expanded_secret());
    let public = fs::read(dir.join("hs_ed25519_public_key")).unwrap();
    assert_eq!(&public[..32], b"== ed25519v1-public: type0 ==\0\0\0");
    assert_eq!(&public[32..], key.public_key());
    let hostname = fs::read_to_string(dir.join("hostname")).unwrap();
    assert_eq!(hostname, format!("{key}\n"));
    for file in ["hs_ed25519_secret_key", "hs_ed25519_public_key", "hostname"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    // No temporary files are left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 3);

    assert_eq!(
        load_master_key(&dir).unwrap().public_key(),
        key.public_key()
    );
}

#[test]
fn never_overwrites_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = MasterKey::generate().unwrap();
    write_hidden_service_dir(dir.path(), &first).unwrap();
    let second = MasterKey::generate().unwrap();
    assert!(matches!(
        write_hidden_service_dir(dir.path(), &second),
        Err(KeyFileError::AlreadyExists { .. })
    ));
    assert_eq!(
        load_master_key(dir.path()).unwrap().public_key(),
        first.public_key()
    );
}

#[test]
fn an_empty_open_directory_is_made_private_but_a_full_one_is_refused() {
    let empty = tempfile::tempdir().unwrap();
    fs::set_permissions(empty.path(), fs::Permissions::from_mode(0o755)).unwrap();
    write_hidden_service_dir(empty.path(), &MasterKey::generate().unwrap()).unwrap();
    assert_eq!(mode(empty.path()), 0o700);

    let full = tempfile::tempdir().unwrap();
    fs::write(full.path().join("notes.txt"), "mine").unwrap();
    fs::set_permissions(full.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let result = write_hidden_service_dir(full.path(), &MasterKey::generate().unwrap());
    assert!(matches!(result, Err(KeyFileError::DirectoryTooOpen { .. })));
    assert_eq!(mode(full.path()), 0o755);
}

#[test]
fn a_directory_whose_files_disagree_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_hidden_service_dir(dir.path(), &MasterKey::generate().unwrap()).unwrap();
    let other = MasterKey::generate().unwrap();
    fs::write(dir.path().join("hostname"), format!("{other}\n")).unwrap();
    let error = load_hidden_service_dir(dir.path()).unwrap_err();
    assert!(matches!(error, KeyFileError::DirMismatch { .. }), "{error}");
    assert!(error.to_string().contains("hostname"));
}

/// Recognises the error expected for one bad input.
type ExpectedError = fn(&KeyFileError) -> bool;

/// Each bad input gives its own error, naming the file, and never the key bytes.
#[test]
fn bad_inputs_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, contents).unwrap();
        path
    };
    let key = MasterKey::generate().unwrap();
    let mut tor_file = b"== ed25519v1-secret: type0 ==\0\0\0".to_vec();
    tor_file.extend_from_slice(key.expanded_secret());
    let secret_hex: String = key.expanded_secret()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let truncated = file("truncated", &tor_file[..90]);
    let mut unclamped_bytes = tor_file.clone();
    unclamped_bytes[32] |= 1;
    let unclamped = file("unclamped", &unclamped_bytes);
    let mut other_tag = tor_file.clone();
    other_tag[21..26].copy_from_slice(b"type1");
    let other_tag = file("other_tag", &other_tag);
    let public = file(
        "public",
        b"== ed25519v1-public: type0 ==\0\0\0                                ",
    );
    let x25519 = file(
        "x25519.pem",
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VuBCIEIMIbpvyj612axp3Fes+OSwVLViZoXVFPhYdZRI7VBmAZ\n-----END PRIVATE KEY-----\n",
    );
    let encrypted = file(
        "encrypted.pem",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let garbage = file("garbage", &key.expanded_secret()[..]);
    let huge = file("huge", &vec![0u8; 100_000]);
    let missing = dir.path().join("missing");
    let empty_dir = dir.path().join("empty_dir");
    fs::create_dir(&empty_dir).unwrap();

    let cases: [(&Path, ExpectedError); 10] = [
        (&truncated, |e| {
            matches!(e, KeyFileError::TorKeyLength { len: 90, .. })
        }),
        (&unclamped, |e| {
            matches!(e, KeyFileError::BadExpandedKey { .. })
        }),
        (&other_tag, |e| {
            matches!(e, KeyFileError::UnsupportedTorKey { .. })
        }),
        (&public, |e| {
            matches!(e, KeyFileError::PublicKeyGiven { .. })
        }),
        (&x25519, |e| matches!(e, KeyFileError::BadPem { .. })),
        (&encrypted, |e| {
            matches!(e, KeyFileError::EncryptedPem { .. })
        }),
        (&garbage, |e| {
            matches!(e, KeyFileError::UnknownFormat { .. })
        }),
        (&huge, |e| matches!(e, KeyFileError::TooLarge { .. })),
        (&missing, |e| matches!(e, KeyFileError::Read { .. })),
        (&empty_dir, |e| {
            matches!(e, KeyFileError::NoSecretKeyInDir { .. })
        }),
    ];
    for (path, expected) in cases {
        let error = load_master_key(path).expect_err(&path.display().to_string());
        assert!(expected(&error), "{}: {error:?}", path.display());
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!message.contains(&secret_hex), "{message}");
    }
}

/// A credential store inside `dir`, and no systemd credentials.
fn kek_source_in(dir: &Path) -> KekSource {
    KekSource {
        credentials_dir: None,
        credstore: dir.join("credstore"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_sealed_key_file_reads_back_with_its_kek_and_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let source = kek_source_in(dir.path());
    let kek = ensure_kek(&source).unwrap();
    let key = MasterKey::generate().unwrap();
    let path = dir.path().join("master.key");
    write_sealed_master_key(&path, &key, &kek).unwrap();

    assert_eq!(mode(&path), 0o600);
    let contents = fs::read(&path).unwrap();
    assert!(contents.starts_with(b"rustbalance-sealed-master-key-v1\n"));
    let text = String::from_utf8(contents).unwrap();
    assert!(!text.contains(&hex(&key.expanded_secret()[..16])));
    assert_eq!(
        load_master_key_with(&path, &source).unwrap().public_key(),
        key.public_key()
    );

    let other = MasterKey::generate().unwrap();
    assert!(matches!(
        write_sealed_master_key(&path, &other, &kek),
        Err(KeyFileError::AlreadyExists { .. })
    ));
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn a_sealed_key_without_its_kek_names_the_places_looked_at() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    let path = dir.path().join("master.key");
    write_sealed_master_key(&path, &key, &Kek::generate().unwrap()).unwrap();

    let source = kek_source_in(dir.path());
    let error = load_master_key_with(&path, &source).unwrap_err();
    assert!(matches!(error, KeyFileError::Kek { .. }), "{error:?}");
    let message = error.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with(&format!("{} is encrypted", path.display())),
        "{message}"
    );
    assert!(message.contains("$CREDENTIALS_DIRECTORY"), "{message}");
    assert!(
        message.contains(&source.credstore_file().display().to_string()),
        "{message}"
    );
    assert!(!message.contains(&hex(&key.expanded_secret()[..6])));
}

#[test]
fn a_sealed_key_under_another_kek_or_altered_does_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let source = kek_source_in(dir.path());
    ensure_kek(&source).unwrap();
    let key = MasterKey::generate().unwrap();

    let foreign = dir.path().join("foreign.key");
    write_sealed_master_key(&foreign, &key, &Kek::generate().unwrap()).unwrap();

    let altered = dir.path().join("altered.key");
    write_sealed_master_key(&altered, &key, &ensure_kek(&source).unwrap()).unwrap();
    let mut text = fs::read_to_string(&altered).unwrap().into_bytes();
    let middle = text.len() - 40;
    text[middle] = if text[middle] == b'A' { b'B' } else { b'A' };
    fs::write(&altered, text).unwrap();

    for path in [&foreign, &altered] {
        let error = load_master_key_with(path, &source).unwrap_err();
        assert!(
            matches!(error, KeyFileError::CannotDecrypt { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("cannot decrypt {}", path.display())),
            "{message}"
        );
        assert!(
            message.contains("(wrong key-encryption key, or the file was altered)"),
            "{message}"
        );
        assert!(
            message.contains(&source.credstore_file().display().to_string()),
            "{message}"
        );
    }
}

#[test]
fn a_damaged_sealed_key_is_reported_as_such_even_without_a_kek() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let key = MasterKey::generate().unwrap();
    write_sealed_master_key(&path, &key, &Kek::generate().unwrap()).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() - 20]).unwrap();

    let error = load_master_key_with(&path, &kek_source_in(dir.path())).unwrap_err();
    assert!(matches!(error, KeyFileError::Sealed { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{} is a sealed master key, but", path.display())),
        "{message}"
    );
}

#[test]
fn keys_in_clear_still_load_wherever_the_kek_would_be() {
    // A plain key needs no KEK: a node set up before sealing keeps working (with a warning).
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    write_hidden_service_dir(&dir.path().join("hs"), &key).unwrap();
    let source = kek_source_in(dir.path());
    for path in [
        dir.path().join("hs"),
        dir.path().join("hs/hs_ed25519_secret_key"),
    ] {
        assert_eq!(
            load_master_key_with(&path, &source).unwrap().public_key(),
            key.public_key()
        );
    }
    assert!(!source.credstore.exists(), "loading created a KEK");
}
