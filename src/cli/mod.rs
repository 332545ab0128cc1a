//! The command line: parse and check arguments, then hand typed values to the library.
//!
//! Exit status: 0 success, 1 the command failed at run time (for `status` and `doctor`: the
//! node is unhealthy), 2 bad usage, bad config or a bad token (nothing was changed on disk), 3 `status`
//! found no daemon to ask, 130 a vanity search stopped by Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::daemon::{self, DaemonError};
use crate::keys::files::KeyFileError;
use crate::keys::vanity::{PrefixError, SearchError};
use crate::keys::RandomnessError;
use crate::storage::node_files::NodeFilesError;
use crate::tor::ArtiSettings;

mod control;
mod doctor;
mod init;
mod join;
mod keygen;
use crate::params;

/// Onion-service load balancer with an embedded Tor client.
///
/// RustBalance publishes one descriptor for a master .onion address that merges the
/// introduction points of several backend onion services, so clients of the master address
/// are spread over the backends and a lost backend drops out. Several balancer nodes form a
/// cluster that elects one publisher and fails over on its own.
///
/// First node: `rustbalance init`. Further nodes: `rustbalance join <token>`.
/// Then `rustbalance status` to look.
#[derive(Debug, Parser)]
#[command(name = "rustbalance", version, max_term_width = 100)]
pub struct Cli {
    /// Directory holding config.toml and the key files.
    #[arg(long, global = true, env = "RUSTBALANCE_CONFIG_DIR", default_value = params::DEFAULT_CONFIG_DIR, value_name = "DIR")]
    pub config_dir: PathBuf,

    /// Directory for state: Arti's cache, fetched descriptors, state.json.
    #[arg(long, global = true, env = "RUSTBALANCE_STATE_DIR", default_value = params::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up the first node of a new cluster, then run it.
    ///
    /// Creates the master key (new, imported with --import-key, or a vanity one; stored
    /// encrypted), this node's WireGuard key pair, a cluster secret and config.toml in the
    /// config directory (0700, files 0600), prints the master address and a join token for
    /// further nodes, then starts the node unless --no-start: as root on a systemd host it
    /// installs, enables and starts rustbalance.service (--no-systemd to opt out), elsewhere it
    /// runs in the foreground. Refuses, changing nothing, if the config directory already holds
    /// a node.
    Init(InitArgs),

    /// Add this machine to an existing cluster, then run it.
    ///
    /// TOKEN is the `rb1:...` string printed by `rustbalance init` or `rustbalance token` on
    /// any member, given with --token-file (a file, or `-` for standard input) or as an
    /// argument. It carries the master key: handle it like the key itself. Creates this
    /// node's WireGuard key pair, asks the member named in the token to admit it (a request
    /// authenticated with the cluster secret), receives its priority, the other members and
    /// the cluster's configuration through the new tunnel, writes the node's files and starts
    /// the node unless --no-start (as init does). If the member does not answer, nothing is
    /// written. Running it again on a member of the same cluster changes nothing.
    Join(JoinArgs),

    /// Run the node in the foreground (what the systemd unit starts).
    ///
    /// Loads config.toml, bootstraps the embedded Tor client and logs its progress and the
    /// consensus it holds. Stops cleanly on SIGTERM or Ctrl-C. Log verbosity follows RUST_LOG
    /// (default `info`; e.g. RUST_LOG=debug).
    Run,

    /// Show this node, the cluster, the backends and the uploads, asking the running daemon.
    ///
    /// Exit status 0 when the node is healthy; 1 when it is not (no publisher in the cluster,
    /// Tor not bootstrapped, no healthy backend, or an alert); 3 when no daemon answers.
    Status(StatusArgs),

    /// Explain in plain words what is wrong with this node, one line per check.
    ///
    /// Reads config.toml, the key files (the master key opened with its key-encryption key)
    /// and the members as `run` reads them, writing nothing, then asks the running daemon
    /// about Tor's bootstrap, the HSDirs' copies of the master descriptor, each backend and
    /// each peer. Exit status 0 when nothing failed, 1 otherwise.
    Doctor,

    /// Change the backends of the whole cluster, through the running node.
    ///
    /// The change becomes a new version of the cluster's shared configuration: this node
    /// checks it, writes config.toml and applies it, then every member does the same (a member
    /// that is down catches up when it returns). A change that does not validate is refused
    /// here with its error and goes nowhere. `rustbalance status` shows each member's version.
    #[command(subcommand)]
    Backend(BackendCommand),

    /// Remove a member from the cluster, on every member this node reaches.
    ///
    /// Its WireGuard key is refused from then on, also if it joins again with an old token
    /// (rotate the cluster secret to make old tokens useless). A removed node that is still
    /// running is told, stops publishing and refuses to start again.
    Remove {
        /// The member's node id, as `rustbalance status` lists it.
        node_id: String,
    },

    /// Replace the cluster secret on every member, through the running node.
    ///
    /// Every member's tunnels switch to keys from the new secret as soon as both ends hold it;
    /// a member that is down is sent it when it returns. Join tokens made before no longer
    /// admit anyone (print a new one with `rustbalance token`). Do not rotate on two members at
    /// once.
    RotateSecret,

    /// Print a fresh join token for this node's cluster.
    ///
    /// The token carries the master key and the cluster secret: handle it like the key itself.
    Token,

    /// Set up the first node of a new cluster from another balancer's configuration, then
    /// run it.
    #[command(subcommand)]
    Import(ImportCommand),

    /// Create a master identity key and print its onion address.
    ///
    /// Writes a directory exactly as tor writes a HiddenServiceDir (hs_ed25519_secret_key,
    /// hs_ed25519_public_key, hostname; directory 0700, files 0600), which tor, mkp224o and
    /// Onionbalance all read. Point `[node] master_key` at the directory to use it. Never
    /// overwrites an existing key.
    ///
    /// With --vanity-prefix, searches for an address starting with those characters: each
    /// extra character takes 32 times longer (5 characters: seconds; 7: about an hour on
    /// two cores). Ctrl-C stops the search and writes nothing.
    Keygen(KeygenArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// From Onionbalance's config.yaml: its service's master key (PEM or tor's format, stored
    /// encrypted here) and its instances as backends.
    ///
    /// Everything else is as `init --import-key`: a new cluster of one node, config.toml in the
    /// config directory, a join token if --endpoint is given. Stop Onionbalance once this node
    /// publishes (`rustbalance status`): the first uploads go above the revision Onionbalance
    /// left on the HSDirs, so clients see no gap.
    Onionbalance(ImportOnionbalanceArgs),
}

#[derive(Debug, Args)]
pub struct ImportOnionbalanceArgs {
    /// Onionbalance's configuration file (its `key` is read relative to this file).
    #[arg(value_name = "CONFIG.YAML")]
    pub config: PathBuf,
    #[command(flatten)]
    pub setup: FirstNodeArgs,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a backend onion service.
    Add {
        /// A short name for logs and status (A-Z a-z 0-9 - _ .).
        name: String,
        /// Its onion address (56 characters and .onion).
        address: String,
    },
    /// Forget a backend.
    Remove { name: String },
    /// Keep a backend out of the descriptor (maintenance) without forgetting it.
    Exclude { name: String },
    /// Let an excluded backend back into the descriptor.
    Include { name: String },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Search for a master address starting with this base32 prefix (a-z, 2-7).
    #[arg(long, value_name = "PREFIX")]
    pub vanity_prefix: Option<String>,
    /// A backend onion service to balance over; repeat for each backend.
    #[arg(long = "backend", value_name = "NAME=ADDRESS")]
    pub backends: Vec<String>,
    /// Use this existing master key instead of creating one: tor's hs_ed25519_secret_key, a
    /// HiddenServiceDir or mkp224o directory, an Onionbalance PEM key, or a 32-byte seed.
    #[arg(long, value_name = "PATH", conflicts_with = "vanity_prefix")]
    pub import_key: Option<PathBuf>,
    #[command(flatten)]
    pub setup: FirstNodeArgs,
}

/// How the first node of a cluster is set up and started (`init`, `import`).
#[derive(Debug, Args)]
pub struct FirstNodeArgs {
    /// How other nodes reach this one over UDP (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
    /// Local UDP address for the cluster tunnel [default: 0.0.0.0 and the --endpoint port,
    /// else 0.0.0.0:51820].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Write everything but do not start the daemon.
    #[arg(long)]
    pub no_start: bool,
    /// Run in the foreground even as root on a systemd host (default there: install, enable
    /// and start rustbalance.service).
    #[arg(long)]
    pub no_systemd: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The join token (`rb1:...`). Prefer --token-file: a command-line argument is visible to
    /// every user of the machine (ps, /proc) for as long as the process runs.
    #[arg(required_unless_present = "token_file", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the join token from this file, or from standard input if PATH is `-`.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// How the other nodes reach this one over UDP (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: String,
    /// Local UDP address for the cluster tunnel [default: 0.0.0.0 and the --endpoint port].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// How long to wait for the member named in the token to answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// Join and write the config but do not start the daemon.
    #[arg(long)]
    pub no_start: bool,
    /// Run in the foreground even as root on a systemd host (default there: install, enable
    /// and start rustbalance.service).
    #[arg(long)]
    pub no_systemd: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write the key into (created; must not hold a key already).
    /// Default: a directory named after the address, in the current directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Search for an address starting with this base32 prefix (a-z, 2-7, at most 12).
    #[arg(long, value_name = "PREFIX")]
    pub vanity_prefix: Option<String>,
    /// Search threads (default: all cores).
    #[arg(long, value_name = "N", requires = "vanity_prefix")]
    pub threads: Option<std::num::NonZeroUsize>,
    /// Measure the search rate for this many seconds instead of stopping at a hit; writes
    /// no key.
    #[arg(
        long,
        value_name = "SECONDS",
        requires = "vanity_prefix",
        conflicts_with = "out"
    )]
    pub bench: Option<std::num::NonZeroU64>,
}

/// Why a command failed; decides the exit status.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
    #[error("--vanity-prefix: {0}")]
    VanityPrefix(#[from] PrefixError),
    #[error("{0}")]
    Argument(String),
    #[error("cannot install the Ctrl-C handler: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    NodeFiles(#[from] NodeFilesError),
    #[error(transparent)]
    Search(SearchError),
    #[error("stopped: {0}; nothing was written")]
    Interrupted(SearchError),
    #[error(transparent)]
    Token(#[from] crate::cluster::token::TokenError),
    #[error(transparent)]
    Onionbalance(#[from] crate::config::onionbalance::OnionbalanceConfigError),
    #[error("{0}")]
    Join(String),
    #[error(
        "no rustbalance daemon answers on {path}: {source} (is it running, with this --state-dir?)"
    )]
    NoDaemon {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("installing the systemd unit: {0} (the node's files are written; run `rustbalance run`, or fix this and run `systemctl enable --now rustbalance`)")]
    Install(#[from] crate::daemon::systemd::InstallError),
    /// The daemon refused a control request.
    #[error("refused: {0}")]
    Refused(String),
    /// `status` found the node unhealthy; the table already said why.
    #[error("the node is unhealthy: {0}")]
    Unhealthy(String),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) => ExitCode::from(2),
            CliError::Daemon(_)
            | CliError::KeyFile(_)
            | CliError::Randomness(_)
            | CliError::Search(_)
            | CliError::Signals(_) => ExitCode::from(1),
            CliError::NodeFiles(NodeFilesError::AlreadySetUp(_) | NodeFilesError::Leftover(_)) => {
                ExitCode::from(2)
            }
            CliError::NodeFiles(_) => ExitCode::from(1),
            CliError::VanityPrefix(_)
            | CliError::Argument(_)
            | CliError::Token(_)
            | CliError::Onionbalance(_) => ExitCode::from(2),
            CliError::Join(_)
            | CliError::Unhealthy(_)
            | CliError::Install(_)
            | CliError::Refused(_) => ExitCode::from(1),
            CliError::NoDaemon { .. } => ExitCode::from(3),
            // What a shell reports for a program stopped by SIGINT.
            CliError::Interrupted(_) => ExitCode::from(130),
        }
    }
}

/// Warn on stderr when other machines may not reach this node at `endpoint` (a single-label
/// name, a name that does not resolve, or one that resolves only to loopback here).
fn warn_about_endpoint(endpoint: &crate::cluster::Endpoint) {
    use std::net::ToSocketAddrs;
    let resolved = (endpoint.bare_host(), endpoint.port())
        .to_socket_addrs()
        .map(|addresses| addresses.map(|address| address.ip()).collect())
        .map_err(|err| err.to_string());
    if let Some(concern) = endpoint.concern(resolved) {
        eprintln!("warning: --endpoint {endpoint}: {concern}");
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rustbalance: {err}");
            err.exit_code()
        }
    }
}

fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run => run_node(&cli.config_dir, &cli.state_dir),
        Command::Init(args) => init::init(args, &cli.config_dir, &cli.state_dir),
        Command::Import(ImportCommand::Onionbalance(args)) => {
            init::import_onionbalance(args, &cli.config_dir, &cli.state_dir)
        }
        Command::Token => init::token(&cli.config_dir, &cli.state_dir),
        Command::Join(args) => join::join(args, &cli.config_dir, &cli.state_dir),
        Command::Status(args) => status(args, &cli.state_dir),
        Command::Doctor => doctor(&cli.config_dir, &cli.state_dir),
        Command::Keygen(args) => keygen::run(args),
        Command::Backend(command) => control::backend(command, &cli.state_dir),
        Command::Remove { node_id } => control::remove(&node_id, &cli.state_dir),
        Command::RotateSecret => control::rotate_secret(&cli.state_dir),
    }
}

/// After `init` or `join`: install and start the systemd unit where that is the way (root on a
/// systemd host), else run the daemon in the foreground.
fn start_node(
    config_dir: &std::path::Path,
    state_dir: &std::path::Path,
    no_systemd: bool,
) -> Result<(), CliError> {
    use crate::daemon::systemd::{self, Host, ServicePlan};
    match systemd::plan(Host::detect(config_dir, state_dir, no_systemd)) {
        ServicePlan::Install => {
            systemd::install_and_start(config_dir, state_dir)?;
            println!("\nInstalled and started rustbalance.service. Look with `rustbalance status` or `systemctl status rustbalance`.");
            Ok(())
        }
        ServicePlan::Foreground(note) => {
            if let Some(note) = note {
                println!("\n{note}");
            }
            run_node(config_dir, state_dir)
        }
    }
}

/// `rustbalance run`: load and check the configuration (Arti's `[arti]` table included), then
/// run the node in the foreground.
fn run_node(config_dir: &std::path::Path, state_dir: &std::path::Path) -> Result<(), CliError> {
    let config = Config::load(config_dir, state_dir)?;
    let arti = ArtiSettings::from_config(&config)?;
    daemon::run(config, arti)?;
    Ok(())
}

/// Ask the running daemon over its status socket: its answer as sent, and as read.
fn ask_daemon(
    state_dir: &std::path::Path,
) -> Result<(String, crate::daemon::status::NodeStatus), CliError> {
    use std::io::Read as _;
    const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    let path = state_dir.join(crate::daemon::status::SOCKET_FILE);
    let no_daemon = |source| CliError::NoDaemon {
        path: path.clone(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(no_daemon)?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(no_daemon)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(no_daemon)?;
    let status = serde_json::from_str(&text).map_err(|err| {
        no_daemon(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("its answer is not a status report ({err}); is the daemon the same version?"),
        ))
    })?;
    Ok((text, status))
}

/// `rustbalance status`: ask the daemon over its socket, print the table (or JSON).
fn status(args: StatusArgs, state_dir: &std::path::Path) -> Result<(), CliError> {
    let (text, status) = ask_daemon(state_dir)?;
    if args.json {
        println!("{}", text.trim_end());
    } else {
        print!("{}", status.render());
    }
    let problems = status.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Unhealthy(problems.join("; ")))
    }
}

/// `rustbalance doctor`: the node's files, then the running daemon's view, as findings.
fn doctor(config_dir: &std::path::Path, state_dir: &std::path::Path) -> Result<(), CliError> {
    use doctor::{Finding, Verdict};
    let mut findings = Vec::new();
    let config = doctor::diagnose_files(config_dir, state_dir, &mut findings);
    match ask_daemon(state_dir) {
        Ok((_, status)) => {
            let max_clock_skew = config.map_or(params::DEFAULT_MAX_CLOCK_SKEW, |c| {
                c.timing.max_clock_skew
            });
            findings.extend(doctor::diagnose_running(&status, max_clock_skew));
        }
        Err(err) => findings.push(Finding::new(
            Verdict::Fail,
            "daemon",
            format!("{err}; start it with `systemctl start rustbalance` (or `rustbalance run`), and `journalctl -u rustbalance` says why it stopped. Tor, the HSDirs, the backends and the peers are checked through the running node"),
        )),
    }
    for finding in &findings {
        println!("{finding}");
    }
    match findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count()
    {
        0 => {
            println!("\nno problem found");
            Ok(())
        }
        failed => Err(CliError::Unhealthy(format!(
            "{failed} problem(s), marked FAIL above"
        ))),
    }
}

/// The cluster UDP address: `--listen`, else all interfaces on the endpoint's port, else the
/// default.
fn listen_address(
    listen: Option<&str>,
    endpoint: Option<&crate::cluster::Endpoint>,
) -> Result<std::net::SocketAddr, CliError> {
    match (listen, endpoint) {
        (Some(text), _) => text.parse().map_err(|_| {
            CliError::Argument(format!(
                "--listen {text:?}: expected an IP address and port like 0.0.0.0:51820"
            ))
        }),
        (None, Some(endpoint)) => Ok(std::net::SocketAddr::from(([0, 0, 0, 0], endpoint.port()))),
        (None, None) => params::DEFAULT_CLUSTER_LISTEN
            .parse()
            .map_err(|_| CliError::Argument("bad built-in listen address".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
