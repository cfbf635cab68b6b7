//! Multi-document reads: batch get and list pages, within the bound on large answers
//! (`responses.max_bytes` per answer, the shared budget for all of them; see [`super::budget`]).
//! The store is asked for no more than still fits, so a small request cannot make the server
//! read or assemble a huge answer.

use crate::ops::metrics::StoreOp;
use bytes::Bytes;

use super::{
    BatchDocs, DEFAULT_LIST_LIMIT, ListPage, MAX_BATCH_IDS, MAX_LIST_LIMIT, Service, to_cached,
};
use crate::auth::{Access, Caller};
use crate::cache::{Cached, cache_key};
use crate::error::{ErrorCode, ServiceError};
use crate::model::{DOCUMENT_ENVELOPE_BYTES, check_id, is_owned_by};

impl Service {
    /// Reads many documents of one collection; `None` where an id has no document. Hits come
    /// from L1, then from L2 (one multi-key call); what is still missing is read with one store
    /// query and fills both. An answer over
    /// `responses.max_bytes` is refused with `response_too_large` before it is assembled.
    pub async fn batch_get(
        &self,
        caller: &Caller,
        game_name: &str,
        collection: &str,
        ids: &[String],
    ) -> Result<BatchDocs, ServiceError> {
        caller.authorize(game_name, Access::Read)?;
        let game = self.game(game_name)?;
        let config = self.collection(game, collection)?;
        let batch = self.batch_read(game_name, collection, ids).await?;
        if let Some(owner) = caller.principal.owner_rule(config.public_read) {
            let foreign = ids.iter().zip(&batch.docs).any(|(id, doc)| {
                doc.as_ref()
                    .is_some_and(|body| !is_owned_by(body, id, owner))
            });
            if foreign {
                let reason = "a document of the batch is not the caller's";
                return Err(caller.principal.deny(Access::Read, game_name, reason));
            }
        }
        Ok(batch)
    }

    /// [`Service::batch_get`] once the caller is allowed to ask.
    async fn batch_read(
        &self,
        game_name: &str,
        collection: &str,
        ids: &[String],
    ) -> Result<BatchDocs, ServiceError> {
        let game = self.game(game_name)?;
        let config = self.collection(game, collection)?;
        if ids.len() > MAX_BATCH_IDS {
            return Err(ServiceError::bad_request(format!(
                "at most {MAX_BATCH_IDS} ids per batch"
            )));
        }
        for id in ids {
            check_id(id, "every id")?;
        }
        // Each distinct id is read once; the answer repeats it where the request does.
        let mut unique: Vec<&str> = ids.iter().map(String::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        let keys = unique
            .iter()
            .map(|id| cache_key(game_name, collection, id))
            .collect();
        let budget = &self.inner.budget;
        // Read once: a reload during this request must not change them halfway.
        let (max_bytes, max_document_bytes) = (budget.max_bytes(), config.max_document_bytes());
        let mut batch = self.inner.cache.batch(keys, config.ttls());
        // For each requested id, its distinct key (found once, used by every step below).
        let slot_of: Vec<usize> = ids
            .iter()
            .map(|id| unique.binary_search(&id.as_str()).unwrap_or_default())
            .collect();
        let answer = |found: &[Option<Cached>]| -> Vec<Option<Cached>> {
            slot_of.iter().map(|slot| found[*slot].clone()).collect()
        };
        let found_bytes = |batch: &crate::cache::BatchRead<'_>| {
            documents_bytes(
                slot_of
                    .iter()
                    .filter_map(|slot| batch.found()[*slot].as_ref()),
            )
        };
        let mut hit_bytes = found_bytes(&batch);
        if hit_bytes > max_bytes {
            return Err(answer_too_large(hit_bytes, max_bytes));
        }
        if !batch.missing().is_empty() {
            batch.read_l2().await;
            hit_bytes = found_bytes(&batch);
            if hit_bytes > max_bytes {
                return Err(answer_too_large(hit_bytes, max_bytes));
            }
        }
        let missing = batch.missing();
        if missing.is_empty() {
            let permit = budget.reserve(hit_bytes).await?;
            let (found, tier) = batch.finish();
            return Ok(BatchDocs {
                docs: bodies(answer(&found)),
                tier,
                permit,
            });
        }
        // The store is asked for no more than what still fits (plus one value), and this
        // request holds the most it can receive until the read is done.
        let room = max_bytes - hit_bytes;
        let worst = (missing.len() * (max_document_bytes + DOCUMENT_ENVELOPE_BYTES))
            .min(room + max_document_bytes + DOCUMENT_ENVELOPE_BYTES);
        let mut permit = budget.reserve(hit_bytes + worst).await?;
        let miss_ids: Vec<&str> = missing.iter().map(|index| unique[*index]).collect();
        self.inner.metrics.store.reads.inc();
        let many = self
            .budget(
                StoreOp::GetMany,
                game.store.get_many(game_name, collection, &miss_ids, room),
            )
            .await?;
        if many.value_bytes > room {
            // Some rows were left out: none of them may be taken for "missing".
            return Err(answer_too_large(hit_bytes + many.value_bytes, max_bytes));
        }
        for (index, id) in missing.into_iter().zip(miss_ids) {
            batch.loaded(index, to_cached(id, many.rows.get(id)));
        }
        let (found, tier) = batch.finish();
        let found = answer(&found);
        let bytes = documents_bytes(found.iter().flatten());
        if bytes > max_bytes {
            return Err(answer_too_large(bytes, max_bytes));
        }
        budget.fit(&mut permit, bytes).await?;
        Ok(BatchDocs {
            docs: bodies(found),
            tier,
            permit,
        })
    }

    /// Lists live documents ordered by id, optionally those of one owner. `cursor` is the
    /// `next_cursor` of the previous page. A page ends early (with a cursor) when its
    /// documents reach `responses.max_bytes`.
    pub async fn list(
        &self,
        caller: &Caller,
        game_name: &str,
        collection: &str,
        owner: Option<&str>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage, ServiceError> {
        caller.authorize(game_name, Access::Read)?;
        let game = self.game(game_name)?;
        let config = self.collection(game, collection)?;
        if let Some(subject) = caller.principal.owner_rule(config.public_read)
            && owner != Some(subject)
        {
            let reason = "a player lists only its own documents (owner=<its id>)";
            return Err(caller.principal.deny(Access::Read, game_name, reason));
        }
        if let Some(owner) = owner {
            check_id(owner, "owner")?;
        }
        if let Some(cursor) = cursor {
            check_id(cursor, "cursor")?;
        }
        let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if limit == 0 || limit > MAX_LIST_LIMIT {
            return Err(ServiceError::bad_request(format!(
                "limit must be 1-{MAX_LIST_LIMIT}"
            )));
        }
        let budget = &self.inner.budget;
        // Read once: a reload during this request must not change them halfway.
        let max_bytes = budget.max_bytes();
        let per_doc = config.max_document_bytes() + DOCUMENT_ENVELOPE_BYTES;
        let worst = ((limit + 1) * per_doc).min(max_bytes + per_doc);
        let mut permit = budget.reserve(worst).await?;
        self.inner.metrics.store.reads.inc();
        let page = self
            .budget(
                StoreOp::List,
                game.store
                    .list(game_name, collection, owner, cursor, limit + 1, max_bytes),
            )
            .await?;
        let mut rows = page.rows;
        let mut more = page.cut || rows.len() > limit;
        rows.truncate(limit);
        let mut docs = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        let mut last = None;
        for (id, row) in &rows {
            let Cached::Doc { body, .. } = to_cached(id, Some(row)) else {
                continue;
            };
            if bytes + body.len() > max_bytes && !docs.is_empty() {
                more = true;
                break;
            }
            bytes += body.len();
            docs.push(body);
            last = Some(id);
        }
        budget.fit(&mut permit, bytes).await?;
        Ok(ListPage {
            docs,
            next_cursor: if more { last.cloned() } else { None },
            permit,
        })
    }
}

/// Bytes of the documents among `cached` (what an answer assembles from them).
fn documents_bytes<'a>(cached: impl Iterator<Item = &'a Cached>) -> usize {
    cached
        .map(|c| match c {
            Cached::Doc { body, .. } => body.len(),
            Cached::Missing { .. } => 0,
        })
        .sum()
}

fn bodies(found: Vec<Option<Cached>>) -> Vec<Option<Bytes>> {
    found
        .into_iter()
        .map(|c| match c {
            Some(Cached::Doc { body, .. }) => Some(body),
            _ => None,
        })
        .collect()
}

fn answer_too_large(bytes: usize, max: usize) -> ServiceError {
    ServiceError::new(
        ErrorCode::ResponseTooLarge,
        format!(
            "the answer would hold at least {bytes} bytes of documents, over responses.max_bytes \
             ({max}); ask for fewer ids"
        ),
    )
}
