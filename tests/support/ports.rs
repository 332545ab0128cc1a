//! Free TCP ports on 127.0.0.1 for tor's listeners, chosen at run time.
//!
//! Tor binds its own ports, so we can only pick a port that is free now and hand it over.
//! Two things could take it before tor binds it:
//! - another network started by a test running in parallel in this process: prevented by the
//!   process-wide set of ports already handed out, which are never handed out twice;
//! - an outgoing connection (tor's own, a dozen per node) that the kernel gives that port as its
//!   source port: prevented by picking ports *below* the kernel's ephemeral range
//!   (`ip_local_port_range`), which is where `bind(127.0.0.1:0)` would have picked them.
//!   Each candidate is still checked by binding it, then released.
//!
//! Ports are tried from a per-process starting point so that parallel test processes do not
//! probe the same sequence.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::HarnessError;

/// Lowest port we hand out: well above the well-known and most registered service ports.
const FIRST_PORT: u16 = 10_000;
/// Used when the kernel's ephemeral range cannot be read (Linux's default lower bound).
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

struct Allocator {
    handed_out: HashSet<u16>,
    next: u16,
    end: u16,
}

fn allocator() -> &'static Mutex<Allocator> {
    static ALLOCATOR: OnceLock<Mutex<Allocator>> = OnceLock::new();
    ALLOCATOR.get_or_init(|| {
        let end = ephemeral_start().max(FIRST_PORT + 1_000);
        let span = u32::from(end - FIRST_PORT);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(nanos);
        // `seed % span` < span <= u16::MAX, so the conversion cannot fail.
        let offset = u16::try_from(seed % span).unwrap_or(0);
        Mutex::new(Allocator {
            handed_out: HashSet::new(),
            next: FIRST_PORT + offset,
            end,
        })
    })
}

/// The first port of the kernel's ephemeral (automatic source port) range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .and_then(|low| low.parse().ok())
        })
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

/// A TCP port on 127.0.0.1 that is free now and has not been handed out before in this process.
pub fn free_port() -> Result<u16, HarnessError> {
    // A poisoned lock only means another test panicked while holding it; the set is still valid.
    let mut alloc = allocator()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let span = alloc.end - FIRST_PORT;
    for _ in 0..span {
        let port = alloc.next;
        alloc.next = if port + 1 >= alloc.end {
            FIRST_PORT
        } else {
            port + 1
        };
        if alloc.handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            alloc.handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(HarnessError::new(format!(
        "no free TCP port left on 127.0.0.1 in {FIRST_PORT}..{}",
        alloc.end
    )))
}
