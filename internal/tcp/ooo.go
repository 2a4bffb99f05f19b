package tcp

// held keeps the guest's segments that arrive beyond a hole until it is
// filled; the package documentation ("Out of order") tells why.

// Bounds of what is held beyond holes: per connection, in segments and in
// bytes (and no further than that beyond the next expected byte), and
// for the whole engine, so that a hostile guest cannot make us hold more
// than heldTotal.
const (
	heldMaxSegs  = 64
	heldMaxBytes = 4 << 20
	heldTotal    = 16 << 20
)

// heldSeg is a copy of a segment that arrived beyond a hole: its first
// sequence number, its payload, and whether the guest's FIN follows it.
type heldSeg struct {
	seq uint32
	b   []byte
	fin bool
}

// end is the sequence number after the payload.
func (h *heldSeg) end() uint32 { return h.seq + uint32(len(h.b)) }

// held is the ordered, non-overlapping list of a connection's segments
// beyond a hole, and the bytes they hold.
type held struct {
	segs  []heldSeg
	bytes int
}

// add keeps a copy of the part of payload pl (at seq, FIN after it when
// fin) that nothing held covers yet, with rcvNxt the next byte expected
// and budget what the engine may still hold. It returns the bytes it
// took (negative if it released more than it took), or -1 and false if
// the segment does not fit the bounds.
func (h *held) add(seq uint32, pl []byte, fin bool, rcvNxt uint32, budget int) (int, bool) {
	end := seq + uint32(len(pl))
	if !seqLT(rcvNxt, seq) || end-rcvNxt > heldMaxBytes {
		return 0, false
	}
	// Where it goes: after every segment that starts before it.
	i := 0
	for i < len(h.segs) && seqLT(h.segs[i].seq, seq) {
		i++
	}
	if i > 0 {
		if p := &h.segs[i-1]; seqLT(seq, p.end()) {
			// The previous segment covers its head.
			if !seqLT(p.end(), end) {
				if fin && p.end() == end {
					p.fin = true
				}
				return 0, true
			}
			pl, seq = pl[p.end()-seq:], p.end()
		}
	}
	// Segments it covers whole are replaced; one it reaches into cuts
	// its tail.
	j := i
	freed := 0
	for j < len(h.segs) && !seqLT(end, h.segs[j].end()) {
		freed += len(h.segs[j].b)
		fin = fin || h.segs[j].fin && h.segs[j].end() == end
		j++
	}
	if j < len(h.segs) && seqLT(h.segs[j].seq, end) {
		pl, fin = pl[:h.segs[j].seq-seq], false
	}
	if len(pl) == 0 && !fin {
		return 0, true
	}
	if len(h.segs)-(j-i) >= heldMaxSegs || h.bytes-freed+len(pl) > heldMaxBytes || len(pl)-freed > budget {
		return 0, false
	}
	s := heldSeg{seq: seq, b: append([]byte(nil), pl...), fin: fin}
	switch {
	case j > i:
		h.segs[i] = s
		h.segs = append(h.segs[:i+1], h.segs[j:]...)
	default:
		h.segs = append(h.segs, heldSeg{})
		copy(h.segs[i+1:], h.segs[i:])
		h.segs[i] = s
	}
	h.bytes += len(pl) - freed
	return len(pl) - freed, true
}

// next returns the held payload that continues the stream at seq and
// whether the guest's FIN follows it, or nil and false.
func (h *held) next(seq uint32) ([]byte, bool) {
	for i := range h.segs {
		s := &h.segs[i]
		if seqLT(seq, s.seq) {
			return nil, false
		}
		if seqLT(seq, s.end()) || seq == s.end() && s.fin {
			return s.b[seq-s.seq:], s.fin
		}
	}
	return nil, false
}

// advance forgets what lies before rcvNxt, the next byte expected. It
// returns the bytes it released.
func (h *held) advance(rcvNxt uint32) int {
	freed, i := 0, 0
	for ; i < len(h.segs); i++ {
		s := &h.segs[i]
		if !seqLT(s.seq, rcvNxt) {
			break
		}
		if seqLT(rcvNxt, s.end()) {
			d := int(rcvNxt - s.seq)
			s.b, s.seq = s.b[d:], rcvNxt
			freed += d
			break
		}
		if s.fin && s.end() == rcvNxt {
			// Its data went, its FIN did not.
			freed += len(s.b)
			s.b, s.seq = nil, rcvNxt
			break
		}
		freed += len(s.b)
	}
	if i > 0 {
		n := copy(h.segs, h.segs[i:])
		clear(h.segs[n:])
		h.segs = h.segs[:n]
	}
	h.bytes -= freed
	return freed
}

// release forgets everything held and returns the bytes it released.
func (h *held) release() int {
	n := h.bytes
	clear(h.segs)
	h.segs, h.bytes = h.segs[:0], 0
	return n
}

// sackBlocks fills blocks with the ranges the held segments cover,
// adjacent ones merged: the one holding sequence number recent first
// (RFC 2018 4: the block of the most recently received segment), the
// others in order, as many as fit. It returns how many it filled.
func (h *held) sackBlocks(recent uint32, blocks *[maxSACKBlocks][2]uint32) int {
	n, found := 0, false
	for i := 0; i < len(h.segs); {
		l, r := h.segs[i].seq, h.segs[i].end()
		for i++; i < len(h.segs) && h.segs[i].seq == r; i++ {
			r = h.segs[i].end()
		}
		switch {
		case l == r: // a FIN alone
		case !found && !seqLT(recent, l) && seqLT(recent, r):
			found = true
			n = min(n, len(blocks)-1)
			copy(blocks[1:n+1], blocks[:n])
			blocks[0] = [2]uint32{l, r}
			n++
		case n < len(blocks):
			blocks[n] = [2]uint32{l, r}
			n++
		case found:
			return n
		}
	}
	return n
}
