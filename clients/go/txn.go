package dmw

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
)

// TxnOp is one op of a transaction, built with PutOp, PatchOp, DeleteOp,
// IncrOp or CheckOp and refined with its methods. It marshals to the JSON
// op of the HTTP `_txn` body. Txn also accepts any other JSON-encodable
// value (or a json.RawMessage) as an op.
type TxnOp struct {
	op         string
	collection string
	id         string
	value      interface{}
	ownerKind  uint8 // 0 keep (omitted), 1 set, 2 clear (null)
	owner      string
	ifVersion  *uint64
	createOnly bool
	path       string
	by         int64
	min, max   *int64
	version    uint64
}

// PutOp creates or replaces a document: {"op":"put","value":…}.
func PutOp(collection, id string, value interface{}) TxnOp {
	return TxnOp{op: "put", collection: collection, id: id, value: value}
}

// PatchOp merge-patches a document: {"op":"patch","patch":…}.
func PatchOp(collection, id string, patch interface{}) TxnOp {
	return TxnOp{op: "patch", collection: collection, id: id, value: patch}
}

// DeleteOp deletes a document: {"op":"delete"}.
func DeleteOp(collection, id string) TxnOp {
	return TxnOp{op: "delete", collection: collection, id: id}
}

// IncrOp adds by to the integer at path: {"op":"incr","path":…,"by":…}.
func IncrOp(collection, id, path string, by int64) TxnOp {
	return TxnOp{op: "incr", collection: collection, id: id, path: path, by: by}
}

// CheckOp asserts the document's version (0: the document does not
// exist): {"op":"check","version":n}.
func CheckOp(collection, id string, version uint64) TxnOp {
	return TxnOp{op: "check", collection: collection, id: id, version: version}
}

// IfVersion adds "if_version" (put, patch, delete, incr).
func (o TxnOp) IfVersion(v uint64) TxnOp { o.ifVersion = &v; return o }

// CreateOnly adds "create_only": true (put).
func (o TxnOp) CreateOnly() TxnOp { o.createOnly = true; return o }

// SetOwner adds "owner": owner (put).
func (o TxnOp) SetOwner(owner string) TxnOp { o.ownerKind, o.owner = 1, owner; return o }

// ClearOwner adds "owner": null (put).
func (o TxnOp) ClearOwner() TxnOp { o.ownerKind, o.owner = 2, ""; return o }

// AtLeast adds "min" (incr).
func (o TxnOp) AtLeast(min int64) TxnOp { o.min = &min; return o }

// AtMost adds "max" (incr).
func (o TxnOp) AtMost(max int64) TxnOp { o.max = &max; return o }

// MarshalJSON writes the op object.
func (o TxnOp) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	str := func(s string) error {
		j, err := encodeJSON("string", s)
		b.Write(j)
		return err
	}
	b.WriteString(`{"op":`)
	str(o.op)
	b.WriteString(`,"collection":`)
	str(o.collection)
	b.WriteString(`,"id":`)
	str(o.id)
	switch o.op {
	case "put", "patch":
		if o.op == "put" {
			b.WriteString(`,"value":`)
		} else {
			b.WriteString(`,"patch":`)
		}
		j, err := encodeJSON(o.op, o.value)
		if err != nil {
			return nil, err
		}
		b.Write(j)
		switch o.ownerKind {
		case 1:
			b.WriteString(`,"owner":`)
			str(o.owner)
		case 2:
			b.WriteString(`,"owner":null`)
		}
		if o.createOnly {
			b.WriteString(`,"create_only":true`)
		}
	case "incr":
		b.WriteString(`,"path":`)
		str(o.path)
		b.WriteString(`,"by":`)
		b.WriteString(strconv.FormatInt(o.by, 10))
		if o.min != nil {
			b.WriteString(`,"min":` + strconv.FormatInt(*o.min, 10))
		}
		if o.max != nil {
			b.WriteString(`,"max":` + strconv.FormatInt(*o.max, 10))
		}
	case "check":
		b.WriteString(`,"version":` + strconv.FormatUint(o.version, 10))
	}
	if o.ifVersion != nil {
		b.WriteString(`,"if_version":` + strconv.FormatUint(*o.ifVersion, 10))
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// TxnResult is the result of one op of a transaction.
type TxnResult struct {
	// Version of the document after the op (for a delete, the tombstone's;
	// for a check, the version checked).
	Version uint64
	// Doc is the document after the op, nil when the server sent null.
	Doc *Document
}

func encodeTxn(game string, ops []interface{}) ([]byte, error) {
	if err := checkStr8("game", game, true); err != nil {
		return nil, err
	}
	j := make([]byte, 0, 64*len(ops)+16)
	j = append(j, `{"ops":[`...)
	for i, op := range ops {
		if i > 0 {
			j = append(j, ',')
		}
		oj, err := encodeJSON("op", op)
		if err != nil {
			return nil, err
		}
		j = append(j, oj...)
	}
	j = append(j, "]}"...)
	e := newBody(len(game) + len(j))
	e.str8(game)
	e.json32(j)
	return e.b, nil
}

func decodeTxnResult(a answer) ([]TxnResult, error) {
	d := decoder{b: a.body}
	j := d.json32("results")
	if err := d.end(); err != nil {
		return nil, err
	}
	var r struct {
		Results []struct {
			Version uint64          `json:"version"`
			Doc     json.RawMessage `json:"doc"`
		} `json:"results"`
	}
	if err := json.Unmarshal(j, &r); err != nil {
		return nil, protoErrorf("TXN_RESULT is not the expected JSON: %v", err)
	}
	out := make([]TxnResult, len(r.Results))
	for i, res := range r.Results {
		out[i].Version = res.Version
		if len(res.Doc) > 0 && string(res.Doc) != "null" {
			doc, err := parseDocument(res.Doc)
			if err != nil {
				return nil, err
			}
			out[i].Doc = doc
		}
	}
	return out, nil
}

// Txn runs an all-or-nothing transaction of up to 100 ops in one game. Each
// op is a TxnOp, a json.RawMessage holding the op object, or any value
// that marshals to one. Ops apply in order; when one fails nothing is
// written and the error is an *Error whose OpIndex is the failing op's
// index.
func (c *Client) Txn(ctx context.Context, game string, ops ...interface{}) ([]TxnResult, error) {
	return c.TxnAsync(ctx, game, ops...).Wait()
}

// TxnAsync queues a TXN and returns at once; see Txn.
func (c *Client) TxnAsync(ctx context.Context, game string, ops ...interface{}) *Future[[]TxnResult] {
	body, err := encodeTxn(game, ops)
	return startFuture(c, ctx, opTxn, body, err, decodeTxnResult)
}
