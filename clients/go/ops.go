package dmw

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Tier says which layer answered a read.
type Tier uint8

// Tiers of the protocol.
const (
	TierNone     Tier = 0 // the answer to a write (or a TXN result)
	TierL1       Tier = 1 // the server's in-process cache
	TierL2       Tier = 2 // Redis, when configured
	TierDatabase Tier = 3 // the database
)

func (t Tier) String() string {
	switch t {
	case TierNone:
		return "none"
	case TierL1:
		return "L1"
	case TierL2:
		return "L2"
	case TierDatabase:
		return "database"
	}
	return "tier(" + strconv.Itoa(int(t)) + ")"
}

// Document is a stored JSON document as the server returned it.
type Document struct {
	ID    string
	Owner string // "" when the document has no owner (JSON null)
	// Version starts at 1 and grows by one on every write; it is never
	// reused, even after delete and re-create.
	Version uint64
	// UpdatedAt is the RFC 3339 UTC time of the last write, as sent.
	UpdatedAt string
	// Value is the document's JSON object, byte for byte as the server
	// sent it: numbers keep their exact text. Decode it with Decode (which
	// keeps numbers as json.Number) or json.Unmarshal.
	Value json.RawMessage
	// Tier is the layer that answered (TierNone for writes).
	Tier Tier
	// Created is true when a PUT created the document.
	Created bool
	// Raw is the whole document JSON ({"id",…,"value"}) as sent.
	Raw json.RawMessage
}

// String returns the document JSON with its tier, for logs.
func (d *Document) String() string {
	if d == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%s (tier %v, version %d, created %v)", d.Raw, d.Tier, d.Version, d.Created)
}

// UpdatedTime parses UpdatedAt.
func (d *Document) UpdatedTime() (time.Time, error) {
	return time.Parse(time.RFC3339Nano, d.UpdatedAt)
}

// Decode unmarshals Value into v; numbers decode as json.Number when v is
// (or holds) an interface{}, so they are never rounded through float64.
func (d *Document) Decode(v interface{}) error {
	dec := json.NewDecoder(bytes.NewReader(d.Value))
	dec.UseNumber()
	return dec.Decode(v)
}

type docJSON struct {
	ID        string          `json:"id"`
	Owner     *string         `json:"owner"`
	Version   uint64          `json:"version"`
	UpdatedAt string          `json:"updated_at"`
	Value     json.RawMessage `json:"value"`
}

func parseDocument(raw []byte) (*Document, error) {
	var dj docJSON
	if err := json.Unmarshal(raw, &dj); err != nil {
		return nil, protoErrorf("document is not the expected JSON object: %v", err)
	}
	d := &Document{ID: dj.ID, Version: dj.Version, UpdatedAt: dj.UpdatedAt, Value: dj.Value, Raw: raw}
	if dj.Owner != nil {
		d.Owner = *dj.Owner
	}
	return d, nil
}

// ---- options ----------------------------------------------------------

// Precondition is a condition on the live document checked before a write.
// The zero value is "no precondition".
type Precondition struct {
	kind    uint8
	version uint64
}

// IfVersion requires the live document to have exactly version v (0: no
// live document). A mismatch fails with ErrVersionConflict.
func IfVersion(v uint64) Precondition { return Precondition{kind: 1, version: v} }

// IfExists requires a live document (ErrVersionConflict otherwise).
func IfExists() Precondition { return Precondition{kind: 2} }

// IfAbsent requires that no live document exists: create only
// (ErrAlreadyExists otherwise).
func IfAbsent() Precondition { return Precondition{kind: 3} }

// NoPrecondition is the zero Precondition.
func NoPrecondition() Precondition { return Precondition{} }

// PutOption is an option of Put: a Precondition or an owner option.
type PutOption interface{ applyPut(*putConfig) }

// WriteOption is an option of Patch and Delete: a Precondition.
type WriteOption interface{ applyWrite(*Precondition) }

// IncrOption is an option of Incr: a Precondition, AtLeast or AtMost.
type IncrOption interface{ applyIncr(*incrConfig) }

type putConfig struct {
	pre       Precondition
	ownerKind uint8
	owner     string
}

type incrConfig struct {
	pre      Precondition
	min, max *int64
}

func (p Precondition) applyPut(c *putConfig)      { c.pre = p }
func (p Precondition) applyWrite(c *Precondition) { *c = p }
func (p Precondition) applyIncr(c *incrConfig)    { c.pre = p }

// OwnerOption says what a PUT does with the document's owner.
type OwnerOption struct {
	kind  uint8
	owner string
}

// KeepOwner keeps the current owner (the default).
func KeepOwner() OwnerOption { return OwnerOption{kind: 0} }

// SetOwner sets the owner, an id (1–128 characters of [A-Za-z0-9_.:@-]).
func SetOwner(owner string) OwnerOption { return OwnerOption{kind: 1, owner: owner} }

// ClearOwner removes the owner.
func ClearOwner() OwnerOption { return OwnerOption{kind: 2} }

func (o OwnerOption) applyPut(c *putConfig) { c.ownerKind, c.owner = o.kind, o.owner }

// Bound is an inclusive bound of Incr.
type Bound struct {
	max bool
	v   int64
}

// AtLeast makes Incr fail with ErrBoundViolation if the result would be
// below min.
func AtLeast(min int64) Bound { return Bound{v: min} }

// AtMost makes Incr fail with ErrBoundViolation if the result would be
// above max.
func AtMost(max int64) Bound { return Bound{max: true, v: max} }

func (b Bound) applyIncr(c *incrConfig) {
	v := b.v
	if b.max {
		c.max = &v
	} else {
		c.min = &v
	}
}

// ---- request encoding ---------------------------------------------------

// checkStr8 validates a str8 field locally: longer than 255 bytes or not
// UTF-8 cannot be sent (the latter would be a protocol violation closing
// the connection for every request on it).
func checkStr8(what, s string, allowEmpty bool) error {
	if len(s) > 255 {
		return localError(ErrInvalidID, "%s is %d bytes long; at most 255 fit the protocol (the id rules allow 128 characters)", what, len(s))
	}
	if !utf8.ValidString(s) {
		return localError(ErrInvalidID, "%s is not valid UTF-8", what)
	}
	if !allowEmpty && s == "" {
		return localError(ErrInvalidID, "%s is empty", what)
	}
	return nil
}

func checkDoc(game, collection, id string) error {
	if err := checkStr8("game", game, true); err != nil {
		return err
	}
	if err := checkStr8("collection", collection, true); err != nil {
		return err
	}
	return checkStr8("id", id, true)
}

// encodeJSON returns the JSON text of v: a json.RawMessage is sent as is
// (checked for UTF-8 only), anything else is marshalled without HTML
// escaping.
func encodeJSON(what string, v interface{}) ([]byte, error) {
	if raw, ok := v.(json.RawMessage); ok {
		if !utf8.Valid(raw) {
			return nil, localError(ErrInvalidJSON, "%s is not valid UTF-8", what)
		}
		return raw, nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("dmw: encoding %s: %w", what, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func newBody(extra int) *encoder {
	return &encoder{b: make([]byte, 0, 64+extra)}
}

func (e *encoder) doc(game, collection, id string) {
	e.str8(game)
	e.str8(collection)
	e.str8(id)
}

func (e *encoder) pre(p Precondition) {
	e.u8(p.kind)
	e.u64(p.version)
}

// ---- calls -------------------------------------------------------------

// start queues a request and returns its call, or an error if it could not
// be queued.
func (c *Client) start(ctx context.Context, op byte, body []byte) (*call, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	cl := &call{op: op, body: body, ctx: ctx, done: make(chan answer, 1)}
	if _, ok := ctx.Deadline(); !ok && c.opts.RequestTimeout > 0 {
		cl.ctx, cl.cancel = context.WithTimeout(ctx, c.opts.RequestTimeout)
	}
	if err := cl.ctx.Err(); err != nil {
		cl.release()
		return nil, &AbortedError{Cause: err}
	}
	if err := c.enqueue(cl); err != nil {
		cl.release()
		return nil, err
	}
	return cl, nil
}

func (cl *call) release() {
	if cl.cancel != nil {
		cl.cancel()
	}
}

// wait blocks for the answer of cl.
func (c *Client) wait(cl *call) answer {
	defer cl.release()
	select {
	case a := <-cl.done:
		return a
	case <-cl.ctx.Done():
	}
	cause := cl.ctx.Err()
	if cl.complete(stQueued, answer{}) {
		c.mu.Lock()
		lce := c.lastConnErr
		if c.conn != nil {
			lce = nil
		}
		c.mu.Unlock()
		return answer{err: &AbortedError{Cause: cause, LastConnectError: lce}}
	}
	if cl.complete(stSent, answer{}) {
		return answer{err: &AbortedError{Cause: cause, Sent: true}}
	}
	// The answer arrived at the same moment: use it.
	return <-cl.done
}

// Future is the pending answer of a request queued by an …Async method.
type Future[T any] struct {
	c      *Client
	cl     *call
	decode func(answer) (T, error)
	once   sync.Once
	v      T
	err    error
}

// Wait blocks until the answer arrives or the request's context ends, and
// returns the result. It may be called several times, from any goroutine.
func (f *Future[T]) Wait() (T, error) {
	f.once.Do(func() {
		if f.cl == nil {
			return // f.err was set when the request could not be queued
		}
		a := f.c.wait(f.cl)
		if a.err != nil {
			f.err = a.err
		} else {
			f.v, f.err = f.decode(a)
		}
	})
	return f.v, f.err
}

func startFuture[T any](c *Client, ctx context.Context, op byte, body []byte, err error, decode func(answer) (T, error)) *Future[T] {
	f := &Future[T]{c: c, decode: decode}
	if err == nil {
		f.cl, err = c.start(ctx, op, body)
	}
	if err != nil {
		f.err = err
	}
	return f
}

func decodeDoc(a answer) (*Document, error) {
	d := decoder{b: a.body}
	tier := d.u8("tier")
	created := d.bool8("created")
	version := d.u64("version")
	raw := d.json32("document")
	if err := d.end(); err != nil {
		return nil, err
	}
	doc, err := parseDocument(raw)
	if err != nil {
		return nil, err
	}
	doc.Tier, doc.Created, doc.Version = Tier(tier), created, version
	return doc, nil
}

// Page is a page of LIST, or the answer of BATCH_GET.
type Page struct {
	// Docs holds the documents; for BatchGet, one slot per requested id in
	// request order, nil when the id has no live document.
	Docs []*Document
	// NextCursor continues a LIST ("" when there is no further page).
	NextCursor string
	Tier       Tier
}

func decodeDocs(a answer) (*Page, error) {
	d := decoder{b: a.body}
	p := &Page{Tier: Tier(d.u8("tier"))}
	n := int(d.u16("count"))
	if d.err == nil && n > len(d.b) { // each slot takes at least one byte
		d.fail("count larger than the body")
	}
	raws := make([][]byte, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		if d.bool8("present") {
			raws = append(raws, d.json32("document"))
		} else {
			raws = append(raws, nil)
		}
	}
	p.NextCursor = d.str8("next_cursor")
	if err := d.end(); err != nil {
		return nil, err
	}
	p.Docs = make([]*Document, n)
	for i, raw := range raws {
		if raw == nil {
			continue
		}
		doc, err := parseDocument(raw)
		if err != nil {
			return nil, err
		}
		doc.Tier = p.Tier
		p.Docs[i] = doc
	}
	return p, nil
}

func decodeDone(a answer) (uint64, error) {
	d := decoder{b: a.body}
	v := d.u64("version")
	return v, d.end()
}

// ---- operations -------------------------------------------------------

func encodeGet(game, collection, id string) ([]byte, error) {
	if err := checkDoc(game, collection, id); err != nil {
		return nil, err
	}
	e := newBody(len(game) + len(collection) + len(id))
	e.doc(game, collection, id)
	return e.b, nil
}

// Get reads one document. A missing document is ErrNotFound.
func (c *Client) Get(ctx context.Context, game, collection, id string) (*Document, error) {
	return c.GetAsync(ctx, game, collection, id).Wait()
}

// GetAsync queues a GET and returns at once; see Get.
func (c *Client) GetAsync(ctx context.Context, game, collection, id string) *Future[*Document] {
	body, err := encodeGet(game, collection, id)
	return startFuture(c, ctx, opGet, body, err, decodeDoc)
}

func encodePut(game, collection, id string, value interface{}, opts []PutOption) ([]byte, error) {
	if err := checkDoc(game, collection, id); err != nil {
		return nil, err
	}
	var cfg putConfig
	for _, o := range opts {
		o.applyPut(&cfg)
	}
	if cfg.ownerKind == 1 {
		if err := checkStr8("owner", cfg.owner, false); err != nil {
			return nil, err
		}
	}
	v, err := encodeJSON("value", value)
	if err != nil {
		return nil, err
	}
	e := newBody(len(game) + len(collection) + len(id) + len(cfg.owner) + len(v))
	e.doc(game, collection, id)
	e.pre(cfg.pre)
	e.u8(cfg.ownerKind)
	e.str8(cfg.owner)
	e.json32(v)
	return e.b, nil
}

// Put creates or replaces a document. value is marshalled to JSON (it must
// be an object); a json.RawMessage is sent byte for byte. Options: a
// Precondition (IfVersion, IfExists, IfAbsent) and an owner option
// (KeepOwner by default, SetOwner, ClearOwner). The returned document has
// Created set when the PUT created it.
func (c *Client) Put(ctx context.Context, game, collection, id string, value interface{}, opts ...PutOption) (*Document, error) {
	return c.PutAsync(ctx, game, collection, id, value, opts...).Wait()
}

// PutAsync queues a PUT and returns at once; see Put.
func (c *Client) PutAsync(ctx context.Context, game, collection, id string, value interface{}, opts ...PutOption) *Future[*Document] {
	body, err := encodePut(game, collection, id, value, opts)
	return startFuture(c, ctx, opPut, body, err, decodeDoc)
}

func encodePatch(game, collection, id string, patch interface{}, opts []WriteOption) ([]byte, error) {
	if err := checkDoc(game, collection, id); err != nil {
		return nil, err
	}
	var pre Precondition
	for _, o := range opts {
		o.applyWrite(&pre)
	}
	p, err := encodeJSON("patch", patch)
	if err != nil {
		return nil, err
	}
	e := newBody(len(game) + len(collection) + len(id) + len(p))
	e.doc(game, collection, id)
	e.pre(pre)
	e.json32(p)
	return e.b, nil
}

// Patch applies a JSON Merge Patch (RFC 7396) to the document's value.
func (c *Client) Patch(ctx context.Context, game, collection, id string, patch interface{}, opts ...WriteOption) (*Document, error) {
	return c.PatchAsync(ctx, game, collection, id, patch, opts...).Wait()
}

// PatchAsync queues a PATCH and returns at once; see Patch.
func (c *Client) PatchAsync(ctx context.Context, game, collection, id string, patch interface{}, opts ...WriteOption) *Future[*Document] {
	body, err := encodePatch(game, collection, id, patch, opts)
	return startFuture(c, ctx, opPatch, body, err, decodeDoc)
}

func encodeDelete(game, collection, id string, opts []WriteOption) ([]byte, error) {
	if err := checkDoc(game, collection, id); err != nil {
		return nil, err
	}
	var pre Precondition
	for _, o := range opts {
		o.applyWrite(&pre)
	}
	e := newBody(len(game) + len(collection) + len(id))
	e.doc(game, collection, id)
	e.pre(pre)
	return e.b, nil
}

// Delete deletes a document and returns the version of its tombstone.
func (c *Client) Delete(ctx context.Context, game, collection, id string, opts ...WriteOption) (uint64, error) {
	return c.DeleteAsync(ctx, game, collection, id, opts...).Wait()
}

// DeleteAsync queues a DELETE and returns at once; see Delete.
func (c *Client) DeleteAsync(ctx context.Context, game, collection, id string, opts ...WriteOption) *Future[uint64] {
	body, err := encodeDelete(game, collection, id, opts)
	return startFuture(c, ctx, opDelete, body, err, decodeDone)
}

func encodeIncr(game, collection, id, path string, by int64, opts []IncrOption) ([]byte, error) {
	if err := checkDoc(game, collection, id); err != nil {
		return nil, err
	}
	if !utf8.ValidString(path) {
		return nil, localError(ErrBadRequest, "path is not valid UTF-8")
	}
	var cfg incrConfig
	for _, o := range opts {
		o.applyIncr(&cfg)
	}
	p, _ := encodeJSON("path", path)
	j := make([]byte, 0, 48+len(p))
	j = append(j, `{"path":`...)
	j = append(j, p...)
	j = append(j, `,"by":`...)
	j = strconv.AppendInt(j, by, 10)
	if cfg.min != nil {
		j = append(j, `,"min":`...)
		j = strconv.AppendInt(j, *cfg.min, 10)
	}
	if cfg.max != nil {
		j = append(j, `,"max":`...)
		j = strconv.AppendInt(j, *cfg.max, 10)
	}
	j = append(j, '}')
	e := newBody(len(game) + len(collection) + len(id) + len(j))
	e.doc(game, collection, id)
	e.pre(cfg.pre)
	e.json32(j)
	return e.b, nil
}

// Incr atomically adds by to the integer at path (a JSON Pointer such as
// "/gold"; a missing last member starts at 0). Options: AtLeast, AtMost
// (inclusive bounds; crossing one, or overflowing 64 bits, is
// ErrBoundViolation) and a Precondition. A target that is not a 64-bit
// integer is ErrNotANumber. The arithmetic is exact.
func (c *Client) Incr(ctx context.Context, game, collection, id, path string, by int64, opts ...IncrOption) (*Document, error) {
	return c.IncrAsync(ctx, game, collection, id, path, by, opts...).Wait()
}

// IncrAsync queues an INCR and returns at once; see Incr.
func (c *Client) IncrAsync(ctx context.Context, game, collection, id, path string, by int64, opts ...IncrOption) *Future[*Document] {
	body, err := encodeIncr(game, collection, id, path, by, opts)
	return startFuture(c, ctx, opIncr, body, err, decodeDoc)
}

func encodeBatchGet(game, collection string, ids []string) ([]byte, error) {
	if err := checkStr8("game", game, true); err != nil {
		return nil, err
	}
	if err := checkStr8("collection", collection, true); err != nil {
		return nil, err
	}
	if len(ids) > 0xFFFF {
		return nil, localError(ErrBadRequest, "%d ids; the protocol carries at most 65535 (the server takes 1000)", len(ids))
	}
	n := 0
	for _, id := range ids {
		if err := checkStr8("id", id, true); err != nil {
			return nil, err
		}
		n += 1 + len(id)
	}
	e := newBody(len(game) + len(collection) + n)
	e.str8(game)
	e.str8(collection)
	e.u16(uint16(len(ids)))
	for _, id := range ids {
		e.str8(id)
	}
	return e.b, nil
}

// BatchGet reads up to 1000 documents of one collection. The page has one
// slot per id, in request order, nil for an id without a live document.
func (c *Client) BatchGet(ctx context.Context, game, collection string, ids []string) (*Page, error) {
	return c.BatchGetAsync(ctx, game, collection, ids).Wait()
}

// BatchGetAsync queues a BATCH_GET and returns at once; see BatchGet.
func (c *Client) BatchGetAsync(ctx context.Context, game, collection string, ids []string) *Future[*Page] {
	body, err := encodeBatchGet(game, collection, ids)
	return startFuture(c, ctx, opBatchGet, body, err, decodeDocs)
}

// ListOptions select a LIST page.
type ListOptions struct {
	Owner  string // only documents of this owner ("" : any)
	Cursor string // NextCursor of the previous page ("" : from the start)
	Limit  int    // documents per page, 1–1000 (0: the server's default, 100)
}

func encodeList(game, collection string, o ListOptions) ([]byte, error) {
	if err := checkStr8("game", game, true); err != nil {
		return nil, err
	}
	if err := checkStr8("collection", collection, true); err != nil {
		return nil, err
	}
	if err := checkStr8("owner", o.Owner, true); err != nil {
		return nil, err
	}
	if err := checkStr8("cursor", o.Cursor, true); err != nil {
		return nil, err
	}
	if o.Limit < 0 || o.Limit > 0xFFFF {
		return nil, localError(ErrBadRequest, "limit %d is out of range (1–1000, 0 for the default)", o.Limit)
	}
	e := newBody(len(game) + len(collection) + len(o.Owner) + len(o.Cursor))
	e.str8(game)
	e.str8(collection)
	e.str8(o.Owner)
	e.str8(o.Cursor)
	e.u16(uint16(o.Limit))
	return e.b, nil
}

// List reads a page of live documents of a collection, by id in byte
// order. A page may hold fewer than Limit documents while NextCursor is not
// empty: keep reading until it is empty.
func (c *Client) List(ctx context.Context, game, collection string, opts ListOptions) (*Page, error) {
	return c.ListAsync(ctx, game, collection, opts).Wait()
}

// ListAsync queues a LIST and returns at once; see List.
func (c *Client) ListAsync(ctx context.Context, game, collection string, opts ListOptions) *Future[*Page] {
	body, err := encodeList(game, collection, opts)
	return startFuture(c, ctx, opList, body, err, decodeDocs)
}
