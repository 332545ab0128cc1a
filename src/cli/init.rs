//! `rustbalance init`, `rustbalance import onionbalance` and `rustbalance token`: set up the
//! first node of a cluster (from new or imported keys, or from Onionbalance's configuration),
//! and print a join token for further nodes.
//!
//! Both set-ups check every argument before they create anything, then write the node's
//! files (`node_files`), print what the operator needs (master address, node id, priority,
//! the join token in a box with the `rustbalance join` line) and start the daemon unless
//! `--no-start`.

use std::net::SocketAddr;
use std::path::Path;

use super::{keygen, CliError, FirstNodeArgs, ImportOnionbalanceArgs, InitArgs};
use crate::cluster::secret::ClusterSecret;
use crate::cluster::token::{JoinToken, TokenOrigin, TOKEN_WARNING};
use crate::cluster::wg_keys::WgPrivateKey;
use crate::cluster::{Endpoint, NodeId, Priority};
use crate::config::{onionbalance, BackendName, Config};
use crate::keys::files::{import_master_key, load_master_key};
use crate::keys::onion_address::OnionAddress;
use crate::keys::vanity::{self, VanityPrefix};
use crate::keys::{KekSource, MasterKey};
use crate::params;
use crate::storage::node_files::{self, NewNode};

pub(super) fn init(args: InitArgs, config_dir: &Path, state_dir: &Path) -> Result<(), CliError> {
    // Everything the operator typed is checked before anything is created.
    let backends = args
        .backends
        .iter()
        .map(|spec| parse_backend(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let (endpoint, listen) = check_first_node(&args.setup, config_dir)?;
    let prefix: Option<VanityPrefix> = args.vanity_prefix.as_deref().map(str::parse).transpose()?;

    let master_key = match (&args.import_key, &prefix) {
        (Some(path), _) => import_master_key(path)?,
        (None, Some(prefix)) => {
            let stop = keygen::stop_on_signal()?;
            keygen::search(prefix, vanity::default_threads(), &stop)?
        }
        (None, None) => MasterKey::generate()?,
    };
    set_up_first_node(
        config_dir,
        state_dir,
        &args.setup,
        (endpoint, listen),
        master_key,
        &backends,
    )
}

/// `rustbalance import onionbalance`: `init` with Onionbalance's master key and instances.
pub(super) fn import_onionbalance(
    args: ImportOnionbalanceArgs,
    config_dir: &Path,
    state_dir: &Path,
) -> Result<(), CliError> {
    let service = onionbalance::read(&args.config)?;
    let addresses = check_first_node(&args.setup, config_dir)?;
    let master_key = import_master_key(&service.key)?;
    println!(
        "Onionbalance service {} read from {}: master key {}, {} instance(s)",
        master_key.onion_address(),
        args.config.display(),
        service.key.display(),
        service.instances.len()
    );
    set_up_first_node(
        config_dir,
        state_dir,
        &args.setup,
        addresses,
        master_key,
        &service.instances,
    )
}

/// The endpoint and listen address of a first node, once it is clear that the config
/// directory holds no node yet.
fn check_first_node(
    setup: &FirstNodeArgs,
    config_dir: &Path,
) -> Result<(Option<Endpoint>, SocketAddr), CliError> {
    let endpoint = setup
        .endpoint
        .as_deref()
        .map(|text| {
            text.parse::<Endpoint>()
                .map_err(|reason| CliError::Argument(format!("--endpoint: {reason}")))
        })
        .transpose()?;
    let listen = super::listen_address(setup.listen.as_deref(), endpoint.as_ref())?;
    let config_path = config_dir.join(params::CONFIG_FILE_NAME);
    if config_path.exists() {
        return Err(CliError::Argument(format!(
            "{} already exists: this machine is already set up as a node; nothing was changed",
            config_path.display()
        )));
    }
    if let Some(endpoint) = &endpoint {
        super::warn_about_endpoint(endpoint);
    }
    Ok((endpoint, listen))
}

/// Write the first node's files, say what the operator needs, and start it.
fn set_up_first_node(
    config_dir: &Path,
    state_dir: &Path,
    setup: &FirstNodeArgs,
    (endpoint, listen): (Option<Endpoint>, SocketAddr),
    master_key: MasterKey,
    backends: &[(BackendName, OnionAddress)],
) -> Result<(), CliError> {
    let node_id = new_node_id();
    let priority = Priority::try_from(1).map_err(|e| CliError::Argument(e.to_owned()))?;
    let wg_private_key = WgPrivateKey::generate();
    let cluster_secret = ClusterSecret::generate();
    node_files::create_node(
        config_dir,
        state_dir,
        &KekSource::from_env(),
        &NewNode {
            node_id: &node_id,
            priority,
            master_key: &master_key,
            wg_private_key: &wg_private_key,
            cluster_secret: &cluster_secret,
            listen,
            endpoint: endpoint.as_ref(),
            backends,
            shared_config: None,
            peers: &[],
        },
    )?;

    // Only the public address is printed here; the key itself goes into the token below.
    let address = master_key.onion_address();
    println!("RustBalance node set up in {}", config_dir.display());
    println!("  master address: {address}");
    println!("  node id:        {node_id}");
    println!("  priority:       {priority} (first choice for publisher)");
    match &endpoint {
        Some(endpoint) => {
            let token = JoinToken {
                origin: TokenOrigin {
                    node_id: node_id.clone(),
                    wg_pubkey: *wg_private_key.public_key().as_bytes(),
                    wg_endpoint: endpoint.clone(),
                },
                cluster_secret,
                master_key,
            };
            print_token(&token);
        }
        None => println!(
            "\nNo --endpoint given, so no join token yet: set [cluster] endpoint in config.toml, then run `rustbalance token`."
        ),
    }
    if backends.is_empty() {
        println!("\nNo backends yet: add [[backends]] tables to config.toml (see README).");
    }

    if setup.no_start {
        return Ok(());
    }
    super::start_node(config_dir, state_dir, setup.no_systemd)
}

/// `rustbalance token`: a fresh join token for this node's cluster.
pub(super) fn token(config_dir: &Path, state_dir: &Path) -> Result<(), CliError> {
    let config = Config::load(config_dir, state_dir)?;
    let endpoint = config.cluster.endpoint.clone().ok_or_else(|| {
        CliError::Argument(
            "[cluster] endpoint is not set in config.toml: other nodes could not reach this one"
                .into(),
        )
    })?;
    let token = JoinToken {
        origin: TokenOrigin {
            node_id: config.node.id.clone(),
            wg_pubkey: *node_files::load_wg_private_key(config_dir)?
                .public_key()
                .as_bytes(),
            wg_endpoint: endpoint,
        },
        cluster_secret: node_files::load_cluster_secret(config_dir)?,
        master_key: load_master_key(&config.master_key_path())?,
    };
    print_token(&token);
    Ok(())
}

/// The token on a line of its own (so it copies in one piece), framed, with the join command
/// and the warning that it is as secret as the master key.
pub(super) fn print_token(token: &JoinToken) {
    let text = token.encode(&mut rand::rng());
    let rule = "─".repeat(72);
    println!("\nJoin token:\n{rule}\n{text}\n{rule}");
    println!(
        "On every further node, with the token in a file only root can read:\n  \
         rustbalance join --token-file /root/rb-token --endpoint <this new node's public IP or name>:51820\n\
         (or --token-file - to paste it on standard input; --listen ADDR:PORT if it must bind another address)"
    );
    println!("\nWARNING: {TOKEN_WARNING}");
}

/// `NAME=ADDRESS` from `--backend`.
fn parse_backend(spec: &str) -> Result<(BackendName, OnionAddress), CliError> {
    let (name, address) = spec
        .split_once('=')
        .ok_or_else(|| CliError::Argument(format!("--backend {spec:?}: expected NAME=ADDRESS")))?;
    let name = BackendName::try_from(name.to_owned())
        .map_err(|reason| CliError::Argument(format!("--backend {spec:?}: {reason}")))?;
    let address = address
        .parse()
        .map_err(|reason| CliError::Argument(format!("--backend {spec:?}: {reason}")))?;
    Ok((name, address))
}

/// `node-<host>-<4 hex digits>`: recognisable in status tables, unique in practice.
pub(super) fn new_node_id() -> NodeId {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(40)
        .collect();
    let host = host.trim_matches('-');
    let suffix: u16 = rand::random();
    let id = if host.is_empty() {
        format!("node-{suffix:04x}")
    } else {
        format!("node-{host}-{suffix:04x}")
    };
    NodeId::try_from(id).unwrap_or_else(|_| {
        NodeId::try_from(format!("node-{suffix:04x}")).expect("node-<hex> is a valid node id")
    })
}
