//! `rustbalance join <token>`: add this machine to an existing cluster.
//!
//! Everything is checked and the member named in the token is asked before anything is
//! written: a bad token, an unreachable member or a refused request leave the machine as it
//! was. The answer (priority, members, the cluster's shared configuration) arrives through the
//! WireGuard tunnel the member opens to this node's new key; then the node's files are
//! written (`node_files`, config.toml last) and the daemon starts unless `--no-start`.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

use super::{init, CliError, JoinArgs};
use crate::cluster::token::JoinToken;
use crate::cluster::transport::Transport;
use crate::cluster::wg_keys::{WgPrivateKey, WgPublicKey};
use crate::cluster::Endpoint;
use crate::config::Config;
use crate::keys::KekSource;
use crate::params;
use crate::storage::node_files::{self, NewNode, NodeFilesError};

/// Longest token file read: a token is well under a kilobyte; anything longer is not one.
const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024;

pub(super) fn join(args: JoinArgs, config_dir: &Path, state_dir: &Path) -> Result<(), CliError> {
    let text = match (&args.token, &args.token_file) {
        (Some(token), _) => Zeroizing::new(token.clone()),
        (None, Some(path)) => read_token(path)?,
        // clap requires one of the two.
        (None, None) => {
            return Err(CliError::Argument(
                "give the join token with --token-file PATH (or - for standard input)".into(),
            ))
        }
    };
    let token = JoinToken::decode(text.trim())?;
    let endpoint: Endpoint = args
        .endpoint
        .parse()
        .map_err(|reason| CliError::Argument(format!("--endpoint: {reason}")))?;
    let listen = super::listen_address(args.listen.as_deref(), Some(&endpoint))?;
    super::warn_about_endpoint(&endpoint);
    if args.timeout == 0 {
        return Err(CliError::Argument(
            "--timeout must be at least 1 second".into(),
        ));
    }

    if config_dir.join(params::CONFIG_FILE_NAME).exists() {
        already_a_member(&token, config_dir, state_dir)?;
        if args.no_start {
            return Ok(());
        }
        return super::start_node(config_dir, state_dir, args.no_systemd);
    }
    node_files::ensure_no_node(config_dir)?;

    let node_id = init::new_node_id();
    let wg_private_key = WgPrivateKey::generate();
    let origin = &token.origin;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::Join(format!("cannot start the async runtime: {err}")))?;
    let accept = runtime.block_on(async {
        let origin_addr = origin.wg_endpoint.resolve().await.map_err(|err| {
            CliError::Join(format!(
                "cannot resolve the endpoint {} of {}: {err}; nothing was changed",
                origin.wg_endpoint, origin.node_id
            ))
        })?;
        let (transport, _inbox) = Transport::bind(
            listen,
            node_id.clone(),
            wg_private_key.clone(),
            Vec::new(),
            &token.cluster_secret,
        )
        .await
        .map_err(|err| CliError::Join(format!("{err}; nothing was changed")))?;
        let answer = transport
            .join(
                origin.node_id.clone(),
                WgPublicKey::from_bytes(origin.wg_pubkey),
                origin_addr,
                endpoint.clone(),
                Duration::from_secs(args.timeout),
            )
            .await;
        transport.shutdown().await;
        answer.map_err(|err| {
            CliError::Join(format!(
                "joining through {} ({}) failed: {err}; nothing was changed",
                origin.node_id, origin.wg_endpoint
            ))
        })
    })?;

    // The token's master key is stored sealed under this machine's own key-encryption key.
    node_files::create_node(
        config_dir,
        state_dir,
        &KekSource::from_env(),
        &NewNode {
            node_id: &node_id,
            priority: accept.assigned_priority,
            master_key: &token.master_key,
            wg_private_key: &wg_private_key,
            cluster_secret: &token.cluster_secret,
            listen,
            endpoint: Some(&endpoint),
            backends: &[],
            shared_config: Some(&accept.config),
            peers: &accept.peers,
        },
    )?;
    // Only the public address is printed; the key itself stays in the sealed master.key.
    let master_address = token.master_key.onion_address();
    println!("Joined the cluster of {master_address}");
    println!("  node id:      {node_id}");
    println!("  priority:     {}", accept.assigned_priority);
    println!("  cluster size: {} nodes", accept.peers.len() + 1);
    println!(
        "  publisher:    {}",
        accept
            .publisher
            .as_ref()
            .map_or("none yet".to_owned(), ToString::to_string)
    );
    println!("Files written to {}", config_dir.display());
    if args.no_start {
        return Ok(());
    }
    super::start_node(config_dir, state_dir, args.no_systemd)
}

/// `join` on a machine that is already a node: fine (and nothing changes) if it belongs to the
/// token's cluster; refused otherwise.
fn already_a_member(
    token: &JoinToken,
    config_dir: &Path,
    state_dir: &Path,
) -> Result<(), CliError> {
    let config = Config::load(config_dir, state_dir)?;
    let secret = node_files::load_cluster_secret(config_dir)?;
    if !secret.same_as(&token.cluster_secret) {
        return Err(NodeFilesError::AlreadySetUp(config_dir.join(params::CONFIG_FILE_NAME)).into());
    }
    println!(
        "This machine already belongs to that cluster as {} (priority {}); nothing was changed.",
        config.node.id, config.node.priority
    );
    Ok(())
}

/// The token from `path`, or from standard input for `-`; at most [`MAX_TOKEN_FILE_BYTES`].
fn read_token(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let shown = path.display();
    let mut bytes = Zeroizing::new(Vec::new());
    let read = if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_TOKEN_FILE_BYTES + 1).read_to_end(&mut bytes))
    };
    read.map_err(|err| CliError::Argument(format!("--token-file {shown}: {err}")))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(CliError::Argument(format!(
            "--token-file {shown}: longer than {MAX_TOKEN_FILE_BYTES} bytes, not a join token"
        )));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        CliError::Argument(format!("--token-file {shown}: not text, not a join token"))
    })?;
    Ok(Zeroizing::new(text.to_owned()))
}
