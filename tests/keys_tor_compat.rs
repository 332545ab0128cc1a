//! C tor itself as the judge of our key files.
//!
//! Each test starts Debian's tor with a HiddenServiceDir and nothing else: `DisableNetwork 1`
//! (no connection is made or accepted), no SOCKS or control port, its own DataDirectory. At
//! start-up tor loads the service's secret key, derives the public key (rewriting a missing
//! `hs_ed25519_public_key`) and writes `hostname`; that takes well under a second, network or
//! not. Comparing those files with ours shows that tor reads our keys as we do, and the other
//! way round. tor is killed when the test ends, whatever happens.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rustbalance::keys::files::{load_master_key, write_hidden_service_dir};
use rustbalance::keys::vanity::{self, VanityPrefix};
use rustbalance::keys::MasterKey;

/// How long tor may take to write `hostname` (it needs about 0.2 s here).
const TOR_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A tor process, killed on drop.
struct Tor {
    child: Child,
    log: PathBuf,
}

impl Drop for Tor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tor_binary() -> &'static str {
    if Path::new("/usr/sbin/tor").exists() {
        "/usr/sbin/tor"
    } else {
        "tor"
    }
}

/// Starts tor with `service_dir` as its only onion service, in a private working directory.
fn start_tor(work: &Path, service_dir: &Path) -> Tor {
    let data = work.join("tor-data");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    let empty = work.join("empty");
    fs::write(&empty, "").unwrap();
    let log = work.join("tor.log");
    let torrc = work.join("torrc");
    fs::write(
        &torrc,
        format!(
            "DataDirectory {data}\n\
             DisableNetwork 1\n\
             SocksPort 0\n\
             ControlPort 0\n\
             GeoIPFile {empty}\n\
             GeoIPv6File {empty}\n\
             Log notice file {log}\n\
             HiddenServiceDir {service}\n\
             HiddenServicePort 80 127.0.0.1:9\n",
            data = data.display(),
            empty = empty.display(),
            log = log.display(),
            service = service_dir.display(),
        ),
    )
    .unwrap();
    let child = Command::new(tor_binary())
        .arg("--defaults-torrc")
        .arg(&empty)
        .arg("-f")
        .arg(&torrc)
        // tor exits by itself if this test process dies without killing it.
        .arg("__OwningControllerProcess")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (install Debian's tor package)",
                tor_binary()
            )
        });
    Tor { child, log }
}

/// Waits until tor has written `hostname` in `service_dir`, and returns it.
fn wait_for_hostname(tor: &mut Tor, service_dir: &Path) -> String {
    let started = Instant::now();
    let path = service_dir.join("hostname");
    loop {
        if let Ok(hostname) = fs::read_to_string(&path) {
            if hostname.ends_with('\n') {
                return hostname.trim().to_owned();
            }
        }
        let log = || fs::read_to_string(&tor.log).unwrap_or_default();
        if let Some(status) = tor.child.try_wait().unwrap() {
            panic!("tor exited ({status}) before writing hostname:\n{}", log());
        }
        assert!(
            started.elapsed() < TOR_START_TIMEOUT,
            "tor wrote no hostname within {TOR_START_TIMEOUT:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `key` as a service directory, leaves only the secret key (so that tor has to derive
/// everything else from it), runs tor, and checks what tor derived.
fn assert_tor_derives_our_address(key: &MasterKey) {
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("ours");
    write_hidden_service_dir(&ours, key).unwrap();
    let our_public_file = fs::read(ours.join("hs_ed25519_public_key")).unwrap();
    fs::remove_file(ours.join("hs_ed25519_public_key")).unwrap();
    fs::remove_file(ours.join("hostname")).unwrap();

    let mut tor = start_tor(work.path(), &ours);
    let hostname = wait_for_hostname(&mut tor, &ours);
    assert_eq!(hostname, key.onion_address().to_string());
    let tor_public_file = fs::read(ours.join("hs_ed25519_public_key")).unwrap();
    assert_eq!(tor_public_file, our_public_file);
}

#[test]
fn tor_derives_the_same_address_from_a_key_we_generated() {
    assert_tor_derives_our_address(&MasterKey::generate().unwrap());
}

#[test]
fn tor_derives_the_same_address_from_a_vanity_key() {
    // A vanity key has no seed: its scalar was stepped by the search, the case where a
    // mistake would show.
    let prefix: VanityPrefix = "rb".parse().unwrap();
    let stop = AtomicBool::new(false);
    let key = vanity::search(&prefix, vanity::default_threads(), &stop, |_| {}).unwrap();
    assert!(key.onion_address().to_string().starts_with("rb"));
    assert_tor_derives_our_address(&key);
}

#[test]
fn we_read_the_key_tor_generated() {
    let work = tempfile::tempdir().unwrap();
    let service = work.path().join("tors");
    fs::create_dir(&service).unwrap();
    fs::set_permissions(&service, fs::Permissions::from_mode(0o700)).unwrap();

    let mut tor = start_tor(work.path(), &service);
    let hostname = wait_for_hostname(&mut tor, &service);
    drop(tor);
    assert_eq!(
        load_master_key(&service)
            .unwrap()
            .onion_address()
            .to_string(),
        hostname
    );
    let secret_file = service.join("hs_ed25519_secret_key");
    assert_eq!(
        load_master_key(&secret_file)
            .unwrap()
            .onion_address()
            .to_string(),
        hostname
    );
}
