package dmw

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// States of a call.
const (
	stQueued int32 = iota // in the client's queue, not written
	stSent                // written on a connection (in its in-flight map)
	stDone                // answered, failed or abandoned
)

// answer is what a call gets back: a frame (op, body) or an error.
type answer struct {
	op   byte
	body []byte
	err  error
}

// call is one request.
type call struct {
	op     byte
	body   []byte
	ctx    context.Context
	cancel context.CancelFunc
	state  int32  // atomic
	seq    uint64 // queueing order (client-wide), kept when resent
	id     uint32 // assigned by the writer, under conn.mu
	done   chan answer
}

// complete moves the call from state from to stDone and delivers a.
func (cl *call) complete(from int32, a answer) bool {
	if atomic.CompareAndSwapInt32(&cl.state, from, stDone) {
		cl.done <- a
		return true
	}
	return false
}

var monoBase = time.Now()

func mono() int64 { return int64(time.Since(monoBase)) }

// errGoneAway is the cause of the end of a connection after GOAWAY.
type goAwayError struct{ msg string }

func (e *goAwayError) Error() string { return "server sent GOAWAY: " + e.msg }

// conn is one TCP connection after a successful handshake.
type conn struct {
	c    *Client
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	info ServerInfo

	maxInFlight  int
	pingInterval time.Duration // 0: no client PINGs
	deadAfter    time.Duration

	lastSent int64 // mono, atomic
	lastRecv int64 // mono, atomic

	wake     chan struct{} // cap 1: the writer has something to do
	dead     chan struct{} // closed by shutdown
	unusable chan struct{} // closed when no new request may use this connection

	unusableOnce sync.Once
	shutdownOnce sync.Once

	mu       sync.Mutex
	nextID   uint32
	inflight map[uint32]*call
	ctrl     [][]byte // PING/PONG frames to write
	closed   bool
	// After GOAWAY (last_request_id) or a protocol-violation ERROR (the
	// offending frame's id), requests after limit were never read by the
	// server and are sent again on a new connection.
	limitSet bool
	limit    uint32
	goaway   bool
	connErr  error // a connection-level ERROR (request id 0) or GOAWAY: the cause of the end
}

// connect dials and performs the handshake.
func (c *Client) connect() (*conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.DialTimeout)
	go func() {
		select {
		case <-c.closeCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	atomic.AddUint64(&c.stats.dials, 1)
	nc, err := c.opts.Dialer(ctx, "tcp", c.addr)
	cancel()
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	// Close() during the handshake must not wait for its timeout.
	hsDone := make(chan struct{})
	go func() {
		select {
		case <-c.closeCh:
			nc.Close()
		case <-hsDone:
		}
	}()
	cn, err := c.handshake(nc)
	close(hsDone)
	if err != nil {
		nc.Close()
		return nil, err
	}
	atomic.AddUint64(&c.stats.connects, 1)
	return cn, nil
}

// helloRequestID is the request id of HELLO (not part of the request-id
// sequence; the worked example of the spec uses 1).
const helloRequestID = 1

func encodeHello(o *Options) []byte {
	e := encoder{b: make([]byte, headerLen, headerLen+6+len(o.ClientName)+len(o.Credential))}
	e.u8(protocolVersion)
	e.str16(o.ClientName)
	e.u8(uint8(o.CredentialKind))
	e.str16(o.Credential)
	putHeader(e.b, opHello, helloRequestID, len(e.b)-headerLen)
	return e.b
}

func (c *Client) handshake(nc net.Conn) (*conn, error) {
	deadline := time.Now().Add(c.opts.HandshakeTimeout)
	nc.SetDeadline(deadline)
	if _, err := nc.Write(encodeHello(&c.opts)); err != nil {
		return nil, fmt.Errorf("dmw: sending HELLO: %w", err)
	}
	ar := &activityReader{r: nc}
	br := bufio.NewReaderSize(ar, 64<<10)
	var h [headerLen]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, fmt.Errorf("dmw: waiting for HELLO_OK: %w", err)
	}
	fh, err := parseHeader(h[:])
	if err != nil {
		return nil, err
	}
	if fh.bodyLen > handshakeMaxBody {
		return nil, protoErrorf("%s frame of %d bytes during the handshake (limit %d)", opName(fh.op), fh.bodyLen, handshakeMaxBody)
	}
	body := make([]byte, fh.bodyLen)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, fmt.Errorf("dmw: waiting for HELLO_OK: %w", err)
	}
	switch fh.op {
	case opError:
		se, err := decodeError(body)
		if err != nil {
			return nil, err
		}
		return nil, se
	case opHelloOK:
	default:
		return nil, protoErrorf("%s frame instead of HELLO_OK", opName(fh.op))
	}
	if fh.id != helloRequestID {
		return nil, protoErrorf("HELLO_OK with request id %d, HELLO had %d", fh.id, helloRequestID)
	}
	d := decoder{b: body}
	info := ServerInfo{
		Version:           d.u8("version"),
		HeartbeatInterval: time.Duration(d.u32("heartbeat_interval_ms")) * time.Millisecond,
		MaxFrame:          d.u32("max_frame"),
		MaxInFlight:       d.u16("max_in_flight"),
		Server:            d.str16("server"),
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	if info.Version != protocolVersion {
		return nil, protoErrorf("server chose protocol version %d; this client speaks %d", info.Version, protocolVersion)
	}
	nc.SetDeadline(time.Time{})

	cn := &conn{
		c:        c,
		nc:       nc,
		br:       br,
		bw:       bufio.NewWriterSize(nc, 64<<10),
		info:     info,
		wake:     make(chan struct{}, 1),
		dead:     make(chan struct{}),
		unusable: make(chan struct{}),
		inflight: make(map[uint32]*call),
		nextID:   c.opts.firstRequestID,
	}
	if cn.info.MaxFrame == 0 {
		cn.info.MaxFrame = defaultMaxFrame
	}
	cn.maxInFlight = int(info.MaxInFlight)
	if cn.maxInFlight == 0 {
		cn.maxInFlight = defaultMaxInFlight
	}
	if m := c.opts.MaxInFlight; m > 0 && m < cn.maxInFlight {
		cn.maxInFlight = m
	}
	interval := info.HeartbeatInterval
	if interval <= 0 {
		interval = defaultHeartbeatInterval
	}
	if hi := c.opts.HeartbeatInterval; hi > 0 && hi < interval {
		interval = hi
	}
	if c.opts.HeartbeatInterval >= 0 {
		cn.pingInterval = interval
	}
	cn.deadAfter = c.opts.HeartbeatTimeout
	if cn.deadAfter <= 0 {
		cn.deadAfter = 3 * interval
	}
	now := mono()
	cn.lastSent = now
	ar.last = &cn.lastRecv
	atomic.StoreInt64(ar.last, now)
	return cn, nil
}

// activityReader records when bytes last arrived (any bytes count as life,
// also in the middle of a large frame).
type activityReader struct {
	r    io.Reader
	last *int64 // mono time, atomic; nil during the handshake
}

func (a *activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 && a.last != nil {
		atomic.StoreInt64(a.last, mono())
	}
	return n, err
}

func (cn *conn) start() {
	go cn.readLoop()
	go cn.writeLoop()
	go cn.heartbeatLoop()
	cn.wakeWriter()
}

func (cn *conn) wakeWriter() {
	select {
	case cn.wake <- struct{}{}:
	default:
	}
}

func (cn *conn) markUnusable() {
	cn.unusableOnce.Do(func() { close(cn.unusable) })
}

func (cn *conn) wentAway() bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.goaway
}

func (cn *conn) inFlight() int {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return len(cn.inflight)
}

// mayHaveBeenRead reports whether the server may have read request id
// (cn.mu held).
func (cn *conn) mayHaveBeenRead(id uint32) bool {
	if !cn.limitSet {
		return true
	}
	if cn.limit == 0 { // GOAWAY with 0: no request was read
		return false
	}
	return !serialAfter(id, cn.limit)
}

// shutdown closes the connection. Requests the server did not read go back
// to the queue; the others fail with ErrConnectionLost.
func (cn *conn) shutdown(cause error) {
	cn.shutdownOnce.Do(func() {
		cn.markUnusable()
		cn.nc.Close()
		close(cn.dead)
		cn.c.forget(cn)
		cn.mu.Lock()
		cn.closed = true
		if cn.connErr != nil && !errors.Is(cause, ErrClosed) {
			cause = cn.connErr
		}
		var resend []*call
		var lost []*call
		for id, cl := range cn.inflight {
			delete(cn.inflight, id)
			if cn.mayHaveBeenRead(id) {
				lost = append(lost, cl)
			} else {
				resend = append(resend, cl)
			}
		}
		cn.mu.Unlock()
		cn.resend(resend)
		for _, cl := range lost {
			if cl.complete(stSent, answer{err: &ConnectionLostError{RequestID: cl.id, Cause: cause}}) {
				atomic.AddUint64(&cn.c.stats.lost, 1)
			}
		}
	})
}

// resend puts unread requests back in the client's queue.
func (cn *conn) resend(calls []*call) {
	back := calls[:0]
	for _, cl := range calls {
		if atomic.CompareAndSwapInt32(&cl.state, stSent, stQueued) {
			back = append(back, cl)
		}
	}
	cn.c.requeue(back, true)
}

// stopAfter handles GOAWAY (last_request_id) and a protocol-violation
// ERROR (the offending request's id): no new request goes on this
// connection and the requests after limit are sent again elsewhere.
func (cn *conn) stopAfter(limit uint32, goaway bool, cause error) {
	cn.mu.Lock()
	if cn.closed {
		cn.mu.Unlock()
		return
	}
	if !cn.limitSet {
		cn.limitSet = true
		cn.limit = limit
	}
	if goaway {
		cn.goaway = true
	}
	if cn.connErr == nil {
		cn.connErr = cause
	}
	var resend []*call
	for id, cl := range cn.inflight {
		if !cn.mayHaveBeenRead(id) {
			delete(cn.inflight, id)
			resend = append(resend, cl)
		}
	}
	empty := len(cn.inflight) == 0
	cn.mu.Unlock()
	cn.c.mu.Lock()
	if cn.c.conn == cn {
		cn.c.conn = nil
	}
	cn.c.mu.Unlock()
	cn.markUnusable()
	cn.resend(resend)
	if empty && goaway {
		// Nothing left to wait for on this connection.
		cn.shutdown(cause)
	}
}

func (cn *conn) fail(err error) { cn.shutdown(err) }

func (cn *conn) readLoop() {
	var h [headerLen]byte
	for {
		if _, err := io.ReadFull(cn.br, h[:]); err != nil {
			cn.fail(readErr(err))
			return
		}
		fh, err := parseHeader(h[:])
		if err != nil {
			cn.fail(err)
			return
		}
		if fh.bodyLen > cn.c.opts.MaxAnswerFrameBytes {
			pe := protoErrorf("%s frame of %d bytes for request %d is over MaxAnswerFrameBytes (%d)", opName(fh.op), fh.bodyLen, fh.id, cn.c.opts.MaxAnswerFrameBytes)
			pe.code = ErrFrameTooLarge
			cn.fail(pe)
			return
		}
		body := make([]byte, fh.bodyLen)
		if _, err := io.ReadFull(cn.br, body); err != nil {
			cn.fail(readErr(err))
			return
		}
		if err := cn.dispatch(fh, body); err != nil {
			cn.fail(err)
			return
		}
	}
}

func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("connection closed by the server")
	}
	return err
}

func (cn *conn) dispatch(fh frameHeader, body []byte) error {
	switch fh.op {
	case opPing:
		d := decoder{b: body}
		payload := d.u64("payload")
		if err := d.end(); err != nil {
			return err
		}
		atomic.AddUint64(&cn.c.stats.pingsReceived, 1)
		if !cn.c.opts.noPong {
			f := make([]byte, headerLen+8)
			putHeader(f, opPong, fh.id, 8)
			putU64(f[headerLen:], payload)
			cn.queueCtrl(f)
		}
		return nil
	case opPong:
		d := decoder{b: body}
		d.u64("payload")
		if err := d.end(); err != nil {
			return err
		}
		atomic.AddUint64(&cn.c.stats.pongsReceived, 1)
		return nil
	case opGoAway:
		d := decoder{b: body}
		last := d.u32("last_request_id")
		msg := d.str16("message")
		if err := d.end(); err != nil {
			return err
		}
		atomic.AddUint64(&cn.c.stats.goAways, 1)
		cn.stopAfter(last, true, &goAwayError{msg: msg})
		return nil
	case opError, opDoc, opDocs, opDone, opTxnResult:
	default:
		return protoErrorf("unexpected %s frame (request id %d)", opName(fh.op), fh.id)
	}

	var se *Error
	if fh.op == opError {
		var err error
		if se, err = decodeError(body); err != nil {
			return err
		}
		if fh.id == 0 {
			// Connection-level (timeout, overloaded, protocol_error …):
			// the server closes next.
			cn.mu.Lock()
			if cn.connErr == nil {
				cn.connErr = se
			}
			cn.mu.Unlock()
			cn.markUnusable()
			cn.c.forgetActive(cn)
			return nil
		}
	}

	cn.mu.Lock()
	cl := cn.inflight[fh.id]
	delete(cn.inflight, fh.id)
	emptyAfterGoAway := cn.goaway && len(cn.inflight) == 0
	cn.mu.Unlock()
	if cl == nil {
		return protoErrorf("%s frame for request id %d, which is not in flight", opName(fh.op), fh.id)
	}
	cn.wakeWriter() // a slot of the window is free
	if fh.op != opError && fh.op != answerOpcode(cl.op) {
		pe := protoErrorf("%s frame in answer to %s (request id %d)", opName(fh.op), opName(cl.op), fh.id)
		cl.complete(stSent, answer{err: pe})
		return pe
	}
	if se != nil {
		cl.complete(stSent, answer{err: se})
		if closingCodes[se.Code] {
			// A protocol violation: the server read nothing after this
			// request and closes after this frame.
			cn.stopAfter(fh.id, false, se)
		}
	} else {
		cl.complete(stSent, answer{op: fh.op, body: body})
	}
	if emptyAfterGoAway {
		cn.shutdown(&goAwayError{msg: "all answers received"})
	}
	return nil
}

func (c *Client) forgetActive(cn *conn) {
	c.mu.Lock()
	if c.conn == cn {
		c.conn = nil
	}
	c.mu.Unlock()
}

func putU64(b []byte, v uint64) {
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
}

func decodeError(body []byte) (*Error, error) {
	d := decoder{b: body}
	code := d.str8("code")
	msg := d.str16("message")
	idx := d.u32("op_index")
	if err := d.end(); err != nil {
		return nil, err
	}
	e := &Error{Code: ErrorCode(code), Message: msg, OpIndex: -1}
	if idx != noOpIndex {
		e.OpIndex = int(idx)
	}
	return e, nil
}

func (cn *conn) queueCtrl(f []byte) {
	cn.mu.Lock()
	if len(cn.ctrl) < 64 {
		cn.ctrl = append(cn.ctrl, f)
	}
	cn.mu.Unlock()
	cn.wakeWriter()
}

// writeLoop writes control frames and queued requests, assigning request
// ids in the order the frames are written.
func (cn *conn) writeLoop() {
	var hdr [headerLen]byte
	for {
		select {
		case <-cn.wake:
		case <-cn.dead:
			return
		}
		for {
			cn.mu.Lock()
			if cn.closed || cn.limitSet {
				// After GOAWAY or a violation the server reads nothing more.
				cn.mu.Unlock()
				return
			}
			ctrl := cn.ctrl
			cn.ctrl = nil
			room := cn.maxInFlight - len(cn.inflight)
			cn.mu.Unlock()

			calls := cn.c.popFor(cn, room)
			if len(ctrl) == 0 && len(calls) == 0 {
				break
			}
			// Refuse locally what the server would refuse as a protocol
			// violation (closing the connection for everyone).
			ok := calls[:0]
			for _, cl := range calls {
				if uint64(len(cl.body)) > uint64(cn.info.MaxFrame) {
					cl.complete(stSent, answer{err: localError(ErrFrameTooLarge,
						"%s body of %d bytes is over the server's max_frame (%d)", opName(cl.op), len(cl.body), cn.info.MaxFrame)})
					continue
				}
				ok = append(ok, cl)
			}
			calls = ok

			cn.mu.Lock()
			if cn.closed || cn.limitSet {
				cn.mu.Unlock()
				cn.resendUnwritten(calls)
				return
			}
			for _, cl := range calls {
				cl.id = cn.nextID
				cn.nextID = nextRequestID(cn.nextID)
				cn.inflight[cl.id] = cl
			}
			cn.mu.Unlock()

			for _, f := range ctrl {
				cn.bw.Write(f)
				switch f[3] {
				case opPing:
					atomic.AddUint64(&cn.c.stats.pingsSent, 1)
				case opPong:
					atomic.AddUint64(&cn.c.stats.pongsSent, 1)
				}
			}
			for _, cl := range calls {
				putHeader(hdr[:], cl.op, cl.id, len(cl.body))
				cn.bw.Write(hdr[:])
				cn.bw.Write(cl.body)
			}
			cn.nc.SetWriteDeadline(time.Now().Add(cn.deadAfter))
			if err := cn.bw.Flush(); err != nil {
				cn.fail(fmt.Errorf("dmw: write: %w", err))
				return
			}
			atomic.StoreInt64(&cn.lastSent, mono())
		}
	}
}

// resendUnwritten returns popped, never-written requests to the queue
// (they were never sent, so they do not count as resent).
func (cn *conn) resendUnwritten(calls []*call) {
	back := calls[:0]
	for _, cl := range calls {
		if atomic.CompareAndSwapInt32(&cl.state, stSent, stQueued) {
			back = append(back, cl)
		}
	}
	cn.c.requeue(back, false)
}

// heartbeatLoop sends PING when nothing was sent for the interval and
// closes the connection when nothing was received for deadAfter.
func (cn *conn) heartbeatLoop() {
	var payload uint64
	var lastPing int64
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := mono()
		recv := atomic.LoadInt64(&cn.lastRecv)
		if time.Duration(now-recv) >= cn.deadAfter {
			cn.fail(fmt.Errorf("dmw: nothing received from the server for %v (heartbeat timeout)", time.Duration(now-recv).Round(time.Millisecond)))
			return
		}
		next := recv + int64(cn.deadAfter)
		if cn.pingInterval > 0 {
			sent := atomic.LoadInt64(&cn.lastSent)
			if lastPing > sent {
				sent = lastPing
			}
			if time.Duration(now-sent) >= cn.pingInterval && !cn.stopped() {
				payload++
				f := make([]byte, headerLen+8)
				putHeader(f, opPing, 0, 8)
				putU64(f[headerLen:], payload)
				cn.queueCtrl(f)
				lastPing = now
				sent = now
			}
			if n := sent + int64(cn.pingInterval); n < next {
				next = n
			}
		}
		wait := time.Duration(next - now)
		if wait < time.Millisecond {
			wait = time.Millisecond
		}
		t.Reset(wait)
		select {
		case <-t.C:
		case <-cn.dead:
			return
		}
	}
}

func (cn *conn) stopped() bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.limitSet || cn.closed
}
