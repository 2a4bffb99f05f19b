package packet

import "encoding/binary"

// Sum adds the bytes of b, as big-endian 16-bit words (an odd last byte is
// padded with zero), to the partial one's complement sum initial, and
// returns the new partial sum folded to 16 bits. Partial sums chain: the
// sum of a pseudo-header can be passed as initial for the transport header.
func Sum(b []byte, initial uint32) uint32 {
	acc := uint64(initial)
	for len(b) >= 32 {
		v0 := binary.BigEndian.Uint64(b[0:])
		v1 := binary.BigEndian.Uint64(b[8:])
		v2 := binary.BigEndian.Uint64(b[16:])
		v3 := binary.BigEndian.Uint64(b[24:])
		acc += v0>>32 + v0&0xffffffff + v1>>32 + v1&0xffffffff +
			v2>>32 + v2&0xffffffff + v3>>32 + v3&0xffffffff
		b = b[32:]
	}
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		acc += v>>32 + v&0xffffffff
		b = b[8:]
	}
	if len(b) >= 4 {
		acc += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return fold64(acc)
}

func fold64(acc uint64) uint32 {
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>32 + acc&0xffffffff
	s := uint32(acc)
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return s
}

// Fold turns a partial sum from [Sum] into the checksum field value (the
// one's complement of the sum).
func Fold(sum uint32) uint16 {
	sum = sum>>16 + sum&0xffff
	sum = sum>>16 + sum&0xffff
	return ^uint16(sum)
}

// PseudoSum4 is the partial sum of the IPv4 pseudo-header for a transport
// segment of length l4len.
func PseudoSum4(src, dst [4]byte, proto uint8, l4len int) uint32 {
	acc := uint64(binary.BigEndian.Uint32(src[:])) +
		uint64(binary.BigEndian.Uint32(dst[:])) +
		uint64(proto) + uint64(l4len)
	return fold64(acc)
}

// PseudoSum6 is the partial sum of the IPv6 pseudo-header for an upper-layer
// packet of length l4len.
func PseudoSum6(src, dst [16]byte, next uint8, l4len int) uint32 {
	var acc uint64
	for i := 0; i < 16; i += 4 {
		acc += uint64(binary.BigEndian.Uint32(src[i:])) +
			uint64(binary.BigEndian.Uint32(dst[i:]))
	}
	acc += uint64(l4len) + uint64(next)
	return fold64(acc)
}
