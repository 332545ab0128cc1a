//! The commands that change a running cluster: `backend add|remove|exclude|include`,
//! `remove` and `rotate-secret`. Each asks this node's daemon over its control socket (`daemon::control`) and
//! prints its answer; the daemon tells the other members.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;

use super::{BackendCommand, CliError};
use crate::config::BackendName;
use crate::daemon::control::{ControlReply, ControlRequest, ANSWER_TIMEOUT, CONTROL_SOCKET_FILE};

/// `rustbalance backend ...`.
pub(super) fn backend(command: BackendCommand, state_dir: &Path) -> Result<(), CliError> {
    let name = |text: String| {
        BackendName::try_from(text).map_err(|reason| CliError::Argument(format!("NAME: {reason}")))
    };
    let request = match command {
        BackendCommand::Add { name: n, address } => ControlRequest::BackendAdd {
            name: name(n)?,
            address: address
                .parse()
                .map_err(|err| CliError::Argument(format!("ADDRESS {address:?}: {err}")))?,
        },
        BackendCommand::Remove { name: n } => ControlRequest::BackendRemove { name: name(n)? },
        BackendCommand::Exclude { name: n } => ControlRequest::BackendExclude { name: name(n)? },
        BackendCommand::Include { name: n } => ControlRequest::BackendInclude { name: name(n)? },
    };
    ask(state_dir, &request)
}

/// `rustbalance remove NODE_ID`.
pub(super) fn remove(node_id: &str, state_dir: &Path) -> Result<(), CliError> {
    let node_id = node_id
        .to_owned()
        .try_into()
        .map_err(|reason| CliError::Argument(format!("NODE_ID {node_id:?}: {reason}")))?;
    ask(state_dir, &ControlRequest::RemoveMember { node_id })
}

/// `rustbalance rotate-secret`.
pub(super) fn rotate_secret(state_dir: &Path) -> Result<(), CliError> {
    ask(state_dir, &ControlRequest::RotateSecret)
}

/// Send `request` to the daemon and print what it did.
fn ask(state_dir: &Path, request: &ControlRequest) -> Result<(), CliError> {
    let path = state_dir.join(CONTROL_SOCKET_FILE);
    let no_daemon = |source| CliError::NoDaemon {
        path: path.clone(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(no_daemon)?;
    // The daemon answers within its own limit; a little more here, for the socket.
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT + std::time::Duration::from_secs(5)))
        .map_err(no_daemon)?;
    let mut line = serde_json::to_vec(request)
        .map_err(|err| CliError::Argument(format!("internal error: {err}")))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(no_daemon)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(no_daemon)?;
    let reply: ControlReply = serde_json::from_str(&answer).map_err(|err| {
        no_daemon(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("its answer is not a control reply ({err}); is the daemon the same version?"),
        ))
    })?;
    match reply {
        ControlReply::Done { message } => {
            println!("{message}");
            Ok(())
        }
        ControlReply::Refused { error } => Err(CliError::Refused(error)),
    }
}
