//! End to end, on a private Tor network: `rustbalance run`, configured only through
//! config.toml, bootstraps its embedded Arti client on the network, reports the consensus it
//! holds, and stops cleanly on SIGTERM; meanwhile the C-tor client reaches both backends.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::ProcessGuard;
use support::{NetworkOptions, TorNetwork};

/// Generous: a busy 2-core CI machine runs a debug build of Arti here.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(90);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn run_bootstraps_on_the_private_network_and_reports_its_consensus() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    net.add_backend("alpha", None).expect("backend alpha");
    net.add_backend("beta", None).expect("backend beta");

    let node_dir = net.data_dir().join("rustbalance");
    let config_dir = node_dir.join("etc");
    let state_dir = node_dir.join("state");
    fs::create_dir_all(&config_dir).unwrap();
    // The node needs a master key to start; a 32-byte seed is one of the formats it reads.
    fs::write(config_dir.join("master.key"), rand::random::<[u8; 32]>()).unwrap();
    fs::write(
        config_dir.join("config.toml"),
        format!(
            "[node]\nid = \"node-e2e\"\npriority = 1\n\n\
             [[backends]]\nname = \"alpha\"\naddress = \"{}\"\n\n\
             [[backends]]\nname = \"beta\"\naddress = \"{}\"\n\n{}",
            net.backend_onion("alpha"),
            net.backend_onion("beta"),
            net.arti_toml()
        ),
    )
    .unwrap();

    let log_path = node_dir.join("rustbalance.log");
    let mut balancer = ProcessGuard::spawn(
        "rustbalance",
        Command::new(env!("CARGO_BIN_EXE_rustbalance"))
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap()),
    )
    .expect("start rustbalance");

    let consensus_line = wait_for_log_line(&log_path, "consensus: valid-after", BOOTSTRAP_TIMEOUT);
    let relays_listed = NetworkOptions::default().relays + 3; // the relays and the 3 authorities
    assert!(
        consensus_line.contains(&format!("{relays_listed} relays")),
        "consensus should list {relays_listed} relays: {consensus_line}"
    );
    let hsdirs = number_before(&consensus_line, " HSDirs").expect("HSDir count in the log line");
    assert!(hsdirs >= 6, "too few HSDirs reported: {consensus_line}");
    assert!(
        state_dir.join("arti/cache").is_dir(),
        "Arti's cache should default to the state directory"
    );

    for backend in ["alpha", "beta"] {
        let url = format!("http://{}/", net.backend_onion(backend));
        let body = net
            .fetch(&url, &format!("e2e-{backend}"), FETCH_TIMEOUT)
            .unwrap_or_else(|err| panic!("fetching {backend}: {err}"));
        assert_eq!(body, net.backend_page(backend));
    }

    balancer.terminate();
    let status = wait_for_exit(&mut balancer, Duration::from_secs(15));
    assert!(
        status.success(),
        "rustbalance exited with {status} after SIGTERM"
    );
    let log = fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("SIGTERM received, shutting down"), "{log}");
    assert!(!log.contains("ERROR"), "errors logged:\n{log}");
}

/// Poll the log file until a line contains `needle`; on timeout, fail with the whole log.
fn wait_for_log_line(log_path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = fs::read_to_string(log_path).unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within {timeout:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_exit(process: &mut ProcessGuard, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exit_status() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "rustbalance did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The integer just before `suffix` in `line` (`"..., 9 HSDirs"` → 9).
fn number_before(line: &str, suffix: &str) -> Option<usize> {
    let head = &line[..line.find(suffix)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
