//! Per-connection order of requests that touch the same document (docs/protocol.md, "Order of
//! answers"): such requests are applied and answered in the order they were sent, while
//! requests on different documents run concurrently.
//!
//! The table remembers, per document, the last request read that touches it, and per
//! collection the last LIST and the document requests read since. A new request waits for
//! those predecessors' answers (each of which waited for its own), so the chain is ordered
//! without any lock between request tasks. Keys are 64-bit hashes: a collision only makes two
//! unrelated requests wait for each other, never reorders anything. Entries whose answers are
//! already in the output are dropped, all of them when nothing is in flight.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::outbox::Done;

/// What a request touches.
pub(super) enum Touch<'a> {
    /// Documents of one game, each `(collection, id)`.
    Docs(&'a str, Vec<(&'a str, &'a str)>),
    /// Every document of a collection (a LIST).
    Collection(&'a str, &'a str),
}

#[derive(Default)]
struct CollectionOrder {
    /// The last LIST of the collection.
    list: Option<Arc<Done>>,
    /// Document requests read since that LIST.
    members: Vec<Arc<Done>>,
}

/// The order table of one connection; owned by the connection task.
pub(super) struct Order {
    docs: HashMap<u64, Arc<Done>>,
    collections: HashMap<u64, CollectionOrder>,
    hasher: foldhash::fast::RandomState,
    /// Size at which answered entries are pruned next (amortises the pruning).
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 64;

impl Default for Order {
    fn default() -> Self {
        Order {
            docs: HashMap::new(),
            collections: HashMap::new(),
            hasher: Default::default(),
            prune_at: MIN_PRUNE_AT,
        }
    }
}

impl Order {
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty() && self.collections.is_empty()
    }

    /// Forgets everything: every request read so far has been answered and written out.
    pub fn clear(&mut self) {
        if !self.is_empty() {
            self.docs = HashMap::new();
            self.collections = HashMap::new();
            self.prune_at = MIN_PRUNE_AT;
        }
    }

    fn doc_key(&self, game: &str, collection: &str, id: &str) -> u64 {
        self.hasher.hash_one((0u8, game, collection, id))
    }

    fn collection_key(&self, game: &str, collection: &str) -> u64 {
        self.hasher.hash_one((1u8, game, collection))
    }

    /// True when a GET of the document may be answered right now, inline: no earlier request
    /// touching it is still without an answer in the output (`moved`: answers in the output).
    pub fn is_free(&self, game: &str, collection: &str, id: &str, moved: u64) -> bool {
        if self.is_empty() {
            return true;
        }
        let pending = |done: &Arc<Done>| !done.answered_within(moved);
        let doc = self.docs.get(&self.doc_key(game, collection, id));
        let list = self
            .collections
            .get(&self.collection_key(game, collection))
            .and_then(|c| c.list.as_ref());
        !doc.is_some_and(pending) && !list.is_some_and(pending)
    }

    /// Records a request that touches `touch` and returns the earlier requests whose answers
    /// it must wait for (none that are already in the output).
    pub fn enter(&mut self, touch: &Touch<'_>, me: &Arc<Done>, moved: u64) -> Vec<Arc<Done>> {
        let mut waits: Vec<Arc<Done>> = Vec::new();
        let mut wait_for = |done: &Arc<Done>| {
            // A TXN may name a document twice: it never waits for itself.
            if !Arc::ptr_eq(done, me)
                && !done.answered_within(moved)
                && !waits.iter().any(|w| Arc::ptr_eq(w, done))
            {
                waits.push(done.clone());
            }
        };
        match touch {
            Touch::Docs(game, docs) => {
                for (collection, id) in docs {
                    let key = self.doc_key(game, collection, id);
                    if let Some(previous) = self.docs.insert(key, me.clone()) {
                        wait_for(&previous);
                    }
                    let key = self.collection_key(game, collection);
                    let entry = self.collections.entry(key).or_default();
                    if let Some(list) = &entry.list {
                        wait_for(list);
                    }
                    if !entry.members.last().is_some_and(|m| Arc::ptr_eq(m, me)) {
                        entry.members.push(me.clone());
                    }
                }
            }
            Touch::Collection(game, collection) => {
                let key = self.collection_key(game, collection);
                let previous = self.collections.insert(
                    key,
                    CollectionOrder {
                        list: Some(me.clone()),
                        members: Vec::new(),
                    },
                );
                if let Some(previous) = previous {
                    previous.list.iter().for_each(&mut wait_for);
                    previous.members.iter().for_each(&mut wait_for);
                }
            }
        }
        if self.docs.len() + self.collections.len() > self.prune_at {
            self.prune(moved);
        }
        waits
    }

    /// Drops entries whose answers are in the output.
    fn prune(&mut self, moved: u64) {
        self.docs.retain(|_, done| !done.answered_within(moved));
        self.collections.retain(|_, c| {
            c.members.retain(|done| !done.answered_within(moved));
            if c.list.as_ref().is_some_and(|l| l.answered_within(moved)) {
                c.list = None;
            }
            c.list.is_some() || !c.members.is_empty()
        });
        self.prune_at = (2 * (self.docs.len() + self.collections.len())).max(MIN_PRUNE_AT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done() -> Arc<Done> {
        Arc::new(Done::default())
    }

    #[test]
    fn same_document_waits_different_documents_do_not() {
        let mut order = Order::default();
        let (a, b, c) = (done(), done(), done());
        assert!(order.is_free("g", "p", "1", 0));
        assert!(
            order
                .enter(&Touch::Docs("g", vec![("p", "1")]), &a, 0)
                .is_empty()
        );
        assert!(!order.is_free("g", "p", "1", 0));
        assert!(order.is_free("g", "p", "2", 0));
        let waits = order.enter(&Touch::Docs("g", vec![("p", "1")]), &b, 0);
        assert_eq!(waits.len(), 1);
        assert!(Arc::ptr_eq(&waits[0], &a));
        assert!(
            order
                .enter(&Touch::Docs("g", vec![("p", "2"), ("p", "2")]), &c, 0)
                .is_empty(),
            "naming a document twice does not wait for itself"
        );
    }

    #[test]
    fn a_list_orders_against_its_whole_collection() {
        let mut order = Order::default();
        let (a, b, list, after) = (done(), done(), done(), done());
        order.enter(&Touch::Docs("g", vec![("p", "1")]), &a, 0);
        order.enter(&Touch::Docs("g", vec![("q", "1")]), &b, 0);
        let waits = order.enter(&Touch::Collection("g", "p"), &list, 0);
        assert_eq!(waits.len(), 1, "only the request on collection p");
        assert!(Arc::ptr_eq(&waits[0], &a));
        assert!(
            !order.is_free("g", "p", "9", 0),
            "a GET after the LIST waits"
        );
        let waits = order.enter(&Touch::Docs("g", vec![("p", "9")]), &after, 0);
        assert!(waits.iter().any(|w| Arc::ptr_eq(w, &list)));
    }
}
