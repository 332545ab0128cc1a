//! The torrc text for each role in the test network (ARCHITECTURE.md, "The private Tor network for
//! tests").
//!
//! Every node shares one base: a testing network (`TestingTorNetwork 1` shortens every timer and
//! allows private addresses), our own authorities only, a cookie-authenticated control port, no
//! GeoIP database (empty files save ~30 MB per process), a notice log in its own directory, and
//! `__OwningControllerProcess` so that tor exits by itself if the test process dies without
//! running its destructors. Roles add to that base.

use std::fmt::Write as _;
use std::path::Path;

/// The authorities' voting interval. C tor's testing networks derive their onion-service time
/// period from it (24 voting intervals), see [`HSDIR_INTERVAL_MINUTES`].
pub const VOTING_INTERVAL_SECS: u32 = 20;
/// Time allowed for collecting votes and for distributing signatures.
pub const VOTE_DELAY_SECS: u32 = 4;
pub const DIST_DELAY_SECS: u32 = 4;
/// The onion-service time period in minutes that C tor uses with `TestingTorNetwork 1`.
/// The authorities vote it as consensus parameter `hsdir_interval` because Arti reads the period
/// from the consensus and would otherwise assume 1440 minutes and look up the wrong blinded keys.
pub const HSDIR_INTERVAL_MINUTES: u32 = 24 * VOTING_INTERVAL_SECS / 60;
/// Consensus parameters the authorities vote. `cbtdisabled=1`: on loopback Arti learns a ~60 ms
/// circuit-build timeout and, after a few minutes, every onion-service request times out.
pub fn consensus_params() -> String {
    format!("hsdir_interval={HSDIR_INTERVAL_MINUTES} cbtdisabled=1")
}

/// What every node needs to find the network.
pub struct DirAuthorityLine {
    pub nickname: String,
    pub or_port: u16,
    pub dir_port: u16,
    /// Fingerprint of the authority's v3 signing certificate (its identity for votes).
    pub v3ident: String,
    /// Fingerprint of the authority's relay identity key.
    pub fingerprint: String,
}

/// Settings shared by every node.
pub struct Base<'a> {
    pub data_dir: &'a Path,
    pub control_port: u16,
    pub authorities: &'a [DirAuthorityLine],
    pub empty_file: &'a Path,
    pub owner_pid: u32,
}

impl Base<'_> {
    fn render(&self) -> String {
        let dir = self.data_dir.display();
        let empty = self.empty_file.display();
        let mut text = format!(
            "TestingTorNetwork 1\n\
             RunAsDaemon 0\n\
             DataDirectory {dir}\n\
             Log notice file {dir}/notice.log\n\
             SafeLogging 0\n\
             ControlPort 127.0.0.1:{control}\n\
             CookieAuthentication 1\n\
             __OwningControllerProcess {owner}\n\
             GeoIPFile {empty}\n\
             GeoIPv6File {empty}\n\
             UseDefaultFallbackDirs 0\n",
            control = self.control_port,
            owner = self.owner_pid,
        );
        for auth in self.authorities {
            // `writeln!` into a String cannot fail.
            let _ = writeln!(
                text,
                "DirAuthority {} orport={} no-v2 v3ident={} 127.0.0.1:{} {}",
                auth.nickname, auth.or_port, auth.v3ident, auth.dir_port, auth.fingerprint
            );
        }
        text
    }
}

/// The relay part shared by authorities and relays.
fn relay_part(nickname: &str, or_port: u16) -> String {
    format!(
        "Nickname {nickname}\n\
         Address 127.0.0.1\n\
         ORPort 127.0.0.1:{or_port}\n\
         SocksPort 0\n\
         AssumeReachable 1\n\
         ContactInfo rustbalance-test@127.0.0.1\n"
    )
}

const NON_EXIT: &str = "ExitRelay 0\nExitPolicy reject *:*\n";

/// A directory authority. Its keys (`keys/authority_*`) must already be in its data directory.
pub fn authority(
    base: &Base<'_>,
    nickname: &str,
    or_port: u16,
    dir_port: u16,
    valid_intervals: u32,
) -> String {
    let voting = VOTING_INTERVAL_SECS;
    let vote_delay = VOTE_DELAY_SECS;
    let dist_delay = DIST_DELAY_SECS;
    format!(
        "{base}{relay}{NON_EXIT}\
         DirPort 127.0.0.1:{dir_port}\n\
         AuthoritativeDirectory 1\n\
         V3AuthoritativeDirectory 1\n\
         V3AuthVotingInterval {voting}\n\
         V3AuthVoteDelay {vote_delay}\n\
         V3AuthDistDelay {dist_delay}\n\
         V3AuthNIntervalsValid {valid_intervals}\n\
         TestingV3AuthInitialVotingInterval {voting}\n\
         TestingV3AuthInitialVoteDelay {vote_delay}\n\
         TestingV3AuthInitialDistDelay {dist_delay}\n\
         TestingDirAuthVoteHSDir *\n\
         TestingDirAuthVoteGuard *\n\
         TestingDirAuthVoteExit *\n\
         AuthDirMaxServersPerAddr 0\n\
         ConsensusParams {params}\n",
        base = base.render(),
        relay = relay_part(nickname, or_port),
        params = consensus_params(),
    )
}

/// A relay; exits allow connections to 127.0.0.0/8 only (private addresses are refused by
/// default, hence `ExitPolicyRejectPrivate 0`).
pub fn relay(base: &Base<'_>, nickname: &str, or_port: u16, exit: bool) -> String {
    let policy = if exit {
        "ExitRelay 1\n\
         ExitPolicyRejectPrivate 0\n\
         ExitPolicyRejectLocalInterfaces 0\n\
         ExitPolicy accept 127.0.0.0/8:*\n\
         ExitPolicy reject *:*\n"
    } else {
        NON_EXIT
    };
    format!("{}{}{policy}", base.render(), relay_part(nickname, or_port))
}

/// The client the tests fetch pages through. `UseMicrodescriptors 0`: with microdescriptors
/// C tor does not see our exits' 127.0.0.0/8 policies. `ExtendedErrors` makes SOCKS failures
/// say why (e.g. onion descriptor not found vs. introduction failed). Restricted-discovery
/// keys (`*.auth_private`) are read from `<data dir>/onion_auth` at start and on reload.
pub fn client(base: &Base<'_>, socks_port: u16) -> String {
    format!(
        "{}SocksPort 127.0.0.1:{socks_port} ExtendedErrors\n\
         UseMicrodescriptors 0\n\
         ClientOnionAuthDir {}\n",
        base.render(),
        base.data_dir.join(CLIENT_AUTH_DIR).display()
    )
}

/// A client with tor's defaults (microdescriptors) and no SOCKS port, for a controller that
/// needs a tor of its own (Onionbalance reads the microdescriptor consensus).
pub fn controlled_client(base: &Base<'_>) -> String {
    format!("{}SocksPort 0\n", base.render())
}

/// The client's `ClientOnionAuthDir`, inside its data directory.
pub const CLIENT_AUTH_DIR: &str = "onion_auth";

/// An onion-service backend. It starts with its network disabled so that the harness can
/// subscribe to its descriptor events before it could possibly upload anything.
/// With `onionbalance_instance`, tor reads `ob_config` from the service directory.
/// It also logs at info level (`info.log`), which says why a start stalls.
pub fn backend(
    base: &Base<'_>,
    service_dir: &Path,
    web_port: u16,
    onionbalance_instance: bool,
) -> String {
    let instance = if onionbalance_instance {
        "HiddenServiceOnionbalanceInstance 1\n"
    } else {
        ""
    };
    format!(
        "{}SocksPort 0\n\
         Log info file {}\n\
         DisableNetwork 1\n\
         HiddenServiceDir {}\n\
         HiddenServicePort 80 127.0.0.1:{web_port}\n\
         {instance}",
        base.render(),
        base.data_dir.join("info.log").display(),
        service_dir.display()
    )
}

/// Just enough configuration for `tor --list-fingerprint` to create an authority's relay keys
/// in its data directory before the authority's real torrc (which needs the fingerprint) exists.
pub fn list_fingerprint(data_dir: &Path, nickname: &str, or_port: u16) -> String {
    format!(
        "DataDirectory {}\nNickname {nickname}\nORPort 127.0.0.1:{or_port}\nSocksPort 0\n",
        data_dir.display()
    )
}
