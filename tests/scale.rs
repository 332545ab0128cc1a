//! Scale, measured on the private Tor network (issue 13 item 1). Not part of the suite's run
//! (`#[ignore]`: it starts tens of C-tor backends, about 15 MiB each); CI only builds it. Run:
//!
//! ```sh
//! RB_SCALE_BACKENDS=20 bash tests/run.sh --test scale -- --ignored --nocapture 2>&1 | grep measured
//! ```
//!
//! 1. Backends are added to one network (20 relays) up to 2, 20 and `RB_SCALE_BACKENDS`
//!    (default 20; 50 where the machine allows). At each step a node with that many backends starts, and the
//!    test reads its first health round (every backend fetched, verified and checked by
//!    rendezvous), its first upload (a full set of distinct descriptors beyond 20
//!    introduction points), its memory once it has settled, and its CPU time over that minute.
//! 2. Five nodes (the first with every backend), the publisher killed: the time until a
//!    standby's descriptor is accepted by the HSDirs.
//!
//! Figures are printed (`measured: ...`) for BENCHMARKS.md, not asserted: only that each step
//! works at all.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use rustbalance::keys::MasterKey;
use support::balancer::{free_udp_port, Balancer, LogWatcher};
use support::{NetworkOptions, TorNetwork};

/// Bootstrap, a health round of many backends and the first upload, on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Relays of the network: a descriptor lists at most one introduction point per relay, so the
/// default 9 (with the authorities) would leave most of 50 backends out of every descriptor.
const RELAYS: usize = 20;
/// How long a node runs after its first upload before its memory and CPU are read.
const SETTLE: Duration = Duration::from_secs(60);
const HEARTBEAT_INTERVAL_SECS: u64 = 1;
const PUBLISHER_TIMEOUT_SECS: u64 = 3;
const TAKEOVER_GRACE_SECS: u64 = 5;
const CLUSTER_NODES: usize = 5;

#[test]
#[ignore = "starts tens of C-tor backends; run by hand (module documentation)"]
fn health_rounds_memory_uploads_and_failover_at_scale() {
    let most: usize = std::env::var("RB_SCALE_BACKENDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let mut steps = vec![2, 20.min(most), most];
    steps.dedup();
    let mut net = TorNetwork::start(NetworkOptions {
        relays: RELAYS,
        ..NetworkOptions::default()
    })
    .expect("private Tor network");
    let seed: [u8; 32] = rand::random();
    let master_onion = MasterKey::from_seed(&seed).onion_address().to_string();

    let mut names: Vec<String> = Vec::new();
    for &count in &steps {
        let added = Instant::now();
        while names.len() < count {
            let name = format!("b{}", names.len());
            net.add_backend(&name, Some(&master_onion))
                .unwrap_or_else(|err| panic!("backend {name}: {err}"));
            names.push(name);
        }
        eprintln!(
            "{count} backends running ({:.0} s to add the last ones)",
            added.elapsed().as_secs_f64()
        );
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        one_node_with(&net, &seed, &names);
    }

    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    failover_with_five_nodes(&net, &seed, &names);
}

/// A node with `backends`: its first health round, first upload, memory and CPU.
fn one_node_with(net: &TorNetwork, seed: &[u8; 32], backends: &[&str]) {
    let count = backends.len();
    let mut node = Balancer::new(net.data_dir(), &format!("scale{count}"));
    node.init_on_network(net, seed, backends, "");
    let started = Instant::now();
    node.start(&["run"]);
    let mut log = LogWatcher::new(node.log_path());
    let round = log.wait_for("health round:", "backend(s) checked", START_TIMEOUT);
    // The first upload after that round (how many backends it lists is printed).
    let upload = log.wait_for("published descriptor", "", START_TIMEOUT);
    let to_upload = started.elapsed();
    let cpu_before = node.cpu_time();
    std::thread::sleep(SETTLE);
    let cpu = node.cpu_time() - cpu_before;
    let (rss, peak) = node.memory_kib();
    eprintln!(
        "measured: {count} backends: {}; first upload {:.1} s after start: {}; RSS {:.1} MiB (peak {:.1} MiB) after {} s more, CPU {:.1} % of a core over them; total CPU {:.1} s",
        after(&round, "health round: "),
        to_upload.as_secs_f64(),
        after(&upload, "published descriptor "),
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        SETTLE.as_secs(),
        cpu.as_secs_f64() * 100.0 / SETTLE.as_secs_f64(),
        node.cpu_time().as_secs_f64()
    );
    assert!(node.stop_cleanly(), "scale{count} did not exit cleanly");
}

/// Five nodes, the first publishing for `backends`; it is killed, and a standby's upload is
/// accepted after the printed time.
fn failover_with_five_nodes(net: &TorNetwork, seed: &[u8; 32], backends: &[&str]) {
    let root = net.data_dir().join("five");
    let ports: Vec<u16> = (0..CLUSTER_NODES).map(|_| free_udp_port()).collect();
    let endpoint = |port: u16| format!("127.0.0.1:{port}");
    let mut first = Balancer::new(&root, "n0");
    let args = first.import_args(net, seed, backends);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed = first.init_first_node_with(&endpoint(ports[0]), &args);
    let token = printed
        .lines()
        .find(|line| line.starts_with("rb1:"))
        .expect("init prints a token")
        .to_owned();
    let config_path = first.config_dir().join("config.toml");
    let mut config = fs::read_to_string(&config_path).unwrap();
    config.push_str(&format!(
        "\n[timing]\nheartbeat_interval_secs = {HEARTBEAT_INTERVAL_SECS}\n\
         publisher_timeout_secs = {PUBLISHER_TIMEOUT_SECS}\ntakeover_grace_secs = {TAKEOVER_GRACE_SECS}\n\n{}",
        net.arti_toml()
    ));
    fs::write(&config_path, &config).unwrap();
    first.start(&["run"]);
    let mut first_log = LogWatcher::new(first.log_path());
    first_log.wait_for("published descriptor", "", START_TIMEOUT);
    let first_id = first.status().expect("status of n0")["node_id"].clone();

    let mut standbys = Vec::new();
    for (index, &port) in ports.iter().enumerate().skip(1) {
        let mut node = Balancer::new(&root, &format!("n{index}"));
        node.start_joining(&token, port);
        standbys.push(node);
    }
    // They joined at once: their priorities (2 to 5) follow the order of admission.
    let priorities: Vec<serde_json::Value> = standbys
        .iter()
        .map(|node| {
            node.wait_status("a standby following n0", START_TIMEOUT, |status| {
                status["role"] == "standby"
                    && status["publisher"] == first_id
                    && status["can_publish"] == true
            })["priority"]
                .clone()
        })
        .collect();
    let best = priorities
        .iter()
        .position(|priority| *priority == 2)
        .expect("a standby with priority 2");
    let mut logs: Vec<LogWatcher> = standbys
        .iter()
        .map(|node| LogWatcher::from_end(node.log_path()))
        .collect();
    first.kill_hard();
    let killed = Instant::now();
    // The best standby takes over, and no other.
    let upload = logs[best].wait_for("published descriptor", "", START_TIMEOUT);
    let took = killed.elapsed();
    assert!(
        !upload.contains("): 0/"),
        "the upload of n{} (priority 2) was refused: {upload}",
        best + 1
    );
    eprintln!(
        "measured: {CLUSTER_NODES} nodes, {} backends: publisher killed -> the descriptor of n{} (priority 2) accepted after {:.1} s (timeout {PUBLISHER_TIMEOUT_SECS} s + grace {TAKEOVER_GRACE_SECS} s): {}",
        backends.len(),
        best + 1,
        took.as_secs_f64(),
        after(&upload, "published descriptor ")
    );
    for (index, log) in logs.iter().enumerate().filter(|(index, _)| *index != best) {
        assert!(
            !log.text_since(0).contains("this node is now the publisher"),
            "n{} took the lease too",
            index + 1
        );
    }
    for node in &mut standbys {
        assert!(node.stop_cleanly());
    }
}

/// The part of a log line from `marker` on.
fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.find(marker).map_or(line, |at| &line[at..]).trim_end()
}
