package tcp

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestHeldRandom holds random pieces of a stream (overlapping, repeated,
// some before the next byte expected) and checks, against a model of
// which bytes arrived, that what comes out of held continues the stream
// byte for byte, never past a byte that did not arrive, that the FIN
// comes out only after the last byte, that held never overlaps itself
// and keeps its byte count, and that its bounds hold.
func TestHeldRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		n := 1 + rng.IntN(20000)
		stream := make([]byte, n)
		for i := range stream {
			stream[i] = byte(rng.Uint32())
		}
		base := rng.Uint32() // wraps in some rounds
		var h held
		arrived := make([]bool, n+1) // n: the FIN
		nxt := 0                     // the next byte expected, from base
		recent := -1                 // the latest piece held
		for step := 0; step < 400 && nxt <= n; step++ {
			from := rng.IntN(n + 1)
			to := min(n, from+1+rng.IntN(3000))
			fin := to == n && rng.IntN(2) == 0
			if from >= to && !fin {
				continue
			}
			if from <= nxt {
				// In order (after a trim): the stream goes on, then
				// whatever held continues it.
				if to <= nxt && !(fin && nxt == n) {
					continue
				}
				for i := nxt; i < to; i++ {
					arrived[i] = true
				}
				if fin {
					arrived[n] = true
				}
				nxt = max(nxt, to)
				if fin && nxt == n {
					nxt = n + 1
				}
				for nxt <= n {
					b, f := h.next(base + uint32(nxt))
					if len(b) == 0 && !f {
						break
					}
					if !bytes.Equal(b, stream[nxt:nxt+len(b)]) {
						t.Fatalf("round %d: held gave %d bytes at %d that differ from the stream", round, len(b), nxt)
					}
					for i := nxt; i < nxt+len(b); i++ {
						if !arrived[i] {
							t.Fatalf("round %d: held gave byte %d, which never arrived", round, i)
						}
					}
					nxt += len(b)
					if f {
						if nxt != n || !arrived[n] {
							t.Fatalf("round %d: held gave a FIN at %d of %d", round, nxt, n)
						}
						nxt = n + 1
					}
				}
				h.advance(base + uint32(nxt))
			} else {
				if _, ok := h.add(base+uint32(from), stream[from:to], fin, base+uint32(nxt), heldTotal); ok {
					for i := from; i < to; i++ {
						arrived[i] = true
					}
					if fin {
						arrived[n] = true
					}
					if from < to {
						recent = from
					}
				}
			}
			checkSACK(t, round, &h, base, nxt, recent, arrived[:n])
			// The invariants.
			sum := 0
			for i := range h.segs {
				s := &h.segs[i]
				sum += len(s.b)
				off := int(s.seq - base)
				if off < nxt || off+len(s.b) > n {
					t.Fatalf("round %d: held [%d, %d) outside [%d, %d)", round, off, off+len(s.b), nxt, n)
				}
				if !bytes.Equal(s.b, stream[off:off+len(s.b)]) {
					t.Fatalf("round %d: held [%d, %d) differs from the stream", round, off, off+len(s.b))
				}
				if i > 0 && seqLT(s.seq, h.segs[i-1].end()) {
					t.Fatalf("round %d: held segments overlap", round)
				}
			}
			if sum != h.bytes || len(h.segs) > heldMaxSegs || h.bytes > heldMaxBytes {
				t.Fatalf("round %d: %d segments of %d bytes, counted %d", round, len(h.segs), sum, h.bytes)
			}
		}
		if got := h.release(); got < 0 || len(h.segs) != 0 || h.bytes != 0 {
			t.Fatalf("round %d: release gave %d and left %d segments", round, got, len(h.segs))
		}
	}
}

// checkSACK checks the SACK blocks of h, with nxt the next byte
// expected (offsets from base): each block arrived whole and is bounded
// by bytes that did not (or by nxt), no two overlap, as many as fit of
// those the held bytes make, the one of the latest piece, recent, first.
func checkSACK(t *testing.T, round int, h *held, base uint32, nxt, recent int, arrived []bool) {
	t.Helper()
	var blocks [maxSACKBlocks][2]uint32
	k := h.sackBlocks(base+uint32(recent), &blocks)
	// The blocks the model has: runs of arrived bytes beyond nxt.
	var want [][2]int
	for i := nxt + 1; i < len(arrived); i++ {
		if arrived[i] && !arrived[i-1] {
			j := i
			for j < len(arrived) && arrived[j] {
				j++
			}
			want = append(want, [2]int{i, j})
			i = j
		}
	}
	if k != min(len(want), maxSACKBlocks) {
		t.Fatalf("round %d: %d SACK blocks, want %d of %v", round, k, min(len(want), maxSACKBlocks), want)
	}
	for i, b := range blocks[:k] {
		l, r := int(b[0]-base), int(b[1]-base)
		if !slices.Contains(want, [2]int{l, r}) {
			t.Fatalf("round %d: SACK block %d [%d, %d) is none of %v", round, i, l, r, want)
		}
		for _, o := range blocks[:i] {
			if o == b {
				t.Fatalf("round %d: SACK block [%d, %d) twice", round, l, r)
			}
		}
		if i == 0 && recent > nxt && arrived[recent] {
			if !(l <= recent && recent < r) {
				t.Fatalf("round %d: first SACK block [%d, %d) does not hold the latest piece at %d", round, l, r, recent)
			}
		}
	}
}

// TestHeldBounds: a segment at or before the next byte expected, or
// further beyond it than a connection may hold, or beyond the engine's
// budget, is not held; nor is a 65th segment.
func TestHeldBounds(t *testing.T) {
	var h held
	pl := make([]byte, 100)
	if _, ok := h.add(1000, pl, false, 1000, heldTotal); ok {
		t.Error("a segment at the next byte expected was held")
	}
	if _, ok := h.add(999, pl, false, 1000, heldTotal); ok {
		t.Error("a segment before the next byte expected was held")
	}
	if _, ok := h.add(1000+heldMaxBytes, pl, false, 1000, heldTotal); ok {
		t.Error("a segment too far beyond was held")
	}
	if _, ok := h.add(2000, pl, false, 1000, 99); ok {
		t.Error("a segment beyond the budget was held")
	}
	for i := range heldMaxSegs {
		if n, ok := h.add(uint32(2000+200*i), pl, false, 1000, heldTotal); !ok || n != 100 {
			t.Fatalf("segment %d: %d, %v", i, n, ok)
		}
	}
	if _, ok := h.add(uint32(2000+200*heldMaxSegs), pl, false, 1000, heldTotal); ok {
		t.Errorf("segment %d was held", heldMaxSegs+1)
	}
	// One that covers two held ones replaces them.
	if n, ok := h.add(2000, make([]byte, 300), false, 1000, heldTotal); !ok || n != 100 || len(h.segs) != heldMaxSegs-1 {
		t.Errorf("covering two: %d, %v, %d segments", n, ok, len(h.segs))
	}
	if got := h.advance(2250); got != 250 || h.bytes != 100*(heldMaxSegs-2)+50 {
		t.Errorf("advance released %d, %d left", got, h.bytes)
	}
}
