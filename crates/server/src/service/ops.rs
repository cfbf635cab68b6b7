//! Write operations and their pure semantics: given the current row of a key, what the new
//! row is (or which error). No I/O here, so the rules are the same for every store and every
//! protocol, and they are unit-tested directly.

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::error::{ErrorCode, ServiceError};
use crate::model::StoredDoc;

/// Conditions a write asserts about the current document (HTTP `If-Match` / `If-None-Match`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Precondition {
    /// The live document must have exactly this version (0: there must be no live document).
    pub if_version: Option<u64>,
    /// There must be a live document (`If-Match: *`).
    pub if_exists: bool,
    /// There must be no live document (`If-None-Match: *`, create only).
    pub if_absent: bool,
}

impl Precondition {
    pub fn version(version: Option<u64>) -> Self {
        Precondition {
            if_version: version,
            ..Default::default()
        }
    }

    fn check(&self, current: &StoredDoc) -> Result<(), ServiceError> {
        let live = current.is_live();
        if self.if_absent && live {
            return Err(ServiceError::new(
                ErrorCode::AlreadyExists,
                "the document already exists",
            ));
        }
        if self.if_exists && !live {
            return Err(ServiceError::new(
                ErrorCode::VersionConflict,
                "the document does not exist",
            ));
        }
        if let Some(expected) = self.if_version {
            let actual = if live { current.version } else { 0 };
            if actual != expected {
                return Err(ServiceError::new(
                    ErrorCode::VersionConflict,
                    format!("expected version {expected}, current version is {actual}"),
                ));
            }
        }
        Ok(())
    }
}

/// An atomic numeric update at a JSON Pointer inside the value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incr {
    /// JSON Pointer (RFC 6901) to the number, e.g. `/gold` or `/stats/hp`.
    pub path: String,
    pub by: Number,
    #[serde(default)]
    pub min: Option<Number>,
    #[serde(default)]
    pub max: Option<Number>,
}

/// One write operation on one document.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Create or replace. `owner: None` keeps the current owner; `Some(None)` clears it.
    Put {
        value: Map<String, Value>,
        owner: Option<Option<String>>,
    },
    /// JSON Merge Patch (RFC 7396) of the value.
    Patch {
        patch: Value,
    },
    Delete,
    Incr(Incr),
    /// Asserts the version only (0: the document must not exist); writes nothing.
    Check {
        version: u64,
    },
}

/// The collection's rules a write is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Largest encoded value.
    pub max_bytes: usize,
    /// `_incr` may add fractions (IEEE double, inexact); off: exact 64-bit integers only.
    pub float_counters: bool,
}

impl WriteOp {
    /// True for the operations whose outcome carries the new document (put, patch, incr).
    pub fn returns_document(&self) -> bool {
        matches!(
            self,
            WriteOp::Put { .. } | WriteOp::Patch { .. } | WriteOp::Incr(_)
        )
    }
}

/// What an applied operation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The new row, or `None` when the operation wrote nothing (`check`).
    pub row: Option<StoredDoc>,
    /// True when a live document came into being (HTTP 201).
    pub created: bool,
}

/// Applies `op` under `pre` to `current`, producing the new row under the collection's
/// `rules`; `now` is the commit timestamp.
pub fn apply(
    op: &WriteOp,
    pre: &Precondition,
    current: &StoredDoc,
    rules: Rules,
    now: &str,
) -> Result<Applied, ServiceError> {
    let max_bytes = rules.max_bytes;
    let live_value = || -> Result<Value, ServiceError> {
        let text = current
            .value
            .as_deref()
            .ok_or_else(|| ServiceError::not_found("no such document"))?;
        serde_json::from_str(text).map_err(ServiceError::internal)
    };
    if let WriteOp::Check { version } = op {
        pre.check(current)?;
        Precondition::version(Some(*version)).check(current)?;
        return Ok(Applied {
            row: None,
            created: false,
        });
    }
    if !matches!(op, WriteOp::Put { .. }) && !current.is_live() {
        return Err(ServiceError::not_found("no such document"));
    }
    pre.check(current)?;
    let (value, owner) = match op {
        WriteOp::Put { value, owner } => {
            let owner = match owner {
                Some(explicit) => explicit.clone(),
                None => current.owner.clone(),
            };
            (Some(Value::Object(value.clone())), owner)
        }
        WriteOp::Patch { patch } => {
            let mut value = live_value()?;
            merge_patch(&mut value, patch);
            if !value.is_object() {
                return Err(ServiceError::bad_request(
                    "the patched value must stay a JSON object",
                ));
            }
            (Some(value), current.owner.clone())
        }
        WriteOp::Incr(incr) => {
            let mut value = live_value()?;
            increment(&mut value, incr, rules.float_counters)?;
            (Some(value), current.owner.clone())
        }
        WriteOp::Delete => (None, None),
        WriteOp::Check { .. } => unreachable!("handled above"),
    };
    let value = match value {
        Some(value) => {
            let text = serde_json::to_string(&value).map_err(ServiceError::internal)?;
            if text.len() > max_bytes {
                return Err(ServiceError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the document value is {} bytes; this collection allows {max_bytes}",
                        text.len()
                    ),
                ));
            }
            Some(text)
        }
        None => None,
    };
    Ok(Applied {
        created: value.is_some() && !current.is_live(),
        row: Some(StoredDoc {
            version: current.version + 1,
            owner,
            updated_at: now.to_string(),
            value,
        }),
    })
}

/// RFC 7396 JSON Merge Patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, patch_value) in patch {
            if patch_value.is_null() {
                target.shift_remove(key);
            } else {
                merge_patch(
                    target.entry(key.clone()).or_insert(Value::Null),
                    patch_value,
                );
            }
        }
    }
}

/// Adds `incr.by` to the number at `incr.path`, creating a missing last member as 0, and
/// refuses a result outside `[min, max]` or beyond the signed 64-bit range. Without
/// `float_counters` every operand must be an integer (the result is exact); with it, anything
/// involving a fraction adds in f64.
pub fn increment(value: &mut Value, incr: &Incr, float_counters: bool) -> Result<(), ServiceError> {
    if !incr.path.starts_with('/') {
        return Err(ServiceError::bad_request(
            "path must be a JSON Pointer to a member, such as /gold",
        ));
    }
    if !float_counters {
        for (name, operand) in [
            ("by", Some(&incr.by)),
            ("min", incr.min.as_ref()),
            ("max", incr.max.as_ref()),
        ] {
            if let Some(number) = operand
                && number.as_i64().is_none()
            {
                return Err(ServiceError::bad_request(format!(
                    "{name} is {number}: this collection counts in integers of the signed 64-bit \
                     range (float_counters is off)"
                )));
            }
        }
    }
    if value.pointer(&incr.path).is_none() {
        let (parent, last) = incr.path.rsplit_once('/').unwrap_or(("", ""));
        let last = last.replace("~1", "/").replace("~0", "~");
        match value.pointer_mut(parent) {
            Some(Value::Object(parent)) => {
                parent.insert(last, Value::from(0));
            }
            _ => {
                return Err(ServiceError::new(
                    ErrorCode::NotANumber,
                    format!("{} does not name a member of an existing object", incr.path),
                ));
            }
        }
    }
    let slot = value
        .pointer_mut(&incr.path)
        .ok_or_else(|| ServiceError::internal("incr path vanished"))?;
    let Value::Number(current) = slot else {
        return Err(ServiceError::new(
            ErrorCode::NotANumber,
            format!("the value at {} is not a number", incr.path),
        ));
    };
    if !float_counters && current.as_i64().is_none() {
        return Err(ServiceError::new(
            ErrorCode::NotANumber,
            format!(
                "the value at {} is {current}, not an integer of the signed 64-bit range; this \
                 collection counts in integers (float_counters is off)",
                incr.path
            ),
        ));
    }
    let result = match (current.as_i64(), incr.by.as_i64()) {
        (Some(a), Some(b)) => Number::from(a.checked_add(b).ok_or_else(|| {
            ServiceError::new(
                ErrorCode::BoundViolation,
                "the result is outside the signed 64-bit range",
            )
        })?),
        _ => {
            let sum = current.as_f64().unwrap_or(f64::NAN) + incr.by.as_f64().unwrap_or(f64::NAN);
            Number::from_f64(sum).ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::BoundViolation,
                    "the result is not a finite number",
                )
            })?
        }
    };
    if let Some(min) = &incr.min
        && below(&result, min)
    {
        return Err(ServiceError::new(
            ErrorCode::BoundViolation,
            format!("the result {result} would be below the minimum {min}"),
        ));
    }
    if let Some(max) = &incr.max
        && below(max, &result)
    {
        return Err(ServiceError::new(
            ErrorCode::BoundViolation,
            format!("the result {result} would be above the maximum {max}"),
        ));
    }
    *slot = Value::Number(result);
    Ok(())
}

/// `a < b` for JSON numbers, exact for integers.
fn below(a: &Number, b: &Number) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a < b,
        _ => a.as_f64().unwrap_or(f64::NAN) < b.as_f64().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests;
