//! End to end, on a private Tor network: RustBalance balances for real.
//!
//! Two C-tor backends run as Onionbalance instances of a master key; `rustbalance run`
//! publishes the master descriptor through its embedded Arti client. Then, as a user would
//! see it:
//! 1. the C-tor client fetches `http://<master>.onion/` over fresh circuits and gets both
//!    backends' pages; the master descriptor, decrypted layer by layer, has the shape of a
//!    C-tor backend's own descriptor from the same network (every line, in order, with values
//!    of the same lengths; the same padding, fake client entries, `flow-control` line and
//!    certificate expiries);
//! 2. restricted discovery: with a client key listed (SIGHUP), the C-tor client without the
//!    key cannot find the master (its SOCKS reply says "client authorization missing"), with
//!    the key in its `ClientOnionAuthDir` it can; the list removed again, anyone can;
//! 3. with the default health checks (no `[health.probe]`: a rendezvous with each backend),
//!    a backend whose web server is stopped stays in (its tor is alive); once its tor is
//!    stopped, within one health interval plus one check and one publish its introduction
//!    points are gone from the descriptor on the HSDirs (fetched back through Arti and
//!    decrypted here), and the client still gets the other page; restarted, it is
//!    re-included;
//! 4. every backend stopped: the balancer raises its alert and uploads nothing more, and does
//!    not take the dead backends for a stalled Tor client.

mod support;

use std::collections::BTreeSet;
use std::fs;

use std::time::{Duration, Instant};

use rustbalance::keys::onion_address::OnionAddress;
use rustbalance::keys::MasterKey;
use support::balancer::{Balancer, LogWatcher};
use support::hsdesc::{cert_expiry_hours, layers, shape, Layers};
use support::master::{fetch_pages, fetch_until_seen, Observer};
use support::{NetworkOptions, TorNetwork};
use tor_hscrypto::pk::HsClientDescEncKey;
use tor_llcrypto::pk::curve25519;

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
/// One HSFETCH from every HSDir of the network.
const HSFETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Tor delays a NEWNYM that follows another within 10 s.
const NEWNYM_SPACING: Duration = Duration::from_secs(10);
/// One fetch through the master address.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

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
    // A person at the terminal saw the start advance, one line per step: the bootstrap, the
    // first health round, the first upload and how many HSDirs took it.
    let start_log = fs::read_to_string(&log_path).unwrap();
    let progress: Vec<usize> = [
        "Tor bootstrap: ",
        "Tor bootstrap complete",
        "first health round: 1/2 backends checked",
        "health round: 2 backend(s) checked",
        " HSDirs accepted in ",
    ]
    .iter()
    .map(|step| {
        start_log
            .find(step)
            .unwrap_or_else(|| panic!("no {step:?} in the log:\n{start_log}"))
    })
    .collect();
    assert!(
        progress.is_sorted(),
        "the progress lines came out of order:\n{start_log}"
    );
    // An independent Arti client in this test process, to read back what the HSDirs hold.
    let observer = Observer::start(&config_text, &net.data_dir().join("observer"));
    // What the balancer is responsible for: the descriptor on the HSDirs lists both
    // backends' current introduction points...
    assert_eq!(
        observer.backends_listed(&master, &net, &["alpha", "beta"], &["alpha", "beta"]),
        ["alpha", "beta"]
    );
    // ...so clients reach both backends through the master address.
    let both = BTreeSet::from([net.backend_page("alpha"), net.backend_page("beta")]);
    assert_eq!(
        fetch_until_seen(&net, &master_onion, &both),
        both,
        "the master address should lead to both backends"
    );
    // Nothing but its introduction points tells the master descriptor from a C-tor service's.
    looks_like_c_tors(&net, &observer, &master, "alpha");

    // 2. Restricted discovery, switched on and off again with SIGHUP.
    let client_secret = curve25519::StaticSecret::random_from_rng(rand::rng());
    let client_key = HsClientDescEncKey::from(curve25519::PublicKey::from(&client_secret));
    let clients_dir = node.config_dir().join("authorized_clients");
    fs::create_dir_all(&clients_dir).unwrap();
    fs::write(clients_dir.join("tester.auth"), format!("{client_key}\n")).unwrap();
    let config_path = node.config_dir().join("config.toml");
    let open_config = fs::read_to_string(&config_path).unwrap();
    fs::write(
        &config_path,
        format!("{open_config}\n[restricted_discovery]\nclients_dir = \"authorized_clients\"\n"),
    )
    .unwrap();
    node.reload();
    log.wait_for(
        "published descriptor (the authorized clients changed)",
        "",
        LOSS_TIMEOUT,
    );
    let status = node.status().expect("status");
    assert_eq!(status["authorized_clients"], 1, "{status:#}");
    std::thread::sleep(NEWNYM_SPACING);
    net.newnym().expect("NEWNYM");
    let refused = net
        .fetch(&format!("http://{master_onion}/"), "no-key", FETCH_TIMEOUT)
        .expect_err("a client without the key fetched a page through the master address");
    assert!(
        refused.to_string().contains("client authorization missing"),
        "a client without the key failed otherwise: {refused}"
    );
    net.set_client_auth_key(&master_onion, Some(&client_secret.to_bytes()))
        .expect("client key installed");
    std::thread::sleep(NEWNYM_SPACING);
    net.newnym().expect("NEWNYM");
    assert!(!fetch_pages(&net, &master_onion, 2, "with-key").is_empty());
    fs::write(&config_path, &open_config).unwrap();
    net.set_client_auth_key(&master_onion, None)
        .expect("client key removed");
    node.reload();
    log.wait_for(
        "published descriptor (the authorized clients changed)",
        "",
        LOSS_TIMEOUT,
    );
    std::thread::sleep(NEWNYM_SPACING);
    net.newnym().expect("NEWNYM");
    assert!(!fetch_pages(&net, &master_onion, 2, "open-again").is_empty());

    // 3. A backend that serves nothing stays in: its tor comes to the rendezvous.
    net.stop_web_server("beta");
    let no_server = log.position();
    std::thread::sleep(Duration::from_secs(3 * HEALTH_INTERVAL_SECS));
    let meanwhile = log.text_since(no_server);
    assert!(
        !meanwhile.contains("backend beta: healthy ->"),
        "a backend whose tor is alive left the descriptor because it serves nothing:\n{meanwhile}"
    );
    assert_eq!(
        observer.backends_listed(&master, &net, &["alpha", "beta"], &["alpha", "beta"]),
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
        observer.backends_listed(&master, &net, &["alpha", "beta"], &["alpha"]),
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
        observer.backends_listed(&master, &net, &["alpha", "beta"], &["alpha", "beta"]),
        ["alpha", "beta"]
    );

    let (rss, peak) = node.memory_kib();
    eprintln!("measured: balancer memory RSS {rss} kB (peak {peak} kB)");

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

    // 4. All backends dead: alert, and no upload after it.
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
    // On failure, the lines that tell why: every change of a backend's state, each alert and
    // each resumption, and any rebuild of the Tor client.
    let story: Vec<&str> = whole_log
        .lines()
        .filter(|line| {
            [
                "backend alpha:",
                "backend beta:",
                "ALERT",
                "publishing resumes",
                "rebuilding it",
                "resuming from",
            ]
            .iter()
            .any(|needle| line.contains(needle))
        })
        .collect();
    assert_eq!(
        whole_log.matches("ALERT: no healthy backend").count(),
        1,
        "the alert is raised once:\n{}",
        story.join("\n")
    );
    assert!(
        !whole_log.contains("rebuilding it"),
        "dead backends were taken for a stalled Tor client:\n{whole_log}"
    );
}

/// The master descriptor on the HSDirs and `backend`'s own (written by C tor), compared layer
/// by layer: every line in the same order with values of the same lengths, the same padding
/// and number of `auth-client` entries, the same header of the inner layer (`flow-control`
/// included), and certificates that expire as C tor dates them (introduction points: start
/// of the hour + 54 h; descriptor-signing key: now + 54 h, rounded up to the hour).
fn looks_like_c_tors(net: &TorNetwork, observer: &Observer, master: &OnionAddress, backend: &str) {
    let fetch = |onion: &str| {
        net.hsfetch(onion, HSFETCH_TIMEOUT)
            .unwrap_or_else(|err| panic!("HSFETCH {onion}: {err}"))
            .remove(0)
    };
    // Both read within one time period (the test network's last 8 minutes).
    let (period, ours, theirs) = loop {
        let period = observer.current_period();
        let ours = fetch(&master.to_string());
        let theirs = fetch(&net.backend_onion(backend));
        if observer.current_period() == period {
            break (period, ours, theirs);
        }
    };
    let backend_address: OnionAddress = net.backend_onion(backend).parse().unwrap();
    let ours = layers(&ours, master, period);
    let theirs = layers(&theirs, &backend_address, period);
    eprintln!(
        "master descriptor, inner layer header:\n{}C tor's:\n{}",
        inner_header(&ours),
        inner_header(&theirs)
    );

    assert_eq!(shape(&ours.outer), shape(&theirs.outer), "outer layer");
    assert_eq!(shape(&ours.middle), shape(&theirs.middle), "middle layer");
    assert_eq!(
        shape(&ours.middle)
            .iter()
            .filter(|line| line.starts_with("auth-client"))
            .count(),
        16
    );
    for (who, layers) in [("ours", &ours), ("C tor's", &theirs)] {
        assert_eq!(layers.middle_padded_len % 10_000, 0, "{who} middle padding");
        assert!(
            layers.middle.ends_with("-----END MESSAGE-----"),
            "{who} middle layer ends otherwise"
        );
        let signing = cert_expiry_hours(&layers.outer, "descriptor-signing-key-cert");
        let intro: Vec<u32> = cert_expiry_hours(&layers.inner, "auth-key")
            .into_iter()
            .chain(cert_expiry_hours(&layers.inner, "enc-key-cert"))
            .collect();
        assert_eq!(signing.len(), 1);
        assert!(!intro.is_empty());
        assert!(
            intro.iter().all(|hours| *hours + 1 == signing[0]),
            "{who}: introduction-point certificates expire at hours {intro:?}, the signing key's at {signing:?}"
        );
    }
    assert_eq!(
        inner_header(&ours),
        inner_header(&theirs),
        "inner layer header"
    );
    let their_blocks = intro_point_shapes(&theirs);
    for block in intro_point_shapes(&ours) {
        assert_eq!(block, their_blocks[0], "an introduction point");
    }
}

/// The inner layer up to its first introduction point.
fn inner_header(layers: &Layers) -> String {
    let end = layers
        .inner
        .find("introduction-point ")
        .unwrap_or(layers.inner.len());
    layers.inner[..end].to_owned()
}

/// The shape of each introduction point's lines in the inner layer.
fn intro_point_shapes(layers: &Layers) -> Vec<Vec<String>> {
    let mut blocks: Vec<Vec<String>> = Vec::new();
    for line in shape(&layers.inner[inner_header(layers).len()..]) {
        if line.starts_with("introduction-point") {
            blocks.push(Vec::new());
        }
        blocks
            .last_mut()
            .expect("starts with an introduction point")
            .push(line);
    }
    blocks
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
