package dmw

import (
	"context"
	"errors"
	"math/rand"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// CredentialKind is the kind of credential sent in HELLO.
type CredentialKind uint8

// Credential kinds of HELLO.
const (
	CredentialNone   CredentialKind = 0
	CredentialAPIKey CredentialKind = 1
	CredentialToken  CredentialKind = 2
)

// Defaults of Options.
const (
	DefaultClientName          = "dmw-go"
	DefaultDialTimeout         = 5 * time.Second
	DefaultHandshakeTimeout    = 5 * time.Second
	DefaultRequestTimeout      = 10 * time.Second
	DefaultReconnectBackoffMin = 50 * time.Millisecond
	DefaultReconnectBackoffMax = 5 * time.Second
	// DefaultMaxAnswerFrameBytes is the largest answer frame body accepted:
	// the spec's responses.max_bytes (16 MiB of documents in a DOCS or
	// TXN_RESULT answer) plus 1 MiB for "its framing".
	DefaultMaxAnswerFrameBytes = 17 << 20

	defaultHeartbeatInterval = 30 * time.Second // the spec's default, when HELLO_OK says 0
	defaultMaxFrame          = 1052672
	defaultMaxInFlight       = 128
)

// Options configure a Client. The zero value is usable.
type Options struct {
	// ClientName is sent in HELLO (at most 65535 bytes). Default "dmw-go".
	ClientName string
	// CredentialKind and Credential are sent in HELLO: an API key
	// (CredentialAPIKey) or a JWT (CredentialToken). With the server's
	// auth.enabled = false (its default) any credential is accepted; with auth
	// on a refused one fails the handshake with ErrUnauthorized, and a request
	// the key or token may not make fails with ErrForbidden (see the server's
	// README, Security).
	CredentialKind CredentialKind
	Credential     string

	// DialTimeout bounds one TCP connection attempt. Default 5 s.
	DialTimeout time.Duration
	// HandshakeTimeout bounds the wait for HELLO_OK. Default 5 s.
	HandshakeTimeout time.Duration
	// RequestTimeout applies to a request whose context has no deadline
	// (0: 10 s; negative: none, the context alone decides).
	RequestTimeout time.Duration

	// HeartbeatInterval: the client sends PING after sending nothing for
	// this long. 0 (recommended) uses the interval announced in HELLO_OK; a
	// positive value is used when shorter than the announced one. Negative
	// disables the client's PINGs (server PINGs are still answered).
	HeartbeatInterval time.Duration
	// HeartbeatTimeout: a connection on which nothing was received for this
	// long is considered dead, closed and replaced. 0: three times the
	// heartbeat interval in use (the server's own rule for its side).
	HeartbeatTimeout time.Duration

	// ReconnectBackoffMin and ReconnectBackoffMax bound the exponential
	// backoff between connection attempts after a connection was lost or an
	// attempt failed (the delay doubles per failed attempt, with jitter,
	// up to the max). Defaults 50 ms and 5 s. After GOAWAY the client
	// reconnects at once.
	ReconnectBackoffMin time.Duration
	ReconnectBackoffMax time.Duration

	// MaxAnswerFrameBytes is the largest frame body accepted from the
	// server; a larger length is a protocol error (nothing is allocated for
	// it) and the connection is closed. Default DefaultMaxAnswerFrameBytes.
	// Raise it if the server's responses.max_bytes was raised.
	MaxAnswerFrameBytes uint32

	// MaxInFlight caps the requests written and not yet answered on the
	// connection. 0 uses the server's max_in_flight from HELLO_OK, so the
	// server's window never stalls the connection; a larger value is
	// lowered to it.
	MaxInFlight int

	// Dialer opens the TCP connection (default: a net.Dialer). Tests use it
	// to count or break connections.
	Dialer func(ctx context.Context, network, address string) (net.Conn, error)

	// Test hooks (unexported).
	firstRequestID uint32 // first request id of each connection (default 1)
	noPong         bool   // do not answer server PINGs
}

func (o Options) withDefaults() Options {
	if o.ClientName == "" {
		o.ClientName = DefaultClientName
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.ReconnectBackoffMin <= 0 {
		o.ReconnectBackoffMin = DefaultReconnectBackoffMin
	}
	if o.ReconnectBackoffMax <= 0 {
		o.ReconnectBackoffMax = DefaultReconnectBackoffMax
	}
	if o.ReconnectBackoffMax < o.ReconnectBackoffMin {
		o.ReconnectBackoffMax = o.ReconnectBackoffMin
	}
	if o.MaxAnswerFrameBytes == 0 {
		o.MaxAnswerFrameBytes = DefaultMaxAnswerFrameBytes
	}
	if o.Dialer == nil {
		d := &net.Dialer{}
		o.Dialer = d.DialContext
	}
	if o.firstRequestID == 0 {
		o.firstRequestID = 1
	}
	return o
}

// Stats are counters of a Client's life, for monitoring and tests.
type Stats struct {
	Dials         uint64 // TCP connection attempts
	Connects      uint64 // successful handshakes
	GoAways       uint64 // GOAWAY frames received
	Resent        uint64 // requests resent on a new connection because the server had not read them
	Lost          uint64 // requests failed with ErrConnectionLost
	PingsSent     uint64
	PongsReceived uint64
	PingsReceived uint64
	PongsSent     uint64
}

type stats struct {
	dials, connects, goAways, resent, lost             uint64
	pingsSent, pongsReceived, pingsReceived, pongsSent uint64
}

// ServerInfo is what the server announced in HELLO_OK.
type ServerInfo struct {
	Version           uint8
	HeartbeatInterval time.Duration
	MaxFrame          uint32 // largest request body the server accepts
	MaxInFlight       uint16
	Server            string
}

// Client is a connection to a datamiddleware server over the TCP protocol.
// It is safe for concurrent use: all goroutines share one connection, on
// which requests are pipelined and answers matched by request id. When the
// connection is lost the client reconnects with exponential backoff;
// requests the server had not read are sent again on the new connection,
// the others fail with ErrConnectionLost.
//
// Requests are written in the order they were queued: two calls made one
// after the other from one goroutine with the …Async methods (which queue
// before returning) are sent in that order, so the server's per-document
// ordering applies to them.
type Client struct {
	addr  string
	opts  Options
	stats stats

	mu          sync.Mutex
	queue       []*call // requests not yet written, in send order
	conn        *conn   // the connection taking new requests, or nil
	conns       map[*conn]struct{}
	closed      bool
	draining    bool
	lastConnErr error
	seq         uint64 // last queueing sequence number

	demandOnce sync.Once
	demand     chan struct{}
	closeCh    chan struct{}
	supDone    chan struct{}
	firstTry   chan error // result of the first connection attempt (for Dial)
}

// New returns a Client for addr ("host:port") that connects lazily, on the
// first request. It fails only for invalid options.
func New(addr string, opts Options) (*Client, error) {
	opts = opts.withDefaults()
	if len(opts.ClientName) > 0xFFFF || !utf8.ValidString(opts.ClientName) {
		return nil, errors.New("dmw: ClientName must be valid UTF-8 of at most 65535 bytes")
	}
	if len(opts.Credential) > 0xFFFF || !utf8.ValidString(opts.Credential) {
		return nil, errors.New("dmw: Credential must be valid UTF-8 of at most 65535 bytes")
	}
	if 6+len(opts.ClientName)+len(opts.Credential) > handshakeMaxBody {
		return nil, errors.New("dmw: ClientName and Credential together must fit the 4096-byte HELLO body")
	}
	if opts.CredentialKind > CredentialToken {
		return nil, errors.New("dmw: unknown CredentialKind")
	}
	c := &Client{
		addr:     addr,
		opts:     opts,
		conns:    make(map[*conn]struct{}),
		demand:   make(chan struct{}),
		closeCh:  make(chan struct{}),
		supDone:  make(chan struct{}),
		firstTry: make(chan error, 1),
	}
	go c.supervise()
	return c, nil
}

// Dial returns a Client connected to addr: it connects and completes the
// handshake before returning, and returns the error of that first attempt
// (for instance one matching ErrUnauthorized) if it fails. Later losses are
// repaired in the background.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	c, err := New(addr, opts)
	if err != nil {
		return nil, err
	}
	c.wantConnection()
	select {
	case err = <-c.firstTry:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	s := &c.stats
	return Stats{
		Dials:         atomic.LoadUint64(&s.dials),
		Connects:      atomic.LoadUint64(&s.connects),
		GoAways:       atomic.LoadUint64(&s.goAways),
		Resent:        atomic.LoadUint64(&s.resent),
		Lost:          atomic.LoadUint64(&s.lost),
		PingsSent:     atomic.LoadUint64(&s.pingsSent),
		PongsReceived: atomic.LoadUint64(&s.pongsReceived),
		PingsReceived: atomic.LoadUint64(&s.pingsReceived),
		PongsSent:     atomic.LoadUint64(&s.pongsSent),
	}
}

// ServerInfo returns what the server announced on the current connection,
// and false when there is none.
func (c *Client) ServerInfo() (ServerInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return ServerInfo{}, false
	}
	return c.conn.info, true
}

// Close closes the client at once. Requests not yet sent fail with
// ErrClosed; requests sent and not answered fail with ErrConnectionLost
// (their outcome is unknown). Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.supDone
		return nil
	}
	c.closed = true
	queue := c.queue
	c.queue = nil
	conns := make([]*conn, 0, len(c.conns))
	for cn := range c.conns {
		conns = append(conns, cn)
	}
	c.conn = nil
	c.mu.Unlock()
	close(c.closeCh)
	for _, cl := range queue {
		cl.complete(stQueued, answer{err: ErrClosed})
	}
	for _, cn := range conns {
		cn.shutdown(ErrClosed)
	}
	<-c.supDone
	return nil
}

// Shutdown stops taking new requests (they fail with ErrClosed), waits
// until every queued request has been sent and answered or ctx ends, then
// closes the client.
func (c *Client) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.draining = true
	c.mu.Unlock()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	var err error
	for {
		if c.idle() {
			break
		}
		select {
		case <-t.C:
			continue
		case <-ctx.Done():
			err = ctx.Err()
		}
		break
	}
	c.Close()
	return err
}

func (c *Client) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cl := range c.queue {
		if atomic.LoadInt32(&cl.state) == stQueued && cl.ctx.Err() == nil {
			return false
		}
	}
	for cn := range c.conns {
		if cn.inFlight() > 0 {
			return false
		}
	}
	return true
}

// wantConnection starts the first connection attempt (lazy connect).
func (c *Client) wantConnection() {
	c.demandOnce.Do(func() { close(c.demand) })
}

// enqueue queues a request for sending.
func (c *Client) enqueue(cl *call) error {
	c.mu.Lock()
	if c.closed || c.draining {
		c.mu.Unlock()
		return ErrClosed
	}
	c.seq++
	cl.seq = c.seq
	c.queue = append(c.queue, cl)
	if c.conn != nil {
		c.conn.wakeWriter()
	}
	c.mu.Unlock()
	c.wantConnection()
	return nil
}

// requeue puts requests that were taken from the queue but not read by
// the server back into it, in their original queueing order (before every
// request queued after them). resent counts them in Stats.Resent.
func (c *Client) requeue(calls []*call, resent bool) {
	if len(calls) == 0 {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		for _, cl := range calls {
			cl.complete(stQueued, answer{err: ErrClosed})
		}
		return
	}
	q := make([]*call, 0, len(calls)+len(c.queue))
	q = append(q, calls...)
	q = append(q, c.queue...)
	sort.SliceStable(q, func(i, j int) bool { return q[i].seq < q[j].seq })
	c.queue = q
	if c.conn != nil {
		c.conn.wakeWriter()
	}
	c.mu.Unlock()
	if resent {
		atomic.AddUint64(&c.stats.resent, uint64(len(calls)))
	}
}

// popFor takes up to max requests for the connection cn, which must be the
// active one. Requests whose context ended are dropped (their waiter
// reports them); the others move to stSent.
func (c *Client) popFor(cn *conn, max int) []*call {
	if max <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != cn {
		return nil
	}
	var out []*call
	i := 0
	for ; i < len(c.queue) && len(out) < max; i++ {
		cl := c.queue[i]
		c.queue[i] = nil
		if cl.ctx.Err() != nil {
			continue
		}
		if atomic.CompareAndSwapInt32(&cl.state, stQueued, stSent) {
			out = append(out, cl)
		}
	}
	c.queue = c.queue[i:]
	if len(c.queue) == 0 {
		c.queue = nil
	}
	return out
}

// failQueued fails every queued request (used when the server refuses the
// handshake: retrying would not help them).
func (c *Client) failQueued(err error) {
	c.mu.Lock()
	q := c.queue
	c.queue = nil
	c.mu.Unlock()
	for _, cl := range q {
		cl.complete(stQueued, answer{err: err})
	}
}

func (c *Client) setLastConnErr(err error) {
	c.mu.Lock()
	c.lastConnErr = err
	c.mu.Unlock()
}

// supervise owns the connection life cycle: connect on demand, reconnect
// with backoff after a loss, at once after GOAWAY.
func (c *Client) supervise() {
	defer close(c.supDone)
	select {
	case <-c.demand:
	case <-c.closeCh:
		c.firstTry <- ErrClosed
		return
	}
	first := true
	backoff := c.opts.ReconnectBackoffMin
	var delay time.Duration
	for {
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-c.closeCh:
				t.Stop()
				return
			}
		}
		cn, err := c.connect()
		if first {
			first = false
			c.firstTry <- err
		}
		if err != nil {
			c.setLastConnErr(err)
			var se *Error
			if errors.As(err, &se) && (se.Code == ErrUnauthorized || se.Code == ErrUnsupportedVersion || se.Code == ErrProtocolError) {
				// The server refused us: waiting requests would only time out.
				c.failQueued(err)
			}
			select {
			case <-c.closeCh:
				return
			default:
			}
			delay = jitter(backoff)
			backoff *= 2
			if backoff > c.opts.ReconnectBackoffMax {
				backoff = c.opts.ReconnectBackoffMax
			}
			continue
		}
		backoff = c.opts.ReconnectBackoffMin
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			cn.shutdown(ErrClosed)
			return
		}
		c.conn = cn
		c.conns[cn] = struct{}{}
		c.lastConnErr = nil
		c.mu.Unlock()
		cn.start()
		select {
		case <-cn.unusable:
		case <-c.closeCh:
			return
		}
		if cn.wentAway() {
			delay = 0
		} else {
			delay = jitter(backoff)
			backoff *= 2
			if backoff > c.opts.ReconnectBackoffMax {
				backoff = c.opts.ReconnectBackoffMax
			}
		}
	}
}

// jitter returns a delay between d/2 and d.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + time.Duration(rand.Int63n(int64(d/2)+1))
}

func (c *Client) forget(cn *conn) {
	c.mu.Lock()
	delete(c.conns, cn)
	if c.conn == cn {
		c.conn = nil
	}
	c.mu.Unlock()
}
