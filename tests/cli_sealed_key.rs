//! A node's master.key is encrypted at rest, as an operator sees it: `init` writes it sealed
//! under a key-encryption key (KEK) kept outside the config directory, `token` needs that KEK
//! and says where it looked when it is missing, and keys in clear keep working.
//!
//! Every command gets a credential store of the test's own (`RUSTBALANCE_CREDSTORE`), never
//! the machine's /etc/credstore.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rustbalance::cluster::token::JoinToken;
use rustbalance::config::Config;
use rustbalance::keys::files::load_master_key_with;
use rustbalance::keys::{KekSource, MasterKey};

const KEK_NAME: &str = "rustbalance-master-kek";

struct Node {
    root: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    credstore: PathBuf,
}

impl Node {
    fn new() -> Node {
        let root = tempfile::tempdir().unwrap();
        Node {
            config: root.path().join("etc"),
            state: root.path().join("state"),
            credstore: root.path().join("credstore"),
            root,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rustbalance"));
        command
            .arg("--config-dir")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("RUSTBALANCE_CREDSTORE", &self.credstore)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "info");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn kek_file(&self) -> PathBuf {
        self.credstore.join(KEK_NAME)
    }

    fn master_key_path(&self) -> PathBuf {
        Config::load(&self.config, &self.state)
            .unwrap()
            .master_key_path()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: &Output) -> bool {
    if !output.status.success() {
        eprintln!("stderr: {}", stderr(output));
    }
    output.status.success()
}

fn token_in(output: &Output) -> JoinToken {
    let text = stdout(output);
    let line = text
        .lines()
        .find(|line| line.starts_with("rb1:"))
        .unwrap_or_else(|| panic!("no token line in:\n{text}"));
    JoinToken::decode(line).unwrap()
}

/// Every way `secret` could show up in a file or a message: raw, hex, base64.
fn renderings(secret: &[u8]) -> Vec<Vec<u8>> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        BASE64.encode(secret).into_bytes(),
        // base64 without its padding, as a substring of a longer encoding.
        BASE64.encode(&secret[..secret.len() / 3 * 3]).into_bytes(),
    ]
}

fn assert_reveals_nothing(what: &str, haystack: &[u8], secret: &[u8]) {
    for needle in renderings(secret) {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|window| window == &needle[..]),
            "{what} contains the secret ({})",
            String::from_utf8_lossy(&needle)
        );
    }
}

/// tor's hs_ed25519_secret_key for `key`.
fn tor_secret_key_file(key: &MasterKey) -> Vec<u8> {
    let mut contents = b"== ed25519v1-secret: type0 ==\0\0\0".to_vec();
    contents.extend_from_slice(key.expanded_secret());
    contents
}

#[test]
fn init_writes_the_master_key_sealed_and_token_needs_its_kek() {
    let node = Node::new();
    let init = node.run(&["init", "--endpoint", "vps1.example.net:51820", "--no-start"]);
    assert!(succeeded(&init));
    let key = token_in(&init).master_key;
    let master_key_path = node.master_key_path();

    let sealed = fs::read(&master_key_path).unwrap();
    assert!(sealed.starts_with(b"rustbalance-sealed-master-key-v1\n"));
    assert_reveals_nothing("master.key", &sealed, key.expanded_secret());
    let kek = fs::read(node.kek_file()).unwrap();
    assert_reveals_nothing("master.key", &sealed, kek.trim_ascii());
    assert!(!fs::read_dir(&node.config)
        .unwrap()
        .any(|entry| entry.unwrap().file_name() == KEK_NAME));

    // With the KEK in place, `token` reads the key.
    let token = node.run(&["token"]);
    assert!(succeeded(&token));
    assert_eq!(
        token_in(&token).master_key.onion_address(),
        key.onion_address()
    );

    // Without it: one line naming the file and both places looked at, exit status 1.
    let aside = node.root.path().join("kek-aside");
    fs::rename(node.kek_file(), &aside).unwrap();
    let missing = node.run(&["token"]);
    let message = stderr(&missing);
    assert_eq!(missing.status.code(), Some(1), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with(&format!(
            "rustbalance: {} is encrypted, but the key-encryption key was found neither at \
             $CREDENTIALS_DIRECTORY/{KEK_NAME}",
            master_key_path.display()
        )),
        "{message}"
    );
    assert!(
        message.contains(&node.kek_file().display().to_string()),
        "{message}"
    );
    assert!(message.contains("LoadCredential"), "{message}");
    assert!(!stdout(&missing).contains("rb1:"));
    assert_reveals_nothing("the error", message.as_bytes(), key.expanded_secret());
    assert_reveals_nothing("the error", message.as_bytes(), kek.trim_ascii());

    // Under another KEK it does not decrypt, and the message says so.
    fs::write(node.kek_file(), format!("{}\n", BASE64.encode([1u8; 32]))).unwrap();
    fs::set_permissions(node.kek_file(), fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = node.run(&["token"]);
    let message = stderr(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains(&format!("cannot decrypt {}", master_key_path.display())),
        "{message}"
    );
    assert!(message.contains("wrong key-encryption key"), "{message}");

    // The KEK as a systemd credential ($CREDENTIALS_DIRECTORY) comes before the store.
    let credentials = node.root.path().join("credentials");
    fs::create_dir(&credentials).unwrap();
    fs::rename(&aside, credentials.join(KEK_NAME)).unwrap();
    let from_systemd = node
        .command(&["token"])
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .output()
        .unwrap();
    assert!(succeeded(&from_systemd));
    assert_eq!(
        token_in(&from_systemd).master_key.onion_address(),
        key.onion_address()
    );
}

#[test]
fn an_imported_tor_key_is_stored_sealed_and_the_original_left_alone() {
    let node = Node::new();
    let seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let key = MasterKey::from_seed(&seed);
    let original = node.root.path().join("hs_ed25519_secret_key");
    fs::write(&original, tor_secret_key_file(&key)).unwrap();

    let init = node.run(&[
        "init",
        "--import-key",
        original.to_str().unwrap(),
        "--no-start",
    ]);
    assert!(succeeded(&init));
    assert!(stdout(&init).contains(&key.onion_address().to_string()));
    // Importing a key in clear is the way to seal it: no warning about it.
    assert!(!stderr(&init).contains("unencrypted"), "{}", stderr(&init));

    let sealed = fs::read(node.master_key_path()).unwrap();
    assert!(sealed.starts_with(b"rustbalance-sealed-master-key-v1\n"));
    assert_reveals_nothing("master.key", &sealed, &seed);
    assert_reveals_nothing("master.key", &sealed, key.expanded_secret());
    let source = KekSource {
        credentials_dir: None,
        credstore: node.credstore.clone(),
    };
    let loaded = load_master_key_with(&node.master_key_path(), &source).unwrap();
    assert_eq!(loaded.expanded_secret(), key.expanded_secret());
    assert_eq!(fs::read(&original).unwrap(), tor_secret_key_file(&key));
}

#[test]
fn a_master_key_in_clear_still_works_with_a_warning() {
    let node = Node::new();
    let init = node.run(&["init", "--endpoint", "vps1.example.net:51820", "--no-start"]);
    assert!(succeeded(&init));
    let key = token_in(&init).master_key;
    // A node set up before master.key was sealed: tor's format in its place, and no KEK.
    let master_key_path = node.master_key_path();
    fs::remove_file(&master_key_path).unwrap();
    fs::write(&master_key_path, tor_secret_key_file(&key)).unwrap();
    fs::remove_file(node.kek_file()).unwrap();

    let token = node.run(&["token"]);
    assert!(succeeded(&token));
    assert_eq!(
        token_in(&token).master_key.onion_address(),
        key.onion_address()
    );
    let warning = stderr(&token);
    assert_eq!(warning.lines().count(), 1, "{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!(
            "{} holds the master key unencrypted",
            master_key_path.display()
        )),
        "{warning}"
    );
    assert!(warning.contains("--import-key"), "{warning}");
    assert!(!node.kek_file().exists(), "reading a key created a KEK");
}
