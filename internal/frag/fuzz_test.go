package frag

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/packet"
)

// A fuzz operation is fuzzOpLen bytes:
//
//	0     flags: fuzzV6, fuzzICMP, fuzzMore, fuzzRelease, fuzzUDPHeader,
//	      and two bits of clock advance (fuzzClockShift)
//	1     identification
//	2-3   offset in units of 8 bytes (13 bits)
//	4-5   data length (12 bits)
//	6     data pattern
const (
	fuzzOpLen      = 7
	fuzzV6         = 1 << 0 // IPv6 addresses
	fuzzICMP       = 1 << 1 // protocol ICMP instead of UDP (part of the IPv4 key)
	fuzzMore       = 1 << 2 // more fragments follow
	fuzzRelease    = 1 << 3 // Release after this fragment
	fuzzUDPHeader  = 1 << 4 // at offset 0: a UDP header with length 8, so the datagram parses
	fuzzClockShift = 5      // bits 5-6: clock advance before the fragment
)

// fuzzAdvance is how far the clock moves before a fragment.
var fuzzAdvance = [4]time.Duration{0, time.Second, Timeout / 2, Timeout + time.Second}

type modelFrag struct {
	from, to int
	data     []byte
}

type modelSlot struct {
	frags   []modelFrag
	total   int
	started time.Time
	proto   uint8 // of the last fragment at offset 0
}

// completed is a datagram Add returned, with what it must hold until
// Release.
type completed struct {
	p    *packet.Parsed
	want []byte
}

// fuzzOps encodes operations for the seeds.
func fuzzOps(ops ...[fuzzOpLen]byte) []byte {
	var b []byte
	for _, o := range ops {
		b = append(b, o[:]...)
	}
	return b
}

// op builds one operation.
func op(flags, id byte, off8, n int, pattern byte) [fuzzOpLen]byte {
	return [fuzzOpLen]byte{flags, id, byte(off8 >> 8), byte(off8), byte(n >> 8), byte(n), pattern}
}

// FuzzReassemble runs a sequence of fragments described by the fuzzer
// through a Reassembler and through a plain model of the rules in the
// package documentation (one slot per name, at most MaxPending of them,
// MaxFragments fragments and MaxDatagram bytes each; exact duplicates
// ignored, any other overlap, a length or offset past the end, or a
// non-final fragment that is not a multiple of 8, or data beyond the
// last fragment drops the datagram;
// expiry after Timeout). Every result must be the model's; a completed
// datagram must hold exactly the bytes of its fragments, at their
// offsets, and keep them until Release; memory stays bounded by the
// slots in use.
func FuzzReassemble(f *testing.F) {
	f.Add(fuzzOps(op(fuzzMore|fuzzUDPHeader, 1, 0, 16, 1), op(0, 1, 2, 5, 2)))
	f.Add(fuzzOps(op(fuzzV6|fuzzMore|fuzzUDPHeader, 1, 0, 1448, 1), op(fuzzV6|fuzzMore, 1, 181, 1448, 2), op(fuzzV6|fuzzRelease, 1, 362, 100, 3)))
	f.Add(fuzzOps(op(0, 9, 1, 8, 0), op(fuzzMore, 9, 0, 8, 1), op(fuzzMore, 9, 0, 8, 1), op(fuzzMore, 9, 0, 16, 2)))
	f.Add(fuzzOps(op(fuzzMore, 3, 8189, 8, 0), op(0, 3, 8190, 4095, 0), op(fuzzMore|fuzzICMP, 3, 0, 7, 0)))
	f.Add(fuzzOps(op(fuzzMore, 4, 0, 8, 0), op(3<<fuzzClockShift, 4, 1, 8, 0), op(2<<fuzzClockShift|fuzzMore, 5, 0, 8, 0)))
	var many []byte
	for id := range MaxPending + 2 {
		o := op(fuzzMore, byte(id), 0, 8, byte(id))
		many = append(many, o[:]...)
	}
	f.Add(many)
	// One Reassembler for all inputs, emptied in between: its slots'
	// buffers are reused, as in a long run, so data left in them by
	// earlier datagrams must not show through.
	r := New()
	var now time.Time
	r.now = func() time.Time { return now }
	maxDone := 0
	f.Fuzz(func(t *testing.T, ops []byte) {
		r.Release()
		for _, s := range r.pending {
			r.drop(s)
		}
		now = time.Unix(1e9, 0)
		model := map[key]*modelSlot{}
		var done []completed
		for i := 0; i+fuzzOpLen <= len(ops); i += fuzzOpLen {
			o := ops[i : i+fuzzOpLen]
			flags := o[0]
			now = now.Add(fuzzAdvance[flags>>fuzzClockShift&3])
			p := packet.Parsed{Src4: src4, Dst4: dst4, Proto: packet.ProtoUDP, Fragment: true,
				FragMore: flags&fuzzMore != 0, FragID: uint32(o[1]),
				FragOffset: int(binary.BigEndian.Uint16(o[2:4])&0x1fff) * 8}
			if flags&fuzzV6 != 0 {
				p.Src4, p.Dst4, p.FragID = src6, dst6, uint32(o[1])<<24|0xabcdef
			}
			if flags&fuzzICMP != 0 {
				p.Proto = packet.ProtoICMP
			}
			data := make([]byte, binary.BigEndian.Uint16(o[4:6])&0x0fff)
			for j := range data {
				data[j] = byte(i*7 + j*13 + int(o[6]))
			}
			if flags&fuzzUDPHeader != 0 && p.FragOffset == 0 && len(data) >= packet.UDPLen {
				binary.BigEndian.PutUint16(data[4:6], packet.UDPLen)
			}
			p.L4 = data

			want, wantData := modelAdd(model, &p, now)
			got, res := r.Add(&p)
			if res != want {
				t.Fatalf("op %d (%x): %v, model says %v", i/fuzzOpLen, o, res, want)
			}
			if res == Complete {
				if got == nil || got.Fragment || got.Src4 != p.Src4 || got.Dst4 != p.Dst4 || !bytes.Equal(got.L4, wantData) {
					t.Fatalf("op %d: completed datagram differs from its fragments", i/fuzzOpLen)
				}
				if got.Proto == packet.ProtoUDP && (len(got.Payload) != int(binary.BigEndian.Uint16(got.L4[4:6]))-packet.UDPLen ||
					got.SrcPort != binary.BigEndian.Uint16(got.L4[0:2])) {
					t.Fatalf("op %d: UDP fields of the completed datagram", i/fuzzOpLen)
				}
				done = append(done, completed{got, wantData})
			} else if got != nil {
				t.Fatalf("op %d: %v with a datagram", i/fuzzOpLen, res)
			}
			for _, c := range done {
				if !bytes.Equal(c.p.L4, c.want) {
					t.Fatalf("op %d: a completed datagram changed before Release", i/fuzzOpLen)
				}
			}
			if r.Pending() != len(model) {
				t.Fatalf("op %d: %d pending, model has %d", i/fuzzOpLen, r.Pending(), len(model))
			}
			maxDone = max(maxDone, len(r.done))
			if slots := len(r.pending) + len(r.free) + len(r.done); slots > MaxPending+maxDone {
				t.Fatalf("op %d: %d slots allocated", i/fuzzOpLen, slots)
			}
			if flags&fuzzRelease != 0 {
				r.Release()
				done = done[:0]
			}
		}
	})
}

// modelAdd applies fragment p to the model at time now and returns the
// result Add must give and, for Complete, the datagram's bytes.
func modelAdd(model map[key]*modelSlot, p *packet.Parsed, now time.Time) (Result, []byte) {
	for k, s := range model {
		if now.Sub(s.started) > Timeout {
			delete(model, k)
		}
	}
	k := key{src: p.Src4, dst: p.Dst4, id: p.FragID}
	if p.Src4.Is4() {
		k.proto = p.Proto
	}
	s := model[k]
	if s == nil {
		if len(model) >= MaxPending {
			return Full, nil
		}
		s = &modelSlot{total: -1, started: now}
		model[k] = s
	}
	from, to := p.FragOffset, p.FragOffset+len(p.L4)
	if to > MaxDatagram || len(s.frags) >= MaxFragments || !p.FragMore && s.total >= 0 && s.total != to {
		delete(model, k)
		return TooBig, nil
	}
	for _, fr := range s.frags {
		if from < fr.to && fr.from < to {
			if from == fr.from && to == fr.to {
				return Duplicate, nil
			}
			delete(model, k)
			return Overlap, nil
		}
	}
	if s.total >= 0 && to > s.total {
		delete(model, k)
		return TooBig, nil
	}
	for _, fr := range s.frags {
		if !p.FragMore && fr.to > to {
			delete(model, k)
			return TooBig, nil
		}
	}
	if p.FragMore && len(p.L4)%8 != 0 {
		delete(model, k)
		return TooBig, nil
	}
	s.frags = append(s.frags, modelFrag{from, to, bytes.Clone(p.L4)})
	if !p.FragMore {
		s.total = to
	}
	if from == 0 {
		s.proto = p.Proto
	}
	if s.total < 0 {
		return Pending, nil
	}
	// Fragments do not overlap, so they cover the datagram if their
	// lengths add up to it.
	n := 0
	for _, fr := range s.frags {
		n += fr.to - fr.from
	}
	if n < s.total {
		return Pending, nil
	}
	whole := make([]byte, s.total)
	for _, fr := range s.frags {
		copy(whole[fr.from:fr.to], fr.data)
	}
	delete(model, k)
	if s.proto == packet.ProtoUDP {
		if len(whole) < packet.UDPLen {
			return TooBig, nil
		}
		if ulen := int(binary.BigEndian.Uint16(whole[4:6])); ulen < packet.UDPLen || ulen > len(whole) {
			return TooBig, nil
		}
	}
	return Complete, whole
}
