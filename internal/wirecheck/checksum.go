package wirecheck

// Sum is the one's complement sum of b's 16-bit big-endian words (an odd
// last byte padded with zero) added to initial, folded to 16 bits with the
// end-around carry of RFC 1071. It is written the plain way, word by
// word, as a reference for tests of gopasst's own, faster summing.
func Sum(b []byte, initial uint32) uint32 {
	s := uint64(initial)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint64(b[i])<<8 | uint64(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint64(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint32(s)
}

// Checksum is the Internet checksum of b, the complement of [Sum]: for a
// header with its checksum field zero, the value to put there; over a
// datagram whose field holds a partial (pseudo-header) sum, the checksum a
// device completes.
func Checksum(b []byte) uint16 { return ^uint16(Sum(b, 0)) }
