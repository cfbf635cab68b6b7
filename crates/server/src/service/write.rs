//! Write transactions: prepare (validate, lock order), plan (the rules applied under the row
//! locks) and settle (the cache follows the outcome, then the caller gets its answer).
//!
//! A write runs to its end in a task of its own, whatever happens to the request that asked
//! for it: a client that disconnects, or an HTTP request future dropped by hyper, must not stop
//! the cache step after a commit, or L1 would keep serving the version before it. The caller
//! only waits for the task's answer.
//!
//! When the store time budget runs out, the caller is answered `timeout` (outcome unknown) and
//! the keys are dropped from L1 at once, so reads go to the store. If the COMMIT had not been
//! sent, the transaction is abandoned (its connection is closed, so the database rolls it
//! back). If it had, the database decides without us: the task keeps waiting for its verdict
//! (up to [`SETTLE_LIMIT`]) and then updates or drops the keys again, so that a read that
//! refilled L1 meanwhile with the older version cannot outlive the commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use std::sync::Arc;

use super::ops::{self, Applied, Rules, WriteOp};
use super::{KeyedOp, OpOutcome, Service, store_error, to_cached};
use crate::auth::{Access, Caller, Principal};
use crate::cache::{Ttls, WriteTickets, cache_key};
use crate::error::{ErrorCode, ServiceError};
use crate::model::{
    DOCUMENT_ENVELOPE_BYTES, DocKey, StoredDoc, check_id, encode_document, now_rfc3339,
};
use crate::store::{Planned, StoreError, TxnError};

/// How long a write whose COMMIT was sent is followed after its time budget ran out.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// A validated write, owned by its task.
pub(super) struct Prepared {
    pub game: String,
    pub ops: Vec<KeyedOp>,
    /// The rules of each op's collection.
    pub rules: Vec<Rules>,
    /// Sorted, unique: the lock order.
    pub keys: Vec<DocKey>,
    /// For each op, its key's index in `keys`.
    pub slot_of: Vec<usize>,
    /// Cache key of each entry of `keys`.
    pub cache_keys: Vec<String>,
    /// Cache lifetimes of each entry of `keys`.
    pub ttls: Vec<Ttls>,
    /// Most bytes of documents the answer may hold.
    pub max_answer_bytes: usize,
    /// A player's write: every document it touches must be (or become) its own, checked
    /// against the locked rows.
    pub player: Option<Arc<Principal>>,
}

/// Where the write task sends the caller's answer.
type ReplyTo = oneshot::Sender<Result<Vec<OpOutcome>, ServiceError>>;

/// Dropped by the write task once the write has *settled*: committed or not, and L1 following
/// it. That is when the caller's answer is sent, except after a `timeout` whose COMMIT was on
/// its way (up to [`SETTLE_LIMIT`] later). The TCP front end holds back later requests on the
/// same documents until then.
pub type Settled = oneshot::Sender<()>;

impl Service {
    /// Validates `ops` of game `game_name` into a [`Prepared`] write.
    pub(super) fn prepare(
        &self,
        game_name: &str,
        ops: Vec<KeyedOp>,
    ) -> Result<Prepared, ServiceError> {
        let game = self.game(game_name)?;
        if ops.is_empty() || ops.len() > super::MAX_TXN_OPS {
            return Err(ServiceError::bad_request(format!(
                "a transaction has 1-{} operations",
                super::MAX_TXN_OPS
            )));
        }
        let mut rules = Vec::with_capacity(ops.len());
        let mut collection_ttls = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let config = self
                .collection(game, &op.key.collection)
                .map_err(|e| e.at_op(index))?;
            collection_ttls.push((op.key.collection.as_str(), config.ttls()));
            check_id(&op.key.id, "id").map_err(|e| e.at_op(index))?;
            rules.push(Rules {
                max_bytes: config.max_document_bytes(),
                float_counters: config.float_counters,
            });
        }
        let mut keys: Vec<DocKey> = ops.iter().map(|op| op.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let slot_of = ops
            .iter()
            .map(|op| keys.binary_search(&op.key).unwrap_or_default())
            .collect();
        let cache_keys = keys
            .iter()
            .map(|k| cache_key(game_name, &k.collection, &k.id))
            .collect();
        let ttls = keys
            .iter()
            .map(|k| {
                collection_ttls
                    .iter()
                    .find(|(name, _)| *name == k.collection)
                    .map(|(_, ttls)| *ttls)
            })
            .collect::<Option<Vec<Ttls>>>()
            .ok_or_else(|| ServiceError::internal("a prepared key lost its collection"))?;
        Ok(Prepared {
            game: game_name.to_string(),
            ops,
            rules,
            keys,
            slot_of,
            cache_keys,
            ttls,
            max_answer_bytes: self.inner.budget.max_bytes(),
            player: None,
        })
    }

    /// A player's operations as they will run: refused outright in a collection that is not
    /// `player_write`; a PUT that names no owner makes the player the owner (so a create is
    /// its own). Other callers' operations pass unchanged.
    pub(super) fn player_ops(
        &self,
        caller: &Caller,
        game_name: &str,
        mut ops: Vec<KeyedOp>,
    ) -> Result<Vec<KeyedOp>, ServiceError> {
        let principal = &caller.principal;
        let Some(subject) = principal.subject.as_deref() else {
            return Ok(ops);
        };
        let Ok(game) = self.game(game_name) else {
            return Ok(ops); // `prepare` names the error
        };
        for (index, op) in ops.iter_mut().enumerate() {
            let writable = game
                .collections
                .get(&op.key.collection)
                .is_none_or(|config| config.player_write);
            if !writable {
                let reason = "players may not write in this collection";
                return Err(principal
                    .deny(Access::Write, game_name, reason)
                    .at_op(index));
            }
            if let WriteOp::Put {
                owner: owner @ None,
                ..
            } = &mut op.op
            {
                *owner = Some(Some(subject.to_string()));
            }
        }
        Ok(ops)
    }

    /// The most bytes of documents the answer to `prepared` can hold (for the response budget).
    pub(super) fn worst_answer_bytes(prepared: &Prepared) -> usize {
        let docs: usize = prepared
            .ops
            .iter()
            .zip(&prepared.rules)
            .filter(|(op, _)| op.op.returns_document())
            .map(|(_, rules)| rules.max_bytes + DOCUMENT_ENVELOPE_BYTES)
            .sum();
        docs.min(prepared.max_answer_bytes)
    }

    /// Runs `prepared` to its end in its own task and returns its answer (see the module
    /// documentation for why the task is not the caller's). Writes in progress — their callers
    /// gone or not — are bounded by `store.max_pending_writes`.
    pub(super) async fn run_write(
        &self,
        prepared: Prepared,
        settled: Option<Settled>,
    ) -> Result<Vec<OpOutcome>, ServiceError> {
        let Ok(pending) = self.inner.pending_writes.clone().try_acquire_owned() else {
            return Err(ServiceError::new(
                ErrorCode::Overloaded,
                "too many writes in progress; retry later",
            ));
        };
        let (answer, answered) = oneshot::channel();
        let service = self.clone();
        tokio::spawn(async move {
            service.write_to_end(prepared, answer, settled).await;
            drop(pending);
        });
        answered.await.unwrap_or_else(|_| {
            Err(ServiceError::internal(
                "a write task ended without answering",
            ))
        })
    }

    async fn write_to_end(&self, p: Prepared, answer: ReplyTo, settled: Option<Settled>) {
        let Ok(game) = self.game(&p.game) else {
            let _ = answer.send(Err(ServiceError::internal("a prepared game vanished")));
            return;
        };
        self.present_before_write(game).await;
        let cache = &self.inner.cache;
        let (mut tickets, commit_gate, marking) = cache.begin_write(p.cache_keys.clone());
        let mut plan = |current: &[StoredDoc]| apply_ops(&p, current);
        let committing = AtomicBool::new(false);
        let transaction =
            game.store
                .transact(&p.game, &p.keys, &mut plan, &committing, &commit_gate);
        tokio::pin!(transaction);
        let budget = tokio::time::sleep(self.inner.store_timeout);
        tokio::pin!(budget);
        let started = std::time::Instant::now();
        let finished = tokio::select! {
            // A transaction that finished in time wins over a budget that ran out with it.
            biased;
            result = &mut transaction => Some(result),
            () = &mut budget => None,
        };
        let metrics = &self.inner.metrics.store;
        metrics.observe(crate::ops::metrics::StoreOp::Write, started.elapsed());
        if let Some(marking) = marking {
            // Bounded by the L2 time budget; done before the COMMIT whenever one was sent.
            tickets.set_marked(marking.await.unwrap_or(false));
        }
        if let Some(result) = finished {
            let committing = committing.load(Ordering::Acquire);
            let lost_while_committing =
                committing && matches!(&result, Err(TxnError::Store(e)) if e.is_connection_lost());
            if lost_while_committing {
                // The database may still commit what it received (a partition, a slow disk):
                // the tiers must not vouch for the older version meanwhile.
                cache.outcome_unknown(&tickets, SETTLE_LIMIT).await;
            }
            if result.is_ok() && self.aborted(&p) {
                return; // the fault point: as if the process died right after the COMMIT
            }
            let reply = self.settle(&p, tickets, result, committing).await;
            let _ = answer.send(reply);
            drop(settled);
            if lost_while_committing {
                // A read in between can refill L1 with the older version: the keys are dropped
                // once more, which bounds that window to SETTLE_LIMIT.
                tokio::time::sleep(SETTLE_LIMIT).await;
                self.inner.cache.forget_everywhere(&p.cache_keys).await;
            }
            return;
        }
        // Out of time: the outcome is unknown to the caller, and no tier may vouch for the old
        // version while it is.
        cache.outcome_unknown(&tickets, SETTLE_LIMIT).await;
        let _ = answer.send(Err(ServiceError::new(
            ErrorCode::Timeout,
            "the store did not answer in time; the outcome of the write is unknown: read the document back",
        )));
        if !committing.load(Ordering::Acquire) {
            // Dropping the transaction closes its connection: the database rolls back.
            cache.not_committed(tickets, false).await;
            return;
        }
        match tokio::time::timeout(SETTLE_LIMIT, &mut transaction).await {
            Ok(result) => {
                let _ = self.settle(&p, tickets, result, true).await;
            }
            Err(_) => {
                tracing::warn!(
                    game = %p.game,
                    "a COMMIT got no answer within the settle limit; its keys are dropped from L1"
                );
                self.inner.cache.forget_everywhere(&p.cache_keys).await;
            }
        }
    }

    /// The test-only fault point "the process dies right after the COMMIT" fired for `p`.
    fn aborted(&self, p: &Prepared) -> bool {
        let fired = self
            .inner
            .cache
            .faults()
            .abort_after_commit
            .load(Ordering::Relaxed);
        if fired {
            tracing::warn!(game = %p.game, "fault point: write aborted after its commit");
        }
        fired
    }

    /// The cache follows the outcome; then it is mapped to the caller's result.
    async fn settle(
        &self,
        p: &Prepared,
        tickets: WriteTickets,
        result: Result<Planned<Vec<OpOutcome>>, TxnError<ServiceError>>,
        committing: bool,
    ) -> Result<Vec<OpOutcome>, ServiceError> {
        let cache = &self.inner.cache;
        match result {
            Ok((new_rows, outcomes)) => {
                self.inner.metrics.store.commits.inc();
                let changed = p
                    .keys
                    .iter()
                    .zip(new_rows)
                    .zip(&p.ttls)
                    .map(|((key, row), ttls)| {
                        row.map(|row| (to_cached(&key.id, Some(&row)), *ttls))
                    })
                    .collect();
                cache.committed(tickets, changed).await;
                Ok(outcomes)
            }
            Err(TxnError::Plan(e)) => {
                // The store disagreed with what the caller (maybe from our cache) expected:
                // drop our copies so the next read fetches the store's truth.
                let conflict = matches!(
                    e.code,
                    ErrorCode::VersionConflict | ErrorCode::AlreadyExists
                );
                cache.not_committed(tickets, conflict).await;
                Err(e)
            }
            Err(TxnError::Store(e)) => {
                cache.forget(&p.cache_keys);
                if !(committing && e.is_connection_lost()) {
                    cache.not_committed(tickets, true).await;
                }
                Err(write_failure(e, committing))
            }
        }
    }
}

/// The error a failed write transaction answers.
fn write_failure(e: StoreError, committing: bool) -> ServiceError {
    if e.is_connection_lost() && committing {
        tracing::warn!(error = %e, "the store connection was lost while a write was committing; its outcome is unknown");
        ServiceError::new(
            ErrorCode::Timeout,
            "the connection to the store was lost while the write was committing; its outcome is unknown: read the document back",
        )
    } else if e.is_connection_lost() {
        tracing::warn!(error = %e, "the store connection was lost before a write committed; nothing was written");
        ServiceError::new(
            ErrorCode::Overloaded,
            "the connection to the store was lost; nothing was written: retry later",
        )
    } else {
        store_error(e)
    }
}

/// The plan: applies every op in order to in-memory copies of the locked rows. Runs inside
/// the transaction, possibly more than once (retries).
fn apply_ops(p: &Prepared, current: &[StoredDoc]) -> Result<Planned<Vec<OpOutcome>>, ServiceError> {
    let now = now_rfc3339();
    let mut state: Vec<StoredDoc> = current.to_vec();
    let mut changed = vec![false; p.keys.len()];
    let mut outcomes = Vec::with_capacity(p.ops.len());
    let mut answer_bytes = 0;
    for (index, op) in p.ops.iter().enumerate() {
        let slot = p.slot_of[index];
        let foreign =
            |row: &StoredDoc, owner: &str| row.is_live() && row.owner.as_deref() != Some(owner);
        if let Some(player) = &p.player
            && let Some(owner) = player.subject.as_deref()
            && foreign(&state[slot], owner)
        {
            let reason = "not the document's owner";
            return Err(player.deny(Access::Write, &p.game, reason).at_op(index));
        }
        let Applied { row, created } =
            ops::apply(&op.op, &op.pre, &state[slot], p.rules[index], &now)
                .map_err(|e| e.at_op(index))?;
        if let (Some(player), Some(row)) = (&p.player, &row)
            && let Some(owner) = player.subject.as_deref()
            && foreign(row, owner)
        {
            let reason = "a player cannot give a document to another owner";
            return Err(player.deny(Access::Write, &p.game, reason).at_op(index));
        }
        let doc = match row {
            Some(row) => {
                let doc = row.value.as_deref().map(|value| {
                    encode_document(
                        &op.key.id,
                        row.owner.as_deref(),
                        row.version,
                        &row.updated_at,
                        value,
                    )
                });
                state[slot] = row;
                changed[slot] = true;
                doc
            }
            None => None,
        };
        answer_bytes += doc.as_ref().map_or(0, |d| d.len());
        outcomes.push(OpOutcome {
            doc,
            version: state[slot].version,
            created,
        });
    }
    if answer_bytes > p.max_answer_bytes {
        return Err(ServiceError::new(
            ErrorCode::ResponseTooLarge,
            format!(
                "the transaction's results would hold {answer_bytes} bytes of documents, over \
                 responses.max_bytes ({}); nothing was written",
                p.max_answer_bytes
            ),
        ));
    }
    let new_rows = state
        .into_iter()
        .zip(changed)
        .map(|(row, changed)| changed.then_some(row))
        .collect();
    Ok((new_rows, outcomes))
}
