//! End to end, on a private Tor network: the embedded Tor client is repaired without a
//! restart, and a reloaded configuration takes effect without one.
//!
//! 1. A publishing node; most of the network (every relay, two of three authorities) is
//!    stopped for a while: the node notices its Tor client has stalled and rebuilds it
//!    in-process, after waiting for the old one to release its state files. The network comes back (the backends restart too, since the HSDirs lost
//!    their descriptors), and the same process publishes both backends again.
//! 2. SIGHUP with a config that excludes a backend: the next upload lists only the other one,
//!    still from the same process; a broken config is refused and the running one stays.

mod support;

use std::fs;
use std::time::Duration;

use support::balancer::{Balancer, LogWatcher};
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
    let seed: [u8; 32] = rand::random();
    let master = rustbalance::keys::MasterKey::from_seed(&seed)
        .onion_address()
        .to_string();
    net.add_backend("alpha", Some(&master))
        .expect("backend alpha");
    net.add_backend("beta", Some(&master))
        .expect("backend beta");

    let mut node = Balancer::new(net.data_dir(), "rustbalance");
    let config = node.init_on_network(
        &net,
        &seed,
        &["alpha", "beta"],
        &format!(
            "\n[timing]\nhealth_interval_secs = {HEALTH_INTERVAL_SECS}\npublish_interval_secs = 30\n\
             tor_stall_secs = {TOR_STALL_SECS}\n"
        ),
    );
    let config_path = node.config_dir().join("config.toml");
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
    let back = std::time::Instant::now();
    // The old client is dropped and waited for (its state files) before the new one starts.
    log.wait_for("waiting for the old Tor client", "", START_TIMEOUT);
    log.wait_for("Tor bootstrap complete", "", START_TIMEOUT);
    log.wait_for("published descriptor", "from 2 backend(s)", START_TIMEOUT);
    eprintln!(
        "measured: network and backends back -> published again after {:.1} s",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(node.pid(), pid, "the node was restarted");
    let status = node.status().expect("status");
    assert_eq!(status["tor"]["bootstrapped"], true, "{status:#}");

    // 2. SIGHUP: a broken config is refused, the running one stays.
    fs::write(&config_path, format!("{config}\n[timing]\n")).unwrap();
    node.reload();
    log.wait_for("configuration not reloaded", "config.toml", START_TIMEOUT);
    assert_eq!(
        node.status().expect("status")["backends"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A good one excluding beta: beta leaves the descriptor, without a restart.
    let excluded = config.replacen("name = \"beta\"", "name = \"beta\"\nexclude = true", 1);
    assert_ne!(excluded, config, "beta's table not found in {config}");
    fs::write(&config_path, excluded).unwrap();
    node.reload();
    log.wait_for("configuration reloaded", "", START_TIMEOUT);
    log.wait_for(
        "published descriptor",
        "from 1 backend(s): alpha",
        START_TIMEOUT,
    );
    assert_eq!(node.pid(), pid);
    assert!(node.stop_cleanly());
}
