//! Acknowledgements on top of WireGuard, which loses datagrams like plain UDP (ARCHITECTURE.md,
//! "WireGuard in process").
//!
//! The sending side keeps each acknowledged message (`Message::msg_id`) in an [`Outbox`] and
//! sends it again, with a growing delay, until its ack arrives or the caller's deadline passes.
//! The receiving side acknowledges every copy it receives (the first ack may have been the one
//! lost) but hands a message to the program only once: [`SeenIds`] remembers the ids of one
//! peer for longer than any sender keeps resending.

use std::collections::HashMap;
use std::time::Duration;

use super::{SendError, MAX_RELIABLE_WAIT, RESEND_FIRST_DELAY, RESEND_MAX_DELAY};
use crate::clock::Timestamp;
use crate::cluster::messages::MsgId;
use crate::cluster::NodeId;

/// How long a receiver remembers a message id: longer than any sender resends it.
const SEEN_ID_LIFETIME: Duration = Duration::from_secs(2 * MAX_RELIABLE_WAIT.as_secs());
/// Ids remembered per peer at most; a peer sending faster than this fills no more memory.
const SEEN_IDS_PER_PEER: usize = 4096;

/// Messages sent and not yet acknowledged.
#[derive(Default)]
pub(super) struct Outbox {
    pending: HashMap<MsgId, Pending>,
}

struct Pending {
    to: NodeId,
    /// The framed plaintext, ready for the tunnel.
    packet: Vec<u8>,
    attempts: u32,
    delay: Duration,
    /// How long the sender is willing to wait in all.
    wait: Duration,
    next_send: Timestamp,
    started: Timestamp,
    give_up: Timestamp,
}

/// What the outbox wants done now.
#[derive(Debug)]
pub(super) enum OutboxAction {
    /// Send the message again.
    Resend { to: NodeId, packet: Vec<u8> },
    /// Its deadline passed without an ack: tell the sender.
    GiveUp { id: MsgId, error: SendError },
}

impl Outbox {
    /// Tracks a message that was just sent for the first time. `wait` is capped at
    /// [`MAX_RELIABLE_WAIT`] so that receivers still remember its id when the last copy arrives.
    pub(super) fn track(
        &mut self,
        id: MsgId,
        to: NodeId,
        packet: Vec<u8>,
        wait: Duration,
        now: Timestamp,
    ) {
        let wait = wait.min(MAX_RELIABLE_WAIT);
        let pending = Pending {
            to,
            packet,
            attempts: 1,
            delay: RESEND_FIRST_DELAY,
            wait,
            next_send: now + RESEND_FIRST_DELAY,
            started: now,
            give_up: now + wait,
        };
        self.pending.insert(id, pending);
    }

    /// An ack for `id` arrived from `from`; `true` if it settles a message we sent `from`
    /// (an ack from anyone else settles nothing).
    pub(super) fn acknowledge(&mut self, from: &NodeId, id: MsgId) -> bool {
        match self.pending.get(&id) {
            Some(pending) if pending.to == *from => {
                self.pending.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Stops resending `id`: its sender no longer waits for the answer.
    pub(super) fn abandon(&mut self, id: MsgId) {
        self.pending.remove(&id);
    }

    /// When the next resend or give-up is due.
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        self.pending
            .values()
            .map(|p| p.next_send.min(p.give_up))
            .min()
    }

    /// What is due now: resends, and give-ups of messages past their deadline. A deadline
    /// further away than it can be (the clock stepped back) is brought back within reach.
    pub(super) fn due(&mut self, now: Timestamp) -> Vec<OutboxAction> {
        let mut actions = Vec::new();
        let expired = self
            .pending
            .extract_if(|_, pending| now >= pending.give_up.min(now + pending.wait));
        for (id, pending) in expired {
            let error = SendError::Unacknowledged {
                to: pending.to,
                attempts: pending.attempts,
                waited: now.saturating_duration_since(pending.started),
            };
            actions.push(OutboxAction::GiveUp { id, error });
        }
        for pending in self.pending.values_mut() {
            pending.give_up = pending.give_up.min(now + pending.wait);
            pending.next_send = pending.next_send.min(now + pending.delay);
            if now >= pending.next_send {
                pending.attempts += 1;
                pending.delay = (pending.delay * 2).min(RESEND_MAX_DELAY);
                pending.next_send = now + pending.delay;
                actions.push(OutboxAction::Resend {
                    to: pending.to.clone(),
                    packet: pending.packet.clone(),
                });
            }
        }
        actions
    }
}

/// The message ids recently received from one peer.
#[derive(Default)]
pub(super) struct SeenIds {
    seen: HashMap<MsgId, Timestamp>,
}

impl SeenIds {
    /// Records `id`; `false` if it was already there (a resend to acknowledge but not process).
    pub(super) fn first_time(&mut self, id: MsgId, now: Timestamp) -> bool {
        if self.seen.contains_key(&id) {
            return false;
        }
        if self.seen.len() >= SEEN_IDS_PER_PEER {
            self.forget_old(now);
            if self.seen.len() >= SEEN_IDS_PER_PEER {
                // Still full of live ids: make room by forgetting the oldest one.
                if let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(id, _)| *id)
                {
                    self.seen.remove(&oldest);
                }
            }
        }
        self.seen.insert(id, now);
        true
    }

    /// Forgets ids no sender can still be resending. After the clock stepped back an id is
    /// kept longer, never shorter: forgetting it early could hand a resend over twice.
    pub(super) fn forget_old(&mut self, now: Timestamp) {
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) < SEEN_ID_LIFETIME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Timestamp = Timestamp::from_unix_secs(1_700_000_000);

    fn node(id: &str) -> NodeId {
        NodeId::try_from(id.to_owned()).unwrap()
    }

    fn message() -> (MsgId, Vec<u8>) {
        (MsgId::random(), b"framed message".to_vec())
    }

    fn resends(actions: &[OutboxAction]) -> usize {
        actions
            .iter()
            .filter(|action| matches!(action, OutboxAction::Resend { .. }))
            .count()
    }

    #[test]
    fn resends_back_off_until_acknowledged() {
        let mut outbox = Outbox::default();
        let (id, msg) = message();
        outbox.track(id, node("b"), msg, Duration::from_secs(30), START);

        assert!(outbox.due(START).is_empty());
        let first = START + RESEND_FIRST_DELAY;
        assert_eq!(resends(&outbox.due(first)), 1);
        assert!(
            outbox.due(first + RESEND_FIRST_DELAY).is_empty(),
            "delay doubled"
        );
        assert_eq!(resends(&outbox.due(first + RESEND_FIRST_DELAY * 2)), 1);

        assert!(
            !outbox.acknowledge(&node("c"), id),
            "ack from the wrong node"
        );
        assert!(outbox.acknowledge(&node("b"), id));
        assert!(!outbox.acknowledge(&node("b"), id), "settled once");
        assert!(outbox.next_deadline().is_none());
    }

    #[test]
    fn unacknowledged_message_fails_at_its_deadline() {
        let mut outbox = Outbox::default();
        let (id, msg) = message();
        outbox.track(id, node("b"), msg, Duration::from_secs(2), START);
        let mut now = START;
        let mut gave_up = None;
        while let Some(deadline) = outbox.next_deadline() {
            now = deadline;
            for action in outbox.due(now) {
                if let OutboxAction::GiveUp {
                    id: given_up,
                    error,
                } = action
                {
                    gave_up = Some((given_up, error));
                }
            }
        }
        assert_eq!(now, START + Duration::from_secs(2));
        match gave_up {
            Some((given_up, SendError::Unacknowledged { attempts, .. })) => {
                assert_eq!(given_up, id);
                assert!(attempts >= 3);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    #[test]
    fn an_abandoned_message_is_not_resent() {
        let mut outbox = Outbox::default();
        let (id, msg) = message();
        outbox.track(id, node("b"), msg, Duration::from_secs(30), START);
        outbox.abandon(id);
        assert!(outbox.due(START + RESEND_FIRST_DELAY).is_empty());
        assert!(outbox.next_deadline().is_none());
    }

    #[test]
    fn a_clock_stepped_back_does_not_stall_resends() {
        let mut outbox = Outbox::default();
        let (id, msg) = message();
        outbox.track(id, node("b"), msg, Duration::from_secs(30), START);
        let hour_earlier = START.saturating_sub(Duration::from_secs(3600));
        assert!(outbox.due(hour_earlier).is_empty(), "first delay restarts");
        assert_eq!(resends(&outbox.due(hour_earlier + RESEND_FIRST_DELAY)), 1);
        let gave_up = outbox
            .due(hour_earlier + Duration::from_secs(30))
            .into_iter()
            .any(|action| matches!(action, OutboxAction::GiveUp { .. }));
        assert!(
            gave_up,
            "the whole wait counts from the step, not from before it"
        );
    }

    #[test]
    fn a_message_id_is_processed_once() {
        let mut seen = SeenIds::default();
        let id = MsgId::random();
        assert!(seen.first_time(id, START));
        assert!(!seen.first_time(id, START + Duration::from_secs(1)));
        seen.forget_old(START + SEEN_ID_LIFETIME);
        assert!(seen.first_time(id, START + SEEN_ID_LIFETIME));
    }

    #[test]
    fn remembered_ids_are_bounded() {
        let mut seen = SeenIds::default();
        for _ in 0..SEEN_IDS_PER_PEER + 10 {
            assert!(seen.first_time(MsgId::random(), START));
        }
        assert_eq!(seen.seen.len(), SEEN_IDS_PER_PEER);
    }
}
