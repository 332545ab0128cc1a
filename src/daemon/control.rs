//! The control socket: `<state-dir>/control.sock`, owner only. The commands that change the
//! cluster (`rustbalance backend ...`, `remove`, `rotate-secret`) ask the running daemon here
//! rather than editing files behind its back: the cluster loop is the one writer of
//! config.toml and `peers/`, and it tells the other members.
//!
//! One request per connection: a JSON [`ControlRequest`] on one line, answered by one JSON
//! [`ControlReply`] line. Only the socket's owner (the daemon's user, root under systemd) can
//! connect, as for `status.sock`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::status_server::bind_owner_only;
use super::DaemonError;
use crate::cluster::NodeId;
use crate::config::shared::BackendEdit;
use crate::config::BackendName;
use crate::keys::onion_address::OnionAddress;

/// File name inside the state directory.
pub const CONTROL_SOCKET_FILE: &str = "control.sock";
/// The longest request read; every real one is far shorter.
const MAX_REQUEST_BYTES: u64 = 4 * 1024;
/// A client that does not send its request within this time is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take in the cluster loop before the client hears that it did not.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What an operator asks the running node to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    BackendAdd {
        name: BackendName,
        address: OnionAddress,
    },
    BackendRemove {
        name: BackendName,
    },
    BackendExclude {
        name: BackendName,
    },
    BackendInclude {
        name: BackendName,
    },
    /// Remove a member from the cluster on every reachable member.
    RemoveMember {
        node_id: NodeId,
    },
    /// Replace the cluster secret on every member.
    RotateSecret,
}

impl ControlRequest {
    /// The change to the backends this request is, if it is one.
    pub fn backend_edit(&self) -> Option<BackendEdit> {
        Some(match self.clone() {
            ControlRequest::BackendAdd { name, address } => BackendEdit::Add { name, address },
            ControlRequest::BackendRemove { name } => BackendEdit::Remove(name),
            ControlRequest::BackendExclude { name } => BackendEdit::Exclude(name),
            ControlRequest::BackendInclude { name } => BackendEdit::Include(name),
            ControlRequest::RemoveMember { .. } | ControlRequest::RotateSecret => return None,
        })
    }
}

/// The daemon's answer: what was done, or why nothing was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlReply {
    Done { message: String },
    Refused { error: String },
}

/// What the operator asks of the cluster loop.
pub enum OperatorCommand {
    /// SIGHUP: read config.toml again.
    Reload,
    /// A request on the control socket, with where its answer goes.
    Control {
        request: ControlRequest,
        reply: oneshot::Sender<ControlReply>,
    },
}

/// The bound socket; removes its file when dropped.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Bind `<state_dir>/control.sock` (the status socket was bound first, so no other daemon
    /// runs on this state directory: a leftover file is a crashed daemon's).
    pub fn bind(state_dir: &Path) -> Result<ControlServer, DaemonError> {
        let path = state_dir.join(CONTROL_SOCKET_FILE);
        let listener = bind_owner_only(&path).map_err(|source| DaemonError::ControlSocket {
            path: path.clone(),
            source,
        })?;
        Ok(ControlServer { listener, path })
    }

    /// Hand every request to the cluster loop and write its answer back, until the task is
    /// dropped.
    pub async fn serve(self, calls: mpsc::Sender<OperatorCommand>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let (reader, mut writer) = stream.into_split();
                let mut reader = BufReader::new(reader.take(MAX_REQUEST_BYTES));
                let mut line = String::new();
                let read = reader.read_line(&mut line);
                let reply = match tokio::time::timeout(READ_TIMEOUT, read).await {
                    Ok(Ok(_)) => match serde_json::from_str::<ControlRequest>(&line) {
                        Ok(request) => ask(&calls, request).await,
                        Err(err) => ControlReply::Refused {
                            error: format!("not a control request: {err}"),
                        },
                    },
                    // Nothing worth answering: the client went away or never spoke.
                    _ => return,
                };
                let Ok(mut json) = serde_json::to_vec(&reply) else {
                    return;
                };
                json.push(b'\n');
                let _ = tokio::time::timeout(READ_TIMEOUT, writer.write_all(&json)).await;
            });
        }
    }
}

/// Pass `request` to the cluster loop and wait for its answer.
async fn ask(calls: &mpsc::Sender<OperatorCommand>, request: ControlRequest) -> ControlReply {
    let (reply, answer) = oneshot::channel();
    if calls
        .send(OperatorCommand::Control { request, reply })
        .await
        .is_err()
    {
        return ControlReply::Refused {
            error: "the node is shutting down".into(),
        };
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(reply)) => reply,
        _ => ControlReply::Refused {
            error: format!(
                "the node did not answer within {} s (see its log)",
                ANSWER_TIMEOUT.as_secs()
            ),
        },
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_read_as_written() {
        let request = ControlRequest::BackendAdd {
            name: BackendName::try_from("web-2".to_owned()).unwrap(),
            address: "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
                .parse()
                .unwrap(),
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(json.contains(r#""command":"backend_add""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&json).unwrap(),
            request
        );
        let refused = r#"{"command":"backend_add","name":"../x","address":"a.onion"}"#;
        assert!(serde_json::from_str::<ControlRequest>(refused).is_err());
        let reply = ControlReply::Refused {
            error: "no backend is named \"x\"".into(),
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<ControlReply>(&json).unwrap(), reply);
    }
}
