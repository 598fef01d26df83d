//! The ready queue: tasks waiting for a worker, in [`Rank`] order, grouped
//! by the resources they need (tasks of one group are interchangeable for
//! placement, so only a group's most urgent task is ever looked at).
//!
//! Tasks that need nothing share one group that always exists. Every other
//! group lives only while it holds tasks, and the groups are indexed by
//! their most urgent task, so the next candidate is found in `O(log groups)`
//! however many distinct resource amounts there are.

use std::collections::{BTreeSet, BinaryHeap};

use flowrun_core::Resources;
use rustc_hash::FxHashMap as HashMap;

use super::state::Rank;

/// A group's place: [`PLAIN`] or a resource group's slab key.
pub(crate) type GroupId = usize;

/// The group of tasks that need no resources.
pub(crate) const PLAIN: GroupId = usize::MAX;

struct Group {
    needs: Resources,
    signature: String,
    heap: BinaryHeap<(Rank, u64)>,
}

/// A candidate: a group's most urgent task.
pub(crate) type Head = (Rank, u64, GroupId);

#[derive(Default)]
pub(crate) struct ReadyQueue {
    plain: BinaryHeap<(Rank, u64)>,
    groups: slab::Slab<Group>,
    by_signature: HashMap<String, GroupId>,
    /// Each resource group's head.
    heads: BTreeSet<Head>,
}

impl ReadyQueue {
    /// Queues task `id`; returns its group.
    pub(super) fn push(&mut self, rank: Rank, id: u64, needs: Option<&Resources>) -> GroupId {
        let Some(needs) = needs else {
            self.plain.push((rank, id));
            return PLAIN;
        };
        let signature = needs.to_string();
        let g = match self.by_signature.get(&signature) {
            Some(g) => *g,
            None => {
                let g = self.groups.insert(Group {
                    needs: needs.clone(),
                    signature: signature.clone(),
                    heap: BinaryHeap::new(),
                });
                self.by_signature.insert(signature, g);
                g
            }
        };
        let group = &mut self.groups[g];
        let old = group.heap.peek().map(|(r, i)| (*r, *i, g));
        group.heap.push((rank, id));
        let new = group.heap.peek().map(|(r, i)| (*r, *i, g));
        if old != new {
            if let Some(old) = old {
                self.heads.remove(&old);
            }
            if let Some(new) = new {
                self.heads.insert(new);
            }
        }
        g
    }

    /// The most urgent task that needs nothing.
    pub(super) fn plain_head(&self) -> Option<(Rank, u64)> {
        self.plain.peek().copied()
    }

    /// The most urgent resource group's head strictly below `below` (all of
    /// them when `None`).
    pub(super) fn resource_head(&self, below: Option<&Head>) -> Option<Head> {
        match below {
            None => self.heads.last().copied(),
            Some(b) => self.heads.range(..*b).next_back().copied(),
        }
    }

    /// What the tasks of resource group `g` need.
    pub(super) fn needs(&self, g: GroupId) -> &Resources {
        &self.groups[g].needs
    }

    /// Takes the head of group `g`; an emptied resource group is removed.
    pub(super) fn pop(&mut self, g: GroupId) -> Option<u64> {
        if g == PLAIN {
            return self.plain.pop().map(|(_, id)| id);
        }
        let group = self.groups.get_mut(g)?;
        let (rank, id) = group.heap.pop()?;
        self.heads.remove(&(rank, id, g));
        match group.heap.peek() {
            Some((r, i)) => {
                self.heads.insert((*r, *i, g));
            }
            None => {
                let group = self.groups.remove(g);
                self.by_signature.remove(&group.signature);
            }
        }
        Some(id)
    }

    /// How many resource groups exist (empty ones never do).
    #[cfg(test)]
    pub(super) fn resource_groups(&self) -> usize {
        self.groups.len()
    }

    pub(super) fn clear(&mut self) {
        *self = ReadyQueue::default();
    }
}
