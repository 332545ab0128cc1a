//! The master address as clients see it: pages fetched through it by the C-tor client, and
//! the descriptor the HSDirs hold for it, read back by an Arti client of our own library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rustbalance::config::Config;
use rustbalance::descriptor::build::MasterIdentity;
use rustbalance::descriptor::signer::intro_point_id;
use rustbalance::health::fetch::{fetch_copies, fetch_for_period, VerifiedDescriptor};
use rustbalance::keys::onion_address::OnionAddress;
use rustbalance::keys::MasterKey;
use rustbalance::tor::{ArtiSettings, EmbeddedTor, TorNetwork as _};

use super::TorNetwork;

/// Reachability through the master address: rounds of fetches, each round as a new client.
const REACH_ROUNDS: usize = 3;
const FETCHES_PER_ROUND: usize = 8;
/// One fetch through the C-tor client, rendezvous included, on a busy 2-core machine.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The wait before a failed fetch is tried again: two consensus intervals of the test network.
const FETCH_RETRY_AFTER: Duration = Duration::from_secs(40);
/// How long the master descriptor may disagree with the backends' after a change of time
/// period: a health round and a publish of the slowest test's timing, with room to spare.
const LISTING_SETTLES: Duration = Duration::from_secs(60);
/// How long the publisher may take to upload for a period this client's newer consensus
/// already names (it uploads within seconds of its own consensus naming it).
const NEW_PERIOD_SETTLES: Duration = Duration::from_secs(30);

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
            let url = format!("http://{master_onion}/");
            let isolation = format!("{tag}-{i}");
            net.fetch(&url, &isolation, FETCH_TIMEOUT)
                .or_else(|first| {
                    // Right after a new consensus the C-tor client may ask HSDirs that the
                    // publisher, a consensus behind, has not uploaded to yet (its next round
                    // does): a person would try again, and so does this client, once.
                    eprintln!(
                        "fetch {i} through the master address failed, retrying in {} s: {first}",
                        FETCH_RETRY_AFTER.as_secs()
                    );
                    std::thread::sleep(FETCH_RETRY_AFTER);
                    net.fetch(&url, &format!("{isolation}-again"), FETCH_TIMEOUT)
                })
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
        let arti = ArtiSettings::from_config(&config).expect("the test's [arti] table resolves");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let tor = runtime
            .block_on(EmbeddedTor::bootstrap(&arti, |_| {}))
            .expect("observer bootstraps");
        Observer { runtime, tor }
    }

    /// The revision counter of the master descriptor the HSDirs hold now, keyed by time
    /// period: the period clients use now (which must be there), and the other period the
    /// network publishes for, if any and if it is uploaded yet. A counter grows with every
    /// upload for its period, whichever node made it (it is derived from the time and the
    /// key); counters of different periods count from different starts, so only the same
    /// period's can be compared.
    ///
    /// At a period boundary the current period's copy may be missing for a moment (see
    /// [`until_the_period_settles`](Self::until_the_period_settles)).
    pub fn master_revisions(&self, master: &OnionAddress) -> BTreeMap<u64, u64> {
        self.until_the_period_settles(|| {
            self.runtime.block_on(async {
                let current = self.tor.current_period().await.expect("current period");
                let periods = self.tor.publish_periods().await.expect("publish periods");
                let mut revisions = BTreeMap::new();
                for period in &periods {
                    let number = period.time_period.interval_num();
                    match fetch_for_period(&self.tor, master, period).await {
                        Ok(descriptor) => {
                            revisions.insert(number, descriptor.revision_counter);
                        }
                        Err(err) if period.time_period == current.time_period => {
                            return Err(format!(
                                "fetching {master} for the current period {number}: {err}"
                            ));
                        }
                        Err(err) => eprintln!("master descriptor for period {number}: {err}"),
                    }
                }
                Ok(revisions)
            })
        })
    }

    /// `attempt`'s value, asked again for up to [`NEW_PERIOD_SETTLES`] while it fails. On a
    /// private network younger than a shared-random run there is no shared random value, so a
    /// service can upload for a period only once its own consensus names it (on the public
    /// network it uploads for the next period half a period early): at a period boundary
    /// this client's consensus may name a period the publisher, whose consensus is a few
    /// seconds older, has not uploaded for yet, and every HSDir asked answers 404.
    fn until_the_period_settles<T>(&self, mut attempt: impl FnMut() -> Result<T, String>) -> T {
        let deadline = std::time::Instant::now() + NEW_PERIOD_SETTLES;
        loop {
            match attempt() {
                Ok(value) => return value,
                Err(failure) if std::time::Instant::now() >= deadline => panic!("{failure}"),
                Err(failure) => {
                    eprintln!("{failure}; asking again");
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
    }

    /// The time period clients use now.
    pub fn current_period(&self) -> tor_hscrypto::time::TimePeriod {
        self.runtime
            .block_on(self.tor.current_period())
            .expect("current period")
            .time_period
    }

    /// The master key's blinded signing keys for every time period the network publishes for
    /// now (secret bytes), for the leak audit.
    pub fn blinded_secrets(&self, master: &MasterKey) -> Vec<Vec<u8>> {
        let identity = MasterIdentity::from_expanded_secret(master.expanded_secret())
            .expect("a usable master key");
        let periods = self
            .runtime
            .block_on(self.tor.publish_periods())
            .expect("publish periods");
        periods
            .iter()
            .map(|period| {
                let blinded = identity.blind(period.time_period).expect("blinding");
                blinded.secret_bytes_for_leak_tests().to_vec()
            })
            .collect()
    }

    /// Which of `backends` the master descriptor on the HSDirs lists: read until it lists
    /// exactly `expected`, or for [`LISTING_SETTLES`] (then the last reading). One reading can
    /// disagree for a moment: a C-tor service keeps one set of introduction points per time
    /// period, so when the period changes between the balancer's health round and this
    /// reading, the backends' new descriptors are compared with a master descriptor merged
    /// from their previous ones, until the next round.
    pub fn backends_listed(
        &self,
        master: &OnionAddress,
        net: &TorNetwork,
        backends: &[&str],
        expected: &[&str],
    ) -> Vec<String> {
        self.backends_listed_until(master, net, backends, |listed| listed == expected)
    }

    /// Like [`backends_listed`](Self::backends_listed), until `done` holds for the list.
    fn backends_listed_until(
        &self,
        master: &OnionAddress,
        net: &TorNetwork,
        backends: &[&str],
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = std::time::Instant::now() + LISTING_SETTLES;
        loop {
            let listed = self.backends_in_master_descriptor(master, net, backends);
            if done(&listed) || std::time::Instant::now() >= deadline {
                return listed;
            }
            eprintln!(
                "the master descriptor lists {listed:?}, not yet what is expected: reading again"
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// Which of `backends` have introduction points in the master descriptor the HSDirs hold
    /// now (fetched, verified and decrypted like a client does).
    fn backends_in_master_descriptor(
        &self,
        master: &OnionAddress,
        net: &TorNetwork,
        backends: &[&str],
    ) -> Vec<String> {
        let listed: BTreeSet<String> = self
            .fetch(master)
            .intro_points
            .iter()
            .map(intro_point_id)
            .collect();
        self.intro_points_of(net, backends)
            .into_iter()
            .filter(|(_, ids)| !ids.is_disjoint(&listed))
            .map(|(name, _)| name)
            .collect()
    }

    /// The identities of every backend's introduction points in its own descriptor now.
    pub fn intro_points_of(
        &self,
        net: &TorNetwork,
        backends: &[&str],
    ) -> BTreeMap<String, BTreeSet<String>> {
        backends
            .iter()
            .map(|name| {
                let address: OnionAddress = net.backend_onion(name).parse().unwrap();
                let ids = self
                    .fetch(&address)
                    .intro_points
                    .iter()
                    .map(intro_point_id)
                    .collect();
                (name.to_string(), ids)
            })
            .collect()
    }

    /// `address`'s descriptor for the current period from every HSDir a service stores it on,
    /// each verified and decrypted by Arti as a client does; read again (for up to
    /// [`LISTING_SETTLES`]) until every one of them holds a copy that verifies, and `done`
    /// holds for the copies.
    pub fn copies_on_every_hsdir(
        &self,
        address: &OnionAddress,
        done: impl Fn(&[VerifiedDescriptor]) -> bool,
    ) -> Vec<VerifiedDescriptor> {
        let deadline = std::time::Instant::now() + LISTING_SETTLES;
        loop {
            let copies = self.runtime.block_on(async {
                let period = self.tor.current_period().await.expect("current period");
                fetch_copies(&self.tor, address, &period)
                    .await
                    .expect("the HSDirs of the current period")
            });
            let (verified, failed): (Vec<_>, Vec<_>) =
                copies.into_iter().partition(|copy| copy.copy.is_ok());
            let verified: Vec<VerifiedDescriptor> = verified
                .into_iter()
                .filter_map(|copy| copy.copy.ok())
                .collect();
            let complete = failed.is_empty() && !verified.is_empty();
            if complete && done(&verified) {
                return verified;
            }
            let failures: Vec<String> = failed
                .iter()
                .map(|copy| format!("{}: {:?}", copy.hsdir, copy.copy.as_ref().err()))
                .collect();
            if std::time::Instant::now() >= deadline {
                assert!(
                    complete,
                    "copies of {address} that do not verify: {failures:?}"
                );
                return verified;
            }
            eprintln!("copies of {address} not yet as expected ({failures:?}): reading again");
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// `address`'s descriptor for the current period, fetched, verified and decrypted as a
    /// client does (asked again for a moment at a period boundary).
    fn fetch(&self, address: &OnionAddress) -> VerifiedDescriptor {
        self.until_the_period_settles(|| {
            self.runtime.block_on(async {
                let period = self.tor.current_period().await.expect("current period");
                fetch_for_period(&self.tor, address, &period)
                    .await
                    .map_err(|err| {
                        let number = period.time_period.interval_num();
                        format!("fetching {address} for the current period {number}: {err}")
                    })
            })
        })
    }
}
