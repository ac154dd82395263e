//! The routing table and the rules of authority between contexts.
//!
//! Pure bookkeeping, no I/O and no clock. The broker's core asks it where a
//! message goes ([`Routes::decide`]), whether a context may be added
//! ([`Routes::may_add`]) and whether a reply may reach a handle that waits
//! on another context ([`Routes::may_answer`]); threads that write straight
//! into a stream ask it the way ([`Routes::route`]). It is the one table of
//! a context: the broker thread writes it, everyone else reads it.
//!
//! The rules (DESIGN.md, Security):
//! - a stream speaks only for the contexts behind it: a child for itself
//!   and its subtree, the parent for everything else;
//! - a context id is allocated by the master for one connect, added once,
//!   only on the stream that connect was started on, and once lost it stays
//!   lost;
//! - a reply or DEAD for a handle waiting on context P comes from P itself,
//!   or (DEAD only) from a context on the path to P reporting P lost, on
//!   the stream that leads to P — or from this broker.

pub use crate::reasons::{Refusal, RouteRefusal, Undeliverable};
use crate::vecmap::VecMap;
use spore_protocol::Message;
use std::collections::VecDeque;

/// A stream of the broker (the parent's or a child's), by number.
pub type StreamId = usize;

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A thread of this process, or the broker itself.
    Local,
    /// The broker's stream with this id.
    Stream(StreamId),
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver to a handle of this context.
    Local,
    /// Write to this stream (a child's, or the parent's).
    Forward(StreamId),
    /// Undeliverable: answer with a `DEAD` reply.
    Dead(Undeliverable),
    /// Not allowed: log and drop without a reply.
    Drop(Refusal),
}

/// The routing table of one context.
pub struct Routes {
    me: u32,
    /// The master first, the immediate parent last; empty in the master.
    ancestors: Vec<u32>,
    parent: Option<StreamId>,
    /// Every context below us, by the child stream it is reached through.
    via: VecMap<u32, StreamId>,
    /// The parent of every context below us (the path to it).
    parent_of: VecMap<u32, u32>,
    /// Ids allocated for a connect not yet announced: id → who connects.
    expected: VecMap<u32, u32>,
    /// Contexts that were reachable once, and why they are not any more
    /// (the newest [`LOST_LIMIT`]; ids are never reused, so an older lost
    /// id is only ever "no route").
    lost: VecMap<u32, String>,
    lost_order: VecDeque<u32>,
    /// The master's next fresh id.
    next_id: u32,
}

impl Routes {
    /// A table for context `me` with these ancestors (the master first).
    pub fn new(me: u32, ancestors: Vec<u32>) -> Routes {
        Routes {
            me,
            ancestors,
            parent: None,
            via: VecMap::new(),
            parent_of: VecMap::new(),
            expected: VecMap::new(),
            lost: VecMap::new(),
            lost_order: VecDeque::new(),
            next_id: me + 1,
        }
    }

    fn is_master(&self) -> bool {
        self.ancestors.is_empty()
    }

    /// The stream to our parent.
    pub fn set_parent(&mut self, sid: Option<StreamId>) {
        self.parent = sid;
    }

    /// The stream to our parent, while it lasts.
    pub fn parent(&self) -> Option<StreamId> {
        self.parent
    }

    /// The stream a message from this context to `dst` takes.
    pub fn route(&self, dst: u32) -> Option<StreamId> {
        self.via.get(&dst).copied().or(self.parent)
    }

    /// The child stream context `id` is reached through.
    pub fn via(&self, id: u32) -> Option<StreamId> {
        self.via.get(&id).copied()
    }

    /// Does `auth` carry authority over this context?
    pub fn privileged(&self, auth: u32) -> bool {
        self.ancestors.contains(&auth)
    }

    /// Master: a fresh id for a context that `parent` will start (`None`
    /// once the id space is spent; ids are never reused).
    pub fn allocate(&mut self, parent: u32) -> Option<u32> {
        if !self.is_master() || self.next_id == u32::MAX {
            return None;
        }
        if self.expected.len() >= EXPECTED_LIMIT {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.expected.insert(id, parent);
        Some(id)
    }

    /// The connect `id` was allocated for failed: nobody may add it now.
    pub fn forget(&mut self, id: u32) {
        self.expected.remove(&id);
    }

    /// A parent told us that `parent` will start context `id`.
    pub fn expect(&mut self, id: u32, parent: u32) {
        if !self.lost.contains_key(&id) && !self.via.contains_key(&id) && self.expected.len() < EXPECTED_LIMIT {
            self.expected.insert(id, parent);
        }
    }

    /// May a stream of ours join as context `id`, from a connect of ours?
    pub fn may_add_direct(&self, id: u32, sid: StreamId) -> Result<(), RouteRefusal> {
        self.check_new(id, self.me, sid)
    }

    /// May `parent`, behind stream `sid`, announce context `id`? Our own
    /// children are added only by our own connects, never announced.
    pub fn may_add(&self, id: u32, parent: u32, sid: StreamId) -> Result<(), RouteRefusal> {
        if parent == self.me {
            return Err(RouteRefusal::OurChild);
        }
        self.check_new(id, parent, sid)
    }

    fn check_new(&self, id: u32, parent: u32, sid: StreamId) -> Result<(), RouteRefusal> {
        if id == self.me || self.ancestors.contains(&id) {
            return Err(RouteRefusal::UsOrAncestor);
        }
        if self.lost.contains_key(&id) {
            return Err(RouteRefusal::Lost);
        }
        if self.via.contains_key(&id) {
            return Err(RouteRefusal::AlreadyAdded);
        }
        if self.expected.get(&id) != Some(&parent) {
            return Err(RouteRefusal::NotAllocated);
        }
        if parent != self.me && self.via(parent) != Some(sid) {
            return Err(RouteRefusal::WrongStream);
        }
        Ok(())
    }

    /// Add context `id`, started by `parent`, behind stream `sid` (after
    /// [`Routes::may_add`] said yes).
    pub fn add(&mut self, id: u32, parent: u32, sid: StreamId) {
        self.expected.remove(&id);
        self.via.insert(id, sid);
        self.parent_of.insert(id, parent);
    }

    /// Forget context `id` (reached through `sid`), remembering why. False
    /// if it is not behind that stream.
    pub fn remove(&mut self, id: u32, sid: StreamId, why: &str) -> bool {
        if self.via(id) != Some(sid) {
            return false;
        }
        self.via.remove(&id);
        self.parent_of.remove(&id);
        self.expected.retain(|_, p| *p != id);
        if self.lost.insert(id, bounded(why)).is_none() {
            self.lost_order.push_back(id);
        }
        while self.lost_order.len() > LOST_LIMIT {
            if let Some(old) = self.lost_order.pop_front() {
                self.lost.remove(&old);
            }
        }
        true
    }

    /// Forget every context behind stream `sid`, remembering why; their
    /// ids, sorted.
    pub fn remove_stream(&mut self, sid: StreamId, why: &str) -> Vec<u32> {
        let mut gone: Vec<u32> = self.via.iter().filter(|(_, &s)| s == sid).map(|(&id, _)| id).collect();
        crate::sort::sort(&mut gone);
        for &id in &gone {
            self.remove(id, sid, why);
        }
        gone
    }

    /// The context that started context `id` (below us, or joining).
    pub fn parent_of(&self, id: u32) -> Option<u32> {
        self.parent_of.get(&id).or(self.expected.get(&id)).copied()
    }

    /// Our child on the path down to context `id` (`id` itself when it is
    /// our child); `None` when `id` is not below us.
    pub fn child_toward(&self, id: u32) -> Option<u32> {
        self.via.get(&id)?;
        let mut at = id;
        // The chain is as long as the tree is deep; the bound guards a cycle.
        for _ in 0..=self.parent_of.len() {
            match self.parent_of.get(&at) {
                Some(&p) if p == self.me => return Some(at),
                Some(&p) => at = p,
                None => return None,
            }
        }
        None
    }

    /// Is context `id` allocated for a connect that has not been announced
    /// (nor failed, nor lost with its parent) yet?
    pub fn is_joining(&self, id: u32) -> bool {
        self.expected.contains_key(&id)
    }

    /// Is `ancestor` on the path from here down to `id` (or `id` itself)?
    fn on_path(&self, ancestor: u32, id: u32) -> bool {
        let mut at = id;
        // The chain is as long as the tree is deep; the bound guards a cycle.
        for _ in 0..=self.parent_of.len() {
            if at == ancestor {
                return true;
            }
            match self.parent_of.get(&at) {
                Some(&p) if p != self.me => at = p,
                _ => return false,
            }
        }
        false
    }

    /// May a message from `src`, arriving from `origin`, reach a handle
    /// that waits on context `peer`? Answers come from `peer`; a `DEAD`
    /// may also come from a context on the path to it.
    pub fn may_answer(&self, peer: u32, src: u32, origin: Origin, dead: bool) -> bool {
        let Origin::Stream(sid) = origin else { return true };
        if Some(sid) == self.parent {
            // Everything above us arrives here; only ancestors speak on it.
            let above = peer != self.me && !self.via.contains_key(&peer);
            return above && (src == peer || (dead && self.ancestors.contains(&src)));
        }
        self.via(peer) == Some(sid) && (src == peer || (dead && self.on_path(src, peer)))
    }

    /// Check a message's source against where it came from (stamping
    /// `src`/`auth` for our own), and pick where it goes.
    pub fn decide(&self, msg: &mut Message, origin: Origin) -> Verdict {
        let h = &mut msg.header;
        let from_parent = matches!(origin, Origin::Stream(sid) if Some(sid) == self.parent);
        let in_sid = match origin {
            Origin::Local => {
                h.src = self.me;
                h.auth = self.me;
                None
            }
            Origin::Stream(sid) if from_parent => {
                // The parent speaks for itself and the tree above; `auth`
                // stays as the routers above stamped it.
                if h.src == self.me || self.via.contains_key(&h.src) {
                    return Verdict::Drop(Refusal::ParentSpoofed(h.src));
                }
                Some(sid)
            }
            Origin::Stream(sid) => {
                if self.via(h.src) != Some(sid) {
                    return Verdict::Drop(Refusal::Spoofed { sid, src: h.src });
                }
                h.auth = h.src;
                Some(sid)
            }
        };
        if h.dst == self.me {
            return Verdict::Local;
        }
        if let Some(out) = self.via(h.dst) {
            if Some(out) == in_sid {
                return Verdict::Drop(Refusal::Loop(h.dst));
            }
            if in_sid.is_some() && !from_parent {
                return Verdict::Dead(Undeliverable::Isolated(h.dst));
            }
            return Verdict::Forward(out);
        }
        if let (Some(up), false) = (self.parent, from_parent) {
            return Verdict::Forward(up);
        }
        match self.lost.get(&h.dst) {
            Some(why) => Verdict::Dead(Undeliverable::Lost(h.dst, why.clone())),
            None => Verdict::Dead(Undeliverable::NoRoute(h.dst)),
        }
    }
}

/// Lost contexts whose reason is remembered.
pub const LOST_LIMIT: usize = 4096;
/// Connects announced and not yet added, at most.
pub const EXPECTED_LIMIT: usize = 65_536;

/// The longest reason kept for a lost context: every later DEAD for it
/// carries the reason (a peer's words, so bounded).
pub const REASON_LIMIT: usize = 512;

/// `why`, cut to [`REASON_LIMIT`] bytes.
pub fn bounded(why: &str) -> String {
    let mut end = why.len().min(REASON_LIMIT);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    why.get(..end).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(src: u32, dst: u32) -> Message {
        let mut m = Message::new(dst, 1000, Vec::new());
        m.header.src = src;
        m.header.auth = 77;
        m
    }

    const UP: StreamId = 1;

    // Context 1 under the master: children 2 (stream 5) and 3 (stream 6),
    // 4 started by 2.
    fn table() -> Routes {
        let mut r = Routes::new(1, vec![0]);
        r.set_parent(Some(UP));
        for (id, parent, sid) in [(2, 1, 5), (3, 1, 6), (4, 2, 5)] {
            r.expect(id, parent);
            let checked = if parent == 1 { r.may_add_direct(id, sid) } else { r.may_add(id, parent, sid) };
            assert_eq!(checked, Ok(()));
            r.add(id, parent, sid);
        }
        r
    }

    #[test]
    fn local_messages_are_stamped() {
        let r = table();
        let mut m = msg(9, 0);
        assert_eq!(r.decide(&mut m, Origin::Local), Verdict::Forward(UP));
        assert_eq!((m.header.src, m.header.auth), (1, 1));
    }

    #[test]
    fn parent_messages_keep_their_authority() {
        let r = table();
        let mut m = msg(0, 4);
        m.header.auth = 0;
        assert_eq!(r.decide(&mut m, Origin::Stream(UP)), Verdict::Forward(5));
        assert_eq!(m.header.auth, 0);
        assert!(r.privileged(0));
    }

    #[test]
    fn children_are_stamped_and_checked() {
        let r = table();
        let mut m = msg(4, 0);
        assert_eq!(r.decide(&mut m, Origin::Stream(5)), Verdict::Forward(UP));
        assert_eq!(m.header.auth, 4);
        assert!(!r.privileged(4));
        assert_eq!(r.decide(&mut msg(2, 0), Origin::Stream(6)), Verdict::Drop(Refusal::Spoofed { sid: 6, src: 2 }));
        assert!(matches!(r.decide(&mut msg(0, 1), Origin::Stream(6)), Verdict::Drop(_)));
    }

    #[test]
    fn siblings_cant_talk() {
        let r = table();
        assert_eq!(r.decide(&mut msg(3, 4), Origin::Stream(6)), Verdict::Dead(Undeliverable::Isolated(4)));
    }

    #[test]
    fn unknown_destinations() {
        let r = table();
        assert_eq!(r.decide(&mut msg(0, 17), Origin::Stream(UP)), Verdict::Dead(Undeliverable::NoRoute(17)));
        let master = Routes::new(0, vec![]);
        assert_eq!(master.decide(&mut msg(0, 17), Origin::Local), Verdict::Dead(Undeliverable::NoRoute(17)));
    }

    #[test]
    fn parent_cant_speak_for_us_or_below() {
        let r = table();
        assert!(matches!(r.decide(&mut msg(1, 2), Origin::Stream(UP)), Verdict::Drop(_)));
        assert!(matches!(r.decide(&mut msg(4, 2), Origin::Stream(UP)), Verdict::Drop(_)));
    }

    #[test]
    fn lost_streams_take_their_subtree_and_stay_lost() {
        let mut r = table();
        assert_eq!(r.remove_stream(5, "context 2 (bastion) stream closed"), vec![2, 4]);
        assert_eq!(r.via(3), Some(6));
        let v = r.decide(&mut msg(0, 4), Origin::Stream(UP));
        assert_eq!(v, Verdict::Dead(Undeliverable::Lost(4, "context 2 (bastion) stream closed".into())));
        // A sibling claiming the lost id, even with a fresh notice.
        r.expect(4, 3);
        assert_eq!(r.may_add(4, 3, 6), Err(RouteRefusal::Lost));
    }

    #[test]
    fn an_id_is_added_once_for_the_connect_it_was_allocated_for() {
        let mut r = table();
        // Never announced.
        assert_eq!(r.may_add(50, 3, 6), Err(RouteRefusal::NotAllocated));
        // Announced for a connect by 2: 3 can't claim it, nor can 2's
        // stream announce it as 3's; a live context can't be re-added.
        r.expect(50, 2);
        assert_eq!(r.may_add(50, 3, 6), Err(RouteRefusal::NotAllocated));
        assert_eq!(r.may_add(50, 2, 6), Err(RouteRefusal::WrongStream));
        assert_eq!(r.may_add(3, 2, 5), Err(RouteRefusal::AlreadyAdded));
        assert_eq!(r.may_add(1, 0, 5), Err(RouteRefusal::UsOrAncestor));
        // Our own next child is added by our connect, never announced.
        r.expect(60, 1);
        assert_eq!(r.may_add(60, 1, 5), Err(RouteRefusal::OurChild));
        assert_eq!(r.may_add_direct(60, 7), Ok(()));
        r.forget(60);
        assert_eq!(r.may_add_direct(60, 7), Err(RouteRefusal::NotAllocated), "a failed connect's id is forgotten");
        assert_eq!(r.may_add(0, 2, 5), Err(RouteRefusal::UsOrAncestor));
        assert_eq!(r.may_add(50, 2, 5), Ok(()));
        r.add(50, 2, 5);
        assert_eq!(r.may_add(50, 2, 5), Err(RouteRefusal::AlreadyAdded));
    }

    #[test]
    fn an_id_is_joining_from_its_notice_until_added_forgotten_or_orphaned() {
        let mut r = table();
        r.expect(50, 2);
        r.expect(60, 1);
        r.expect(70, 3);
        assert!(r.is_joining(50) && r.is_joining(60) && r.is_joining(70));
        r.add(50, 2, 5);
        assert!(!r.is_joining(50) && r.child_toward(50) == Some(2), "added: below, no longer joining");
        r.forget(60);
        assert!(!r.is_joining(60), "its connect failed");
        r.remove_stream(6, "context 3 stream closed");
        assert!(!r.is_joining(70), "the context connecting it is lost");
        assert!(!r.is_joining(4), "added long ago");
    }

    #[test]
    fn only_the_master_allocates() {
        let mut master = Routes::new(0, vec![]);
        assert_eq!(master.allocate(0), Some(1));
        assert_eq!(master.allocate(1), Some(2));
        assert_eq!(master.may_add_direct(1, 9), Ok(()));
        let mut agent = table();
        assert_eq!(agent.allocate(1), None);
        master.next_id = u32::MAX;
        assert_eq!(master.allocate(0), None, "ids are never reused");
    }

    #[test]
    fn answers_come_from_the_peer_or_a_router_on_its_path() {
        let r = table();
        // Waiting on 4 (behind 2, on stream 5).
        assert!(r.may_answer(4, 4, Origin::Stream(5), false));
        assert!(r.may_answer(4, 2, Origin::Stream(5), true), "2 may report 4 lost");
        assert!(!r.may_answer(4, 2, Origin::Stream(5), false), "but not answer for it");
        assert!(!r.may_answer(4, 3, Origin::Stream(6), true), "a sibling may not");
        assert!(!r.may_answer(4, 3, Origin::Stream(5), true), "not even on 4's stream");
        // Waiting on the master, above us.
        assert!(r.may_answer(0, 0, Origin::Stream(UP), false));
        assert!(!r.may_answer(0, 2, Origin::Stream(5), true));
        // Waiting on a child: the parent stream can't fail it.
        assert!(!r.may_answer(2, 0, Origin::Stream(UP), true));
        // This broker itself.
        assert!(r.may_answer(4, 1, Origin::Local, true));
    }

    #[test]
    fn the_records_of_lost_and_expected_ids_are_bounded() {
        let mut r = Routes::new(0, vec![]);
        for _ in 0..LOST_LIMIT + 10 {
            let id = r.allocate(0).unwrap();
            r.add(id, 0, 9);
            assert!(r.remove(id, 9, "gone"));
        }
        assert_eq!(r.lost.len(), LOST_LIMIT);
        // The oldest: no route, no reason; still never re-added.
        assert_eq!(r.decide(&mut msg(0, 1), Origin::Local), Verdict::Dead(Undeliverable::NoRoute(1)));
        assert_eq!(r.may_add_direct(1, 9), Err(RouteRefusal::NotAllocated));
        let mut a = table();
        for id in 100..100 + EXPECTED_LIMIT as u32 + 10 {
            a.expect(id, 2);
        }
        assert_eq!(a.expected.len(), EXPECTED_LIMIT);
    }

    #[test]
    fn a_lost_contexts_reason_is_bounded() {
        let mut r = table();
        let long = "é".repeat(REASON_LIMIT);
        assert!(r.remove(4, 5, &long));
        let Verdict::Dead(Undeliverable::Lost(4, why)) = r.decide(&mut msg(0, 4), Origin::Stream(UP)) else { panic!() };
        assert!(why.len() <= REASON_LIMIT && long.starts_with(&why));
    }

    #[test]
    fn the_child_toward_a_descendant() {
        let r = table();
        assert_eq!(r.child_toward(2), Some(2));
        assert_eq!(r.child_toward(4), Some(2));
        assert_eq!(r.child_toward(3), Some(3));
        for not_below in [0, 1, 17] {
            assert_eq!(r.child_toward(not_below), None);
        }
    }

    #[test]
    fn the_parent_of_a_context_below_or_joining() {
        let mut r = table();
        assert_eq!((r.parent_of(2), r.parent_of(4), r.parent_of(0), r.parent_of(1)), (Some(1), Some(2), None, None));
        r.expect(9, 4);
        assert_eq!(r.parent_of(9), Some(4));
        r.forget(9);
        assert!(r.remove(4, 5, "gone"));
        assert_eq!((r.parent_of(9), r.parent_of(4)), (None, None));
    }

    #[test]
    fn answers_from_the_parent_stream_are_ancestors_only() {
        let r = table();
        assert!(r.may_answer(0, 0, Origin::Stream(UP), true));
        assert!(!r.may_answer(0, 9, Origin::Stream(UP), true));
    }
}
