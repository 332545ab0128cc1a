//! End to end, on a private Tor network whose consensus stays valid for 160 s (eight voting
//! intervals, so that a node whose clock runs a minute ahead still holds a live one): two
//! balancer nodes, c with its wall clock a minute ahead (libfaketime).
//!
//! 1. a publishes; c joins a minute ahead and follows; a shows c's offset.
//! 2. a stops cleanly: c takes the lease and publishes, its revision counters a minute ahead of
//!    a's clock.
//! 3. a returns as a standby; then c is killed: a takes over, and the HSDirs accept a's first
//!    upload (it reads their copies back when it gains the lease and publishes above them).
//!
//! Throughout, never two publishers for longer than a heartbeat.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::balancer::{free_udp_port, longest_two_publishers, Balancer, LogWatcher};
use support::{NetworkOptions, TorNetwork};

const HEALTH_INTERVAL_SECS: u64 = 10;
const HEARTBEAT_INTERVAL_SECS: u64 = 1;
const PUBLISHER_TIMEOUT_SECS: u64 = 3;
const TAKEOVER_GRACE_SECS: u64 = 5;
/// A killed publisher's standby uploads within timeout + grace + 10 s.
const TAKEOVER_BOUND: Duration =
    Duration::from_secs(PUBLISHER_TIMEOUT_SECS + TAKEOVER_GRACE_SECS + 10);
/// Generous waits for a busy 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn failing_over_from_a_publisher_a_minute_ahead_gets_the_first_upload_accepted() {
    let mut net = TorNetwork::start(NetworkOptions {
        consensus_valid_intervals: 8,
        ..NetworkOptions::default()
    })
    .expect("private Tor network");
    let root = net.data_dir().join("clock");
    let (port_a, port_c) = (free_udp_port(), free_udp_port());
    let endpoint = |port: u16| format!("127.0.0.1:{port}");

    // 1. a publishes; c joins a minute ahead.
    let mut a = Balancer::new(&root, "a");
    let (master_onion, token) = a.init_first_node(&endpoint(port_a));
    net.add_backend("alpha", Some(&master_onion))
        .expect("backend alpha");
    let config_path = a.config_dir().join("config.toml");
    let mut config = fs::read_to_string(&config_path).unwrap();
    config.push_str(&format!(
        "\n[[backends]]\nname = \"alpha\"\naddress = \"{}\"\n\n\
         [timing]\nhealth_interval_secs = {HEALTH_INTERVAL_SECS}\npublish_interval_secs = 60\n\
         heartbeat_interval_secs = {HEARTBEAT_INTERVAL_SECS}\n\
         publisher_timeout_secs = {PUBLISHER_TIMEOUT_SECS}\ntakeover_grace_secs = {TAKEOVER_GRACE_SECS}\n\n{}",
        net.backend_onion("alpha"),
        net.arti_toml()
    ));
    fs::write(&config_path, &config).unwrap();
    a.start(&["run"]);
    let mut a_log = LogWatcher::new(a.log_path());
    a_log.wait_for("published descriptor", "from 1 backend(s)", START_TIMEOUT);
    let a_id = a.status().expect("status of a")["node_id"].clone();

    // It joins with its clock right (a join request a minute off is refused as stale), then
    // runs a minute ahead.
    let mut c = Balancer::new(&root, "c");
    let joined = c.run(&[
        "join",
        &token,
        "--endpoint",
        &endpoint(port_c),
        "--listen",
        &endpoint(port_c),
        "--no-start",
    ]);
    assert!(
        joined.status.success(),
        "join: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    c.set_clock_offset("+60s");
    c.start(&["run"]);
    let following = |publisher: serde_json::Value| {
        move |status: &serde_json::Value| {
            status["role"] == "standby"
                && status["publisher"] == publisher
                && status["can_publish"] == true
        }
    };
    let c_status = c.wait_status(
        "c, a minute ahead, following a and able to publish",
        START_TIMEOUT,
        following(a_id.clone()),
    );
    let c_id = c_status["node_id"].clone();
    let a_status = a.wait_status("a showing c's offset", START_TIMEOUT, |status| {
        status["peers"].as_array().is_some_and(|peers| {
            peers.iter().any(|peer| {
                peer["node_id"] == c_id
                    && peer["clock_offset_ms"]
                        .as_i64()
                        .is_some_and(|ms| ms > 50_000)
            })
        })
    });
    let mut longest = longest_two_publishers(&[&a, &c], Duration::from_secs(10));

    // 2. c, a minute ahead, takes the lease when a stops cleanly.
    let mut c_log = LogWatcher::from_end(c.log_path());
    assert!(a.stop_cleanly(), "a did not exit cleanly");
    c_log.wait_for("this node is now the publisher", "", TAKEOVER_BOUND);
    let skewed = c_log.wait_for("published descriptor", "", START_TIMEOUT);
    assert!(
        !skewed.contains("): 0/"),
        "c's upload was refused: {skewed}"
    );

    // 3. a returns, reads c's copies back; c is killed; a's first upload is accepted.
    let mut a_log = LogWatcher::from_end(a.log_path());
    a.start(&["run"]);
    a.wait_status("a following c", START_TIMEOUT, |status| {
        following(c_id.clone())(status)
            && status["hsdirs"]
                .as_array()
                .is_some_and(|periods| periods.iter().any(|p| p["holding"].as_u64() > Some(0)))
    });
    longest = longest.max(longest_two_publishers(&[&a, &c], Duration::from_secs(10)));
    c.kill_hard();
    let killed = Instant::now();
    a_log.wait_for("this node is now the publisher", "", TAKEOVER_BOUND);
    let published = a_log.wait_for("published descriptor", "", TAKEOVER_BOUND);
    eprintln!(
        "measured: clock +60 s ({} ms as a saw it): at most {:.1} s with two publishers; the skewed publisher killed -> a's descriptor accepted after {:.1} s",
        a_status["peers"][0]["clock_offset_ms"],
        longest.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    assert!(
        !published.contains("): 0/"),
        "the HSDirs refused the new publisher's first upload: {published}"
    );
    assert!(
        longest <= Duration::from_secs(HEARTBEAT_INTERVAL_SECS),
        "two nodes published at once for {longest:?}"
    );
    assert!(a.stop_cleanly(), "a did not exit cleanly");
}
