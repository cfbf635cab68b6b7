use serde_json::json;

use super::*;

fn live(version: u64, value: Value) -> StoredDoc {
    StoredDoc {
        version,
        owner: Some("o".into()),
        updated_at: "t0".into(),
        value: Some(value.to_string()),
    }
}

fn tombstone(version: u64) -> StoredDoc {
    StoredDoc {
        version,
        owner: None,
        updated_at: "t0".into(),
        value: None,
    }
}

fn put(value: Value) -> WriteOp {
    let Value::Object(value) = value else {
        panic!("object")
    };
    WriteOp::Put { value, owner: None }
}

const RULES: Rules = Rules {
    max_bytes: 1024,
    float_counters: false,
};

fn run(op: &WriteOp, pre: Precondition, current: &StoredDoc) -> Result<Applied, ServiceError> {
    apply(op, &pre, current, RULES, "t1")
}

#[test]
fn put_creates_after_tombstone_with_the_next_version() {
    let applied = run(
        &put(json!({"a": 1})),
        Precondition::default(),
        &tombstone(7),
    )
    .unwrap();
    assert!(applied.created);
    let row = applied.row.unwrap();
    assert_eq!((row.version, row.value.as_deref()), (8, Some(r#"{"a":1}"#)));
    let applied = run(
        &put(json!({})),
        Precondition::default(),
        &StoredDoc::absent(),
    )
    .unwrap();
    assert_eq!(applied.row.unwrap().version, 1);
}

#[test]
fn put_keeps_or_clears_the_owner() {
    let current = live(1, json!({}));
    let kept = run(&put(json!({})), Precondition::default(), &current).unwrap();
    assert_eq!(kept.row.unwrap().owner.as_deref(), Some("o"));
    let cleared = WriteOp::Put {
        value: Map::new(),
        owner: Some(None),
    };
    assert_eq!(
        run(&cleared, Precondition::default(), &current)
            .unwrap()
            .row
            .unwrap()
            .owner,
        None
    );
}

#[test]
fn preconditions() {
    let current = live(3, json!({}));
    let code =
        |pre: Precondition, doc: &StoredDoc| run(&put(json!({})), pre, doc).err().map(|e| e.code);
    assert_eq!(code(Precondition::version(Some(3)), &current), None);
    assert_eq!(
        code(Precondition::version(Some(2)), &current),
        Some(ErrorCode::VersionConflict)
    );
    assert_eq!(
        code(Precondition::version(Some(0)), &tombstone(4)),
        None,
        "0 matches a deleted document"
    );
    assert_eq!(
        code(Precondition::version(Some(4)), &tombstone(4)),
        Some(ErrorCode::VersionConflict)
    );
    let absent = Precondition {
        if_absent: true,
        ..Default::default()
    };
    assert_eq!(code(absent, &current), Some(ErrorCode::AlreadyExists));
    assert_eq!(code(absent, &tombstone(4)), None);
    let exists = Precondition {
        if_exists: true,
        ..Default::default()
    };
    assert_eq!(
        code(exists, &tombstone(4)),
        Some(ErrorCode::VersionConflict)
    );
}

#[test]
fn delete_and_patch_need_a_live_document() {
    for op in [WriteOp::Delete, WriteOp::Patch { patch: json!({}) }] {
        assert_eq!(
            run(&op, Precondition::default(), &tombstone(2))
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
    }
    let deleted = run(
        &WriteOp::Delete,
        Precondition::default(),
        &live(2, json!({})),
    )
    .unwrap()
    .row
    .unwrap();
    assert_eq!(
        (deleted.version, deleted.value, deleted.owner),
        (3, None, None)
    );
}

#[test]
fn check_writes_nothing() {
    let applied = run(
        &WriteOp::Check { version: 2 },
        Precondition::default(),
        &live(2, json!({})),
    )
    .unwrap();
    assert_eq!(applied.row, None);
    let err = run(
        &WriteOp::Check { version: 1 },
        Precondition::default(),
        &live(2, json!({})),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::VersionConflict);
    assert!(
        run(
            &WriteOp::Check { version: 0 },
            Precondition::default(),
            &tombstone(5)
        )
        .is_ok()
    );
}

#[test]
fn merge_patch_follows_rfc_7396() {
    // Examples from RFC 7396, appendix A.
    let cases = [
        (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
        (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
        (json!({"a":"b"}), json!({"a":null}), json!({})),
        (
            json!({"a":"b","b":"c"}),
            json!({"a":null}),
            json!({"b":"c"}),
        ),
        (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
        (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
        (
            json!({"a":{"b":"c"}}),
            json!({"a":{"b":"d","c":null}}),
            json!({"a":{"b":"d"}}),
        ),
        (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
        (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
        (json!({"a":"b"}), json!(["c"]), json!(["c"])),
        (json!({"a":"foo"}), json!(null), json!(null)),
        (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
        (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
        (
            json!({}),
            json!({"a":{"bb":{"ccc":null}}}),
            json!({"a":{"bb":{}}}),
        ),
    ];
    for (mut target, patch, expected) in cases {
        merge_patch(&mut target, &patch);
        assert_eq!(target, expected, "patch {patch}");
    }
}

#[test]
fn patch_keeps_member_order() {
    let row = run(
        &WriteOp::Patch {
            patch: json!({"a": 9}),
        },
        Precondition::default(),
        &live(1, json!({"z": 1, "a": 2})),
    )
    .unwrap()
    .row
    .unwrap();
    assert_eq!(row.value.as_deref(), Some(r#"{"z":1,"a":9}"#));
}

fn incr(path: &str, by: Value, min: Option<Value>, max: Option<Value>) -> Incr {
    serde_json::from_value(json!({"path": path, "by": by, "min": min, "max": max})).unwrap()
}

fn add(v: &mut Value, path: &str, by: Value) -> Result<(), ServiceError> {
    increment(v, &incr(path, by, None, None), false)
}

fn code(result: Result<(), ServiceError>) -> ErrorCode {
    result.unwrap_err().code
}

#[test]
fn increments() {
    let mut v = json!({"gold": 10, "s": "x", "nested": {"hp": 1}, "a~b": 1, "c/d": 2});
    increment(
        &mut v,
        &incr("/gold", json!(-10), Some(json!(0)), None),
        false,
    )
    .unwrap();
    assert_eq!(v["gold"], 0);
    let below = incr("/gold", json!(-1), Some(json!(0)), None);
    assert_eq!(
        code(increment(&mut v, &below, false)),
        ErrorCode::BoundViolation
    );
    let above = incr("/gold", json!(5), None, Some(json!(4)));
    assert_eq!(
        code(increment(&mut v, &above, false)),
        ErrorCode::BoundViolation
    );
    increment(
        &mut v,
        &incr("/gold", json!(4), None, Some(json!(4))),
        false,
    )
    .unwrap();
    assert_eq!(v["gold"], 4, "a bound is inclusive");
    assert_eq!(code(add(&mut v, "/s", json!(1))), ErrorCode::NotANumber);
    add(&mut v, "/nested/mp", json!(3)).unwrap();
    assert_eq!(v["nested"]["mp"], 3);
    assert_eq!(
        code(add(&mut v, "/none/x", json!(1))),
        ErrorCode::NotANumber
    );
    add(&mut v, "/a~0b", json!(1)).unwrap();
    add(&mut v, "/c~1d", json!(1)).unwrap();
    assert_eq!((v["a~b"].clone(), v["c/d"].clone()), (json!(2), json!(3)));
    add(&mut v, "/new~1member", json!(1)).unwrap();
    assert_eq!(v["new/member"], 1);
    assert_eq!(code(add(&mut v, "", json!(1))), ErrorCode::BadRequest);
    let mut big = json!({"n": i64::MAX, "m": i64::MIN});
    assert_eq!(
        code(add(&mut big, "/n", json!(1))),
        ErrorCode::BoundViolation
    );
    assert_eq!(
        code(add(&mut big, "/m", json!(-1))),
        ErrorCode::BoundViolation
    );
    assert_eq!(big["n"], i64::MAX, "a refused increment changes nothing");
}

/// Integer counters are exact or refused: nothing is ever silently rounded.
#[test]
fn integer_counters_refuse_what_they_cannot_add_exactly() {
    let parse = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
    let mut v = parse(
        r#"{"f": 0.5, "e": 1e16, "huge": 123456789012345678901234567890, "u": 18446744073709551615, "n": 10}"#,
    );
    for target in ["/f", "/e", "/huge", "/u"] {
        assert_eq!(
            code(add(&mut v, target, json!(1))),
            ErrorCode::NotANumber,
            "{target}"
        );
    }
    for by in [
        parse("0.1"),
        parse("1e2"),
        parse("1.0"),
        parse("9223372036854775808"),
    ] {
        assert_eq!(
            code(add(&mut v, "/n", by.clone())),
            ErrorCode::BadRequest,
            "by {by}"
        );
    }
    let fractional_bound = incr("/n", json!(1), Some(parse("0.5")), None);
    assert_eq!(
        code(increment(&mut v, &fractional_bound, false)),
        ErrorCode::BadRequest
    );
    assert_eq!(
        v,
        parse(
            r#"{"f": 0.5, "e": 1e16, "huge": 123456789012345678901234567890, "u": 18446744073709551615, "n": 10}"#
        ),
        "refused increments change nothing, and every number keeps its text"
    );
    add(&mut v, "/n", json!(9_223_372_036_854_775_797_i64)).unwrap();
    assert_eq!(v["n"], i64::MAX);
}

#[test]
fn float_counters_add_fractions_and_keep_integers_exact() {
    let mut v = json!({"f": 10, "big": 9_007_199_254_740_993_i64});
    increment(&mut v, &incr("/f", json!(0.1), None, None), true).unwrap();
    increment(&mut v, &incr("/f", json!(0.2), None, None), true).unwrap();
    assert_eq!(v["f"].as_f64(), Some(10.299999999999999));
    increment(&mut v, &incr("/big", json!(2), None, None), true).unwrap();
    assert_eq!(
        v["big"], 9_007_199_254_740_995_i64,
        "integers stay exact beyond 2^53"
    );
}

#[test]
fn the_document_size_limit_applies_to_results() {
    let err = apply(
        &put(json!({"s": "x".repeat(100)})),
        &Precondition::default(),
        &StoredDoc::absent(),
        Rules {
            max_bytes: 50,
            ..RULES
        },
        "t",
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::PayloadTooLarge);
}
