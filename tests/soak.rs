//! A long soak on the private Tor network (issue 13 item 4): three nodes and three backends with
//! the default timing, a backend killed and restarted every few minutes, the publisher killed
//! every 20 minutes (and started again a minute later), and a fresh client fetching the master
//! page every half minute throughout.
//!
//! The suite runs a short pass (`RB_SOAK_SECS`, default 240 s: one backend cycle and one
//! publisher kill at half time). The long run, as recorded in BENCHMARKS.md ("Soak"):
//!
//! ```sh
//! RB_SOAK_SECS=7200 bash tests/run.sh --test soak -- --nocapture 2>&1 | grep soak:
//! ```
//!
//! Printed at the end (`soak: ...`): every node's memory at the start and the end, the uploads
//! each node made, the probes that failed and the longest time the master was unreachable for
//! a fresh client (from the first failed probe to the next that succeeded), and every warning
//! or error the nodes logged, counted by message. Asserted, so that the short pass can fail:
//! every node that was not killed on purpose is still running, no node panicked, and the
//! master serves a fresh client at the end.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use support::balancer::{free_udp_port, Balancer, LogWatcher};
use support::{NetworkOptions, TorNetwork};

/// Bootstrap, first health round and first upload on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a fresh client fetches the master page.
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// One fetch through a fresh client: descriptor, introduction, rendezvous, page.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const BACKENDS: [&str; 3] = ["alpha", "beta", "gamma"];
const NODES: usize = 3;

/// The schedule of faults, scaled to the run's length.
struct Schedule {
    length: Duration,
    /// A backend (in turn) is killed at the start of each cycle and restarted halfway.
    backend_cycle: Duration,
    /// The publisher is killed this often, and started again `restart_after` later.
    publisher_kill: Duration,
    restart_after: Duration,
}

impl Schedule {
    fn from_env() -> Schedule {
        let length = Duration::from_secs(
            std::env::var("RB_SOAK_SECS")
                .ok()
                .and_then(|secs| secs.parse().ok())
                .unwrap_or(240),
        );
        if length >= Duration::from_secs(40 * 60) {
            Schedule {
                length,
                backend_cycle: Duration::from_secs(4 * 60),
                publisher_kill: Duration::from_secs(20 * 60),
                restart_after: Duration::from_secs(60),
            }
        } else {
            Schedule {
                length,
                backend_cycle: length / 2,
                publisher_kill: length / 2,
                restart_after: Duration::from_secs(30),
            }
        }
    }
}

/// One fresh-client fetch of the master page.
struct Probe {
    at: Duration,
    ok: bool,
}

#[test]
fn three_nodes_stay_reachable_while_backends_and_publishers_are_killed() {
    let schedule = Schedule::from_env();
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    let root = net.data_dir().join("soak");
    let ports: Vec<u16> = (0..NODES).map(|_| free_udp_port()).collect();
    let endpoint = |port: u16| format!("127.0.0.1:{port}");

    let mut nodes: Vec<Balancer> = (0..NODES)
        .map(|i| Balancer::new(&root, &format!("n{i}")))
        .collect();
    let (master_onion, token) = nodes[0].init_first_node(&endpoint(ports[0]));
    for name in BACKENDS {
        net.add_backend(name, Some(&master_onion))
            .unwrap_or_else(|err| panic!("backend {name}: {err}"));
    }
    // The default timing throughout: only the backends and the private network's Arti table.
    let config_path = nodes[0].config_dir().join("config.toml");
    let mut config = fs::read_to_string(&config_path).unwrap();
    for name in BACKENDS {
        config.push_str(&format!(
            "\n[[backends]]\nname = \"{name}\"\naddress = \"{}\"\n",
            net.backend_onion(name)
        ));
    }
    config.push_str(&format!("\n{}", net.arti_toml()));
    fs::write(&config_path, &config).unwrap();
    nodes[0].start(&["run"]);
    LogWatcher::new(nodes[0].log_path()).wait_for("published descriptor", "", START_TIMEOUT);
    // One after the other, so that each is admitted and announced before the next.
    for (index, &port) in ports.iter().enumerate().skip(1) {
        let node = &mut nodes[index];
        node.start_joining(&token, port);
        node.wait_status("a standby that can publish", START_TIMEOUT, |status| {
            status["role"] == "standby" && status["can_publish"] == true
        });
    }

    let started = Instant::now();
    let url = format!("http://{master_onion}/");
    let mut probes: Vec<Probe> = Vec::new();
    let memory_at_start: Vec<u64> = nodes.iter().map(|node| node.memory_kib().0).collect();
    let mut killed_publishers = 0;
    let mut backend_kills = 0;
    // The node killed on purpose and when it is due to start again.
    let mut down: Option<(usize, Instant)> = None;
    let mut down_backend: Option<&str> = None;
    let mut next_backend_cycle = schedule.backend_cycle;
    let mut next_publisher_kill = schedule.publisher_kill;
    let mut next_probe = Duration::ZERO;
    while started.elapsed() < schedule.length {
        let elapsed = started.elapsed();
        if elapsed >= next_probe {
            next_probe = elapsed + PROBE_INTERVAL;
            probes.push(probe(&net, &url, elapsed, probes.len()));
        }
        if elapsed >= next_backend_cycle.saturating_sub(schedule.backend_cycle / 2)
            && down_backend.is_some()
        {
            let name = down_backend.take().expect("checked");
            eprintln!(
                "soak: {:.0} s: backend {name} restarted",
                elapsed.as_secs_f64()
            );
            net.restart_backend(name)
                .unwrap_or_else(|err| panic!("backend {name} restarts: {err}"));
        }
        if elapsed >= next_backend_cycle {
            next_backend_cycle += schedule.backend_cycle;
            let name = BACKENDS[backend_kills % BACKENDS.len()];
            backend_kills += 1;
            eprintln!(
                "soak: {:.0} s: backend {name} killed",
                elapsed.as_secs_f64()
            );
            net.stop_backend(name);
            down_backend = Some(name);
        }
        if let Some((index, due)) = down {
            if Instant::now() >= due {
                eprintln!(
                    "soak: {:.0} s: n{index} started again",
                    elapsed.as_secs_f64()
                );
                nodes[index].start(&["run"]);
                down = None;
            }
        }
        if elapsed >= next_publisher_kill && down.is_none() {
            next_publisher_kill += schedule.publisher_kill;
            match nodes
                .iter()
                .position(|node| node.status().is_some_and(|s| s["role"] == "publisher"))
            {
                Some(index) => {
                    eprintln!(
                        "soak: {:.0} s: publisher n{index} killed",
                        elapsed.as_secs_f64()
                    );
                    nodes[index].kill_hard();
                    killed_publishers += 1;
                    down = Some((index, Instant::now() + schedule.restart_after));
                }
                None => eprintln!("soak: {:.0} s: no publisher to kill", elapsed.as_secs_f64()),
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(name) = down_backend {
        net.restart_backend(name)
            .unwrap_or_else(|err| panic!("backend {name} restarts: {err}"));
    }
    if let Some((index, _)) = down {
        nodes[index].start(&["run"]);
    }

    // The end: one more fetch must work, whatever the faults left behind.
    let last = probe(&net, &url, started.elapsed(), probes.len());
    let unreachable = longest_unreachable(&probes);
    let failed = probes.iter().filter(|p| !p.ok).count();
    eprintln!(
        "soak: {:.0} s with {backend_kills} backend kills and {killed_publishers} publishers killed; \
         {failed} of {} fresh-client probes failed; longest unreachable {:.0} s",
        started.elapsed().as_secs_f64(),
        probes.len(),
        unreachable.as_secs_f64()
    );
    let mut logged: BTreeMap<String, usize> = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        let log = fs::read_to_string(node.log_path()).unwrap_or_default();
        let uploads = log.matches("published descriptor").count();
        let (rss, peak) = node.memory_kib();
        eprintln!(
            "soak: n{index}: {uploads} upload(s); RSS at the start {}, at the end {} (peak {} of the process running at the end)",
            mib(memory_at_start[index]),
            mib(rss),
            mib(peak)
        );
        for line in log.lines() {
            if let Some(message) = warning_or_error(line) {
                *logged.entry(format!("n{index} {message}")).or_default() += 1;
            }
        }
    }
    for (message, count) in &logged {
        eprintln!("soak: logged {count}x: {message}");
    }

    for (index, node) in nodes.iter_mut().enumerate() {
        let log = fs::read_to_string(node.log_path()).unwrap_or_default();
        assert!(!log.contains("panicked"), "n{index} panicked");
        assert!(node.stop_cleanly(), "n{index} was not running to the end");
    }
    assert!(last.ok, "a fresh client cannot reach the master at the end");
}

/// A fresh client (NEWNYM purges the C-tor client's descriptors and circuits) fetches `url`.
fn probe(net: &TorNetwork, url: &str, at: Duration, number: usize) -> Probe {
    let fetched = net
        .newnym()
        .and_then(|()| net.fetch(url, &format!("soak-{number}"), FETCH_TIMEOUT));
    if let Err(err) = &fetched {
        eprintln!("soak: {:.0} s: probe failed: {err}", at.as_secs_f64());
    }
    Probe {
        at,
        ok: fetched.is_ok(),
    }
}

/// The longest span from a failed probe to the next that succeeded (to the last probe if
/// none did).
fn longest_unreachable(probes: &[Probe]) -> Duration {
    let mut longest = Duration::ZERO;
    let mut failing_since: Option<Duration> = None;
    for probe in probes {
        match (probe.ok, failing_since) {
            (false, None) => failing_since = Some(probe.at),
            (true, Some(since)) => {
                longest = longest.max(probe.at - since);
                failing_since = None;
            }
            _ => {}
        }
    }
    if let (Some(since), Some(last)) = (failing_since, probes.last()) {
        longest = longest.max(last.at - since);
    }
    longest
}

/// A node's WARN or ERROR line without its timestamp, numbers masked so that repeats of one
/// message count together.
fn warning_or_error(line: &str) -> Option<String> {
    let at = line.find(" WARN ").or_else(|| line.find(" ERROR "))?;
    let message: String = line[at..]
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(200)
        .collect();
    Some(message.trim().to_owned())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
