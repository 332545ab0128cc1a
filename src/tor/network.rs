//! The seam between the node and the Tor network: everything the node asks of Tor, as one
//! trait.
//!
//! The health checks, the publisher and (in tests) the whole-cluster simulator talk to Tor only
//! through [`TorNetwork`]. [`EmbeddedTor`](super::EmbeddedTor) implements it with Arti; a test
//! implements it with simulated HSDirs and backends. Everything that crosses the seam is a
//! plain value: HSDirs are named by [`HsDirId`], time periods by Arti's `TimePeriod` (from
//! tor-hscrypto, a crate of formats and crypto, not of networking), descriptors are text, and
//! every failure is a typed error the caller can act on (an HSDir that refused a revision is
//! not retried; a failure that never reached an HSDir says nothing about the backend). See
//! ARCHITECTURE.md, "The Tor seam".

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;

use crate::clock::Timestamp;
use crate::descriptor::encode::FlowControl;
use crate::keys::onion_address::OnionAddress;

/// An HSDir, named by its RSA identity in hex, as tor's logs and the consensus name relays.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HsDirId(String);

impl HsDirId {
    pub fn new(rsa_identity_hex: String) -> Self {
        HsDirId(rsa_identity_hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HsDirId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One time period a descriptor is published for, as the consensus held now describes it
/// (rend-spec-v3 §2.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodInfo {
    pub time_period: TimePeriod,
    /// Start of the shared-random period whose value places this period's descriptors on the
    /// HSDir ring: the revision counter counts seconds from here (rend-spec-v3 Appendix F.2).
    pub srv_start: Timestamp,
    /// The HSDirs refuse descriptors this long or longer (`HSV3MaxDescriptorSize`).
    pub max_descriptor_size: usize,
    /// The `flow-control` line a C-tor service writes on this consensus: `cc_alg` enables
    /// congestion control, `cc_sendme_inc` is the increment.
    pub flow_control: Option<FlowControl>,
}

impl PeriodInfo {
    /// Seconds since [`PeriodInfo::srv_start`], the input of the revision counter; `None`
    /// before it, or too far after it to be a real SRV period.
    pub fn srv_offset_secs(&self, now: Timestamp) -> Option<u32> {
        if now < self.srv_start {
            return None;
        }
        u32::try_from(now.saturating_duration_since(self.srv_start).as_secs()).ok()
    }
}

/// Which HSDirs of a blinded key's ring position to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsDirSet {
    /// The ones a client asks (`hsdir_spread_fetch` per replica), in random order as a client
    /// would try them.
    Fetch,
    /// The ones a service stores on (`hsdir_spread_store` per replica), in ring order.
    Store,
}

/// Why the Tor network could not be asked at all.
#[derive(Debug, thiserror::Error)]
pub enum TorError {
    #[error("cannot start Tor's async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot create the Tor client (check the [arti] table and the state directory's permissions): {0}")]
    Create(String),
    #[error("Tor bootstrap failed: {0}")]
    Bootstrap(String),
    #[error("no live consensus")]
    NoConsensus,
    #[error("the Tor client shut down while waiting for a live consensus")]
    Shutdown,
}

/// Why one request to one HSDir (a fetch or an upload) did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsDirError {
    #[error("no live consensus")]
    NoConsensus,
    #[error("HSDir {0} is not in the current consensus")]
    NotInConsensus(HsDirId),
    #[error("no circuit: {0}")]
    NoCircuit(String),
    #[error("directory request failed: {0}")]
    Request(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP 404: the HSDir holds no descriptor for it")]
    NotFound,
    /// C tor answers 400 to an upload whose revision counter is not higher than the one it
    /// holds (and to an invalid descriptor, which ours are not): retrying cannot help.
    #[error("HTTP 400: refused (revision counter not higher than the one it holds)")]
    RevisionRefused,
    #[error("HTTP {0}: refused")]
    Refused(u16),
    #[error("unreadable reply: {0}")]
    BadReply(String),
}

impl HsDirError {
    /// Whether the request got through the Tor network to the HSDir, which answered: the
    /// failure then says something about what the HSDir holds, not about this node's Tor.
    pub fn hsdir_answered(&self) -> bool {
        matches!(
            self,
            HsDirError::NotFound
                | HsDirError::RevisionRefused
                | HsDirError::Refused(_)
                | HsDirError::BadReply(_)
        )
    }
}

/// An HTTP request sent to a backend through Tor, the whole way a client goes (descriptor,
/// introduction, rendezvous).
#[derive(Debug, Clone)]
pub struct HttpProbe<'a> {
    pub path: &'a str,
    pub port: u16,
    pub expected_status: u16,
    pub timeout: Duration,
}

/// Why a backend did not pass the HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("cannot send the request: {0}")]
    Send(String),
    #[error("no reply: {0}")]
    NoReply(String),
    #[error("not an HTTP reply: {0:?}")]
    NotHttp(String),
    #[error("HTTP {status} for {path}, expected {expected}")]
    UnexpectedStatus {
        status: u16,
        expected: u16,
        path: String,
    },
}

/// Why a rendezvous with an onion service did not show it alive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LivenessError {
    /// The client found no descriptor for the service.
    #[error("no descriptor for it: {0}")]
    NoDescriptor(String),
    /// Introduction or rendezvous failed: the service's tor did not answer at its
    /// introduction points (stopped, or its introduction circuits are gone).
    #[error("no rendezvous: {0}")]
    NoRendezvous(String),
    #[error("no rendezvous within {0:?}")]
    Timeout(Duration),
    /// This node's own Tor could not make the attempt (no consensus, no directory, no path):
    /// it says nothing about the service.
    #[error("this node's Tor could not try: {0}")]
    OwnTor(String),
}

/// Everything the node asks of the Tor network. Implemented by
/// [`EmbeddedTor`](super::EmbeddedTor) (Arti) and by the tests' simulated network.
///
/// The futures are awaited in place by the daemon's loops, never spawned, so they need not be
/// `Send`.
#[allow(async_fn_in_trait)]
pub trait TorNetwork {
    /// Whether a consensus that is live right now is held (no waiting).
    fn has_live_consensus(&self) -> bool;

    /// The time period clients use now (to fetch a descriptor), from a live consensus.
    async fn current_period(&self) -> Result<PeriodInfo, TorError>;

    /// Every time period a service publishes for now (one or two), from a live consensus.
    async fn publish_periods(&self) -> Result<Vec<PeriodInfo>, TorError>;

    /// The HSDirs responsible for `blinded_id` in `period`.
    async fn hsdirs(
        &self,
        blinded_id: &HsBlindId,
        period: TimePeriod,
        set: HsDirSet,
    ) -> Result<Vec<HsDirId>, TorError>;

    /// One GET of the descriptor `hsdir` holds for `blinded_id`: the document as served, not
    /// yet verified.
    async fn fetch_descriptor(
        &self,
        hsdir: &HsDirId,
        blinded_id: &HsBlindId,
    ) -> Result<String, HsDirError>;

    /// One POST of `descriptor` to `hsdir`.
    async fn upload_descriptor(
        &self,
        hsdir: &HsDirId,
        descriptor: Arc<str>,
    ) -> Result<(), HsDirError>;

    /// Whether the onion service at `address` is alive: introduction and rendezvous as a
    /// client makes them, with fresh circuits, then a stream to a port no service is expected
    /// to serve. A stream refused (or a circuit closed) after the rendezvous still proves the
    /// service's tor answered; only the rendezvous counts.
    async fn rendezvous(
        &self,
        address: &OnionAddress,
        timeout: Duration,
    ) -> Result<(), LivenessError>;

    /// Whether `address` answers `probe` as a client would reach it.
    async fn probe(&self, address: &OnionAddress, probe: &HttpProbe<'_>) -> Result<(), ProbeError>;
}
