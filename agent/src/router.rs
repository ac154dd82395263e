//! The router: where a message goes, and whether it may go there.
//!
//! Pure bookkeeping, no I/O: the broker asks [`Routes::decide`] about every
//! message it reads or is handed, then does what the [`Verdict`] says.

use spore_protocol::Message;
use std::collections::HashMap;

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A thread of this process.
    Local,
    /// The broker's stream with this id.
    Stream(usize),
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver to a handle of this context.
    Local,
    /// Write to this child stream.
    Forward(usize),
    /// Write to the parent stream.
    Up,
    /// Undeliverable: answer with a `DEAD` reply carrying this reason.
    Dead(String),
    /// Not allowed (spoofed source): log and drop without a reply.
    Drop(String),
}

/// The routing table of one context.
pub struct Routes {
    my_id: u32,
    parent_ids: Vec<u32>,
    via: HashMap<u32, usize>,
    /// Contexts that were reachable once, and why they are not any more,
    /// so a late message gets a DEAD reply naming the hop that failed.
    lost: HashMap<u32, String>,
}

impl Routes {
    /// A table for context `my_id` with these ancestors (master first).
    pub fn new(my_id: u32, parent_ids: Vec<u32>) -> Routes {
        Routes { my_id, parent_ids, via: HashMap::new(), lost: HashMap::new() }
    }

    /// Context `id` is reachable through stream `sid`.
    pub fn add(&mut self, id: u32, sid: usize) {
        self.lost.remove(&id);
        self.via.insert(id, sid);
    }

    /// Forget context `id`, remembering why.
    pub fn remove(&mut self, id: u32, why: &str) {
        if self.via.remove(&id).is_some() {
            self.lost.insert(id, why.to_string());
        }
    }

    /// The stream context `id` is reached through.
    pub fn via(&self, id: u32) -> Option<usize> {
        self.via.get(&id).copied()
    }

    /// Forget every context behind stream `sid`, remembering why; returns
    /// their ids, sorted.
    pub fn remove_stream(&mut self, sid: usize, why: &str) -> Vec<u32> {
        let mut lost: Vec<u32> = self.via.iter().filter(|(_, &s)| s == sid).map(|(&id, _)| id).collect();
        lost.sort_unstable();
        for id in &lost {
            self.remove(*id, why);
        }
        lost
    }

    /// Does `auth_id` carry authority over this context?
    pub fn privileged(&self, auth_id: u32) -> bool {
        self.parent_ids.contains(&auth_id)
    }

    /// Stamp `src`/`auth` as the origin allows, check the source, and pick
    /// the destination.
    pub fn decide(&self, msg: &mut Message, origin: Origin, from_parent: bool, has_parent: bool) -> Verdict {
        let h = &mut msg.header;
        let in_sid = match origin {
            Origin::Local => {
                h.src = self.my_id;
                h.auth = self.my_id;
                None
            }
            Origin::Stream(sid) if from_parent => {
                // The parent speaks for itself and the tree above; it can't
                // speak as us or anyone below us. `auth` stays as stamped
                // by the routers above.
                if h.src == self.my_id || self.via.contains_key(&h.src) {
                    return Verdict::Drop(format!("parent stream claimed to be context {}", h.src));
                }
                Some(sid)
            }
            Origin::Stream(sid) => {
                if self.via.get(&h.src) != Some(&sid) {
                    return Verdict::Drop(format!("stream {sid} can't speak as context {}", h.src));
                }
                h.auth = h.src;
                Some(sid)
            }
        };
        if h.dst == self.my_id {
            return Verdict::Local;
        }
        if let Some(&out) = self.via.get(&h.dst) {
            if Some(out) == in_sid {
                return Verdict::Drop(format!("message for {} came back on its own stream", h.dst));
            }
            if in_sid.is_some() && !from_parent {
                // Unidirectional routing: a child reaches its ancestors only.
                return Verdict::Dead(format!("no route to {} (children can't message each other)", h.dst));
            }
            return Verdict::Forward(out);
        }
        if has_parent && !from_parent {
            return Verdict::Up;
        }
        match self.lost.get(&h.dst) {
            Some(why) => Verdict::Dead(format!("no route to {}: {why}", h.dst)),
            None => Verdict::Dead(format!("no route to {}", h.dst)),
        }
    }
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

    // Context 1 under the master, with children 2 (stream 5) and 3 (stream 6),
    // and 4 behind 2.
    fn table() -> Routes {
        let mut r = Routes::new(1, vec![0]);
        r.add(2, 5);
        r.add(3, 6);
        r.add(4, 5);
        r
    }

    #[test]
    fn local_messages_are_stamped() {
        let r = table();
        let mut m = msg(9, 0);
        assert_eq!(r.decide(&mut m, Origin::Local, false, true), Verdict::Up);
        assert_eq!((m.header.src, m.header.auth), (1, 1));
    }

    #[test]
    fn parent_messages_keep_their_authority() {
        let r = table();
        let mut m = msg(0, 4);
        m.header.auth = 0;
        assert_eq!(r.decide(&mut m, Origin::Stream(1), true, true), Verdict::Forward(5));
        assert_eq!(m.header.auth, 0);
        assert!(r.privileged(0));
    }

    #[test]
    fn children_are_stamped_and_checked() {
        let r = table();
        let mut m = msg(4, 0);
        assert_eq!(r.decide(&mut m, Origin::Stream(5), false, true), Verdict::Up);
        assert_eq!(m.header.auth, 4);
        assert!(!r.privileged(4));
        // Child 3 pretending to be 2, or the master.
        assert!(matches!(r.decide(&mut msg(2, 0), Origin::Stream(6), false, true), Verdict::Drop(_)));
        assert!(matches!(r.decide(&mut msg(0, 1), Origin::Stream(6), false, true), Verdict::Drop(_)));
    }

    #[test]
    fn siblings_cant_talk() {
        let r = table();
        let v = r.decide(&mut msg(3, 4), Origin::Stream(6), false, true);
        assert_eq!(v, Verdict::Dead("no route to 4 (children can't message each other)".into()));
    }

    #[test]
    fn unknown_destinations() {
        let r = table();
        assert_eq!(r.decide(&mut msg(0, 17), Origin::Stream(1), true, true), Verdict::Dead("no route to 17".into()));
        let master = Routes::new(0, vec![]);
        assert_eq!(master.decide(&mut msg(0, 17), Origin::Local, false, false), Verdict::Dead("no route to 17".into()));
    }

    #[test]
    fn parent_cant_speak_for_us_or_below() {
        let r = table();
        assert!(matches!(r.decide(&mut msg(1, 2), Origin::Stream(1), true, true), Verdict::Drop(_)));
        assert!(matches!(r.decide(&mut msg(4, 2), Origin::Stream(1), true, true), Verdict::Drop(_)));
    }

    #[test]
    fn lost_streams_take_their_subtree() {
        let mut r = table();
        assert_eq!(r.remove_stream(5, "context 2 (bastion) stream closed"), vec![2, 4]);
        assert_eq!(r.via(3), Some(6));
        let v = r.decide(&mut msg(0, 4), Origin::Stream(1), true, true);
        assert_eq!(v, Verdict::Dead("no route to 4: context 2 (bastion) stream closed".into()));
    }
}
