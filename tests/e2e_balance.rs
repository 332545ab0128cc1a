//! End to end, on a private Tor network: RustBalance balances for real.
//!
//! Two C-tor backends run as Onionbalance instances of a master key; `rustbalance run`
//! publishes the master descriptor through its embedded Arti client. Then, as a user would
//! see it:
//! 1. the C-tor client fetches `http://<master>.onion/` over fresh circuits and gets both
//!    backends' pages;
//! 2. with the default health checks (no `[health.probe]`: a rendezvous with each backend),
//!    a backend whose web server is stopped stays in (its tor is alive); once its tor is
//!    stopped, within one health interval plus one check and one publish its introduction
//!    points are gone from the descriptor on the HSDirs (fetched back through Arti and
//!    decrypted here), and the client still gets the other page; restarted, it is
//!    re-included;
//! 3. every backend stopped: the balancer raises its alert and uploads nothing more, and does
//!    not take the dead backends for a stalled Tor client.

mod support;

use std::collections::BTreeSet;
use std::fs;

use std::time::{Duration, Instant};

use rustbalance::keys::MasterKey;
use support::balancer::{Balancer, LogWatcher};
use support::master::{fetch_pages, fetch_until_seen, Observer};
use support::{NetworkOptions, TorNetwork};

/// Shortened `[timing]` so the scenario runs in minutes.
const HEALTH_INTERVAL_SECS: u64 = 10;
const PUBLISH_INTERVAL_SECS: u64 = 60;
/// Generous bounds for a busy 2-core CI machine; the figures that matter are measured by the
/// benchmarks, not asserted here.
const FIRST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);
/// The rendezvous check's own bound (`params::RENDEZVOUS_CHECK_TIMEOUT`).
const RENDEZVOUS_TIMEOUT_SECS: u64 = 30;
/// Longer than any health round here (a rendezvous timing out and a fetch), shorter than the
/// all-dead phase: dead backends must not pass for a stalled Tor client.
const TOR_STALL_SECS: u64 = 50;
/// One health interval, one rendezvous timeout and one publish (with upload retries).
const LOSS_TIMEOUT: Duration =
    Duration::from_secs(HEALTH_INTERVAL_SECS + RENDEZVOUS_TIMEOUT_SECS + 60);

#[test]
fn balances_over_backends_drops_dead_ones_and_stops_when_all_are_dead() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    // A master key as a 32-byte seed, one of the formats the balancer imports.
    let seed: [u8; 32] = rand::random();
    let master = MasterKey::from_seed(&seed).onion_address();
    let master_onion = master.to_string();

    net.add_backend("alpha", Some(&master_onion))
        .expect("backend alpha");
    net.add_backend("beta", Some(&master_onion))
        .expect("backend beta");
    let mut node = Balancer::new(net.data_dir(), "rustbalance");
    let config_text = node.init_on_network(
        &net,
        &seed,
        &["alpha", "beta"],
        &format!(
            "\n[timing]\nhealth_interval_secs = {HEALTH_INTERVAL_SECS}\npublish_interval_secs = {PUBLISH_INTERVAL_SECS}\n\
             tor_stall_secs = {TOR_STALL_SECS}\n"
        ),
    );

    let started = Instant::now();
    node.start(&["run"]);
    let log_path = node.log_path().to_owned();
    let mut log = LogWatcher::new(&log_path);

    // 1. Reachability through the master address, both backends.
    log.wait_for(
        "published descriptor",
        "from 2 backend(s)",
        FIRST_PUBLISH_TIMEOUT,
    );
    fetch_pages(&net, &master_onion, 1, "first");
    // Figures for BENCHMARKS.md (printed, not asserted: speed goals live in benchmarks).
    eprintln!(
        "measured: first client fetch through the master address {:.1} s after the balancer started",
        started.elapsed().as_secs_f64()
    );
    // An independent Arti client in this test process, to read back what the HSDirs hold.
    let observer = Observer::start(&config_text, &net.data_dir().join("observer"));
    // What the balancer is responsible for: the descriptor on the HSDirs lists both
    // backends' current introduction points...
    assert_eq!(
        observer.backends_in_master_descriptor(&master, &net, &["alpha", "beta"]),
        ["alpha", "beta"]
    );
    // ...so clients reach both backends through the master address.
    let both = BTreeSet::from([net.backend_page("alpha"), net.backend_page("beta")]);
    assert_eq!(
        fetch_until_seen(&net, &master_onion, &both),
        both,
        "the master address should lead to both backends"
    );

    // 2. A backend that serves nothing stays in: its tor comes to the rendezvous.
    net.stop_web_server("beta");
    let no_server = log.position();
    std::thread::sleep(Duration::from_secs(3 * HEALTH_INTERVAL_SECS));
    let meanwhile = log.text_since(no_server);
    assert!(
        !meanwhile.contains("backend beta: healthy ->"),
        "a backend whose tor is alive left the descriptor because it serves nothing:\n{meanwhile}"
    );
    assert_eq!(
        observer.backends_in_master_descriptor(&master, &net, &["alpha", "beta"]),
        ["alpha", "beta"]
    );

    // Backend loss and recovery, with the default checks.
    net.stop_backend("beta");
    let stopped = Instant::now();
    log.wait_for("backend beta: healthy -> dead", "", LOSS_TIMEOUT);
    log.wait_for(
        "published descriptor (introduction points changed)",
        "from 1 backend(s): alpha",
        LOSS_TIMEOUT,
    );
    eprintln!(
        "measured: beta left the descriptor {:.1} s after its tor stopped (defaults, no probe; health interval {HEALTH_INTERVAL_SECS} s)",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(
        observer.backends_in_master_descriptor(&master, &net, &["alpha", "beta"]),
        ["alpha"],
        "the descriptor on the HSDirs must no longer list beta"
    );
    // A client that still holds the old descriptor may try beta's introduction points, which
    // keep the dead service's circuits for a few seconds and then wait out a rendezvous
    // timeout; a new client (NEWNYM purges the cache) gets the new descriptor.
    net.newnym().expect("NEWNYM");
    assert_eq!(
        fetch_pages(&net, &master_onion, 4, "after-loss"),
        BTreeSet::from([net.backend_page("alpha")])
    );

    net.start_web_server("beta").expect("beta's web server");
    net.restart_backend("beta").expect("restart beta");
    log.wait_for("backend beta: dead -> healthy", "", LOSS_TIMEOUT);
    log.wait_for(
        "published descriptor (introduction points changed)",
        "from 2 backend(s)",
        LOSS_TIMEOUT,
    );
    assert_eq!(
        observer.backends_in_master_descriptor(&master, &net, &["alpha", "beta"]),
        ["alpha", "beta"]
    );

    eprintln!("measured: balancer memory {}", memory_of(node.pid()));

    // A restart resumes from state.json: what the HSDirs hold is not uploaded again. A time
    // period that appeared while the node was down (the private network's periods last 8
    // minutes) legitimately gets its first upload, so the check is per period: no period
    // state.json recorded an upload for is uploaded again for the first time.
    assert!(node.stop_cleanly(), "the balancer did not stop cleanly");
    let saved_periods = uploaded_periods(&node.state_dir().join("state.json"));
    assert!(
        !saved_periods.is_empty(),
        "state.json recorded no upload before the restart"
    );
    let mut log = LogWatcher::from_end(&log_path);
    let restart_at = log.position();
    node.start(&["run"]);
    log.wait_for("resuming from state.json", "", FIRST_PUBLISH_TIMEOUT);
    log.wait_for("backend alpha", "-> healthy", FIRST_PUBLISH_TIMEOUT);
    log.wait_for("backend beta", "-> healthy", FIRST_PUBLISH_TIMEOUT);
    std::thread::sleep(Duration::from_secs(2 * HEALTH_INTERVAL_SECS));
    let since_restart = log.text_since(restart_at);
    let uploaded_again: Vec<u64> = first_publish_periods(&since_restart)
        .into_iter()
        .filter(|period| saved_periods.contains(period))
        .collect();
    assert!(
        uploaded_again.is_empty(),
        "the restarted node uploaded again what it had uploaded (periods {uploaded_again:?}, saved {saved_periods:?}):\n{since_restart}"
    );

    // 3. All backends dead: alert, and no upload after it.
    net.stop_backend("alpha");
    net.stop_backend("beta");
    log.wait_for("ALERT: no healthy backend", "", LOSS_TIMEOUT);
    let after_alert = log.position();
    std::thread::sleep(Duration::from_secs(3 * HEALTH_INTERVAL_SECS));
    let later = log.text_since(after_alert);
    assert!(
        !later.contains("published descriptor"),
        "uploaded after all backends died:\n{later}"
    );
    let whole_log = fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        whole_log.matches("ALERT: no healthy backend").count(),
        1,
        "the alert is raised once"
    );
    assert!(
        !whole_log.contains("rebuilding it"),
        "dead backends were taken for a stalled Tor client:\n{whole_log}"
    );
}

/// The time periods state.json holds an upload for.
fn uploaded_periods(state_json: &std::path::Path) -> BTreeSet<u64> {
    let text = fs::read_to_string(state_json).expect("state.json after a clean stop");
    let state: serde_json::Value = serde_json::from_str(&text).expect("state.json parses");
    state["uploads"]
        .as_array()
        .expect("state.json lists uploads")
        .iter()
        .map(|upload| upload["time_period"].as_u64().expect("a time period"))
        .collect()
}

/// The periods of the "first publish for this period" uploads logged in `log`.
fn first_publish_periods(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("first publish for this period"))
        .map(|line| {
            let value = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("period="))
                .unwrap_or_else(|| panic!("an upload line without its period: {line}"));
            value
                .parse()
                .unwrap_or_else(|_| panic!("period={value} in: {line}"))
        })
        .collect()
}

/// Resident set size now and at peak, from /proc.
fn memory_of(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!("RSS {} (peak {})", field("VmRSS:"), field("VmHWM:"))
}
