//! The status socket: `<state-dir>/status.sock`, owner only. Each connection gets the node's
//! [`NodeStatus`](crate::daemon::status::NodeStatus) as one JSON document, then the socket closes.
//!
//! And, when `[status] metrics_listen` is set, the same status as Prometheus text metrics over
//! HTTP on that loopback address ([`MetricsServer`]).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

use super::DaemonError;
use crate::daemon::status::{StatusBoard, SOCKET_FILE};
use crate::storage::fsutil::PRIVATE_FILE_MODE;

/// A reader that does not read within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound socket; removes its file when dropped.
pub struct StatusServer {
    listener: UnixListener,
    path: PathBuf,
}

impl StatusServer {
    /// Bind `<state_dir>/status.sock`. Refuses if another daemon answers on it (two daemons on
    /// one state directory would fight over Arti's cache and the lease); a stale socket file of
    /// a crashed daemon is replaced.
    pub fn bind(state_dir: &Path) -> Result<StatusServer, DaemonError> {
        let path = state_dir.join(SOCKET_FILE);
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path));
        }
        let listener = bind_owner_only(&path).map_err(|source| DaemonError::StatusSocket {
            path: path.clone(),
            source,
        })?;
        Ok(StatusServer { listener, path })
    }

    /// Answer every connection with the current status, until the task is dropped.
    pub async fn serve(self, board: StatusBoard) {
        loop {
            let Ok((mut stream, _)) = self.listener.accept().await else {
                // Out of file descriptors, say: try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let board = board.clone();
            tokio::spawn(async move {
                let Ok(mut json) = serde_json::to_vec(&board.snapshot()) else {
                    return;
                };
                json.push(b'\n');
                // A client that vanished or stalls costs nothing but its connection.
                let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&json)).await;
            });
        }
    }
}

/// Bind a Unix socket at `path` that only its owner may connect to, replacing a leftover
/// socket file.
pub(super) fn bind_owner_only(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(listener)
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The longest HTTP request head read from a metrics scraper.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Prometheus text metrics over HTTP/1.0 on a loopback address.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, DaemonError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        tracing::info!("Prometheus metrics on http://{addr}/metrics");
        Ok(MetricsServer { listener })
    }

    /// Answer `GET /metrics` (and `GET /`) with the current status, until the task is dropped.
    pub async fn serve(self, board: StatusBoard) {
        loop {
            let Ok((mut stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let board = board.clone();
            tokio::spawn(async move {
                let answer = async {
                    let head = read_request_head(&mut stream).await?;
                    let wanted = head.starts_with("GET /metrics ") || head.starts_with("GET / ");
                    let response = if wanted {
                        let body = board.snapshot().prometheus();
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
                    };
                    stream.write_all(response.as_bytes()).await
                };
                let _ = tokio::time::timeout(WRITE_TIMEOUT, answer).await;
            });
        }
    }
}

/// The request up to its blank line (or as much as fits the limit).
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
