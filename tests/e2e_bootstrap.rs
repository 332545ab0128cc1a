//! End to end, on a private Tor network: `rustbalance run`, set up by `init` and pointed at
//! the network through config.toml's `[arti]` table, bootstraps its embedded Arti client on the network, reports the consensus it
//! holds, and stops cleanly on SIGTERM; meanwhile the C-tor client reaches both backends.

mod support;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use support::balancer::{Balancer, LogWatcher};
use support::{NetworkOptions, TorNetwork};

/// Generous: a busy 2-core CI machine runs a debug build of Arti here.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(90);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn run_bootstraps_on_the_private_network_and_reports_its_consensus() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    net.add_backend("alpha", None).expect("backend alpha");
    net.add_backend("beta", None).expect("backend beta");

    // A node set up by `init` with an imported key (a 32-byte seed is one of the formats it
    // reads); config.toml then gets the private network's [arti] table.
    let mut balancer = Balancer::new(net.data_dir(), "rustbalance");
    balancer.init_on_network(&net, &rand::random(), &["alpha", "beta"], "");
    let state_dir = balancer.config_dir().parent().unwrap().join("state");

    // Started the way systemd starts it: READY=1 must come once Tor has bootstrapped.
    let notify_path = net.data_dir().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    balancer.set_env("NOTIFY_SOCKET", notify_path.to_str().unwrap());
    balancer.start(&["run"]);
    let mut log = LogWatcher::new(balancer.log_path());
    let consensus_line = log.wait_for("consensus: valid-after", "", BOOTSTRAP_TIMEOUT);
    let relays_listed = NetworkOptions::default().relays + 3; // the relays and the 3 authorities
    assert!(
        consensus_line.contains(&format!("{relays_listed} relays")),
        "consensus should list {relays_listed} relays: {consensus_line}"
    );
    let mut buf = [0u8; 256];
    let ready = (0..10).any(|_| {
        systemd
            .recv(&mut buf)
            .is_ok_and(|n| String::from_utf8_lossy(&buf[..n]).contains("READY=1"))
    });
    assert!(ready, "no READY=1 after the bootstrap");
    let hsdirs = number_before(&consensus_line, " HSDirs").expect("HSDir count in the log line");
    assert!(hsdirs >= 6, "too few HSDirs reported: {consensus_line}");
    assert!(
        state_dir.join("arti/cache").is_dir(),
        "Arti's cache should default to the state directory"
    );

    for backend in ["alpha", "beta"] {
        let url = format!("http://{}/", net.backend_onion(backend));
        let body = net
            .fetch(&url, &format!("e2e-{backend}"), FETCH_TIMEOUT)
            .unwrap_or_else(|err| panic!("fetching {backend}: {err}"));
        assert_eq!(body, net.backend_page(backend));
    }

    assert!(
        balancer.stop_cleanly(),
        "rustbalance did not exit with status 0 after SIGTERM"
    );
    let log = fs::read_to_string(balancer.log_path()).unwrap();
    assert!(log.contains("SIGTERM received, shutting down"), "{log}");
    assert!(!log.contains("ERROR"), "errors logged:\n{log}");
}

/// The integer just before `suffix` in `line` (`"..., 9 HSDirs"` → 9).
fn number_before(line: &str, suffix: &str) -> Option<usize> {
    let head = &line[..line.find(suffix)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
