//! The cluster of balancer nodes that share one master key.
//!
//! Every node carries an identity ([`NodeId`]), a [`Priority`] (1 is the first choice for
//! publisher) and an [`Endpoint`] where its peers reach it over UDP. These types are parsed
//! once, at the edge (config file, join token, wire), and trusted everywhere after that.

pub mod ability;
pub mod config_sync;
pub mod election;
pub mod lease;
pub mod membership;
pub mod messages;
pub mod outcome;
pub mod secret;
pub mod secret_rotation;
pub mod token;
pub mod transport;
pub mod wg_keys;

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's name, unique within its cluster, e.g. `node-alpha-7f3a`.
///
/// Lower-case letters, digits and `-`, starting with a letter or digit, at most 64 characters:
/// it appears in file names, log lines and status tables, so it must be safe in all three.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// The longest node id we accept.
const NODE_ID_MAX_LEN: usize = 64;

impl TryFrom<String> for NodeId {
    type Error = String;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        if id.is_empty() || id.len() > NODE_ID_MAX_LEN {
            return Err(format!(
                "node id must be 1 to {NODE_ID_MAX_LEN} characters long"
            ));
        }
        if id.starts_with('-') {
            return Err("node id must start with a letter or digit".into());
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "node id may only contain a-z, 0-9 and '-', found {bad:?}"
            ));
        }
        Ok(NodeId(id))
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// What a node does in the cluster (`snake_case` on the wire and in status output).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds the lease: builds and uploads the master descriptor.
    Publisher,
    /// Checks backends like the publisher, but uploads nothing; ready to take over.
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Publisher => "publisher",
            Role::Standby => "standby",
        })
    }
}

/// Publisher preference: 1 is the first choice, larger numbers stand by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Priority(NonZeroU32);

impl TryFrom<u32> for Priority {
    type Error = &'static str;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        NonZeroU32::new(value)
            .map(Priority)
            .ok_or("priority must be 1 or more (1 is the first choice for publisher)")
    }
}

impl From<Priority> for u32 {
    fn from(priority: Priority) -> u32 {
        priority.0.get()
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Priority {
    /// The priority for a node joining a cluster whose members hold `taken`: one past the
    /// largest, so a newcomer never outranks an existing member.
    pub fn next_free(taken: impl IntoIterator<Item = Priority>) -> Priority {
        let largest = taken.into_iter().map(|p| p.0.get()).max().unwrap_or(0);
        NonZeroU32::new(largest.saturating_add(1))
            .map(Priority)
            .unwrap_or(Priority(NonZeroU32::MAX))
    }
}

/// Where peers reach a node: `HOST:PORT`, HOST a DNS name, an IPv4 address or a bracketed
/// IPv6 address. Resolved when used, so a VPS can keep its name across address changes.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{port:?} is not a port number (1-65535)"))?;
        let bare_host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let valid_host = !bare_host.is_empty()
            && (bare_host.parse::<std::net::IpAddr>().is_ok()
                || bare_host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        if !valid_host {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

/// Why other machines may not reach a node at its endpoint, as far as this machine can tell
/// (`init` and `join` warn of it; the endpoint is still used, as a name may resolve elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointConcern {
    #[error("{0:?} is a single-label name, which other machines are unlikely to resolve: give this machine's public IP address or a full DNS name")]
    SingleLabel(String),
    #[error("{host:?} does not resolve on this machine ({reason}): other machines may not resolve it either")]
    DoesNotResolve { host: String, reason: String },
    #[error("{host:?} resolves only to loopback addresses here ({addresses}): other machines cannot reach this node there; give its public IP address or a name that resolves to it")]
    OnlyLoopback { host: String, addresses: String },
}

impl Endpoint {
    /// The port peers send to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host without the brackets of an IPv6 address.
    pub fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// What is wrong with this endpoint for peers on other machines, given what its host
    /// resolved to here (an IP address resolves to itself).
    pub fn concern(
        &self,
        resolved: Result<Vec<std::net::IpAddr>, String>,
    ) -> Option<EndpointConcern> {
        let host = self.bare_host();
        match resolved {
            Ok(addresses)
                if !addresses.is_empty()
                    && addresses
                        .iter()
                        .all(|a| a.is_loopback() || a.is_unspecified()) =>
            {
                let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
                Some(EndpointConcern::OnlyLoopback {
                    host: host.to_owned(),
                    addresses: addresses.join(", "),
                })
            }
            Err(reason) => Some(EndpointConcern::DoesNotResolve {
                host: host.to_owned(),
                reason,
            }),
            Ok(addresses) if addresses.is_empty() => Some(EndpointConcern::DoesNotResolve {
                host: host.to_owned(),
                reason: "no address".to_owned(),
            }),
            Ok(_) if host.parse::<std::net::IpAddr>().is_err() && !host.contains('.') => {
                Some(EndpointConcern::SingleLabel(host.to_owned()))
            }
            Ok(_) => None,
        }
    }

    /// The first address the host name resolves to (an IP address resolves to itself).
    pub async fn resolve(&self) -> std::io::Result<std::net::SocketAddr> {
        let host = self.bare_host();
        tokio::net::lookup_host((host, self.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.host),
                )
            })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Endpoint> for String {
    fn from(endpoint: Endpoint) -> String {
        endpoint.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_other_machines_cannot_reach_are_named() {
        use std::net::IpAddr;
        let endpoint = |text: &str| text.parse::<Endpoint>().unwrap();
        let public: IpAddr = "203.0.113.7".parse().unwrap();
        let loopback: IpAddr = "127.0.1.1".parse().unwrap();
        assert_eq!(
            endpoint("vm:51820").concern(Ok(vec![public])),
            Some(EndpointConcern::SingleLabel("vm".into()))
        );
        assert!(matches!(
            endpoint("vm:51820").concern(Ok(vec![loopback])),
            Some(EndpointConcern::OnlyLoopback { .. })
        ));
        assert_eq!(
            endpoint("vm.example.net:51820").concern(Ok(vec![public])),
            None
        );
        assert_eq!(
            endpoint("203.0.113.7:51820").concern(Ok(vec![public])),
            None
        );
        assert!(matches!(
            endpoint("vm.example.net:51820").concern(Ok(vec![loopback, "::1".parse().unwrap()])),
            Some(EndpointConcern::OnlyLoopback { .. })
        ));
        assert!(matches!(
            endpoint("[::1]:51820").concern(Ok(vec!["::1".parse().unwrap()])),
            Some(EndpointConcern::OnlyLoopback { .. })
        ));
        assert!(matches!(
            endpoint("gone.example.net:51820").concern(Err("no such host".into())),
            Some(EndpointConcern::DoesNotResolve { .. })
        ));
        assert!(matches!(
            endpoint("gone.example.net:51820").concern(Ok(vec![])),
            Some(EndpointConcern::DoesNotResolve { .. })
        ));
    }

    #[test]
    fn node_ids_are_lowercase_names() {
        assert!(NodeId::try_from("node-alpha-7f3a".to_owned()).is_ok());
        for bad in ["", "-node", "Node", "node_1", "node alpha", &"n".repeat(65)] {
            assert!(
                NodeId::try_from(bad.to_owned()).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn priority_zero_is_rejected() {
        assert!(Priority::try_from(0).is_err());
        assert_eq!(u32::from(Priority::try_from(3).unwrap()), 3);
    }

    #[test]
    fn a_newcomer_gets_the_next_free_priority() {
        let p = |n| Priority::try_from(n).unwrap();
        assert_eq!(Priority::next_free([]), p(1));
        assert_eq!(Priority::next_free([p(1), p(3), p(2)]), p(4));
        // Gaps left by removed nodes are not reused: nobody jumps ahead of a member.
        assert_eq!(Priority::next_free([p(1), p(5)]), p(6));
    }

    #[test]
    fn endpoints_take_names_and_addresses() {
        for good in [
            "vps1.example.net:51820",
            "203.0.113.5:51820",
            "[2001:db8::1]:51820",
        ] {
            assert_eq!(good.parse::<Endpoint>().unwrap().to_string(), good);
        }
        for bad in [
            "vps1",
            "vps1:",
            "vps1:0",
            "vps1:70000",
            ":51820",
            "bad host:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} accepted");
        }
    }
}
