package main

import (
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestMain lets the test binary serve as the soak's agents, which run
// os.Executable() with the "agent" subcommand.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(agentMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestPayload checks that datagrams verify themselves and that a change
// of any byte, or of the length, is caught.
func TestPayload(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	scratch := make([]byte, 65536)
	for i := 0; i < 200; i++ {
		size := randomSize(r, 65000)
		b := make([]byte, size)
		fill(b, 0x0102030405060708, uint32(i))
		if !sameAs(b, 0x0102030405060708, uint32(i), scratch) {
			t.Fatalf("size %d: not the same as itself", size)
		}
		f, s, v := check(b)
		if size < headerLen {
			if v != unverified {
				t.Fatalf("size %d: verdict %d, want unverified", size, v)
			}
			continue
		}
		if v != valid || f != 0x0102030405060708 || s != uint32(i) {
			t.Fatalf("size %d: check = %x, %d, %d", size, f, s, v)
		}
		k := r.IntN(size)
		b[k] ^= 1 << r.IntN(8)
		if _, _, v := check(b); v != corrupt {
			t.Fatalf("size %d: flipped a bit of byte %d, verdict %d", size, k, v)
		}
		b[k] ^= 0xff
		if _, _, v := check(b[:size-1]); size > headerLen && v != corrupt {
			t.Fatalf("size %d: truncated, verdict %d", size, v)
		}
	}
}

// TestSoakShort is the soak in brief, for CI: 18 s of load, then every
// check of a long run. Memory is allowed more growth than in a long run:
// the process is still warming up (its flow table and buffers grow to the
// peak load) for much of it.
func TestSoakShort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the soak needs root")
	}
	o := defaults()
	o.duration, o.interval, o.warmup = 18*time.Second, 2*time.Second, 6*time.Second
	o.rssSlack, o.rssSlackMiB = 0.5, 8
	o.race = raceBuild
	if o.race {
		// The race detector's shadow memory grows with the process.
		o.rssSlack, o.rssSlackMiB = 1, 64
	}
	var out strings.Builder
	err := run(o, &out)
	t.Logf("soak report:\n%s", out.String())
	if errors.Is(err, sandbox.ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
}
