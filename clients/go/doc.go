// Package dmw is a client for datamiddleware's native binary TCP protocol
// (version 1, docs/protocol.md of the datamiddleware repository).
//
// A Client multiplexes every goroutine over one TCP connection: requests are
// pipelined, each gets a request id in the order its frame is written, and
// answers are matched by id. The client performs the HELLO handshake,
// sends PING when idle and answers the server's PINGs, declares a silent
// connection dead, and reconnects with capped exponential backoff. After
// GOAWAY (or when the connection ends) the requests the server never read
// are sent again on the new connection; those it may have read fail with an
// error matching ErrConnectionLost, because their outcome is unknown, and
// are never resent automatically.
//
// Document values travel as raw JSON bytes (json.RawMessage) and are never
// decoded through float64, so numbers such as 123456789012345678901234567890
// or 1.50 round-trip exactly. Counters (Incr) are int64.
//
// Errors answered by the server are *Error values carrying the protocol
// code, message and op_index; test them with errors.Is against the ErrorCode
// constants (ErrNotFound, ErrVersionConflict, …).
//
//	c, err := dmw.Dial(ctx, "127.0.0.1:7070", dmw.Options{ClientName: "game-1"})
//	if err != nil { … }
//	defer c.Close()
//	doc, err := c.Put(ctx, "default", "players", "42", json.RawMessage(`{"gold":100}`))
//	doc, err = c.Incr(ctx, "default", "players", "42", "/gold", -30, dmw.AtLeast(0))
//	doc, err = c.Get(ctx, "default", "players", "42")
//	if errors.Is(err, dmw.ErrNotFound) { … }
package dmw
