//! `rustbalance init` and `rustbalance token`, as an operator runs them: a complete private
//! node layout, a join token that carries this cluster's key and secret, and refusals that
//! change nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rustbalance::cluster::token::JoinToken;
use rustbalance::config::Config;
use rustbalance::keys::files::load_master_key_with;
use rustbalance::keys::KekSource;
use rustbalance::storage::node_files::load_cluster_secret;

const BACKEND: &str = "web1=2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

struct Dirs {
    root: PathBuf,
    config: PathBuf,
    state: PathBuf,
    /// This test's credential store for the key-encryption key, never /etc/credstore.
    credstore: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("rb-init-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        Dirs {
            config: root.join("etc"),
            state: root.join("state"),
            credstore: root.join("credstore"),
            root,
        }
    }

    fn kek_source(&self) -> KekSource {
        KekSource {
            credentials_dir: None,
            credstore: self.credstore.clone(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_rustbalance"))
            .arg("--config-dir")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("RUSTBALANCE_CREDSTORE", &self.credstore)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn token_in(text: &str) -> JoinToken {
    let line = text
        .lines()
        .find(|line| line.starts_with("rb1:"))
        .unwrap_or_else(|| panic!("no token line in:\n{text}"));
    JoinToken::decode(line).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_a_private_node_and_a_token_for_the_next_one() {
    let dirs = Dirs::new("create");
    let output = dirs.run(&[
        "init",
        "--endpoint",
        "vps1.example.net:51820",
        "--backend",
        BACKEND,
        "--no-start",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);

    let config = Config::load(&dirs.config, &dirs.state).unwrap();
    let master = load_master_key_with(&config.master_key_path(), &dirs.kek_source()).unwrap();
    assert!(
        text.contains(&format!("master address: {}", master.onion_address())),
        "{text}"
    );
    assert!(
        text.contains(&format!("node id:        {}", config.node.id)),
        "{text}"
    );
    assert!(text.contains("priority:       1"), "{text}");
    assert!(text.contains("rustbalance join"), "{text}");
    assert!(text.contains("WARNING"), "{text}");
    assert_eq!(config.backends.len(), 1);

    let token = token_in(&text);
    assert_eq!(token.master_key.onion_address(), master.onion_address());
    assert_eq!(token.origin.node_id, config.node.id);
    assert_eq!(
        token.origin.wg_endpoint.to_string(),
        "vps1.example.net:51820"
    );
    assert_eq!(
        token.cluster_secret.as_bytes(),
        load_cluster_secret(&dirs.config).unwrap().as_bytes()
    );

    assert_eq!(mode(&dirs.config), 0o700);
    assert_eq!(mode(&dirs.state), 0o700);
    for file in ["config.toml", "master.key", "wg_private.key", "cluster.key"] {
        assert_eq!(mode(&dirs.config.join(file)), 0o600, "{file}");
    }
    // The key-encryption key of master.key, outside the config directory.
    assert_eq!(mode(&dirs.credstore), 0o700);
    assert_eq!(mode(&dirs.credstore.join("rustbalance-master-kek")), 0o600);

    // `token` on the same node gives a fresh token for the same cluster.
    let again = dirs.run(&["token"]);
    assert!(again.status.success());
    let fresh = token_in(&stdout(&again));
    assert_eq!(fresh.master_key.onion_address(), master.onion_address());
    assert_eq!(
        fresh.cluster_secret.as_bytes(),
        token.cluster_secret.as_bytes()
    );
}

/// An endpoint other machines cannot use is set up anyway (a name may resolve elsewhere), with
/// a warning that says why: loopback only, a name that does not resolve, a single-label name
/// (unit tests: `cluster::tests`).
#[test]
fn init_warns_of_an_endpoint_other_machines_cannot_reach() {
    for (endpoint, warning) in [
        // Loopback where the machine's /etc/hosts names it, else not resolving.
        ("vm:51820", Some("")),
        ("nowhere.invalid:51820", Some("does not resolve")),
        ("127.0.0.1:51820", Some("only to loopback")),
        ("localhost:51820", Some("only to loopback")),
        ("203.0.113.7:51820", None),
    ] {
        let dirs = Dirs::new("endpoint");
        let output = dirs.run(&["init", "--endpoint", endpoint, "--no-start"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{endpoint}: {stderr}");
        match warning {
            Some(warning) => {
                assert!(
                    stderr.contains(&format!("warning: --endpoint {endpoint}: "))
                        && stderr.contains(warning),
                    "{endpoint}: {stderr}"
                );
                assert_eq!(
                    stderr.lines().filter(|l| l.starts_with("warning:")).count(),
                    1
                );
            }
            None => assert!(!stderr.contains("warning:"), "{endpoint}: {stderr}"),
        }
    }
}

#[test]
fn init_over_an_existing_node_refuses_and_changes_nothing() {
    let dirs = Dirs::new("twice");
    assert!(dirs.run(&["init", "--no-start"]).status.success());
    let snapshot = |dir: &Path| {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), fs::read(e.path()).unwrap_or_default())
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&dirs.config);
    let output = dirs.run(&["init", "--no-start"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already set up"), "{stderr}");
    assert_eq!(snapshot(&dirs.config), before);
}

#[test]
fn bad_arguments_are_refused_before_anything_is_written() {
    for (args, expected) in [
        (vec!["--backend", "web1"], "expected NAME=ADDRESS"),
        (vec!["--backend", "web1=notanaddress.onion"], "--backend"),
        (vec!["--endpoint", "vps1"], "--endpoint"),
        (vec!["--vanity-prefix", "ab1"], "--vanity-prefix"),
    ] {
        let dirs = Dirs::new("bad");
        let mut all = vec!["init", "--no-start"];
        all.extend(args.iter().copied());
        let output = dirs.run(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!dirs.root.exists(), "{args:?} created files");
    }
}

#[test]
fn init_imports_an_existing_key_or_finds_a_vanity_one() {
    let dirs = Dirs::new("import");
    let key_dir = dirs.root.join("existing");
    let keygen = Command::new(env!("CARGO_BIN_EXE_rustbalance"))
        .args(["keygen", "--out", key_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let address = stdout(&keygen).trim().to_owned();

    let output = dirs.run(&[
        "init",
        "--import-key",
        key_dir.to_str().unwrap(),
        "--no-start",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains(&address));
    // No endpoint: no token yet, and `token` says why.
    assert!(!stdout(&output).contains("rb1:"));
    let token = dirs.run(&["token"]);
    assert_eq!(token.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&token.stderr).contains("endpoint"));

    let vanity = Dirs::new("vanity");
    let output = vanity.run(&["init", "--vanity-prefix", "ab", "--no-start"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config = Config::load(&vanity.config, &vanity.state).unwrap();
    let master = load_master_key_with(&config.master_key_path(), &vanity.kek_source()).unwrap();
    assert!(master.onion_address().to_string().starts_with("ab"));
}

/// Onionbalance's own files: its config.yaml (as `onionbalance-config` writes it) and its PEM
/// key next to it.
const OB_MASTER: &str = "75w6bo2hfqkeyltppkrnaxrmo542ty5evcuuxkideukynzfqa32mu6ad.onion";
const OB_INSTANCE_1: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";
const OB_INSTANCE_2: &str = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";

#[test]
fn import_onionbalance_sets_a_node_up_from_its_config_and_key() {
    let dirs = Dirs::new("import-ob");
    let ob_dir = dirs.root.join("onionbalance");
    fs::create_dir_all(&ob_dir).unwrap();
    fs::copy(
        "tests/data/onionbalance_master_key.pem",
        ob_dir.join("master.key"),
    )
    .unwrap();
    let yaml = ob_dir.join("config.yaml");
    fs::write(
        &yaml,
        format!(
            "services:\n- instances:\n  - address: {OB_INSTANCE_1}\n    name: node1\n  - address: {OB_INSTANCE_2}\n    name: node2\n  key: master.key\n"
        ),
    )
    .unwrap();

    let output = dirs.run(&[
        "import",
        "onionbalance",
        yaml.to_str().unwrap(),
        "--endpoint",
        "127.0.0.1:51999",
        "--no-start",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains(OB_MASTER));
    let config = Config::load(&dirs.config, &dirs.state).unwrap();
    let backends: Vec<(String, String)> = config
        .backends
        .iter()
        .map(|b| (b.name.to_string(), b.address.to_string()))
        .collect();
    assert_eq!(
        backends,
        [
            ("node1".to_owned(), OB_INSTANCE_1.to_owned()),
            ("node2".to_owned(), OB_INSTANCE_2.to_owned())
        ]
    );
    // The key is stored sealed, as `init --import-key` stores it; the token carries it.
    let master = load_master_key_with(&config.master_key_path(), &dirs.kek_source()).unwrap();
    assert_eq!(master.onion_address().to_string(), OB_MASTER);
    assert!(!fs::read(config.master_key_path())
        .unwrap()
        .starts_with(b"-----BEGIN"));
    let token = token_in(&stdout(&output));
    assert_eq!(token.master_key.onion_address().to_string(), OB_MASTER);

    // A file that is not an Onionbalance configuration: one line, exit 2, nothing written.
    let bad = Dirs::new("import-ob-bad");
    fs::create_dir_all(&bad.root).unwrap();
    let bad_yaml = bad.root.join("config.yaml");
    fs::write(
        &bad_yaml,
        "services:\n- key: k\n  instances:\n  - name: a\n",
    )
    .unwrap();
    let output = bad.run(&["import", "onionbalance", bad_yaml.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("services[0].instances[0].address: missing"),
        "{stderr}"
    );
    assert!(!bad.config.exists(), "a refused import wrote files");
}
