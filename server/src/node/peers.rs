//! The runtime's peers: the outbound streams (behind [`Outbound`]) kept in
//! step with the member directory, and the addresses peers advertise about
//! themselves. Owns its state; the runtime hands it the directory.

use std::collections::{BTreeMap, HashMap};

use super::Member;
use super::outbound::Outbound;
use crate::raft::{Message, NodeId};

/// Peers whose self-advertised addresses are remembered.
const MAX_OBSERVED_PEERS: usize = 1024;
/// Outbound streams opened for senders that are not in the member directory
/// (e.g. a leader a joining node has not learnt yet). Each is a task with a
/// queue, so a flood of made-up sender ids must not open one each.
const MAX_UNKNOWN_PEER_LINKS: usize = 8;

/// Outbound streams and what peers say about themselves.
pub(super) struct Peers {
    /// Outbound peer streams (the transport, behind the node's trait).
    outbound: Box<dyn Outbound>,
    /// Addresses peers advertise about themselves (see [`Peers::observe`]).
    observed: HashMap<NodeId, Member>,
}

impl Peers {
    /// No peers yet; streams open as the directory and senders appear.
    pub(super) fn new(outbound: Box<dyn Outbound>) -> Self {
        Peers {
            outbound,
            observed: HashMap::new(),
        }
    }

    /// The outbound half (messages, snapshot streams, peer addresses).
    pub(super) fn outbound(&self) -> &dyn Outbound {
        self.outbound.as_ref()
    }

    /// Queues `msg`; `false` when the peer is unreachable (see
    /// [`Outbound::send`]).
    pub(super) fn send(&self, msg: Message) -> bool {
        self.outbound.send(msg)
    }

    /// Remembers the addresses a peer advertises about itself: the peer
    /// address lets a joining node reply before it has the member directory,
    /// the client addresses fill gaps in bootstrap entries (`-peers` names no
    /// gRPC port) for redirects. `directory` is read only when a stream to
    /// the sender might be opened.
    pub(super) fn observe(
        &mut self,
        from: NodeId,
        sender: Member,
        directory: impl FnOnce() -> BTreeMap<NodeId, Member>,
    ) {
        if !self.outbound.has_peer(from) && !sender.peer_addr.is_empty() {
            let dir = directory();
            let unknown = self
                .outbound
                .peer_ids()
                .into_iter()
                .filter(|id| !dir.contains_key(id))
                .count();
            if dir.contains_key(&from) || unknown < MAX_UNKNOWN_PEER_LINKS {
                self.outbound.set_peer(from, &sender.peer_addr);
            } else {
                tracing::debug!(
                    from,
                    "not dialling back another unknown sender: MAX_UNKNOWN_PEER_LINKS reached"
                );
            }
        }
        if self.observed.len() < MAX_OBSERVED_PEERS || self.observed.contains_key(&from) {
            self.observed.insert(from, sender);
        }
    }

    /// What `id` last advertised about itself.
    pub(super) fn observed(&self, id: NodeId) -> Option<&Member> {
        self.observed.get(&id)
    }

    /// Makes the streams match the member directory: a stream to every
    /// other member with a peer address; streams to ids that left it are
    /// closed unless `keep` says otherwise (still in the configuration, or
    /// the leader).
    pub(super) fn sync(
        &mut self,
        dir: &BTreeMap<NodeId, Member>,
        me: NodeId,
        keep: impl Fn(NodeId) -> bool,
    ) {
        for (id, m) in dir {
            if *id != me && !m.peer_addr.is_empty() {
                self.outbound.set_peer(*id, &m.peer_addr);
            }
        }
        for id in self.outbound.peer_ids() {
            if !dir.contains_key(&id) && !keep(id) {
                self.outbound.remove_peer(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::node::outbound::{SnapshotSendError, SnapshotTransfer};

    /// Records the streams the node asks for; sends nothing.
    #[derive(Default)]
    struct FakeOutbound(BTreeMap<NodeId, String>);

    impl Outbound for FakeOutbound {
        fn set_peer(&mut self, id: NodeId, addr: &str) {
            self.0.insert(id, addr.to_string());
        }
        fn has_peer(&self, id: NodeId) -> bool {
            self.0.contains_key(&id)
        }
        fn peer_addr(&self, id: NodeId) -> Option<String> {
            self.0.get(&id).cloned()
        }
        fn remove_peer(&mut self, id: NodeId) {
            self.0.remove(&id);
        }
        fn peer_ids(&self) -> Vec<NodeId> {
            self.0.keys().copied().collect()
        }
        fn send(&self, msg: Message) -> bool {
            self.0.contains_key(&msg.to)
        }
        fn send_snapshot(
            &self,
            _: SnapshotTransfer,
        ) -> BoxFuture<'static, Result<(), SnapshotSendError>> {
            Box::pin(async { Err(SnapshotSendError::Rejected("fake".into())) })
        }
    }

    fn member(id: NodeId) -> Member {
        Member {
            id,
            peer_addr: format!("peer-{id}"),
            ..Member::default()
        }
    }

    /// Unknown senders open at most `MAX_UNKNOWN_PEER_LINKS` streams; a
    /// directory member always gets one; syncing closes streams to ids that
    /// left the directory unless kept.
    #[test]
    fn unknown_senders_are_bounded_and_sync_follows_the_directory() {
        let mut peers = Peers::new(Box::new(FakeOutbound::default()));
        let dir: BTreeMap<NodeId, Member> = [(1, member(1)), (2, member(2))].into();
        for id in 100..120 {
            peers.observe(id, member(id), || dir.clone());
        }
        assert_eq!(peers.outbound().peer_ids().len(), MAX_UNKNOWN_PEER_LINKS);
        peers.observe(2, member(2), || dir.clone());
        assert_eq!(peers.outbound().peer_addr(2).as_deref(), Some("peer-2"));
        assert_eq!(peers.observed(119).map(|m| m.id), Some(119));

        peers.sync(&dir, 1, |id| id == 100);
        assert_eq!(peers.outbound().peer_ids(), vec![2, 100]);
    }
}
