package wirecheck

// Checksum is the Internet checksum of b (RFC 1071): the complement of the
// one's complement sum of its 16-bit big-endian words, an odd last byte
// padded with zero. It is written the plain way, word by word, as a
// reference for tests of gopasst's own, faster summing, and of checksums
// the kernel completes (a partial checksum field inside b included).
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
