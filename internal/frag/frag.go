// Package frag reassembles IPv4 and IPv6 fragments from the guest, so a
// datagram larger than the guest's MTU reaches the host whole instead of
// being dropped.
//
// # Theory of operation
//
// A fragmented datagram is named by its source and destination addresses,
// identification and (for IPv4) protocol. The first fragment of a name
// takes a slot: a buffer large enough for the largest datagram, into which
// every fragment's data is copied at its offset, and a list of the byte
// ranges filled so far. The last fragment (no "more fragments" flag) gives
// the total length; once the ranges cover it, the datagram is complete and
// handed back as a packet.Parsed whose L4 is the slot's buffer.
//
// A guest controls everything here, so everything is bounded: at most
// MaxPending datagrams are in progress (a new name when all slots are
// taken is dropped), each may hold at most MaxFragments fragments and
// 65535 bytes, and a slot not completed within Timeout is freed.
// Overlapping fragments are a known attack (RFC 5722): a fragment that
// overlaps data already received, other than an exact duplicate, drops the
// whole datagram, as does data beyond the end the last fragment gives.
//
// Completed datagrams refer to their slot's buffer until Release, which
// the caller calls once it is done with a batch.
package frag

import (
	"net/netip"
	"sort"
	"time"

	"github.com/gopasst/gopasst/internal/packet"
)

// Limits.
const (
	MaxPending   = 64
	MaxFragments = 64
	MaxDatagram  = 65535
	Timeout      = 30 * time.Second
)

// Result says what became of a fragment.
type Result uint8

// What Add did with a fragment.
const (
	Pending   Result = iota // kept, datagram not complete yet
	Complete                // datagram complete: see the returned packet
	Duplicate               // exact copy of a fragment already held; ignored
	Overlap                 // overlapped other data: datagram dropped
	TooBig                  // beyond 65535 bytes or too many fragments: dropped
	Full                    // no free slot: fragment dropped
)

type key struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8
}

type span struct{ from, to int }

type slot struct {
	key     key
	buf     []byte
	spans   []span
	total   int // -1 until the last fragment arrived
	started time.Time
	parsed  packet.Parsed
}

// Reassembler holds the datagrams in progress. It is not safe for
// concurrent use: the tap reader owns it.
type Reassembler struct {
	pending map[key]*slot
	free    []*slot
	done    []*slot // completed, in use by the caller until Release
	now     func() time.Time
}

// New returns an empty Reassembler.
func New() *Reassembler {
	return &Reassembler{pending: make(map[key]*slot), now: time.Now}
}

// Pending is the number of datagrams in progress.
func (r *Reassembler) Pending() int { return len(r.pending) }

// Add takes the fragment p (p.Fragment set). When it completes its
// datagram, Add returns Complete and the whole datagram as a packet whose
// L4 holds the transport header and payload; for UDP its ports and payload
// are parsed. The packet is valid until Release.
func (r *Reassembler) Add(p *packet.Parsed) (*packet.Parsed, Result) {
	now := r.now()
	r.expire(now)
	k := key{src: p.Src4, dst: p.Dst4, id: p.FragID}
	if p.Src4.Is4() {
		k.proto = p.Proto
	}
	s := r.pending[k]
	if s == nil {
		if len(r.pending) >= MaxPending {
			return nil, Full
		}
		s = r.take()
		s.key, s.total, s.started, s.spans = k, -1, now, s.spans[:0]
		r.pending[k] = s
	}
	from, to := p.FragOffset, p.FragOffset+len(p.L4)
	if to > MaxDatagram || len(s.spans) >= MaxFragments || !p.FragMore && s.total >= 0 && s.total != to {
		r.drop(s)
		return nil, TooBig
	}
	for _, sp := range s.spans {
		if from < sp.to && sp.from < to {
			if from == sp.from && to == sp.to {
				return nil, Duplicate
			}
			r.drop(s)
			return nil, Overlap
		}
	}
	if s.total >= 0 && to > s.total {
		r.drop(s)
		return nil, TooBig
	}
	if !p.FragMore {
		// The last fragment: nothing received may lie beyond its end.
		for _, sp := range s.spans {
			if sp.to > to {
				r.drop(s)
				return nil, TooBig
			}
		}
	}
	// Fragments other than the last carry multiples of 8 bytes.
	if p.FragMore && len(p.L4)%8 != 0 {
		r.drop(s)
		return nil, TooBig
	}
	copy(s.buf[from:to], p.L4)
	s.spans = append(s.spans, span{from, to})
	if !p.FragMore {
		s.total = to
	}
	if from == 0 {
		// The first fragment carries the transport header: keep the
		// rest of the packet's description from it.
		s.parsed = *p
	}
	if s.total < 0 || !covered(s.spans, s.total) {
		return nil, Pending
	}
	delete(r.pending, k)
	r.done = append(r.done, s)
	out := &s.parsed
	out.Fragment, out.FragMore, out.FragOffset = false, false, 0
	out.L4 = s.buf[:s.total]
	out.Payload, out.SrcPort, out.DstPort = nil, 0, 0
	if out.Proto == packet.ProtoUDP {
		if d := packet.ParseUDP(out); d != packet.DropNone {
			return nil, TooBig
		}
	}
	return out, Complete
}

// covered reports whether spans cover [0, total).
func covered(spans []span, total int) bool {
	sort.Slice(spans, func(i, j int) bool { return spans[i].from < spans[j].from })
	at := 0
	for _, sp := range spans {
		if sp.from > at {
			return false
		}
		at = max(at, sp.to)
	}
	return at >= total
}

// Release returns the slots of completed datagrams: the packets Add
// returned are invalid afterwards.
func (r *Reassembler) Release() {
	r.free = append(r.free, r.done...)
	r.done = r.done[:0]
}

func (r *Reassembler) take() *slot {
	if n := len(r.free); n > 0 {
		s := r.free[n-1]
		r.free = r.free[:n-1]
		return s
	}
	return &slot{buf: make([]byte, MaxDatagram)}
}

func (r *Reassembler) drop(s *slot) {
	delete(r.pending, s.key)
	r.free = append(r.free, s)
}

// expire frees the slots of datagrams older than Timeout.
func (r *Reassembler) expire(now time.Time) {
	for _, s := range r.pending {
		if now.Sub(s.started) > Timeout {
			r.drop(s)
		}
	}
}
