//go:build linux

package icmp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
)

// Fuzz target of the echo path: frames in, ping-socket sends and frames
// out. testdata/fuzz holds any crashers.

// fuzzNS is the network namespace of one fuzzing process: a thread of its
// own, locked for good, in a new namespace with lo up and ping sockets
// allowed, that runs each input's engine (which opens its sockets there).
var fuzzNS struct {
	once sync.Once
	do   chan func()
	err  error
}

// inFuzzNS runs fn on fuzzNS's thread, setting the namespace up on first
// use.
func inFuzzNS(fn func()) error {
	fuzzNS.once.Do(func() {
		fuzzNS.do = make(chan func())
		errc := make(chan error)
		go func() {
			runtime.LockOSThread() // never unlocked
			if err := setupNetns(pingAll); err != nil {
				errc <- err
				return
			}
			errc <- nil
			for fn := range fuzzNS.do {
				fn()
			}
		}()
		fuzzNS.err = <-errc
	})
	if fuzzNS.err != nil {
		return fuzzNS.err
	}
	done := make(chan struct{})
	fuzzNS.do <- func() { defer close(done); fn() }
	<-done
	return nil
}

// echoResult is what one input did to an engine of its own.
type echoResult struct {
	err        error
	panicked   any
	stack      []byte
	flows      int // flows after HandleTap
	found      bool
	deliverErr error
	frames     [][]byte
	st         *stats.Counters
}

// echoOnce hands p, carrying msg, to a new engine, and the reply its
// flow's socket gets, if any, then releases the engine. It runs on the
// namespace's thread, so it reports rather than fails.
func echoOnce(p *packet.Parsed, msg []byte, v6 bool) (r echoResult) {
	defer func() {
		if x := recover(); x != nil {
			r.panicked, r.stack = x, debug.Stack()
		}
	}()
	tap := newFakeTap()
	cfg, err := newConfig(tap, 16)
	if err != nil {
		r.err = err
		return r
	}
	e := New(cfg)
	defer func() {
		e.Release()
		cfg.Loop.Discard()
	}()
	r.st = cfg.Stats
	e.HandleTap([]*packet.Parsed{p})
	r.flows = e.tab.Len()
	if len(msg) >= hdrLen {
		r.found, r.deliverErr = deliver(e, flowKey(v6, binary.BigEndian.Uint16(msg[4:6])), 2*time.Second)
	}
	r.frames = tap.take()
	return r
}

// maxMessage is the largest message of the family that fits one IP packet
// (IPv4) or one that a frame to the guest can carry back (IPv6: the reply
// of a larger message is an IPv6 packet of more than 65535 bytes).
func maxMessage(v6 bool) int {
	if v6 {
		return 65535 - 40
	}
	return 65535 - 20
}

// gopacketChecksumOK has gopacket verify the checksum of the ICMP or
// ICMPv6 message in frame, if it decodes one.
func gopacketChecksumOK(frame []byte) (ok, decoded bool) {
	pkt := gopacket.NewPacket(bytes.Clone(frame), layers.LayerTypeEthernet, gopacket.Default)
	var l gopacket.LayerWithChecksum
	if ic, isV4 := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); isV4 {
		l = ic
	} else if ic, isV6 := pkt.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); isV6 {
		if ic.SetNetworkLayerForChecksum(pkt.NetworkLayer()) != nil {
			return false, false
		}
		l = ic
	} else {
		return false, false
	}
	err, res := l.VerifyChecksum()
	return err == nil && res.Valid, err == nil
}

// FuzzEcho hands the engine one ICMP (v6 false) or ICMPv6 message from
// the guest to its gateway, which stands for the loopback of a network
// namespace of the test's own, whose kernel answers. With fix set the
// message's checksum is made right first, so most inputs get past it.
//
// Whether the message must be forwarded is decided here, independently
// of the engine's checks: an echo request (type 8 or 128, code 0) of at
// least 8 bytes whose checksum is right by a reference sum (which
// gopacket must agree with). If so exactly one frame reaches the guest:
// the reply, from the gateway to the guest, with the guest's identifier
// and sequence and the request's payload byte for byte, every checksum
// right as gopacket verifies it (wirecheck). Otherwise no flow is made,
// no frame goes out and exactly one drop is counted: malformed below 8
// bytes, icmp-type for other types and codes, checksum for a bad sum.
func FuzzEcho(f *testing.F) {
	for _, v6 := range []bool{false, true} {
		for _, n := range []int{0, 56, 1000} {
			payload := make([]byte, n)
			for i := range payload {
				payload[i] = byte(i)
			}
			f.Add(echoRequest(v6, 0x1234, uint16(n), payload), v6, false)
		}
		reply := uint8(echoReply4)
		if v6 {
			reply = echoReply6
		}
		f.Add(echoMessage(v6, reply, 1, 1, []byte("a reply")), v6, false)
		req := echoRequest(v6, 1, 2, []byte("truncated"))
		f.Add(req[:7], v6, false)
		f.Add(req[:4], v6, true)
		bad := bytes.Clone(req)
		bad[2] ^= 0x40
		f.Add(bad, v6, false)
		f.Add(bad, v6, true)
		odd := echoRequest(v6, 0, 0xffff, []byte("odd"))
		f.Add(odd, v6, false)
		coded := echoRequest(v6, 5, 5, nil)
		coded[1] = 1
		f.Add(coded, v6, true)
	}
	if err := inFuzzNS(func() {}); err != nil {
		f.Skipf("no network namespace of our own: %v", err)
	}
	f.Fuzz(func(t *testing.T, msg []byte, v6, fix bool) {
		if len(msg) > maxMessage(v6) {
			return
		}
		msg = bytes.Clone(msg)
		if fix && len(msg) >= 4 {
			msg[2], msg[3] = 0, 0
			binary.BigEndian.PutUint16(msg[2:4], ^uint16(refSum(msg, v6)))
		}
		valid, why := refValid(msg, v6)
		frame, err := guestFrame(msg, v6)
		if err != nil {
			t.Fatal(err)
		}
		// The reference sum against gopacket's verification.
		if ok, decoded := gopacketChecksumOK(frame); decoded && ok != (refSum(msg, v6) == 0xffff) {
			t.Fatalf("reference checksum says %v, gopacket %v", !ok, ok)
		}
		p := &packet.Parsed{}
		if d := packet.Parse(frame, p); d != packet.DropNone {
			t.Fatalf("parse: %v", d)
		}
		var r echoResult
		if err := inFuzzNS(func() { r = echoOnce(p, msg, v6) }); err != nil {
			t.Fatal(err)
		}
		if r.panicked != nil {
			t.Fatalf("panic: %v\n%s", r.panicked, r.stack)
		}
		if r.err != nil {
			t.Fatal(r.err)
		}
		ps := &r.st.ICMP
		if !valid {
			if r.flows != 0 || r.found || len(r.frames) != 0 {
				t.Fatalf("invalid message (%v): %d flows, %d frames", why, r.flows, len(r.frames))
			}
			if err := dropsOnly(r.st, map[stats.Reason]uint64{why: 1}); err != nil {
				t.Fatalf("invalid message (%v): %v", why, err)
			}
			if ps.ToHost.Load() != 0 || ps.FlowsCreated.Load() != 0 {
				t.Fatalf("invalid message (%v) sent", why)
			}
			return
		}
		if err := dropsOnly(r.st, nil); err != nil {
			t.Fatal(err)
		}
		if !r.found || r.flows != 1 || ps.FlowsCreated.Load() != 1 || ps.ToHost.Load() != 1 {
			t.Fatalf("echo request: flow found %v, %d flows, %d created, %d sent", r.found, r.flows, ps.FlowsCreated.Load(), ps.ToHost.Load())
		}
		if r.deliverErr != nil {
			t.Fatal(r.deliverErr)
		}
		if len(r.frames) != 1 {
			t.Fatalf("%d frames to the guest, want 1", len(r.frames))
		}
		if err := checkReply(r.frames[0], msg, v6); err != nil {
			t.Fatal(fmt.Errorf("reply to %d bytes: %w", len(msg), err))
		}
		if ps.ToTap.Load() != 1 || ps.ToTapBytes.Load() != uint64(len(msg)-hdrLen) {
			t.Fatalf("ToTap %d (%d bytes), want 1 (%d)", ps.ToTap.Load(), ps.ToTapBytes.Load(), len(msg)-hdrLen)
		}
	})
}
