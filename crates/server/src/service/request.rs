//! Request bodies shared by every ingress (JSON forms of put and transactions) and their
//! conversion into validated [`KeyedOp`]s. JSON parse failures map to stable codes here, once.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use super::ops::{Incr, Precondition, WriteOp};
use crate::error::{ErrorCode, ServiceError};
use crate::model::DocKey;
use crate::model::check_id;

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

/// A whole number ≥ 0: an integer literal up to `u64::MAX`, or one written with a fraction of
/// zero (`3.0`, as some JSON encoders write every number) up to 2^53, where floating point is
/// still exact. JSON Schema's `integer` admits both forms.
pub fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    let number = Number::deserialize(d)?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    match number.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= (1u64 << 53) as f64 => Ok(f as u64),
        _ => Err(D::Error::custom(format!(
            "{number} is not a whole number from 0 to 18446744073709551615"
        ))),
    }
}

/// [`whole`], or `null` / absent.
pub fn whole_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole")] u64);
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
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
///
/// Deserialized by hand rather than with `#[serde(tag = "op")]`: serde buffers an internally
/// tagged enum through its own number types, which would round `1e16` or a 30-digit integer
/// before it reaches the op (numbers are kept exactly as sent; docs/protocol.md).
#[derive(Debug)]
pub enum TxnOpRequest {
    Put(PutOp),
    Patch(PatchOp),
    Delete(DeleteOp),
    Incr(IncrOp),
    Check(CheckOp),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutOp {
    collection: String,
    id: String,
    value: Value,
    #[serde(default, deserialize_with = "explicit_null")]
    owner: Option<Option<String>>,
    #[serde(default, deserialize_with = "whole_or_null")]
    if_version: Option<u64>,
    /// Fail with `already_exists` if a live document exists.
    #[serde(default)]
    create_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchOp {
    collection: String,
    id: String,
    patch: Value,
    #[serde(default, deserialize_with = "whole_or_null")]
    if_version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteOp {
    collection: String,
    id: String,
    #[serde(default, deserialize_with = "whole_or_null")]
    if_version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrOp {
    collection: String,
    id: String,
    path: String,
    by: Number,
    #[serde(default)]
    min: Option<Number>,
    #[serde(default)]
    max: Option<Number>,
    #[serde(default, deserialize_with = "whole_or_null")]
    if_version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckOp {
    collection: String,
    id: String,
    /// The version the document must have; 0 asserts that it does not exist.
    #[serde(deserialize_with = "whole")]
    version: u64,
}

const OPS: &[&str] = &["put", "patch", "delete", "incr", "check"];

impl<'de> Deserialize<'de> for TxnOpRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut members = serde_json::Map::deserialize(d)?;
        let op = match members.remove("op") {
            Some(Value::String(op)) => op,
            Some(_) => return Err(D::Error::custom("op must be a string")),
            None => return Err(D::Error::missing_field("op")),
        };
        let rest = Value::Object(members);
        let parsed = match op.as_str() {
            "put" => serde_json::from_value(rest).map(TxnOpRequest::Put),
            "patch" => serde_json::from_value(rest).map(TxnOpRequest::Patch),
            "delete" => serde_json::from_value(rest).map(TxnOpRequest::Delete),
            "incr" => serde_json::from_value(rest).map(TxnOpRequest::Incr),
            "check" => serde_json::from_value(rest).map(TxnOpRequest::Check),
            other => return Err(D::Error::unknown_variant(other, OPS)),
        };
        parsed.map_err(|e| D::Error::custom(format!("op {op:?}: {e}")))
    }
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
            TxnOpRequest::Put(op) => {
                let pre = Precondition {
                    if_version: op.if_version,
                    if_absent: op.create_only,
                    if_exists: false,
                };
                (key(op.collection, op.id), put_op(op.value, op.owner)?, pre)
            }
            TxnOpRequest::Patch(op) => (
                key(op.collection, op.id),
                WriteOp::Patch { patch: op.patch },
                Precondition::version(op.if_version),
            ),
            TxnOpRequest::Delete(op) => (
                key(op.collection, op.id),
                WriteOp::Delete,
                Precondition::version(op.if_version),
            ),
            TxnOpRequest::Incr(op) => (
                key(op.collection, op.id),
                WriteOp::Incr(Incr {
                    path: op.path,
                    by: op.by,
                    min: op.min,
                    max: op.max,
                }),
                Precondition::version(op.if_version),
            ),
            TxnOpRequest::Check(op) => (
                key(op.collection, op.id),
                WriteOp::Check {
                    version: op.version,
                },
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
        // Numbers inside tagged ops keep working with exact (arbitrary-precision) numbers.
        let exact: TxnRequest = parse_json(
            br#"{"ops":[{"op":"delete","collection":"p","id":"1","if_version":18446744073709551615},
                        {"op":"incr","collection":"p","id":"1","path":"/a","by":1e16}]}"#,
        )
        .unwrap();
        let ops = exact.into_ops().unwrap();
        assert_eq!(ops[0].pre.if_version, Some(u64::MAX));
        let whole = |json: &str| -> Result<Option<u64>, String> {
            let body = format!(
                r#"{{"ops":[{{"op":"delete","collection":"p","id":"1","if_version":{json}}}]}}"#
            );
            parse_json::<TxnRequest>(body.as_bytes())
                .map(|t| t.into_ops().unwrap()[0].pre.if_version)
                .map_err(|e| e.message)
        };
        assert_eq!(whole("3.0"), Ok(Some(3)));
        assert_eq!(whole("9007199254740992.0"), Ok(Some(1 << 53)));
        assert_eq!(whole("null"), Ok(None));
        for bad in ["3.5", "-1", "-1.0", "1e300", "9007199254740994.0", "\"3\""] {
            assert!(whole(bad).is_err(), "{bad} is refused");
        }
        // (serde_json writes an exponent as e+16: the same number, the digits untouched)
        assert!(matches!(&ops[1].op, WriteOp::Incr(incr) if incr.by.to_string() == "1e+16"));
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
