//! End to end, on one private Tor network, what no peer does: a running Onionbalance 0.2.4
//! replaced by RustBalance while a client polling the master address sees no gap, and eight
//! backends with three introduction points each, of which C-tor clients reach every one a
//! descriptor can carry.
//!
//! Onionbalance replaced:
//! 1. Two C-tor backends are Onionbalance instances of a master key in Onionbalance's PEM
//!    format; Onionbalance itself (from PyPI, `RB_ONIONBALANCE`, installed by tests/run.sh)
//!    publishes the master descriptor through a C tor of its own (its control port), and the
//!    test's C-tor client fetches a page through the master address.
//! 2. From then on the client fetches through the master address every few seconds, as a new
//!    client each time (NEWNYM: no cached descriptor), until the end.
//! 3. `rustbalance import onionbalance config.yaml` sets a node up from Onionbalance's own
//!    configuration and key; it starts while Onionbalance still runs. Its first uploads are
//!    accepted by the HSDirs although Onionbalance's revision counters follow another key: it
//!    reads what the HSDirs hold and publishes above it.
//! 4. Onionbalance is stopped; the balancer alone keeps the address up.
//!
//! Every poll must succeed (one immediate retry allowed, as the harness allows elsewhere for
//! a client that asked an HSDir during a consensus change).
//!
//! Eight backends (24 introduction points on the network's 9 relays): the published
//! descriptor lists at most one introduction point per relay (a C-tor client reaches only the
//! first one listed on a relay) and as many backends as the backends' relays allow, and a
//! C-tor client fetching with fresh circuits reaches every listed backend.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustbalance::keys::onion_address::OnionAddress;
use rustbalance::keys::MasterKey;
use support::balancer::{Balancer, LogWatcher};
use support::master::Observer;
use support::process::ProcessGuard;
use support::{NetworkOptions, TorNetwork};

/// The key `onionbalance-config` would have made: tests/data has one in its PEM format.
const MASTER_KEY_PEM: &str = "tests/data/onionbalance_master_key.pem";
const MASTER_ONION: &str = "75w6bo2hfqkeyltppkrnaxrmo542ty5evcuuxkideukynzfqa32mu6ad.onion";
/// Onionbalance on this network: fetches every 20 s and publishes within a minute or two.
const ONIONBALANCE_PUBLISH_TIMEOUT: Duration = Duration::from_secs(240);
const FIRST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Tor delays a NEWNYM that comes within 10 s of the previous one.
const POLL_EVERY: Duration = Duration::from_secs(10);
/// How long the balancer alone is watched after Onionbalance stopped.
const WATCH_ALONE: Duration = Duration::from_secs(40);
const MANY_BACKENDS: usize = 8;
/// With one listed introduction point of each listed backend among at most 9, a backend is
/// missed by 150 fetches with probability (8/9)^150 < 10^-7.
const MANY_FETCHES: usize = 150;

#[test]
fn further_than_any_peer() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    onionbalance_is_replaced_without_a_gap(&mut net);
    eight_backends_are_all_reached(&mut net);
}

fn onionbalance_is_replaced_without_a_gap(net: &mut TorNetwork) {
    let onionbalance =
        std::env::var("RB_ONIONBALANCE").unwrap_or_else(|_| "onionbalance".to_owned());
    net.add_backend("alpha", Some(MASTER_ONION))
        .expect("backend alpha");
    net.add_backend("beta", Some(MASTER_ONION))
        .expect("backend beta");

    // Onionbalance's directory: its config.yaml as `onionbalance-config` writes it.
    let ob_dir = net.data_dir().join("onionbalance");
    fs::create_dir_all(&ob_dir).unwrap();
    let key_path = ob_dir.join("master.key");
    fs::copy(MASTER_KEY_PEM, &key_path).unwrap();
    let config_yaml = ob_dir.join("config.yaml");
    fs::write(
        &config_yaml,
        format!(
            "services:\n- instances:\n  - address: {}\n    name: alpha\n  - address: {}\n    name: beta\n  key: master.key\n",
            net.backend_onion("alpha"),
            net.backend_onion("beta")
        ),
    )
    .unwrap();
    let ob_log = ob_dir.join("onionbalance.log");
    // Onionbalance runs beside a tor of its own, as its operators run it.
    let ob_tor = net
        .add_controlled_client("onionbalance-tor")
        .expect("Onionbalance's tor");
    let mut ob = start_onionbalance(&onionbalance, &config_yaml, &ob_log, ob_tor);

    // 1. Onionbalance publishes; the client reaches a backend through the master address.
    let started = Instant::now();
    loop {
        let fetched = net.fetch(
            &format!("http://{MASTER_ONION}/"),
            &format!("ob-{}", started.elapsed().as_secs()),
            FETCH_TIMEOUT,
        );
        if fetched.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < ONIONBALANCE_PUBLISH_TIMEOUT,
            "Onionbalance did not make the master address reachable in time; its log:\n{}",
            fs::read_to_string(&ob_log).unwrap_or_default()
        );
        net.newnym().expect("NEWNYM");
        std::thread::sleep(POLL_EVERY);
    }
    eprintln!(
        "measured: Onionbalance made the master address reachable {:.0} s after it started",
        started.elapsed().as_secs_f64()
    );

    // 2. + 3. The balancer set up from Onionbalance's files, started beside it.
    let mut node = Balancer::new(net.data_dir(), "rustbalance");
    let config = node.import_onionbalance_on_network(net, &config_yaml);
    assert!(
        config.contains(&net.backend_onion("alpha")) && config.contains(&net.backend_onion("beta")),
        "the instances became backends:\n{config}"
    );
    let mut polls = Poller::new(net);
    polls.poll();
    // What Onionbalance left on the HSDirs, per time period.
    let observer = Observer::start(&config, &net.data_dir().join("observer"));
    let master: OnionAddress = MASTER_ONION.parse().unwrap();
    let onionbalance_revisions = observer.master_revisions(&master);
    node.start(&["run"]);
    let mut log = LogWatcher::new(node.log_path());
    let first_upload = log.wait_for("published descriptor", "", FIRST_PUBLISH_TIMEOUT);
    assert!(
        !first_upload.contains(" 0/"),
        "the balancer's first upload was refused: {first_upload}"
    );
    let (period, revision) = period_and_revision(&first_upload);
    eprintln!(
        "measured: the balancer's first upload, period {period}: revision {revision}; Onionbalance's there: {:?}",
        onionbalance_revisions.get(&period)
    );
    if let Some(theirs) = onionbalance_revisions.get(&period) {
        assert!(
            revision > *theirs,
            "not above Onionbalance's revision {theirs}: {first_upload}"
        );
    }
    let whole = fs::read_to_string(node.log_path()).unwrap();
    assert!(
        !whole.contains("HTTP 400"),
        "an HSDir refused a revision counter of the balancer's:\n{whole}"
    );
    polls.poll();

    // 4. Onionbalance stopped: the balancer alone.
    ob.stop();
    let alone = Instant::now();
    while alone.elapsed() < WATCH_ALONE {
        polls.poll();
    }
    let refusals = fs::read_to_string(node.log_path())
        .unwrap()
        .matches("HTTP 400")
        .count();
    assert_eq!(
        refusals, 0,
        "the HSDirs refused some of the balancer's uploads"
    );
    eprintln!(
        "measured: {} polls through the master address across the switch, {} needed a retry",
        polls.count, polls.retried
    );
    assert!(node.stop_cleanly());
    // Make room for the next scenario on this network.
    net.stop_backend("alpha");
    net.stop_backend("beta");
}

/// Eight backends with three introduction points each, on the network's 9 relays.
fn eight_backends_are_all_reached(net: &mut TorNetwork) {
    let seed: [u8; 32] = rand::random();
    let master = MasterKey::from_seed(&seed).onion_address();
    let master_onion = master.to_string();
    let names: Vec<String> = (0..MANY_BACKENDS).map(|i| format!("many{i}")).collect();
    for name in &names {
        net.add_backend(name, Some(&master_onion))
            .unwrap_or_else(|err| panic!("backend {name}: {err}"));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut node = Balancer::new(net.data_dir(), "many");
    let config = node.init_on_network(
        net,
        &seed,
        &names,
        "\n[timing]\nhealth_interval_secs = 10\n",
    );
    node.start(&["run"]);
    let mut log = LogWatcher::new(node.log_path());
    let upload = log.wait_for("published descriptor", "", FIRST_PUBLISH_TIMEOUT);
    eprintln!("first upload: {upload}");

    // On the HSDirs: one introduction point per relay, and as many backends as the relays
    // the backends chose allow (here the 9 relays may not be enough for 8 backends: several
    // may have all their introduction points on relays other backends use too; distinct
    // descriptors for different HSDirs are what lifts that).
    let observer = Observer::start(&config, &net.data_dir().join("many-observer"));
    let backend_relays: Vec<Vec<String>> = names
        .iter()
        .map(|name| observer.intro_point_relays(&net.backend_onion(name).parse().unwrap()))
        .collect();
    let coverable = best_cover(&backend_relays, &mut Vec::new());
    // The first upload may come from a health round that had not seen every backend yet.
    let listed =
        observer.backends_listed_until(&master, net, &names, |listed| listed.len() >= coverable);
    assert_eq!(
        listed.len(),
        coverable,
        "the master descriptor lists {listed:?}; {coverable} backends could each have a relay of their own"
    );
    let relays = observer.intro_point_relays(&master);
    let distinct: BTreeSet<&String> = relays.iter().collect();
    assert_eq!(
        distinct.len(),
        relays.len(),
        "a relay listed twice: {relays:?}"
    );

    // C-tor clients with fresh circuits reach every listed backend.
    let expected: BTreeSet<String> = listed.iter().map(|name| net.backend_page(name)).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fetches = 0;
    while fetches < MANY_FETCHES && !expected.iter().all(|page| seen.contains_key(page)) {
        let page = net
            .fetch(
                &format!("http://{master_onion}/"),
                &format!("many-{fetches}"),
                FETCH_TIMEOUT,
            )
            .unwrap_or_else(|err| panic!("fetch {fetches} through the master address: {err}"));
        *seen.entry(page).or_default() += 1;
        fetches += 1;
    }
    eprintln!(
        "measured: {} of {MANY_BACKENDS} backends reached in {fetches} fetches with fresh circuits ({} introduction points listed, one per relay; {} backends on relays of their own at best): {seen:?}",
        seen.len(),
        relays.len(),
        coverable
    );
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(node.stop_cleanly());
}

/// The most backends that can each have one introduction point on a relay of its own, given
/// each backend's relays (tried exhaustively: 3^8 choices at most here).
fn best_cover(backends: &[Vec<String>], used: &mut Vec<String>) -> usize {
    let Some((first, rest)) = backends.split_first() else {
        return 0;
    };
    let mut best = best_cover(rest, used);
    for relay in first {
        if !used.contains(relay) {
            used.push(relay.clone());
            best = best.max(1 + best_cover(rest, used));
            used.pop();
        }
    }
    best
}

/// `period=<n> revision_counter=<n>` of an upload's log line.
fn period_and_revision(line: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (field("period"), field("revision_counter"))
}

fn start_onionbalance(
    binary: &str,
    config_yaml: &Path,
    log: &Path,
    control_port: u16,
) -> ProcessGuard {
    let log_file = fs::File::create(log).unwrap();
    let mut command = Command::new(binary);
    command
        .args(["--is-testnet", "-v", "info", "-i", "127.0.0.1", "-p"])
        .arg(control_port.to_string())
        .arg("-c")
        .arg(config_yaml)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    ProcessGuard::spawn("onionbalance", &mut command).unwrap_or_else(|err| {
        panic!("{err} (tests/run.sh installs Onionbalance 0.2.4 and sets RB_ONIONBALANCE)")
    })
}

/// Fetches through the master address as a new client each time.
struct Poller<'a> {
    net: &'a TorNetwork,
    count: usize,
    retried: usize,
}

impl<'a> Poller<'a> {
    fn new(net: &'a TorNetwork) -> Self {
        Poller {
            net,
            count: 0,
            retried: 0,
        }
    }

    /// One poll, then the wait until the next NEWNYM takes effect.
    fn poll(&mut self) {
        self.net.newnym().expect("NEWNYM");
        let url = format!("http://{MASTER_ONION}/");
        let isolation = format!("poll-{}", self.count);
        if let Err(first) = self.net.fetch(&url, &isolation, FETCH_TIMEOUT) {
            self.retried += 1;
            eprintln!("poll {} failed ({first}); trying again at once", self.count);
            if let Err(again) = self
                .net
                .fetch(&url, &format!("{isolation}-again"), FETCH_TIMEOUT)
            {
                panic!("a gap: the master address did not answer ({first}; again: {again})");
            }
        }
        self.count += 1;
        std::thread::sleep(POLL_EVERY);
    }
}
