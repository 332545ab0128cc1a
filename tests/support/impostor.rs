//! An impostor: a process that holds the cluster secret (from a token) but was never made a
//! member by an operator. It joins through the token's member under a chosen id with a fresh
//! WireGuard key, then lies: heartbeats and lease claims as publisher with priority 1.

use std::net::SocketAddr;
use std::time::Duration;

use rustbalance::clock::Timestamp;
use rustbalance::cluster::election::{Heartbeat, LeaseClaim};
use rustbalance::cluster::messages::{JoinAccept, Message};
use rustbalance::cluster::token::JoinToken;
use rustbalance::cluster::transport::{Inbox, JoinError, PeerConfig, Transport};
use rustbalance::cluster::wg_keys::{WgPrivateKey, WgPublicKey};
use rustbalance::cluster::{NodeId, Priority, Role};

use super::balancer::free_udp_port;

pub struct Impostor {
    runtime: tokio::runtime::Runtime,
    transport: Transport,
    _inbox: Inbox,
    id: NodeId,
    origin: NodeId,
}

impl Impostor {
    /// Ask the token's member to admit `id` (on a free port of 127.0.0.1). The answer, and the
    /// impostor (kept either way, so that its socket lives until it is dropped).
    pub fn join(
        id: &str,
        token: &JoinToken,
        origin_addr: SocketAddr,
    ) -> (Impostor, Result<JoinAccept, JoinError>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let id = NodeId::try_from(id.to_owned()).unwrap();
        let origin = token.origin.node_id.clone();
        let origin_key = WgPublicKey::from_bytes(token.origin.wg_pubkey);
        let listen: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let (transport, inbox, accept) = runtime.block_on(async {
            let (transport, inbox) = Transport::bind(
                listen,
                id.clone(),
                WgPrivateKey::generate(),
                Vec::new(),
                &token.cluster_secret,
            )
            .await
            .unwrap();
            let accept = transport
                .join(
                    origin.clone(),
                    origin_key,
                    origin_addr,
                    listen.to_string().parse().unwrap(),
                    Duration::from_secs(10),
                )
                .await;
            if accept.is_ok() {
                transport
                    .add_peer(PeerConfig {
                        node_id: origin.clone(),
                        public_key: origin_key,
                        endpoint: Some(origin_addr),
                    })
                    .await
                    .unwrap();
            }
            (transport, inbox, accept)
        });
        let impostor = Impostor {
            runtime,
            transport,
            _inbox: inbox,
            id,
            origin,
        };
        (impostor, accept)
    }

    /// `rounds` times, half a second apart: a heartbeat as publisher with priority 1 and a
    /// lease claim with priority 1, to the member it joined through.
    pub fn claim_first_priority(&self, rounds: usize) {
        let first = Priority::try_from(1).unwrap();
        self.runtime.block_on(async {
            for _ in 0..rounds {
                let now = Timestamp::now();
                let heartbeat = Message::Heartbeat(Heartbeat {
                    from: self.id.clone(),
                    timestamp: now,
                    priority: first,
                    role: Role::Publisher,
                    can_publish: true,
                    last_publish: Some(now),
                    config_version: None,
                    publisher_not_served: None,
                    secret_id: None,
                });
                let _ = self.transport.send(&self.origin, &heartbeat).await;
                let claim = Message::lease_claim(&LeaseClaim {
                    from: self.id.clone(),
                    timestamp: now,
                    priority: first,
                });
                let _ = self
                    .transport
                    .send_reliable(&self.origin, claim, Duration::from_millis(400))
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.runtime.block_on(self.transport.shutdown());
    }
}
