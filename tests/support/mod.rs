//! Test support: a private Tor network on 127.0.0.1 and the small tools around it.
//!
//! RustBalance's end-to-end tests need real onion services, real HSDirs and a real client that is
//! independent of Arti, with no internet. This module builds that from Debian's C tor: three
//! directory authorities, a handful of relays, one C-tor client with a SOCKS port, and C-tor
//! onion-service backends, each serving its own web page (see ARCHITECTURE.md, "The private Tor
//! network for tests").
//!
//! Every test binary (and `examples/tornet.rs`) includes this directory with `mod support;`,
//! and each uses only part of it, hence the `dead_code` allowance below.
//!
//! - [`tornet`]: the network and its public API ([`TorNetwork`]).
//! - [`http`]: a tiny HTTP/1.0 server per backend and an HTTP GET through a SOCKS5 proxy.
//! - [`process`]: a guard that stops a child process by PID when dropped, also on panic.
//! - [`secrets`]: the leak audit (no secret in any encoding in a log or status report).
//! - [`master`]: fetches through the master address, and an Arti observer of its descriptor.
//! - [`hsdesc`]: a descriptor's three layers decrypted, to compare ours with C tor's.
//! - [`balancer`]: RustBalance nodes as processes of the built binary, and a log watcher.
//! - [`firewall`]: one process's TCP cut off (cgroup v2 and iptables) while its UDP flows.
//! - [`impostor`]: a holder of the cluster secret that joins and lies about its priority.
//! - `node`, `torrc`, `consensus`, `control`, `ports`: the parts `tornet` is built from.
//! - `build_output.rs` is no module of this one: `static_binary` and `debian_package` include
//!   it by path to find what `tests/run.sh` built, and need nothing else here.
#![allow(dead_code)]

// Test binaries only: they need the built binary (examples include this directory too).
#[cfg(test)]
pub mod balancer;
#[cfg(test)]
pub mod firewall;
#[cfg(test)]
pub mod hsdesc;
pub mod http;
#[cfg(test)]
pub mod impostor;
#[cfg(test)]
pub mod master;
pub mod process;
#[cfg(test)]
pub mod secrets;
pub mod tornet;

mod consensus;
mod control;
mod node;
mod ports;
mod torrc;

use std::fmt;

#[allow(unused_imports)]
pub use tornet::{NetworkOptions, TorNetwork};

/// What went wrong while building, waiting for or talking to the test network.
///
/// One sentence saying what was attempted and why it failed; readiness timeouts also carry the
/// tail of the failing tor's log, so a failed CI run can be diagnosed from its output alone.
pub struct HarnessError(String);

impl HarnessError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        HarnessError(message.into())
    }

    /// Prefix the message with what the caller was doing.
    pub(crate) fn context(self, what: impl fmt::Display) -> Self {
        HarnessError(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// `Result::unwrap` in a test prints the Debug form: keep the log tails readable (real line
// breaks, no escaping) instead of a one-line quoted string.
impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HarnessError: {}", self.0)
    }
}

impl std::error::Error for HarnessError {}

/// A read that ran into its socket timeout (or a signal) rather than failing: the caller
/// checks its own deadline and reads again.
pub(crate) fn is_retryable_read(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
