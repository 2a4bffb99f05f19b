// Package flow is the flow table: every datagram that gopasst forwards
// belongs to a flow, a pair of flowsides joined by a translation.
//
// # Theory of operation
//
// A flowside is one side's view of a flow as seen from where its packets
// live (its pif): the endpoint (EAddr, EPort) is the peer, the forwarding
// address (FAddr, FPort) is ours as that peer sees it. Side Ini is the side
// whose packet created the flow, side Tgt the side it was forwarded to.
//
// Flows live in chunks of a growing array, so a *Flow stays valid for as long
// as the flow does, and are named by a [Ref]: an index plus the side a packet
// came from. Sides that receive packets on shared sockets (a listening
// socket, or the tap) are entered in a hash map keyed by the pif and the
// four address and port fields; a packet on such a socket is looked up there
// in O(1). Sides behind a socket of their own (a connected reply socket)
// need no entry: the socket already names the flow.
//
// Freed slots are reused in LIFO order and carry a generation number, so an
// event that still names an old flow (a stale epoll event) can be told apart
// from the flow that now occupies the slot.
//
// The table does no locking: its owner serialises access.
package flow

import (
	"errors"
	"fmt"
	"net/netip"
)

// PIF says where the packets of a flowside live.
type PIF uint8

// Packet interfaces.
const (
	PIFNone   PIF = iota // unused side
	PIFTap               // the guest or namespace, as L2 frames
	PIFHost              // sockets in the host (init) network namespace
	PIFSplice            // sockets in the namespace (pasta loopback bypass)
)

// String names the pif as the reference does in its logs.
func (p PIF) String() string {
	switch p {
	case PIFTap:
		return "TAP"
	case PIFHost:
		return "HOST"
	case PIFSplice:
		return "SPLICE"
	}
	return "NONE"
}

// Side indexes the two flowsides.
const (
	Ini = 0 // the side that initiated the flow
	Tgt = 1 // the side the flow was forwarded to
)

// Side is one flowside: the peer (endpoint) and our address as the peer sees
// it (forwarding address).
type Side struct {
	EAddr netip.Addr
	FAddr netip.Addr
	EPort uint16
	FPort uint16
}

// String formats the side as "[eaddr]:eport -> [faddr]:fport".
func (s Side) String() string {
	return fmt.Sprintf("%s -> %s", netip.AddrPortFrom(s.EAddr, s.EPort), netip.AddrPortFrom(s.FAddr, s.FPort))
}

// Ref names one side of a flow: the index of the flow and the side.
type Ref struct {
	Index int32
	Side  uint8
}

// NoRef is the Ref of no flow.
var NoRef = Ref{Index: -1}

// Valid reports whether r names a flow.
func (r Ref) Valid() bool { return r.Index >= 0 }

// Opposite is the other side of the same flow.
func (r Ref) Opposite() Ref { return Ref{Index: r.Index, Side: r.Side ^ 1} }

// Flow is one UDP flow: two sides, the sockets that carry them and the time
// of their last traffic.
type Flow struct {
	PIF  [2]PIF
	Side [2]Side
	// Sock holds, per side, the socket that sends to (and for reply sockets
	// receives from) that side's endpoint, or -1.
	Sock [2]int
	// Connected is set for sides whose socket is connected to the endpoint.
	Connected [2]bool
	// Seen is set once a datagram came from that side's endpoint.
	Seen [2]bool
	// LastSeen is the time of the last datagram, in monotonic nanoseconds.
	LastSeen int64
	// Gen changes every time the slot is reused.
	Gen   uint32
	inUse bool
}

// InUse reports whether the slot holds a live flow.
func (f *Flow) InUse() bool { return f.inUse }

// String describes the flow for logs.
func (f *Flow) String() string {
	return fmt.Sprintf("%s [%s] => %s [%s]", f.PIF[Ini], f.Side[Ini], f.PIF[Tgt], f.Side[Tgt])
}

// Key is what a flowside is looked up by.
type Key struct {
	EAddr, FAddr netip.Addr
	EPort, FPort uint16
	PIF          PIF
}

// KeyOf is the hash key of a side of f.
func KeyOf(f *Flow, side uint8) Key {
	s := &f.Side[side]
	return Key{PIF: f.PIF[side], EAddr: s.EAddr, FAddr: s.FAddr, EPort: s.EPort, FPort: s.FPort}
}

// ErrFull is returned by Alloc when the table holds its maximum of flows.
var ErrFull = errors.New("flow table full")

const chunkSize = 1024

// Table holds flows and the hash of their looked-up sides.
type Table struct {
	chunks [][]Flow
	free   []int32
	next   int32
	max    int
	active int
	hash   map[Key]Ref
}

// NewTable returns an empty table that will hold at most max flows.
func NewTable(max int) *Table {
	return &Table{max: max, hash: make(map[Key]Ref)}
}

// Len is the number of live flows.
func (t *Table) Len() int { return t.active }

// Cap is the maximum number of flows.
func (t *Table) Cap() int { return t.max }

// At returns the flow in slot i (which may be free).
func (t *Table) At(i int32) *Flow {
	return &t.chunks[i/chunkSize][i%chunkSize]
}

// Alloc takes a free slot, marks it in use with no sockets and returns it.
func (t *Table) Alloc() (int32, *Flow, error) {
	var i int32
	switch {
	case len(t.free) > 0:
		i = t.free[len(t.free)-1]
		t.free = t.free[:len(t.free)-1]
	case int(t.next) < t.max:
		i = t.next
		if int(i)/chunkSize >= len(t.chunks) {
			t.chunks = append(t.chunks, make([]Flow, chunkSize))
		}
		t.next++
	default:
		return -1, nil, ErrFull
	}
	f := t.At(i)
	gen := f.Gen + 1
	*f = Flow{Gen: gen, inUse: true, Sock: [2]int{-1, -1}}
	t.active++
	return i, f, nil
}

// Free removes the flow's hash entries and returns its slot. The caller has
// closed its sockets.
func (t *Table) Free(i int32) {
	f := t.At(i)
	if !f.inUse {
		return
	}
	for side := uint8(0); side < 2; side++ {
		k := KeyOf(f, side)
		if r, ok := t.hash[k]; ok && r.Index == i {
			delete(t.hash, k)
		}
	}
	f.inUse = false
	f.Sock = [2]int{-1, -1}
	t.active--
	t.free = append(t.free, i)
}

// Insert enters side r of its flow in the hash. It fails if another flow
// owns the same key.
func (t *Table) Insert(r Ref) error {
	k := KeyOf(t.At(r.Index), r.Side)
	if old, ok := t.hash[k]; ok && old != r {
		return fmt.Errorf("flow side already exists: %v", old)
	}
	t.hash[k] = r
	return nil
}

// Lookup finds the flow side with key k.
func (t *Table) Lookup(k Key) (Ref, bool) {
	r, ok := t.hash[k]
	return r, ok
}

// Each calls fn for every live flow.
func (t *Table) Each(fn func(i int32, f *Flow)) {
	for i := int32(0); i < t.next; i++ {
		if f := t.At(i); f.inUse {
			fn(i, f)
		}
	}
}
