//! Request bodies shared by every ingress (JSON forms of put and transactions) and their
//! conversion into validated [`KeyedOp`]s. JSON parse failures map to stable codes here, once.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use super::ops::{Incr, Precondition, WriteOp};
use crate::error::{ErrorCode, ServiceError};
use crate::model::check_id;
use crate::store::DocKey;

/// A write operation on a named document with its preconditions.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedOp {
    pub key: DocKey,
    pub op: WriteOp,
    pub pre: Precondition,
}

/// Parses a JSON request body: syntax errors are `invalid_json`, shape errors `bad_request`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => ErrorCode::BadRequest,
            _ => ErrorCode::InvalidJson,
        };
        ServiceError::new(code, format!("request body: {e}"))
    })
}

/// Distinguishes a missing member (`None`) from an explicit `null` (`Some(None)`).
fn explicit_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Body of `PUT …/{id}`: `{"value": {…}, "owner": "…"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    pub value: Value,
    /// Missing: keep the current owner; `null`: clear it.
    #[serde(default, deserialize_with = "explicit_null")]
    pub owner: Option<Option<String>>,
}

impl PutBody {
    pub fn into_op(self) -> Result<WriteOp, ServiceError> {
        put_op(self.value, self.owner)
    }
}

/// A put of `value` (which must be an object) with an optional owner change.
pub fn put_op(value: Value, owner: Option<Option<String>>) -> Result<WriteOp, ServiceError> {
    let Value::Object(value) = value else {
        return Err(ServiceError::bad_request("value must be a JSON object"));
    };
    if let Some(Some(owner)) = &owner {
        check_id(owner, "owner")?;
    }
    Ok(WriteOp::Put { value, owner })
}

/// Body of `POST …/_batch_get`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGetBody {
    pub ids: Vec<String>,
}

/// Body of `POST /api/v1/{game}/_txn`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    pub ops: Vec<TxnOpRequest>,
}

/// One operation of a transaction, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnOpRequest {
    Put {
        collection: String,
        id: String,
        value: Value,
        #[serde(default, deserialize_with = "explicit_null")]
        owner: Option<Option<String>>,
        #[serde(default)]
        if_version: Option<u64>,
        /// Fail with `already_exists` if a live document exists.
        #[serde(default)]
        create_only: bool,
    },
    Patch {
        collection: String,
        id: String,
        patch: Value,
        #[serde(default)]
        if_version: Option<u64>,
    },
    Delete {
        collection: String,
        id: String,
        #[serde(default)]
        if_version: Option<u64>,
    },
    Incr {
        collection: String,
        id: String,
        path: String,
        by: Number,
        #[serde(default)]
        min: Option<Number>,
        #[serde(default)]
        max: Option<Number>,
        #[serde(default)]
        if_version: Option<u64>,
    },
    Check {
        collection: String,
        id: String,
        /// The version the document must have; 0 asserts that it does not exist.
        version: u64,
    },
}

impl TxnRequest {
    pub fn into_ops(self) -> Result<Vec<KeyedOp>, ServiceError> {
        self.ops
            .into_iter()
            .enumerate()
            .map(|(index, op)| op.into_keyed().map_err(|e| e.at_op(index)))
            .collect()
    }
}

impl TxnOpRequest {
    fn into_keyed(self) -> Result<KeyedOp, ServiceError> {
        let key = |collection: String, id: String| DocKey { collection, id };
        let (key, op, pre) = match self {
            TxnOpRequest::Put {
                collection,
                id,
                value,
                owner,
                if_version,
                create_only,
            } => {
                let pre = Precondition {
                    if_version,
                    if_absent: create_only,
                    if_exists: false,
                };
                (key(collection, id), put_op(value, owner)?, pre)
            }
            TxnOpRequest::Patch {
                collection,
                id,
                patch,
                if_version,
            } => (
                key(collection, id),
                WriteOp::Patch { patch },
                Precondition::version(if_version),
            ),
            TxnOpRequest::Delete {
                collection,
                id,
                if_version,
            } => (
                key(collection, id),
                WriteOp::Delete,
                Precondition::version(if_version),
            ),
            TxnOpRequest::Incr {
                collection,
                id,
                path,
                by,
                min,
                max,
                if_version,
            } => (
                key(collection, id),
                WriteOp::Incr(Incr { path, by, min, max }),
                Precondition::version(if_version),
            ),
            TxnOpRequest::Check {
                collection,
                id,
                version,
            } => (
                key(collection, id),
                WriteOp::Check { version },
                Precondition::default(),
            ),
        };
        Ok(KeyedOp { key, op, pre })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ops_parse_and_reject_unknown_fields() {
        let req: TxnRequest = parse_json(
            br#"{"ops":[{"op":"put","collection":"players","id":"1","value":{"a":1},"owner":null},
                        {"op":"incr","collection":"players","id":"1","path":"/a","by":2,"min":0},
                        {"op":"check","collection":"items","id":"9","version":0}]}"#,
        )
        .unwrap();
        let ops = req.into_ops().unwrap();
        assert_eq!(ops.len(), 3);
        assert!(matches!(
            &ops[0].op,
            WriteOp::Put {
                owner: Some(None),
                ..
            }
        ));
        let err = parse_json::<TxnRequest>(
            br#"{"ops":[{"op":"delete","collection":"p","id":"1","extra":1}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let err = parse_json::<TxnRequest>(br#"{"ops":[{"op":"explode"}]}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let err = parse_json::<TxnRequest>(b"{\"ops\": [").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn put_requires_an_object_and_a_valid_owner() {
        let body: PutBody = parse_json(br#"{"value":[1]}"#).unwrap();
        assert_eq!(body.into_op().unwrap_err().code, ErrorCode::BadRequest);
        let body: PutBody = parse_json(br#"{"value":{},"owner":"bad owner"}"#).unwrap();
        assert_eq!(body.into_op().unwrap_err().code, ErrorCode::InvalidId);
        let body: PutBody = parse_json(br#"{"value":{}}"#).unwrap();
        assert!(matches!(
            body.into_op().unwrap(),
            WriteOp::Put { owner: None, .. }
        ));
    }

    #[test]
    fn deep_nesting_is_invalid_json_not_a_crash() {
        let deep = format!("{{\"value\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse_json::<PutBody>(deep.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }
}
