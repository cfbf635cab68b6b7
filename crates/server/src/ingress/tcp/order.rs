//! Per-connection order of requests that touch the same document (docs/protocol.md, "Order of
//! answers"): such requests are applied and answered in the order they were sent, while
//! requests on different documents run concurrently.
//!
//! Two waits per request, both on earlier requests only (so there can be no cycle):
//! - **before it starts**: a write waits for every earlier request on its documents (a read
//!   sent before it must not see it); a read waits only for the earlier *writes* (reads of one
//!   document run side by side — ten GETs of one missing document share one store read instead
//!   of stacking ten store timeouts);
//! - **before it answers**: every earlier request on its documents, so answers keep send order.
//!
//! A write counts as done only once it has *settled* (see `service/write.rs`: a write answered
//! `timeout` after its COMMIT was sent is followed until the database decides), so a later read
//! cannot slip in before a commit that is still landing.
//!
//! The table remembers, per document, the last request and the last write that touch it, and
//! per collection the last LIST, the document requests since it and the pending writes (a LIST
//! touches every document of its collection). Keys are 64-bit hashes: a collision only makes
//! unrelated requests wait for each other, never reorders anything. Entries whose requests are
//! done (answered, settled and in the output) are pruned, all of them when nothing is in flight.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::outbox::Done;

/// What a request touches.
pub(super) enum Touch<'a> {
    /// Documents of one game, each `(collection, id)`; `write` when the request may change them.
    Docs {
        game: &'a str,
        docs: Vec<(&'a str, &'a str)>,
        write: bool,
    },
    /// Every document of a collection (a LIST, which only reads).
    Collection(&'a str, &'a str),
}

/// The earlier requests a new one waits for.
#[derive(Default)]
pub(super) struct Waits {
    pub before_start: Vec<Arc<Done>>,
    pub before_answer: Vec<Arc<Done>>,
}

impl Waits {
    pub fn is_empty(&self) -> bool {
        self.before_start.is_empty() && self.before_answer.is_empty()
    }
}

struct DocOrder {
    last: Arc<Done>,
    last_write: Option<Arc<Done>>,
}

#[derive(Default)]
struct CollectionOrder {
    /// The last LIST of the collection.
    list: Option<Arc<Done>>,
    /// Document requests read since that LIST.
    since_list: Vec<Arc<Done>>,
    /// Writes not known to be done, whenever they came.
    writes: Vec<Arc<Done>>,
}

/// The order table of one connection; owned by the connection task.
pub(super) struct Order {
    docs: Table<DocOrder>,
    collections: Table<CollectionOrder>,
    hasher: foldhash::fast::RandomState,
    /// Size at which done entries are pruned next (amortises the pruning).
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 64;

/// Tables keyed by 64-bit hashes already: hashed again cheaply (SipHash, the default, took
/// 0.9 % of the samples of TCP reads answered from L2 at depth 16).
type Table<V> = HashMap<u64, V, foldhash::fast::FixedState>;

/// Entries a table keeps room for when it is cleared (beyond, the memory is given back).
const KEEP_CAPACITY: usize = 1024;

impl Default for Order {
    fn default() -> Self {
        Order {
            docs: Table::default(),
            collections: Table::default(),
            hasher: Default::default(),
            prune_at: MIN_PRUNE_AT,
        }
    }
}

/// Adds `done` to `list` unless it is `me` (a TXN may name a document twice), already done, or
/// already there.
fn add(list: &mut Vec<Arc<Done>>, done: &Arc<Done>, me: &Arc<Done>, moved: u64) {
    if !Arc::ptr_eq(done, me)
        && !done.answered_within(moved)
        && !list.iter().any(|w| Arc::ptr_eq(w, done))
    {
        list.push(done.clone());
    }
}

impl Order {
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty() && self.collections.is_empty()
    }

    /// Forgets everything: every request read so far has been answered and written out.
    pub fn clear(&mut self) {
        if !self.is_empty() {
            // Kept when small: a busy connection empties its table after every batch.
            if self.docs.capacity() > KEEP_CAPACITY {
                self.docs = Table::default();
            }
            if self.collections.capacity() > KEEP_CAPACITY {
                self.collections = Table::default();
            }
            self.docs.clear();
            self.collections.clear();
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
    /// touching it is still not done (`moved`: answers in the output).
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
        !doc.is_some_and(|d| pending(&d.last)) && !list.is_some_and(pending)
    }

    /// Records a request that touches `touch` and returns what it must wait for.
    pub fn enter(&mut self, touch: &Touch<'_>, me: &Arc<Done>, moved: u64) -> Waits {
        let mut waits = Waits::default();
        match touch {
            Touch::Docs { game, docs, write } => {
                for (collection, id) in docs {
                    let key = self.doc_key(game, collection, id);
                    let previous = self.docs.remove(&key);
                    if let Some(previous) = &previous {
                        add(&mut waits.before_answer, &previous.last, me, moved);
                        let start = if *write {
                            Some(&previous.last)
                        } else {
                            previous.last_write.as_ref()
                        };
                        if let Some(start) = start {
                            add(&mut waits.before_start, start, me, moved);
                        }
                    }
                    let last_write = match (write, previous) {
                        (true, _) => Some(me.clone()),
                        (false, previous) => previous.and_then(|p| p.last_write),
                    };
                    self.docs.insert(
                        key,
                        DocOrder {
                            last: me.clone(),
                            last_write,
                        },
                    );
                    let key = self.collection_key(game, collection);
                    let entry = self.collections.entry(key).or_default();
                    if let Some(list) = &entry.list {
                        add(&mut waits.before_answer, list, me, moved);
                        if *write {
                            // The LIST must read before this write applies.
                            add(&mut waits.before_start, list, me, moved);
                        }
                    }
                    if !entry.since_list.iter().any(|m| Arc::ptr_eq(m, me)) {
                        entry.since_list.push(me.clone());
                    }
                    if *write && !entry.writes.iter().any(|w| Arc::ptr_eq(w, me)) {
                        entry.writes.push(me.clone());
                    }
                }
            }
            Touch::Collection(game, collection) => {
                let key = self.collection_key(game, collection);
                let entry = self.collections.entry(key).or_default();
                for write in &entry.writes {
                    add(&mut waits.before_start, write, me, moved);
                }
                for earlier in entry.list.iter().chain(&entry.since_list) {
                    add(&mut waits.before_answer, earlier, me, moved);
                }
                entry.list = Some(me.clone());
                entry.since_list.clear();
            }
        }
        if self.docs.len() + self.collections.len() > self.prune_at {
            self.prune(moved);
        }
        waits
    }

    /// Drops entries whose requests are done.
    fn prune(&mut self, moved: u64) {
        let done = |d: &Arc<Done>| d.answered_within(moved);
        self.docs.retain(|_, d| !done(&d.last));
        self.collections.retain(|_, c| {
            c.since_list.retain(|d| !done(d));
            c.writes.retain(|d| !done(d));
            if c.list.as_ref().is_some_and(done) {
                c.list = None;
            }
            c.list.is_some() || !c.since_list.is_empty() || !c.writes.is_empty()
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

    fn docs<'a>(ids: &[&'a str], write: bool) -> Touch<'a> {
        Touch::Docs {
            game: "g",
            docs: ids.iter().map(|id| ("p", *id)).collect(),
            write,
        }
    }

    fn same(list: &[Arc<Done>], expected: &[&Arc<Done>]) -> bool {
        list.len() == expected.len()
            && expected
                .iter()
                .all(|e| list.iter().any(|l| Arc::ptr_eq(l, e)))
    }

    #[test]
    fn writes_wait_for_everything_earlier_reads_only_for_writes() {
        let mut order = Order::default();
        let (r1, r2, w3, r4, w5) = (done(), done(), done(), done(), done());
        assert!(order.is_free("g", "p", "1", 0));
        assert!(order.enter(&docs(&["1"], false), &r1, 0).is_empty());
        assert!(!order.is_free("g", "p", "1", 0));
        assert!(order.is_free("g", "p", "2", 0));
        // A second read starts at once but answers after the first.
        let waits = order.enter(&docs(&["1"], false), &r2, 0);
        assert!(waits.before_start.is_empty());
        assert!(same(&waits.before_answer, &[&r1]));
        // A write starts only after the last request (which answers after the one before).
        let waits = order.enter(&docs(&["1"], true), &w3, 0);
        assert!(same(&waits.before_start, &[&r2]) && same(&waits.before_answer, &[&r2]));
        // A read after a write starts after it.
        let waits = order.enter(&docs(&["1"], false), &r4, 0);
        assert!(same(&waits.before_start, &[&w3]) && same(&waits.before_answer, &[&w3]));
        // A TXN naming a document twice never waits for itself; other documents are free.
        let waits = order.enter(&docs(&["9", "9"], true), &w5, 0);
        assert!(waits.is_empty());
    }

    #[test]
    fn a_list_orders_against_its_whole_collection() {
        let mut order = Order::default();
        let (w1, other, list1, list2, after) = (done(), done(), done(), done(), done());
        order.enter(&docs(&["1"], true), &w1, 0);
        order.enter(
            &Touch::Docs {
                game: "g",
                docs: vec![("q", "1")],
                write: true,
            },
            &other,
            0,
        );
        let waits = order.enter(&Touch::Collection("g", "p"), &list1, 0);
        assert!(
            same(&waits.before_start, &[&w1]),
            "only the write on collection p"
        );
        assert!(same(&waits.before_answer, &[&w1]));
        // A second LIST still starts after that write, and answers after the first LIST.
        let waits = order.enter(&Touch::Collection("g", "p"), &list2, 0);
        assert!(same(&waits.before_start, &[&w1]));
        assert!(same(&waits.before_answer, &[&list1]));
        assert!(!order.is_free("g", "p", "9", 0), "a GET after a LIST waits");
        let waits = order.enter(&docs(&["9"], true), &after, 0);
        assert!(same(&waits.before_start, &[&list2]) && same(&waits.before_answer, &[&list2]));
    }
}
