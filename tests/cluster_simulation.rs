//! The whole cluster in one seeded, deterministic simulation.
//!
//! Each simulated node runs the decision code `rustbalance run` runs, minus sockets and Arti:
//! the lease core (`cluster::lease`: the election and the publish ability), the backend health
//! state machine (`health::state`), the Tor-stall detector (`health::stall`), and the publish
//! plan (`publish::plan`) driven by the daemon's own publish shell (`publish::publish_due`)
//! through the Tor seam (`tor::TorNetwork`), here implemented by simulated HSDirs. Messages
//! between nodes travel in their wire form (`cluster::messages`, encoded and decoded). What is
//! simulated: the network between the nodes (delay, reordering, duplication, loss, partitions),
//! the Tor network (HSDirs that store descriptors per time period, refuse a revision that is not
//! higher and drop copies after their lifetime; the HSDir ring changing at every shared-random
//! boundary), backends (publishing their descriptors, rotating introduction points, dying and
//! coming back), each node's clock offset and Tor reachability, crashes and restarts from the
//! node's own saved state (state.json's uploads and role), a publish loop that wedges, and an
//! impostor: a member admitted with the lowest priority that claims priority 1 and the lease
//! (each node vouches for lease messages with `cluster::membership`, as the daemon does).
//!
//! What is modelled rather than run: descriptors are text (`SimSigner`: the revision counter is
//! the SRV offset itself, which orders like the real order-preserving encryption), a backend's
//! descriptor is observed directly rather than fetched and verified (the end-to-end tests do
//! that on a real Tor network), and the transport is a message queue (its protocol is not yet
//! a state machine of its own).
//!
//! # Invariants, checked after every step
//!
//! 1. Lease: once nothing has failed for [`SETTLE`] (counted from a node's next health round
//!    when its Tor stopped reaching the network: that is when it can know), every connected
//!    group of running nodes that contains a node able to reach Tor has exactly one lease
//!    holder, and that holder can reach Tor. (Once a publish loop wedged, add the read-back's
//!    detection bound, as in 4.)
//! 2. A node never uploads while its election does not make it the publisher.
//! 3. The revisions an HSDir accepts for a period strictly increase.
//! 4. The master descriptor the responsible HSDirs serve for the current period lists only
//!    backends alive within [`health_bound`] of now, whenever a backend has been alive all
//!    that time (with no backend alive, nothing better can be published). Once a publisher's
//!    publish loop wedged (it heartbeats and says it can publish, but uploads nothing), the
//!    bound grows by [`HSDIR_FAILURE`] and a health round: only the read-back of the HSDirs
//!    (`cluster::outcome`) can notice that.
//! 5. Once settled as in 1, with no partition (partitioned groups each publish, and may race
//!    each other at the HSDirs), the HSDirs do not refuse the lease holder's uploads: after a
//!    failover from a node whose clock ran ahead, the new publisher's revisions must still be
//!    the highest (it reads back what the HSDirs hold).
//!
//! # Running it
//!
//! `cargo test --test cluster_simulation` runs every scenario once with its default seed and
//! the random-fault scenario for [`CI_RANDOM_SEEDS`] seeds (about a million node-steps). A
//! failure prints its scenario and seed; replay it exactly with
//! `RB_SIM_SCENARIO=<name> RB_SIM_SEED=<seed> cargo test --test cluster_simulation`
//! (`RB_SIM_TRACE=1` prints every event). A longer run: `RB_SIM_SEEDS=200 cargo test --release
//! --test cluster_simulation`.
//!
//! Scenarios whose invariant today's code breaks are listed in [`KNOWN_FAILURES`] with the
//! issue that fixes them: they run, and their violation is printed as a known failure by
//! name. One that stops failing fails the test, so the list stays true.

mod sim_support;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbalance::clock::Timestamp;
use rustbalance::cluster::ability::PublishAbility;
use rustbalance::cluster::election::{Action, Election, ElectionTiming, Role};
use rustbalance::cluster::lease::{LeaseCore, LeaseInput, LocalEvent};
use rustbalance::cluster::membership::Membership;
use rustbalance::cluster::messages::{self, PeerInfo};
use rustbalance::cluster::outcome::{ReadBack, ServedWatch};
use rustbalance::cluster::wg_keys::WgPublicKey;
use rustbalance::cluster::{NodeId, Priority};
use rustbalance::config::{BackendConfig, BackendName};
use rustbalance::descriptor::build::{BuildError, DescriptorParams};
use rustbalance::descriptor::signer::DescriptorSigner;
use rustbalance::health::stall::StallDetector;
use rustbalance::health::state::{HealthPolicy, Observation};
use rustbalance::health::{Check, HealthMonitor, HealthyBackends};
use rustbalance::keys::onion_address::OnionAddress;
use rustbalance::keys::MasterKey;
use rustbalance::publish::plan::{
    judge_read_back, HeldCopy, HsDirCopies, PublishPlan, UploadResult,
};
use rustbalance::publish::publish_due;
use rustbalance::storage::state::SavedState;
use rustbalance::tor::{
    HsDirError, HsDirId, HsDirSet, HttpProbe, LivenessError, PeriodInfo, ProbeError, TorError,
    TorNetwork,
};
use sim_support::{env_number, SimRng};
use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;

/// Milliseconds of true time since the Unix epoch.
type Millis = u64;
const SECOND: Millis = 1000;
const MINUTE: Millis = 60 * SECOND;
/// True time at the start of every run.
const START: Millis = 1_800_000_000_000;
/// One step of simulated time: every running node handles its messages and timers once.
const STEP: Millis = 100;

/// Scenarios whose invariant today's code breaks, and what fixes them.
/// (Empty now: issue 11 fixed the three that were listed.)
const KNOWN_FAILURES: &[(&str, &str)] = &[];
/// Seeds of the random-fault scenario in a CI run (`RB_SIM_SEEDS` overrides).
const CI_RANDOM_SEEDS: u64 = 10;

// The timing every simulated node runs with: the end-to-end tests' short intervals.
const HEARTBEAT: Duration = Duration::from_secs(1);
const PUBLISHER_TIMEOUT: Duration = Duration::from_secs(3);
const TAKEOVER_GRACE: Duration = Duration::from_secs(4);
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
const HEALTH_INTERVAL: Millis = 10 * SECOND;
const PUBLISH_INTERVAL: Duration = Duration::from_secs(60);
const UPLOAD_FAILURE_RELEASE: Duration = Duration::from_secs(60);
const TOR_STALL: Duration = Duration::from_secs(40);
/// How long the master descriptor may be missing or wrong on the HSDirs before its publisher
/// counts as failed (`timing.hsdir_failure_secs`).
const HSDIR_FAILURE: Duration = Duration::from_secs(30);
const DESCRIPTOR_MAX_AGE: Duration = Duration::from_secs(180 * 60);
/// How long a node takes to bootstrap Tor after a (re)start.
const BOOTSTRAP: Millis = 2 * SECOND;
/// After the last fault, how long until the lease must have settled: a takeover (timeout and
/// grace), a restarted node's wait, and some heartbeats and message delays.
const SETTLE: Millis = 20 * SECOND;

/// The private test network's time period (8 minutes); the SRV changes half-way.
const PERIOD_MINUTES: u32 = 8;
const PERIOD: Millis = PERIOD_MINUTES as u64 * MINUTE;
/// HSDirs in the ring, and how many store each descriptor.
const HSDIRS: u64 = 20;
const HSDIRS_PER_DESCRIPTOR: u64 = 8;
/// HSDirs drop a descriptor after its lifetime (180 minutes).
const DESCRIPTOR_LIFETIME: Millis = 180 * MINUTE;
/// Backends re-upload their descriptor this often (C tor: 60-120 minutes).
const BACKEND_REPUBLISH: Millis = 60 * MINUTE;

/// How long a dead backend may stay listed on the HSDirs: a health round to notice it, a
/// takeover that may be happening at the same time, and the upload.
fn health_bound() -> Millis {
    2 * HEALTH_INTERVAL + millis(PUBLISHER_TIMEOUT + TAKEOVER_GRACE) + 10 * SECOND
}

fn millis(duration: Duration) -> Millis {
    duration.as_millis() as Millis
}

// ---------------------------------------------------------------------------------------------
// The test entry point.

#[test]
fn whole_cluster_keeps_its_invariants() {
    let only = std::env::var("RB_SIM_SCENARIO").ok();
    let seed_override = env_number("RB_SIM_SEED");
    let random_seeds = env_number("RB_SIM_SEEDS").unwrap_or(CI_RANDOM_SEEDS);
    let trace = std::env::var("RB_SIM_TRACE").is_ok();

    let started = Instant::now();
    let mut node_steps = 0u64;
    let mut failures = Vec::new();
    let mut known_seen = BTreeSet::new();
    for scenario in SCENARIOS {
        if only.as_deref().is_some_and(|name| name != scenario.name) {
            continue;
        }
        let seeds: Vec<u64> = match (seed_override, scenario.random) {
            (Some(seed), _) => vec![seed],
            (None, true) => (1..=random_seeds).collect(),
            (None, false) => vec![1],
        };
        for seed in seeds {
            let outcome = run(scenario, seed, trace);
            node_steps += outcome.node_steps;
            let known = KNOWN_FAILURES
                .iter()
                .find(|(name, _)| *name == scenario.name);
            match (outcome.violation, known) {
                (Some(violation), Some((_, why))) => {
                    report(&format!(
                        "KNOWN FAILURE {} (seed {seed}; {why}): {violation}",
                        scenario.name
                    ));
                    known_seen.insert(scenario.name);
                }
                (Some(violation), None) => failures.push(format!(
                    "{} seed {seed}: {violation}\n  replay: RB_SIM_SCENARIO={} RB_SIM_SEED={seed} RB_SIM_TRACE=1 cargo test --test cluster_simulation",
                    scenario.name, scenario.name
                )),
                (None, Some(_)) => failures.push(format!(
                    "{} seed {seed} no longer fails: remove it from KNOWN_FAILURES",
                    scenario.name
                )),
                (None, None) => eprintln!("ok {} seed {seed}", scenario.name),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    report(&format!(
        "measured: {node_steps} node-steps in {elapsed:.1} s ({:.0} node-steps/s); known failures seen: {known_seen:?}",
        node_steps as f64 / elapsed
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A line for the CI log even when the test passes: written to file descriptor 2 itself, past
/// the test harness's output capture (which holds back what a passing test prints).
fn report(line: &str) {
    use std::io::Write as _;
    use std::os::fd::FromRawFd as _;
    // SAFETY: descriptor 2 is the process's standard error, open for its whole life; the
    // `ManuallyDrop` keeps this borrowed handle from closing it.
    let mut stderr = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
    let _ = stderr.write_all(format!("cluster_simulation: {line}\n").as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// What happens at a moment of a scenario.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash(usize),
    Restart(usize),
    /// The nodes listed on one side, the rest on the other.
    Partition(&'static [usize]),
    Heal,
    /// A node's Tor stops (or starts) reaching the network; its cluster link stays.
    TorReach(usize, bool),
    /// A node restarts with its clock this many seconds off.
    RestartWithClock(usize, i64),
    BackendDies(usize),
    BackendReturns(usize),
    /// A node's publish loop hangs (a bug): it uploads nothing, while its heartbeats, health
    /// checks and read-back go on. A restart cures it.
    PublishWedged(usize),
    /// A holder of the cluster secret, admitted as member `0` with the lowest priority, starts
    /// (or stops) claiming priority 1 and the lease, every second, to every node.
    Impostor(bool),
}

struct Scenario {
    name: &'static str,
    nodes: usize,
    backends: usize,
    duration: Millis,
    script: &'static [(Millis, Fault)],
    /// Random faults (crashes, restarts, partitions, loss, backends dying and returning, and
    /// introduction-point rotation) instead of a script.
    random: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "publisher_crash",
        nodes: 3,
        backends: 2,
        duration: 6 * MINUTE,
        script: &[
            (60 * SECOND, Fault::Crash(0)),
            (180 * SECOND, Fault::Restart(0)),
        ],
        random: false,
    },
    Scenario {
        name: "publisher_restart",
        nodes: 3,
        backends: 2,
        duration: 5 * MINUTE,
        script: &[
            (60 * SECOND, Fault::Crash(0)),
            (62 * SECOND, Fault::Restart(0)),
        ],
        random: false,
    },
    Scenario {
        name: "partition_and_heal",
        nodes: 3,
        backends: 2,
        duration: 8 * MINUTE,
        script: &[
            (60 * SECOND, Fault::Partition(&[0])),
            (200 * SECOND, Fault::Heal),
            (260 * SECOND, Fault::BackendDies(1)),
        ],
        random: false,
    },
    Scenario {
        name: "clock_plus_60s",
        nodes: 3,
        backends: 2,
        duration: 6 * MINUTE,
        script: &[(60 * SECOND, Fault::RestartWithClock(2, 60))],
        random: false,
    },
    Scenario {
        name: "publisher_clock_ahead_then_crash",
        nodes: 3,
        backends: 2,
        duration: 5 * MINUTE,
        script: &[
            // Node 0 (the best priority) runs a minute ahead and takes the lease when node 1
            // crashes; then it crashes too, and node 2, with a correct clock, takes over.
            (SECOND, Fault::RestartWithClock(0, 60)),
            (60 * SECOND, Fault::Crash(1)),
            (150 * SECOND, Fault::Crash(0)),
        ],
        random: false,
    },
    Scenario {
        name: "tor_fails_while_heartbeats_go_on",
        nodes: 3,
        backends: 2,
        duration: 8 * MINUTE,
        script: &[(60 * SECOND, Fault::TorReach(0, false))],
        random: false,
    },
    Scenario {
        name: "all_backends_dead_then_one_back",
        nodes: 3,
        backends: 2,
        duration: 8 * MINUTE,
        script: &[
            (60 * SECOND, Fault::BackendDies(0)),
            (60 * SECOND, Fault::BackendDies(1)),
            (200 * SECOND, Fault::BackendReturns(1)),
        ],
        random: false,
    },
    Scenario {
        name: "dead_backend_with_the_defaults",
        nodes: 2,
        backends: 2,
        duration: 6 * MINUTE,
        script: &[(60 * SECOND, Fault::BackendDies(1))],
        random: false,
    },
    Scenario {
        name: "publish_loop_wedged",
        nodes: 3,
        backends: 2,
        duration: 6 * MINUTE,
        script: &[
            // The publisher's uploads stop; then a backend dies, and only the HSDirs' copies
            // (which keep listing it) show that the publisher no longer does its work.
            (60 * SECOND, Fault::PublishWedged(0)),
            (90 * SECOND, Fault::BackendDies(1)),
        ],
        random: false,
    },
    Scenario {
        name: "impostor_claims_priority_one",
        nodes: 3,
        backends: 2,
        duration: 5 * MINUTE,
        script: &[
            // It lies while the publisher runs, then while the publisher is dead and a
            // takeover must still happen among the real nodes.
            (60 * SECOND, Fault::Impostor(true)),
            (90 * SECOND, Fault::Crash(0)),
            (200 * SECOND, Fault::Restart(0)),
        ],
        random: false,
    },
    Scenario {
        name: "random_faults",
        nodes: 5,
        backends: 4,
        duration: 60 * MINUTE,
        script: &[],
        random: true,
    },
];

// ---------------------------------------------------------------------------------------------
// Descriptors as text: `period=<p> rev=<n> ips=<a,b,...>`.

struct SimSigner {
    address: OnionAddress,
}

impl DescriptorSigner for SimSigner {
    type IntroPoint = String;

    fn address(&self) -> OnionAddress {
        self.address
    }

    fn intro_point_id(intro_point: &String) -> String {
        intro_point.clone()
    }

    /// Every simulated introduction point has a relay of its own.
    fn intro_point_relay(intro_point: &String) -> String {
        intro_point.clone()
    }

    fn revision_counter(
        &mut self,
        _period: TimePeriod,
        srv_offset_secs: u32,
    ) -> Result<u64, BuildError> {
        Ok(u64::from(srv_offset_secs))
    }

    fn blind_id(&mut self, period: TimePeriod) -> Result<HsBlindId, BuildError> {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&period.interval_num().to_le_bytes());
        Ok(HsBlindId::from(bytes))
    }

    fn build(
        &mut self,
        period: TimePeriod,
        params: &DescriptorParams<'_, String>,
    ) -> Result<String, BuildError> {
        Ok(format!(
            "period={} rev={} ips={}",
            period.interval_num(),
            params.revision_counter,
            params.intro_points.join(",")
        ))
    }

    fn retain_periods(&mut self, _periods: &[u64]) {}
}

struct ParsedDescriptor {
    period: u64,
    revision: u64,
    intro_points: Vec<String>,
}

fn parse_descriptor(text: &str) -> ParsedDescriptor {
    let field = |name: &str| {
        text.split(' ')
            .find_map(|part| part.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing in {text:?}"))
    };
    ParsedDescriptor {
        period: field("period=").parse().unwrap(),
        revision: field("rev=").parse().unwrap(),
        intro_points: field("ips=")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// Introduction points are named `b<backend>.g<generation>.<k>`.
fn backend_of(intro_point: &str) -> usize {
    intro_point[1..intro_point.find('.').unwrap()]
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The simulated world.

/// One stored master descriptor.
#[derive(Clone)]
struct Stored {
    revision: u64,
    intro_points: Vec<String>,
    stored_at: Millis,
}

struct SimBackend {
    alive: bool,
    generation: u32,
    intro_points: Vec<String>,
    /// Its descriptor on the HSDirs: revision and when uploaded.
    revision: u64,
    published_at: Millis,
    /// Since when it has been alive, or dead.
    since: Millis,
}

impl SimBackend {
    fn new(index: usize, now: Millis) -> Self {
        let mut backend = SimBackend {
            alive: true,
            generation: 0,
            intro_points: Vec::new(),
            revision: 0,
            published_at: now,
            since: now,
        };
        backend.rotate(index, now);
        backend
    }

    /// New introduction points and a new descriptor (C tor on start or rotation).
    fn rotate(&mut self, index: usize, now: Millis) {
        self.generation += 1;
        self.intro_points = (0..3)
            .map(|k| format!("b{index}.g{}.{k}", self.generation))
            .collect();
        self.publish(now);
    }

    fn publish(&mut self, now: Millis) {
        self.revision += 1;
        self.published_at = now;
    }

    fn descriptor_available(&self, now: Millis) -> bool {
        now < self.published_at + DESCRIPTOR_LIFETIME
    }
}

/// A message on its way to one node: when it arrives, a sequence number (so equal times keep
/// their sending order), and the encoded wire message.
type InFlight = (Millis, u64, Vec<u8>);

/// Everything a node is while it runs; dropped on a crash.
struct NodeCore {
    lease: LeaseCore,
    /// Who the members are, as the daemon's cluster loop keeps it (`cluster::membership`).
    membership: Membership,
    plan: PublishPlan<SimSigner>,
    health: HealthMonitor<String>,
    stall: StallDetector,
    publishing: bool,
    tor_reported: bool,
    /// The Tor client is being rebuilt: health and publishing wait for it.
    rebuilding: bool,
    next_health: Millis,
    next_stall_check: Millis,
    healthy: Option<HealthyBackends<String>>,
    publish_due_at: Option<Millis>,
    publish_now: bool,
    /// The outcome of its last upload attempt (invariant 5).
    last_upload: UploadResult,
    /// Its publish loop hangs (`Fault::PublishWedged`).
    publish_wedged: bool,
}

struct SimNode {
    id: NodeId,
    priority: Priority,
    clock_offset: i64,
    tor_reaches_network: bool,
    /// When the last (re)start's bootstrap completes.
    bootstrapped_at: Millis,
    core: Option<NodeCore>,
    /// What state.json holds: the daemon's own serialisation of its saved state.
    saved: Option<Vec<u8>>,
    /// The same, as written last (to write only changes, and every minute).
    last_saved: Option<SavedState>,
}

impl SimNode {
    fn clock(&self, now: Millis) -> Millis {
        now.saturating_add_signed(self.clock_offset)
    }

    fn role(&self) -> Option<Role> {
        self.core.as_ref().map(|core| core.lease.election().role())
    }
}

struct World {
    now: Millis,
    rng: SimRng,
    trace: bool,
    nodes: Vec<SimNode>,
    backends: Vec<SimBackend>,
    /// (HSDir, period) -> the master descriptor it holds.
    hsdirs: BTreeMap<(u64, u64), Stored>,
    /// (HSDir, period) -> the last revision it accepted (invariant 3).
    accepted: BTreeMap<(u64, u64), u64>,
    /// Messages on their way to each node.
    inboxes: Vec<BinaryHeap<Reverse<InFlight>>>,
    sequence: u64,
    /// Side of each node while partitioned.
    partition: Option<Vec<bool>>,
    /// An impostor (`Fault::Impostor`) is lying.
    impostor: bool,
    /// Extra loss of heartbeats, in a loss episode.
    loss: f64,
    last_fault: Millis,
    /// Added to invariant 4's bound, and to invariant 1's settling time, once a publish loop
    /// wedged.
    listing_bound_extra: Millis,
    violation: Option<String>,
    master: OnionAddress,
}

impl World {
    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>8.1}s] {}", (self.now - START) as f64 / 1000.0, what());
        }
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            let at = (self.now - START) as f64 / 1000.0;
            self.violation = Some(format!("at {at:.1} s: {what}"));
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.partition
            .as_ref()
            .is_none_or(|side| side[a] == side[b])
    }

    /// The period clients use now, and the periods a service publishes for: the next one too
    /// in the second half of the period (after the SRV changed).
    /// What `node`'s read-back of the master descriptor finds now (`publish::read_back`):
    /// every responsible HSDir's copy per period, or nothing when its Tor is cut.
    fn read_back(&self, node: usize, clock: Millis) -> Vec<HsDirCopies> {
        if !self.nodes[node].tor_reaches_network {
            return Vec::new();
        }
        self.periods()
            .into_iter()
            .map(|period| HsDirCopies {
                period,
                read_at: Timestamp::from_unix_millis(clock),
                answered: self
                    .ring(period)
                    .into_iter()
                    .map(|hsdir| {
                        let held = self
                            .hsdirs
                            .get(&(hsdir, period))
                            .filter(|stored| self.now < stored.stored_at + DESCRIPTOR_LIFETIME)
                            .map(|stored| HeldCopy {
                                revision_counter: stored.revision,
                                intro_points: stored.intro_points.clone(),
                            });
                        (HsDirId::new(format!("${hsdir}")), held)
                    })
                    .collect(),
                unreachable: 0,
            })
            .collect()
    }

    fn periods(&self) -> Vec<u64> {
        let current = self.now / PERIOD;
        if self.now % PERIOD >= PERIOD / 2 {
            vec![current, current + 1]
        } else {
            vec![current]
        }
    }

    /// The start of the SRV period a period's ring uses.
    fn srv_start(period: u64) -> Millis {
        period * PERIOD - PERIOD / 2
    }

    /// The HSDirs responsible for a period now: the ring moves at every SRV change.
    fn ring(&self, period: u64) -> Vec<u64> {
        let srv_epoch = (self.now + PERIOD / 2) / PERIOD;
        let first = (period.wrapping_mul(7) + srv_epoch.wrapping_mul(3)) % HSDIRS;
        (0..HSDIRS_PER_DESCRIPTOR)
            .map(|k| (first + k) % HSDIRS)
            .collect()
    }

    fn send(&mut self, from: usize, message: messages::Message, reliable: bool) {
        let bytes = message.encode().expect("messages encode");
        for to in 0..self.nodes.len() {
            if to == from || self.nodes[to].core.is_none() || !self.connected(from, to) {
                continue;
            }
            let lost = !reliable && self.rng.chance(0.01 + self.loss);
            if lost {
                continue;
            }
            // Reliable messages are resent until acknowledged: a lost one arrives late.
            let mut delay = 20 + self.rng.range(0, 59);
            if self.rng.chance(0.05) || (reliable && self.rng.chance(self.loss)) {
                delay += self.rng.range(0, 999);
            }
            self.push(to, bytes.clone(), delay);
            if self.rng.chance(0.02) {
                let replay = delay + self.rng.range(0, 2999);
                self.push(to, bytes.clone(), replay);
            }
        }
    }

    fn push(&mut self, to: usize, bytes: Vec<u8>, delay: Millis) {
        self.sequence += 1;
        self.inboxes[to].push(Reverse((self.now + delay, self.sequence, bytes)));
    }
}

/// The Tor seam as one node sees the simulated network during a publish round.
struct SimTor<'a> {
    world: &'a RefCell<World>,
    node: usize,
}

impl TorNetwork for SimTor<'_> {
    fn has_live_consensus(&self) -> bool {
        self.world.borrow().nodes[self.node].tor_reaches_network
    }

    async fn current_period(&self) -> Result<PeriodInfo, TorError> {
        Ok(self.publish_periods().await?[0])
    }

    async fn publish_periods(&self) -> Result<Vec<PeriodInfo>, TorError> {
        let world = self.world.borrow();
        if !world.nodes[self.node].tor_reaches_network {
            return Err(TorError::NoConsensus);
        }
        Ok(world
            .periods()
            .into_iter()
            .map(|period| PeriodInfo {
                time_period: TimePeriod::from_parts(PERIOD_MINUTES, period, 0),
                srv_start: Timestamp::from_unix_millis(World::srv_start(period)),
                max_descriptor_size: 50_000,
                flow_control: None,
            })
            .collect())
    }

    async fn hsdirs(
        &self,
        _blinded_id: &HsBlindId,
        period: TimePeriod,
        _set: HsDirSet,
    ) -> Result<Vec<HsDirId>, TorError> {
        Ok(self
            .world
            .borrow()
            .ring(period.interval_num())
            .into_iter()
            .map(|hsdir| HsDirId::new(format!("${hsdir}")))
            .collect())
    }

    async fn fetch_descriptor(
        &self,
        _hsdir: &HsDirId,
        _blinded_id: &HsBlindId,
    ) -> Result<String, HsDirError> {
        unreachable!("backend descriptors are observed directly in the simulation")
    }

    async fn upload_descriptor(
        &self,
        hsdir: &HsDirId,
        descriptor: Arc<str>,
    ) -> Result<(), HsDirError> {
        let mut world = self.world.borrow_mut();
        let node = &world.nodes[self.node];
        if node.role() != Some(Role::Publisher) {
            let id = node.id.clone();
            world.violate(format!(
                "invariant 2: {id} uploaded without holding the lease"
            ));
        }
        if !world.nodes[self.node].tor_reaches_network {
            return Err(HsDirError::NoCircuit("the node's Tor is cut off".into()));
        }
        let hsdir: u64 = hsdir.as_str()[1..].parse().unwrap();
        let parsed = parse_descriptor(&descriptor);
        let key = (hsdir, parsed.period);
        let now = world.now;
        let holds = world
            .hsdirs
            .get(&key)
            .filter(|stored| now < stored.stored_at + DESCRIPTOR_LIFETIME)
            .map(|stored| stored.revision);
        if holds.is_some_and(|revision| parsed.revision <= revision) {
            let node = self.node;
            world.trace(|| {
                format!(
                    "HSDir {hsdir} refuses revision {} of node {node} for period {}: it holds {:?}",
                    parsed.revision, parsed.period, holds
                )
            });
            return Err(HsDirError::RevisionRefused);
        }
        if let Some(&last) = world.accepted.get(&key) {
            if parsed.revision <= last {
                world.violate(format!(
                    "invariant 3: HSDir {hsdir} accepted revision {} for period {} after {last}",
                    parsed.revision, parsed.period
                ));
            }
        }
        world.accepted.insert(key, parsed.revision);
        world.hsdirs.insert(
            key,
            Stored {
                revision: parsed.revision,
                intro_points: parsed.intro_points,
                stored_at: now,
            },
        );
        Ok(())
    }

    async fn rendezvous(
        &self,
        _address: &OnionAddress,
        _timeout: Duration,
    ) -> Result<(), LivenessError> {
        unreachable!("backends are checked directly in the simulation")
    }

    async fn probe(
        &self,
        _address: &OnionAddress,
        _probe: &HttpProbe<'_>,
    ) -> Result<(), ProbeError> {
        unreachable!("backends are checked directly in the simulation")
    }
}

// ---------------------------------------------------------------------------------------------
// Running a scenario.

struct Outcome {
    violation: Option<String>,
    node_steps: u64,
}

fn run(scenario: &Scenario, seed: u64, trace: bool) -> Outcome {
    let mut rng = SimRng(seed);
    let master: OnionAddress = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
        .parse()
        .unwrap();
    let nodes = (0..scenario.nodes)
        .map(|i| SimNode {
            id: NodeId::try_from(format!("node-{}", (b'a' + i as u8) as char)).unwrap(),
            priority: Priority::try_from(i as u32 + 1).unwrap(),
            clock_offset: rng.range(0, 399) as i64 - 200,
            tor_reaches_network: true,
            bootstrapped_at: START + BOOTSTRAP,
            core: None,
            saved: None,
            last_saved: None,
        })
        .collect();
    let backends = (0..scenario.backends)
        .map(|i| SimBackend::new(i, START))
        .collect();
    let world = RefCell::new(World {
        now: START,
        rng,
        trace,
        nodes,
        backends,
        hsdirs: BTreeMap::new(),
        accepted: BTreeMap::new(),
        inboxes: (0..scenario.nodes).map(|_| BinaryHeap::new()).collect(),
        sequence: 0,
        partition: None,
        impostor: false,
        loss: 0.0,
        last_fault: START,
        listing_bound_extra: 0,
        violation: None,
        master,
    });
    for node in 0..scenario.nodes {
        start_node(&world, node);
    }

    let mut script = scenario.script.iter().peekable();
    let mut node_steps = 0;
    let end = START + scenario.duration;
    while world.borrow().now < end {
        let now = world.borrow().now;
        while let Some(&(_, fault)) = script.next_if(|(at, _)| START + at <= now) {
            apply(&world, fault);
        }
        if scenario.random {
            random_fault(&world);
        }
        backends_step(&world);
        impostor_step(&world);
        for node in 0..scenario.nodes {
            if world.borrow().nodes[node].core.is_some() {
                node_step(&world, node);
                node_steps += 1;
            }
        }
        check_invariants(&world);
        if world.borrow().violation.is_some() {
            break;
        }
        world.borrow_mut().now += STEP;
    }
    let violation = world.borrow_mut().violation.take();
    Outcome {
        violation,
        node_steps,
    }
}

fn apply(world: &RefCell<World>, fault: Fault) {
    let mut w = world.borrow_mut();
    w.trace(|| format!("fault: {fault:?}"));
    let now = w.now;
    w.last_fault = now;
    match fault {
        Fault::Crash(node) => {
            crash(&mut w, node);
        }
        Fault::Restart(node) => {
            drop(w);
            start_node(world, node);
        }
        Fault::RestartWithClock(node, secs) => {
            crash(&mut w, node);
            w.nodes[node].clock_offset = secs * 1000;
            drop(w);
            start_node(world, node);
        }
        Fault::Partition(side) => {
            let sides = (0..w.nodes.len()).map(|n| side.contains(&n)).collect();
            w.partition = Some(sides);
        }
        Fault::Heal => w.partition = None,
        Fault::TorReach(node, reaches) => {
            w.nodes[node].tor_reaches_network = reaches;
            if !reaches {
                // The node learns of it at its next health round: the detection bound.
                w.last_fault = now + HEALTH_INTERVAL;
            }
        }
        Fault::BackendDies(backend) => {
            w.backends[backend].alive = false;
            w.backends[backend].since = now;
        }
        Fault::BackendReturns(backend) => {
            let b = &mut w.backends[backend];
            b.alive = true;
            b.since = now;
            b.rotate(backend, now);
        }
        Fault::Impostor(lies) => w.impostor = lies,
        Fault::PublishWedged(node) => {
            if let Some(core) = w.nodes[node].core.as_mut() {
                core.publish_wedged = true;
            }
            w.listing_bound_extra = millis(HSDIR_FAILURE) + 2 * HEALTH_INTERVAL;
        }
    }
}

/// The process is gone: what it held in memory, and what was on its way to it.
fn crash(world: &mut World, node: usize) {
    world.nodes[node].core = None;
    world.inboxes[node].clear();
}

/// Start (or restart) a node from its saved state, as `rustbalance run` does.
fn start_node(world: &RefCell<World>, node: usize) {
    let mut w = world.borrow_mut();
    let now = w.now;
    let n = w.nodes.len();
    let clock = w.nodes[node].clock(now);
    let peers: Vec<(NodeId, Priority)> = w
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != node)
        .map(|(_, peer)| (peer.id.clone(), peer.priority))
        .collect();
    let timing = ElectionTiming {
        heartbeat_interval: HEARTBEAT,
        publisher_timeout: PUBLISHER_TIMEOUT,
        takeover_grace: TAKEOVER_GRACE,
        max_clock_skew: MAX_CLOCK_SKEW,
    };
    let me = &w.nodes[node];
    let election = Election::new(
        me.id.clone(),
        me.priority,
        peers,
        timing,
        Timestamp::from_unix_millis(clock),
    );
    let mut plan = PublishPlan::new(SimSigner { address: w.master }, PUBLISH_INTERVAL);
    if let Some(bytes) = &me.saved {
        let saved: SavedState = serde_json::from_slice(bytes).expect("state.json parses");
        if let Some(uploads) =
            saved.uploads_to_resume(clock / 1000, n > 1, PUBLISHER_TIMEOUT + TAKEOVER_GRACE)
        {
            plan.restore(uploads);
        }
    }
    let backends = w.backends.len();
    // Every member, the impostor included (it joined with the cluster secret and got the
    // priority after the real nodes').
    let record = |id: NodeId, priority: Priority, index: u8| PeerInfo {
        node_id: id,
        endpoint: "member.sim:51820".parse().unwrap(),
        public_key: WgPublicKey::from_bytes([index; 32]),
        priority,
    };
    let members = w
        .nodes
        .iter()
        .enumerate()
        .map(|(i, peer)| record(peer.id.clone(), peer.priority, i as u8 + 1))
        .chain([record(
            impostor_id(),
            Priority::try_from(n as u32 + 1).unwrap(),
            0xff,
        )]);
    let membership = Membership::new(
        w.nodes[node].id.clone(),
        w.nodes[node].priority,
        None,
        members,
        [],
    );
    let core = NodeCore {
        membership,
        lease: LeaseCore::new(
            election,
            PublishAbility::new(UPLOAD_FAILURE_RELEASE),
            ServedWatch::new(HSDIR_FAILURE),
        ),
        plan,
        health: HealthMonitor::with_backends(
            &backend_configs(backends),
            HealthPolicy {
                descriptor_max_age: DESCRIPTOR_MAX_AGE,
                dead_after_failures: 2,
            },
            None,
            std::path::PathBuf::new(),
        ),
        stall: StallDetector::new(TOR_STALL, backends > 0, Timestamp::from_unix_millis(clock)),
        publishing: false,
        tor_reported: false,
        rebuilding: false,
        // Nodes start their loops at different moments, as separate machines do.
        next_health: clock + w.rng.range(0, HEALTH_INTERVAL - 1),
        next_stall_check: clock,
        healthy: None,
        publish_due_at: None,
        publish_now: false,
        last_upload: UploadResult::NothingDue,
        publish_wedged: false,
    };
    w.nodes[node].core = Some(core);
    w.nodes[node].bootstrapped_at = now + BOOTSTRAP;
    w.trace(|| format!("node {node} started"));
}

/// The backends as config.toml would list them (`backend-<i>`, each its own address).
fn backend_configs(count: usize) -> Vec<BackendConfig> {
    (0..count)
        .map(|i| BackendConfig {
            name: BackendName::try_from(format!("backend-{i}")).unwrap(),
            address: MasterKey::from_seed(&[i as u8 + 1; 32]).onion_address(),
            exclude: false,
        })
        .collect()
}

/// Backends republish now and then, and rotate their introduction points in random runs.
fn backends_step(world: &RefCell<World>) {
    let mut w = world.borrow_mut();
    let now = w.now;
    for b in &mut w.backends {
        if b.alive && now >= b.published_at + BACKEND_REPUBLISH {
            b.publish(now);
        }
    }
}

fn random_fault(world: &RefCell<World>) {
    let mut w = world.borrow_mut();
    // About one fault every 40 s of simulated time.
    if !w.rng.chance(STEP as f64 / 40_000.0) {
        return;
    }
    let nodes = w.nodes.len();
    let backends = w.backends.len();
    let kind = w.rng.below(7);
    let fault = match kind {
        0 => Fault::Crash(w.rng.below(nodes)),
        1 => Fault::Restart(w.rng.below(nodes)),
        2 => {
            const SIDES: &[&[usize]] = &[&[0], &[1], &[0, 1], &[2, 3], &[4]];
            Fault::Partition(SIDES[w.rng.below(SIDES.len())])
        }
        3 => Fault::Heal,
        4 => Fault::BackendDies(w.rng.below(backends)),
        5 => Fault::BackendReturns(w.rng.below(backends)),
        _ => {
            // A loss episode, or its end; or a backend rotating its introduction points.
            if w.rng.chance(0.5) {
                w.loss = if w.loss > 0.0 { 0.0 } else { 0.3 };
                let now = w.now;
                w.last_fault = now;
            } else {
                let b = w.rng.below(backends);
                let now = w.now;
                if w.backends[b].alive {
                    w.backends[b].rotate(b, now);
                }
            }
            return;
        }
    };
    // A restart of a running node, or a crash of a stopped one, is a no-op; the last two
    // running nodes are not crashed (with none running, nothing could be published).
    let running = w.nodes.iter().filter(|n| n.core.is_some()).count();
    let skip = match fault {
        Fault::Crash(n) => w.nodes[n].core.is_none() || running <= 2,
        Fault::Restart(n) => w.nodes[n].core.is_some(),
        _ => false,
    };
    drop(w);
    if !skip {
        apply(world, fault);
    }
}

/// The impostor's id: a member every node admitted, with the priority after the real nodes'.
fn impostor_id() -> NodeId {
    NodeId::try_from("0".to_owned()).unwrap()
}

/// Every second while it lies, the impostor sends every running node a heartbeat and a lease
/// claim as publisher with priority 1 (in the wire encoding, as a member's tunnel delivers).
fn impostor_step(world: &RefCell<World>) {
    let mut w = world.borrow_mut();
    if !w.impostor || !w.now.is_multiple_of(SECOND) {
        return;
    }
    let at = Timestamp::from_unix_millis(w.now);
    let first = Priority::try_from(1).unwrap();
    let lies = [
        messages::Message::Heartbeat(rustbalance::cluster::election::Heartbeat {
            from: impostor_id(),
            timestamp: at,
            priority: first,
            role: Role::Publisher,
            can_publish: true,
            last_publish: Some(at),
            config_version: None,
            publisher_not_served: None,
            secret_id: None,
        }),
        messages::Message::lease_claim(&rustbalance::cluster::election::LeaseClaim {
            from: impostor_id(),
            timestamp: at,
            priority: first,
        }),
    ];
    for lie in lies {
        let bytes = lie.encode().expect("messages encode");
        for to in 0..w.nodes.len() {
            if w.nodes[to].core.is_some() {
                w.push(to, bytes.clone(), 30);
            }
        }
    }
}

/// One step of one node: messages, timers, health round, publish round, stall check.
fn node_step(world: &RefCell<World>, node: usize) {
    let now = world.borrow().now;
    let clock = world.borrow().nodes[node].clock(now);
    let ts = Timestamp::from_unix_millis(clock);

    // Messages that arrived.
    loop {
        let message = {
            let mut w = world.borrow_mut();
            let inbox = &mut w.inboxes[node];
            if inbox.peek().is_none_or(|Reverse((at, _, _))| *at > now) {
                break;
            }
            let Reverse((_, _, bytes)) = inbox.pop().unwrap();
            bytes
        };
        let decoded = messages::Message::decode(&message).expect("wire messages decode");
        if let Some(message) = decoded.to_election() {
            // As the daemon's cluster loop: a lease message counts only from a member that
            // claims the priority it was admitted with.
            let vouched = {
                let w = world.borrow();
                let core = w.nodes[node].core.as_ref().unwrap();
                core.membership.vouch(message.from(), message.priority())
            };
            match vouched {
                Ok(()) => lease_input(world, node, LeaseInput::Heard(message), ts),
                Err(refusal) => world
                    .borrow()
                    .trace(|| format!("node {node} refuses a message: {refusal}")),
            }
        }
    }
    lease_input(world, node, LeaseInput::Tick, ts);

    // Tor bootstrap.
    let (reaches, booted, reported) = {
        let w = world.borrow();
        let n = &w.nodes[node];
        let core = n.core.as_ref().unwrap();
        (
            n.tor_reaches_network,
            now >= n.bootstrapped_at,
            core.tor_reported && !core.rebuilding,
        )
    };
    if reaches && booted && !reported {
        {
            let mut w = world.borrow_mut();
            let core = w.nodes[node].core.as_mut().unwrap();
            core.rebuilding = false;
            core.tor_reported = true;
            core.stall = StallDetector::new(TOR_STALL, true, Timestamp::from_unix_millis(clock));
        }
        lease_input(world, node, LeaseInput::Local(LocalEvent::TorReady), ts);
    }
    let ready = {
        let w = world.borrow();
        let core = w.nodes[node].core.as_ref().unwrap();
        core.tor_reported && !core.rebuilding
    };
    if !ready {
        return;
    }

    health_round_if_due(world, node, clock);
    publish_round_if_due(world, node, clock);
    stall_check_if_due(world, node, clock);
    save_state(world, node, clock);
}

/// Feed the lease core and carry out what the election decided.
fn lease_input(world: &RefCell<World>, node: usize, input: LeaseInput, ts: Timestamp) {
    let actions = {
        let mut w = world.borrow_mut();
        let core = w.nodes[node].core.as_mut().unwrap();
        core.lease.handle(input, ts)
    };
    for action in actions {
        let mut w = world.borrow_mut();
        match action {
            Action::BroadcastHeartbeat(heartbeat) => {
                w.send(node, messages::Message::Heartbeat(heartbeat), false)
            }
            Action::BroadcastLeaseClaim(claim) => {
                w.send(node, messages::Message::lease_claim(&claim), true)
            }
            Action::BroadcastLeaseRelease(release) => {
                w.send(node, messages::Message::lease_release(&release), true)
            }
            Action::StartPublishing => {
                w.trace(|| format!("node {node} starts publishing"));
                // As the daemon's publish loop: read the HSDirs back before the first upload.
                let clock = w.nodes[node].clock(w.now);
                let copies = w.read_back(node, clock);
                let core = w.nodes[node].core.as_mut().unwrap();
                core.publishing = true;
                core.plan.on_lease_gained();
                for period in &copies {
                    core.plan.observe_copies(period);
                }
                core.publish_now = true;
            }
            Action::StopPublishing => {
                w.trace(|| format!("node {node} stops publishing"));
                w.nodes[node].core.as_mut().unwrap().publishing = false;
            }
            Action::Warn(warning) => w.trace(|| format!("node {node} warns: {warning}")),
        }
    }
}

fn health_round_if_due(world: &RefCell<World>, node: usize, clock: Millis) {
    let reached = {
        let mut w = world.borrow_mut();
        let now = w.now;
        if clock < w.nodes[node].core.as_ref().unwrap().next_health {
            return;
        }
        let reaches = w.nodes[node].tor_reaches_network;
        let period = now / PERIOD;
        let checks: Vec<Option<Check<String>>> = w
            .backends
            .iter()
            .map(|b| {
                let observation = if !reaches {
                    // The node's own Tor is broken: no fetch reaches an HSDir.
                    Observation::NotChecked {
                        reason: "no circuit".into(),
                    }
                } else if !b.descriptor_available(now) {
                    Observation::FetchFailed {
                        reason: "HTTP 404".into(),
                    }
                } else if !b.alive {
                    // The default rendezvous check (or an HTTP probe) finds a dead backend.
                    Observation::ProbeFailed {
                        reason: "no rendezvous".into(),
                    }
                } else {
                    Observation::Descriptor {
                        time_period: period,
                        revision_counter: b.revision,
                    }
                };
                let intro_points =
                    (reaches && b.descriptor_available(now)).then(|| b.intro_points.clone());
                Some(Check {
                    observation,
                    intro_points,
                    // With its Tor working, an HSDir answers (with the descriptor or a 404).
                    reached_hsdirs: reaches,
                    offers_pow: false,
                })
            })
            .collect();
        // The fetch-back of the master descriptor: what every responsible HSDir holds.
        let copies = w.read_back(node, clock);
        let core = w.nodes[node].core.as_mut().unwrap();
        for period in &copies {
            if core.plan.observe_copies(period) {
                core.publish_now = true;
            }
        }
        core.next_health = clock + HEALTH_INTERVAL;
        let at = Timestamp::from_unix_millis(clock);
        let healthy = core.health.apply_round(checks, at);
        let verdict = core.health.has_verdict();
        if verdict && core.healthy.as_ref() != Some(&healthy) {
            core.publish_now = true;
        }
        // The daemon judges the read-back against the same healthy set.
        let healthy_ids: BTreeSet<String> = healthy
            .iter()
            .flat_map(|(_, ips)| ips.iter().cloned())
            .collect();
        let read_back = judge_read_back(&copies, &healthy_ids);
        let note = (read_back != ReadBack::Served).then(|| {
            let held: Vec<String> = copies
                .iter()
                .map(|period| {
                    let newest = period.newest();
                    format!(
                        "period {}: {} of {} hold {:?}",
                        period.period,
                        newest.len(),
                        period.answered.len(),
                        newest.first()
                    )
                })
                .collect();
            format!("node {node} read-back: {read_back:?}: {held:?}")
        });
        if verdict {
            core.healthy = Some(healthy);
        }
        let reached = core.health.reached_last_round();
        if reached > 0 {
            core.stall.progress(at);
        }
        (core.health.checked_last_round(), reached, read_back, note)
    };
    let (checked, reached, read_back, note) = reached;
    if let Some(note) = note {
        world.borrow().trace(|| note);
    }
    let at = Timestamp::from_unix_millis(clock);
    lease_input(
        world,
        node,
        LeaseInput::Local(LocalEvent::HealthRound { checked, reached }),
        at,
    );
    lease_input(
        world,
        node,
        LeaseInput::Local(LocalEvent::ReadBack(read_back)),
        at,
    );
}

fn publish_round_if_due(world: &RefCell<World>, node: usize, clock: Millis) {
    let (mut plan, healthy) = {
        let mut w = world.borrow_mut();
        let now = w.now;
        // A new consensus (here: each period and SRV boundary) wakes the publish loop.
        let boundary = now % (PERIOD / 2) < STEP;
        let core = w.nodes[node].core.as_mut().unwrap();
        let due = core.publish_now || boundary || core.publish_due_at.is_some_and(|at| clock >= at);
        let (true, true, false, Some(healthy)) = (
            core.publishing,
            due,
            core.publish_wedged,
            core.healthy.clone(),
        ) else {
            return;
        };
        core.publish_now = false;
        // The plan leaves the node while the round runs, as the daemon's publish loop owns it.
        let placeholder = PublishPlan::new(SimSigner { address: w.master }, PUBLISH_INTERVAL);
        let core = w.nodes[node].core.as_mut().unwrap();
        (std::mem::replace(&mut core.plan, placeholder), healthy)
    };
    let tor = SimTor { world, node };
    let round = futures::executor::block_on(publish_due(&tor, &mut plan, &healthy, || {
        Timestamp::from_unix_millis(clock)
    }));
    {
        let mut w = world.borrow_mut();
        w.trace(|| format!("node {node} publish round: {:?}", round.uploads));
        let core = w.nodes[node].core.as_mut().unwrap();
        core.plan = plan;
        core.publish_due_at = round.wake_at.map(Timestamp::as_unix_millis);
        if round.uploads != UploadResult::NothingDue {
            core.last_upload = round.uploads;
        }
        if matches!(
            round.uploads,
            UploadResult::Accepted | UploadResult::Refused
        ) {
            core.stall.progress(Timestamp::from_unix_millis(clock));
        }
    }
    let news = match round.uploads {
        UploadResult::Accepted => LocalEvent::UploadsAccepted,
        UploadResult::Refused => LocalEvent::UploadsRefused,
        UploadResult::Failed => LocalEvent::UploadsFailed,
        UploadResult::NothingDue => return,
    };
    lease_input(
        world,
        node,
        LeaseInput::Local(news),
        Timestamp::from_unix_millis(clock),
    );
}

fn stall_check_if_due(world: &RefCell<World>, node: usize, clock: Millis) {
    let mut w = world.borrow_mut();
    let reaches = w.nodes[node].tor_reaches_network;
    let core = w.nodes[node].core.as_mut().unwrap();
    if clock < core.next_stall_check {
        return;
    }
    core.next_stall_check = clock + 5 * SECOND;
    let at = Timestamp::from_unix_millis(clock);
    if reaches {
        core.stall.live_consensus(at);
    }
    if let Some(reason) = core.stall.stalled(at) {
        // The daemon tells the cluster loop, drops the client and bootstraps a new one; until
        // that succeeds, its health and publish loops wait.
        core.rebuilding = true;
        let now = w.now;
        w.nodes[node].bootstrapped_at = now + BOOTSTRAP;
        w.trace(|| format!("node {node} rebuilds its Tor client: {reason}"));
        drop(w);
        lease_input(world, node, LeaseInput::Local(LocalEvent::TorLost), at);
    }
}

/// state.json, written as the daemon writes it: on every change and every minute.
fn save_state(world: &RefCell<World>, node: usize, clock: Millis) {
    let mut w = world.borrow_mut();
    let n = &mut w.nodes[node];
    let core = n.core.as_ref().unwrap();
    let mut saved = SavedState::new(n.id.clone(), core.lease.election().role(), None);
    saved.saved_at = clock / 1000;
    saved.uploads = core.plan.saved_uploads();
    let unchanged = n.last_saved.as_ref().is_some_and(|last| {
        last.role == saved.role
            && last.uploads == saved.uploads
            && saved.saved_at < last.saved_at + 60
    });
    if !unchanged {
        n.saved = Some(serde_json::to_vec(&saved).expect("state.json serialises"));
        n.last_saved = Some(saved);
    }
}

// ---------------------------------------------------------------------------------------------
// The invariants checked after every step (2 and 3 are checked at each upload).

fn check_invariants(world: &RefCell<World>) {
    let mut w = world.borrow_mut();
    let now = w.now;
    // A loss episode is a fault while it lasts.
    // A wedged publish loop shows only once the read-back judged it: the lease settles after.
    let settle = SETTLE + w.listing_bound_extra;
    if now < w.last_fault + settle || now < START + SETTLE || w.loss > 0.0 {
        return;
    }
    check_one_lease_per_group(&mut w);
    check_listed_backends_alive(&mut w);
}

/// Invariant 1.
fn check_one_lease_per_group(w: &mut World) {
    let running: Vec<usize> = (0..w.nodes.len())
        .filter(|&n| w.nodes[n].core.is_some())
        .collect();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &n in &running {
        match groups.iter_mut().find(|g| w.connected(g[0], n)) {
            Some(group) => group.push(n),
            None => groups.push(vec![n]),
        }
    }
    for group in groups {
        if !group.iter().any(|&n| w.nodes[n].tor_reaches_network) {
            continue;
        }
        let holders: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&n| w.nodes[n].role() == Some(Role::Publisher))
            .collect();
        let names = |nodes: &[usize]| {
            nodes
                .iter()
                .map(|&n| w.nodes[n].id.to_string())
                .collect::<Vec<_>>()
        };
        if holders.len() != 1 {
            let what = format!(
                "invariant 1: group {:?} has {} lease holders {:?}",
                names(&group),
                holders.len(),
                names(&holders)
            );
            w.violate(what);
        } else if w.partition.is_none()
            && w.nodes[holders[0]]
                .core
                .as_ref()
                .is_some_and(|core| core.last_upload == UploadResult::Refused)
        {
            let what = format!(
                "invariant 5: the HSDirs refuse the uploads of the lease holder {}",
                w.nodes[holders[0]].id
            );
            w.violate(what);
        } else if !w.nodes[holders[0]].tor_reaches_network {
            let what = format!(
                "invariant 1: the lease holder {} of group {:?} cannot reach Tor",
                w.nodes[holders[0]].id,
                names(&group)
            );
            w.violate(what);
        }
    }
}

/// Invariant 4.
fn check_listed_backends_alive(w: &mut World) {
    let now = w.now;
    let bound = health_bound() + w.listing_bound_extra;
    let some_alive_long_enough = w.backends.iter().any(|b| b.alive && now >= b.since + bound);
    if !some_alive_long_enough {
        return;
    }
    let period = now / PERIOD;
    for hsdir in w.ring(period) {
        let Some(stored) = w.hsdirs.get(&(hsdir, period)) else {
            continue;
        };
        if now >= stored.stored_at + DESCRIPTOR_LIFETIME {
            continue;
        }
        let listed: BTreeSet<usize> = stored
            .intro_points
            .iter()
            .map(|ip| backend_of(ip))
            .collect();
        for backend in listed {
            let b = &w.backends[backend];
            if !b.alive && now >= b.since + bound {
                let what = format!(
                    "invariant 4: HSDir {hsdir} serves period {period} listing backend {backend}, dead for {:.0} s (bound {} s)",
                    (now - b.since) as f64 / 1000.0,
                    bound / 1000
                );
                w.violate(what);
                return;
            }
        }
    }
}
