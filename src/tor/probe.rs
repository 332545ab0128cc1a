//! The Arti side of the liveness checks: is a backend actually answering through Tor?
//!
//! A backend whose tor process died leaves its descriptor on the HSDirs for up to three hours,
//! so a successful descriptor fetch proves little. Both checks go the whole way a client goes
//! (descriptor, introduction, rendezvous) through the embedded client, with fresh circuits.
//! The rendezvous check (the default) stops there: a stream to [`LIVENESS_PORT`] refused by the
//! service, or its circuit closed, still proves the service's tor came to the rendezvous; only
//! a failure before it (found by Arti's `tor_hsclient::ConnError` among the causes) means dead.
//! The HTTP probe (`[health.probe]`) sends one `GET <path> HTTP/1.0` and reads only the status
//! line of the reply.

use std::time::Duration;

use arti_client::config::BoolOrAuto;
use arti_client::{DataStream, ErrorKind, HasKind as _, StreamPrefs};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};

use super::network::{HttpProbe, LivenessError, ProbeError};
use super::EmbeddedTor;
use crate::keys::onion_address::OnionAddress;

/// The port the rendezvous check opens a stream to. Port 1 (tcpmux) is served by no onion
/// service in practice, so the check never reaches the backend's application: its tor
/// refuses the stream (or closes the circuit) after the rendezvous, which is all we need.
const LIVENESS_PORT: u16 = 1;
/// The most of a probe's reply read: its status line ("HTTP/1.1 200 OK" and a reason).
const MAX_STATUS_LINE_BYTES: u64 = 1024;

impl EmbeddedTor {
    /// `Ok` if `address` answered the probe with the expected status, else why not.
    pub(super) async fn http_probe(
        &self,
        address: &OnionAddress,
        probe: &HttpProbe<'_>,
    ) -> Result<(), ProbeError> {
        tokio::time::timeout(probe.timeout, self.probe_unbounded(address, probe))
            .await
            .unwrap_or(Err(ProbeError::Timeout(probe.timeout)))
    }

    /// `Ok` if a rendezvous with `address` completed within `timeout`, else why not.
    pub(super) async fn rendezvous_check(
        &self,
        address: &OnionAddress,
        timeout: Duration,
    ) -> Result<(), LivenessError> {
        let attempt = self.fresh_stream(address, LIVENESS_PORT);
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(LivenessError::Timeout(timeout)),
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(error)) => rendezvous_verdict(&error),
        }
    }

    /// A stream to `address`:`port` over fresh circuits, after a fresh look-up, as a new client
    /// would make it: reusing an old rendezvous circuit to a backend that died only ends in a
    /// stream timeout.
    async fn fresh_stream(
        &self,
        address: &OnionAddress,
        port: u16,
    ) -> Result<DataStream, arti_client::Error> {
        let mut prefs = StreamPrefs::new();
        prefs.connect_to_onion_services(BoolOrAuto::Explicit(true));
        prefs.new_isolation_group();
        let host = address.to_string();
        self.client
            .connect_with_prefs((host.as_str(), port), &prefs)
            .await
    }

    async fn probe_unbounded(
        &self,
        address: &OnionAddress,
        probe: &HttpProbe<'_>,
    ) -> Result<(), ProbeError> {
        let host = address.to_string();
        let stream = self
            .fresh_stream(address, probe.port)
            .await
            .map_err(|err| ProbeError::Connect(causes(&err)))?;
        let mut stream = BufReader::new(stream);
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: rustbalance-probe\r\nConnection: close\r\n\r\n",
            probe.path
        );
        let send = |err: std::io::Error| ProbeError::Send(err.to_string());
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(send)?;
        stream.get_mut().flush().await.map_err(send)?;
        let mut status_line = String::new();
        // A backend may answer anything: one line, of a bounded length, is all we read.
        (&mut stream)
            .take(MAX_STATUS_LINE_BYTES)
            .read_line(&mut status_line)
            .await
            .map_err(|err| ProbeError::NoReply(err.to_string()))?;
        let status = parse_status(&status_line).ok_or_else(|| {
            // Quoted (escaped) in the log as what the backend sent: keep it short.
            ProbeError::NotHttp(status_line.trim_end().chars().take(80).collect())
        })?;
        if status == probe.expected_status {
            Ok(())
        } else {
            Err(ProbeError::UnexpectedStatus {
                status,
                expected: probe.expected_status,
                path: probe.path.to_owned(),
            })
        }
    }
}

/// What a failed connect says about the service: a failure before the rendezvous completed
/// (Arti's `ConnError` among the causes) is the service's, unless its kind points at this
/// node's own Tor; a failure after it (the stream refused, the circuit closed by the service)
/// proves the service alive.
fn rendezvous_verdict(error: &arti_client::Error) -> Result<(), LivenessError> {
    let text = causes(error);
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(conn) = current.downcast_ref::<tor_hsclient::ConnError>() {
            return Err(match conn.kind() {
                ErrorKind::OnionServiceNotFound => LivenessError::NoDescriptor(text),
                kind if is_own_side(kind) => LivenessError::OwnTor(text),
                // Arti looked the descriptor up itself; failing to get it when ours arrived is
                // this node's trouble (its directory circuits), not the service's.
                _ if matches!(conn, tor_hsclient::ConnError::DescriptorDownload(_)) => {
                    LivenessError::OwnTor(text)
                }
                _ => LivenessError::NoRendezvous(text),
            });
        }
        cause = current.source();
    }
    if is_own_side(error.kind()) {
        return Err(LivenessError::OwnTor(text));
    }
    tracing::debug!(error = %text, "stream refused after the rendezvous: the service is alive");
    Ok(())
}

/// Kinds of failure that come from this node's own Tor client, not from a remote party.
fn is_own_side(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::TorAccessFailed
            | ErrorKind::BootstrapRequired
            | ErrorKind::TorDirectoryUnusable
            | ErrorKind::DirectoryExpired
            | ErrorKind::ClockSkew
            | ErrorKind::NoPath
            | ErrorKind::NoExit
            | ErrorKind::LocalNetworkError
            | ErrorKind::LocalResourceExhausted
            | ErrorKind::LocalResourceAlreadyInUse
            | ErrorKind::TransientFailure
            | ErrorKind::ArtiShuttingDown
            | ErrorKind::ReactorShuttingDown
            | ErrorKind::FeatureDisabled
            | ErrorKind::NotImplemented
            | ErrorKind::ForbiddenStreamTarget
            | ErrorKind::InvalidStreamTarget
            | ErrorKind::BadApiUsage
            | ErrorKind::Internal
    )
}

/// An error with every cause after it, for the log and status (Arti's top-level message alone
/// rarely says what failed).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let line = current.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = current.source();
    }
    text
}

/// The status code of an HTTP/1.x status line (`HTTP/1.0 200 OK` → 200).
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status("HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(""), None);
    }
}
