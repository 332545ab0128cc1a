//! Reading an authority's current consensus to decide when the network is usable.
//!
//! Onion services need HSDirs: until a live consensus gives every relay the HSDir flag, services
//! upload to and clients fetch from different (or no) HSDirs. So the harness polls an
//! authority's DirPort (`/tor/status-vote/current/consensus`, dir-spec §4.4) and looks at two
//! parts of the document (dir-spec §3.4.1): the `valid-until` line, and for each router its
//! `r <nickname> ...` line followed by its `s <flags>` line.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::HarnessError;

/// The URL path of the current consensus on an authority's DirPort.
pub const CONSENSUS_PATH: &str = "/tor/status-vote/current/consensus";

/// What the harness needs to know about one consensus.
pub struct Consensus {
    valid_until: SystemTime,
    /// Router nickname to its flags.
    flags: HashMap<String, Vec<String>>,
}

impl Consensus {
    pub fn parse(text: &str) -> Result<Consensus, HarnessError> {
        let mut valid_until = None;
        let mut flags = HashMap::new();
        let mut current_router: Option<String> = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("valid-until") => {
                    valid_until = Some(parse_utc(&words.collect::<Vec<_>>().join(" "))?)
                }
                Some("r") => current_router = words.next().map(str::to_owned),
                Some("s") => {
                    if let Some(nickname) = current_router.take() {
                        flags.insert(nickname, words.map(str::to_owned).collect());
                    }
                }
                _ => {}
            }
        }
        let valid_until =
            valid_until.ok_or_else(|| HarnessError::new("consensus without a valid-until line"))?;
        Ok(Consensus { valid_until, flags })
    }

    /// A consensus is live until its `valid-until` time.
    pub fn is_live(&self, now: SystemTime) -> bool {
        now < self.valid_until
    }

    /// Those of `nicknames` that the consensus does not list with the HSDir flag.
    pub fn missing_hsdirs<'a>(&self, nicknames: &[&'a str]) -> Vec<&'a str> {
        nicknames
            .iter()
            .copied()
            .filter(|nick| {
                !self
                    .flags
                    .get(*nick)
                    .is_some_and(|f| f.iter().any(|flag| flag == "HSDir"))
            })
            .collect()
    }
}

/// Parse `YYYY-MM-DD HH:MM:SS` (UTC), the time format of directory documents.
fn parse_utc(text: &str) -> Result<SystemTime, HarnessError> {
    let bad = || HarnessError::new(format!("bad time {text:?} in consensus"));
    let numbers: Vec<u64> = text
        .split(['-', ' ', ':'])
        .map(|part| part.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [year, month, day, hour, minute, second] = numbers[..] else {
        return Err(bad());
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return Err(bad());
    }
    let seconds = days_since_epoch(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (year >= 1970).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    // Count from March so that the leap day is the last day of the (shifted) year.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era_days = y * 365 + y / 4 - y / 100 + y / 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    // 719_468 is the same count for 1970-01-01.
    era_days + day_of_year - 719_468
}
