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
//!    configuration and key; it starts while Onionbalance still runs. Its first upload is
//!    accepted by the HSDirs although Onionbalance's revision counters follow another key: it
//!    reads what the HSDirs hold and publishes above it. (An upload of Onionbalance's between
//!    that read and the balancer's upload gets the latter refused where it landed first; the
//!    next round reads it back. The count is printed.)
//! 4. Onionbalance is stopped; the balancer alone keeps the address up, no upload refused.
//!
//! Every poll must succeed (one immediate retry allowed, as the harness allows elsewhere for
//! a client that asked an HSDir during a consensus change).
//!
//! Eight backends (24 introduction points on the network's 9 relays, more than one
//! descriptor's 20): the HSDirs hold distinct descriptors. Every HSDir's copy verifies and
//! decrypts with Arti and with stem, lists at most 20 introduction points and at most one per
//! relay (a C-tor client reaches only the first one listed on a relay); together the copies
//! list every backend; a C-tor client with fresh circuits, given each distinct
//! descriptor in turn, reaches every backend.
//!
//! Fresh introduction points with the default timing: a node without a `[timing]` table
//! balances two of them; one backend's tor restarts with new introduction points, and the
//! master descriptor on every HSDir lists them within the descriptor refresh (60 s) and an
//! upload, not at the next health round (300 s).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustbalance::descriptor::signer::{intro_point_id, intro_point_relay};
use rustbalance::health::fetch::VerifiedDescriptor;
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
/// A rotated backend's descriptor reaches the master descriptor within the default
/// `descriptor_refresh_secs` (60) and an upload; the wait is generous for a busy machine but
/// ends well before the next default health round (300 s) could be what found it.
const ROTATION_FOLLOWED_TIMEOUT: Duration = Duration::from_secs(150);
/// Fetches through one descriptor at most: with at most 9 introduction points listed (one per
/// relay), a listed backend is missed by 150 fetches with probability (8/9)^150 < 10^-7.
const MANY_FETCHES: usize = 150;

#[test]
fn further_than_any_peer() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    onionbalance_is_replaced_without_a_gap(&mut net);
    let seed = eight_backends_are_all_reached(&mut net);
    rotated_introduction_points_follow_with_the_defaults(&mut net, &seed);
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
    polls.poll();

    // 4. Onionbalance stopped: the balancer alone. While both ran, an upload of Onionbalance's
    // between the balancer's read-back and its upload (its counters run ahead of the clock)
    // makes HSDirs refuse that one upload, harmlessly (both list the same backends; the next
    // round reads the newer revision back); once Onionbalance stopped, none may be refused.
    let beside = fs::read_to_string(node.log_path()).unwrap();
    ob.stop();
    let alone = Instant::now();
    while alone.elapsed() < WATCH_ALONE {
        polls.poll();
    }
    let whole = fs::read_to_string(node.log_path()).unwrap();
    eprintln!(
        "measured: {} upload(s) to an HSDir refused while Onionbalance still ran beside the balancer",
        beside.matches("HTTP 400").count()
    );
    assert!(
        !whole[beside.len()..].contains("HTTP 400"),
        "an HSDir refused a revision counter of the balancer's after Onionbalance stopped:\n{whole}"
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
/// Returns the master key's seed (the backends are instances of that master).
fn eight_backends_are_all_reached(net: &mut TorNetwork) -> [u8; 32] {
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
    // The first upload may come from a health round that had not seen every backend yet.
    let upload = log.wait_for(
        "published descriptor",
        "distinct descriptors",
        FIRST_PUBLISH_TIMEOUT,
    );
    eprintln!("first upload of distinct descriptors: {upload}");

    // Every HSDir's copy verifies and decrypts with Arti, lists at most 20 introduction points
    // and at most one per relay; together they list every backend.
    let observer = Observer::start(&config, &net.data_dir().join("many-observer"));
    let backend_ips = observer.intro_points_of(net, &names);
    let backends_listed = |copy: &VerifiedDescriptor| -> BTreeSet<String> {
        let ids: BTreeSet<String> = copy.intro_points.iter().map(intro_point_id).collect();
        backend_ips
            .iter()
            .filter(|(_, own)| !own.is_disjoint(&ids))
            .map(|(name, _)| name.clone())
            .collect()
    };
    let union_of = |copies: &[VerifiedDescriptor]| -> BTreeSet<String> {
        copies.iter().flat_map(&backends_listed).collect()
    };
    let copies =
        observer.copies_on_every_hsdir(&master, |copies| union_of(copies).len() == MANY_BACKENDS);
    let mut distinct: BTreeMap<BTreeSet<String>, Vec<&VerifiedDescriptor>> = BTreeMap::new();
    for copy in &copies {
        let relays: Vec<String> = copy.intro_points.iter().map(intro_point_relay).collect();
        let unique: BTreeSet<&String> = relays.iter().collect();
        assert!(
            relays.len() <= 20 && unique.len() == relays.len(),
            "{}'s copy lists {} introduction points on {} relays",
            copy.hsdir,
            relays.len(),
            unique.len()
        );
        let ids = copy.intro_points.iter().map(intro_point_id).collect();
        distinct.entry(ids).or_default().push(copy);
    }
    // They may all be alike: when the backends' relays allow only one choice of one
    // introduction point per relay, every merge makes it (seen here: 24 introduction points
    // on 8 relays, one way to give each backend one); the unit tests show them differing
    // where the relays allow.
    let union = union_of(&copies);
    assert_eq!(
        union.len(),
        MANY_BACKENDS,
        "the descriptors on the {} HSDirs list only {union:?}",
        copies.len()
    );

    // Every copy decrypts with stem too (Onionbalance's own library), to the same number of
    // introduction points.
    let stem_counts = decrypt_with_stem(
        &master_onion,
        &copies.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
        &net.data_dir().join("stem"),
    );
    let arti_counts: Vec<usize> = copies.iter().map(|c| c.intro_points.len()).collect();
    assert_eq!(stem_counts, arti_counts, "stem and Arti disagree");

    // C-tor clients with fresh circuits reach every backend: each distinct descriptor in turn
    // is loaded into the client (HSFETCH from an HSDir holding it), then pages are fetched
    // through it until every backend it lists answered.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fetches = 0;
    for (index, holders) in distinct.values().enumerate() {
        let listed = backends_listed(holders[0]);
        let expected: BTreeSet<String> = listed.iter().map(|name| net.backend_page(name)).collect();
        if expected.iter().all(|page| seen.contains_key(page)) {
            continue;
        }
        let hsdir = holders[0]
            .hsdir
            .as_str()
            .trim_start_matches('$')
            .to_uppercase();
        net.hsfetch_from(&master_onion, &[hsdir], FETCH_TIMEOUT)
            .unwrap_or_else(|err| panic!("loading descriptor {index} into the client: {err}"));
        let mut seen_here = BTreeSet::new();
        for attempt in 0..MANY_FETCHES {
            if expected.is_subset(&seen_here) {
                break;
            }
            let page = net
                .fetch(
                    &format!("http://{master_onion}/"),
                    &format!("many-{index}-{attempt}"),
                    FETCH_TIMEOUT,
                )
                .unwrap_or_else(|err| panic!("fetch {fetches} through the master address: {err}"));
            seen_here.insert(page.clone());
            *seen.entry(page).or_default() += 1;
            fetches += 1;
        }
    }
    eprintln!(
        "measured: {} of {MANY_BACKENDS} backends reached in {fetches} fetches with fresh circuits; {} HSDirs hold {} distinct descriptors listing {:?} introduction points: {seen:?}",
        seen.len(),
        copies.len(),
        distinct.len(),
        distinct.keys().map(BTreeSet::len).collect::<Vec<_>>()
    );
    let all_pages: BTreeSet<String> = names.iter().map(|name| net.backend_page(name)).collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), all_pages);
    assert!(node.stop_cleanly());
    seed
}

/// A backend that rotates its introduction points (here: its tor restarted, which picks new
/// ones, as an introduction flood makes C tor do) is followed by the master descriptor with
/// the default timing: within `descriptor_refresh_secs` (60) and an upload, long before the
/// next health round (300 s).
fn rotated_introduction_points_follow_with_the_defaults(net: &mut TorNetwork, seed: &[u8; 32]) {
    let master = MasterKey::from_seed(seed).onion_address();
    let names = ["many0", "many1"];
    let mut node = Balancer::new(net.data_dir(), "defaults");
    let config = node.init_on_network(net, seed, &names, "");
    assert!(!config.contains("[timing]"), "the defaults: {config}");
    node.start(&["run"]);
    let mut log = LogWatcher::new(node.log_path());
    log.wait_for(
        "published descriptor",
        "from 2 backend(s)",
        FIRST_PUBLISH_TIMEOUT,
    );
    let observer = Observer::start(&config, &net.data_dir().join("defaults-observer"));
    let old = observer
        .intro_points_of(net, &["many1"])
        .remove("many1")
        .unwrap();

    let restarted = Instant::now();
    net.restart_backend("many1").expect("restart many1");
    let uploaded_after = restarted.elapsed();
    let new = observer
        .intro_points_of(net, &["many1"])
        .remove("many1")
        .unwrap();
    assert!(
        new.is_disjoint(&old),
        "many1 kept introduction points: {old:?} {new:?}"
    );
    log.wait_for(
        "backend many1: new descriptor between health rounds",
        "",
        ROTATION_FOLLOWED_TIMEOUT,
    );
    let published = log.wait_for(
        "published descriptor (introduction points changed)",
        "from 2 backend(s)",
        FIRST_PUBLISH_TIMEOUT,
    );
    let followed_after = restarted.elapsed();
    eprintln!(
        "measured: many1 rotated its introduction points; its new descriptor uploaded {:.1} s after the restart, in the master descriptor {:.1} s after that (default timing): {published}",
        uploaded_after.as_secs_f64(),
        (followed_after - uploaded_after).as_secs_f64()
    );
    let listed = observer.copies_on_every_hsdir(&master, |copies| {
        copies.iter().all(|copy| {
            copy.intro_points
                .iter()
                .any(|ip| new.contains(&intro_point_id(ip)))
        })
    });
    for copy in &listed {
        let ids: BTreeSet<String> = copy.intro_points.iter().map(intro_point_id).collect();
        assert!(
            !ids.is_disjoint(&new) && ids.is_disjoint(&old),
            "{} holds a master descriptor without many1's new introduction points",
            copy.hsdir
        );
    }
    assert!(node.stop_cleanly());
}

/// Decrypt each descriptor (outer document as an HSDir serves it) with stem, as Onionbalance
/// does; the number of introduction points of each. Panics if one does not decrypt.
fn decrypt_with_stem(onion: &str, descriptors: &[&str], dir: &Path) -> Vec<usize> {
    fs::create_dir_all(dir).unwrap();
    let script = dir.join("decrypt.py");
    fs::write(
        &script,
        "import sys\n\
         from stem.descriptor.hidden_service import HiddenServiceDescriptorV3\n\
         address = sys.argv[1]\n\
         for path in sys.argv[2:]:\n\
         \x20   with open(path, 'rb') as f:\n\
         \x20       outer = HiddenServiceDescriptorV3(f.read(), validate=True)\n\
         \x20   print(len(outer.decrypt(address).introduction_points))\n",
    )
    .unwrap();
    let mut paths = Vec::new();
    for (index, text) in descriptors.iter().enumerate() {
        let path = dir.join(format!("copy{index}.txt"));
        fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let output = Command::new(stem_python())
        .arg(&script)
        .arg(onion.trim_end_matches(".onion"))
        .args(&paths)
        .output()
        .expect("running python with stem");
    assert!(
        output.status.success(),
        "stem could not decrypt a copy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().parse().expect("a count from stem"))
        .collect()
}

/// The Python beside Onionbalance (its virtualenv has stem), or the system's.
fn stem_python() -> std::path::PathBuf {
    match std::env::var("RB_ONIONBALANCE") {
        Ok(onionbalance) => Path::new(&onionbalance).with_file_name("python3"),
        Err(_) => "python3".into(),
    }
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
