//! `rustbalance keygen`: a new key in a HiddenServiceDir that tor, mkp224o and Onionbalance
//! read, its address on stdout, and never an overwritten key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use rustbalance::keys::files::load_master_key;

fn keygen(out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rustbalance"))
        .arg("keygen")
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_private_hidden_service_dir_and_prints_its_address() {
    let root = std::env::temp_dir().join(format!("rb-keygen-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let out = root.join("master");

    let output = keygen(&out);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    let address = printed.trim();
    assert!(
        address.ends_with(".onion") && address.len() == 62,
        "{printed:?}"
    );

    assert_eq!(
        fs::read_to_string(out.join("hostname")).unwrap().trim(),
        address
    );
    assert_eq!(mode(&out), 0o700);
    for file in ["hs_ed25519_secret_key", "hs_ed25519_public_key", "hostname"] {
        assert_eq!(mode(&out.join(file)), 0o600, "{file}");
    }
    let key = load_master_key(&out).unwrap();
    assert_eq!(key.onion_address().to_string(), address);

    // A second run into the same directory refuses and leaves the key alone.
    let before = fs::read(out.join("hs_ed25519_secret_key")).unwrap();
    let again = keygen(&out);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(fs::read(out.join("hs_ed25519_secret_key")).unwrap(), before);
    fs::remove_dir_all(&root).unwrap();
}
