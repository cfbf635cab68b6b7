package dmw

import (
	"context"
	"errors"
	"fmt"
)

// ErrorCode is an error code of the protocol (the `code` of an ERROR frame,
// the same strings as the HTTP API). The exported Err… constants are
// ErrorCode values and serve as sentinels:
//
//	if errors.Is(err, dmw.ErrNotFound) { … }
//
// matches any *Error whose Code is "not_found", however it is wrapped. A code
// this package does not know still produces an *Error; compare its Code or
// call Known.
type ErrorCode string

// Error implements error, so an ErrorCode can be used with errors.Is.
func (c ErrorCode) Error() string { return "dmw: " + string(c) }

// Error codes of the HTTP API and of the TCP protocol.
const (
	ErrBadRequest           ErrorCode = "bad_request"            // wrong shape or type, unknown member, limits (1000 ids, 100 ops)
	ErrInvalidJSON          ErrorCode = "invalid_json"           // the body is not JSON (or nests too deep)
	ErrInvalidID            ErrorCode = "invalid_id"             // an id, owner, name or cursor breaks the id rules
	ErrNotFound             ErrorCode = "not_found"              // no such document
	ErrUnknownGame          ErrorCode = "unknown_game"           // game not configured
	ErrUnknownCollection    ErrorCode = "unknown_collection"     // collection not configured
	ErrMethodNotAllowed     ErrorCode = "method_not_allowed"     // HTTP only; listed for completeness
	ErrBoundViolation       ErrorCode = "bound_violation"        // INCR would cross min/max, or overflow 64 bits
	ErrNotANumber           ErrorCode = "not_a_number"           // INCR target is not a 64-bit integer (or its parent is missing)
	ErrVersionConflict      ErrorCode = "version_conflict"       // a version or existence precondition failed
	ErrAlreadyExists        ErrorCode = "already_exists"         // a create-only precondition failed
	ErrUnauthorized         ErrorCode = "unauthorized"           // credentials refused (HELLO); the connection closes
	ErrForbidden            ErrorCode = "forbidden"              // valid credentials that do not allow this request
	ErrRateLimited          ErrorCode = "rate_limited"           // over the caller's request rate; retry after a second
	ErrPayloadTooLarge      ErrorCode = "payload_too_large"      // value over the collection's max_document_bytes
	ErrResponseTooLarge     ErrorCode = "response_too_large"     // a BATCH_GET or TXN answer over responses.max_bytes
	ErrUnsupportedMediaType ErrorCode = "unsupported_media_type" // HTTP only; listed for completeness
	ErrInternal             ErrorCode = "internal"               // server fault: not committed, but read back before retrying
	ErrOverloaded           ErrorCode = "overloaded"             // too many requests or connections; retry later
	ErrTimeout              ErrorCode = "timeout"                // the server's store timed out: a write's outcome is unknown

	// Codes of the TCP protocol itself. The server closes the connection
	// after sending one of these.
	ErrProtocolError      ErrorCode = "protocol_error"      // also matches a *ProtocolError detected by this client
	ErrUnsupportedVersion ErrorCode = "unsupported_version" // protocol version refused
	ErrUnknownOpcode      ErrorCode = "unknown_opcode"      // opcode not in the table
	ErrFrameTooLarge      ErrorCode = "frame_too_large"     // frame body over the limit (also detected locally, see Error.Local)
)

var knownCodes = map[ErrorCode]bool{
	ErrBadRequest: true, ErrInvalidJSON: true, ErrInvalidID: true, ErrNotFound: true,
	ErrUnknownGame: true, ErrUnknownCollection: true, ErrMethodNotAllowed: true,
	ErrBoundViolation: true, ErrNotANumber: true, ErrVersionConflict: true,
	ErrAlreadyExists: true, ErrUnauthorized: true, ErrForbidden: true, ErrRateLimited: true, ErrPayloadTooLarge: true,
	ErrResponseTooLarge: true, ErrUnsupportedMediaType: true, ErrInternal: true,
	ErrOverloaded: true, ErrTimeout: true, ErrProtocolError: true,
	ErrUnsupportedVersion: true, ErrUnknownOpcode: true, ErrFrameTooLarge: true,
}

// closingCodes are the codes of protocol violations: the server answers
// the requests read before the offending frame, sends this ERROR (with the
// offending frame's id) as its last frame and closes.
var closingCodes = map[ErrorCode]bool{
	ErrProtocolError: true, ErrUnsupportedVersion: true, ErrUnknownOpcode: true, ErrFrameTooLarge: true,
}

// Error is an error answered by the server (an ERROR frame), or detected by
// this client before sending when the request could not have been encoded
// or would have broken the protocol (Local is then true and nothing was
// sent).
type Error struct {
	Code    ErrorCode // e.g. ErrNotFound; may be a code this package does not know
	Message string    // for humans; match on Code
	// OpIndex is the index of the failed op of a transaction, or -1.
	OpIndex int
	// Local is true when the client refused the request itself without
	// sending it (for instance an id longer than 255 bytes).
	Local bool
}

func (e *Error) Error() string {
	s := "dmw: " + string(e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.OpIndex >= 0 {
		s += fmt.Sprintf(" (op_index %d)", e.OpIndex)
	}
	if e.Local {
		s += " (refused by the client, not sent)"
	}
	return s
}

// Is reports whether target is the ErrorCode of e.
func (e *Error) Is(target error) bool {
	c, ok := target.(ErrorCode)
	return ok && c == e.Code
}

// Known reports whether the code is one this package knows. The spec says
// to treat an unknown code as an error of unknown kind.
func (e *Error) Known() bool { return knownCodes[e.Code] }

func localError(code ErrorCode, format string, args ...interface{}) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), OpIndex: -1, Local: true}
}

// ErrConnectionLost is matched (errors.Is) by the error of a request whose
// connection ended before its answer arrived, after the request may have
// been read by the server: its outcome is unknown (a write may or may not
// have been applied). Such requests are never resent automatically; read
// the document back before retrying a write. The error is a
// *ConnectionLostError whose Cause tells why the connection ended.
var ErrConnectionLost = errors.New("dmw: connection lost; outcome unknown")

// ConnectionLostError is the error of a request that may have been read by
// the server when its connection ended. It matches ErrConnectionLost and
// unwraps to the cause (an *Error for a connection-level ERROR such as
// `timeout` or `overloaded`, a *ProtocolError, an I/O error, …).
type ConnectionLostError struct {
	RequestID uint32
	Cause     error
}

func (e *ConnectionLostError) Error() string {
	return fmt.Sprintf("dmw: connection lost before the answer to request %d; outcome unknown: %v", e.RequestID, e.Cause)
}

// Is matches ErrConnectionLost.
func (e *ConnectionLostError) Is(target error) bool { return target == ErrConnectionLost }

// Unwrap returns the cause.
func (e *ConnectionLostError) Unwrap() error { return e.Cause }

// ProtocolError is a violation of the protocol detected by this client in
// what the server sent (bad magic, malformed body, unexpected frame, frame
// over Options.MaxAnswerFrameBytes, …). The connection is closed. It
// matches ErrProtocolError, and also ErrFrameTooLarge for a frame over
// Options.MaxAnswerFrameBytes.
type ProtocolError struct {
	Msg  string
	code ErrorCode // a more specific code, or ""
}

func (e *ProtocolError) Error() string { return "dmw: protocol error: " + e.Msg }

// Is matches ErrProtocolError (and the more specific code, if any).
func (e *ProtocolError) Is(target error) bool {
	return target == ErrProtocolError || (e.code != "" && target == e.code)
}

func protoErrorf(format string, args ...interface{}) *ProtocolError {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// ErrClosed is returned for requests made on, or pending at, a closed Client.
var ErrClosed = errors.New("dmw: client closed")

// ErrClientTimeout is matched by the error of a request whose context
// deadline (or Options.RequestTimeout) passed before its answer arrived.
// The error is a *AbortedError, which also unwraps to
// context.DeadlineExceeded.
var ErrClientTimeout = errors.New("dmw: client-side timeout")

// AbortedError is the error of a request whose context ended (deadline or
// cancellation) before its answer arrived. If Sent is false the request was
// never written to a connection and had no effect. If Sent is true it was
// written and may have been applied: its outcome is unknown.
type AbortedError struct {
	Cause error // ctx.Err(): context.DeadlineExceeded or context.Canceled
	Sent  bool
	// LastConnectError is the last connection failure when the request
	// waited for a connection that could not be established (else nil).
	LastConnectError error
}

func (e *AbortedError) Error() string {
	s := "dmw: request aborted: " + e.Cause.Error()
	if e.Sent {
		s += " (after it was sent: outcome unknown)"
	} else {
		s += " (not sent)"
	}
	if e.LastConnectError != nil {
		s += "; last connection attempt: " + e.LastConnectError.Error()
	}
	return s
}

// Is matches ErrClientTimeout when the cause is a deadline.
func (e *AbortedError) Is(target error) bool {
	return target == ErrClientTimeout && errors.Is(e.Cause, context.DeadlineExceeded)
}

// Unwrap returns the context's error.
func (e *AbortedError) Unwrap() error { return e.Cause }
