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

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{SendError, MAX_RELIABLE_WAIT, RESEND_FIRST_DELAY, RESEND_MAX_DELAY};
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
    next_send: Instant,
    started: Instant,
    give_up: Instant,
    done: oneshot::Sender<Result<(), SendError>>,
}

/// What the outbox wants done now.
pub(super) struct Resend {
    pub(super) to: NodeId,
    pub(super) packet: Vec<u8>,
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
        now: Instant,
        done: oneshot::Sender<Result<(), SendError>>,
    ) {
        let pending = Pending {
            to,
            packet,
            attempts: 1,
            delay: RESEND_FIRST_DELAY,
            next_send: now + RESEND_FIRST_DELAY,
            started: now,
            give_up: now + wait.min(MAX_RELIABLE_WAIT),
            done,
        };
        self.pending.insert(id, pending);
    }

    /// An ack for `id` arrived from `from`; ignored unless it is the node we sent `id` to.
    pub(super) fn acknowledge(&mut self, from: &NodeId, id: MsgId) -> bool {
        match self.pending.get(&id) {
            Some(pending) if pending.to == *from => {
                if let Some(pending) = self.pending.remove(&id) {
                    // The caller may have stopped waiting; then nobody needs the answer.
                    let _ = pending.done.send(Ok(()));
                }
                true
            }
            _ => false,
        }
    }

    /// When the next resend or give-up is due, to sleep until then.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.next_send.min(p.give_up))
            .min()
    }

    /// The messages to send again now. Messages past their deadline are answered with
    /// [`SendError::Unacknowledged`]; those whose caller stopped waiting are dropped.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Resend> {
        let finished = self
            .pending
            .extract_if(|_, pending| pending.done.is_closed() || now >= pending.give_up);
        for (_, pending) in finished {
            let error = SendError::Unacknowledged {
                to: pending.to,
                attempts: pending.attempts,
                waited: now.duration_since(pending.started),
            };
            // A caller that stopped waiting does not need the answer.
            let _ = pending.done.send(Err(error));
        }
        let mut resends = Vec::new();
        for pending in self.pending.values_mut() {
            if now >= pending.next_send {
                pending.attempts += 1;
                pending.delay = (pending.delay * 2).min(RESEND_MAX_DELAY);
                pending.next_send = now + pending.delay;
                resends.push(Resend {
                    to: pending.to.clone(),
                    packet: pending.packet.clone(),
                });
            }
        }
        resends
    }
}

/// The message ids recently received from one peer.
#[derive(Default)]
pub(super) struct SeenIds {
    seen: HashMap<MsgId, Instant>,
}

impl SeenIds {
    /// Records `id`; `false` if it was already there (a resend to acknowledge but not process).
    pub(super) fn first_time(&mut self, id: MsgId, now: Instant) -> bool {
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

    /// Forgets ids no sender can still be resending.
    pub(super) fn forget_old(&mut self, now: Instant) {
        self.seen
            .retain(|_, at| now.duration_since(*at) < SEEN_ID_LIFETIME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn node(id: &str) -> NodeId {
        NodeId::try_from(id.to_owned()).unwrap()
    }

    fn message() -> (MsgId, Vec<u8>) {
        (MsgId::random(), b"framed message".to_vec())
    }

    #[test]
    fn resends_back_off_until_acknowledged() {
        let mut outbox = Outbox::default();
        let (id, msg) = message();
        let (done, mut answer) = oneshot::channel();
        let start = Instant::now();
        outbox.track(id, node("b"), msg, Duration::from_secs(30), start, done);

        assert!(outbox.due(start).is_empty());
        let first = start + RESEND_FIRST_DELAY;
        assert_eq!(outbox.due(first).len(), 1);
        assert!(
            outbox.due(first + RESEND_FIRST_DELAY).is_empty(),
            "delay doubled"
        );
        assert_eq!(outbox.due(first + RESEND_FIRST_DELAY * 2).len(), 1);

        assert!(
            !outbox.acknowledge(&node("c"), id),
            "ack from the wrong node"
        );
        assert!(outbox.acknowledge(&node("b"), id));
        assert!(matches!(answer.try_recv(), Ok(Ok(()))));
        assert!(outbox.next_deadline().is_none());
    }

    #[test]
    fn unacknowledged_message_fails_at_its_deadline() {
        let mut outbox = Outbox::default();
        let (id, msg) = message();
        let (done, mut answer) = oneshot::channel();
        let start = Instant::now();
        outbox.track(id, node("b"), msg, Duration::from_secs(2), start, done);
        let mut now = start;
        while outbox.next_deadline().is_some() {
            now = outbox.next_deadline().unwrap();
            outbox.due(now);
        }
        assert_eq!(now, start + Duration::from_secs(2));
        match answer.try_recv() {
            Ok(Err(SendError::Unacknowledged { attempts, .. })) => assert!(attempts >= 3),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    #[test]
    fn resending_stops_when_the_caller_stops_waiting() {
        let mut outbox = Outbox::default();
        let (id, msg) = message();
        let (done, answer) = oneshot::channel();
        let start = Instant::now();
        outbox.track(id, node("b"), msg, Duration::from_secs(30), start, done);
        drop(answer);
        assert!(outbox.due(start + RESEND_FIRST_DELAY).is_empty());
        assert!(outbox.next_deadline().is_none());
    }

    #[test]
    fn a_message_id_is_processed_once() {
        let mut seen = SeenIds::default();
        let now = Instant::now();
        let id = MsgId::random();
        assert!(seen.first_time(id, now));
        assert!(!seen.first_time(id, now + Duration::from_secs(1)));
        seen.forget_old(now + SEEN_ID_LIFETIME);
        assert!(seen.first_time(id, now + SEEN_ID_LIFETIME));
    }

    #[test]
    fn remembered_ids_are_bounded() {
        let mut seen = SeenIds::default();
        let now = Instant::now();
        for _ in 0..SEEN_IDS_PER_PEER + 10 {
            assert!(seen.first_time(MsgId::random(), now));
        }
        assert_eq!(seen.seen.len(), SEEN_IDS_PER_PEER);
    }
}
