// Package flow is the flow table: every datagram, echo request or
// connection that gopasst forwards belongs to a flow, a pair of flowsides
// joined by a translation. One table holds the flows of every protocol.
//
// # Theory of operation
//
// A flowside is one side's view of a flow as seen from where its packets
// live (its pif): the endpoint (EAddr, EPort) is the peer, the forwarding
// address (FAddr, FPort) is ours as that peer sees it. Side Ini is the side
// whose packet created the flow, side Tgt the side it was forwarded to.
//
// Every flow has a [Type] (UDP, ICMP echo, TCP, TCP splice): the protocol
// that owns it. The table knows no protocol; it keeps what every type
// shares (the two sides, their pifs and sockets, the time of the last
// traffic) and the protocol keeps what is its own, by flow index, beside
// it. A flow is born in steps, as in the reference: allocated (StateNew),
// initiating side known ([Flow.SetIni]), target side known
// ([Flow.SetTgt]), active ([Table.Activate]); only an active flow is in
// the hash, so a lookup never finds a half-made flow, and a flow that
// fails on its way is freed without ever being seen.
//
// Flows live in chunks of a growing array, so a *Flow stays valid for as long
// as the flow does, and are named by a [Ref]: an index plus the side a packet
// came from. Sides that receive packets on shared sockets (a listening
// socket, or the tap) are entered in a hash map keyed by the pif and the
// four address and port fields, and the flow's type, so that flows of
// two protocols with the same addresses and ports never meet; a packet on such a socket is looked up there
// in O(1). Sides behind a socket of their own (a connected reply socket)
// need no entry: the socket already names the flow.
//
// Freed slots are reused in LIFO order and carry a generation number, so an
// event that still names an old flow (a stale epoll event) can be told apart
// from the flow that now occupies the slot.
//
// The protocols share the table from the tap reader and the host event
// loop: whoever touches it holds [Table.Mu].
package flow

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

// Type says which protocol owns a flow.
type Type uint8

// Flow types.
const (
	TypeNone      Type = iota // free slot
	TypeUDP                   // UDP datagrams
	TypeICMP                  // ICMP or ICMPv6 echo (ping)
	TypeTCP                   // a TCP connection through the tap
	TypeTCPSplice             // a TCP connection socket to socket (pasta)
	NumTypes                  // number of types
)

var typeNames = [NumTypes]string{"none", "UDP", "ICMP", "TCP", "TCP splice"}

// String names the type for logs.
func (t Type) String() string {
	if t < NumTypes {
		return typeNames[t]
	}
	return "unknown"
}

// State is a flow's step in its life.
type State uint8

// Flow states, in the order a flow goes through them.
const (
	StateFree   State = iota // not in use
	StateNew                 // allocated, nothing known
	StateIni                 // initiating side known
	StateTgt                 // target side known
	StateActive              // in the hash, carrying traffic
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

// Flow is what every type of flow has: two sides, the sockets that carry
// them and the time of their last traffic.
type Flow struct {
	Type  Type
	State State
	PIF   [2]PIF
	Side  [2]Side
	// Sock holds, per side, the socket that sends to (and for reply sockets
	// and connections receives from) that side's endpoint, or -1.
	Sock [2]int
	// Connected is set for sides whose socket is connected to the endpoint.
	Connected [2]bool
	// Seen is set once traffic came from that side's endpoint.
	Seen [2]bool
	// LastSeen is the time of the last traffic, in monotonic nanoseconds.
	LastSeen int64
	// Gen changes every time the slot is reused.
	Gen   uint32
	inUse bool
}

// InUse reports whether the slot holds a live flow.
func (f *Flow) InUse() bool { return f.inUse }

// String describes the flow for logs.
func (f *Flow) String() string {
	return fmt.Sprintf("%s %s [%s] => %s [%s]", f.Type, f.PIF[Ini], f.Side[Ini], f.PIF[Tgt], f.Side[Tgt])
}

// SetIni records the flow's type and initiating side.
func (f *Flow) SetIni(t Type, pif PIF, s Side) {
	f.Type, f.PIF[Ini], f.Side[Ini], f.State = t, pif, s, StateIni
}

// SetTgt records the flow's target side.
func (f *Flow) SetTgt(pif PIF, s Side) {
	f.PIF[Tgt], f.Side[Tgt], f.State = pif, s, StateTgt
}

// Key is what a flowside is looked up by. For ICMP echo flows the ports
// are the echo identifiers.
type Key struct {
	EAddr, FAddr netip.Addr
	EPort, FPort uint16
	PIF          PIF
	Type         Type
}

// KeyOf is the hash key of a side of f.
func KeyOf(f *Flow, side uint8) Key {
	s := &f.Side[side]
	return Key{Type: f.Type, PIF: f.PIF[side], EAddr: s.EAddr, FAddr: s.FAddr, EPort: s.EPort, FPort: s.FPort}
}

// ErrFull is returned by Alloc when the table holds its maximum of flows.
var ErrFull = errors.New("flow table full")

const chunkSize = 1024

// Table holds flows and the hash of their looked-up sides.
type Table struct {
	// Mu serialises every use of the table and its flows.
	Mu     sync.Mutex
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

// Alloc takes a free slot, marks it in use (StateNew) with no sockets and
// returns it. The flow counts towards the table's maximum from here on.
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
	*f = Flow{Gen: gen, inUse: true, State: StateNew, Sock: [2]int{-1, -1}}
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
	f.State, f.Type = StateFree, TypeNone
	f.Sock = [2]int{-1, -1}
	t.active--
	t.free = append(t.free, i)
}

// Activate makes flow i, whose sides are known (StateTgt), active, and
// enters the given sides in the hash: those whose packets arrive on
// shared sockets. It fails, entering none, if another flow owns one of
// their keys; the caller then frees the flow.
func (t *Table) Activate(i int32, sides ...uint8) error {
	f := t.At(i)
	if f.State != StateTgt {
		return fmt.Errorf("flow %d: activated in state %d", i, f.State)
	}
	for _, side := range sides {
		if old, ok := t.hash[KeyOf(f, side)]; ok && old.Index != i {
			return fmt.Errorf("flow side already exists: %v", old)
		}
	}
	for _, side := range sides {
		t.hash[KeyOf(f, side)] = Ref{Index: i, Side: side}
	}
	f.State = StateActive
	return nil
}

// Lookup finds the flow side with key k.
func (t *Table) Lookup(k Key) (Ref, bool) {
	r, ok := t.hash[k]
	return r, ok
}

// Each calls fn for every live flow (of any state).
func (t *Table) Each(fn func(i int32, f *Flow)) {
	for i := int32(0); i < t.next; i++ {
		if f := t.At(i); f.inUse {
			fn(i, f)
		}
	}
}

// EachOf calls fn for every active flow of type typ.
func (t *Table) EachOf(typ Type, fn func(i int32, f *Flow)) {
	for i := int32(0); i < t.next; i++ {
		if f := t.At(i); f.inUse && f.Type == typ && f.State == StateActive {
			fn(i, f)
		}
	}
}
