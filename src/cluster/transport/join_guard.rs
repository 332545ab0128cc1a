//! The checks a join request passes before the program is asked about it.
//!
//! A join request arrives in clear UDP, before the newcomer has a tunnel (see
//! `cluster::messages::JoinRequest`). Only its HMAC under the cluster secret vouches for it, so
//! the guard checks, in this order: the MAC (nothing is remembered about a request that fails
//! it, so strangers cannot fill our memory); the timestamp, within [`JOIN_MAX_SKEW`] of our
//! clock; and that this exact MAC was not accepted before, which stops the replay of a request
//! captured while still fresh. A newcomer repeats its request until the answer arrives, each
//! time freshly signed; those repeats are not handed to the program again while it is still
//! deciding about the first.

use std::collections::HashMap;

use super::{JOIN_DECISION_HOLDOFF, JOIN_MAX_SKEW};
use crate::clock::Timestamp;
use crate::cluster::messages::{JoinMac, JoinRequest};
use crate::cluster::secret::ClusterSecret;
use crate::cluster::NodeId;

/// Accepted MACs remembered at most. Only holders of the cluster secret can add to it, so
/// reaching the cap means a member is misbehaving; further requests are then refused.
const MAX_REMEMBERED_MACS: usize = 4096;

/// Why a join request was not handed to the program.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum JoinRejection {
    #[error("join request is not signed with this cluster's secret")]
    BadMac,
    #[error(
        "join request is {skew_secs} s away from our clock (limit {} s): an old request, or a \
         wrong clock on one side",
        JOIN_MAX_SKEW.as_secs()
    )]
    Stale { skew_secs: u64 },
    #[error("join request was already used (replayed)")]
    Replayed,
    #[error("too many join requests in the last minutes")]
    TooMany,
    /// A repeat from a newcomer whose earlier request the program is still deciding about.
    #[error("repeat of a join request already being decided")]
    Repeat,
}

/// Remembers accepted join requests for replay and repeat detection.
#[derive(Default)]
pub(super) struct JoinGuard {
    /// Each accepted MAC with its request's timestamp, kept until the timestamp is too old to
    /// pass the skew check anyway.
    used_macs: HashMap<JoinMac, u64>,
    /// When each newcomer's request was last handed to the program.
    handed_out: HashMap<NodeId, Timestamp>,
}

impl JoinGuard {
    /// `Ok` if `request` should go to the program; remembers it then.
    pub(super) fn admit(
        &mut self,
        request: &JoinRequest,
        secret: &ClusterSecret,
        now: Timestamp,
    ) -> Result<(), JoinRejection> {
        let now_secs = now.as_unix_secs();
        if !request.verify(secret) {
            return Err(JoinRejection::BadMac);
        }
        let skew_secs = now_secs.abs_diff(request.timestamp_secs);
        if skew_secs > JOIN_MAX_SKEW.as_secs() {
            return Err(JoinRejection::Stale { skew_secs });
        }
        if self.used_macs.contains_key(&request.mac) {
            return Err(JoinRejection::Replayed);
        }
        self.forget_old(now);
        if self.used_macs.len() >= MAX_REMEMBERED_MACS {
            return Err(JoinRejection::TooMany);
        }
        self.used_macs.insert(request.mac, request.timestamp_secs);
        if let Some(at) = self.handed_out.get(&request.node_id) {
            if at.is_recent(now, JOIN_DECISION_HOLDOFF) {
                return Err(JoinRejection::Repeat);
            }
        }
        self.handed_out.insert(request.node_id.clone(), now);
        Ok(())
    }

    /// Forgets what can no longer matter: MACs whose timestamps fail the skew check by now,
    /// and hand-outs older than the hold-off.
    pub(super) fn forget_old(&mut self, now: Timestamp) {
        let now_secs = now.as_unix_secs();
        let max_skew = JOIN_MAX_SKEW.as_secs();
        self.used_macs
            .retain(|_, timestamp| timestamp.saturating_add(max_skew) >= now_secs);
        self.handed_out
            .retain(|_, at| at.is_recent(now, JOIN_DECISION_HOLDOFF));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wg_keys::generate_keypair;

    const NOW_SECS: u64 = 1_700_000_000;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(secs)
    }

    fn request(secret: &ClusterSecret, id: &str, timestamp_secs: u64) -> JoinRequest {
        JoinRequest::sign(
            secret,
            NodeId::try_from(id.to_owned()).unwrap(),
            generate_keypair().1,
            "127.0.0.1:51820".parse().unwrap(),
            timestamp_secs,
        )
    }

    #[test]
    fn fresh_request_with_the_right_secret_is_admitted_once() {
        let secret = ClusterSecret::generate();
        let mut guard = JoinGuard::default();
        let req = request(&secret, "newcomer", NOW_SECS);
        assert_eq!(guard.admit(&req, &secret, at(NOW_SECS)), Ok(()));
        assert_eq!(
            guard.admit(&req, &secret, at(NOW_SECS + 1)),
            Err(JoinRejection::Replayed)
        );
    }

    #[test]
    fn wrong_secret_is_rejected_and_not_remembered() {
        let secret = ClusterSecret::generate();
        let mut guard = JoinGuard::default();
        let req = request(&ClusterSecret::generate(), "newcomer", NOW_SECS);
        assert_eq!(
            guard.admit(&req, &secret, at(NOW_SECS)),
            Err(JoinRejection::BadMac)
        );
        assert!(guard.used_macs.is_empty());
    }

    #[test]
    fn old_or_future_requests_are_rejected() {
        let secret = ClusterSecret::generate();
        let mut guard = JoinGuard::default();
        let skew = JOIN_MAX_SKEW.as_secs();
        for timestamp in [NOW_SECS - skew - 1, NOW_SECS + skew + 1] {
            assert_eq!(
                guard.admit(
                    &request(&secret, "newcomer", timestamp),
                    &secret,
                    at(NOW_SECS)
                ),
                Err(JoinRejection::Stale {
                    skew_secs: skew + 1
                })
            );
        }
    }

    #[test]
    fn repeats_wait_for_the_decision_holdoff() {
        let secret = ClusterSecret::generate();
        let mut guard = JoinGuard::default();
        let first = request(&secret, "newcomer", NOW_SECS);
        let repeat = request(&secret, "newcomer", NOW_SECS + 1);
        let other = request(&secret, "someone-else", NOW_SECS + 1);
        assert_eq!(guard.admit(&first, &secret, at(NOW_SECS)), Ok(()));
        assert_eq!(
            guard.admit(&repeat, &secret, at(NOW_SECS + 1)),
            Err(JoinRejection::Repeat)
        );
        assert_eq!(guard.admit(&other, &secret, at(NOW_SECS + 1)), Ok(()));
        let later = request(&secret, "newcomer", NOW_SECS + 6);
        let after_holdoff = at(NOW_SECS) + JOIN_DECISION_HOLDOFF;
        assert_eq!(guard.admit(&later, &secret, after_holdoff), Ok(()));
    }

    #[test]
    fn remembered_macs_expire_with_their_timestamps() {
        let secret = ClusterSecret::generate();
        let mut guard = JoinGuard::default();
        let req = request(&secret, "newcomer", NOW_SECS);
        assert_eq!(guard.admit(&req, &secret, at(NOW_SECS)), Ok(()));
        guard.forget_old(at(NOW_SECS + JOIN_MAX_SKEW.as_secs() + 1));
        assert!(guard.used_macs.is_empty());
    }
}
