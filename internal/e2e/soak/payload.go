package main

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
)

// Every datagram of at least headerLen bytes checks itself:
//
//	0:4   magic "SOAK"
//	4:12  flow id (unique per client flow)
//	12:16 sequence number within the flow
//	16:20 total length
//	20:24 CRC-32C of the whole datagram with these four bytes zero
//	24:   pseudo-random bytes seeded by flow id and sequence number
//
// A receiver verifies any datagram alone; the client also compares an
// echo byte for byte with what it sent. Shorter datagrams (1..23 bytes)
// are the first bytes of a pattern seeded the same way: only the client,
// which knows the flow and sequence number, can verify them.
const headerLen = 24

const magic = "SOAK"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fill writes datagram seq of flow into b; the datagram is len(b) bytes.
func fill(b []byte, flow uint64, seq uint32) {
	if len(b) < headerLen {
		pattern(b, flow, seq)
		return
	}
	copy(b[0:4], magic)
	binary.BigEndian.PutUint64(b[4:12], flow)
	binary.BigEndian.PutUint32(b[12:16], seq)
	binary.BigEndian.PutUint32(b[16:20], uint32(len(b)))
	binary.BigEndian.PutUint32(b[20:24], 0)
	pattern(b[headerLen:], flow, seq)
	binary.BigEndian.PutUint32(b[20:24], crc32.Checksum(b, castagnoli))
}

// pattern fills b with a xorshift64 stream seeded by flow and seq.
func pattern(b []byte, flow uint64, seq uint32) {
	x := flow*0x9E3779B97F4A7C15 ^ uint64(seq)*0xC2B2AE3D27D4EB4F ^ uint64(len(b))<<32 | 1
	var w [8]byte
	for i := 0; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(w[:], x)
		copy(b[i:], w[:])
	}
}

// Verdicts of check.
const (
	valid      = iota // a datagram of ours, intact
	unverified        // too short to carry a header
	corrupt           // carries our magic or is long enough, but fails the check
)

// check verifies a datagram alone and returns its flow and sequence
// number if it is valid.
func check(b []byte) (flow uint64, seq uint32, verdict int) {
	if len(b) < headerLen {
		return 0, 0, unverified
	}
	if string(b[0:4]) != magic || binary.BigEndian.Uint32(b[16:20]) != uint32(len(b)) {
		return 0, 0, corrupt
	}
	want := binary.BigEndian.Uint32(b[20:24])
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:20])
	c = crc32.Update(c, castagnoli, zero[:])
	c = crc32.Update(c, castagnoli, b[headerLen:])
	if c != want {
		return 0, 0, corrupt
	}
	return binary.BigEndian.Uint64(b[4:12]), binary.BigEndian.Uint32(b[12:16]), valid
}

// sameAs reports whether b is datagram seq of flow, byte for byte.
func sameAs(b []byte, flow uint64, seq uint32, scratch []byte) bool {
	want := scratch[:len(b)]
	fill(want, flow, seq)
	return bytes.Equal(b, want)
}

// randomSize draws a datagram size from 1..maxSize: mostly small, some
// larger than a 1500-byte MTU, a few near the maximum, and now and then
// one of the tiny ones that carry no header.
func randomSize(r *rand.Rand, maxSize int) int {
	var n int
	switch p := r.IntN(100); {
	case p < 5:
		n = 1 + r.IntN(headerLen-1)
	case p < 60:
		n = headerLen + r.IntN(1400-headerLen+1)
	case p < 85:
		n = 1401 + r.IntN(9000-1401+1)
	default:
		n = 9001 + r.IntN(65000-9001+1)
	}
	return min(n, maxSize)
}
