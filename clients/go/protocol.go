package dmw

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Wire constants of the TCP protocol, version 1 (docs/protocol.md).
const (
	protocolVersion = 1
	headerLen       = 16
	magic0          = 0x44 // 'D'
	magic1          = 0x4D // 'M'

	// handshakeMaxBody is the frame body limit before HELLO_OK, both ways.
	handshakeMaxBody = 4096

	// noOpIndex is the op_index of an ERROR that concerns no transaction op.
	noOpIndex = 0xFFFFFFFF
)

// Opcodes.
const (
	opHello     = 0x01
	opHelloOK   = 0x81
	opPing      = 0x02
	opPong      = 0x03
	opGoAway    = 0x82
	opGet       = 0x10
	opBatchGet  = 0x11
	opPut       = 0x12
	opPatch     = 0x13
	opDelete    = 0x14
	opList      = 0x15
	opIncr      = 0x16
	opTxn       = 0x17
	opDoc       = 0x90
	opDocs      = 0x91
	opDone      = 0x92
	opTxnResult = 0x93
	opError     = 0xFF
)

func opName(op byte) string {
	switch op {
	case opHello:
		return "HELLO"
	case opHelloOK:
		return "HELLO_OK"
	case opPing:
		return "PING"
	case opPong:
		return "PONG"
	case opGoAway:
		return "GOAWAY"
	case opGet:
		return "GET"
	case opBatchGet:
		return "BATCH_GET"
	case opPut:
		return "PUT"
	case opPatch:
		return "PATCH"
	case opDelete:
		return "DELETE"
	case opList:
		return "LIST"
	case opIncr:
		return "INCR"
	case opTxn:
		return "TXN"
	case opDoc:
		return "DOC"
	case opDocs:
		return "DOCS"
	case opDone:
		return "DONE"
	case opTxnResult:
		return "TXN_RESULT"
	case opError:
		return "ERROR"
	}
	return fmt.Sprintf("0x%02x", op)
}

// answerOpcode is the success answer of a request opcode.
func answerOpcode(req byte) byte {
	switch req {
	case opGet, opPut, opPatch, opIncr:
		return opDoc
	case opBatchGet, opList:
		return opDocs
	case opDelete:
		return opDone
	case opTxn:
		return opTxnResult
	}
	return 0
}

// putHeader writes a frame header into h (len(h) >= 16).
func putHeader(h []byte, op byte, id uint32, bodyLen int) {
	h[0] = magic0
	h[1] = magic1
	h[2] = protocolVersion
	h[3] = op
	h[4], h[5] = 0, 0 // flags
	h[6], h[7] = 0, 0 // reserved
	binary.BigEndian.PutUint32(h[8:12], id)
	binary.BigEndian.PutUint32(h[12:16], uint32(bodyLen))
}

// frameHeader is a decoded frame header.
type frameHeader struct {
	op      byte
	id      uint32
	bodyLen uint32
}

// parseHeader checks and decodes a 16-byte header (flags are ignored, as
// the spec asks of receivers).
func parseHeader(h []byte) (frameHeader, error) {
	if h[0] != magic0 || h[1] != magic1 {
		return frameHeader{}, protoErrorf("bad magic %02x %02x", h[0], h[1])
	}
	if h[2] != protocolVersion {
		return frameHeader{}, protoErrorf("frame version %d, want %d", h[2], protocolVersion)
	}
	if h[6] != 0 || h[7] != 0 {
		return frameHeader{}, protoErrorf("reserved header bytes are %02x %02x, want 0", h[6], h[7])
	}
	return frameHeader{
		op:      h[3],
		id:      binary.BigEndian.Uint32(h[8:12]),
		bodyLen: binary.BigEndian.Uint32(h[12:16]),
	}, nil
}

// encoder appends body fields. Lengths are checked by the callers
// (see checkStr8 / checkStr16) before encoding.
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *encoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) str8(s string) {
	e.u8(uint8(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) str16(s string) {
	e.u16(uint16(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) json32(j []byte) {
	e.u32(uint32(len(j)))
	e.b = append(e.b, j...)
}

// decoder reads body fields; the first failure sticks in err.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = protoErrorf("malformed body: %s", what)
	}
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail("truncated " + what)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8(what string) uint8 {
	if v := d.take(1, what); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16(what string) uint16 {
	if v := d.take(2, what); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32(what string) uint32 {
	if v := d.take(4, what); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64(what string) uint64 {
	if v := d.take(8, what); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) str(n int, what string) string {
	v := d.take(n, what)
	if d.err != nil {
		return ""
	}
	if !utf8.Valid(v) {
		d.fail(what + " is not UTF-8")
		return ""
	}
	return string(v)
}

func (d *decoder) str8(what string) string  { return d.str(int(d.u8(what)), what) }
func (d *decoder) str16(what string) string { return d.str(int(d.u16(what)), what) }

func (d *decoder) json32(what string) []byte {
	n := d.u32(what)
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(d.b)) {
		d.fail("truncated " + what)
		return nil
	}
	return d.take(int(n), what)
}

func (d *decoder) bool8(what string) bool {
	switch d.u8(what) {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail(what + " is neither 0 nor 1")
	return false
}

// end reports trailing bytes as a protocol error.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = protoErrorf("malformed body: %d trailing bytes", len(d.b))
	}
	return d.err
}

// serialAfter reports whether a comes after b in RFC 1982 serial-number
// order on 32 bits: (a − b) mod 2³² is between 1 and 2³¹ − 1.
func serialAfter(a, b uint32) bool {
	d := a - b
	return d >= 1 && d <= 1<<31-1
}

// nextRequestID returns the request id that follows id, skipping 0.
func nextRequestID(id uint32) uint32 {
	id++
	if id == 0 {
		id = 1
	}
	return id
}
