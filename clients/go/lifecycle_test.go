package dmw

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Connection life cycle against a real server: heartbeats, reconnection,
// GOAWAY, refused handshakes, and the limits of responses.

func TestHeartbeatsKeepIdleConnectionAlive(t *testing.T) {
	t.Parallel()
	// Per the spec the server pings after 200ms of silence and closes after
	// 600ms. (The handshake_timeout stays at its default of 5 s on purpose:
	// a server build was seen to neither ping nor close an idle connection
	// before handshake_timeout had passed; the "silent" and "answering"
	// subtests catch that.)
	s := newServer(t, serverConfig{TCP: `heartbeat_interval = "200ms"
heartbeat_timeout = "600ms"`})
	const idle = 1600 * time.Millisecond // well past the silence timeout
	id := uid(t, "hb")
	setup := func(t *testing.T, opts Options) (*Client, *countingDialer) {
		c, cd := newClient(t, s.tcpAddr, opts)
		if _, err := c.Put(ctxT(t, 10*time.Second), "default", "players", id+t.Name()[len(t.Name())-3:], raw(`{"x":1}`)); err != nil {
			t.Fatal(err)
		}
		return c, cd
	}
	alive := func(t *testing.T, c *Client, cd *countingDialer) {
		if _, err := c.Get(ctxT(t, 10*time.Second), "default", "players", id+t.Name()[len(t.Name())-3:]); err != nil {
			t.Fatal(err)
		}
		if n := cd.count(); n != 1 {
			t.Fatalf("%d dials: the idle connection was closed (stats %+v)", n, c.Stats())
		}
	}
	// The default client pings when idle.
	t.Run("pinging", func(t *testing.T) {
		t.Parallel()
		c, cd := setup(t, Options{})
		if info, ok := c.ServerInfo(); !ok || info.HeartbeatInterval != 200*time.Millisecond {
			t.Fatalf("server info %+v", info)
		}
		time.Sleep(idle)
		alive(t, c, cd)
		if st := c.Stats(); st.PingsSent < 4 || st.PongsReceived < 4 {
			t.Fatalf("stats %+v", st)
		}
	})
	// A client sending no PING of its own lives by answering the server's.
	t.Run("answering", func(t *testing.T) {
		t.Parallel()
		c, cd := setup(t, Options{HeartbeatInterval: -1})
		time.Sleep(idle)
		if st := c.Stats(); st.PingsSent != 0 || st.PingsReceived < 3 || st.PongsSent < 3 {
			t.Fatalf("the server should PING an idle connection every 200ms: stats %+v", st)
		}
		alive(t, c, cd)
	})
	// Control: a client that neither pings nor answers is closed by the
	// server, which proves the timeout the others survive is real.
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		opts := Options{HeartbeatInterval: -1, HeartbeatTimeout: time.Hour}
		opts.noPong = true
		c, cd := setup(t, opts)
		time.Sleep(idle)
		if n := cd.count(); n < 2 {
			t.Fatalf("%d dials; the server should have closed the silent connection (stats %+v)", n, c.Stats())
		}
	})
}

func TestReconnectAfterServerRestart(t *testing.T) {
	t.Parallel()
	s := newServer(t, serverConfig{Grace: "2s"})
	opts := Options{ReconnectBackoffMin: 10 * time.Millisecond, ReconnectBackoffMax: 60 * time.Millisecond}
	c, cd := newClient(t, s.tcpAddr, opts)
	ctx := ctxT(t, 30*time.Second)
	id := uid(t, "r")
	if _, err := c.Put(ctx, "default", "players", id, raw(`{"gold":1}`)); err != nil {
		t.Fatal(err)
	}
	s.stop()
	d0 := cd.count()
	_, err := c.Get(ctxT(t, 300*time.Millisecond), "default", "players", id)
	var ae *AbortedError
	if !errors.As(err, &ae) || ae.Sent || !errors.Is(err, ErrClientTimeout) || ae.LastConnectError == nil {
		t.Fatalf("while the server is down: %v", err)
	}
	time.Sleep(1200 * time.Millisecond)
	attempts := cd.count() - d0
	// Backoff 10ms..60ms (jittered to 5ms..60ms) over 1.5 s: dozens of
	// attempts; uncapped doubling would make about 8, no backoff thousands.
	if attempts < 12 || attempts > 300 {
		t.Fatalf("%d connection attempts in 1.5 s", attempts)
	}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	d, err := c.Get(ctxT(t, 10*time.Second), "default", "players", id)
	if err != nil || string(d.Value) != `{"gold":1}` || d.Version != 1 {
		t.Fatalf("after restart: %v %v", d, err)
	}
	if st := c.Stats(); st.Connects != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// SIGTERM: the server sends GOAWAY, answers what it read, and closes. The
// requests in flight complete; requests it did not read are resent on the
// next connection; none is applied twice and none is lost.
func TestGoAwayOnSIGTERM(t *testing.T) {
	t.Parallel()
	s := newServer(t, serverConfig{Grace: "10s"})
	opts := Options{ReconnectBackoffMin: 10 * time.Millisecond, ReconnectBackoffMax: 50 * time.Millisecond}
	c, _ := newClient(t, s.tcpAddr, opts)
	ctx := ctxT(t, 40*time.Second)
	prefix := uid(t, "")
	const W = 8
	for w := 0; w < W; w++ {
		if _, err := c.Put(ctx, "default", "counters", fmt.Sprintf("%s%d", prefix, w), raw(`{"n":0}`)); err != nil {
			t.Fatal(err)
		}
	}
	var stop int32
	var ok [W]int64
	var lost, other int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < W; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			key := fmt.Sprintf("%s%d", prefix, w)
			for atomic.LoadInt32(&stop) == 0 {
				// Several INCRs in flight per key, queued back to back.
				futs := make([]*Future[*Document], 4)
				for i := range futs {
					futs[i] = c.IncrAsync(ctx, "default", "counters", key, "/n", 1)
				}
				for _, f := range futs {
					_, err := f.Wait()
					switch {
					case err == nil:
						atomic.AddInt64(&ok[w], 1)
					case errors.Is(err, ErrConnectionLost):
						atomic.AddInt64(&lost, 1)
						firstErr.Store(err)
					default:
						atomic.AddInt64(&other, 1)
						firstErr.Store(err)
					}
				}
			}
		}(w)
	}
	time.Sleep(300 * time.Millisecond)
	before := int64(0)
	for w := range ok {
		before += atomic.LoadInt64(&ok[w])
	}
	s.sigterm()
	s.wait(15 * time.Second)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	atomic.StoreInt32(&stop, 1)
	wg.Wait()

	st := c.Stats()
	if st.GoAways < 1 {
		t.Fatalf("no GOAWAY received (stats %+v)", st)
	}
	if lost != 0 || other != 0 {
		t.Fatalf("%d requests lost, %d failed (stats %+v): %v", lost, other, st, firstErr.Load())
	}
	total := int64(0)
	for w := 0; w < W; w++ {
		d, err := c.Get(ctx, "default", "counters", fmt.Sprintf("%s%d", prefix, w))
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`{"n":%d}`, ok[w])
		if string(d.Value) != want {
			t.Fatalf("key %d: %s after %d acknowledged INCRs (applied twice or lost)", w, d.Value, ok[w])
		}
		total += ok[w]
	}
	if before == 0 || total <= before || st.Connects != 2 {
		t.Fatalf("%d INCRs before SIGTERM, %d in all, stats %+v", before, total, st)
	}
	t.Logf("%d INCRs, %d before SIGTERM; resent after GOAWAY: %d", total, before, st.Resent)
}

func TestUnauthorized(t *testing.T) {
	t.Parallel()
	// The server keeps only the key's SHA-256 (README, Security).
	const key = "dmw_go_client_test_key_0123456789abcdef0123456789abcdef"
	digest := sha256.Sum256([]byte(key))
	s := newServer(t, serverConfig{Extra: "[auth]\nenabled = true\n[[auth.keys]]\nname = \"go\"\n" +
		"role = \"readonly\"\ngames = [\"*\"]\nsha256 = \"" + hex.EncodeToString(digest[:]) + "\""})
	_, err := Dial(ctxT(t, 5*time.Second), s.tcpAddr, Options{CredentialKind: CredentialAPIKey, Credential: "nope"})
	if se := wantCode(t, err, ErrUnauthorized); se.Local {
		t.Fatal(se)
	}
	// The right key is let in, with its role: a read-only key reads and may not write.
	ok, _ := newClient(t, s.tcpAddr, Options{CredentialKind: CredentialAPIKey, Credential: key})
	_, err = ok.Get(ctxT(t, 5*time.Second), "default", "players", "x")
	wantCode(t, err, ErrNotFound)
	_, err = ok.Put(ctxT(t, 5*time.Second), "default", "players", "x", raw(`{}`))
	wantCode(t, err, ErrForbidden)
	// Lazily: the waiting request fails with the handshake's error at once.
	c, _ := newClient(t, s.tcpAddr, Options{})
	start := time.Now()
	_, err = c.Get(ctxT(t, 5*time.Second), "default", "players", "x")
	wantCode(t, err, ErrUnauthorized)
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("took %v", el)
	}
}

// A server with the settings added by the 2026-11-30 changelog
// (responses.max_bytes, float_counters).
func TestResponseLimitsAndFloatCounters(t *testing.T) {
	t.Parallel()
	s := newServer(t, serverConfig{
		// The server requires max_bytes ≥ every collection's
		// max_document_bytes (256 KiB by default) + 512.
		Extra:       "[responses]\nmax_bytes = 300000",
		Collections: "[games.default.collections.floats]\nfloat_counters = true",
	})
	c, _ := newClient(t, s.tcpAddr, Options{})
	ctx := ctxT(t, 20*time.Second)
	t.Run("response_too_large", func(t *testing.T) {
		value := raw(`{"s":"` + strings.Repeat("x", 120000) + `"}`)
		ids := []string{uid(t, "a"), uid(t, "b"), uid(t, "c")}
		for _, id := range ids {
			if _, err := c.Put(ctx, "default", "items", id, value); err != nil {
				t.Fatal(err)
			}
		}
		p, err := c.BatchGet(ctx, "default", "items", ids[:2])
		if err != nil || len(p.Docs) != 2 {
			t.Fatalf("two documents fit: %v", err)
		}
		_, err = c.BatchGet(ctx, "default", "items", ids)
		wantCode(t, err, ErrResponseTooLarge)
		// A LIST page ends early instead, with a cursor.
		page, err := c.List(ctx, "default", "items", ListOptions{Limit: 10})
		if err != nil || len(page.Docs) >= 3 || page.NextCursor == "" {
			t.Fatalf("first page: %v, cursor %q, err %v", len(page.Docs), page.NextCursor, err)
		}
		// A transaction whose answer would be too large writes nothing.
		x := uid(t, "x")
		_, err = c.Txn(ctx, "default", PutOp("items", x, value), PutOp("items", x+"y", value), PutOp("items", x+"z", value))
		wantCode(t, err, ErrResponseTooLarge)
		if _, err := c.Get(ctx, "default", "items", x); !errors.Is(err, ErrNotFound) {
			t.Fatalf("refused transaction wrote: %v", err)
		}
	})
	t.Run("float_counters", func(t *testing.T) {
		id := uid(t, "f")
		if _, err := c.Put(ctx, "default", "floats", id, raw(`{"v":10,"i":9007199254740993}`)); err != nil {
			t.Fatal(err)
		}
		for _, by := range []string{"0.1", "0.2"} {
			if _, err := c.Txn(ctx, "default", raw(fmt.Sprintf(`{"op":"incr","collection":"floats","id":%q,"path":"/v","by":%s}`, id, by))); err != nil {
				t.Fatal(err)
			}
		}
		d, err := c.Incr(ctx, "default", "floats", id, "/i", 1)
		if err != nil || string(d.Value) != `{"v":10.299999999999999,"i":9007199254740994}` {
			t.Fatalf("float counters: %v %v", d, err)
		}
	})
}
