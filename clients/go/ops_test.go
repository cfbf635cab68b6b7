package dmw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of every operation against a real server (DATAMIDDLEWARE_BIN).

func raw(s string) json.RawMessage { return json.RawMessage(s) }

// decodeValue decodes a document value keeping numbers as json.Number.
func decodeValue(t *testing.T, d *Document) map[string]interface{} {
	t.Helper()
	var m map[string]interface{}
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decoding %s: %v", d.Value, err)
	}
	return m
}

func wantCode(t *testing.T, err error, code ErrorCode) *Error {
	t.Helper()
	if !errors.Is(err, code) {
		t.Fatalf("error = %v, want one matching %s", err, code)
	}
	var se *Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v is not an *Error", err)
	}
	if se.Code != code {
		t.Fatalf("code = %q, want %q", se.Code, code)
	}
	return se
}

func TestCRUD(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, cd := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	id := uid(t, "doc")

	before := time.Now().Add(-time.Minute)
	d, err := c.Put(ctx, "default", "players", id, raw(`{"name":"Aria","gold":100}`))
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != id || d.Version != 1 || !d.Created || d.Tier != TierNone || d.Owner != "" {
		t.Fatalf("put: %+v", d)
	}
	if string(d.Value) != `{"name":"Aria","gold":100}` {
		t.Fatalf("put value %s", d.Value)
	}
	if !strings.HasPrefix(string(d.Raw), `{"id":`) {
		t.Fatalf("raw document %s", d.Raw)
	}
	ts, err := d.UpdatedTime()
	if err != nil || ts.Before(before) || ts.After(time.Now().Add(time.Minute)) {
		t.Fatalf("updated_at %q: %v %v", d.UpdatedAt, ts, err)
	}

	g, err := c.Get(ctx, "default", "players", id)
	if err != nil {
		t.Fatal(err)
	}
	if g.Version != 1 || g.Created || string(g.Value) != `{"name":"Aria","gold":100}` || (g.Tier != TierL1 && g.Tier != TierDatabase) {
		t.Fatalf("get: %+v value %s", g, g.Value)
	}

	d, err = c.Put(ctx, "default", "players", id, map[string]interface{}{"name": "Aria", "gold": json.Number("150")})
	if err != nil {
		t.Fatal(err)
	}
	if d.Version != 2 || d.Created {
		t.Fatalf("replace: version %d created %v", d.Version, d.Created)
	}
	if m := decodeValue(t, d); m["gold"] != json.Number("150") || m["name"] != "Aria" {
		t.Fatalf("replace value %s", d.Value)
	}

	d, err = c.Patch(ctx, "default", "players", id, raw(`{"gold":null,"level":3}`))
	if err != nil {
		t.Fatal(err)
	}
	m := decodeValue(t, d)
	if d.Version != 3 || len(m) != 2 || m["level"] != json.Number("3") || m["name"] != "Aria" {
		t.Fatalf("patch: version %d value %s", d.Version, d.Value)
	}

	v, err := c.Delete(ctx, "default", "players", id)
	if err != nil {
		t.Fatal(err)
	}
	if v != 4 {
		t.Fatalf("delete: tombstone version %d, want 4", v)
	}
	_, err = c.Get(ctx, "default", "players", id)
	se := wantCode(t, err, ErrNotFound)
	if se.OpIndex != -1 || se.Local || !se.Known() {
		t.Fatalf("not_found error: %+v", se)
	}

	d, err = c.Put(ctx, "default", "players", id, raw(`{"again":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if d.Version != 5 || !d.Created {
		t.Fatalf("re-create: version %d created %v (versions are never reused)", d.Version, d.Created)
	}
	if n := cd.count(); n != 1 {
		t.Fatalf("%d dials, want 1", n)
	}
}

func TestOwner(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, cd := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	id := uid(t, "o")
	steps := []struct {
		opt  []PutOption
		want string
	}{
		{[]PutOption{SetOwner("alice")}, "alice"},
		{nil, "alice"},
		{[]PutOption{KeepOwner()}, "alice"},
		{[]PutOption{SetOwner("bob"), IfVersion(3)}, "bob"},
		{[]PutOption{ClearOwner()}, ""},
		{[]PutOption{SetOwner("carol@x.y:z")}, "carol@x.y:z"},
	}
	for i, st := range steps {
		d, err := c.Put(ctx, "default", "players", id, raw(`{"i":1}`), st.opt...)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if d.Owner != st.want || d.Version != uint64(i+1) {
			t.Fatalf("step %d: owner %q version %d, want %q %d", i, d.Owner, d.Version, st.want, i+1)
		}
	}
	d, err := c.Patch(ctx, "default", "players", id, raw(`{"j":2}`))
	if err != nil || d.Owner != "carol@x.y:z" {
		t.Fatalf("patch keeps the owner: %+v %v", d, err)
	}
	// An owner breaking the id rules is a request error; the connection stays.
	_, err = c.Put(ctx, "default", "players", id, raw(`{}`), SetOwner("not an id!"))
	if se := wantCode(t, err, ErrInvalidID); se.Local {
		t.Fatalf("want the server's invalid_id, got a local one: %v", se)
	}
	// An empty owner with SetOwner would be a protocol violation: refused locally.
	_, err = c.Put(ctx, "default", "players", id, raw(`{}`), SetOwner(""))
	if se := wantCode(t, err, ErrInvalidID); !se.Local {
		t.Fatalf("want a local refusal, got %v", se)
	}
	if _, err := c.Get(ctx, "default", "players", id); err != nil {
		t.Fatal(err)
	}
	if n := cd.count(); n != 1 {
		t.Fatalf("%d dials, want 1 (the connection must survive request errors)", n)
	}
}

func TestPreconditions(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	id := uid(t, "p")
	put := func(pre Precondition) (*Document, error) {
		return c.Put(ctx, "default", "players", id, raw(`{"x":1}`), pre)
	}
	mustVersion := func(d *Document, err error, v uint64) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if d.Version != v {
			t.Fatalf("version %d, want %d", d.Version, v)
		}
	}

	_, err := put(IfExists())
	wantCode(t, err, ErrVersionConflict) // If-Match: * on a missing document
	_, err = put(IfVersion(5))
	wantCode(t, err, ErrVersionConflict)
	d, err := put(IfAbsent())
	mustVersion(d, err, 1)
	_, err = put(IfAbsent())
	wantCode(t, err, ErrAlreadyExists)
	_, err = put(IfVersion(0))
	wantCode(t, err, ErrVersionConflict)
	d, err = put(IfVersion(1))
	mustVersion(d, err, 2)
	_, err = put(IfVersion(1))
	wantCode(t, err, ErrVersionConflict)
	d, err = put(IfExists())
	mustVersion(d, err, 3)
	d, err = put(NoPrecondition())
	mustVersion(d, err, 4)

	_, err = c.Patch(ctx, "default", "players", id, raw(`{"y":2}`), IfVersion(3))
	wantCode(t, err, ErrVersionConflict)
	d, err = c.Patch(ctx, "default", "players", id, raw(`{"y":2}`), IfVersion(4))
	mustVersion(d, err, 5)
	_, err = c.Incr(ctx, "default", "players", id, "/x", 1, IfVersion(4))
	wantCode(t, err, ErrVersionConflict)
	d, err = c.Incr(ctx, "default", "players", id, "/x", 1, IfVersion(5), IfExists(), IfVersion(5))
	mustVersion(d, err, 6)
	_, err = c.Delete(ctx, "default", "players", id, IfVersion(5))
	wantCode(t, err, ErrVersionConflict)
	if g, err := c.Get(ctx, "default", "players", id); err != nil || g.Version != 6 {
		t.Fatalf("a failed precondition wrote something: %+v %v", g, err)
	}
	v, err := c.Delete(ctx, "default", "players", id, IfVersion(6))
	if err != nil || v != 7 {
		t.Fatalf("delete: %d %v", v, err)
	}
	// No live document: IfVersion(0) and IfAbsent create, IfExists fails.
	_, err = put(IfExists())
	wantCode(t, err, ErrVersionConflict)
	d, err = put(IfVersion(0))
	mustVersion(d, err, 8)
}

func TestIncr(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	id := uid(t, "i")
	if _, err := c.Put(ctx, "default", "counters", id, raw(`{"gold":100}`)); err != nil {
		t.Fatal(err)
	}
	d, err := c.Incr(ctx, "default", "counters", id, "/gold", -30, AtLeast(0))
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Value) != `{"gold":70}` || d.Version != 2 || d.Tier != TierNone {
		t.Fatalf("incr: %s version %d", d.Value, d.Version)
	}
	_, err = c.Incr(ctx, "default", "counters", id, "/gold", -71, AtLeast(0))
	wantCode(t, err, ErrBoundViolation)
	_, err = c.Incr(ctx, "default", "counters", id, "/gold", 101, AtMost(170))
	wantCode(t, err, ErrBoundViolation)
	d, err = c.Incr(ctx, "default", "counters", id, "/gold", 100, AtMost(170), AtLeast(0))
	if err != nil || string(d.Value) != `{"gold":170}` || d.Version != 3 {
		t.Fatalf("incr up to the inclusive bound: %v %v", d, err)
	}
	d, err = c.Incr(ctx, "default", "counters", id, "/silver", 5)
	if err != nil || string(d.Value) != `{"gold":170,"silver":5}` {
		t.Fatalf("missing member starts at 0: %v %v", d, err)
	}

	// Exact 64-bit arithmetic.
	cases := []struct {
		value string
		by    int64
		want  string // "" : error wantErr
		err   ErrorCode
	}{
		{`{"n":9007199254740993}`, 1, `{"n":9007199254740994}`, ""},
		{`{"n":9223372036854775806}`, 1, `{"n":9223372036854775807}`, ""},
		{`{"n":9223372036854775807}`, 1, "", ErrBoundViolation},
		{`{"n":-9223372036854775808}`, -1, "", ErrBoundViolation},
		{`{"n":-9223372036854775807}`, -1, `{"n":-9223372036854775808}`, ""},
		{`{"n":1.5}`, 1, "", ErrNotANumber},
		{`{"n":1e16}`, 1, "", ErrNotANumber},
		{`{"n":2e64}`, 1, "", ErrNotANumber},
		{`{"n":123456789012345678901234567890}`, 1, "", ErrNotANumber},
		{`{"n":"12"}`, 1, "", ErrNotANumber},
	}
	for i, tc := range cases {
		key := fmt.Sprintf("%s-%d", id, i)
		if _, err := c.Put(ctx, "default", "counters", key, raw(tc.value)); err != nil {
			t.Fatal(err)
		}
		d, err := c.Incr(ctx, "default", "counters", key, "/n", tc.by)
		if tc.err != "" {
			if !errors.Is(err, tc.err) {
				t.Errorf("incr %s by %d: %v, want %s", tc.value, tc.by, err, tc.err)
			}
			// The stored text is the value as written, with exponents in the spec's
			// normalized form (1e16 comes back as 1e+16).
			stored := strings.NewReplacer("e16", "e+16", "e64", "e+64").Replace(tc.value)
			if g, gerr := c.Get(ctx, "default", "counters", key); gerr != nil || string(g.Value) != stored {
				t.Errorf("a refused incr changed %s: %v %v", tc.value, g, gerr)
			}
			continue
		}
		if err != nil || string(d.Value) != tc.want {
			t.Errorf("incr %s by %d: %v %v, want %s", tc.value, tc.by, d, err, tc.want)
		}
	}

	// A fractional `by` cannot be written with Incr (int64): send it raw in a
	// transaction.
	_, err = c.Txn(ctx, "default", raw(fmt.Sprintf(`{"op":"incr","collection":"counters","id":%q,"path":"/gold","by":1.5}`, id)))
	if se := wantCode(t, err, ErrBadRequest); se.OpIndex != 0 {
		t.Fatalf("op_index %d, want 0", se.OpIndex)
	}
	_, err = c.Txn(ctx, "default", raw(fmt.Sprintf(`{"op":"incr","collection":"counters","id":%q,"path":"/gold","by":1,"min":0.5}`, id)))
	wantCode(t, err, ErrBadRequest)
	if g, err := c.Get(ctx, "default", "counters", id); err != nil || string(g.Value) != `{"gold":170,"silver":5}` {
		t.Fatalf("after refused incrs: %v %v", g, err)
	}
}

func TestExactNumbers(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	id := uid(t, "n")
	const sent = `{"big":123456789012345678901234567890,"price":1.50,"e":1e16,"tiny":-0.000000000000000000001,"s":"é<&>"}`
	// protocol.md: every digit is kept; an exponent is written in the form 1e+16.
	const value = `{"big":123456789012345678901234567890,"price":1.50,"e":1e+16,"tiny":-0.000000000000000000001,"s":"é<&>"}`
	d, err := c.Put(ctx, "default", "players", id, raw(sent))
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Value) != value {
		t.Errorf("put answered %s, want %s", d.Value, value)
	}
	g, err := c.Get(ctx, "default", "players", id)
	if err != nil {
		t.Fatal(err)
	}
	if string(g.Value) != value {
		t.Errorf("get answered %s, want %s", g.Value, value)
	}
	m := decodeValue(t, g)
	if m["big"] != json.Number("123456789012345678901234567890") || m["price"] != json.Number("1.50") {
		t.Errorf("decoded %v", m)
	}
	// Whitespace is dropped, member order and number text kept.
	d, err = c.Put(ctx, "default", "players", id+"-ws", raw("{ \"z\" : 1.50 ,\n \"a\" : [ 10000000000000000000001 ] }"))
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Value) != `{"z":1.50,"a":[10000000000000000000001]}` {
		t.Errorf("compact value %s", d.Value)
	}
	// Through a Go value with json.Number.
	d, err = c.Put(ctx, "default", "players", id+"-num", map[string]interface{}{"big": json.Number("123456789012345678901234567890")})
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Value) != `{"big":123456789012345678901234567890}` {
		t.Errorf("json.Number value %s", d.Value)
	}
	// In batch reads and transactions.
	p, err := c.BatchGet(ctx, "default", "players", []string{id})
	if err != nil || len(p.Docs) != 1 || p.Docs[0] == nil || string(p.Docs[0].Value) != value {
		t.Errorf("batch get: %v %v", p, err)
	}
	res, err := c.Txn(ctx, "default", PutOp("players", id+"-txn", raw(`{"p":1.50,"b":123456789012345678901234567890}`)))
	if err != nil || len(res) != 1 || res[0].Doc == nil || string(res[0].Doc.Value) != `{"p":1.50,"b":123456789012345678901234567890}` {
		t.Errorf("txn: %+v %v", res, err)
	}
}

func TestBatchGet(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	a, b := uid(t, "a"), uid(t, "b")
	for _, id := range []string{a, b} {
		if _, err := c.Put(ctx, "default", "players", id, raw(fmt.Sprintf(`{"id":%q}`, id))); err != nil {
			t.Fatal(err)
		}
	}
	p, err := c.BatchGet(ctx, "default", "players", []string{a, uid(t, "missing"), b, a})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Docs) != 4 || p.Docs[1] != nil || p.Docs[0] == nil || p.Docs[2] == nil || p.Docs[3] == nil {
		t.Fatalf("slots %+v", p.Docs)
	}
	if p.Docs[0].ID != a || p.Docs[2].ID != b || p.Docs[3].ID != a || string(p.Docs[2].Value) != fmt.Sprintf(`{"id":%q}`, b) {
		t.Fatalf("docs out of order: %s %s %s", p.Docs[0].ID, p.Docs[2].ID, p.Docs[3].ID)
	}
	if p.Tier != TierL1 && p.Tier != TierDatabase || p.Docs[0].Tier != p.Tier || p.NextCursor != "" {
		t.Fatalf("tier %v cursor %q", p.Tier, p.NextCursor)
	}
	ids := make([]string, 1001)
	for i := range ids {
		ids[i] = fmt.Sprintf("x%d", i)
	}
	_, err = c.BatchGet(ctx, "default", "players", ids)
	wantCode(t, err, ErrBadRequest)
	p, err = c.BatchGet(ctx, "default", "players", ids[:1000])
	if err != nil || len(p.Docs) != 1000 {
		t.Fatalf("1000 ids: %v", err)
	}
}

func TestList(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	prefix := uid(t, "")
	alice := "alice-" + fmt.Sprint(time.Now().UnixNano())
	var want, wantAlice []string
	for i := 0; i < 7; i++ {
		id := fmt.Sprintf("%s%02d", prefix, i)
		owner := SetOwner("bob")
		if i%2 == 0 {
			owner = SetOwner(alice)
			wantAlice = append(wantAlice, id)
		}
		want = append(want, id)
		if _, err := c.Put(ctx, "default", "items", id, raw(fmt.Sprintf(`{"i":%d}`, i)), owner); err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(want)
	readAll := func(o ListOptions) (ids []string, pages int) {
		for {
			p, err := c.List(ctx, "default", "items", o)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if len(p.Docs) > o.Limit || p.Tier != TierDatabase {
				t.Fatalf("page of %d docs (limit %d), tier %v", len(p.Docs), o.Limit, p.Tier)
			}
			for _, d := range p.Docs {
				if d == nil {
					t.Fatal("nil document in a LIST page")
				}
				if o.Owner != "" && d.Owner != o.Owner {
					t.Fatalf("owner filter: %s has owner %q", d.ID, d.Owner)
				}
				if strings.HasPrefix(d.ID, prefix) {
					ids = append(ids, d.ID)
				}
			}
			if p.NextCursor == "" {
				return ids, pages
			}
			o.Cursor = p.NextCursor
			if pages > 1000 {
				t.Fatal("endless cursor")
			}
		}
	}
	got, pages := readAll(ListOptions{Limit: 3})
	if strings.Join(got, ",") != strings.Join(want, ",") || pages < 3 {
		t.Fatalf("list: %v in %d pages, want %v", got, pages, want)
	}
	got, pages = readAll(ListOptions{Owner: alice, Limit: 2})
	if strings.Join(got, ",") != strings.Join(wantAlice, ",") || pages != 2 {
		t.Fatalf("list by owner: %v in %d pages, want %v in 2", got, pages, wantAlice)
	}
	p, err := c.List(ctx, "default", "items", ListOptions{Owner: alice})
	if err != nil || len(p.Docs) != 4 || p.NextCursor != "" {
		t.Fatalf("default limit: %v %v", p, err)
	}
	_, err = c.List(ctx, "default", "items", ListOptions{Limit: 1001})
	wantCode(t, err, ErrBadRequest)
}

func TestTxn(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	a, b, x := uid(t, "a"), uid(t, "b"), uid(t, "x")
	if _, err := c.Put(ctx, "default", "counters", b, raw(`{"n":0}`)); err != nil {
		t.Fatal(err)
	}
	res, err := c.Txn(ctx, "default",
		PutOp("players", a, raw(`{"hp":10}`)).CreateOnly().SetOwner("alice"),
		IncrOp("counters", b, "/n", 5).AtLeast(0).AtMost(10),
		CheckOp("players", x, 0),
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].Version != 1 || res[0].Doc == nil || res[0].Doc.Owner != "alice" || string(res[0].Doc.Value) != `{"hp":10}` {
		t.Fatalf("results %+v", res)
	}
	if res[1].Doc == nil || string(res[1].Doc.Value) != `{"n":5}` || res[1].Version != 2 {
		t.Fatalf("incr result %+v", res[1])
	}

	// A failing op aborts everything and names its index.
	_, err = c.Txn(ctx, "default",
		PutOp("players", x, raw(`{"never":true}`)),
		IncrOp("counters", b, "/n", 1),
		CheckOp("players", a, 99),
	)
	se := wantCode(t, err, ErrVersionConflict)
	if se.OpIndex != 2 {
		t.Fatalf("op_index %d, want 2", se.OpIndex)
	}
	if _, err := c.Get(ctx, "default", "players", x); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the aborted transaction wrote op 0: %v", err)
	}
	if g, err := c.Get(ctx, "default", "counters", b); err != nil || string(g.Value) != `{"n":5}` {
		t.Fatalf("the aborted transaction wrote op 1: %v %v", g, err)
	}
	_, err = c.Txn(ctx, "default", PutOp("players", a, raw(`{}`)).CreateOnly())
	if se := wantCode(t, err, ErrAlreadyExists); se.OpIndex != 0 {
		t.Fatalf("op_index %d", se.OpIndex)
	}
	_, err = c.Txn(ctx, "default", CheckOp("players", a, 1), IncrOp("counters", b, "/n", 6).AtMost(10))
	if se := wantCode(t, err, ErrBoundViolation); se.OpIndex != 1 {
		t.Fatalf("op_index %d", se.OpIndex)
	}

	// Raw JSON ops and plain Go values; patch, delete, if_version, owner null.
	res, err = c.Txn(ctx, "default",
		raw(fmt.Sprintf(`{"op":"patch","collection":"players","id":%q,"patch":{"mp":1.50},"if_version":1}`, a)),
		map[string]interface{}{"op": "put", "collection": "counters", "id": x, "value": map[string]int{"n": 1}, "owner": nil},
		DeleteOp("counters", b).IfVersion(2),
		PatchOp("players", a, raw(`{"hp":null}`)).IfVersion(2),
		PutOp("players", a, raw(`{"z":0}`)).ClearOwner(),
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 || res[0].Version != 2 || string(res[0].Doc.Value) != `{"hp":10,"mp":1.50}` || res[2].Version != 3 || res[3].Version != 3 || res[4].Version != 4 || res[4].Doc.Owner != "" {
		t.Fatalf("results %+v", res)
	}
	if _, err := c.Get(ctx, "default", "counters", b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete op: %v", err)
	}

	ops := make([]interface{}, 101)
	for i := range ops {
		ops[i] = CheckOp("players", fmt.Sprintf("%s-%d", x, i), 0)
	}
	_, err = c.Txn(ctx, "default", ops...)
	wantCode(t, err, ErrBadRequest)
	if _, err := c.Txn(ctx, "default", ops[:100]...); err != nil {
		t.Fatalf("100 ops: %v", err)
	}
	_, err = c.Txn(ctx, "nogame", CheckOp("players", a, 0))
	wantCode(t, err, ErrUnknownGame)
}

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, cd := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	id := uid(t, "e")
	_, err := c.Get(ctx, "nogame", "players", id)
	wantCode(t, err, ErrUnknownGame)
	_, err = c.Get(ctx, "default", "nocollection", id)
	wantCode(t, err, ErrUnknownCollection)
	_, err = c.Get(ctx, "arena", "players", id)
	wantCode(t, err, ErrUnknownCollection)
	_, err = c.Get(ctx, "default", "players", "_starts_with_underscore")
	wantCode(t, err, ErrInvalidID)
	_, err = c.Get(ctx, "default", "players", strings.Repeat("a", 129))
	if se := wantCode(t, err, ErrInvalidID); se.Local {
		t.Fatal("129 characters should be refused by the server")
	}
	_, err = c.Get(ctx, "default", "players", "")
	wantCode(t, err, ErrInvalidID)
	// Refused locally: cannot be encoded, or would be a protocol violation.
	for _, bad := range []string{strings.Repeat("a", 256), "bad\xff"} {
		_, err = c.Get(ctx, "default", "players", bad)
		if se := wantCode(t, err, ErrInvalidID); !se.Local {
			t.Fatalf("%q: want a local refusal", bad)
		}
	}
	_, err = c.Put(ctx, "default", "players", id, raw(`[1,2]`))
	wantCode(t, err, ErrBadRequest)
	_, err = c.Put(ctx, "default", "players", id, raw(`{"a":`))
	wantCode(t, err, ErrInvalidJSON)
	_, err = c.Put(ctx, "default", "players", id, raw("{\"a\":\"\xff\"}"))
	if se := wantCode(t, err, ErrInvalidJSON); !se.Local {
		t.Fatal("non-UTF-8 JSON should be refused locally")
	}
	_, err = c.Put(ctx, "default", "small", id, raw(`{"s":"`+strings.Repeat("x", 2000)+`"}`))
	wantCode(t, err, ErrPayloadTooLarge)
	big := raw(`{"s":"` + strings.Repeat("x", 1100000) + `"}`)
	_, err = c.Put(ctx, "default", "players", id, big)
	if se := wantCode(t, err, ErrFrameTooLarge); !se.Local {
		t.Fatal("a body over max_frame should be refused locally")
	}
	if _, err := c.Get(ctx, "default", "players", id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nothing was written, yet: %v", err)
	}
	if n := cd.count(); n != 1 {
		t.Fatalf("%d dials: request errors must not close the connection", n)
	}
}

func TestPipeliningOneConnection(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, cd := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 30*time.Second)
	prefix := uid(t, "")
	counter := prefix + "counter"
	if _, err := c.Put(ctx, "default", "counters", counter, raw(`{"n":0}`)); err != nil {
		t.Fatal(err)
	}
	const N = 200
	var wg sync.WaitGroup
	errs := make(chan error, N)
	start := make(chan struct{})
	for i := 0; i < N; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			id := fmt.Sprintf("%s%d", prefix, i)
			want := fmt.Sprintf(`{"i":%d,"big":1%018d}`, i, i)
			if _, err := c.Put(ctx, "default", "players", id, raw(want)); err != nil {
				errs <- err
				return
			}
			d, err := c.Get(ctx, "default", "players", id)
			if err != nil {
				errs <- err
				return
			}
			if d.ID != id || string(d.Value) != want {
				errs <- fmt.Errorf("goroutine %d got %s %s", i, d.ID, d.Value)
				return
			}
			if _, err := c.Incr(ctx, "default", "counters", counter, "/n", 1); err != nil {
				errs <- err
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	d, err := c.Get(ctx, "default", "counters", counter)
	if err != nil || string(d.Value) != fmt.Sprintf(`{"n":%d}`, N) || d.Version != N+1 {
		t.Fatalf("counter: %v %v", d, err)
	}
	st := c.Stats()
	if n := cd.count(); n != 1 || st.Dials != 1 || st.Connects != 1 {
		t.Fatalf("%d dials (stats %+v): all goroutines must share one connection", n, st)
	}
}

func TestOrderOfAnswers(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 30*time.Second)
	prefix := uid(t, "")

	// PUT then GET of the same new id, back to back without waiting: the GET
	// sees the PUT. Same for PATCH→GET and DELETE→GET.
	type pair struct {
		id             string
		put, get, pget *Future[*Document]
		patch          *Future[*Document]
		del            *Future[uint64]
		dget           *Future[*Document]
	}
	var pairs []pair
	for i := 0; i < 40; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		p := pair{id: id}
		p.put = c.PutAsync(ctx, "default", "players", id, raw(fmt.Sprintf(`{"i":%d}`, i)))
		p.get = c.GetAsync(ctx, "default", "players", id)
		p.patch = c.PatchAsync(ctx, "default", "players", id, raw(`{"p":true}`))
		p.pget = c.GetAsync(ctx, "default", "players", id)
		p.del = c.DeleteAsync(ctx, "default", "players", id)
		p.dget = c.GetAsync(ctx, "default", "players", id)
		pairs = append(pairs, p)
	}
	for i, p := range pairs {
		if d, err := p.put.Wait(); err != nil || d.Version != 1 {
			t.Fatalf("%d put: %v %v", i, d, err)
		}
		d, err := p.get.Wait()
		if err != nil || d.Version != 1 || string(d.Value) != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("%d: GET pipelined after PUT: %v %v", i, d, err)
		}
		d, err = p.pget.Wait()
		if err != nil || d.Version != 2 || string(d.Value) != fmt.Sprintf(`{"i":%d,"p":true}`, i) {
			t.Fatalf("%d: GET pipelined after PATCH: %v %v", i, d, err)
		}
		if v, err := p.del.Wait(); err != nil || v != 3 {
			t.Fatalf("%d: delete %d %v", i, v, err)
		}
		if _, err := p.dget.Wait(); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%d: GET pipelined after DELETE: %v", i, err)
		}
	}

	// INCRs of one key (with GETs between them) come back in send order.
	key := prefix + "counter"
	if _, err := c.Put(ctx, "default", "counters", key, raw(`{"n":0}`)); err != nil {
		t.Fatal(err)
	}
	var incrs, gets []*Future[*Document]
	for i := 0; i < 50; i++ {
		incrs = append(incrs, c.IncrAsync(ctx, "default", "counters", key, "/n", 1))
		gets = append(gets, c.GetAsync(ctx, "default", "counters", key))
	}
	for i := range incrs {
		want := fmt.Sprintf(`{"n":%d}`, i+1)
		d, err := incrs[i].Wait()
		if err != nil || string(d.Value) != want || d.Version != uint64(i+2) {
			t.Fatalf("incr %d: %v %v, want %s", i, d, err, want)
		}
		d, err = gets[i].Wait()
		if err != nil || string(d.Value) != want {
			t.Fatalf("get after incr %d: %v %v, want %s", i, d, err, want)
		}
	}
}

func TestCanceledContextSendsNothing(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	c, cd := newClient(t, s.tcpAddr, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	_, err := c.Put(ctx, "default", "players", uid(t, "c"), raw(`{}`))
	var ae *AbortedError
	if !errors.As(err, &ae) || ae.Sent || !errors.Is(err, context.Canceled) || errors.Is(err, ErrClientTimeout) {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 100*time.Millisecond || cd.count() != 0 {
		t.Fatalf("took %v, %d dials", time.Since(start), cd.count())
	}
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	_, err = c.Get(dctx, "default", "players", "x")
	if !errors.Is(err, ErrClientTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired deadline: %v", err)
	}
}
