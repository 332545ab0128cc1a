//! The master address as clients see it: pages fetched through it by the C-tor client, and
//! the descriptor the HSDirs hold for it, read back by an Arti client of our own library.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rustbalance::config::Config;
use rustbalance::descriptor::build::MasterIdentity;
use rustbalance::keys::MasterKey;
use rustbalance::onion_address::OnionAddress;
use rustbalance::publish::intro_point_id;
use rustbalance::tor::EmbeddedTor;

use super::TorNetwork;

/// Reachability through the master address: rounds of fetches, each round as a new client.
const REACH_ROUNDS: usize = 3;
const FETCHES_PER_ROUND: usize = 8;
/// One fetch through the C-tor client, rendezvous included, on a busy 2-core machine.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Fetch through the master address over fresh circuits until every page in `expected` has
/// been seen: up to [`REACH_ROUNDS`] rounds of [`FETCHES_PER_ROUND`] fetches, as a new client
/// (NEWNYM) each round. A C-tor client that once failed at a backend's introduction point
/// avoids it for a while, so one unlucky round must not hide a reachable backend; every round
/// is printed, so a CI log shows what a failure looked like. Returns all pages seen.
pub fn fetch_until_seen(
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
pub fn fetch_pages(
    net: &TorNetwork,
    master_onion: &str,
    count: usize,
    tag: &str,
) -> BTreeSet<String> {
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

/// An embedded Arti client of our own library, used as the test's eyes on the HSDirs.
pub struct Observer {
    runtime: tokio::runtime::Runtime,
    tor: EmbeddedTor,
}

impl Observer {
    pub fn start(config_text: &str, state_dir: &Path) -> Self {
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

    /// The revision counter of the master descriptor the HSDirs hold now: it grows with every
    /// upload, whichever node made it (the counter is derived from the time and the key).
    pub fn master_revision(&self, master: &OnionAddress) -> u64 {
        self.runtime
            .block_on(self.tor.fetch_descriptor(master))
            .unwrap_or_else(|err| panic!("fetching {master}: {err}"))
            .revision_counter
    }

    /// The master key's blinded signing keys for every time period the network publishes for
    /// now (secret bytes), for the leak audit.
    pub fn blinded_secrets(&self, master: &MasterKey) -> Vec<Vec<u8>> {
        let identity = MasterIdentity::from_expanded_secret(master.expanded_secret())
            .expect("a usable master key");
        let targets = self
            .runtime
            .block_on(self.tor.publish_targets())
            .expect("publish targets");
        targets
            .iter()
            .map(|target| {
                let blinded = identity.blind(target.time_period()).expect("blinding");
                blinded.secret_bytes_for_leak_tests().to_vec()
            })
            .collect()
    }

    /// Which of `backends` have introduction points in the master descriptor the HSDirs hold
    /// now (fetched, verified and decrypted like a client does).
    pub fn backends_in_master_descriptor(
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
