//! The Arti side of the HTTP probe: is a backend actually answering through Tor?
//!
//! A backend whose tor process died leaves its descriptor on the HSDirs for up to three hours,
//! so a successful descriptor fetch proves little. The probe goes the whole way a client goes
//! (descriptor, introduction, rendezvous) through the embedded client and sends one
//! `GET <path> HTTP/1.0`; only the status line of the reply is read.

use arti_client::config::BoolOrAuto;
use arti_client::StreamPrefs;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::network::{HttpProbe, ProbeError};
use super::EmbeddedTor;
use crate::keys::onion_address::OnionAddress;

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

    async fn probe_unbounded(
        &self,
        address: &OnionAddress,
        probe: &HttpProbe<'_>,
    ) -> Result<(), ProbeError> {
        let mut prefs = StreamPrefs::new();
        prefs.connect_to_onion_services(BoolOrAuto::Explicit(true));
        // Fresh circuits and a fresh look-up each time, as a new client would: reusing an old
        // rendezvous circuit to a backend that died only ends in a stream timeout.
        prefs.new_isolation_group();
        let host = address.to_string();
        let stream = self
            .client
            .connect_with_prefs((host.as_str(), probe.port), &prefs)
            .await
            .map_err(|err| ProbeError::Connect(err.to_string()))?;
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
        stream
            .read_line(&mut status_line)
            .await
            .map_err(|err| ProbeError::NoReply(err.to_string()))?;
        let status = parse_status(&status_line)
            .ok_or_else(|| ProbeError::NotHttp(status_line.trim_end().to_owned()))?;
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
