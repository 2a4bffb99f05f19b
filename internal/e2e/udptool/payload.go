package main

import (
	"bytes"
	"encoding/binary"
)

// headerLen is the length of the datagram header.
const headerLen = 16

// magic starts every datagram header.
const magic = "GPUT"

// fillPayload writes the deterministic content of datagram seq of flow into
// buf; the datagram length is len(buf).
func fillPayload(buf []byte, flow, seq uint32) {
	var hdr [headerLen]byte
	copy(hdr[0:4], magic)
	binary.BigEndian.PutUint32(hdr[4:8], flow)
	binary.BigEndian.PutUint32(hdr[8:12], seq)
	binary.BigEndian.PutUint16(hdr[12:14], uint16(len(buf)))
	binary.BigEndian.PutUint16(hdr[14:16], headerCheck(flow, seq, uint16(len(buf))))
	n := copy(buf, hdr[:])
	if n < len(buf) {
		fillPattern(buf[n:], flow, seq, uint32(len(buf)))
	}
}

// headerCheck protects the header fields, so that a corrupted flow id or
// sequence number is detected even when there is no pattern after them.
func headerCheck(flow, seq uint32, size uint16) uint16 {
	h := flow*0x9E3779B1 ^ seq*0x85EBCA77 ^ uint32(size)*0xC2B2AE3D
	h ^= h >> 15
	h *= 0x2C1B3C6D
	h ^= h >> 12
	return uint16(h) ^ uint16(h>>16)
}

// fillPattern fills b with a xorshift32 stream seeded from the header values.
func fillPattern(b []byte, flow, seq, size uint32) {
	x := flow*0x9E3779B1 ^ seq*0x85EBCA77 ^ size*0xC2B2AE3D ^ 0x27D4EB2F
	if x == 0 {
		x = 1
	}
	var w [4]byte
	for i := 0; i < len(b); i += 4 {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		binary.LittleEndian.PutUint32(w[:], x)
		copy(b[i:], w[:])
	}
}

// verifyPayload checks b against the send pattern. For datagrams of at
// least headerLen bytes it returns the flow and sequence number found in the
// header (-1 if the header is damaged). Shorter datagrams are a prefix of
// the header: only the magic bytes they contain can be checked, and flow
// and seq are -1.
func verifyPayload(b []byte) (flow, seq int64, ok bool) {
	if len(b) < headerLen {
		m := min(len(b), len(magic))
		return -1, -1, bytes.Equal(b[:m], []byte(magic[:m]))
	}
	f := binary.BigEndian.Uint32(b[4:8])
	s := binary.BigEndian.Uint32(b[8:12])
	size := binary.BigEndian.Uint16(b[12:14])
	if string(b[0:4]) != magic || int(size) != len(b) || binary.BigEndian.Uint16(b[14:16]) != headerCheck(f, s, size) {
		return -1, -1, false
	}
	want := make([]byte, len(b))
	fillPayload(want, f, s)
	return int64(f), int64(s), bytes.Equal(b, want)
}
