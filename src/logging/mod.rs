//! The log as an operator reads it: our own events one line each, other crates' warnings
//! condensed, and journald's priorities under systemd.
//!
//! - **What is shown.** Without `RUST_LOG`: our own events from `info` up, every other crate's
//!   (Arti's, boringtun's) from `warn` up only; Arti's info lines narrate its bootstrap, which
//!   our own progress lines report. `RUST_LOG` replaces this filter, for debugging.
//! - **Arti's repeats.** While something is wrong (no network, too few usable relays) Arti logs
//!   the same warning every second, some of them many lines long. Without `RUST_LOG`, a warning
//!   or error from another crate is shown the first time a place in its code logs it, as one
//!   line of at most [`MAX_FOREIGN_MESSAGE`] characters; repeats from that place are held back
//!   for [`REPEAT_INTERVAL`] and then shown once with how many were held back since when
//!   (`RUST_LOG=debug` shows each in full).
//! - **Under systemd.** When stderr is the journal's stream (`JOURNAL_STREAM` names it) each
//!   line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//!   debug), which journald reads as the entry's priority, and carries no timestamp of its own
//!   (journald stamps every entry).

pub(crate) mod limit;

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::clock::Timestamp;
use limit::LogLimiter;

/// The filter without `RUST_LOG`. boringtun warns of every retried handshake while a peer is
/// down; the transport reports what matters about peers itself, so only its errors show.
const DEFAULT_FILTER: &str = "warn,boringtun=error,rustbalance=info";
/// How long repeats of another crate's warning from one place are held back.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// The longest message of another crate shown (longer ones are cut, with `…`).
pub const MAX_FOREIGN_MESSAGE: usize = 200;

/// Log to stderr, as the module documentation says. Call once, at start.
pub fn init() {
    let (filter, condense) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, false),
        Err(_) => (EnvFilter::new(DEFAULT_FILTER), true),
    };
    let format = OperatorFormat {
        repeats: condense.then(|| Mutex::new(LogLimiter::new(REPEAT_INTERVAL))),
        journal: stderr_is_journal(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(format)
        .init();
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM` to its
/// `device:inode`, which a child that inherited the variable but not the stream does not match.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stderr.dev(), stderr.ino()))
}

/// Formats each event as the module documentation says.
struct OperatorFormat {
    /// Holds back repeats of other crates' warnings; `None` when `RUST_LOG` chose the filter.
    repeats: Option<Mutex<LogLimiter<Identifier>>>,
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for OperatorFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut message = String::new();
        ctx.format_fields(Writer::new(&mut message), event)?;
        let foreign = !meta.target().starts_with(env!("CARGO_CRATE_NAME"));
        if let (true, Some(repeats)) = (foreign && *meta.level() <= Level::WARN, &self.repeats) {
            let now = Timestamp::now();
            let allowed = repeats
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .allow_since(meta.callsite(), now);
            // Held back: nothing is written (an empty line is not a line).
            let Some((held_back, since)) = allowed else {
                return Ok(());
            };
            message = condensed(&message, held_back, since);
        }
        if self.journal {
            write!(writer, "<{}>", journal_priority(*meta.level()))?;
        } else {
            write!(
                writer,
                "{} ",
                humantime::format_rfc3339_millis(Timestamp::now().to_system_time())
            )?;
        }
        writeln!(writer, "{:>5} {}: {message}", meta.level(), meta.target())
    }
}

/// Another crate's message on one line, cut to [`MAX_FOREIGN_MESSAGE`] characters, with the
/// repeats held back since `since` (when there were any).
fn condensed(message: &str, held_back: u64, since: Timestamp) -> String {
    let mut line = String::new();
    for (index, word) in message.split_whitespace().enumerate() {
        if index > 0 {
            line.push(' ');
        }
        line.push_str(word);
    }
    if let Some((cut, _)) = line.char_indices().nth(MAX_FOREIGN_MESSAGE) {
        line.truncate(cut);
        line.push('…');
    }
    if held_back > 0 {
        let since = humantime::format_rfc3339_seconds(since.to_system_time());
        let _ = write!(line, " ({held_back} more like it since {since})");
    }
    line
}

/// The syslog priority journald reads from a line's `<N>` prefix.
fn journal_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_multi_line_warning_becomes_one_short_line_with_its_repeats() {
        let since = Timestamp::from_unix_secs(1_800_000_000);
        let block = format!(
            "Requested 18 relays,\n  but only 0 were usable. {}",
            "w".repeat(500)
        );
        let line = condensed(&block, 0, since);
        assert!(!line.contains('\n'));
        assert!(line.starts_with("Requested 18 relays, but only 0 were usable."));
        assert_eq!(line.chars().count(), MAX_FOREIGN_MESSAGE + 1, "cut, with …");
        assert!(line.ends_with('…'));
        assert_eq!(
            condensed("no route", 41, since),
            "no route (41 more like it since 2027-01-15T08:00:00Z)"
        );
    }

    #[test]
    fn journal_priorities_are_syslogs() {
        assert_eq!(journal_priority(Level::ERROR), 3);
        assert_eq!(journal_priority(Level::WARN), 4);
        assert_eq!(journal_priority(Level::INFO), 6);
        assert_eq!(journal_priority(Level::TRACE), 7);
    }
}
