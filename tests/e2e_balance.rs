//! End to end, on a private Tor network: RustBalance balances for real.
//!
//! Two C-tor backends run as Onionbalance instances of a master key; `rustbalance run`
//! publishes the master descriptor through its embedded Arti client. Then, as a user would
//! see it:
//! 1. the C-tor client fetches `http://<master>.onion/` over fresh circuits and gets both
//!    backends' pages;
//! 2. one backend's tor is stopped: within one health interval plus one publish its
//!    introduction points are gone from the descriptor on the HSDirs (fetched back through
//!    Arti and decrypted here), and the client still gets the other page; restarted, it is
//!    re-included;
//! 3. every backend stopped: the balancer raises its alert and uploads nothing more.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustbalance::config::Config;
use rustbalance::keys::MasterKey;
use rustbalance::onion_address::OnionAddress;
use rustbalance::publish::intro_point_id;
use rustbalance::tor::EmbeddedTor;
use support::process::ProcessGuard;
use support::{NetworkOptions, TorNetwork};

/// Shortened `[timing]` so the scenario runs in minutes.
const HEALTH_INTERVAL_SECS: u64 = 10;
const PUBLISH_INTERVAL_SECS: u64 = 60;
/// Generous bounds for a busy 2-core CI machine; the figures that matter are measured by the
/// benchmarks, not asserted here.
const FIRST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT_SECS: u64 = 20;
/// Reachability through the master address: rounds of fetches, each round as a new client.
const REACH_ROUNDS: usize = 3;
const FETCHES_PER_ROUND: usize = 8;
/// One health interval, one probe timeout and one publish (with upload retries).
const LOSS_TIMEOUT: Duration = Duration::from_secs(HEALTH_INTERVAL_SECS + PROBE_TIMEOUT_SECS + 60);

#[test]
fn balances_over_backends_drops_dead_ones_and_stops_when_all_are_dead() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    let node_dir = net.data_dir().join("rustbalance");
    let config_dir = node_dir.join("etc");
    fs::create_dir_all(&config_dir).unwrap();

    // A master key as a 32-byte seed file, one of the formats the balancer reads.
    let seed: [u8; 32] = rand::random();
    fs::write(config_dir.join("master.key"), seed).unwrap();
    let master = MasterKey::from_seed(&seed).onion_address();
    let master_onion = master.to_string();

    net.add_backend("alpha", Some(&master_onion))
        .expect("backend alpha");
    net.add_backend("beta", Some(&master_onion))
        .expect("backend beta");
    let config_text = format!(
        "[node]\nid = \"node-e2e\"\npriority = 1\n\n\
         [[backends]]\nname = \"alpha\"\naddress = \"{}\"\n\n\
         [[backends]]\nname = \"beta\"\naddress = \"{}\"\n\n\
         [timing]\nhealth_interval_secs = {HEALTH_INTERVAL_SECS}\npublish_interval_secs = {PUBLISH_INTERVAL_SECS}\n\n\
         [health.probe]\npath = \"/\"\ntimeout_secs = {PROBE_TIMEOUT_SECS}\n\n{}",
        net.backend_onion("alpha"),
        net.backend_onion("beta"),
        net.arti_toml()
    );
    fs::write(config_dir.join("config.toml"), &config_text).unwrap();

    let log_path = node_dir.join("rustbalance.log");
    let started = Instant::now();
    let balancer = ProcessGuard::spawn(
        "rustbalance",
        Command::new(env!("CARGO_BIN_EXE_rustbalance"))
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--state-dir")
            .arg(node_dir.join("state"))
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap()),
    )
    .expect("start rustbalance");
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
    let observer = Observer::start(&config_text, &node_dir.join("observer"));
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

    // 2. Backend loss and recovery.
    net.stop_backend("beta");
    let stopped = Instant::now();
    log.wait_for("backend beta: healthy -> dead", "", LOSS_TIMEOUT);
    log.wait_for(
        "published descriptor (introduction points changed)",
        "from 1 backend(s): alpha",
        LOSS_TIMEOUT,
    );
    eprintln!(
        "measured: beta left the descriptor {:.1} s after its tor stopped (health interval {HEALTH_INTERVAL_SECS} s)",
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

    eprintln!("measured: balancer memory {}", memory_of(balancer.pid()));

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

/// Fetch through the master address over fresh circuits until every page in `expected` has
/// been seen: up to [`REACH_ROUNDS`] rounds of [`FETCHES_PER_ROUND`] fetches, as a new client
/// (NEWNYM) each round. A C-tor client that once failed at a backend's introduction point
/// avoids it for a while, so one unlucky round must not hide a reachable backend; every round
/// is printed, so a CI log shows what a failure looked like. Returns all pages seen.
fn fetch_until_seen(
    net: &TorNetwork,
    master_onion: &str,
    expected: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for round in 0..REACH_ROUNDS {
        if round > 0 {
            net.newnym().expect("NEWNYM");
            // Tor delays a NEWNYM that follows another within 10 s.
            std::thread::sleep(Duration::from_secs(10));
        }
        let pages = fetch_pages(
            net,
            master_onion,
            FETCHES_PER_ROUND,
            &format!("reach{round}"),
        );
        eprintln!("reach round {round}: {pages:?}");
        seen.extend(pages);
        if expected.is_subset(&seen) {
            break;
        }
    }
    seen
}

/// The distinct page bodies seen over `count` fetches, each over fresh circuits.
fn fetch_pages(net: &TorNetwork, master_onion: &str, count: usize, tag: &str) -> BTreeSet<String> {
    (0..count)
        .map(|i| {
            net.fetch(
                &format!("http://{master_onion}/"),
                &format!("{tag}-{i}"),
                FETCH_TIMEOUT,
            )
            .unwrap_or_else(|err| panic!("fetch {i} through the master address: {err}"))
        })
        .collect()
}

/// Reads the balancer's log as it grows; each wait starts where the previous one matched.
struct LogWatcher {
    path: PathBuf,
    offset: usize,
}

impl LogWatcher {
    fn new(path: &Path) -> Self {
        LogWatcher {
            path: path.to_owned(),
            offset: 0,
        }
    }

    fn position(&self) -> usize {
        self.offset
    }

    fn text_since(&self, offset: usize) -> String {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        text.get(offset..).unwrap_or_default().to_owned()
    }

    /// Wait for a line containing both `first` and `second`; returns it.
    fn wait_for(&mut self, first: &str, second: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.path).unwrap_or_default();
            let mut line_start = self.offset;
            for line in text
                .get(self.offset..)
                .unwrap_or_default()
                .split_inclusive('\n')
            {
                line_start += line.len();
                if line.ends_with('\n') && line.contains(first) && line.contains(second) {
                    self.offset = line_start;
                    return line.trim_end().to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {first:?} and {second:?} within {timeout:?}; log since the last match:\n{}",
                text.get(self.offset..).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// An embedded Arti client of our own library, used as the test's eyes on the HSDirs.
struct Observer {
    runtime: tokio::runtime::Runtime,
    tor: EmbeddedTor,
}

impl Observer {
    fn start(config_text: &str, state_dir: &Path) -> Self {
        let config = Config::parse(
            config_text,
            Path::new("config.toml"),
            Path::new("."),
            state_dir,
        )
        .expect("the test's config parses");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let tor = runtime
            .block_on(EmbeddedTor::bootstrap(&config.arti))
            .expect("observer bootstraps");
        Observer { runtime, tor }
    }

    /// Which of `backends` have introduction points in the master descriptor the HSDirs hold
    /// now (fetched, verified and decrypted like a client does).
    fn backends_in_master_descriptor(
        &self,
        master: &OnionAddress,
        net: &TorNetwork,
        backends: &[&str],
    ) -> Vec<String> {
        let fetch = |address: &OnionAddress| {
            self.runtime
                .block_on(self.tor.fetch_descriptor(address))
                .unwrap_or_else(|err| panic!("fetching {address}: {err}"))
        };
        let listed: BTreeSet<String> = fetch(master)
            .intro_points
            .iter()
            .map(intro_point_id)
            .collect();
        backends
            .iter()
            .filter(|name| {
                let address: OnionAddress = net.backend_onion(name).parse().unwrap();
                fetch(&address)
                    .intro_points
                    .iter()
                    .any(|ip| listed.contains(&intro_point_id(ip)))
            })
            .map(|name| name.to_string())
            .collect()
    }
}
