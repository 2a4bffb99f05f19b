package icmp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/toguest"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// The tests run the engine in a network namespace of their own: there
// ping sockets can be allowed (net.ipv4.ping_group_range is per
// namespace), the gateway stands for that namespace's loopback, whose
// kernel answers the echo requests, and nothing leaves the machine.

var (
	guestMAC = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 1}
	ourMAC   = packet.MAC{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
	guest4   = netip.MustParseAddr("192.0.2.2")
	gw4      = netip.MustParseAddr("192.0.2.1")
	guest6   = netip.MustParseAddr("2001:db8::2")
	gw6      = netip.MustParseAddr("2001:db8::1")
)

// Values of net.ipv4.ping_group_range.
const (
	pingAll  = "0 2147483647" // every group may open ping sockets
	pingNone = "1 0"          // none may (the kernel's default)
)

// setupNetns moves the calling thread into a new network namespace, brings
// its loopback up and sets its ping_group_range. The caller has locked
// its goroutine to the thread, for good: the thread, and with it the
// namespace, ends with the goroutine.
func setupNetns(pingRange string) error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	// Opened from this thread, the file is the new namespace's.
	if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte(pingRange), 0); err != nil {
		return err
	}
	return nil
}

// enterNetns puts the test's goroutine in a network namespace of its own
// (see setupNetns), or skips the test.
func enterNetns(tb testing.TB, pingRange string) {
	tb.Helper()
	runtime.LockOSThread() // never unlocked
	if err := setupNetns(pingRange); err != nil {
		tb.Skipf("no network namespace of our own: %v", err)
	}
}

// fakeTap collects the frames the engine writes to the guest.
type fakeTap struct{ frames chan []byte }

func newFakeTap() *fakeTap { return &fakeTap{frames: make(chan []byte, 256)} }

func (f *fakeTap) WriteFrame(b []byte) error {
	select {
	case f.frames <- bytes.Clone(b):
		return nil
	default:
		return errors.New("fake tap full")
	}
}

// take returns the frames written so far.
func (f *fakeTap) take() [][]byte {
	var out [][]byte
	for {
		select {
		case b := <-f.frames:
			out = append(out, b)
		default:
			return out
		}
	}
}

// newConfig is the configuration of an engine that writes to ep, with a
// loop of its own (not running) and a table of maxFlows flows; the
// gateway addresses stand for the host's loopback.
func newConfig(ep toguest.FrameWriter, maxFlows int) (Config, error) {
	loop, err := evloop.New()
	if err != nil {
		return Config{}, err
	}
	g := fwd.NewGuest(guest4, guest6)
	g.SeeMAC(packet.MAC(guestMAC))
	st := &stats.Counters{}
	return Config{
		Rules: &fwd.Rules{MapHostLoopback4: gw4, MapHostLoopback6: gw6, IPv4: true, IPv6: true},
		Guest: g, Loop: loop, Flows: flow.NewTable(maxFlows), Stats: st,
		Out: toguest.New(toguest.Config{EP: ep, Guest: g, OurMAC: ourMAC, Stats: st}),
	}, nil
}

// newEngine makes an engine as newConfig does, changed by mod; the
// engine is released and its loop discarded when the test ends, unless
// the loop was run (see run).
func newEngine(t *testing.T, maxFlows int, mod func(*Config)) (*Engine, *fakeTap) {
	t.Helper()
	tap := newFakeTap()
	cfg, err := newConfig(tap, maxFlows)
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(&cfg)
	}
	e := New(cfg)
	t.Cleanup(func() {
		select {
		case <-cfg.Loop.Done():
		default:
			e.Release()
			cfg.Loop.Discard()
		}
	})
	return e, tap
}

// run runs e's loop until the test ends, then releases e.
func run(t *testing.T, e *Engine) {
	done := make(chan error, 1)
	go func() { done <- e.cfg.Loop.Run() }()
	t.Cleanup(func() {
		e.cfg.Loop.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
		e.Release()
	})
}

// addrs are the guest's address and its gateway in the family.
func addrs(v6 bool) (guest, gw netip.Addr) {
	if v6 {
		return guest6, gw6
	}
	return guest4, gw4
}

// ipLayer is the IP header of a packet from src to dst, for gopacket.
func ipLayer(src, dst netip.Addr) gopacket.NetworkLayer {
	if src.Is6() {
		return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	}
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

// echoMessage is an ICMP (v6 false) or ICMPv6 echo message of type typ
// from the guest to its gateway, built with gopacket, checksum included.
func echoMessage(v6 bool, typ uint8, id, seq uint16, payload []byte) []byte {
	src, dst := addrs(v6)
	ip := ipLayer(src, dst)
	var l []gopacket.SerializableLayer
	if v6 {
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
		_ = ic.SetNetworkLayerForChecksum(ip)
		// gopacket's ICMPv6 layer has no identifier and sequence: they
		// are the first four bytes of its payload.
		body := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, id), seq)
		l = []gopacket.SerializableLayer{ip.(gopacket.SerializableLayer), ic, gopacket.Payload(append(body, payload...))}
	} else {
		l = []gopacket.SerializableLayer{ip.(gopacket.SerializableLayer),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: seq}, gopacket.Payload(payload)}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, l...); err != nil {
		panic(err)
	}
	hl := 20
	if v6 {
		hl = 40
	}
	return bytes.Clone(buf.Bytes()[hl:])
}

// echoRequest is an echo request from the guest to its gateway.
func echoRequest(v6 bool, id, seq uint16, payload []byte) []byte {
	if v6 {
		return echoMessage(true, echoRequest6, id, seq, payload)
	}
	return echoMessage(false, echoRequest4, id, seq, payload)
}

// guestFrame is the Ethernet frame that carries msg, an ICMP or ICMPv6
// message, from the guest to its gateway, built with gopacket.
func guestFrame(msg []byte, v6 bool) ([]byte, error) {
	src, dst := addrs(v6)
	eth := &layers.Ethernet{SrcMAC: guestMAC, DstMAC: net.HardwareAddr(ourMAC[:]), EthernetType: layers.EthernetTypeIPv4}
	if v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ipLayer(src, dst).(gopacket.SerializableLayer), gopacket.Payload(msg)); err != nil {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}

// parsed is msg from the guest, in a frame parsed with packet.Parse.
func parsed(tb testing.TB, msg []byte, v6 bool) *packet.Parsed {
	tb.Helper()
	frame, err := guestFrame(msg, v6)
	if err != nil {
		tb.Fatal(err)
	}
	p := &packet.Parsed{}
	if d := packet.Parse(frame, p); d != packet.DropNone {
		tb.Fatalf("parse: %v", d)
	}
	return p
}

// pseudoSum6 is the reference sum of the ICMPv6 pseudo-header of a
// message of n bytes from src to dst (RFC 8200 8.1).
func pseudoSum6(src, dst netip.Addr, n int) uint32 {
	var h [40]byte
	s, d := src.As16(), dst.As16()
	copy(h[0:16], s[:])
	copy(h[16:32], d[:])
	binary.BigEndian.PutUint32(h[32:36], uint32(n))
	h[39] = 58
	return wirecheck.Sum(h[:], 0)
}

// refSum is the reference one's complement sum of msg, an ICMP or ICMPv6
// message from the guest to its gateway, with its pseudo-header.
func refSum(msg []byte, v6 bool) uint32 {
	var init uint32
	if v6 {
		src, dst := addrs(true)
		init = pseudoSum6(src, dst, len(msg))
	}
	return wirecheck.Sum(msg, init)
}

// refValid reports whether msg from the guest is an echo request that
// must be forwarded, and if not the drop it must be counted as.
func refValid(msg []byte, v6 bool) (bool, stats.Reason) {
	if len(msg) < 8 {
		return false, stats.DropMalformed
	}
	typ := uint8(8)
	if v6 {
		typ = 128
	}
	if msg[0] != typ || msg[1] != 0 {
		return false, stats.DropICMPType
	}
	// RFC 1071: the message and its checksum sum to all ones (the sum is
	// never zero: the type is not).
	if refSum(msg, v6) != 0xffff {
		return false, stats.DropChecksum
	}
	return true, 0
}

// checkReply checks frame, to the guest, with gopacket (wirecheck: every
// checksum, lengths) and holds it to being the reply to req, the guest's
// echo request: from the gateway to the guest, the reply type, the
// guest's identifier and sequence and the same payload, byte for byte.
func checkReply(frame, req []byte, v6 bool) error {
	fr, err := wirecheck.Check(frame)
	if err != nil {
		return err
	}
	guest, gw := addrs(v6)
	if !bytes.Equal(fr.Src, ourMAC[:]) || !bytes.Equal(fr.Dst, guestMAC) {
		return fmt.Errorf("MACs %v -> %v", fr.Src, fr.Dst)
	}
	if fr.SrcIP != gw || fr.DstIP != guest {
		return fmt.Errorf("reply %v -> %v, want %v -> %v", fr.SrcIP, fr.DstIP, gw, guest)
	}
	typ, proto := uint8(0), layers.IPProtocolICMPv4
	if v6 {
		typ, proto = 129, layers.IPProtocolICMPv6
	}
	if fr.Proto != proto || fr.ICMPType != typ || fr.ICMPCode != 0 {
		return fmt.Errorf("protocol %v type %d code %d, want %v type %d code 0", fr.Proto, fr.ICMPType, fr.ICMPCode, proto, typ)
	}
	body := fr.ICMPBody
	if len(body) < 4 {
		return fmt.Errorf("reply of %d bytes", len(body)+4)
	}
	if id, seq := binary.BigEndian.Uint16(body[0:2]), binary.BigEndian.Uint16(body[2:4]); id != binary.BigEndian.Uint16(req[4:6]) || seq != binary.BigEndian.Uint16(req[6:8]) {
		return fmt.Errorf("identifier %#04x sequence %d, want %#04x %d", id, seq, binary.BigEndian.Uint16(req[4:6]), binary.BigEndian.Uint16(req[6:8]))
	}
	if !bytes.Equal(body[4:], req[8:]) {
		return fmt.Errorf("payload of %d bytes differs from the request's %d", len(body)-4, len(req)-8)
	}
	// The whole message: the request with the reply's type and the
	// checksum that goes with it.
	want := bytes.Clone(req)
	want[0], want[2], want[3] = typ, 0, 0
	var init uint32
	if v6 {
		init = pseudoSum6(gw, guest, len(want))
	}
	binary.BigEndian.PutUint16(want[2:4], ^uint16(wirecheck.Sum(want, init)))
	if got := frame[len(frame)-len(want):]; !bytes.Equal(got, want) {
		return fmt.Errorf("reply message % x..., want % x...", got[:8], want[:8])
	}
	return nil
}

// dropsOnly checks that the drops counted are exactly want: counts by
// reason.
func dropsOnly(st *stats.Counters, want map[stats.Reason]uint64) error {
	var errs []string
	for r := stats.Reason(0); r < stats.NumReasons; r++ {
		if got := st.Drops[r].Load(); got != want[r] {
			errs = append(errs, fmt.Sprintf("%v drops %d, want %d", r, got, want[r]))
		}
	}
	if errs != nil {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// flowKey is the key of the flow of the guest's identifier id.
func flowKey(v6 bool, id uint16) flow.Key {
	guest, gw := addrs(v6)
	return flow.Key{Type: flow.TypeICMP, PIF: flow.PIFTap, EAddr: guest, EPort: id, FAddr: gw, FPort: id}
}

// deliver waits up to wait for a reply on the ping socket of the flow of
// key and hands the socket's event to the engine, as the loop would. It
// reports whether there is such a flow.
func deliver(e *Engine, key flow.Key, wait time.Duration) (bool, error) {
	e.tab.Mu.Lock()
	ref, ok := e.tab.Lookup(key)
	var fd int
	var gen uint32
	if ok {
		f := e.tab.At(ref.Index)
		fd, gen = f.Sock[flow.Tgt], f.Gen
	}
	e.tab.Mu.Unlock()
	if !ok {
		return false, nil
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(wait)
	for {
		n, err := unix.Poll(pfd, int(time.Until(deadline)/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return true, fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			return true, errors.New("no reply on the ping socket")
		}
		break
	}
	e.event(evloop.Ref{Kind: e.kSock, Side: flow.Tgt, Index: ref.Index, Gen: gen & evloop.GenMask}, unix.EPOLLIN)
	return true, nil
}

// recvFrames waits for n frames to the guest and then briefly for more.
func recvFrames(t *testing.T, tap *fakeTap, n int) [][]byte {
	t.Helper()
	var out [][]byte
	timeout := time.After(5 * time.Second)
	for len(out) < n {
		select {
		case f := <-tap.frames:
			out = append(out, f)
		case <-timeout:
			t.Fatalf("%d of %d frames reached the guest", len(out), n)
		}
	}
	select {
	case f := <-tap.frames:
		t.Fatalf("frame %d of %d bytes beyond the %d expected", n+1, len(f), n)
	case <-time.After(50 * time.Millisecond):
	}
	return out
}

// TestEchoBothFamilies pings the gateway over IPv4 and IPv6 with 1000-byte
// payloads, the loop running: every request gets its reply, the message
// byte for byte, identifier and sequence the guest's, and the counters
// count them.
func TestEchoBothFamilies(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
			enterNetns(t, pingAll)
			e, tap := newEngine(t, 16, nil)
			run(t, e)
			const id, n = 0x4242, 5
			for seq := uint16(1); seq <= n; seq++ {
				payload := bytes.Repeat([]byte{byte(seq), 0xa5, 0x5a, byte(seq >> 8)}, 250)
				req := echoRequest(v6, id, seq, payload)
				e.HandleTap([]*packet.Parsed{parsed(t, req, v6)})
				f := recvFrames(t, tap, 1)[0]
				if err := checkReply(f, req, v6); err != nil {
					t.Fatalf("seq %d: %v", seq, err)
				}
			}
			ps := &e.st.ICMP
			for _, c := range []struct {
				name      string
				got, want uint64
			}{
				{"ToHost", ps.ToHost.Load(), n}, {"ToHostBytes", ps.ToHostBytes.Load(), n * 1000},
				{"ToTap", ps.ToTap.Load(), n}, {"ToTapBytes", ps.ToTapBytes.Load(), n * 1000},
				{"FlowsCreated", ps.FlowsCreated.Load(), 1}, {"TapTxFrames", e.st.TapTxFrames.Load(), n},
			} {
				if c.got != c.want {
					t.Errorf("%s %d, want %d", c.name, c.got, c.want)
				}
			}
			if a := ps.Active.Load(); a != 1 {
				t.Errorf("Active %d, want 1", a)
			}
			if err := dropsOnly(e.st, nil); err != nil {
				t.Error(err)
			}
			e.tab.Mu.Lock()
			l := e.tab.Len()
			e.tab.Mu.Unlock()
			if l != 1 {
				t.Errorf("%d flows, want 1", l)
			}
		})
	}
}

// TestTwoIdentifiers pings with two identifiers at once: two flows, each
// with a socket of its own, and each identifier gets only its own
// replies.
func TestTwoIdentifiers(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
			enterNetns(t, pingAll)
			e, tap := newEngine(t, 16, nil)
			ids := []uint16{0x0101, 0xfeed}
			reqs := map[[2]uint16][]byte{}
			var batch []*packet.Parsed
			for seq := uint16(1); seq <= 3; seq++ {
				for _, id := range ids {
					req := echoRequest(v6, id, seq, []byte(fmt.Sprintf("id %#04x seq %d", id, seq)))
					reqs[[2]uint16{id, seq}] = req
					batch = append(batch, parsed(t, req, v6))
				}
			}
			// One batch, as the tap reader hands them over.
			e.HandleTap(batch)
			e.tab.Mu.Lock()
			var socks []int
			for _, id := range ids {
				ref, ok := e.tab.Lookup(flowKey(v6, id))
				if !ok {
					t.Errorf("no flow for identifier %#04x", id)
					continue
				}
				socks = append(socks, e.tab.At(ref.Index).Sock[flow.Tgt])
			}
			l := e.tab.Len()
			e.tab.Mu.Unlock()
			if l != 2 || len(socks) != 2 || socks[0] == socks[1] {
				t.Fatalf("%d flows, sockets %v; want 2 flows with a socket each", l, socks)
			}
			run(t, e)
			for _, f := range recvFrames(t, tap, len(reqs)) {
				fr, err := wirecheck.Check(f)
				if err != nil {
					t.Fatal(err)
				}
				b := fr.ICMPBody
				k := [2]uint16{binary.BigEndian.Uint16(b[0:2]), binary.BigEndian.Uint16(b[2:4])}
				req, ok := reqs[k]
				if !ok {
					t.Fatalf("reply with identifier %#04x sequence %d: not asked for, or twice", k[0], k[1])
				}
				delete(reqs, k)
				if err := checkReply(f, req, v6); err != nil {
					t.Errorf("identifier %#04x sequence %d: %v", k[0], k[1], err)
				}
			}
			if n := e.st.ICMP.FlowsCreated.Load(); n != 2 {
				t.Errorf("FlowsCreated %d, want 2", n)
			}
		})
	}
}

// lockedBuffer is a log output for the test to read.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func captureLog(t *testing.T) *lockedBuffer {
	lb := &lockedBuffer{}
	log.SetOutput(lb)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	return lb
}

// TestNoPingSockets forbids ping sockets (ping_group_range "1 0"): New
// warns once, naming both families, and every request is dropped as
// no-ping-socket, with no flow and no frame.
func TestNoPingSockets(t *testing.T) {
	enterNetns(t, pingNone)
	lb := captureLog(t)
	e, tap := newEngine(t, 16, nil)
	out := lb.String()
	if strings.Count(out, "no ping sockets") != 1 || !strings.Contains(out, "IPv4:") || !strings.Contains(out, "IPv6:") {
		t.Errorf("New logged %q; want one warning about ping sockets for IPv4 and IPv6", out)
	}
	var batch []*packet.Parsed
	for _, v6 := range []bool{false, true} {
		for seq := uint16(1); seq <= 2; seq++ {
			batch = append(batch, parsed(t, echoRequest(v6, 7, seq, []byte("ping")), v6))
		}
	}
	e.HandleTap(batch)
	if err := dropsOnly(e.st, map[stats.Reason]uint64{stats.DropNoPingSocket: 4}); err != nil {
		t.Error(err)
	}
	if n := e.st.ICMP.ToHost.Load(); n != 0 {
		t.Errorf("ToHost %d, want 0", n)
	}
	if e.tab.Len() != 0 {
		t.Errorf("%d flows, want 0", e.tab.Len())
	}
	if f := tap.take(); len(f) != 0 {
		t.Errorf("%d frames to the guest", len(f))
	}
	if strings.Count(lb.String(), "no ping sockets") != 1 {
		t.Errorf("requests warned again: %q", lb.String())
	}
}

// inode identifies the file behind fd, or is zero if fd is closed.
func inode(fd int) uint64 {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	return st.Ino
}

// TestExpiry lets a flow expire: it stays while within the timeout, then
// goes with its socket, is counted, and the next request makes a new one
// that works.
func TestExpiry(t *testing.T) {
	enterNetns(t, pingAll)
	e, tap := newEngine(t, 16, func(c *Config) { c.Timeout = 50 * time.Millisecond })
	key := flowKey(false, 99)
	ping := func(seq uint16) {
		t.Helper()
		req := echoRequest(false, 99, seq, []byte("expiry"))
		e.HandleTap([]*packet.Parsed{parsed(t, req, false)})
		if ok, err := deliver(e, key, 2*time.Second); !ok || err != nil {
			t.Fatalf("flow %v, %v", ok, err)
		}
		f := tap.take()
		if len(f) != 1 {
			t.Fatalf("%d frames, want 1", len(f))
		}
		if err := checkReply(f[0], req, false); err != nil {
			t.Fatal(err)
		}
	}
	ping(1)
	ref, _ := e.tab.Lookup(key)
	fd := e.tab.At(ref.Index).Sock[flow.Tgt]
	ino := inode(fd)
	if ino == 0 {
		t.Fatal("no socket")
	}

	e.expire(evloop.Now()) // within the timeout
	if e.tab.Len() != 1 || e.st.ICMP.FlowsExpired.Load() != 0 {
		t.Fatalf("flow expired early: %d flows, %d expired", e.tab.Len(), e.st.ICMP.FlowsExpired.Load())
	}
	e.expire(evloop.Now() + int64(time.Second))
	if e.tab.Len() != 0 {
		t.Errorf("%d flows after expiry, want 0", e.tab.Len())
	}
	if _, ok := e.tab.Lookup(key); ok {
		t.Error("expired flow still in the hash")
	}
	if inode(fd) == ino {
		t.Errorf("socket %d still open after expiry", fd)
	}
	ps := &e.st.ICMP
	if ps.FlowsExpired.Load() != 1 || ps.Active.Load() != 0 {
		t.Errorf("FlowsExpired %d Active %d, want 1 and 0", ps.FlowsExpired.Load(), ps.Active.Load())
	}

	ping(2)
	if ps.FlowsCreated.Load() != 2 || e.tab.Len() != 1 {
		t.Errorf("FlowsCreated %d with %d flows, want 2 and 1", ps.FlowsCreated.Load(), e.tab.Len())
	}
	if err := dropsOnly(e.st, nil); err != nil {
		t.Error(err)
	}
}

// TestTableFull fills a table of one flow: a second identifier is dropped
// as table-full, and the first keeps working.
func TestTableFull(t *testing.T) {
	enterNetns(t, pingAll)
	e, tap := newEngine(t, 1, nil)
	first := echoRequest(false, 1, 1, []byte("first"))
	e.HandleTap([]*packet.Parsed{parsed(t, first, false), parsed(t, echoRequest(false, 2, 1, []byte("second")), false)})
	if err := dropsOnly(e.st, map[stats.Reason]uint64{stats.DropTableFull: 1}); err != nil {
		t.Error(err)
	}
	if _, ok := e.tab.Lookup(flowKey(false, 2)); ok {
		t.Error("a flow for the second identifier")
	}
	if ok, err := deliver(e, flowKey(false, 1), 2*time.Second); !ok || err != nil {
		t.Fatalf("first flow %v, %v", ok, err)
	}
	f := tap.take()
	if len(f) != 1 {
		t.Fatalf("%d frames, want 1", len(f))
	}
	if err := checkReply(f[0], first, false); err != nil {
		t.Error(err)
	}
	if n := e.st.ICMP.FlowsCreated.Load(); n != 1 {
		t.Errorf("FlowsCreated %d, want 1", n)
	}
}

// nullTap takes frames without keeping them.
type nullTap struct{ n int }

func (t *nullTap) WriteFrame([]byte) error { t.n++; return nil }

// TestReplyAllocs: a reply's way to the guest (toGuest, on a received
// message) allocates nothing.
func TestReplyAllocs(t *testing.T) {
	captureLog(t) // New warns: no sockets here
	for _, v6 := range []bool{false, true} {
		tap := &nullTap{}
		cfg, err := newConfig(tap, 16)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Socket = func(int, int, int) (int, error) { return -1, unix.EACCES }
		e := New(cfg)
		guest, gw := addrs(v6)
		to := flow.Side{EAddr: guest, FAddr: gw, EPort: 0x1234, FPort: 0x1234}
		typ := uint8(echoReply4)
		if v6 {
			typ = echoReply6
		}
		msg := echoMessage(v6, typ, 0x9999, 1, bytes.Repeat([]byte{0x5a}, 1000))
		n := copy(e.buf[packet.MaxHeadroom:], msg)
		mac := e.out.GuestMAC()
		allocs := testing.AllocsPerRun(1000, func() {
			if !e.toGuest(n, &to, mac) {
				t.Fatal("toGuest failed")
			}
		})
		if allocs != 0 {
			t.Errorf("v6 %v: %v allocations per reply", v6, allocs)
		}
		if tap.n != 1001 {
			t.Errorf("%d frames, want 1001", tap.n)
		}
		e.Release()
		cfg.Loop.Discard()
	}
}

// TestWrongProtocolNumber checks that ICMPv6 carried over IPv4 and ICMP
// over IPv6 are dropped, even when the message inside is a valid echo
// request of the other family.
func TestWrongProtocolNumber(t *testing.T) {
	enterNetns(t, pingAll)
	e, tap := newEngine(t, 16, nil)
	p4 := parsed(t, echoRequest(false, 7, 1, []byte("mismatch")), false)
	p4.Proto = packet.ProtoICMPv6
	p6 := parsed(t, echoRequest(true, 8, 1, []byte("mismatch")), true)
	p6.Proto = packet.ProtoICMP
	e.HandleTap([]*packet.Parsed{p4, p6})
	if err := dropsOnly(e.st, map[stats.Reason]uint64{stats.DropUnsupported: 2}); err != nil {
		t.Error(err)
	}
	if n := e.tab.Len(); n != 0 || e.st.ICMP.ToHost.Load() != 0 {
		t.Errorf("%d flows, %d requests sent, want none", n, e.st.ICMP.ToHost.Load())
	}
	time.Sleep(100 * time.Millisecond)
	if f := tap.take(); len(f) != 0 {
		t.Errorf("%d frames to the guest, want none", len(f))
	}
}
