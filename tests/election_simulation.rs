//! Deterministic simulation of the publisher election (`rustbalance::cluster::election`).
//!
//! Each seed builds a cluster of 1 to 7 nodes and runs it for one to three simulated hours of
//! alternating *turbulent* phases, in which failures are injected, and *stable* phases, in
//! which none are. The failures: crashes, restarts (Arti bootstrapping first), clean
//! shutdowns, network partitions and heals, message-loss episodes, clock steps (within and far
//! beyond `max_clock_skew`) and Tor breaking or recovering (`can_publish` flapping). At all
//! times, stable phases included, messages are delayed (up to 1.5 s, so they also arrive out
//! of order) and some are duplicated and replayed up to 8 s later. Everything is driven by one
//! seeded generator and a discrete event queue: no threads, sockets or real clocks, so a seed
//! replays exactly.
//!
//! # What is checked
//!
//! Definitions, all from the simulator's ground truth:
//! - A node's clock is *good* if it is within 1 s of true time, *bad* if it is at least 20 s
//!   off. The election judges liveness by when messages arrive on the receiver's clock, so a
//!   bad clock does not cut a node off: it only draws a warning, and its messages are ordered
//!   by its own timestamps (a sender whose clock stepped back is not heard for up to a
//!   heartbeat interval; that step is a failure like any other).
//! - A *group* is a set of running nodes on the same side of the partition: they can talk.
//! - A *candidate* is a running node whose election was told `can_publish: true`.
//! - A node's *arrival* next to a publisher P is the latest of: its own restart, its
//!   `can_publish` becoming true, its clock step, the moment its link to P came up, and the end
//!   of the last loss episode. Within [`arrival_slack()`] of arrival (one heartbeat interval, the
//!   largest delay, the largest backward clock step, and a margin) P may not have heard of it.
//!
//! After each stable phase that has lasted [`convergence()`] since the last failure (publisher
//! timeout, takeover grace and 30 s more: the longest a takeover can legitimately take,
//! counting a replayed heartbeat of a dead publisher), for every group:
//! 1. if the group has a candidate, it has exactly one publisher, and that publisher is a
//!    candidate; with no candidate it has at most one (an incumbent that cannot upload keeps
//!    the lease while nobody could do better);
//! 2. no candidate of the group ranks above the publisher (lower priority number, then node
//!    id), unless the publisher took the lease before that candidate's arrival plus
//!    [`arrival_slack()`], or right after its own clock stepped (a forward step looks like
//!    time passing, so it may claim a vacant lease early; see 7): a returning better node does not take the lease back (no flapping),
//!    but a node that was present all along must have been preferred;
//! 3. every node of the group names that publisher as `publisher()` (what `status` shows).
//!
//! And at all times:
//! 4. no node starts or stops publishing more than [`convergence()`] after the last failure: once
//!    things have settled, nobody flaps while nothing fails;
//! 5. `StartPublishing`/`StopPublishing` alternate, and match the election's `role()`;
//! 6. no node claims while a publisher of its group is running that it must know of: one
//!    that has been publishing, reachable and free of loss since [`arrival_slack()`] before the
//!    claim (a standby follows a live publisher, even one that ranks below it: no flapping);
//! 7. a claim respects the timers, judged from what the claimant's election accepted (read
//!    back through `peers()`): not before `publisher_timeout` after start-up
//!    (`publisher_timeout + takeover_grace` if it has heard nobody), and not before
//!    `publisher_timeout + takeover_grace` after it last accepted a message in which another
//!    node announced itself publisher, unless that node's latest accepted message withdrew
//!    it (a standby heartbeat or a `LeaseRelease`). Claims after the claimant's own clock
//!    stepped are not timed (a forward step looks like time passing).
//!
//! Replay a failing seed with `RB_SIM_SEED=<seed> cargo test --test election_simulation`
//! (add `RB_SIM_TRACE=1` to print every event); run more seeds with `RB_SIM_SEEDS=<count>`.

mod sim_support;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::rc::Rc;
use std::time::Duration;

use rustbalance::clock::Timestamp;
use rustbalance::cluster::election::{Action, Election, ElectionTiming, Event, LeaseMessage, Role};
use rustbalance::cluster::{NodeId, Priority};
use sim_support::{env_number, SimRng};

/// Seeds run by default; `RB_SIM_SEEDS` overrides.
const DEFAULT_SEEDS: u64 = 2000;

/// Milliseconds of true time.
type Millis = u64;

const SECOND: Millis = 1000;
const MINUTE: Millis = 60 * SECOND;
const HOUR: Millis = 60 * MINUTE;

/// True time 0 on the nodes' wall clocks (November 2023).
const EPOCH: Millis = 1_700_000_000_000;

/// Largest delivery delay in normal times and in slow episodes.
const NORMAL_DELAY: Millis = 50;
const SLOW_DELAY: Millis = 1500;
/// Largest extra delay of a duplicated (replayed) message.
const REPLAY_DELAY: Millis = 8 * SECOND;
/// Share of messages duplicated, at all times.
const DUPLICATE_CHANCE: f64 = 0.05;
/// Good clocks are within this of true time.
const GOOD_SKEW: i64 = 1000;
/// Bad clocks are at least this far off, and this far apart from each other: far beyond the
/// 5 s warning limit plus replay and delivery delays and a good clock's own skew.
const BAD_SKEW: i64 = 20_000;

fn timing() -> ElectionTiming {
    ElectionTiming::default()
}

fn millis(duration: Duration) -> Millis {
    duration.as_millis() as Millis
}

/// How long after the last failure roles must have settled (see the module docs).
fn convergence() -> Millis {
    let t = timing();
    millis(t.publisher_timeout + t.takeover_grace) + 30 * SECOND
}

/// How long a publisher may not yet know of a node that just arrived (see the module docs).
fn arrival_slack() -> Millis {
    millis(timing().heartbeat_interval) + SLOW_DELAY + 2 * GOOD_SKEW as Millis + SECOND
}

#[test]
fn election_keeps_one_publisher_per_group_through_random_failures() {
    let trace = std::env::var_os("RB_SIM_TRACE").is_some();
    if let Some(seed) = env_number("RB_SIM_SEED") {
        match run_seed(seed, trace) {
            Ok(stats) => println!("seed {seed}: ok, {stats:?}"),
            Err(failure) => panic!("seed {seed} failed: {failure}"),
        }
        return;
    }
    let seeds = env_number("RB_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let results: Vec<(Stats, Vec<(u64, String)>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || {
                    let mut total = Stats::default();
                    let mut failures = Vec::new();
                    for seed in (worker..seeds).step_by(threads as usize) {
                        match run_seed(seed, false) {
                            Ok(stats) => total.add(&stats),
                            Err(failure) => failures.push((seed, failure)),
                        }
                    }
                    (total, failures)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("simulation worker panicked"))
            .collect()
    });
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for (stats, mut worker_failures) in results {
        total.add(&stats);
        failures.append(&mut worker_failures);
    }
    println!("{seeds} seeds: {total:?}");
    failures.sort();
    for (seed, failure) in &failures {
        println!("seed {seed} failed: {failure}\n  replay: RB_SIM_SEED={seed} RB_SIM_TRACE=1 cargo test --test election_simulation -- --nocapture");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first: seed {} ({}). Replay with RB_SIM_SEED=<seed>",
        failures.len(),
        failures[0].0,
        failures[0].1
    );
    assert!(
        total.stable_checks > seeds,
        "too few stable periods were checked: {total:?}"
    );
}

/// Totals over the seeds, printed so a reader sees how much was exercised.
#[derive(Debug, Default, Clone)]
struct Stats {
    simulated_hours: f64,
    events: u64,
    failures_injected: u64,
    stable_checks: u64,
    role_changes: u64,
    warnings: u64,
    /// Better candidates left standing by a publisher that was there first (rule 2).
    incumbents_kept: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.simulated_hours += other.simulated_hours;
        self.events += other.events;
        self.failures_injected += other.failures_injected;
        self.stable_checks += other.stable_checks;
        self.role_changes += other.role_changes;
        self.warnings += other.warnings;
        self.incumbents_kept += other.incumbents_kept;
    }
}

struct SimNode {
    id: NodeId,
    priority: Priority,
    /// Peers in its config (at least one other node when there are others; the rest it
    /// learns from their messages, as after a `join`).
    configured_peers: Vec<(NodeId, Priority)>,
    election: Option<Election>,
    /// Wall clock minus true time.
    skew: i64,
    /// Whether its Tor would work (can bootstrap and upload).
    tor_works: bool,
    /// What its election was last told.
    can_publish: bool,
    publishing: bool,
    publishing_since: Millis,
    /// Incremented on every crash and restart: events of an earlier life are void.
    life: u64,
    /// Incremented whenever its pending tick is superseded.
    tick_generation: u64,
    tick_at: Option<Millis>,
    partition: usize,
    /// Last restart, `can_publish` becoming true, or clock step.
    arrived_at: Millis,
    started_at: Millis,
    clock_stepped_at: Option<Millis>,
    /// Its election accepted a message since it started.
    heard_anyone: bool,
    /// Per node: when this node's election last accepted a message from it announcing itself
    /// publisher, if its latest accepted message did so.
    announced_publisher: Vec<Option<Millis>>,
}

impl SimNode {
    fn is_up(&self) -> bool {
        self.election.is_some()
    }

    fn rank(&self) -> (Priority, &NodeId) {
        (self.priority, &self.id)
    }
}

enum Pending {
    Tick {
        node: usize,
        generation: u64,
    },
    /// Shared between the copies of a broadcast, which keeps the queue's entries small.
    Deliver {
        to: usize,
        message: Rc<LeaseMessage>,
    },
    TorReady {
        node: usize,
        life: u64,
    },
}

struct Scheduled {
    at: Millis,
    sequence: u64,
    what: Pending,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

struct Sim {
    rng: SimRng,
    trace: bool,
    now: Millis,
    queue: BinaryHeap<Reverse<Scheduled>>,
    sequence: u64,
    nodes: Vec<SimNode>,
    loss: f64,
    slow: bool,
    last_failure: Millis,
    loss_ended_at: Millis,
    /// When the link between two nodes last came up.
    link_up_since: Vec<Vec<Millis>>,
    stats: Stats,
}

fn run_seed(seed: u64, trace: bool) -> Result<Stats, String> {
    let mut sim = Sim::new(seed, trace);
    let end = HOUR + sim.rng.range(0, 2 * HOUR);
    sim.start_all()?;
    while sim.now < end {
        sim.turbulent_phase()?;
        sim.stable_phase()?;
    }
    sim.stats.simulated_hours = sim.now as f64 / HOUR as f64;
    Ok(sim.stats)
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = SimRng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5DEE_CE66);
        let count = 1 + rng.below(7);
        let tied_priorities = rng.chance(0.3);
        let mut priorities: Vec<u32> = (1..=count as u32).collect();
        for i in (1..count).rev() {
            priorities.swap(i, rng.below(i + 1));
        }
        let members: Vec<(NodeId, Priority)> = (0..count)
            .map(|i| {
                // Letters in random order so that node-id order differs from index order.
                let letter = (b'a' + rng.below(26) as u8) as char;
                let id = NodeId::try_from(format!("node-{letter}{i}")).expect("valid node id");
                let priority = if tied_priorities {
                    1 + rng.below(2) as u32
                } else {
                    priorities[i]
                };
                (id, Priority::try_from(priority).expect("priority >= 1"))
            })
            .collect();
        let nodes = (0..count)
            .map(|i| {
                let mut configured_peers: Vec<_> = members
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, member)| member.clone())
                    .collect();
                while configured_peers.len() > 1 && rng.chance(0.15) {
                    configured_peers.remove(rng.below(configured_peers.len()));
                }
                SimNode {
                    id: members[i].0.clone(),
                    priority: members[i].1,
                    configured_peers,
                    election: None,
                    skew: 0,
                    tor_works: rng.chance(0.95),
                    can_publish: false,
                    publishing: false,
                    publishing_since: 0,
                    life: 0,
                    tick_generation: 0,
                    tick_at: None,
                    partition: 0,
                    arrived_at: 0,
                    started_at: 0,
                    clock_stepped_at: None,
                    heard_anyone: false,
                    announced_publisher: vec![None; count],
                }
            })
            .collect();
        let mut sim = Sim {
            rng,
            trace,
            now: 0,
            queue: BinaryHeap::new(),
            sequence: 0,
            nodes,
            loss: 0.0,
            slow: false,
            last_failure: 0,
            loss_ended_at: 0,
            link_up_since: vec![vec![0; count]; count],
            stats: Stats::default(),
        };
        for node in 0..count {
            sim.nodes[node].skew = sim.random_skew(node);
        }
        sim
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>9.3} s  {}", self.now as f64 / 1000.0, what());
        }
    }

    /// A clock offset: usually good, sometimes far off (distinct per node, see module docs).
    fn random_skew(&mut self, node: usize) -> i64 {
        if self.rng.chance(0.8) {
            self.rng.range(0, 2 * GOOD_SKEW as u64) as i64 - GOOD_SKEW
        } else {
            let magnitude = BAD_SKEW + BAD_SKEW * node as i64;
            if self.rng.chance(0.5) {
                magnitude
            } else {
                -magnitude
            }
        }
    }

    fn local_now(&self, node: usize) -> Timestamp {
        let local = EPOCH as i64 + self.now as i64 + self.nodes[node].skew;
        Timestamp::from_unix_millis(local as u64)
    }

    fn schedule(&mut self, at: Millis, what: Pending) {
        self.sequence += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            sequence: self.sequence,
            what,
        }));
    }

    fn start_all(&mut self) -> Result<(), String> {
        for node in 0..self.nodes.len() {
            let at = self.now + self.rng.range(0, 20 * SECOND);
            self.run_until(at)?;
            self.restart(node)?;
        }
        Ok(())
    }

    fn turbulent_phase(&mut self) -> Result<(), String> {
        let length = if self.rng.chance(0.15) {
            0
        } else {
            self.rng.range(10 * SECOND, 10 * MINUTE)
        };
        let end = self.now + length;
        loop {
            let next = self.now + self.rng.range(SECOND, 60 * SECOND);
            if next >= end {
                break;
            }
            self.run_until(next)?;
            self.inject_failure()?;
        }
        self.run_until(end)?;
        if self.loss > 0.0 {
            self.loss = 0.0;
            self.loss_ended_at = self.now;
            self.failure(|| "message loss ends".into());
        }
        Ok(())
    }

    fn stable_phase(&mut self) -> Result<(), String> {
        let end = self.now + self.rng.range(2 * MINUTE, 25 * MINUTE);
        self.run_until(end)?;
        if self.quiet_for() >= convergence() {
            self.check_groups()?;
            self.stats.stable_checks += 1;
        }
        Ok(())
    }

    /// How long nothing has failed: zero while messages are being lost.
    fn quiet_for(&self) -> Millis {
        if self.loss > 0.0 {
            0
        } else {
            self.now - self.last_failure
        }
    }

    /// Records that something failed (or recovered) now.
    fn failure(&mut self, what: impl FnOnce() -> String) {
        self.last_failure = self.now;
        self.stats.failures_injected += 1;
        self.log(|| format!("FAILURE {}", what()));
    }

    fn inject_failure(&mut self) -> Result<(), String> {
        let node = self.rng.below(self.nodes.len());
        match self.rng.below(100) {
            0..=15 if self.nodes[node].is_up() => self.crash(node),
            16..=24 if self.nodes[node].is_up() => self.shut_down(node)?,
            0..=39 if !self.nodes[node].is_up() => self.restart(node)?,
            40..=54 => self.repartition(),
            55..=61 => {
                self.loss = [0.1, 0.3, 0.6, 0.9][self.rng.below(4)];
                let loss = self.loss;
                self.failure(|| format!("message loss {loss}"));
            }
            62..=71 => self.step_clock(node)?,
            72..=89 => self.flip_tor(node)?,
            90..=99 => {
                // Delays stay within the bounds the invariants allow: not a failure.
                self.slow = !self.slow;
                let slow = self.slow;
                self.log(|| format!("slow network: {slow}"));
            }
            _ => {}
        }
        Ok(())
    }

    fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.election = None;
        n.publishing = false;
        n.can_publish = false;
        n.life += 1;
        n.tick_at = None;
        let id = n.id.clone();
        self.failure(|| format!("{id} crashes"));
    }

    fn shut_down(&mut self, node: usize) -> Result<(), String> {
        let id = self.nodes[node].id.clone();
        self.failure(|| format!("{id} shuts down cleanly"));
        self.handle(node, Event::Shutdown)?;
        self.crash(node);
        Ok(())
    }

    fn restart(&mut self, node: usize) -> Result<(), String> {
        let now = self.local_now(node);
        let n = &mut self.nodes[node];
        n.election = Some(Election::new(
            n.id.clone(),
            n.priority,
            n.configured_peers.clone(),
            timing(),
            now,
        ));
        n.can_publish = false;
        n.life += 1;
        n.arrived_at = self.now;
        n.started_at = self.now;
        n.heard_anyone = false;
        n.announced_publisher.iter_mut().for_each(|a| *a = None);
        let (id, life, tor_works) = (n.id.clone(), n.life, n.tor_works);
        self.failure(|| format!("{id} starts"));
        if tor_works {
            let ready = self.now + self.rng.range(500, 20 * SECOND);
            self.schedule(ready, Pending::TorReady { node, life });
        }
        self.handle(node, Event::Tick)
    }

    fn flip_tor(&mut self, node: usize) -> Result<(), String> {
        let n = &mut self.nodes[node];
        n.tor_works = !n.tor_works;
        let (id, works, life) = (n.id.clone(), n.tor_works, n.life);
        self.failure(|| format!("{id}'s Tor works: {works}"));
        if !self.nodes[node].is_up() {
            return Ok(());
        }
        if works {
            let ready = self.now + self.rng.range(500, 10 * SECOND);
            self.schedule(ready, Pending::TorReady { node, life });
            Ok(())
        } else if self.nodes[node].can_publish {
            self.nodes[node].can_publish = false;
            self.handle(node, Event::LocalHealth { can_publish: false })
        } else {
            Ok(())
        }
    }

    fn step_clock(&mut self, node: usize) -> Result<(), String> {
        let before = self.connectivity();
        let skew = self.random_skew(node);
        self.nodes[node].skew = skew;
        self.nodes[node].arrived_at = self.now;
        self.nodes[node].clock_stepped_at = Some(self.now);
        let id = self.nodes[node].id.clone();
        self.failure(|| format!("{id}'s clock steps to {skew:+} ms"));
        self.links_changed(&before);
        if self.nodes[node].is_up() {
            // Its timers now run on another clock.
            self.nodes[node].tick_generation += 1;
            self.nodes[node].tick_at = None;
            self.handle(node, Event::Tick)?;
        }
        Ok(())
    }

    fn repartition(&mut self) {
        let before = self.connectivity();
        let sides = 1 + self.rng.below(3);
        for node in 0..self.nodes.len() {
            self.nodes[node].partition = self.rng.below(sides);
        }
        let sides: Vec<usize> = self.nodes.iter().map(|n| n.partition).collect();
        self.failure(|| format!("partition {sides:?}"));
        self.links_changed(&before);
    }

    /// Which pairs of nodes can talk (running or not).
    fn connectivity(&self) -> Vec<Vec<bool>> {
        let count = self.nodes.len();
        (0..count)
            .map(|i| (0..count).map(|j| self.can_talk(i, j)).collect())
            .collect()
    }

    fn can_talk(&self, i: usize, j: usize) -> bool {
        let (a, b) = (&self.nodes[i], &self.nodes[j]);
        a.partition == b.partition
    }

    fn links_changed(&mut self, before: &[Vec<bool>]) {
        let after = self.connectivity();
        for (i, row) in after.iter().enumerate() {
            for (j, &up) in row.iter().enumerate() {
                if up && !before[i][j] {
                    self.link_up_since[i][j] = self.now;
                }
            }
        }
    }

    /// Processes every scheduled event up to `until`, then sets the time to `until`.
    fn run_until(&mut self, until: Millis) -> Result<(), String> {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Some(Reverse(event)) = self.queue.pop() else {
                break;
            };
            self.now = event.at;
            self.stats.events += 1;
            match event.what {
                Pending::Tick { node, generation } => {
                    let n = &mut self.nodes[node];
                    if n.is_up() && n.tick_generation == generation {
                        n.tick_at = None;
                        self.handle(node, Event::Tick)?;
                    }
                }
                Pending::Deliver { to, message } => {
                    if self.nodes[to].is_up() {
                        self.handle(to, Event::Heard(LeaseMessage::clone(&message)))?;
                    }
                }
                Pending::TorReady { node, life } => {
                    let n = &self.nodes[node];
                    if n.is_up() && n.life == life && n.tor_works && !n.can_publish {
                        self.nodes[node].can_publish = true;
                        self.nodes[node].arrived_at = self.now;
                        let id = self.nodes[node].id.clone();
                        self.failure(|| format!("{id} can publish"));
                        self.handle(node, Event::LocalHealth { can_publish: true })?;
                    }
                }
            }
        }
        self.now = until;
        Ok(())
    }

    /// Feeds `event` to a running node's election and carries out its actions.
    fn handle(&mut self, node: usize, event: Event) -> Result<(), String> {
        let now = self.local_now(node);
        let sender = match &event {
            Event::Heard(message) => self.nodes.iter().position(|n| n.id == *message.from()),
            _ => None,
        };
        let Some(election) = self.nodes[node].election.as_mut() else {
            return Ok(());
        };
        let actions = election.handle(event, now);
        if let Some(sender) = sender {
            self.observe_acceptance(node, sender);
        }
        for action in actions {
            match action {
                Action::BroadcastHeartbeat(m) => self.broadcast(node, LeaseMessage::Heartbeat(m)),
                Action::BroadcastLeaseClaim(m) => self.broadcast(node, LeaseMessage::LeaseClaim(m)),
                Action::BroadcastLeaseRelease(m) => {
                    self.broadcast(node, LeaseMessage::LeaseRelease(m))
                }
                Action::StartPublishing => self.set_publishing(node, true)?,
                Action::StopPublishing => self.set_publishing(node, false)?,
                Action::Warn(warning) => {
                    self.stats.warnings += 1;
                    let id = self.nodes[node].id.clone();
                    self.log(|| format!("{id} warns: {warning}"));
                }
            }
        }
        let n = &self.nodes[node];
        if let Some(election) = &n.election {
            if (election.role() == Role::Publisher) != n.publishing {
                return Err(format!(
                    "{}: role() is {} but the actions said publishing = {}",
                    n.id,
                    election.role(),
                    n.publishing
                ));
            }
        }
        self.schedule_tick(node);
        Ok(())
    }

    /// Records whether `node`'s election accepted the message `sender` just sent it, and what
    /// it learned from it (for check 7), through the status view.
    fn observe_acceptance(&mut self, node: usize, sender: usize) {
        let now = self.local_now(node);
        let sender_id = &self.nodes[sender].id;
        let Some(election) = &self.nodes[node].election else {
            return;
        };
        let accepted = election
            .peers(now)
            .find(|view| view.node_id == sender_id)
            .filter(|view| view.last_heard == Some(now))
            .map(|view| view.role == Role::Publisher);
        if let Some(announced) = accepted {
            let true_now = self.now;
            let n = &mut self.nodes[node];
            n.heard_anyone = true;
            n.announced_publisher[sender] = announced.then_some(true_now);
        }
    }

    /// Checks 6 and 7 of the module docs for a claim by `node` now.
    fn check_claim(&self, node: usize) -> Result<(), String> {
        let q = &self.nodes[node];
        let t = timing();
        if self.loss == 0.0 {
            for (p, other) in self.nodes.iter().enumerate() {
                if p == node || !other.is_up() || !other.publishing || !self.can_talk(p, node) {
                    continue;
                }
                let known_since = other
                    .publishing_since
                    .max(other.arrived_at)
                    .max(q.arrived_at)
                    .max(self.link_up_since[p][node])
                    .max(self.loss_ended_at);
                if self.now >= known_since + arrival_slack() {
                    return Err(format!(
                        "{} claimed at {:.1} s although {} has been publishing within its reach since {:.1} s",
                        q.id,
                        self.now as f64 / 1000.0,
                        other.id,
                        known_since as f64 / 1000.0
                    ));
                }
            }
        }
        if q.clock_stepped_at
            .is_some_and(|stepped| stepped >= q.started_at)
        {
            return Ok(());
        }
        let listen = if q.configured_peers.is_empty() {
            0
        } else if q.heard_anyone {
            millis(t.publisher_timeout)
        } else {
            millis(t.publisher_timeout + t.takeover_grace)
        };
        if self.now < q.started_at + listen {
            return Err(format!(
                "{} claimed {:.1} s after starting, before listening for {:.0} s",
                q.id,
                (self.now - q.started_at) as f64 / 1000.0,
                listen as f64 / 1000.0
            ));
        }
        let wait = millis(t.publisher_timeout + t.takeover_grace);
        for (p, announced) in q.announced_publisher.iter().enumerate() {
            if let Some(heard) = *announced {
                let stepped_since = q.clock_stepped_at.is_some_and(|stepped| stepped >= heard);
                if !stepped_since && self.now < heard + wait {
                    return Err(format!(
                        "{} claimed {:.1} s after {} last announced itself publisher to it (the rule is {:.0} s)",
                        q.id,
                        (self.now - heard) as f64 / 1000.0,
                        self.nodes[p].id,
                        wait as f64 / 1000.0
                    ));
                }
            }
        }
        Ok(())
    }

    fn set_publishing(&mut self, node: usize, publishing: bool) -> Result<(), String> {
        if publishing {
            self.check_claim(node)?;
        }
        let since_failure = self.quiet_for();
        let n = &mut self.nodes[node];
        if n.publishing == publishing {
            return Err(format!(
                "{} was told publishing = {publishing} twice in a row",
                n.id
            ));
        }
        n.publishing = publishing;
        n.publishing_since = self.now;
        self.stats.role_changes += 1;
        let id = n.id.clone();
        self.log(|| format!("{id} publishing: {publishing}"));
        if since_failure > convergence() {
            return Err(format!(
                "{id} {} publishing at {:.1} s, {:.1} s after the last failure: roles must \
                 not change while nothing fails",
                if publishing { "started" } else { "stopped" },
                self.now as f64 / 1000.0,
                since_failure as f64 / 1000.0
            ));
        }
        Ok(())
    }

    fn broadcast(&mut self, from: usize, mut message: LeaseMessage) {
        // The wire carries whole seconds.
        let sent = match &mut message {
            LeaseMessage::Heartbeat(m) => &mut m.timestamp,
            LeaseMessage::LeaseClaim(m) => &mut m.timestamp,
            LeaseMessage::LeaseRelease(m) => &mut m.timestamp,
        };
        *sent = Timestamp::from_unix_secs(sent.as_unix_secs());
        self.log(|| format!("{} sends {message:?}", self.nodes[from].id));
        let message = Rc::new(message);
        let max_delay = if self.slow { SLOW_DELAY } else { NORMAL_DELAY };
        for to in 0..self.nodes.len() {
            if to == from || self.nodes[to].partition != self.nodes[from].partition {
                continue;
            }
            if self.rng.chance(self.loss) {
                continue;
            }
            let delay = self.rng.range(1, max_delay);
            if self.rng.chance(DUPLICATE_CHANCE) {
                let replay = self.now + delay + self.rng.range(0, REPLAY_DELAY);
                self.schedule(
                    replay,
                    Pending::Deliver {
                        to,
                        message: Rc::clone(&message),
                    },
                );
            }
            self.schedule(
                self.now + delay,
                Pending::Deliver {
                    to,
                    message: Rc::clone(&message),
                },
            );
        }
    }

    /// Schedules the node's next tick at its `poll_timeout`, unless an earlier one is pending.
    fn schedule_tick(&mut self, node: usize) {
        let local_now = self.local_now(node);
        let n = &self.nodes[node];
        let Some(election) = &n.election else {
            return;
        };
        let poll = election.poll_timeout(local_now).as_unix_millis() as i64;
        let at = ((poll - n.skew - EPOCH as i64).max(self.now as i64)) as Millis;
        if n.tick_at.is_some_and(|pending| pending <= at) {
            return;
        }
        let n = &mut self.nodes[node];
        n.tick_generation += 1;
        n.tick_at = Some(at);
        let generation = n.tick_generation;
        self.schedule(at, Pending::Tick { node, generation });
    }

    /// Invariants 1 to 3 of the module docs.
    fn check_groups(&mut self) -> Result<(), String> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.is_up() {
                groups.entry(node.partition).or_default().push(index);
            }
        }
        let slack = arrival_slack();
        for members in groups.values() {
            let names: Vec<&str> = members.iter().map(|&m| self.nodes[m].id.as_str()).collect();
            let publishers: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&m| self.nodes[m].publishing)
                .collect();
            let candidates: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&m| self.nodes[m].can_publish)
                .collect();
            let publisher = match (publishers.as_slice(), candidates.is_empty()) {
                ([], true) => None,
                ([only], _) if candidates.is_empty() || self.nodes[*only].can_publish => {
                    Some(*only)
                }
                _ => {
                    return Err(format!(
                        "group {names:?} has candidates {:?} but publishers {:?}",
                        self.names(&candidates),
                        self.names(&publishers)
                    ))
                }
            };
            if let Some(p) = publisher {
                let pub_node = &self.nodes[p];
                for &b in &candidates {
                    let better = &self.nodes[b];
                    if better.rank() >= pub_node.rank() {
                        continue;
                    }
                    let arrival = better
                        .arrived_at
                        .max(self.link_up_since[b][p])
                        .max(self.loss_ended_at);
                    // A claim right after the claimant's own clock stepped forward is not
                    // timed (see 7): the step looks like time passing.
                    let claimed_after_own_step = pub_node
                        .clock_stepped_at
                        .is_some_and(|step| pub_node.publishing_since <= step + slack);
                    if pub_node.publishing_since >= arrival + slack && !claimed_after_own_step {
                        return Err(format!(
                            "group {names:?}: {} (priority {}) publishes since {:.1} s although \
                             {} (priority {}) was there since {:.1} s",
                            pub_node.id,
                            pub_node.priority,
                            pub_node.publishing_since as f64 / 1000.0,
                            better.id,
                            better.priority,
                            arrival as f64 / 1000.0
                        ));
                    }
                    self.stats.incumbents_kept += 1;
                }
            }
            let expected = publisher.map(|p| &self.nodes[p].id);
            for &m in members {
                let local_now = self.local_now(m);
                let n = &self.nodes[m];
                let seen = n.election.as_ref().and_then(|e| e.publisher(local_now));
                if seen != expected {
                    return Err(format!(
                        "group {names:?}: {} names {seen:?} as publisher, expected {expected:?}",
                        n.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn names(&self, nodes: &[usize]) -> Vec<&str> {
        nodes.iter().map(|&n| self.nodes[n].id.as_str()).collect()
    }
}
