// Package pattern is the byte stream the TCP test tools and tests send
// and verify: byte i of the stream of seed S is byte i%8, little-endian,
// of splitmix64's finaliser over S and i/8. Any receiver can check any
// byte at any offset without state, and streams of different seeds
// differ, so a byte that lands in the wrong connection or at the wrong
// offset is caught.
package pattern

import "encoding/binary"

// mix is splitmix64's finaliser over the seed and block number: block blk
// of the stream of seed.
func mix(seed, blk uint64) uint64 {
	z := seed*0x9E3779B97F4A7C15 + blk*0xD1B54A32D192ED03 + 0x94D049BB133111EB
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// Fill writes bytes [off, off+len(b)) of the stream of seed to b.
func Fill(b []byte, seed, off uint64) {
	for len(b) > 0 {
		if off%8 == 0 && len(b) >= 8 {
			binary.LittleEndian.PutUint64(b, mix(seed, off/8))
			b, off = b[8:], off+8
			continue
		}
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], mix(seed, off/8))
		n := copy(b, w[off%8:])
		b, off = b[n:], off+uint64(n)
	}
}
