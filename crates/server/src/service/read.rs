//! Reads of one document: [`Service::get`] (a future), [`Service::get_cached`] (L1 alone,
//! synchronous) and [`Service::get_each`] (callbacks, so a connection can read L2 without a
//! task per request). All three take the same checks and the same tiers.

use super::{Collection, Game, ReadResult, Service, to_cached};
use crate::ops::metrics::StoreOp;
use std::sync::Arc;

use crate::auth::{Access, Caller, Principal};
use crate::cache::{Cached, KeyBuf, Ttls};
use crate::error::ServiceError;
use crate::model::{DocKey, Tier, check_id, is_owned_by};

/// Where the result of one read of [`Service::get_each`] goes.
pub trait Reply: Send + 'static {
    fn reply(self, read: Result<ReadResult, ServiceError>);

    /// True when nobody waits for the answer any more (its connection closed): a store read
    /// for it is not started.
    fn gone(&self) -> bool {
        false
    }

    /// Releases the reply without an answer (see [`Reply::gone`]).
    fn skip(self);
}

/// One read of [`Service::get_each`].
pub struct Get<R> {
    pub game: String,
    pub collection: String,
    pub id: String,
    pub reply: R,
    /// Set when the read was checked and L1 missed it already ([`L1Answer::Missed`]).
    pub missed: Option<Missed>,
}

/// What L1 alone says of a read ([`Service::get_from_l1`]).
// The miss holds the key inline (a `KeyBuf`, no allocation); boxing it would allocate per miss
// to save moving a few hundred bytes once.
#[allow(clippy::large_enum_variant)]
pub enum L1Answer {
    /// The document, or the error a full read would give (unknown game, bad id, a cached
    /// "missing").
    Answered(Result<ReadResult, ServiceError>),
    /// Not in L1; the read is valid.
    Missed(Missed),
}

/// A valid read that L1 missed: its cache key and lifetimes, for [`Get::missed`].
pub struct Missed {
    key: KeyBuf,
    ttls: Ttls,
    /// The caller is a player and the collection not public: the owner rule applies.
    owner_rule: bool,
}

impl Service {
    /// Reads one document on behalf of `caller`.
    pub async fn get(
        &self,
        caller: &Caller,
        game_name: &str,
        collection: &str,
        id: &str,
    ) -> Result<ReadResult, ServiceError> {
        caller.authorize(game_name, Access::Read)?;
        let (game, config, key) = self.locate(game_name, collection, id)?;
        // The miss path (single flight, store query) is boxed so that the future of a hit
        // stays small: hyper moves the request future on every request (measured).
        let (cached, tier) = match self.inner.cache.cached(key.as_str()) {
            Some(hit) => (hit, Tier::L1),
            None => {
                Box::pin(self.load(game_name, game, config, collection, id, key.as_str())).await?
            }
        };
        owned(
            read_result(cached, tier),
            &caller.principal,
            game_name,
            id,
            config.public_read,
        )
    }

    /// Reads one document, whoever asks (for the service's own work, such as warm-up).
    pub(super) async fn read(
        &self,
        game_name: &str,
        collection: &str,
        id: &str,
    ) -> Result<ReadResult, ServiceError> {
        self.get(&self.inner.itself, game_name, collection, id)
            .await
    }

    /// Answers a read from L1 alone: `None` when the document is not cached (a miss), else the
    /// document or the error a full [`Service::get`] would give (unknown game, bad id, or a
    /// cached "missing"). Lets an ingress answer hits without creating a task.
    pub fn get_cached(
        &self,
        caller: &Caller,
        game_name: &str,
        collection: &str,
        id: &str,
    ) -> Option<Result<ReadResult, ServiceError>> {
        match self.get_from_l1(caller, game_name, collection, id) {
            L1Answer::Answered(read) => Some(read),
            L1Answer::Missed(_) => None,
        }
    }

    /// Like [`Service::get_cached`], and a miss carries what [`Service::get_each`] needs, so
    /// the read is not checked nor looked up in L1 twice.
    pub fn get_from_l1(
        &self,
        caller: &Caller,
        game_name: &str,
        collection: &str,
        id: &str,
    ) -> L1Answer {
        if let Err(e) = caller.authorize(game_name, Access::Read) {
            return L1Answer::Answered(Err(e));
        }
        let (config, key) = match self.locate(game_name, collection, id) {
            Ok((_, config, key)) => (config, key),
            Err(e) => return L1Answer::Answered(Err(e)),
        };
        let principal = &caller.principal;
        match self.inner.cache.cached(key.as_str()) {
            Some(hit) => L1Answer::Answered(owned(
                read_result(hit, Tier::L1),
                principal,
                game_name,
                id,
                config.public_read,
            )),
            None => L1Answer::Missed(Missed {
                key,
                ttls: config.ttls(),
                owner_rule: principal.owner_rule(config.public_read).is_some(),
            }),
        }
    }

    /// The read of one document that L1 missed, through L2 and the store (single flight).
    async fn load(
        &self,
        game_name: &str,
        game: &Game,
        config: &Collection,
        collection: &str,
        id: &str,
        key: &str,
    ) -> Result<(Cached, Tier), ServiceError> {
        self.inner
            .cache
            .read_missed(key, config.ttls(), || {
                self.read_row(game_name, game, collection, id)
            })
            .await
    }

    /// Reads documents like [`Service::get`], each answered through its own [`Reply`] instead
    /// of returned, for a front end that answers without a task per request: a bad request or
    /// an L1 hit is answered before this returns, L2 hits where Redis's answer arrives (one
    /// lookup for all of them, see `cache/coalesce.rs`), and a read from the store in a task
    /// per document.
    ///
    /// Every get is made on behalf of `caller`; one that carries a [`Missed`] was checked when
    /// it was made (by [`Service::get_from_l1`]).
    pub fn get_each<R: Reply>(&self, caller: &Caller, gets: Vec<Get<R>>) {
        let mut keys = Vec::with_capacity(gets.len());
        let mut waiting = Vec::with_capacity(gets.len());
        for mut get in gets {
            let missed = match get.missed.take() {
                Some(missed) => missed,
                None => match self.get_from_l1(caller, &get.game, &get.collection, &get.id) {
                    L1Answer::Answered(read) => {
                        get.reply.reply(read);
                        continue;
                    }
                    L1Answer::Missed(missed) => missed,
                },
            };
            keys.push((missed.key, missed.ttls));
            waiting.push((get, missed.owner_rule));
        }
        if waiting.is_empty() {
            return;
        }
        let service = self.clone();
        // Only a player's reads need the principal afterwards (the owner rule).
        let player = waiting
            .iter()
            .any(|(_, rule)| *rule)
            .then(|| caller.principal.clone());
        let then = move |found: Vec<Option<Cached>>| {
            for ((get, rule), found) in waiting.into_iter().zip(found) {
                let player = player.as_ref().filter(|_| rule);
                match (found, player) {
                    (Some(hit), None) => get.reply.reply(read_result(hit, Tier::L2)),
                    (Some(hit), Some(player)) => {
                        let read = owned(
                            read_result(hit, Tier::L2),
                            player,
                            &get.game,
                            &get.id,
                            false,
                        );
                        get.reply.reply(read)
                    }
                    (None, player) => service.get_in_task(get, player.cloned()),
                }
            }
        };
        let keys: Vec<(&str, Ttls)> = keys.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        if let Err(then) = self.inner.cache.read_l2_many_then(&keys, then) {
            then(vec![None; keys.len()]);
        }
    }

    /// Finishes one read of [`Service::get_each`] that L2 did not answer, in a task.
    /// `player`: the owner rule applies to this player.
    fn get_in_task<R: Reply>(&self, get: Get<R>, player: Option<Arc<Principal>>) {
        if get.reply.gone() {
            return get.reply.skip();
        }
        // Not the whole `Get`: its room for a `Missed` key would make every such task larger.
        let Get {
            game,
            collection,
            id,
            reply,
            ..
        } = get;
        let service = self.clone();
        tokio::spawn(async move {
            let read = service.get_past_l2(&game, &collection, &id).await;
            reply.reply(match player {
                Some(player) => owned(read, &player, &game, &id, false),
                None => read,
            });
        });
    }

    /// The rest of a read of [`Service::get_each`] after L2 missed (or could not be asked):
    /// L1 once more, then the store, in the single flight of every read of the key.
    async fn get_past_l2(
        &self,
        game_name: &str,
        collection: &str,
        id: &str,
    ) -> Result<ReadResult, ServiceError> {
        let (game, config, key) = self.locate(game_name, collection, id)?;
        let (cached, tier) = self
            .inner
            .cache
            .read_past_l2(key.as_str(), config.ttls(), || {
                self.read_row(game_name, game, collection, id)
            })
            .await?;
        read_result(cached, tier)
    }

    /// The game and collection a read names, and its cache key; the error a bad name or id
    /// gets. The caller was authorized before.
    fn locate(
        &self,
        game_name: &str,
        collection: &str,
        id: &str,
    ) -> Result<(&Game, &Collection, KeyBuf), ServiceError> {
        let game = self.game(game_name)?;
        let config = self.collection(game, collection)?;
        check_id(id, "id")?;
        Ok((game, config, KeyBuf::new(game_name, collection, id)))
    }

    /// One document's row from the store, as the caches keep it.
    async fn read_row(
        &self,
        game_name: &str,
        game: &Game,
        collection: &str,
        id: &str,
    ) -> Result<Cached, ServiceError> {
        self.inner.metrics.store.reads.inc();
        let doc_key = DocKey {
            collection: collection.to_string(),
            id: id.to_string(),
        };
        // Boxed: the store's future is large, and it would otherwise sit inside the future of
        // every L1 miss, L2 hits included (moved whole when a task is spawned).
        let row = Box::pin(self.budget(StoreOp::Get, game.store.get(game_name, &doc_key))).await?;
        Ok(to_cached(id, row.as_ref()))
    }
}

/// A read of `id` as `principal` may see it: a player's read of a document it does not own, in
/// a collection that is not `public`, is `forbidden`.
fn owned(
    read: Result<ReadResult, ServiceError>,
    principal: &Principal,
    game: &str,
    id: &str,
    public: bool,
) -> Result<ReadResult, ServiceError> {
    match (read, principal.owner_rule(public)) {
        (Ok(doc), Some(owner)) if !is_owned_by(&doc.body, id, owner) => {
            Err(principal.deny(Access::Read, game, "not the document's owner"))
        }
        (read, _) => read,
    }
}

fn read_result(cached: Cached, tier: Tier) -> Result<ReadResult, ServiceError> {
    match cached {
        Cached::Doc { version, body } => Ok(ReadResult {
            body,
            version,
            tier,
        }),
        Cached::Missing { .. } => Err(ServiceError::not_found("no such document")),
    }
}
