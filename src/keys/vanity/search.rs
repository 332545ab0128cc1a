//! The multi-threaded driver: one independent walk per thread, a shared counter, a stop flag,
//! and progress reports on the calling thread.
//!
//! Threads share nothing but the read-only offset table and a few atomics touched once per
//! batch (about every 0.1 ms), so the rate grows linearly with cores. Each thread starts from
//! its own random key, so no two threads ever try the same candidate.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::engine::{Arithmetic, Engine, Serial};
#[cfg(target_arch = "x86_64")]
use super::field_avx2::Avx2;
use super::walk::{OffsetTable, Walk, PAIRS_PER_BATCH};
use super::{SearchError, VanityPrefix};
use crate::keys::MasterKey;

/// How often [`search`] calls its progress function.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// In a benchmark every hit is counted, but a thread fully re-derives (with a full scalar
/// multiplication) at most one hit per this many batches, so that a short prefix with hits in
/// every batch still measures the search rather than the verification. Rare hits are all
/// verified.
const BENCH_BATCHES_PER_VERIFICATION: u64 = 64;

/// A snapshot of a running search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Candidates tried so far, all threads together.
    pub tries: u64,
    /// Time since the search started.
    pub elapsed: Duration,
    /// Average number of tries to a hit: 32^(prefix length).
    pub expected_tries: u64,
    /// Threads searching.
    pub threads: usize,
}

impl Progress {
    /// Candidates per second so far, all threads together (0 before any batch is done).
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.tries as f64 / seconds
        } else {
            0.0
        }
    }

    /// Expected time from start to a hit at the rate measured so far; `None` until the rate is
    /// known. It is an average: a search can take several times longer, or end at once.
    pub fn expected_duration(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64(self.expected_tries as f64 / rate))
    }
}

/// The result of [`bench()`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchReport {
    /// The field arithmetic this processor ran.
    pub arithmetic: Arithmetic,
    pub threads: usize,
    /// Candidates tried by all threads together.
    pub candidates: u64,
    /// Wall-clock time the threads ran.
    pub elapsed: Duration,
    /// Candidates that matched the prefix.
    pub hits: u64,
    /// Of those, how many were rebuilt and verified like a real hit (all passed).
    pub verified_hits: u64,
}

impl BenchReport {
    /// Candidates per second, all threads together.
    pub fn rate(&self) -> f64 {
        self.candidates as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Candidates per second per thread (per core when threads ≤ cores).
    pub fn rate_per_thread(&self) -> f64 {
        self.rate() / self.threads as f64
    }
}

/// The field arithmetic a search on this processor runs: AVX2 if it has it.
pub fn arithmetic() -> Arithmetic {
    #[cfg(target_arch = "x86_64")]
    if Avx2::detect().is_some() {
        return Arithmetic::Avx2;
    }
    Arithmetic::Portable
}

impl fmt::Display for BenchReport {
    /// For example `20.4 M candidates/s per thread, 40.8 M candidates/s in total (2 threads,
    /// AVX2 arithmetic, 10.0 s, 37 hits)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} M candidates/s per thread, {:.1} M candidates/s in total \
             ({} thread{}, {} arithmetic, {:.1} s, {} hits)",
            self.rate_per_thread() / 1e6,
            self.rate() / 1e6,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.arithmetic,
            self.elapsed.as_secs_f64(),
            self.hits,
        )
    }
}

/// The number of threads to use by default: one per available core.
pub fn default_threads() -> NonZeroUsize {
    thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Searches for a master key whose address starts with `prefix`, on `threads` threads, until
/// one is found or `stop` becomes true (then [`SearchError::Stopped`]; set it from a Ctrl-C
/// handler). `progress` is called on the calling thread every [`PROGRESS_INTERVAL`] and once
/// more at the end. The key returned has been rebuilt and verified (see `walk::Walk::key_at`).
pub fn search(
    prefix: &VanityPrefix,
    threads: NonZeroUsize,
    stop: &AtomicBool,
    progress: impl FnMut(&Progress),
) -> Result<MasterKey, SearchError> {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = Avx2::detect() {
        return search_on(avx2, prefix, threads, stop, progress);
    }
    search_on(Serial, prefix, threads, stop, progress)
}

fn search_on<E: RunWorker>(
    engine: E,
    prefix: &VanityPrefix,
    threads: NonZeroUsize,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<MasterKey, SearchError> {
    let shared = Shared::new(engine, prefix, stop);
    let started = Instant::now();
    let snapshot = |shared: &Shared<E>| Progress {
        tries: shared.tries.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        expected_tries: prefix.expected_tries(),
        threads: threads.get(),
    };
    let outcome = run_workers(&shared, threads, Mode::FirstHit, |results| {
        let mut next_report = started + PROGRESS_INTERVAL;
        loop {
            let wait = next_report.saturating_duration_since(Instant::now());
            match results.recv_timeout(wait) {
                Ok(outcome) => return outcome,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    progress(&snapshot(&shared));
                    next_report += PROGRESS_INTERVAL;
                }
                // Every thread has ended without a result: they saw the stop flag.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SearchError::Stopped {
                        tries: shared.tries.load(Ordering::Relaxed),
                    })
                }
            }
        }
    });
    progress(&snapshot(&shared));
    outcome
}

/// Runs the search for `duration` without stopping at hits, and reports the rate. `stop`
/// ends it early (the report then covers the time run).
pub fn bench(
    prefix: &VanityPrefix,
    duration: Duration,
    threads: NonZeroUsize,
    stop: &AtomicBool,
) -> Result<BenchReport, SearchError> {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = Avx2::detect() {
        return bench_on(avx2, prefix, duration, threads, stop);
    }
    bench_on(Serial, prefix, duration, threads, stop)
}

fn bench_on<E: RunWorker>(
    engine: E,
    prefix: &VanityPrefix,
    duration: Duration,
    threads: NonZeroUsize,
    stop: &AtomicBool,
) -> Result<BenchReport, SearchError> {
    let shared = Shared::new(engine, prefix, stop);
    let started = Instant::now();
    run_workers(&shared, threads, Mode::Bench, |results| {
        let deadline = started + duration;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match results.recv_timeout((deadline - now).min(PROGRESS_INTERVAL)) {
                // In a benchmark a thread only sends when it fails.
                Ok(failure) => return failure.map(|_| ()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    })?;
    Ok(BenchReport {
        arithmetic: E::ARITHMETIC,
        threads: threads.get(),
        candidates: shared.tries.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        hits: shared.hits.load(Ordering::Relaxed),
        verified_hits: shared.verified_hits.load(Ordering::Relaxed),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Stop at the first verified hit and send it.
    FirstHit,
    /// Count hits, verify a sample, never stop on a hit.
    Bench,
}

/// What the threads share.
struct Shared<'a, E: Engine> {
    table: OffsetTable<E>,
    prefix: &'a VanityPrefix,
    /// Ctrl-C (set by the caller).
    stop: &'a AtomicBool,
    /// The search is over (hit sent, failure, or benchmark deadline): set by the driver.
    halt: AtomicBool,
    tries: AtomicU64,
    hits: AtomicU64,
    verified_hits: AtomicU64,
}

impl<'a, E: Engine> Shared<'a, E> {
    fn new(engine: E, prefix: &'a VanityPrefix, stop: &'a AtomicBool) -> Shared<'a, E> {
        Shared {
            table: OffsetTable::new(engine, PAIRS_PER_BATCH),
            prefix,
            stop,
            halt: AtomicBool::new(false),
            tries: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            verified_hits: AtomicU64::new(0),
        }
    }

    fn should_end(&self) -> bool {
        self.halt.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed)
    }
}

type Outcome = Result<MasterKey, SearchError>;

/// Starts the threads, lets `drive` watch them through the channel they report on, then halts
/// and joins them all before returning `drive`'s result.
fn run_workers<T, E: RunWorker>(
    shared: &Shared<E>,
    threads: NonZeroUsize,
    mode: Mode,
    drive: impl FnOnce(&mpsc::Receiver<Outcome>) -> Result<T, SearchError>,
) -> Result<T, SearchError> {
    thread::scope(|scope| {
        let (sender, results) = mpsc::channel();
        for index in 0..threads.get() {
            let sender = sender.clone();
            let spawned = thread::Builder::new()
                .name(format!("vanity-{index}"))
                .spawn_scoped(scope, move || E::run_worker(shared, mode, &sender));
            if let Err(error) = spawned {
                shared.halt.store(true, Ordering::Relaxed);
                return Err(SearchError::SpawnThread(error));
            }
        }
        drop(sender);
        let outcome = drive(&results);
        shared.halt.store(true, Ordering::Relaxed);
        outcome
    })
}

/// How a thread enters [`worker`] for each engine.
trait RunWorker: Engine {
    fn run_worker(shared: &Shared<Self>, mode: Mode, results: &mpsc::Sender<Outcome>);
}

impl RunWorker for Serial {
    fn run_worker(shared: &Shared<Self>, mode: Mode, results: &mpsc::Sender<Outcome>) {
        worker(shared, mode, results)
    }
}

#[cfg(target_arch = "x86_64")]
impl RunWorker for Avx2 {
    fn run_worker(shared: &Shared<Self>, mode: Mode, results: &mpsc::Sender<Outcome>) {
        // SAFETY: an `Avx2` value (here inside the table) exists only once AVX2 is detected.
        unsafe { worker_avx2(shared, mode, results) }
    }
}

/// [`worker`], compiled with AVX2 enabled so that the vector arithmetic inlined into it
/// becomes AVX2 instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn worker_avx2(shared: &Shared<Avx2>, mode: Mode, results: &mpsc::Sender<Outcome>) {
    worker(shared, mode, results)
}

/// One thread: walks batch after batch until the search ends; restarts from a new random key
/// in the (astronomically rare) case that its scalar leaves the clamped range.
#[inline(always)]
fn worker<E: Engine>(shared: &Shared<E>, mode: Mode, results: &mpsc::Sender<Outcome>) {
    // Send errors only fail once the driver has stopped listening, when nothing is wanted.
    let report = |outcome: Outcome| {
        shared.halt.store(true, Ordering::Relaxed);
        let _ = results.send(outcome);
    };
    let batch_len = shared.table.batch_len();
    let filter = shared.prefix.filter();
    let mut matches: Vec<u64> = Vec::new();
    let mut batches: u64 = 0;
    let mut next_verification: u64 = 0;
    'walks: while !shared.should_end() {
        let mut walk = match Walk::new(&shared.table) {
            Ok(walk) => walk,
            Err(error) => return report(Err(error)),
        };
        while !shared.should_end() {
            walk.next_batch(&shared.table, &filter, |_, k| matches.push(k));
            shared.tries.fetch_add(batch_len, Ordering::Relaxed);
            batches += 1;
            if matches.is_empty() {
                continue;
            }
            if mode == Mode::Bench {
                shared
                    .hits
                    .fetch_add(matches.len() as u64, Ordering::Relaxed);
                if batches < next_verification {
                    matches.clear();
                    continue;
                }
                next_verification = batches + BENCH_BATCHES_PER_VERIFICATION;
                matches.truncate(1);
            }
            for k in matches.drain(..) {
                match walk.key_at(k, shared.prefix) {
                    Ok(Some(key)) if mode == Mode::FirstHit => return report(Ok(key)),
                    Ok(Some(_)) => {
                        shared.verified_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => continue 'walks,
                    Err(bug) => return report(Err(bug)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_verified_key_for_a_short_prefix() {
        let prefix: VanityPrefix = "ab".parse().unwrap();
        let stop = AtomicBool::new(false);
        let mut reports = 0;
        let key = search(&prefix, NonZeroUsize::new(2).unwrap(), &stop, |_| {
            reports += 1
        })
        .unwrap();
        assert!(key.onion_address().to_string().starts_with("ab"));
        assert!(reports >= 1, "a final progress report is always made");
        // The key is what it claims to be: rebuilt from its own secret it has the same address.
        let rebuilt = MasterKey::from_expanded(key.expanded_secret()).unwrap();
        assert_eq!(rebuilt.public_key(), key.public_key());
    }

    #[test]
    fn stop_flag_ends_a_hopeless_search() {
        let prefix: VanityPrefix = "abcdefghijkl".parse().unwrap();
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let result = search(&prefix, NonZeroUsize::new(2).unwrap(), &stop, |progress| {
            if progress.elapsed > Duration::from_millis(300) {
                stop.store(true, Ordering::Relaxed);
            }
        });
        assert!(matches!(result, Err(SearchError::Stopped { tries }) if tries > 0));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn bench_counts_and_verifies_hits() {
        let prefix: VanityPrefix = "a".parse().unwrap();
        let stop = AtomicBool::new(false);
        let report = bench(
            &prefix,
            Duration::from_millis(500),
            NonZeroUsize::MIN,
            &stop,
        )
        .unwrap();
        assert!(report.candidates > 0);
        // One candidate in 32 starts with "a"; allow wide statistical margins.
        let expected = report.candidates / 32;
        assert!(
            report.hits > expected / 2 && report.hits < expected * 2,
            "{report:?}"
        );
        assert!(report.rate() > 0.0);
    }

    #[test]
    fn progress_estimates_time_from_the_measured_rate() {
        let progress = Progress {
            tries: 2_000_000,
            elapsed: Duration::from_secs(1),
            expected_tries: 32u64.pow(5),
            threads: 2,
        };
        assert_eq!(progress.rate(), 2e6);
        let expected = progress.expected_duration().unwrap().as_secs_f64();
        assert!((expected - 32f64.powi(5) / 2e6).abs() < 1e-9);
    }
}
