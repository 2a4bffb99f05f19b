package ctl

import (
	"encoding/binary"
	"fmt"
	"io"
)

// The gopasst extension: what pesto cannot ask for (flows, counters, an
// error for a rejected change). See the package documentation.
const (
	// extMarker, where a client would send a pif identifier, starts an
	// extension request. No pif has this identifier, so upstream passt
	// refuses the request and closes the connection.
	extMarker = 0xff
	// ExtMagic opens extension requests and replies.
	ExtMagic = "gopasst\x00"
	// ExtVersion is the extension version spoken.
	ExtVersion = 1
	// MaxArg bounds a request's argument, MaxReply a reply's text.
	MaxArg   = 4 << 10
	MaxReply = 64 << 20
)

// Op is an extension request.
type Op uint8

// Extension requests.
const (
	// OpAdd adds the rules of a port specification given as an option
	// and its argument, as on the command line ("-t 8080").
	OpAdd Op = 1
	// OpDel deletes the rules of such a specification.
	OpDel Op = 2
	// OpFlows lists the flows.
	OpFlows Op = 3
	// OpStats dumps the counters.
	OpStats Op = 4
	// OpStatus reports the outcome of the pesto update sent just before
	// on the same connection.
	OpStatus Op = 5
	numOps   Op = 6
)

// String names the request.
func (o Op) String() string {
	switch o {
	case OpAdd:
		return "add"
	case OpDel:
		return "del"
	case OpFlows:
		return "flows"
	case OpStats:
		return "stats"
	case OpStatus:
		return "status"
	}
	return fmt.Sprintf("op %d", uint8(o))
}

// Request is an extension request.
type Request struct {
	Version uint32
	Op      Op
	Arg     string
}

// extHeader is the marker (requests only), the magic, the version, the
// op or status byte and the length of what follows.
const extHeader = 8 + 4 + 1 + 4

// AppendRequest appends an extension request: the marker byte 0xff, the
// magic, the extension version (32 bits, network order), the op, the
// argument's length (32 bits) and the argument.
func AppendRequest(b []byte, q Request) ([]byte, error) {
	if len(q.Arg) > MaxArg {
		return b, protoErr("argument of %d bytes (maximum %d)", len(q.Arg), MaxArg)
	}
	b = append(b, extMarker)
	b = append(b, ExtMagic...)
	b = binary.BigEndian.AppendUint32(b, q.Version)
	b = append(b, byte(q.Op))
	b = binary.BigEndian.AppendUint32(b, uint32(len(q.Arg)))
	return append(b, q.Arg...), nil
}

// ReadRequestBody reads an extension request whose marker byte has been
// read. Unknown ops are returned as they are, for the server to refuse
// with a reply; a bad magic or an argument over MaxArg is an error.
func ReadRequestBody(r io.Reader) (Request, error) {
	var h [extHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Request{}, err
	}
	if string(h[:8]) != ExtMagic {
		return Request{}, protoErr("bad extension magic %q", h[:8])
	}
	q := Request{Version: binary.BigEndian.Uint32(h[8:]), Op: Op(h[12])}
	n := binary.BigEndian.Uint32(h[13:])
	if n > MaxArg {
		return q, protoErr("argument of %d bytes (maximum %d)", n, MaxArg)
	}
	arg := make([]byte, n)
	if _, err := io.ReadFull(r, arg); err != nil {
		return q, err
	}
	q.Arg = string(arg)
	return q, nil
}

// Reply is the server's answer to an extension request: OK and the
// output, or not OK and a one-line reason.
type Reply struct {
	Version uint32
	OK      bool
	Text    string
}

// AppendReply appends a reply: the magic, the extension version, a status
// byte (0 done, 1 refused), the text's length (32 bits) and the text.
func AppendReply(b []byte, p Reply) ([]byte, error) {
	if len(p.Text) > MaxReply {
		return b, protoErr("reply of %d bytes (maximum %d)", len(p.Text), MaxReply)
	}
	b = append(b, ExtMagic...)
	b = binary.BigEndian.AppendUint32(b, p.Version)
	status := byte(1)
	if p.OK {
		status = 0
	}
	b = append(b, status)
	b = binary.BigEndian.AppendUint32(b, uint32(len(p.Text)))
	return append(b, p.Text...), nil
}

// ReadReply reads a reply.
func ReadReply(r io.Reader) (Reply, error) {
	var h [extHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Reply{}, err
	}
	if string(h[:8]) != ExtMagic {
		return Reply{}, protoErr("bad extension magic %q in reply", h[:8])
	}
	p := Reply{Version: binary.BigEndian.Uint32(h[8:])}
	switch h[12] {
	case 0:
		p.OK = true
	case 1:
	default:
		return p, protoErr("unknown reply status %d", h[12])
	}
	n := binary.BigEndian.Uint32(h[13:])
	if n > MaxReply {
		return p, protoErr("reply of %d bytes (maximum %d)", n, MaxReply)
	}
	text := make([]byte, n)
	if _, err := io.ReadFull(r, text); err != nil {
		return p, err
	}
	p.Text = string(text)
	return p, nil
}
