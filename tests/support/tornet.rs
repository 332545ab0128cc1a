//! A private Tor network on 127.0.0.1 for RustBalance's end-to-end tests (ARCHITECTURE.md, "The
//! private Tor network for tests").
//!
//! [`TorNetwork::start`] builds, from an empty temporary directory: three directory authorities,
//! some relays (two or more of them exits to 127.0.0.0/8), and one C-tor client with a SOCKS
//! port. Tests then add C-tor onion-service backends ([`TorNetwork::add_backend`]), each behind
//! its own tiny web server, optionally as Onionbalance instances of a master address; point
//! RustBalance's embedded Arti at the network with [`TorNetwork::arti_toml`]; and check the
//! result from the outside with the C-tor client ([`TorNetwork::fetch`], [`TorNetwork::hsfetch`]),
//! which shares no code with Arti.
//!
//! Start-up follows the order that avoids tor's download back-off (about 40 s of 404s
//! otherwise): authorities and relays together; wait until an authority serves a live consensus
//! that gives every relay the HSDir flag; reload the relays (SIGHUP, sent as `SIGNAL RELOAD`) so
//! they fetch that consensus now; wait for their bootstrap 100; only then start the client and,
//! later, the backends. A backend counts as ready once its descriptor is uploaded and the client
//! has fetched its page through its onion address.
//!
//! Every wait has a deadline and fails with what it waited for and the end of the relevant tor
//! log. Every process is stopped on drop, also when a test panics; if the test process is killed
//! outright, the tors exit by themselves (`__OwningControllerProcess`). Several networks can run
//! at once in one process: each has its own directory and ports.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;

use super::consensus::{Consensus, CONSENSUS_PATH};
use super::control::ControlConn;
use super::http::{self, HttpServer};
use super::node::{create_private_dir, read_file, tor_binary, write_file, TorNode};
use super::ports::free_port;
use super::process::ProcessGuard;
use super::torrc::{self, DirAuthorityLine, HSDIR_INTERVAL_MINUTES};
use super::HarnessError;

/// Number of directory authorities (a majority of 3 tolerates one slow voter).
const AUTHORITIES: usize = 3;
/// Relays that are exits to 127.0.0.0/8.
const EXITS: usize = 2;
/// Set to `1` to keep the network's directory (logs, keys, torrcs) after the test.
const KEEP_ENV: &str = "RB_KEEP_TORNET";

// Deadlines. Measured on 2 cores: a network is ready in 23-35 s alone and in 30-52 s with two
// starting at once, a backend in ~4 s; these leave room for a loaded CI machine.
/// Creating one authority's keys (`tor-gencert` makes a 3072-bit RSA key).
const AUTHORITY_KEYS_TIMEOUT: Duration = Duration::from_secs(60);
/// From starting the authorities to a live consensus listing every relay as HSDir.
const CONSENSUS_TIMEOUT: Duration = Duration::from_secs(180);
/// For a tor to reach bootstrap 100.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(90);
/// For a backend's first descriptor upload.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// A backend that has begun no upload this long after its network was enabled is restarted
/// (at most [`START_ATTEMPTS`] starts). Seen once in CI: a backend stayed at "Bootstrapped 95%
/// (circuit_create)" for two minutes while every other node of the network worked; a normal
/// start begins uploading within seconds.
const UPLOAD_START_PATIENCE: Duration = Duration::from_secs(60);
const START_ATTEMPTS: u32 = 2;
/// After a backend's first successful upload, how long to wait for its other uploads to end.
const UPLOAD_SETTLE: Duration = Duration::from_secs(10);
/// For the client to fetch a new (or restarted) backend's page.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(90);
/// One attempt at fetching a page while waiting for a backend.
const FETCH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two readiness checks.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// One request to an authority's DirPort.
const DIRPORT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A short control-port exchange with a running tor.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// How big a network to build.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// Relays besides the authorities; at least 2 (the first two are exits to 127.0.0.0/8).
    pub relays: usize,
    /// For how many voting intervals a consensus stays valid (C tor's
    /// `V3AuthNIntervalsValid`, default 3: 60 s here). A node whose clock runs a minute ahead
    /// needs more, or it never holds a live consensus.
    pub consensus_valid_intervals: u32,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            relays: 6,
            consensus_valid_intervals: 3,
        }
    }
}

/// A directory authority and the identities other nodes (and Arti) must know it by.
struct Authority {
    node: TorNode,
    or_port: u16,
    dir_port: u16,
    /// Fingerprint of its v3 authority certificate: what signs the consensus.
    v3ident: String,
    /// Its relay RSA identity fingerprint.
    fingerprint: String,
    /// Its relay ed25519 identity.
    ed_identity: [u8; 32],
}

/// An onion-service backend: a C tor serving a hidden service that forwards to `http`.
struct Backend {
    node: TorNode,
    service_dir: PathBuf,
    http: HttpServer,
    /// `<56 chars>.onion`, known once its tor has started.
    onion: String,
    page: String,
}

/// A running private Tor network. Dropping it stops every process.
pub struct TorNetwork {
    dir: PathBuf,
    /// An empty file: GeoIP databases and tor's defaults file point at it.
    empty_file: PathBuf,
    authorities: Vec<Authority>,
    relays: Vec<TorNode>,
    client: TorNode,
    socks_port: u16,
    /// Relay fingerprints of every node with the HSDir flag (authorities and relays).
    hsdirs: Vec<String>,
    backends: BTreeMap<String, Backend>,
    /// Further clients, each for a controller that brings no tor of its own.
    controlled_clients: Vec<TorNode>,
}

impl TorNetwork {
    /// Authorities (3) + relays + one C-tor client with a SOCKS port, fully ready: a live
    /// consensus lists every relay with the HSDir flag, the relays were reloaded and report
    /// bootstrap 100, and so does the client.
    pub fn start(opts: NetworkOptions) -> Result<TorNetwork, HarnessError> {
        if opts.relays < EXITS {
            return Err(HarnessError::new(format!(
                "a network needs at least {EXITS} relays, got {}",
                opts.relays
            )));
        }
        let dir = create_network_dir()?;
        let empty_file = dir.join("empty");
        write_file(&empty_file, "")?;
        let client = TorNode::new("client", dir.join("client"), free_port()?, &empty_file)?;
        let mut network = TorNetwork {
            dir,
            empty_file,
            authorities: Vec::new(),
            relays: Vec::new(),
            client,
            socks_port: free_port()?,
            hsdirs: Vec::new(),
            backends: BTreeMap::new(),
            controlled_clients: Vec::new(),
        };
        // On error `network` is dropped here, which stops whatever was started.
        network.launch(&opts)?;
        Ok(network)
    }

    fn launch(&mut self, opts: &NetworkOptions) -> Result<(), HarnessError> {
        let relays = opts.relays;
        let started = Instant::now();
        self.authorities = create_authorities(&self.dir, &self.empty_file)?;
        let dir_authorities = self.dir_authority_lines();
        for authority in &mut self.authorities {
            let text = torrc::authority(
                &base_config(&authority.node, &dir_authorities, &self.empty_file),
                authority.node.name(),
                authority.or_port,
                authority.dir_port,
                opts.consensus_valid_intervals,
            );
            authority.node.write_torrc(&text)?;
            authority.node.start()?;
        }
        for index in 0..relays {
            let name = format!("relay{index}");
            let mut node =
                TorNode::new(&name, self.dir.join(&name), free_port()?, &self.empty_file)?;
            let text = torrc::relay(
                &base_config(&node, &dir_authorities, &self.empty_file),
                &name,
                free_port()?,
                index < EXITS,
            );
            node.write_torrc(&text)?;
            node.start()?;
            self.relays.push(node);
        }

        self.wait_for_hsdir_consensus(started + CONSENSUS_TIMEOUT)?;
        progress(started, "live consensus lists every relay as HSDir");

        self.hsdirs = self
            .authorities
            .iter()
            .map(|a| a.fingerprint.clone())
            .collect();
        for relay in &self.relays {
            self.hsdirs.push(relay.fingerprint()?);
        }

        // Relays fetched no usable consensus before this one existed and are now in download
        // back-off; a reload makes them fetch it at once.
        let deadline = Instant::now() + BOOTSTRAP_TIMEOUT;
        for relay in &mut self.relays {
            let mut conn = relay.wait_control(deadline)?;
            conn.command("SIGNAL RELOAD", deadline)
                .map_err(|e| relay.failure(&e.to_string()))?;
        }
        for relay in &mut self.relays {
            relay.wait_bootstrapped(deadline)?;
        }
        progress(started, "relays at bootstrap 100");

        let text = torrc::client(
            &base_config(&self.client, &dir_authorities, &self.empty_file),
            self.socks_port,
        );
        self.client.write_torrc(&text)?;
        create_private_dir(&self.client.dir().join(torrc::CLIENT_AUTH_DIR))?;
        self.client.start()?;
        self.client
            .wait_bootstrapped(Instant::now() + BOOTSTRAP_TIMEOUT)?;
        progress(started, "client at bootstrap 100: network ready");
        Ok(())
    }

    fn dir_authority_lines(&self) -> Vec<DirAuthorityLine> {
        self.authorities
            .iter()
            .map(|a| DirAuthorityLine {
                nickname: a.node.name().to_owned(),
                or_port: a.or_port,
                dir_port: a.dir_port,
                v3ident: a.v3ident.clone(),
                fingerprint: a.fingerprint.clone(),
            })
            .collect()
    }

    /// Poll the authorities' DirPorts (in turn) until a live consensus lists every node as HSDir.
    fn wait_for_hsdir_consensus(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        let nicknames: Vec<String> = self
            .authorities
            .iter()
            .map(|a| a.node.name())
            .chain(self.relays.iter().map(TorNode::name))
            .map(str::to_owned)
            .collect();
        let nicknames: Vec<&str> = nicknames.iter().map(String::as_str).collect();
        let mut last = String::from("no consensus yet");
        for attempt in 0.. {
            for node in self
                .authorities
                .iter_mut()
                .map(|a| &mut a.node)
                .chain(self.relays.iter_mut())
            {
                node.check_running()?;
            }
            let authority = &self.authorities[attempt % self.authorities.len()];
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, authority.dir_port));
            match http::get(addr, CONSENSUS_PATH, DIRPORT_REQUEST_TIMEOUT)
                .and_then(|text| Consensus::parse(&text))
            {
                Ok(consensus) if !consensus.is_live(SystemTime::now()) => {
                    last = format!("{}'s consensus has expired", authority.node.name());
                }
                Ok(consensus) => {
                    let missing = consensus.missing_hsdirs(&nicknames);
                    if missing.is_empty() {
                        return Ok(());
                    }
                    last = format!(
                        "{}'s consensus lacks HSDir for {}",
                        authority.node.name(),
                        missing.join(", ")
                    );
                }
                Err(e) => last = format!("{}: {e}", authority.node.name()),
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(RETRY_PAUSE);
        }
        Err(self.authorities[0].node.failure(&format!(
            "timed out after {}s waiting for a live consensus listing all {} nodes with the HSDir flag (last: {last})",
            CONSENSUS_TIMEOUT.as_secs(),
            nicknames.len()
        )))
    }

    /// The TOML text of rustbalance's `[arti]` table pointing Arti at this network: our authorities
    /// only (replacing, not extending, Arti's built-in public lists), subnet families off (every
    /// relay is on 127.0.0.1), and the network parameters of ARCHITECTURE.md ("The private Tor
    /// network for tests").
    pub fn arti_toml(&self) -> String {
        let mut text = String::from("[arti.tor_network]\nfallback_caches = [\n");
        for a in &self.authorities {
            let _ = writeln!(
                text,
                "    {{ rsa_identity = \"{}\", ed_identity = \"{}\", orports = [\"127.0.0.1:{}\"] }},",
                a.fingerprint,
                STANDARD_NO_PAD.encode(a.ed_identity),
                a.or_port
            );
        }
        text.push_str("]\n\n[arti.tor_network.authorities]\nv3idents = [\n");
        for a in &self.authorities {
            let _ = writeln!(text, "    \"{}\",", a.v3ident);
        }
        let _ = write!(
            text,
            "]\n\n\
             [arti.path_rules]\n\
             ipv4_subnet_family_prefix = 33\n\
             ipv6_subnet_family_prefix = 129\n\n\
             [arti.override_net_params]\n\
             hsdir_interval = {HSDIR_INTERVAL_MINUTES}\n\
             cbtdisabled = 1\n"
        );
        text
    }

    /// The client's SOCKS5 port.
    /// One more C-tor client, with tor's defaults, bootstrapped, for a controller such as
    /// Onionbalance (as its operators run it: beside a tor of its own). Returns its control
    /// port (cookie authentication).
    pub fn add_controlled_client(&mut self, name: &str) -> Result<u16, HarnessError> {
        let mut node = TorNode::new(name, self.dir.join(name), free_port()?, &self.empty_file)?;
        let authorities = self.dir_authority_lines();
        let text = torrc::controlled_client(&base_config(&node, &authorities, &self.empty_file));
        node.write_torrc(&text)?;
        node.start()?;
        node.wait_bootstrapped(Instant::now() + BOOTSTRAP_TIMEOUT)?;
        let port = node.control_port();
        self.controlled_clients.push(node);
        Ok(port)
    }

    pub fn socks_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.socks_port))
    }

    /// The directory holding every node's data directory, torrc and logs.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Start a C-tor onion-service backend with its own HTTP server whose page is
    /// [`backend_page`](Self::backend_page). With `master = Some("<56 chars>.onion")` it is an
    /// Onionbalance instance of that master address (`HiddenServiceOnionbalanceInstance 1` and
    /// `MasterOnionAddress` in `ob_config`). Returns once its descriptor is uploaded and the
    /// client has fetched its page through its own onion address.
    pub fn add_backend(&mut self, name: &str, master: Option<&str>) -> Result<(), HarnessError> {
        check_backend_name(name)?;
        if self.backends.contains_key(name) {
            return Err(HarnessError::new(format!(
                "backend {name:?} exists already"
            )));
        }
        if let Some(master) = master {
            check_onion(master)?;
        }
        let page = format!("backend {name}\n");
        let http = HttpServer::start(page.clone())?;
        let node_name = format!("backend-{name}");
        let node = TorNode::new(
            &node_name,
            self.dir.join(&node_name),
            free_port()?,
            &self.empty_file,
        )?;
        let service_dir = node.dir().join("hs");
        create_private_dir(&service_dir)?;
        if let Some(master) = master {
            write_file(
                &service_dir.join("ob_config"),
                &format!("MasterOnionAddress {master}\n"),
            )?;
        }
        let text = torrc::backend(
            &base_config(&node, &self.dir_authority_lines(), &self.empty_file),
            &service_dir,
            http.addr().port(),
            master.is_some(),
        );
        node.write_torrc(&text)?;
        let mut backend = Backend {
            node,
            service_dir,
            http,
            onion: String::new(),
            page,
        };
        // On error `backend` is dropped, which stops its tor and its web server.
        self.bring_up(&mut backend, false)?;
        self.backends.insert(name.to_owned(), backend);
        Ok(())
    }

    /// The backend's own address, `<56 chars>.onion`. Panics if there is no such backend.
    pub fn backend_onion(&self, name: &str) -> String {
        self.backend(name).onion.clone()
    }

    /// The exact body the backend's web server sends. Panics if there is no such backend.
    pub fn backend_page(&self, name: &str) -> String {
        self.backend(name).page.clone()
    }

    /// Stop the backend's web server (its tor keeps running, so the service is alive but
    /// serves nothing). Panics if there is no such backend.
    pub fn stop_web_server(&mut self, name: &str) {
        self.backend_mut(name).http.stop();
    }

    /// Start the backend's web server again, on its port, after
    /// [`stop_web_server`](Self::stop_web_server). Panics if there is no such backend.
    pub fn start_web_server(&mut self, name: &str) -> Result<(), HarnessError> {
        let backend = self.backend_mut(name);
        let port = backend.http.addr().port();
        backend.http = HttpServer::start_on(port, backend.page.clone())?;
        Ok(())
    }

    /// Stop the backend's tor (its web server keeps running), so that it becomes unreachable.
    /// Panics if there is no such backend.
    ///
    /// Measured here: for up to ~15 s afterwards some introduction points may still hold the
    /// dead service's circuits (the DESTROY cells travel lazily on a quiet network) and accept
    /// an introduction; the C-tor client then waits for a rendezvous that never comes until the
    /// fetch times out. So a fetch right after the stop fails by timing out, not quickly:
    /// give such negative checks a short timeout.
    pub fn stop_backend(&mut self, name: &str) {
        self.backend_mut(name).node.stop();
    }

    /// Start the backend's tor again with the same key (so the same address) and wait until its
    /// new descriptor is uploaded and the client reaches its page.
    pub fn restart_backend(&mut self, name: &str) -> Result<(), HarnessError> {
        let mut backend = self
            .backends
            .remove(name)
            .ok_or_else(|| HarnessError::new(format!("no backend named {name:?}")))?;
        let result = self.bring_up(&mut backend, true);
        self.backends.insert(name.to_owned(), backend);
        result
    }

    /// Stop every relay and every authority but the first: circuits through the network fail,
    /// and once the last consensus expires (40 s here) no client holds a live one. The client
    /// and the backends keep running.
    pub fn stop_most_relays(&mut self) {
        let mut stopped: Vec<&mut TorNode> = self
            .relays
            .iter_mut()
            .chain(self.authorities.iter_mut().skip(1).map(|a| &mut a.node))
            .collect();
        for node in &mut stopped {
            node.terminate();
        }
        for node in &mut stopped {
            node.stop();
        }
    }

    /// Start what [`stop_most_relays`](Self::stop_most_relays) stopped (same keys, ports and
    /// configuration) and wait until the relays report bootstrap 100 again.
    pub fn restart_stopped_relays(&mut self) -> Result<(), HarnessError> {
        for authority in self.authorities.iter_mut().skip(1) {
            authority.node.start()?;
        }
        for relay in &mut self.relays {
            relay.start()?;
        }
        let deadline = Instant::now() + BOOTSTRAP_TIMEOUT;
        for relay in &mut self.relays {
            relay.wait_bootstrapped(deadline)?;
        }
        Ok(())
    }

    /// HTTP GET `url` through the client's SOCKS port; `isolation` is the SOCKS username, and
    /// tor builds fresh circuits for each distinct value. Returns the body of a 200 response.
    pub fn fetch(
        &self,
        url: &str,
        isolation: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        http::get_via_socks(self.socks_addr(), url, isolation, timeout)
    }

    /// What the HSDirs hold for `onion`, as the C-tor client sees it: `HSFETCH` from every HSDir
    /// of the network, collecting the `HS_DESC_CONTENT` events. Returns the raw descriptors
    /// received (outer layer; one per HSDir that has it, for the client's current time period).
    /// An error if no HSDir returned one before `timeout`.
    pub fn hsfetch(&self, onion: &str, timeout: Duration) -> Result<Vec<String>, HarnessError> {
        self.hsfetch_from(onion, &self.hsdirs, timeout)
    }

    /// [`hsfetch`](Self::hsfetch) from the HSDirs `hsdirs` (fingerprints, hex) only. The C-tor
    /// client keeps what it fetched in its descriptor cache, replacing a cached descriptor of
    /// the same or a lower revision: fetching from one HSDir makes its copy the one the
    /// client's next connections use.
    pub fn hsfetch_from(
        &self,
        onion: &str,
        hsdirs: &[String],
        timeout: Duration,
    ) -> Result<Vec<String>, HarnessError> {
        let deadline = Instant::now() + timeout;
        let address = check_onion(onion)?;
        let mut conn = self.client.connect_control(deadline)?;
        conn.command("SETEVENTS HS_DESC HS_DESC_CONTENT", deadline)?;
        let servers: String = hsdirs.iter().map(|fp| format!(" SERVER=${fp}")).collect();
        conn.command(&format!("HSFETCH {address}{servers}"), deadline)?;
        let (descriptors, answered) =
            collect_fetched_descriptors(&mut conn, address, hsdirs, deadline)?;
        if descriptors.is_empty() {
            return Err(HarnessError::new(format!(
                "HSFETCH {onion}: no HSDir returned a descriptor ({answered} of {} answered before the deadline)",
                hsdirs.len()
            )));
        }
        Ok(descriptors)
    }

    fn backend(&self, name: &str) -> &Backend {
        match self.backends.get(name) {
            Some(backend) => backend,
            None => panic!("no backend named {name:?}"),
        }
    }

    fn backend_mut(&mut self, name: &str) -> &mut Backend {
        match self.backends.get_mut(name) {
            Some(backend) => backend,
            None => panic!("no backend named {name:?}"),
        }
    }

    /// Start (or restart) a backend's tor and wait until the client reaches its page.
    /// `restarted`: the client may still hold the old descriptor, whose introduction points
    /// died with the old process, and remembers failed lookups; make it forget both.
    fn bring_up(&self, backend: &mut Backend, restarted: bool) -> Result<(), HarnessError> {
        let started = Instant::now();
        let onion = start_until_uploaded(backend, started)?;
        if restarted && onion != backend.onion {
            return Err(HarnessError::new(format!(
                "backend {} came back as {onion} instead of {}",
                backend.node.name(),
                backend.onion
            )));
        }
        backend.onion = onion;
        progress(
            started,
            &format!("{} uploaded its descriptor", backend.node.name()),
        );
        if restarted {
            self.newnym()?;
        }
        self.wait_reachable(backend, Instant::now() + REACHABLE_TIMEOUT)?;
        progress(
            started,
            &format!("client fetched the page of {}", backend.node.name()),
        );
        Ok(())
    }

    /// Fetch the backend's page through the client until it works. A C-tor client that got
    /// "not found" from an HSDir does not ask that HSDir again for 15 minutes; `NEWNYM` makes it
    /// forget that (and any cached descriptor) before the next attempt.
    fn wait_reachable(&self, backend: &Backend, deadline: Instant) -> Result<(), HarnessError> {
        let url = format!("http://{}/", backend.onion);
        loop {
            let attempt_timeout = deadline
                .saturating_duration_since(Instant::now())
                .min(FETCH_ATTEMPT_TIMEOUT);
            let error = match self.fetch(&url, &fresh_isolation("ready"), attempt_timeout) {
                Ok(body) if body == backend.page => return Ok(()),
                Ok(body) => {
                    return Err(HarnessError::new(format!(
                        "{url} served {body:?}, expected {:?}",
                        backend.page
                    )))
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::new(format!(
                    "the client could not fetch {url} of {} in time (last error: {error})\n{}\n{}",
                    backend.node.name(),
                    backend.node.failure("backend side"),
                    self.client.failure("client side")
                )));
            }
            self.newnym()?;
            thread::sleep(RETRY_PAUSE);
        }
    }

    /// Give the client the restricted-discovery key of `onion` as a tor user would: a
    /// `<name>.auth_private` file (`<address>:descriptor:x25519:<base32 secret>`) in its
    /// `ClientOnionAuthDir`, then a reload. `None`: the file is removed.
    pub fn set_client_auth_key(
        &self,
        onion: &str,
        secret: Option<&[u8; 32]>,
    ) -> Result<(), HarnessError> {
        let address = check_onion(onion)?;
        let file = self
            .client
            .dir()
            .join(torrc::CLIENT_AUTH_DIR)
            .join("master.auth_private");
        match secret {
            Some(secret) => write_file(
                &file,
                &format!(
                    "{address}:descriptor:x25519:{}\n",
                    rustbalance::keys::onion_address::base32_encode(secret)
                ),
            )?,
            None => {
                let _ = fs::remove_file(&file);
            }
        }
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        self.client
            .connect_control(deadline)?
            .command("SIGNAL RELOAD", deadline)?;
        Ok(())
    }

    /// `SIGNAL NEWNYM` to the client: new circuits, and its onion-service state (cached
    /// descriptors included) is purged, so it behaves as a new client. Tor delays a NEWNYM
    /// that comes within 10 s of the previous one.
    pub fn newnym(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        self.client
            .connect_control(deadline)?
            .command("SIGNAL NEWNYM", deadline)?;
        Ok(())
    }

    /// Every tor node, backends included.
    fn nodes_mut(&mut self) -> impl Iterator<Item = &mut TorNode> {
        self.backends
            .values_mut()
            .map(|b| &mut b.node)
            .chain(std::iter::once(&mut self.client))
            .chain(self.relays.iter_mut())
            .chain(self.authorities.iter_mut().map(|a| &mut a.node))
    }
}

impl Drop for TorNetwork {
    fn drop(&mut self) {
        // SIGTERM everything first so that the processes exit in parallel, then reap each.
        for node in self.nodes_mut() {
            node.terminate();
        }
        for node in self.nodes_mut() {
            node.stop();
        }
        if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("tornet: keeping {} ({KEEP_ENV}=1)", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("tornet: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// The settings every node's torrc shares.
fn base_config<'a>(
    node: &'a TorNode,
    authorities: &'a [DirAuthorityLine],
    empty_file: &'a Path,
) -> torrc::Base<'a> {
    torrc::Base {
        data_dir: node.dir(),
        control_port: node.control_port(),
        authorities,
        empty_file,
        owner_pid: std::process::id(),
    }
}

/// A new private directory for one network under the system's temporary directory.
fn create_network_dir() -> Result<PathBuf, HarnessError> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = SEQUENCE.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("rb-tornet-{}-{n}", std::process::id()));
        // Left over from an earlier process with the same PID: try the next name.
        if dir.exists() {
            continue;
        }
        create_private_dir(&dir)?;
        return Ok(dir);
    }
}

/// Create the authorities' keys, in parallel since each takes a second or two of CPU.
fn create_authorities(dir: &Path, empty_file: &Path) -> Result<Vec<Authority>, HarnessError> {
    thread::scope(|scope| {
        let workers: Vec<_> = (0..AUTHORITIES)
            .map(|index| scope.spawn(move || create_authority(dir, index, empty_file)))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| {
                    Err(HarnessError::new("creating an authority's keys panicked"))
                })
            })
            .collect()
    })
}

/// Create one authority's directory and keys: the v3 authority identity, signing key and
/// certificate (`tor-gencert`, whose certificate also names the DirPort), and its relay keys
/// (`tor --list-fingerprint` with a throwaway torrc, since the real torrc needs the fingerprint).
fn create_authority(
    dir: &Path,
    index: usize,
    empty_file: &Path,
) -> Result<Authority, HarnessError> {
    let name = format!("auth{index}");
    let node = TorNode::new(&name, dir.join(&name), free_port()?, empty_file)?;
    let (or_port, dir_port) = (free_port()?, free_port()?);
    let keys = node.dir().join("keys");
    create_private_dir(&keys)?;

    let mut gencert = Command::new("tor-gencert");
    gencert
        .current_dir(&keys)
        .args([
            "--create-identity-key",
            "--passphrase-fd",
            "0",
            "-m",
            "12",
            "-a",
        ])
        .arg(format!("127.0.0.1:{dir_port}"))
        .args([
            "-i",
            "authority_identity_key",
            "-s",
            "authority_signing_key",
            "-c",
            "authority_certificate",
        ]);
    run_to_completion(
        &format!("tor-gencert for {name}"),
        &mut gencert,
        &node.dir().join("tor-gencert.log"),
    )?;

    let throwaway = node.dir().join("list-fingerprint.torrc");
    write_file(
        &throwaway,
        &torrc::list_fingerprint(node.dir(), &name, or_port),
    )?;
    let mut list = Command::new(tor_binary());
    list.args(["--quiet", "--list-fingerprint", "--defaults-torrc"])
        .arg(empty_file)
        .arg("-f")
        .arg(&throwaway);
    run_to_completion(
        &format!("tor --list-fingerprint for {name}"),
        &mut list,
        &node.dir().join("list-fingerprint.log"),
    )?;
    // Only its keys matter; tor must not pick the throwaway file up by mistake later.
    let _ = fs::remove_file(&throwaway);

    let certificate_path = keys.join("authority_certificate");
    let certificate = read_file(&certificate_path)?;
    let v3ident = certificate
        .lines()
        .find_map(|line| line.strip_prefix("fingerprint "))
        .map(|fp| fp.trim().to_owned())
        .ok_or_else(|| {
            HarnessError::new(format!(
                "no fingerprint line in {}",
                certificate_path.display()
            ))
        })?;
    Ok(Authority {
        fingerprint: node.fingerprint()?,
        ed_identity: read_ed25519_identity(&keys.join("ed25519_master_id_public_key"))?,
        node,
        or_port,
        dir_port,
        v3ident,
    })
}

/// A relay's ed25519 identity from tor's key file: a 32-byte header
/// `== ed25519v1-public: type0 ==` padded with NULs, then the 32-byte public key.
fn read_ed25519_identity(path: &Path) -> Result<[u8; 32], HarnessError> {
    const HEADER: &[u8] = b"== ed25519v1-public: type0 ==";
    let bytes = fs::read(path)
        .map_err(|e| HarnessError::new(format!("cannot read {}: {e}", path.display())))?;
    match bytes.split_at_checked(32) {
        Some((header, key)) if header.starts_with(HEADER) => key.try_into().map_err(|_| {
            HarnessError::new(format!(
                "{}: key is {} bytes, not 32",
                path.display(),
                key.len()
            ))
        }),
        _ => Err(HarnessError::new(format!(
            "{} is not an ed25519 public key file",
            path.display()
        ))),
    }
}

/// Run a short-lived tool with its output in `log`; an error (with that output) if it fails
/// or takes longer than [`AUTHORITY_KEYS_TIMEOUT`].
fn run_to_completion(what: &str, command: &mut Command, log: &Path) -> Result<(), HarnessError> {
    let open = || {
        File::create(log)
            .map_err(|e| HarnessError::new(format!("cannot create {}: {e}", log.display())))
    };
    let output = open()?;
    let errors = output
        .try_clone()
        .map_err(|e| HarnessError::new(format!("cannot duplicate {}: {e}", log.display())))?;
    // stdin is empty: that is the empty passphrase tor-gencert reads with `--passphrase-fd 0`.
    command.stdin(Stdio::null()).stdout(output).stderr(errors);
    let mut process = ProcessGuard::spawn(what, command)?;
    let deadline = Instant::now() + AUTHORITY_KEYS_TIMEOUT;
    let status = loop {
        if let Some(status) = process.exit_status() {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::new(format!(
                "{what} did not finish within {}s",
                AUTHORITY_KEYS_TIMEOUT.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    };
    if status.success() {
        Ok(())
    } else {
        let output = fs::read_to_string(log).unwrap_or_default();
        Err(HarnessError::new(format!(
            "{what} failed ({status}):\n{output}"
        )))
    }
}

/// Start the backend's tor and wait for its first upload; a start that stalls before any
/// upload begins is retried (see [`UPLOAD_START_PATIENCE`]). Returns its onion address.
fn start_until_uploaded(backend: &mut Backend, since: Instant) -> Result<String, HarnessError> {
    for attempt in 1..=START_ATTEMPTS {
        backend.node.start()?;
        let attempt_started = Instant::now();
        let outcome = wait_uploaded(
            &mut backend.node,
            &backend.service_dir,
            attempt_started + UPLOAD_START_PATIENCE,
            attempt_started + UPLOAD_TIMEOUT,
        )?;
        match outcome {
            UploadOutcome::Uploaded(onion) => return Ok(onion),
            UploadOutcome::NeverStarted => progress(
                since,
                &format!(
                    "{} began no upload within {}s (start {attempt} of {START_ATTEMPTS}). Its info log ends:\n{}",
                    backend.node.name(),
                    UPLOAD_START_PATIENCE.as_secs(),
                    backend.node.log_tail("info.log")
                ),
            ),
        }
    }
    Err(backend.node.failure(&format!(
        "began no descriptor upload in {START_ATTEMPTS} starts"
    )))
}

/// How waiting for a freshly started backend's first upload ended.
enum UploadOutcome {
    /// Uploaded; its onion address.
    Uploaded(String),
    /// Not one upload began before the start deadline.
    NeverStarted,
}

/// Wait until a freshly started backend has uploaded its descriptor.
///
/// The backend starts with `DisableNetwork 1`, so subscribing to `HS_DESC` before enabling its
/// network cannot miss an event. C tor uploads each descriptor to several HSDirs at once
/// (`UPLOAD` events); after the first `UPLOADED`, wait (at most [`UPLOAD_SETTLE`]) for the other
/// uploads to end too, so that the client finds the descriptor on whichever HSDir it asks.
/// No `UPLOAD` by `start_deadline` is [`UploadOutcome::NeverStarted`]; uploads begun but not
/// done by `deadline` are an error.
fn wait_uploaded(
    node: &mut TorNode,
    service_dir: &Path,
    start_deadline: Instant,
    deadline: Instant,
) -> Result<UploadOutcome, HarnessError> {
    let mut conn = node.wait_control(deadline)?;
    conn.command("SETEVENTS HS_DESC", deadline)
        .map_err(|e| node.failure(&e.to_string()))?;
    conn.command("SETCONF DisableNetwork=0", deadline)
        .map_err(|e| node.failure(&e.to_string()))?;
    // Tor wrote the hostname file while loading its configuration, before opening its ports.
    let onion = read_file(&service_dir.join("hostname"))?.trim().to_owned();
    let address = check_onion(&onion)?.to_owned();

    let (mut started, mut ended, mut uploaded) = (0_usize, 0_usize, 0_usize);
    let mut settle_deadline = None;
    loop {
        node.check_running()?;
        let now = Instant::now();
        // Wake up at least once a second to notice a tor that died.
        let wake = deadline
            .min(settle_deadline.unwrap_or(deadline))
            .min(now + RETRY_PAUSE);
        if let Some(event) = conn
            .next_event(wake)
            .map_err(|e| node.failure(&e.to_string()))?
        {
            let text = event.lines.first().map(|l| l.text.as_str()).unwrap_or("");
            let words: Vec<&str> = text.split_whitespace().collect();
            if let ["HS_DESC", action, event_address, ..] = words[..] {
                if event_address == address {
                    match action {
                        "UPLOAD" => started += 1,
                        "UPLOADED" => {
                            uploaded += 1;
                            ended += 1;
                            settle_deadline.get_or_insert(Instant::now() + UPLOAD_SETTLE);
                        }
                        "FAILED" => ended += 1,
                        _ => {}
                    }
                }
            }
        }
        let settled = ended >= started || settle_deadline.is_some_and(|d| Instant::now() >= d);
        if uploaded > 0 && settled {
            return Ok(UploadOutcome::Uploaded(onion));
        }
        if started == 0 && Instant::now() >= start_deadline {
            return Ok(UploadOutcome::NeverStarted);
        }
        if Instant::now() >= deadline {
            return Err(node.failure(&format!(
                "timed out waiting for HS_DESC UPLOADED ({uploaded} uploaded, {started} started, {ended} ended)"
            )));
        }
    }
}

/// Read `HS_DESC` and `HS_DESC_CONTENT` events after an `HSFETCH` from `hsdirs`, until every
/// HSDir answered (and each that had the descriptor sent its content) or the deadline passed.
/// Returns the non-empty descriptors and how many HSDirs answered.
fn collect_fetched_descriptors(
    conn: &mut ControlConn,
    address: &str,
    hsdirs: &[String],
    deadline: Instant,
) -> Result<(Vec<String>, usize), HarnessError> {
    let mut answered = HashSet::new();
    let mut received = HashSet::new();
    let mut content_from = HashSet::new();
    let mut descriptors = Vec::new();
    while answered.len() < hsdirs.len() || !received.is_subset(&content_from) {
        let Some(event) = conn.next_event(deadline)? else {
            break;
        };
        let Some(first) = event.lines.first() else {
            continue;
        };
        let words: Vec<&str> = first.text.split_whitespace().collect();
        match words[..] {
            // HS_DESC_CONTENT <address> <descriptor id> <hsdir>, then the descriptor (empty on
            // 404).
            ["HS_DESC_CONTENT", event_address, _, hsdir, ..] if event_address == address => {
                content_from.insert(fingerprint_of(hsdir));
                if let Some(descriptor) = first.data.as_ref().filter(|d| !d.trim().is_empty()) {
                    descriptors.push(descriptor.clone());
                }
            }
            // HS_DESC <action> <address> <auth type> <hsdir> ...
            ["HS_DESC", action @ ("RECEIVED" | "FAILED"), event_address, _, hsdir, ..]
                if event_address == address =>
            {
                let hsdir = fingerprint_of(hsdir);
                if hsdirs.contains(&hsdir) {
                    if action == "RECEIVED" {
                        received.insert(hsdir.clone());
                    }
                    answered.insert(hsdir);
                }
            }
            _ => {}
        }
    }
    Ok((descriptors, answered.len()))
}

/// `$FINGERPRINT~nickname` (a control-port LongName) to `FINGERPRINT`.
fn fingerprint_of(long_name: &str) -> String {
    let name = long_name.trim_start_matches('$');
    name.split(['~', '='])
        .next()
        .unwrap_or(name)
        .to_ascii_uppercase()
}

/// Check `<56 base32 chars>.onion` (the form tor accepts for a v3 address; the checksum is left
/// to tor) and return the part before `.onion`.
pub fn check_onion(onion: &str) -> Result<&str, HarnessError> {
    onion
        .strip_suffix(".onion")
        .filter(|a| {
            a.len() == 56
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        })
        .ok_or_else(|| {
            HarnessError::new(format!(
                "{onion:?} is not a v3 onion address (<56 base32 chars>.onion)"
            ))
        })
}

/// Backend names become directory names and appear in pages: keep them simple.
fn check_backend_name(name: &str) -> Result<(), HarnessError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(HarnessError::new(format!(
            "backend name {name:?} must be 1-32 characters of [A-Za-z0-9_-]"
        )))
    }
}

/// A SOCKS username no other request has used, so tor gives the request fresh circuits.
fn fresh_isolation(purpose: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "rb-{purpose}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// One line on stderr per start-up milestone (shown by `cargo test` for failing tests only).
fn progress(since: Instant, what: &str) {
    eprintln!("tornet: {what} after {:.1}s", since.elapsed().as_secs_f64());
}
