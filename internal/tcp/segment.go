package tcp

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopasst/gopasst/internal/packet"
)

// TCP header flags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
)

// Header sizes.
const (
	hdrLen    = 20 // TCP header without options
	synOptLen = 8  // MSS (4), NOP (1), window scale (3)
	maxOptLen = 40 // the most options a header holds
	// headroom is the room in front of a payload for the largest header
	// stack built towards the guest: Ethernet, IPv6 and TCP.
	headroom = packet.EthLen + packet.IPv6Len + hdrLen
)

// noScale marks a SYN without the window scale option.
const noScale = 0xff

// segment is a decoded TCP header and its payload.
type segment struct {
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	wnd          uint16
	// mss, ws and sackOK are the SYN options: the maximum segment size
	// (0 if absent), the window scale shift (noScale if absent) and
	// SACK-permitted.
	mss     uint16
	ws      uint8
	sackOK  bool
	payload []byte
}

// seqLen is the sequence space the segment takes: its payload, and one
// for each of SYN and FIN.
func (s *segment) seqLen() uint32 {
	n := uint32(len(s.payload))
	if s.flags&flagSYN != 0 {
		n++
	}
	if s.flags&flagFIN != 0 {
		n++
	}
	return n
}

// parseResult says why a segment is refused.
type parseResult uint8

const (
	segOK        parseResult = iota
	segShort                 // shorter than its header
	segBadOffset             // data offset below 5 or beyond the segment
	segBadOption             // an option runs past the header
	segBadFlags              // SYN with FIN or RST, or no flag at all
	segBadPort               // a port of 0, which no connection has
)

// parseSegment decodes b, a TCP header and payload, into s.
func parseSegment(b []byte, s *segment) parseResult {
	if len(b) < hdrLen {
		return segShort
	}
	off := int(b[12]>>4) * 4
	if off < hdrLen || off > len(b) {
		return segBadOffset
	}
	s.sport = binary.BigEndian.Uint16(b[0:2])
	s.dport = binary.BigEndian.Uint16(b[2:4])
	if s.sport == 0 || s.dport == 0 {
		return segBadPort
	}
	s.seq = binary.BigEndian.Uint32(b[4:8])
	s.ack = binary.BigEndian.Uint32(b[8:12])
	s.flags = b[13] & 0x3f
	s.wnd = binary.BigEndian.Uint16(b[14:16])
	s.payload = b[off:]
	s.mss, s.ws, s.sackOK = 0, noScale, false
	if s.flags&flagSYN != 0 && s.flags&(flagFIN|flagRST) != 0 || s.flags&(flagSYN|flagACK|flagRST) == 0 {
		return segBadFlags
	}
	opts := b[hdrLen:off]
	for len(opts) > 0 {
		kind := opts[0]
		if kind == 0 { // end of options
			break
		}
		if kind == 1 { // no-op
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || opts[1] < 2 || int(opts[1]) > len(opts) {
			return segBadOption
		}
		l := int(opts[1])
		if s.flags&flagSYN != 0 {
			switch {
			case kind == 2 && l == 4:
				s.mss = binary.BigEndian.Uint16(opts[2:4])
			case kind == 3 && l == 3:
				s.ws = min(opts[2], 14)
			case kind == 4 && l == 2:
				s.sackOK = true
			}
		}
		opts = opts[l:]
	}
	return segOK
}

// putHeader writes a TCP header (with SYN options mss and ws when
// synOpts) at b and returns its length. The checksum is left zero.
func putHeader(b []byte, sport, dport uint16, seq, ack uint32, flags uint8, wnd uint16, synOpts bool, mss uint16, ws uint8) int {
	n := hdrLen
	if synOpts {
		n += synOptLen
	}
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint32(b[4:8], seq)
	binary.BigEndian.PutUint32(b[8:12], ack)
	b[12] = uint8(n/4) << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:16], wnd)
	b[16], b[17], b[18], b[19] = 0, 0, 0, 0
	if synOpts {
		b[20], b[21] = 2, 4
		binary.BigEndian.PutUint16(b[22:24], mss)
		b[24], b[25], b[26], b[27] = 1, 3, 3, ws
		if ws == noScale {
			b[24], b[25], b[26], b[27] = 1, 1, 1, 1
		}
	}
	return n
}

// sackPermitted is the SACK-permitted option of a SYN (RFC 2018 2),
// behind two no-ops.
var sackPermitted = [4]byte{1, 1, 4, 2}

// addOption appends opt, a whole number of 32-bit words, to the TCP
// header of hl bytes at b, and returns the header's new length.
func addOption(b []byte, hl int, opt []byte) int {
	n := hl + copy(b[hl:], opt)
	b[12] = uint8(n/4) << 4
	return n
}

// maxSACKBlocks is how many SACK blocks fit in a header without other
// options: two no-ops, kind and length, and 8 bytes a block.
const maxSACKBlocks = (maxOptLen - 4) / 8

// putSACK appends the SACK option (RFC 2018 3) with blocks, left and
// right edges, behind two no-ops to the TCP header of hl bytes at b, and
// returns the header's new length.
func putSACK(b []byte, hl int, blocks [][2]uint32) int {
	o := b[hl:]
	o[0], o[1], o[2], o[3] = 1, 1, 5, byte(2+8*len(blocks))
	for i, bl := range blocks {
		binary.BigEndian.PutUint32(o[4+8*i:], bl[0])
		binary.BigEndian.PutUint32(o[8+8*i:], bl[1])
	}
	n := hl + 4 + 8*len(blocks)
	b[12] = uint8(n/4) << 4
	return n
}

// headerSum is the sum of the pseudo-header of a TCP segment of n bytes
// from src to dst.
func headerSum(src, dst netip.Addr, n int) uint32 {
	if src.Is4() {
		return packet.PseudoSum4(src.As4(), dst.As4(), packet.ProtoTCP, n)
	}
	return packet.PseudoSum6(src.As16(), dst.As16(), packet.ProtoTCP, n)
}

// checksum returns the checksum of a TCP segment tcp (header with a zero
// checksum field, and payload) from src to dst; partial returns the
// pseudo-header's sum only, for a receiver that completes it.
func checksum(tcp []byte, src, dst netip.Addr, partial bool) uint16 {
	sum := headerSum(src, dst, len(tcp))
	if partial {
		return ^packet.Fold(sum)
	}
	return packet.Fold(packet.Sum(tcp, sum))
}

// checksumOK reports whether the segment tcp from src to dst carries a
// correct checksum.
func checksumOK(tcp []byte, src, dst netip.Addr) bool {
	return packet.Fold(packet.Sum(tcp, headerSum(src, dst, len(tcp)))) == 0
}

// Sequence number comparisons, modulo 2^32.
func seqLT(a, b uint32) bool { return int32(a-b) < 0 }
