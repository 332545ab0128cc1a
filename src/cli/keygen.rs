//! `rustbalance keygen`: a new master key, random or with a vanity prefix, written as tor
//! writes a HiddenServiceDir.
//!
//! The vanity search itself lives in `keys::vanity`; this is the operator's side of it: the
//! expected number of tries before starting, the expected time once the speed is known, a
//! progress line on a terminal (plain periodic lines otherwise, e.g. under systemd), and
//! Ctrl-C or SIGTERM stopping the search without writing anything.

use std::io::{IsTerminal, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CliError, KeygenArgs};
use crate::keys::files::write_hidden_service_dir;
use crate::keys::vanity::{self, Progress, SearchError, VanityPrefix};
use crate::keys::MasterKey;

/// How often a progress line is printed when stderr is not a terminal.
const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The expected time is announced once the speed has been measured this long.
const RATE_MEASURED_AFTER: Duration = Duration::from_secs(1);

pub(super) fn run(args: KeygenArgs) -> Result<(), CliError> {
    let key = match &args.vanity_prefix {
        None => MasterKey::generate()?,
        Some(prefix) => {
            let prefix: VanityPrefix = prefix.parse()?;
            let threads = args.threads.unwrap_or_else(vanity::default_threads);
            let stop = stop_on_signal()?;
            if let Some(seconds) = args.bench {
                let duration = Duration::from_secs(seconds.get());
                let report =
                    vanity::bench(&prefix, duration, threads, &stop).map_err(search_error)?;
                println!("{report}");
                return Ok(());
            }
            search(&prefix, threads, &stop)?
        }
    };
    let address = key.onion_address();
    let dir = args
        .out
        .unwrap_or_else(|| PathBuf::from(address.to_string()));
    write_hidden_service_dir(&dir, &key)?;
    println!("{address}");
    eprintln!(
        "rustbalance: key written to {} (keep it secret: it is the service's identity)",
        dir.display()
    );
    Ok(())
}

pub(super) fn search(
    prefix: &VanityPrefix,
    threads: NonZeroUsize,
    stop: &AtomicBool,
) -> Result<MasterKey, CliError> {
    eprintln!(
        "rustbalance: searching for an address starting with {:?}: {} tries expected on average, {} thread(s), {} arithmetic",
        prefix.as_str(),
        group_thousands(prefix.expected_tries()),
        threads,
        vanity::arithmetic()
    );
    let mut display = ProgressDisplay::new(std::io::stderr().is_terminal());
    let result = vanity::search(prefix, threads, stop, |progress| display.update(progress));
    display.finish();
    result.map_err(search_error)
}

fn search_error(err: SearchError) -> CliError {
    match err {
        SearchError::Stopped { .. } => CliError::Interrupted(err),
        other => CliError::Search(other),
    }
}

/// Set the returned flag on the first SIGINT (Ctrl-C) or SIGTERM. The search threads check it
/// after every batch, so they stop within a fraction of a millisecond.
pub(super) fn stop_on_signal() -> Result<Arc<AtomicBool>, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(CliError::Signals)?;
    // The handlers must exist before the search starts, or an early Ctrl-C kills the process
    // the default way; create them here and only wait on them in the thread.
    let signals = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    });
    let (mut interrupt, mut terminate) = signals.map_err(CliError::Signals)?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
    Ok(stop)
}

/// The progress of a running search as an operator sees it.
struct ProgressDisplay {
    terminal: bool,
    expected_time_announced: bool,
    last_line: Option<Instant>,
    drawn: bool,
}

impl ProgressDisplay {
    fn new(terminal: bool) -> Self {
        ProgressDisplay {
            terminal,
            expected_time_announced: false,
            last_line: None,
            drawn: false,
        }
    }

    fn update(&mut self, progress: &Progress) {
        let mut stderr = std::io::stderr().lock();
        if !self.expected_time_announced && progress.elapsed >= RATE_MEASURED_AFTER {
            if let Some(expected) = progress.expected_duration() {
                self.expected_time_announced = true;
                if self.drawn {
                    let _ = writeln!(stderr);
                    self.drawn = false;
                }
                let _ = writeln!(
                    stderr,
                    "rustbalance: {:.1} M candidates/s: about {} expected",
                    progress.rate() / 1e6,
                    human_duration(expected)
                );
            }
        }
        let line = format!(
            "{:.1} M candidates/s, {} tried, {} elapsed, {} expected",
            progress.rate() / 1e6,
            group_thousands(progress.tries),
            human_duration(progress.elapsed),
            progress
                .expected_duration()
                .map(human_duration)
                .unwrap_or_else(|| "?".into())
        );
        if self.terminal {
            // Redraw in place: carriage return, the line, clear to the end of the line.
            let _ = write!(stderr, "\r{line}\x1b[K");
            let _ = stderr.flush();
            self.drawn = true;
        } else if self
            .last_line
            .is_none_or(|last| last.elapsed() >= LOG_PROGRESS_EVERY)
        {
            let _ = writeln!(stderr, "rustbalance: {line}");
            self.last_line = Some(Instant::now());
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}

/// `1234567` → `1,234,567`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration as a person wants to read it: its two largest units (`3m 12s`, `2h 5m`,
/// `13years 9months`), or tenths of a second when short.
fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        return format!("{:.1}s", d.as_secs_f64());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs()))
        .to_string()
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_048_576), "1,048,576");
        assert_eq!(human_duration(Duration::from_millis(420)), "0.4s");
        assert_eq!(human_duration(Duration::from_secs(192)), "3m 12s");
        assert_eq!(human_duration(Duration::from_secs(7_530)), "2h 5m");
        assert_eq!(
            human_duration(Duration::from_secs(40_000_000)),
            "1year 3months"
        );
    }
}
