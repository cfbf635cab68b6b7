//! Maps TCP request messages onto the service API and results back onto response messages.
//! The same service calls and the same error codes as the HTTP routes: only the encoding
//! differs.

use datamiddleware_protocol::{
    DocRef, Message, OwnerChange, Precondition as WirePre, Tier as WireTier,
};

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::{Authenticator, Caller, MintRequest};
use crate::error::{ErrorCode, ServiceError};
use crate::model::{DocKey, Tier};
use crate::service::ops::{Incr, Precondition, WriteOp};
use crate::service::request::{TxnRequest, parse_json, put_op};
use crate::service::{
    KeyedOp, OpOutcome, ReadResult, ResponsePermit, Service, Settled, txn_results_json,
};

/// A request as the connection hands it over.
pub enum Request {
    Message(Message),
    /// A TXN whose body the connection already parsed (it orders by the keys inside).
    Txn {
        game: String,
        ops: Result<Vec<KeyedOp>, ServiceError>,
    },
    /// A request refused before it ran (over a rate limit): answered with this error.
    Refused(ServiceError),
    /// MINT, with the authenticator that signs.
    Mint {
        auth: Arc<Authenticator>,
        game: String,
        request: Bytes,
    },
}

impl Request {
    /// Parses a TXN body here, once; every other message passes as it is.
    pub fn from_message(message: Message) -> Request {
        match message {
            Message::Txn { game, ops } => Request::Txn {
                game,
                ops: parse_json::<TxnRequest>(&ops).and_then(TxnRequest::into_ops),
            },
            other => Request::Message(other),
        }
    }
}

impl Request {
    /// True for the requests that may change documents (for the order rule).
    pub fn writes(&self) -> bool {
        match self {
            Request::Txn { .. } => true,
            Request::Refused(_) | Request::Mint { .. } => false,
            Request::Message(message) => matches!(
                message,
                Message::Put { .. }
                    | Message::Patch { .. }
                    | Message::Delete { .. }
                    | Message::Incr { .. }
            ),
        }
    }
}

/// The response to a request, with its share of the response budget when it holds several
/// documents (released once the response has been written).
pub type Response = (Message, Option<ResponsePermit>);

/// Runs one request and returns its response message. A write drops `settled` once it has
/// settled (which may be after its response); any other request drops it at once.
///
/// A GET (an L1 miss: answered by L2 or the store) keeps its future small; every other request
/// runs boxed, because the largest arm sets the size of the future that each request's task
/// moves into place when it is spawned (measured: 5 KB for a GET before this split).
pub async fn handle(
    service: &Service,
    caller: &Caller,
    request: Request,
    settled: Option<Settled>,
) -> Response {
    let result = match request {
        Request::Message(Message::Get(doc)) => get(service, caller, &doc).await,
        Request::Message(message) => Box::pin(run(service, caller, message, settled)).await,
        Request::Txn { game, ops } => Box::pin(txn(service, caller, &game, ops, settled)).await,
        Request::Refused(error) => Err(error),
        Request::Mint {
            auth,
            game,
            request,
        } => mint(service, &auth, caller, &game, &request),
    };
    result.unwrap_or_else(|e| (error_message(&e), None))
}

async fn get(service: &Service, caller: &Caller, doc: &DocRef) -> Result<Response, ServiceError> {
    let read = service
        .get(caller, &doc.game, &doc.collection, &doc.id)
        .await;
    Ok((read_response(read), None))
}

/// The response to a GET.
pub fn read_response(read: Result<ReadResult, ServiceError>) -> Message {
    match read {
        Ok(read) => Message::Doc {
            tier: wire_tier(read.tier),
            created: false,
            version: read.version,
            doc: read.body,
        },
        Err(e) => error_message(&e),
    }
}

async fn txn(
    service: &Service,
    caller: &Caller,
    game: &str,
    ops: Result<Vec<KeyedOp>, ServiceError>,
    settled: Option<Settled>,
) -> Result<Response, ServiceError> {
    let written = service.write(caller, game, ops?, settled).await?;
    let results = txn_results_json(&written.outcomes);
    Ok((Message::TxnResult { results }, written.permit))
}

/// MINT: the same rule and answer as the HTTP `_token`.
fn mint(
    service: &Service,
    auth: &Authenticator,
    caller: &Caller,
    game: &str,
    request: &[u8],
) -> Result<Response, ServiceError> {
    let body: MintRequest = parse_json(request)?;
    let minted = crate::auth::mint_for(auth, caller, game, &body.sub, body.ttl)?;
    service.check_game(game)?;
    Ok((
        Message::Token {
            token: Bytes::from(minted.to_json()),
        },
        None,
    ))
}

/// The error frame for a service error.
pub fn error_message(e: &ServiceError) -> Message {
    Message::Error {
        code: e.code.as_str().to_string(),
        message: e.message.clone(),
        op_index: e.op_index.map(|i| i as u32),
    }
}

/// Every request but TXN (which arrives parsed, as [`Request::Txn`]) and GET.
async fn run(
    service: &Service,
    caller: &Caller,
    request: Message,
    settled: Option<Settled>,
) -> Result<Response, ServiceError> {
    let mut permit = None;
    let message = match request {
        Message::Get(doc) => return get(service, caller, &doc).await,
        Message::BatchGet {
            game,
            collection,
            ids,
        } => {
            let batch = service.batch_get(caller, &game, &collection, &ids).await?;
            permit = Some(batch.permit);
            Message::Docs {
                tier: wire_tier(batch.tier),
                docs: batch.docs,
                next_cursor: None,
            }
        }
        Message::List {
            game,
            collection,
            owner,
            cursor,
            limit,
        } => {
            let limit = (limit > 0).then_some(limit as usize);
            let page = service
                .list(
                    caller,
                    &game,
                    &collection,
                    owner.as_deref(),
                    cursor.as_deref(),
                    limit,
                )
                .await?;
            permit = Some(page.permit);
            Message::Docs {
                tier: WireTier::Db,
                docs: page.docs.into_iter().map(Some).collect(),
                next_cursor: page.next_cursor,
            }
        }
        Message::Put {
            doc,
            pre,
            owner,
            value,
        } => {
            let owner = match owner {
                OwnerChange::Keep => None,
                OwnerChange::Set(owner) => Some(Some(owner)),
                OwnerChange::Clear => Some(None),
            };
            let op = put_op(parse_json(&value)?, owner)?;
            written(write_doc(service, caller, &doc, op, pre, settled).await?)
        }
        Message::Patch { doc, pre, patch } => {
            let op = WriteOp::Patch {
                patch: parse_json(&patch)?,
            };
            written(write_doc(service, caller, &doc, op, pre, settled).await?)
        }
        Message::Incr { doc, pre, incr } => {
            let op = WriteOp::Incr(parse_json::<Incr>(&incr)?);
            written(write_doc(service, caller, &doc, op, pre, settled).await?)
        }
        Message::Delete { doc, pre } => {
            let outcome = write_doc(service, caller, &doc, WriteOp::Delete, pre, settled).await?;
            Message::Done {
                version: outcome.version,
            }
        }
        other => {
            return Err(ServiceError::new(
                ErrorCode::UnknownOpcode,
                format!("{:?} is not a request", other.opcode()),
            ));
        }
    };
    Ok((message, permit))
}

/// A single-document write, as every write opcode but TXN sends it.
async fn write_doc(
    service: &Service,
    caller: &Caller,
    doc: &DocRef,
    op: WriteOp,
    pre: WirePre,
    settled: Option<Settled>,
) -> Result<OpOutcome, ServiceError> {
    service
        .write_one(
            caller,
            &doc.game,
            DocKey::new(&doc.collection, &doc.id),
            op,
            precondition(pre),
            settled,
        )
        .await
}

fn written(outcome: OpOutcome) -> Message {
    Message::Doc {
        tier: WireTier::None,
        created: outcome.created,
        version: outcome.version,
        doc: outcome.doc.unwrap_or_default(),
    }
}

fn precondition(pre: WirePre) -> Precondition {
    match pre {
        WirePre::None => Precondition::default(),
        WirePre::Version(version) => Precondition::version(Some(version)),
        WirePre::Exists => Precondition {
            if_exists: true,
            ..Default::default()
        },
        WirePre::Absent => Precondition {
            if_absent: true,
            ..Default::default()
        },
    }
}

fn wire_tier(tier: Tier) -> WireTier {
    match tier {
        Tier::L1 => WireTier::L1,
        Tier::L2 => WireTier::L2,
        Tier::Db => WireTier::Db,
    }
}
