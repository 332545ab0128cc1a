//! End to end, on a private Tor network: the embedded Tor client is repaired without a
//! restart, and a reloaded configuration takes effect without one.
//!
//! 1. A publishing node; most of the network (every relay, two of three authorities) is
//!    stopped for a while: the node notices its Tor client has stalled and rebuilds it
//!    in-process. The network comes back (the backends restart too, since the HSDirs lost
//!    their descriptors), and the same process publishes both backends again.
//! 2. SIGHUP with a config that excludes a backend: the next upload lists only the other one,
//!    still from the same process; a broken config is refused and the running one stays.

mod support;

use std::fs;
use std::time::Duration;

use support::balancer::{free_udp_port, Balancer, LogWatcher};
use support::{NetworkOptions, TorNetwork};

const HEALTH_INTERVAL_SECS: u64 = 5;
const TOR_STALL_SECS: u64 = 20;
/// Generous waits for a busy 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The last consensus expires (40 s), then the stall limit passes.
const STALL_TIMEOUT: Duration = Duration::from_secs(40 + TOR_STALL_SECS + 60);

#[test]
fn a_stalled_tor_client_is_rebuilt_and_sighup_reloads_backends() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    let seed_path = net.data_dir().join("master-seed.key");
    let seed: [u8; 32] = rand::random();
    fs::write(&seed_path, seed).unwrap();
    let master = rustbalance::keys::MasterKey::from_seed(&seed)
        .onion_address()
        .to_string();
    net.add_backend("alpha", Some(&master))
        .expect("backend alpha");
    net.add_backend("beta", Some(&master))
        .expect("backend beta");

    let mut node = Balancer::new(net.data_dir(), "rustbalance");
    let init = node.run(&[
        "init",
        "--no-start",
        "--import-key",
        seed_path.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_udp_port()),
        "--backend",
        &format!("alpha={}", net.backend_onion("alpha")),
        "--backend",
        &format!("beta={}", net.backend_onion("beta")),
    ]);
    assert!(
        init.status.success(),
        "init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let config_path = node.config_dir().join("config.toml");
    let base_config = fs::read_to_string(&config_path).unwrap();
    let tuning = format!(
        "\n[timing]\nhealth_interval_secs = {HEALTH_INTERVAL_SECS}\npublish_interval_secs = 30\n\
         tor_stall_secs = {TOR_STALL_SECS}\n\n{}",
        net.arti_toml()
    );
    fs::write(&config_path, format!("{base_config}{tuning}")).unwrap();
    node.start(&["run"]);
    let pid = node.pid();
    let mut log = LogWatcher::new(node.log_path());
    log.wait_for("published descriptor", "from 2 backend(s)", START_TIMEOUT);

    // 1. Most of the network goes away: the client stalls and is rebuilt in-process.
    net.stop_most_relays();
    let line = log.wait_for("stopped making progress", "rebuilding", STALL_TIMEOUT);
    eprintln!("observed: {line}");
    net.restart_stopped_relays().expect("relays back");
    for backend in ["alpha", "beta"] {
        net.restart_backend(backend).expect("backend back");
    }
    log.wait_for("Tor bootstrap complete", "", START_TIMEOUT);
    log.wait_for("published descriptor", "from 2 backend(s)", START_TIMEOUT);
    assert_eq!(node.pid(), pid, "the node was restarted");
    let status = node.status().expect("status");
    assert_eq!(status["tor"]["bootstrapped"], true, "{status:#}");

    // 2. SIGHUP: a broken config is refused, the running one stays.
    fs::write(&config_path, format!("{base_config}{tuning}\n[timing]\n")).unwrap();
    signal_hup(pid);
    log.wait_for("configuration not reloaded", "config.toml", START_TIMEOUT);
    assert_eq!(
        node.status().expect("status")["backends"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A good one excluding beta: beta leaves the descriptor, without a restart.
    let excluded = base_config.replacen("name = \"beta\"", "name = \"beta\"\nexclude = true", 1);
    assert_ne!(
        excluded, base_config,
        "beta's table not found in {base_config}"
    );
    fs::write(&config_path, format!("{excluded}{tuning}")).unwrap();
    signal_hup(pid);
    log.wait_for("configuration reloaded", "", START_TIMEOUT);
    log.wait_for(
        "published descriptor",
        "from 1 backend(s): alpha",
        START_TIMEOUT,
    );
    assert_eq!(node.pid(), pid);
    assert!(node.stop_cleanly());
}

fn signal_hup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
