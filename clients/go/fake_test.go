package dmw

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// A fake server, for the faults a real server cannot produce on demand.
// These tests need no server binary.

type fakeServer struct {
	ln    net.Listener
	conns chan *fakeConn
}

type frame struct {
	op   byte
	id   uint32
	body []byte
	raw  []byte
}

type fakeConn struct {
	nc     net.Conn
	frames chan frame // closed at EOF
	mu     sync.Mutex
}

func newFake(t *testing.T) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{ln: ln, conns: make(chan *fakeConn, 16)}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				close(f.conns)
				return
			}
			fc := &fakeConn{nc: nc, frames: make(chan frame, 1024)}
			go fc.readLoop()
			f.conns <- fc
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for fc := range f.conns {
			fc.nc.Close()
		}
	})
	return f
}

func (f *fakeServer) addr() string { return f.ln.Addr().String() }

func (f *fakeServer) next(t *testing.T) *fakeConn {
	t.Helper()
	select {
	case fc := <-f.conns:
		t.Cleanup(func() { fc.nc.Close() })
		return fc
	case <-time.After(5 * time.Second):
		t.Fatal("no connection to the fake server within 5 s")
	}
	return nil
}

func (f *fakeServer) noConn(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-f.conns:
		t.Fatal("unexpected connection")
	case <-time.After(d):
	}
}

func (fc *fakeConn) readLoop() {
	defer close(fc.frames)
	br := bufio.NewReader(fc.nc)
	for {
		h := make([]byte, headerLen)
		if _, err := io.ReadFull(br, h); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(h[12:])
		if n > 8<<20 {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		fc.frames <- frame{op: h[3], id: binary.BigEndian.Uint32(h[8:]), body: body, raw: append(h, body...)}
	}
}

// read returns the next frame; ok is false on timeout, eof true at EOF.
func (fc *fakeConn) read(d time.Duration) (f frame, ok, eof bool) {
	select {
	case f, ok := <-fc.frames:
		return f, ok, !ok
	case <-time.After(d):
		return frame{}, false, false
	}
}

func (fc *fakeConn) mustRead(t *testing.T) frame {
	t.Helper()
	f, ok, eof := fc.read(5 * time.Second)
	if !ok {
		t.Fatalf("fake server: no frame (eof %v)", eof)
	}
	return f
}

func (fc *fakeConn) nothing(t *testing.T, d time.Duration) {
	t.Helper()
	if f, ok, _ := fc.read(d); ok {
		t.Fatalf("fake server: unexpected %s frame id %d", opName(f.op), f.id)
	}
}

func (fc *fakeConn) waitEOF(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case _, ok := <-fc.frames:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("the client did not close the connection within %v", d)
		}
	}
}

func (fc *fakeConn) sendRaw(b []byte) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.nc.Write(b)
}

func (fc *fakeConn) send(op byte, id uint32, body []byte) {
	f := make([]byte, headerLen+len(body))
	putHeader(f, op, id, len(body))
	copy(f[headerLen:], body)
	fc.sendRaw(f)
}

type helloOK struct {
	intervalMS  uint32
	maxFrame    uint32
	maxInFlight uint16
}

func (fc *fakeConn) handshake(t *testing.T, h helloOK) frame {
	t.Helper()
	hello := fc.mustRead(t)
	if hello.op != opHello {
		t.Fatalf("first frame %s, want HELLO", opName(hello.op))
	}
	if h.intervalMS == 0 {
		h.intervalMS = 30000
	}
	if h.maxFrame == 0 {
		h.maxFrame = 1052672
	}
	if h.maxInFlight == 0 {
		h.maxInFlight = 128
	}
	e := encoder{}
	e.u8(1)
	e.u32(h.intervalMS)
	e.u32(h.maxFrame)
	e.u16(h.maxInFlight)
	e.str16("fake/1")
	fc.send(opHelloOK, hello.id, e.b)
	return hello
}

func docBody(tier, created byte, version uint64, doc string) []byte {
	e := encoder{}
	e.u8(tier)
	e.u8(created)
	e.u64(version)
	e.json32([]byte(doc))
	return e.b
}

func fakeDocJSON(id string, version uint64) string {
	return fmt.Sprintf(`{"id":%q,"owner":null,"version":%d,"updated_at":"2026-11-30T00:00:00Z","value":{"n":1}}`, id, version)
}

func errorBody(code, msg string, opIndex uint32) []byte {
	e := encoder{}
	e.str8(code)
	e.str16(msg)
	e.u32(opIndex)
	return e.b
}

func goAwayBody(last uint32, msg string) []byte {
	e := encoder{}
	e.u32(last)
	e.str16(msg)
	return e.b
}

// docID returns the id named by a GET frame.
func docID(t *testing.T, f frame) string {
	t.Helper()
	if f.op != opGet {
		t.Fatalf("%s frame, want GET", opName(f.op))
	}
	d := decoder{b: f.body}
	d.str8("game")
	d.str8("collection")
	id := d.str8("id")
	if err := d.end(); err != nil {
		t.Fatal(err)
	}
	return id
}

// answerGet answers a GET with a document named like the requested id.
func (fc *fakeConn) answerGet(t *testing.T, f frame) {
	t.Helper()
	fc.send(opDoc, f.id, docBody(3, 0, 1, fakeDocJSON(docID(t, f), 1)))
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

func fastOpts() Options {
	return Options{ReconnectBackoffMin: 5 * time.Millisecond, ReconnectBackoffMax: 20 * time.Millisecond}
}

// The bytes of the spec's worked example.
func TestWorkedExampleBytes(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	opts := fastOpts()
	opts.ClientName = "demo"
	opts.firstRequestID = 7
	c, _ := newClient(t, f.addr(), opts)
	ctx := ctxT(t, 10*time.Second)
	fut := c.GetAsync(ctx, "default", "players", "42")
	fc := f.next(t)
	hello := fc.mustRead(t)
	want := unhex(`44 4d 01 01 00 00 00 00 00 00 00 01 00 00 00 0a  01  00 04 64 65 6d 6f  00  00 00`)
	if !bytes.Equal(hello.raw, want) {
		t.Fatalf("HELLO\n got %x\nwant %x", hello.raw, want)
	}
	fc.sendRaw(unhex(`44 4d 01 81 00 00 00 00 00 00 00 01 00 00 00 21
		01 00 00 75 30 00 10 10 00 00 80
		00 14 64 61 74 61 6d 69 64 64 6c 65 77 61 72 65 2f 30 2e 31 2e 30`))
	get := fc.mustRead(t)
	want = unhex(`44 4d 01 10 00 00 00 00 00 00 00 07 00 00 00 13
		07 64 65 66 61 75 6c 74  07 70 6c 61 79 65 72 73  02 34 32`)
	if !bytes.Equal(get.raw, want) {
		t.Fatalf("GET\n got %x\nwant %x", get.raw, want)
	}
	doc := `{"id":"42","owner":null,"version":3,"updated_at":"2026-11-30T10:00:00.123Z","value":{"gold":123456789012345678901234567890,"p":1.50}}`
	fc.send(opDoc, 7, docBody(1, 0, 3, doc))
	d, err := fut.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != "42" || d.Version != 3 || d.Tier != TierL1 || d.Created || d.Owner != "" ||
		string(d.Value) != `{"gold":123456789012345678901234567890,"p":1.50}` || string(d.Raw) != doc {
		t.Fatalf("document %v", d)
	}
	if ts, err := d.UpdatedTime(); err != nil || ts.Nanosecond() != 123000000 {
		t.Fatalf("updated_at: %v %v", ts, err)
	}
	info, ok := c.ServerInfo()
	if !ok || info.Server != "datamiddleware/0.1.0" || info.HeartbeatInterval != 30*time.Second || info.MaxFrame != 1052672 || info.MaxInFlight != 128 || info.Version != 1 {
		t.Fatalf("server info %+v %v", info, ok)
	}

	fut = c.GetAsync(ctx, "default", "players", "43")
	g := fc.mustRead(t)
	if g.id != 8 {
		t.Fatalf("second request id %d, want 8", g.id)
	}
	fc.send(opError, 8, unhex(`09 6e 6f 74 5f 66 6f 75 6e 64  00 10 6e 6f 20 73 75 63 68 20 64 6f 63 75 6d 65 6e 74  ff ff ff ff`))
	_, err = fut.Wait()
	se := wantCode(t, err, ErrNotFound)
	if se.Message != "no such document" || se.OpIndex != -1 || se.Local {
		t.Fatalf("error %+v", se)
	}
}

func TestHelloCredentials(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	opts := fastOpts()
	opts.ClientName = "gs"
	opts.CredentialKind = CredentialAPIKey
	opts.Credential = "k3y"
	done := make(chan error, 1)
	go func() {
		_, err := Dial(ctxT(t, 5*time.Second), f.addr(), opts)
		done <- err
	}()
	fc := f.next(t)
	hello := fc.mustRead(t)
	if want := unhex(`01 00 02 67 73 01 00 03 6b 33 79`); !bytes.Equal(hello.body, want) {
		t.Fatalf("HELLO body %x, want %x", hello.body, want)
	}
	fc.send(opError, hello.id, errorBody("unauthorized", "no", noOpIndex))
	err := <-done
	wantCode(t, err, ErrUnauthorized)
}

// Request ids are assigned in write order, count up by one and continue
// after 0xFFFFFFFF at 1; answers arriving out of order are matched by id.
func TestRequestIDsAndOutOfOrderAnswers(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	opts := fastOpts()
	opts.firstRequestID = 0xFFFFFF00
	c, cd := newClient(t, f.addr(), opts)
	ctx := ctxT(t, 20*time.Second)
	const N = 300
	var wg sync.WaitGroup
	errs := make(chan error, N)
	for i := 0; i < N; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("doc%d", i)
			d, err := c.Get(ctx, "default", "players", id)
			if err == nil && d.ID != id {
				err = fmt.Errorf("asked %s, got %s", id, d.ID)
			}
			if err != nil {
				errs <- err
			}
		}(i)
	}
	fc := f.next(t)
	fc.handshake(t, helloOK{maxInFlight: 64})
	expect := uint32(0xFFFFFF00)
	answered := 0
	var pending []frame
	for answered < N {
		fr, ok, eof := fc.read(30 * time.Millisecond)
		if eof {
			t.Fatal("connection closed")
		}
		if ok {
			if fr.id != expect {
				t.Fatalf("request id %#x, want %#x", fr.id, expect)
			}
			expect = nextRequestID(expect)
			pending = append(pending, fr)
			if len(pending) > 64 {
				t.Fatalf("%d requests unanswered, over max_in_flight 64", len(pending))
			}
			continue
		}
		// Answer in reverse order.
		for i := len(pending) - 1; i >= 0; i-- {
			fc.answerGet(t, pending[i])
			answered++
		}
		pending = nil
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if expect != N-256+1 { // wrapped after 256 ids, skipping 0
		t.Fatalf("last id %#x", expect)
	}
	if cd.count() != 1 {
		t.Fatalf("%d dials", cd.count())
	}
}

// GOAWAY: requests after last_request_id are resent on a new connection,
// requests at or before it that get no answer fail with ErrConnectionLost.
func TestGoAwayResendVersusFail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		first uint32
		last  func(ids []uint32) uint32
		lost  []string
		resnd []string
	}{
		{"last=second", 1, func(ids []uint32) uint32 { return ids[1] }, []string{"b"}, []string{"c", "d"}},
		{"wraparound", 0xFFFFFFFE, func(ids []uint32) uint32 { return ids[1] }, []string{"b"}, []string{"c", "d"}},
		{"last=0", 1, func([]uint32) uint32 { return 0 }, nil, []string{"a", "b", "c", "d"}},
	} {
		tc := tc
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t)
			opts := fastOpts()
			opts.firstRequestID = tc.first
			c, cd := newClient(t, f.addr(), opts)
			ctx := ctxT(t, 10*time.Second)
			futs := map[string]*Future[*Document]{}
			for _, id := range []string{"a", "b", "c", "d"} {
				futs[id] = c.GetAsync(ctx, "default", "players", id)
			}
			fc1 := f.next(t)
			fc1.handshake(t, helloOK{})
			var ids []uint32
			var names []string
			for i := 0; i < 4; i++ {
				fr := fc1.mustRead(t)
				ids = append(ids, fr.id)
				names = append(names, docID(t, fr))
			}
			if strings.Join(names, "") != "abcd" {
				t.Fatalf("sent in order %v", names)
			}
			if tc.first == 0xFFFFFFFE && (ids[1] != 0xFFFFFFFF || ids[2] != 1 || ids[3] != 2) {
				t.Fatalf("ids %#x", ids)
			}
			last := tc.last(ids)
			fc1.send(opGoAway, 0, goAwayBody(last, "shutting down"))
			// Answer the first request (read) only when it was read.
			if last != 0 {
				fc1.send(opDoc, ids[0], docBody(3, 0, 1, fakeDocJSON("a", 1)))
			}
			// No new request goes on the old connection after GOAWAY.
			deadline := time.Now().Add(5 * time.Second)
			for c.Stats().GoAways == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			futs["e"] = c.GetAsync(ctx, "default", "players", "e")
			fc1.nothing(t, 100*time.Millisecond)

			fc2 := f.next(t)
			fc2.handshake(t, helloOK{})
			var got []string
			want := append(append([]string{}, tc.resnd...), "e")
			expect := tc.first // each connection starts its own sequence
			for len(got) < len(want) {
				fr := fc2.mustRead(t)
				if fr.id != expect {
					t.Fatalf("new connection: request id %#x, want %#x", fr.id, expect)
				}
				expect = nextRequestID(expect)
				got = append(got, docID(t, fr))
				fc2.answerGet(t, fr)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("resent %v, want %v", got, want)
			}
			fc1.nc.Close() // the server closes without answering the rest
			for _, id := range tc.lost {
				_, err := futs[id].Wait()
				var cle *ConnectionLostError
				if !errors.Is(err, ErrConnectionLost) || !errors.As(err, &cle) || !strings.Contains(err.Error(), "GOAWAY") {
					t.Fatalf("%s: %v, want connection lost after GOAWAY", id, err)
				}
			}
			for id, fut := range futs {
				if contains(tc.lost, id) {
					continue
				}
				d, err := fut.Wait()
				if err != nil || d.ID != id {
					t.Fatalf("%s: %v %v", id, d, err)
				}
			}
			fc2.nothing(t, 100*time.Millisecond)
			st := c.Stats()
			if st.GoAways != 1 || st.Resent != uint64(len(tc.resnd)) || st.Lost != uint64(len(tc.lost)) || cd.count() != 2 {
				t.Fatalf("stats %+v, %d dials", st, cd.count())
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A connection that ends without GOAWAY: what was sent fails, nothing is
// resent.
func TestConnectionLostIsNotResent(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	ctx := ctxT(t, 10*time.Second)
	fa := c.GetAsync(ctx, "default", "players", "a")
	fb := c.GetAsync(ctx, "default", "players", "b")
	fc := f.next(t)
	fc.handshake(t, helloOK{})
	ra, rb := fc.mustRead(t), fc.mustRead(t)
	fc.answerGet(t, ra)
	_ = rb
	time.Sleep(20 * time.Millisecond)
	fc.nc.Close()
	if d, err := fa.Wait(); err != nil || d.ID != "a" {
		t.Fatalf("a: %v %v", d, err)
	}
	_, err := fb.Wait()
	var cle *ConnectionLostError
	if !errors.As(err, &cle) || cle.RequestID != rb.id || !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("b: %v", err)
	}
	fc2 := f.next(t) // the client reconnects with backoff
	fc2.handshake(t, helloOK{})
	fc2.nothing(t, 200*time.Millisecond)
	if st := c.Stats(); st.Lost != 1 || st.Resent != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A protocol-violation ERROR: the server read nothing after the offending
// request, so what follows is resent.
func TestViolationErrorResendsLaterRequests(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	ctx := ctxT(t, 10*time.Second)
	fa := c.GetAsync(ctx, "default", "players", "a")
	fb := c.GetAsync(ctx, "default", "players", "b")
	fcc := c.GetAsync(ctx, "default", "players", "c")
	fc := f.next(t)
	fc.handshake(t, helloOK{})
	ra, rb, _ := fc.mustRead(t), fc.mustRead(t), fc.mustRead(t)
	fc.answerGet(t, ra)
	fc.send(opError, rb.id, errorBody("protocol_error", "malformed body", noOpIndex))
	fc.nc.Close()
	if d, err := fa.Wait(); err != nil || d.ID != "a" {
		t.Fatalf("a: %v %v", d, err)
	}
	_, err := fb.Wait()
	if se := wantCode(t, err, ErrProtocolError); se.Local || errors.Is(err, ErrConnectionLost) {
		t.Fatalf("b: %v", err)
	}
	fc2 := f.next(t)
	fc2.handshake(t, helloOK{})
	rc := fc2.mustRead(t)
	if docID(t, rc) != "c" || rc.id != 1 {
		t.Fatalf("resent %s id %d", docID(t, rc), rc.id)
	}
	fc2.answerGet(t, rc)
	if d, err := fcc.Wait(); err != nil || d.ID != "c" {
		t.Fatalf("c: %v %v", d, err)
	}
}

func TestContextDeadlineAndCancel(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	opts := fastOpts()
	opts.RequestTimeout = 150 * time.Millisecond
	c, cd := newClient(t, f.addr(), opts)
	go func() {
		fc := f.next(t)
		fc.handshake(t, helloOK{})
		// Never answers; answers the abandoned requests late, then a live one.
		var frames []frame
		for {
			fr, ok, eof := fc.read(time.Second)
			if eof {
				return
			}
			if !ok {
				continue
			}
			if docID(t, fr) == "live" {
				for _, old := range frames {
					fc.answerGet(t, old)
				}
				fc.answerGet(t, fr)
				continue
			}
			frames = append(frames, fr)
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Get(ctx, "default", "players", "deadline")
	el := time.Since(start)
	var ae *AbortedError
	if !errors.Is(err, ErrClientTimeout) || !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ae) || !ae.Sent {
		t.Fatalf("err = %v", err)
	}
	if el < 190*time.Millisecond || el > time.Second {
		t.Fatalf("returned after %v, want about 200ms", el)
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel2)
	start = time.Now()
	_, err = c.Get(ctx2, "default", "players", "cancel")
	el = time.Since(start)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrClientTimeout) || el > 600*time.Millisecond {
		t.Fatalf("cancel: %v after %v", err, el)
	}

	start = time.Now()
	_, err = c.Get(context.Background(), "default", "players", "default-timeout")
	el = time.Since(start)
	if !errors.Is(err, ErrClientTimeout) || el < 140*time.Millisecond || el > time.Second {
		t.Fatalf("RequestTimeout: %v after %v", err, el)
	}

	// Late answers to abandoned requests are dropped; the connection lives on.
	d, err := c.Get(ctxT(t, 5*time.Second), "default", "players", "live")
	if err != nil || d.ID != "live" || cd.count() != 1 {
		t.Fatalf("after late answers: %v %v, %d dials", d, err, cd.count())
	}
}

func TestWaitingForConnection(t *testing.T) {
	t.Parallel()
	addr := freePort() // nothing listens there
	c, _ := newClient(t, addr, fastOpts())
	_, err := c.Get(ctxT(t, 300*time.Millisecond), "default", "players", "x")
	var ae *AbortedError
	if !errors.As(err, &ae) || ae.Sent || ae.LastConnectError == nil || !errors.Is(err, ErrClientTimeout) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Logf("note: %v", err)
	}
	// Close fails waiting requests with ErrClosed at once.
	done := make(chan error, 1)
	go func() {
		_, err := c.Get(ctxT(t, 10*time.Second), "default", "players", "y")
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Close did not fail the waiting request")
	}
	if _, err := c.Get(ctxT(t, time.Second), "default", "players", "z"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestReconnectBackoff(t *testing.T) {
	t.Parallel()
	run := func(max time.Duration) (times []time.Time) {
		var mu sync.Mutex
		opts := Options{
			ReconnectBackoffMin: 5 * time.Millisecond,
			ReconnectBackoffMax: max,
			Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
				mu.Lock()
				times = append(times, time.Now())
				mu.Unlock()
				return nil, errors.New("refused by the test")
			},
		}
		c, err := New("127.0.0.1:1", opts)
		if err != nil {
			t.Fatal(err)
		}
		c.wantConnection()
		time.Sleep(400 * time.Millisecond)
		c.Close()
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), times...)
	}
	capped := run(20 * time.Millisecond)
	if len(capped) < 12 || len(capped) > 200 {
		t.Fatalf("%d attempts in 400ms with backoff 5ms..20ms", len(capped))
	}
	for i := 2; i < len(capped); i++ {
		if gap := capped[i].Sub(capped[i-1]); gap < 2*time.Millisecond || gap > 60*time.Millisecond {
			t.Fatalf("gap %d: %v (backoff 5ms..20ms)", i, gap)
		}
	}
	uncapped := run(10 * time.Second)
	if len(uncapped) > 9 || len(uncapped) < 4 {
		t.Fatalf("%d attempts in 400ms with a doubling backoff from 5ms", len(uncapped))
	}
}

func TestMalformedFrames(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		reply func(fc *fakeConn, req frame)
		want  []error
		lost  bool
	}{
		{"bad magic", func(fc *fakeConn, req frame) { fc.sendRaw(bytes.Repeat([]byte{'X'}, 16)) }, []error{ErrProtocolError}, true},
		{"bad version", func(fc *fakeConn, req frame) {
			f := make([]byte, 16)
			putHeader(f, opDone, req.id, 0)
			f[2] = 2
			fc.sendRaw(f)
		}, []error{ErrProtocolError}, true},
		{"absurd length", func(fc *fakeConn, req frame) {
			f := make([]byte, 16)
			putHeader(f, opDoc, req.id, 0)
			binary.BigEndian.PutUint32(f[12:], 0xFFFFFFF0)
			fc.sendRaw(f)
		}, []error{ErrProtocolError, ErrFrameTooLarge}, true},
		{"wrong answer opcode", func(fc *fakeConn, req frame) { fc.send(opDone, req.id, make([]byte, 8)) }, []error{ErrProtocolError}, false},
		{"unknown request id", func(fc *fakeConn, req frame) { fc.send(opDoc, req.id+100, docBody(1, 0, 1, fakeDocJSON("a", 1))) }, []error{ErrProtocolError}, true},
		{"trailing bytes", func(fc *fakeConn, req frame) {
			fc.send(opDoc, req.id, append(docBody(1, 0, 1, fakeDocJSON("a", 1)), 0))
		}, []error{ErrProtocolError}, false},
		{"bad created flag", func(fc *fakeConn, req frame) { fc.send(opDoc, req.id, docBody(1, 7, 1, fakeDocJSON("a", 1))) }, []error{ErrProtocolError}, false},
		{"truncated document", func(fc *fakeConn, req frame) { fc.send(opDoc, req.id, docBody(1, 0, 1, fakeDocJSON("a", 1))[:20]) }, []error{ErrProtocolError}, false},
	}
	for _, tc := range cases {
		tc := tc
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t)
			c, _ := newClient(t, f.addr(), fastOpts())
			ctx := ctxT(t, 5*time.Second)
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			fut := c.GetAsync(ctx, "default", "players", "a")
			fc := f.next(t)
			fc.handshake(t, helloOK{})
			tc.reply(fc, fc.mustRead(t))
			_, err := fut.Wait()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Fatalf("%v does not match %v", err, w)
				}
			}
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("%v is not a *ProtocolError", err)
			}
			if tc.lost != errors.Is(err, ErrConnectionLost) {
				t.Fatalf("%v: connection lost should be %v", err, tc.lost)
			}
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if grown := after.TotalAlloc - before.TotalAlloc; grown > 64<<20 {
				t.Fatalf("allocated %d bytes", grown)
			}
		})
	}
}

func TestServerPingIsAnswered(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	go c.Get(ctxT(t, 5*time.Second), "default", "players", "a")
	fc := f.next(t)
	fc.handshake(t, helloOK{})
	fc.mustRead(t) // the GET
	fc.send(opPing, 0, unhex("1122334455667788"))
	fc.send(opPing, 4242, unhex("0000000000000001"))
	for _, want := range []struct {
		id      uint32
		payload string
	}{{0, "1122334455667788"}, {4242, "0000000000000001"}} {
		p := fc.mustRead(t)
		if p.op != opPong || p.id != want.id || hex.EncodeToString(p.body) != want.payload {
			t.Fatalf("got %s id %d body %x, want PONG id %d %s", opName(p.op), p.id, p.body, want.id, want.payload)
		}
	}
	if st := c.Stats(); st.PingsReceived != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// The client pings an idle connection every interval and closes one on
// which nothing arrives for three intervals.
func TestClientHeartbeat(t *testing.T) {
	t.Parallel()
	t.Run("silent server", func(t *testing.T) {
		t.Parallel()
		f := newFake(t)
		c, cd := newClient(t, f.addr(), fastOpts())
		c.wantConnection()
		fc := f.next(t)
		fc.handshake(t, helloOK{intervalMS: 100})
		start := time.Now()
		pings := 0
		for {
			fr, ok, eof := fc.read(2 * time.Second)
			if eof {
				break
			}
			if !ok {
				t.Fatal("the client neither pinged nor closed")
			}
			if fr.op != opPing || len(fr.body) != 8 {
				t.Fatalf("%s frame", opName(fr.op))
			}
			pings++
		}
		el := time.Since(start)
		if pings < 2 || el < 280*time.Millisecond || el > 1500*time.Millisecond {
			t.Fatalf("%d pings, closed after %v (interval 100ms: want ~300ms)", pings, el)
		}
		f.next(t) // and reconnects
		if cd.count() < 2 {
			t.Fatalf("%d dials", cd.count())
		}
	})
	t.Run("answering server", func(t *testing.T) {
		t.Parallel()
		f := newFake(t)
		c, _ := newClient(t, f.addr(), fastOpts())
		c.wantConnection()
		fc := f.next(t)
		fc.handshake(t, helloOK{intervalMS: 100})
		deadline := time.Now().Add(800 * time.Millisecond)
		pings := 0
		for time.Now().Before(deadline) {
			fr, ok, eof := fc.read(50 * time.Millisecond)
			if eof {
				t.Fatal("the client closed a connection whose server answers PINGs")
			}
			if ok && fr.op == opPing {
				pings++
				fc.send(opPong, fr.id, fr.body)
			}
		}
		if pings < 5 || pings > 12 {
			t.Fatalf("%d pings in 800ms at a 100ms interval", pings)
		}
		f.noConn(t, 10*time.Millisecond)
		if st := c.Stats(); st.PongsReceived < 5 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestInFlightWindow(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	ctx := ctxT(t, 10*time.Second)
	var futs []*Future[*Document]
	for i := 0; i < 5; i++ {
		futs = append(futs, c.GetAsync(ctx, "default", "players", fmt.Sprint(i)))
	}
	fc := f.next(t)
	fc.handshake(t, helloOK{maxInFlight: 2})
	a, b := fc.mustRead(t), fc.mustRead(t)
	fc.nothing(t, 150*time.Millisecond)
	fc.answerGet(t, b)
	c3 := fc.mustRead(t)
	fc.nothing(t, 100*time.Millisecond)
	fc.answerGet(t, a)
	fc.answerGet(t, c3)
	d4, d5 := fc.mustRead(t), fc.mustRead(t)
	fc.answerGet(t, d5)
	fc.answerGet(t, d4)
	for i, fu := range futs {
		if d, err := fu.Wait(); err != nil || d.ID != fmt.Sprint(i) {
			t.Fatalf("%d: %v %v", i, d, err)
		}
	}
}

func TestBodyOverMaxFrameIsNotSent(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	ctx := ctxT(t, 10*time.Second)
	fut := c.GetAsync(ctx, "default", "players", "first")
	fc := f.next(t)
	fc.handshake(t, helloOK{maxFrame: 64})
	fc.answerGet(t, fc.mustRead(t))
	if _, err := fut.Wait(); err != nil {
		t.Fatal(err)
	}
	_, err := c.Put(ctx, "default", "players", "big", raw(`{"s":"`+strings.Repeat("x", 100)+`"}`))
	if se := wantCode(t, err, ErrFrameTooLarge); !se.Local {
		t.Fatalf("%v", se)
	}
	fut = c.GetAsync(ctx, "default", "players", "after")
	fr := fc.mustRead(t)
	if fr.id != 2 || docID(t, fr) != "after" {
		t.Fatalf("next frame id %d", fr.id)
	}
	fc.answerGet(t, fr)
	if _, err := fut.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownErrorCode(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	fut := c.TxnAsync(ctxT(t, 5*time.Second), "default", CheckOp("players", "a", 0))
	fc := f.next(t)
	fc.handshake(t, helloOK{})
	r := fc.mustRead(t)
	if r.op != opTxn {
		t.Fatalf("%s", opName(r.op))
	}
	d := decoder{b: r.body}
	if g := d.str8("game"); g != "default" {
		t.Fatal(g)
	}
	if j := string(d.json32("ops")); j != `{"ops":[{"op":"check","collection":"players","id":"a","version":0}]}` {
		t.Fatalf("txn body %s", j)
	}
	fc.send(opError, r.id, errorBody("quantum_flux", "new in a later server", 3))
	_, err := fut.Wait()
	var se *Error
	if !errors.As(err, &se) || se.Code != "quantum_flux" || se.Known() || se.OpIndex != 3 || se.Message != "new in a later server" {
		t.Fatalf("%v", err)
	}
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConnectionLost) || !errors.Is(err, ErrorCode("quantum_flux")) {
		t.Fatalf("%v matches the wrong sentinels", err)
	}
}

// A connection-level ERROR (request id 0) then close: requests in flight
// are lost, with the server's code as the cause.
func TestConnectionLevelError(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	fut := c.GetAsync(ctxT(t, 5*time.Second), "default", "players", "a")
	fc := f.next(t)
	fc.handshake(t, helloOK{})
	fc.mustRead(t)
	fc.send(opError, 0, errorBody("timeout", "no frame for 90 s", noOpIndex))
	fc.nc.Close()
	_, err := fut.Wait()
	if !errors.Is(err, ErrConnectionLost) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("%v", err)
	}
}

// Frames the client writes for every opcode, checked field by field.
func TestRequestEncodings(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	ctx := ctxT(t, 5*time.Second)
	c.PutAsync(ctx, "g", "c", "i", raw(`{"v":1.50}`), IfVersion(7), SetOwner("own"))
	c.PutAsync(ctx, "g", "c", "i", raw(`{}`), ClearOwner(), IfAbsent())
	c.PatchAsync(ctx, "g", "c", "i", raw(`{"a":null}`), IfExists())
	c.DeleteAsync(ctx, "g", "c", "i", IfVersion(0))
	c.IncrAsync(ctx, "g", "c", "i", "/a/b", -5, AtLeast(-9223372036854775808), AtMost(9))
	c.IncrAsync(ctx, "g", "c", "i", "/x", 1)
	c.BatchGetAsync(ctx, "g", "c", []string{"a", "bb"})
	c.ListAsync(ctx, "g", "c", ListOptions{Owner: "o", Cursor: "cur", Limit: 1000})
	c.ListAsync(ctx, "g", "c", ListOptions{})
	want := []struct {
		op   byte
		body string
	}{
		{opPut, "01 67 01 63 01 69  01 0000000000000007  01 03 6f776e  0000000a" + hex.EncodeToString([]byte(`{"v":1.50}`))},
		{opPut, "01 67 01 63 01 69  03 0000000000000000  02 00  00000002 7b7d"},
		{opPatch, "01 67 01 63 01 69  02 0000000000000000  0000000a" + hex.EncodeToString([]byte(`{"a":null}`))},
		{opDelete, "01 67 01 63 01 69  01 0000000000000000"},
		{opIncr, "01 67 01 63 01 69  00 0000000000000000  " + fmt.Sprintf("%08x", len(`{"path":"/a/b","by":-5,"min":-9223372036854775808,"max":9}`)) + hex.EncodeToString([]byte(`{"path":"/a/b","by":-5,"min":-9223372036854775808,"max":9}`))},
		{opIncr, "01 67 01 63 01 69  00 0000000000000000  " + fmt.Sprintf("%08x", len(`{"path":"/x","by":1}`)) + hex.EncodeToString([]byte(`{"path":"/x","by":1}`))},
		{opBatchGet, "01 67 01 63 0002 01 61 02 6262"},
		{opList, "01 67 01 63 01 6f 03 637572 03e8"},
		{opList, "01 67 01 63 00 00 0000"},
	}
	fc := f.next(t)
	fc.handshake(t, helloOK{})
	for i, w := range want {
		fr := fc.mustRead(t)
		if fr.op != w.op || !bytes.Equal(fr.body, unhex(w.body)) || fr.id != uint32(i+1) {
			t.Fatalf("frame %d: %s id %d %x, want %s %s", i, opName(fr.op), fr.id, fr.body, opName(w.op), strings.Join(strings.Fields(w.body), ""))
		}
	}
}

// Shutdown waits for the requests in flight, refuses new ones, then closes.
func TestShutdownWaitsForAnswers(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c, _ := newClient(t, f.addr(), fastOpts())
	fut := c.GetAsync(ctxT(t, 5*time.Second), "default", "players", "a")
	fc := f.next(t)
	fc.handshake(t, helloOK{})
	req := fc.mustRead(t)
	done := make(chan error, 1)
	go func() { done <- c.Shutdown(ctxT(t, 5*time.Second)) }()
	time.Sleep(50 * time.Millisecond)
	if _, err := c.Get(ctxT(t, time.Second), "default", "players", "b"); !errors.Is(err, ErrClosed) {
		t.Fatalf("new request during Shutdown: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) before the answer", err)
	default:
	}
	fc.answerGet(t, req)
	if d, err := fut.Wait(); err != nil || d.ID != "a" {
		t.Fatalf("%v %v", d, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	fc.waitEOF(t, time.Second)
}
