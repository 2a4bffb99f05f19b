package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/wirecheck"
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
	o.tcp = false
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

// TestStream checks that a connection's byte stream is the same whatever
// the pieces it is produced in, and differs between directions.
func TestStream(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	whole := make([]byte, 100000)
	newStream(42, 0).fill(whole)
	got := make([]byte, 0, len(whole))
	s := newStream(42, 0)
	for len(got) < len(whole) {
		k := min(len(whole)-len(got), r.IntN(20))
		b := make([]byte, k)
		s.fill(b)
		got = append(got, b...)
	}
	if !bytes.Equal(got, whole) {
		t.Fatal("the stream differs when produced in pieces")
	}
	other := make([]byte, len(whole))
	newStream(42, 1).fill(other)
	if bytes.Equal(other[:64], whole[:64]) {
		t.Fatal("both directions carry the same bytes")
	}
	s, scratch := newStream(42, 0), make([]byte, 1000)
	if !s.check(whole[:1000], scratch) || s.check(whole[1001:2001], scratch) {
		t.Fatal("check does not follow the stream")
	}
	var h, h2 tcpHeader
	h = tcpHeader{id: 7, n: 1000, m: 2000, k: 300, mode: modeServerReset}
	hb := make([]byte, tcpHdrLen)
	h.put(hb)
	if !parseHeader(hb, &h2) || h2 != h {
		t.Fatalf("header %+v came back as %+v", h, h2)
	}
	hb[20] ^= 1
	if parseHeader(hb, &h2) {
		t.Fatal("a corrupt header passes")
	}
}

// TestMalformedTCPFrames checks the injector's TCP segments: those for
// no connection are well-formed, the others are not.
func TestMalformedTCPFrames(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	seen := map[string]int{}
	for i := 0; i < 2000; i++ {
		reason, f := malformedTCPFrame(r, mac)
		seen[reason]++
		_, err := wirecheck.Check(f)
		if reason == "tcp-no-connection" && err != nil {
			t.Fatalf("%s: %v: % x", reason, err, f)
		}
		if reason != "tcp-no-connection" && err == nil {
			t.Fatalf("%s: passes the checks: % x", reason, f)
		}
	}
	for _, k := range tcpInjectReasons {
		if seen[k] == 0 {
			t.Errorf("no %s segments", k)
		}
	}
}

// TestSoakShortTCP is the TCP soak in brief, for CI: two gopassts at once,
// MTU 1500 and 65520, each under 14 s of TCP load on every path, then
// every check of a long run.
func TestSoakShortTCP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the soak needs root")
	}
	o := defaults()
	o.udp = false
	o.duration, o.interval, o.warmup = 14*time.Second, 2*time.Second, 4*time.Second
	o.rssSlack, o.rssSlackMiB = 0.5, 16
	o.race = raceBuild
	if o.race {
		o.rssSlack, o.rssSlackMiB = 1, 64
	}
	var out strings.Builder
	err := runMTUs(o, []int{1500, 0}, &out)
	t.Logf("soak report:\n%s", out.String())
	if errors.Is(err, sandbox.ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
}
