package tcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/toguest"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// The tests run the engine in a network namespace of their own with only
// its loopback up: the gateway stands for that loopback, where the
// test's own Go servers and clients are, and nothing leaves the machine.
// The guest is the test itself, sending segments built with gopacket and
// reading what the engine writes to a fake tap.

var (
	guestMAC = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 1}
	ourMAC   = packet.MAC{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
	guest4   = netip.MustParseAddr("192.0.2.2")
	gw4      = netip.MustParseAddr("192.0.2.1")
	guest6   = netip.MustParseAddr("2001:db8::2")
	gw6      = netip.MustParseAddr("2001:db8::1")
)

// wait bounds every wait for something the engine or the kernel does at
// once (the retransmission timer is not waited for).
const wait = 2 * time.Second

// families runs fn as a subtest for IPv4 and for IPv6.
func families(t *testing.T, fn func(t *testing.T, v6 bool)) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) { fn(t, v6) })
	}
}

// enterNetns moves the test's goroutine, locked to its thread for good,
// into a new network namespace with its loopback up, or skips the test.
// The thread, and with it the namespace, ends with the goroutine.
func enterNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread() // never unlocked
	if os.Geteuid() != 0 {
		t.Skip("not root")
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("no network namespace of our own: unshare: %v", err)
	}
	if err := loUp(); err != nil {
		t.Fatal(err)
	}
}

// loUp brings up the loopback of the calling thread's namespace.
func loUp() error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}

// fakeTap collects the frames the engine writes to the guest; with
// discard set it only counts them (no allocation of its own).
type fakeTap struct {
	frames  chan []byte
	discard atomic.Bool
	counted atomic.Int64
}

func (f *fakeTap) WriteFrame(b []byte) error {
	if f.discard.Load() {
		f.counted.Add(1)
		return nil
	}
	select {
	case f.frames <- bytes.Clone(b):
		return nil
	default:
		return errors.New("fake tap full")
	}
}

// harness is an engine whose loop runs in the test's namespace, and the
// tap it writes to.
type harness struct {
	t   *testing.T
	e   *Engine
	tap *fakeTap
	st  *stats.Counters
	// stop stops the loop and releases the engine, once; the test's end
	// does it if nobody did before.
	stop func()
}

// newHarness puts the test in a namespace of its own and starts an
// engine there, for both families with the gateways standing for the
// host's loopback, both writers on one fake tap, an MTU of 1500, changed
// by mod. The engine is stopped and released when the test ends.
func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	enterNetns(t)
	return startHarness(t, mod)
}

// startHarness is newHarness in the namespace the calling thread is in
// (where the loop's goroutine goes too).
func startHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	tap := &fakeTap{frames: make(chan []byte, 4096)}
	loop, err := evloop.New()
	if err != nil {
		t.Fatal(err)
	}
	g := fwd.NewGuest(guest4, guest6)
	g.SeeMAC(packet.MAC(guestMAC))
	st := &stats.Counters{}
	out := func() *toguest.Writer {
		return toguest.New(toguest.Config{EP: tap, Guest: g, OurMAC: ourMAC, Stats: st})
	}
	cfg := Config{
		Rules: &fwd.Rules{MapHostLoopback4: gw4, MapHostLoopback6: gw6, IPv4: true, IPv6: true},
		Guest: g, Loop: loop, Flows: flow.NewTable(64), LoopOut: out(), TapOut: out(), Stats: st, MTU: 1500,
	}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		loop.Discard()
		t.Fatal(err)
	}
	// The loop's goroutine opens listening sockets (AddForward): its
	// thread must be in the test's namespace too.
	ns, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		e.Release()
		loop.Discard()
		t.Fatal(err)
	}
	started, done := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- loop.Run()
	}()
	err = <-started
	unix.Close(ns)
	if err != nil {
		e.Release()
		loop.Discard()
		t.Fatalf("setns: %v", err)
	}
	stop := sync.OnceFunc(func() {
		loop.Close()
		<-loop.Done()
		if err := <-done; err != nil {
			t.Error(err)
		}
		e.Release()
	})
	t.Cleanup(stop)
	return &harness{t: t, e: e, tap: tap, st: st, stop: stop}
}

// rxSeg is a segment the engine sent to the guest, as gopacket decoded
// it.
type rxSeg struct {
	src, dst     netip.Addr
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	wnd          uint16
	mss, ws      int // the options, -1 if absent
	sackOK       bool
	sack         [][2]uint32 // SACK blocks
	payload      []byte
}

func (s *rxSeg) String() string {
	return fmt.Sprintf("%v:%d -> %v:%d flags %s seq %d ack %d wnd %d mss %d ws %d sackOK %v sack %v, %d bytes",
		s.src, s.sport, s.dst, s.dport, flagNames(s.flags), s.seq, s.ack, s.wnd, s.mss, s.ws, s.sackOK, s.sack, len(s.payload))
}

// flagNames spells TCP flags out.
func flagNames(f uint8) string {
	var b []byte
	for i, n := range []byte("FSRPA") {
		if f&(1<<i) != 0 {
			b = append(b, n)
		}
	}
	if f&^0x1f != 0 {
		b = append(b, '?')
	}
	return string(b)
}

// pseudoSum is the reference sum of the TCP pseudo-header of a segment
// of n bytes from src to dst (RFC 9293 3.1, RFC 8200 8.1).
func pseudoSum(src, dst netip.Addr, n int) uint32 {
	h := append(src.AsSlice(), dst.AsSlice()...)
	if src.Is4() {
		h = append(h, 0, packet.ProtoTCP)
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	} else {
		h = binary.BigEndian.AppendUint32(h, uint32(n))
		h = append(h, 0, 0, 0, packet.ProtoTCP)
	}
	return wirecheck.Sum(h, 0)
}

// decodeFrame checks frame, to the guest, with gopacket (Ethernet, IP
// header without options filling the frame, IPv4 header checksum, TCP
// header) and the TCP checksum against wirecheck's reference sum, and
// returns the segment in it.
func decodeFrame(frame []byte) (*rxSeg, error) {
	pkt := gopacket.NewPacket(bytes.Clone(frame), layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		return nil, fmt.Errorf("gopacket cannot decode the frame: %v", el.Error())
	}
	eth, ok := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !ok {
		return nil, errors.New("no Ethernet layer")
	}
	if !bytes.Equal(eth.SrcMAC, ourMAC[:]) || !bytes.Equal(eth.DstMAC, guestMAC) {
		return nil, fmt.Errorf("MACs %v -> %v", eth.SrcMAC, eth.DstMAC)
	}
	s := &rxSeg{mss: -1, ws: -1}
	ipLen := len(frame) - wirecheck.EthLen
	switch ip := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		if eth.EthernetType != layers.EthernetTypeIPv4 || ip.IHL != 5 || int(ip.Length) != ipLen || ip.Protocol != layers.IPProtocolTCP || ip.TTL == 0 {
			return nil, fmt.Errorf("IPv4 header: EtherType %v IHL %d length %d of %d protocol %v TTL %d", eth.EthernetType, ip.IHL, ip.Length, ipLen, ip.Protocol, ip.TTL)
		}
		if ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0 {
			return nil, errors.New("IPv4 fragment")
		}
		if err, res := ip.VerifyChecksum(); err != nil || !res.Valid {
			return nil, fmt.Errorf("IPv4 header checksum %#04x, want %#04x (%v)", res.Actual, res.Correct, err)
		}
		s.src, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		s.dst, _ = netip.AddrFromSlice(ip.DstIP.To4())
	case *layers.IPv6:
		if eth.EthernetType != layers.EthernetTypeIPv6 || int(ip.Length)+40 != ipLen || ip.NextHeader != layers.IPProtocolTCP || ip.HopLimit == 0 {
			return nil, fmt.Errorf("IPv6 header: EtherType %v payload length %d of %d next header %v hop limit %d", eth.EthernetType, ip.Length, ipLen-40, ip.NextHeader, ip.HopLimit)
		}
		s.src, _ = netip.AddrFromSlice(ip.SrcIP.To16())
		s.dst, _ = netip.AddrFromSlice(ip.DstIP.To16())
	default:
		return nil, fmt.Errorf("network layer %T", ip)
	}
	tl, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		return nil, errors.New("no TCP layer")
	}
	seg := append(bytes.Clone(tl.Contents), tl.Payload...)
	if sum := wirecheck.Sum(seg, pseudoSum(s.src, s.dst, len(seg))); sum != 0xffff {
		return nil, fmt.Errorf("TCP checksum %#04x wrong (sum %#04x)", tl.Checksum, sum)
	}
	if int(tl.DataOffset)*4 != len(tl.Contents) {
		return nil, fmt.Errorf("TCP data offset %d, header of %d bytes", tl.DataOffset, len(tl.Contents))
	}
	if tl.URG || tl.ECE || tl.CWR || tl.NS {
		return nil, errors.New("TCP flag URG, ECE, CWR or NS set")
	}
	for i, f := range []bool{tl.FIN, tl.SYN, tl.RST, tl.PSH, tl.ACK} {
		if f {
			s.flags |= 1 << i
		}
	}
	s.sport, s.dport, s.seq, s.ack, s.wnd = uint16(tl.SrcPort), uint16(tl.DstPort), tl.Seq, tl.Ack, tl.Window
	s.payload = tl.Payload
	for _, o := range tl.Options {
		switch {
		case o.OptionType == layers.TCPOptionKindMSS && len(o.OptionData) == 2:
			s.mss = int(binary.BigEndian.Uint16(o.OptionData))
		case o.OptionType == layers.TCPOptionKindWindowScale && len(o.OptionData) == 1:
			s.ws = int(o.OptionData[0])
		case o.OptionType == layers.TCPOptionKindSACKPermitted && len(o.OptionData) == 0:
			s.sackOK = true
		case o.OptionType == layers.TCPOptionKindSACK && len(o.OptionData) > 0 && len(o.OptionData)%8 == 0:
			for d := o.OptionData; len(d) > 0; d = d[8:] {
				s.sack = append(s.sack, [2]uint32{binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:])})
			}
		case o.OptionType == layers.TCPOptionKindNop, o.OptionType == layers.TCPOptionKindEndList:
		default:
			return nil, fmt.Errorf("TCP option %v", o)
		}
	}
	if s.flags&flagSYN == 0 && (s.mss >= 0 || s.ws >= 0 || s.sackOK) {
		return nil, fmt.Errorf("SYN options without SYN: %v", s)
	}
	return s, nil
}

// next is the next segment to the guest, or nil if none comes within d.
func (h *harness) next(d time.Duration) *rxSeg {
	h.t.Helper()
	select {
	case f := <-h.tap.frames:
		s, err := decodeFrame(f)
		if err != nil {
			h.t.Fatalf("frame to the guest: %v", err)
		}
		return s
	case <-time.After(d):
		return nil
	}
}

// quiet checks that nothing reaches the guest for d.
func (h *harness) quiet(d time.Duration) {
	h.t.Helper()
	if s := h.next(d); s != nil {
		h.t.Fatalf("unexpected segment to the guest: %v", s)
	}
}

// flows is the number of flows in the table, and the active TCP count.
func (h *harness) flows() (int, int64) {
	h.e.tab.Mu.Lock()
	defer h.e.tab.Mu.Unlock()
	return h.e.tab.Len(), h.st.TCP.Active.Load()
}

// checkFreed checks that the engine keeps no flow.
func (h *harness) checkFreed() {
	h.t.Helper()
	if n, a := h.flows(); n != 0 || a != 0 {
		h.t.Errorf("%d flows, %d active TCP connections after the end; want none", n, a)
	}
}

// checkHeld checks that the engine holds want bytes beyond holes.
func (h *harness) checkHeld(want int) {
	h.t.Helper()
	h.e.tab.Mu.Lock()
	got := h.e.heldBytes
	h.e.tab.Mu.Unlock()
	if got != want {
		h.t.Errorf("%d bytes held beyond holes, want %d", got, want)
	}
}

// checkDrops checks that the drops counted are exactly want.
func (h *harness) checkDrops(want map[stats.Reason]uint64) {
	h.t.Helper()
	for r := stats.Reason(0); r < stats.NumReasons; r++ {
		if got := h.st.Drops[r].Load(); got != want[r] {
			h.t.Errorf("%v drops %d, want %d", r, got, want[r])
		}
	}
}

// addrs are the guest's address and its gateway in the family.
func addrs(v6 bool) (guest, gw netip.Addr) {
	if v6 {
		return guest6, gw6
	}
	return guest4, gw4
}

// loopback is the host's loopback address in the family.
func loopback(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Loopback()
	}
	return netip.MustParseAddr("127.0.0.1")
}

// listen opens a Go server on the namespace's loopback.
func listen(t *testing.T, v6 bool, port uint16) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(loopback(v6), port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// guestConn is the guest's end of one connection: its addresses and
// ports, the next sequence number it sends, what it acknowledges and
// the window it advertises.
type guestConn struct {
	h         *harness
	guest, gw netip.Addr
	gport     uint16 // the guest's port
	port      uint16 // the gateway's
	seq, ack  uint32
	wnd       uint16
	scale     uint8 // the guest's window scale
	maxSeg    int   // the largest payload the guest takes
}

func newGuestConn(h *harness, v6 bool, gport, port uint16) *guestConn {
	guest, gw := addrs(v6)
	c := &guestConn{h: h, guest: guest, gw: gw, gport: gport, port: port, wnd: 0xffff, scale: 7, maxSeg: 1460}
	if v6 {
		c.maxSeg = 1440 // our MSS over IPv6
	}
	return c
}

// sackPermittedOption is the SACK-permitted option of a guest's SYN.
var sackPermittedOption = layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}

// synOptions are the options of the guest's SYN: MSS 1460, window scale
// 7.
func synOptions() []layers.TCPOption {
	return []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
		{OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	}
}

// frame is the guest's segment tl (its ports filled in) with payload,
// in an Ethernet frame built with gopacket and parsed with packet.Parse.
func (c *guestConn) frame(tl *layers.TCP, payload []byte) *packet.Parsed {
	t := c.h.t
	t.Helper()
	tl.SrcPort, tl.DstPort = layers.TCPPort(c.gport), layers.TCPPort(c.port)
	seg := encode(t, c.guest, c.gw, tl, payload)
	eth := &layers.Ethernet{SrcMAC: guestMAC, DstMAC: net.HardwareAddr(ourMAC[:]), EthernetType: layers.EthernetTypeIPv4}
	var ip gopacket.SerializableLayer = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: c.guest.AsSlice(), DstIP: c.gw.AsSlice()}
	if c.guest.Is6() {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: c.guest.AsSlice(), DstIP: c.gw.AsSlice()}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, gopacket.Payload(seg)); err != nil {
		t.Fatal(err)
	}
	p := &packet.Parsed{}
	if d := packet.Parse(bytes.Clone(buf.Bytes()), p); d != packet.DropNone {
		t.Fatalf("parse: %v", d)
	}
	return p
}

// send hands segments of the guest to the engine, in one batch.
func (c *guestConn) send(ps ...*packet.Parsed) { c.h.e.HandleTap(ps) }

// seg is the guest's segment with flags at its current sequence and
// acknowledgement numbers and window.
func (c *guestConn) seg(flags uint8, payload []byte) *packet.Parsed {
	c.h.t.Helper()
	return c.frame(c.tcp(flags, c.seq), payload)
}

// tcp is a header with flags and seq, the guest's acknowledgement (with
// ACK) and window.
func (c *guestConn) tcp(flags uint8, seq uint32) *layers.TCP {
	tl := &layers.TCP{Seq: seq, Window: c.wnd, FIN: flags&flagFIN != 0, SYN: flags&flagSYN != 0,
		RST: flags&flagRST != 0, PSH: flags&flagPSH != 0, ACK: flags&flagACK != 0}
	if tl.ACK {
		tl.Ack = c.ack
	}
	return tl
}

// expect is the next segment to the guest, which must come within the
// wait, on this connection, with flags.
func (c *guestConn) expect(what string, flags uint8) *rxSeg {
	c.h.t.Helper()
	s := c.h.next(wait)
	if s == nil {
		c.h.t.Fatalf("%s: nothing reached the guest", what)
	}
	if s.src != c.gw || s.dst != c.guest || s.sport != c.port || s.dport != c.gport {
		c.h.t.Fatalf("%s: %v, want %v:%d -> %v:%d", what, s, c.gw, c.port, c.guest, c.gport)
	}
	if s.flags != flags {
		c.h.t.Fatalf("%s: %v, want flags %s", what, s, flagNames(flags))
	}
	return s
}

// expectAck expects a bare ACK of everything the guest sent (seq its
// next sequence number), at our next sequence number.
func (c *guestConn) expectAck(what string) *rxSeg {
	c.h.t.Helper()
	s := c.expect(what, flagACK)
	if s.seq != c.ack || s.ack != c.seq || len(s.payload) != 0 || len(s.sack) != 0 {
		c.h.t.Fatalf("%s: %v, want seq %d ack %d without payload or SACK", what, s, c.ack, c.seq)
	}
	return s
}

// expectSACK expects an ACK of the guest's data up to its seq with SACK
// blocks, relative to base.
func (c *guestConn) expectSACK(what string, base uint32, blocks ...[2]uint32) {
	c.h.t.Helper()
	s := c.expect(what, flagACK)
	want := make([][2]uint32, len(blocks))
	for i, b := range blocks {
		want[i] = [2]uint32{base + b[0], base + b[1]}
	}
	if s.seq != c.ack || s.ack != c.seq || len(s.payload) != 0 || !slices.Equal(s.sack, want) {
		c.h.t.Fatalf("%s: %v, want seq %d ack %d, SACK %v", what, s, c.ack, c.seq, want)
	}
}

// recv collects n bytes of data segments to the guest, in order from its
// acknowledgement on, acknowledging each when ackEach (else none) with
// the guest's window, and returns them.
func (c *guestConn) recv(what string, n int, ackEach bool) []byte {
	c.h.t.Helper()
	start := c.ack
	var got []byte
	for len(got) < n {
		s := c.h.next(wait)
		if s == nil {
			c.h.t.Fatalf("%s: %d of %d bytes reached the guest", what, len(got), n)
		}
		if s.sport != c.port || s.dport != c.gport || s.flags&^flagPSH != flagACK || len(s.payload) == 0 {
			c.h.t.Fatalf("%s: %v, want data after %d of %d bytes", what, s, len(got), n)
		}
		if s.seq != start+uint32(len(got)) {
			c.h.t.Fatalf("%s: %v, want seq %d (%d bytes in)", what, s, start+uint32(len(got)), len(got))
		}
		if s.ack != c.seq {
			c.h.t.Fatalf("%s: %v acknowledges %d, want %d", what, s, s.ack, c.seq)
		}
		if end := s.seq + uint32(len(s.payload)); end-c.ack > uint32(c.wnd)<<c.scale {
			c.h.t.Fatalf("%s: %v beyond the guest's window of %d from %d", what, s, uint32(c.wnd)<<c.scale, c.ack)
		}
		if len(s.payload) > c.maxSeg {
			c.h.t.Fatalf("%s: segment of %d bytes, more than %d", what, len(s.payload), c.maxSeg)
		}
		got = append(got, s.payload...)
		if ackEach {
			c.ack = start + uint32(len(got))
			c.send(c.seg(flagACK, nil))
		}
	}
	if len(got) != n {
		c.h.t.Fatalf("%s: %d bytes, want %d", what, len(got), n)
	}
	return got
}

// write sends data from the guest and expects it to be acknowledged.
func (c *guestConn) write(what string, data []byte) {
	c.h.t.Helper()
	c.send(c.seg(flagACK|flagPSH, data))
	c.seq += uint32(len(data))
	c.expectAck(what)
}

// guestClose sends the guest's FIN: it is acknowledged, and the host's
// end nc reads end of file.
func (c *guestConn) guestClose(nc net.Conn) {
	c.h.t.Helper()
	c.send(c.seg(flagFIN|flagACK, nil))
	c.seq++
	c.expectAck("ACK of the guest's FIN")
	readEOF(c.h.t, nc)
}

// hostClose closes the host's end nc: our FIN reaches the guest after
// what was sent, and the guest acknowledges it.
func (c *guestConn) hostClose(nc net.Conn) {
	c.h.t.Helper()
	nc.Close()
	fin := c.expect("FIN", flagFIN|flagACK)
	if fin.seq != c.ack || fin.ack != c.seq || len(fin.payload) != 0 {
		c.h.t.Fatalf("FIN %v, want seq %d ack %d", fin, c.ack, c.seq)
	}
	c.ack++
	c.send(c.seg(flagACK, nil))
}

// readFull reads exactly len(want) bytes from nc and compares them.
func readFull(t *testing.T, nc net.Conn, want []byte) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(wait))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(nc, got); err != nil {
		t.Fatalf("read %d of %d bytes: %v", n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// readEOF checks that nc's peer has finished.
func readEOF(t *testing.T, nc net.Conn) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(wait))
	if n, err := nc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read %d bytes, %v; want end of file", n, err)
	}
}

// readReset checks that nc was reset by its peer.
func readReset(t *testing.T, nc net.Conn) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(wait))
	if n, err := nc.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("read %d bytes, %v; want ECONNRESET", n, err)
	}
}

// accept takes the connection that ln has from the engine's socket.
func accept(t *testing.T, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	_ = ln.SetDeadline(time.Now().Add(wait))
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// download writes data on the host's end nc and checks that it reaches
// the guest's end byte for byte (see recv).
func (c *guestConn) download(what string, nc net.Conn, data []byte, ackEach bool) {
	c.h.t.Helper()
	if _, err := nc.Write(data); err != nil {
		c.h.t.Fatal(err)
	}
	if got := c.recv(what, len(data), ackEach); !bytes.Equal(got, data) {
		c.h.t.Fatalf("%s: the data changed on the way", what)
	}
}

// pattern is n bytes that differ from one offset to the next.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i/251) ^ seed
	}
	return b
}

const guestISN = 0xfffff000 // wraps around within the tests' data

// connect opens a connection from the guest port gport to the gateway's
// port, where ln listens: SYN with MSS 1460 and window scale 7; the
// SYN-ACK, once the host accepted, from our ISN, acknowledging ISN+1
// with our MSS and window scale; the guest's ACK. It returns the
// guest's end and the server's.
func (h *harness) connect(v6 bool, ln *net.TCPListener, gport, port uint16) (*guestConn, *net.TCPConn) {
	h.t.Helper()
	return h.connectSACK(v6, ln, gport, port, false)
}

// connectSACK is connect with a SYN that permits SACK when sack.
func (h *harness) connectSACK(v6 bool, ln *net.TCPListener, gport, port uint16, sack bool) (*guestConn, *net.TCPConn) {
	h.t.Helper()
	t := h.t
	c := newGuestConn(h, v6, gport, port)
	syn := c.tcp(flagSYN, guestISN)
	syn.Options = synOptions()
	if sack {
		syn.Options = append(syn.Options, sackPermittedOption)
	}
	c.send(c.frame(syn, nil))
	sa := c.expect("SYN-ACK", flagSYN|flagACK)
	wantMSS := 1460
	if v6 {
		wantMSS = 1440
	}
	if sa.ack != guestISN+1 || sa.mss != wantMSS || sa.ws != ourScale || sa.sackOK != sack || sa.wnd == 0 || len(sa.payload) != 0 {
		t.Fatalf("SYN-ACK %v; want ack %d, MSS %d, window scale %d, SACK-permitted %v, a window", sa, uint32(guestISN+1), wantMSS, ourScale, sack)
	}
	// The host's side is connected, and its connection is in the
	// listener's queue: the engine's socket is its peer.
	srv := accept(t, ln)
	if local, _ := h.hostSide(c); srv.RemoteAddr().(*net.TCPAddr).AddrPort() != local {
		t.Fatalf("server's peer %v, engine's socket %v", srv.RemoteAddr(), local)
	}
	c.seq, c.ack = guestISN+1, sa.seq+1
	c.send(c.seg(flagACK, nil))
	h.quiet(20 * time.Millisecond)
	return c, srv
}

// established starts an engine in a namespace of the test's own and
// opens a connection from the guest's port gport to a server on the
// gateway's port 8080 (see connect).
func established(t *testing.T, v6 bool, gport uint16) (*harness, *guestConn, *net.TCPConn) {
	t.Helper()
	h := newHarness(t, nil)
	c, srv := h.connect(v6, listen(t, v6, 8080), gport, 8080)
	return h, c, srv
}

// hostSide is the local address of the host socket of c's flow and the
// socket, or zero values without a flow.
func (h *harness) hostSide(c *guestConn) (netip.AddrPort, int) {
	h.e.tab.Mu.Lock()
	defer h.e.tab.Mu.Unlock()
	ref, ok := h.e.tab.Lookup(flow.Key{Type: flow.TypeTCP, PIF: flow.PIFTap, EAddr: c.guest, EPort: c.gport, FAddr: c.gw, FPort: c.port})
	if !ok {
		return netip.AddrPort{}, -1
	}
	f := h.e.tab.At(ref.Index)
	hs := ref.Side ^ 1
	return netip.AddrPortFrom(f.Side[hs].FAddr, f.Side[hs].FPort), f.Sock[hs]
}

// inode identifies the file behind fd, or is zero if fd is closed.
func inode(fd int) uint64 {
	var st unix.Stat_t
	if fd < 0 || unix.Fstat(fd, &st) != nil {
		return 0
	}
	return st.Ino
}

// TestHandshakeAndData: a whole connection from the guest to the
// gateway: handshake, data both ways byte for byte at the right sequence
// numbers, the guest's FIN (the server reads end of file), the server's
// close (FIN to the guest), and the flow and its socket gone at the end.
func TestHandshakeAndData(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40001)
		_, fd := h.hostSide(c)
		ino := inode(fd)
		if ino == 0 {
			t.Fatal("no host socket")
		}

		up := pattern(3000, 1) // more than one segment
		c.write("ACK of the guest's data", up)
		readFull(t, srv, up)

		down := pattern(5000, 2)
		c.download("server's data", srv, down, false)
		c.ack += uint32(len(down))
		c.send(c.seg(flagACK, nil))

		c.guestClose(srv)

		c.hostClose(srv)
		h.checkFreed()
		if inode(fd) == ino {
			t.Errorf("host socket %d still open", fd)
		}
		ps := &h.st.TCP
		if ps.FlowsCreated.Load() != 1 || ps.FlowsExpired.Load() != 1 || ps.ToHostBytes.Load() != uint64(len(up)) || ps.ToTapBytes.Load() != uint64(len(down)) {
			t.Errorf("counters: created %d ended %d, %d bytes to the host, %d to the guest", ps.FlowsCreated.Load(), ps.FlowsExpired.Load(), ps.ToHostBytes.Load(), ps.ToTapBytes.Load())
		}
		h.checkDrops(nil)
		h.quiet(20 * time.Millisecond)
	})
}

// TestSynWithoutOptions: a SYN without options gets a SYN-ACK without
// window scale, and our segments are no larger than the default MSS.
func TestSynWithoutOptions(t *testing.T) {
	h := newHarness(t, nil)
	ln := listen(t, false, 8080)
	c := newGuestConn(h, false, 40002, 8080)
	c.send(c.frame(c.tcp(flagSYN, 5000), nil))
	sa := c.expect("SYN-ACK", flagSYN|flagACK)
	if sa.ws != -1 || sa.mss != 1460 || sa.ack != 5001 {
		t.Fatalf("SYN-ACK %v; want MSS 1460, no window scale, ack 5001", sa)
	}
	srv := accept(t, ln)
	c.seq, c.ack, c.scale = 5001, sa.seq+1, 0
	c.send(c.seg(flagACK, nil))
	c.download("data", srv, pattern(1000, 3), true)
}

// TestClosedPort: a SYN to a port where nothing listens gets RST|ACK
// acknowledging the SYN, and leaves no flow.
func TestClosedPort(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h := newHarness(t, nil)
		c := newGuestConn(h, v6, 40003, 9) // nothing listens in the namespace
		syn := c.tcp(flagSYN, guestISN)
		syn.Options = synOptions()
		c.send(c.frame(syn, nil))
		rst := c.expect("reset", flagRST|flagACK)
		if rst.ack != guestISN+1 || rst.seq != 0 || len(rst.payload) != 0 {
			t.Fatalf("reset %v; want seq 0 ack %d", rst, uint32(guestISN+1))
		}
		h.checkFreed()
		if n := h.st.TCPResets.Load(); n != 1 {
			t.Errorf("TCPResets %d, want 1", n)
		}
		h.quiet(20 * time.Millisecond)
	})
}

// TestNoConnection: an ACK for no connection is answered with a RST at
// its acknowledgement number (RFC 9293 3.10.7.1), a RST with nothing;
// both are counted.
func TestNoConnection(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h := newHarness(t, nil)
		c := newGuestConn(h, v6, 40004, 8080)
		c.seq, c.ack = 1000, 77777
		c.send(c.seg(flagACK|flagPSH, []byte("stray")))
		rst := c.expect("reset", flagRST)
		if rst.seq != 77777 || rst.ack != 0 || rst.wnd != 0 || len(rst.payload) != 0 {
			t.Fatalf("reset %v; want seq 77777, no ACK, window 0", rst)
		}
		c.send(c.seg(flagRST, nil))
		c.send(c.seg(flagRST|flagACK, nil))
		h.quiet(50 * time.Millisecond)
		h.checkDrops(map[stats.Reason]uint64{stats.DropNoConn: 3})
		h.checkFreed()
	})
}

// TestRFC5961: on an open connection, a RST inside the window but not at
// the next sequence number, and a SYN, get a challenge ACK and leave the
// connection working; a RST out of the window is dropped; a RST at the
// next sequence number resets the server's connection.
func TestRFC5961(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40005)

		c.send(c.frame(c.tcp(flagRST, c.seq+1), nil))
		c.expectAck("challenge ACK for an inexact RST")
		c.write("data after the RST", []byte("still here"))
		readFull(t, srv, []byte("still here"))

		c.send(c.frame(c.tcp(flagRST, c.seq+1<<30), nil))
		h.quiet(50 * time.Millisecond)

		syn := c.tcp(flagSYN, c.seq+12345)
		syn.Options = synOptions()
		c.send(c.frame(syn, nil))
		c.expectAck("challenge ACK for a SYN")
		c.download("data after the SYN", srv, []byte("pong"), true)
		if n, _ := h.flows(); n != 1 {
			t.Fatalf("%d flows, want 1", n)
		}

		c.send(c.seg(flagRST, nil))
		readReset(t, srv)
		h.checkFreed()
		h.checkDrops(map[stats.Reason]uint64{stats.DropOutOfWindow: 2})
		h.quiet(20 * time.Millisecond)
	})
}

// setChecksum puts the right TCP checksum into p's segment.
func setChecksum(p *packet.Parsed) {
	binary.BigEndian.PutUint16(p.L4[16:18], 0)
	binary.BigEndian.PutUint16(p.L4[16:18], ^uint16(wirecheck.Sum(p.L4, pseudoSum(p.Src4, p.Dst4, len(p.L4)))))
}

// TestBadSegments: a SYN with a wrong checksum, and SYNs with data
// offsets too small and beyond the segment (with right checksums), are
// dropped and counted, with nothing sent and no flow, although a server
// listens; a good SYN then connects.
func TestBadSegments(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h := newHarness(t, nil)
		listen(t, v6, 8080)
		c := newGuestConn(h, v6, 40006, 8080)
		syn := func() *packet.Parsed {
			tl := c.tcp(flagSYN, guestISN)
			tl.Options = synOptions()
			return c.frame(tl, []byte("data"))
		}
		bad := syn()
		bad.L4[16] ^= 0x40
		c.send(bad)
		h.checkDrops(map[stats.Reason]uint64{stats.DropChecksum: 1})
		for _, off := range []byte{0x40, 0xf0} {
			p := syn()
			p.L4[12] = off
			setChecksum(p)
			c.send(p)
		}
		h.checkDrops(map[stats.Reason]uint64{stats.DropChecksum: 1, stats.DropBadSegment: 2})
		h.quiet(50 * time.Millisecond)
		if n, _ := h.flows(); n != 0 {
			t.Fatalf("%d flows, want none", n)
		}
		c.send(syn())
		c.expect("SYN-ACK", flagSYN|flagACK)
	})
}

// TestFastRetransmit: three duplicate ACKs from the guest send what it
// did not acknowledge again, at the same sequence numbers.
func TestFastRetransmit(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40007)
		down := pattern(4000, 4)
		c.download("data", srv, down, false)
		for range 2 {
			c.send(c.seg(flagACK, nil))
		}
		h.quiet(20 * time.Millisecond)
		if n := h.st.TCPRetransmits.Load(); n != 0 {
			t.Fatalf("TCPRetransmits %d after two duplicate ACKs", n)
		}
		c.send(c.seg(flagACK, nil))
		if got := c.recv("retransmission", len(down), false); !bytes.Equal(got, down) {
			t.Fatal("retransmitted data changed")
		}
		if n := h.st.TCPRetransmits.Load(); n != 1 {
			t.Errorf("TCPRetransmits %d, want 1", n)
		}
		c.ack += uint32(len(down))
		c.send(c.seg(flagACK, nil))
		c.download("data after the retransmission", srv, pattern(100, 5), true)
	})
}

// TestZeroWindow: with the guest's window closed nothing but window
// probes reaches it; its window update lets the data through.
func TestZeroWindow(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40008)
		c.wnd = 0
		c.send(c.seg(flagACK, nil))
		down := pattern(5000, 6)
		if _, err := srv.Write(down); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
			s := h.next(time.Until(deadline))
			if s == nil {
				break
			}
			// A zero window probe: an ACK just below the window.
			if s.flags != flagACK || len(s.payload) != 0 || s.seq != c.ack-1 {
				t.Fatalf("%v reached a guest with a zero window", s)
			}
		}
		c.wnd = 0xffff
		c.send(c.seg(flagACK, nil))
		if got := c.recv("data after the window update", len(down), true); !bytes.Equal(got, down) {
			t.Fatal("data changed")
		}
	})
}

// TestTimers: once the handshake measured the round trip (far below
// minRTO here), data the guest does not acknowledge is sent again after
// minRTO, then after twice that, not on the once-a-second tick; with
// the guest's window shut and its window update lost, the persist timer
// probes at the same intervals, and the guest's answer with an open
// window lets the data through.
func TestTimers(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40015)
		// between waits for the next segment to the guest and checks it
		// came lo to hi after from.
		between := func(what string, from time.Time, lo, hi time.Duration) (*rxSeg, time.Time) {
			t.Helper()
			s := h.next(hi + time.Second)
			at := time.Now()
			if s == nil {
				t.Fatalf("%s: nothing within %v", what, hi+time.Second)
			}
			if d := at.Sub(from); d < lo || d > hi {
				t.Errorf("%s %v after, want %v to %v", what, d.Round(time.Millisecond), lo, hi)
			}
			return s, at
		}
		down := pattern(3000, 13)
		if _, err := srv.Write(down); err != nil {
			t.Fatal(err)
		}
		c.recv("data", len(down), false)
		sent := time.Now()
		r1, at1 := between("first retransmission", sent, minRTO*3/4, 3*minRTO)
		if r1.seq != c.ack || !bytes.Equal(r1.payload, down[:len(r1.payload)]) {
			t.Fatalf("first retransmission %v, want the data from %d", r1, c.ack)
		}
		for h.next(20*time.Millisecond) != nil { // the rest of the flight
		}
		r2, _ := between("second retransmission", at1, 2*minRTO*3/4, 6*minRTO)
		if r2.seq != c.ack {
			t.Fatalf("second retransmission %v, want seq %d", r2, c.ack)
		}
		for h.next(20*time.Millisecond) != nil {
		}
		c.ack += uint32(len(down))
		c.wnd = 0
		c.send(c.seg(flagACK, nil))
		h.quiet(20 * time.Millisecond)
		shut := time.Now()
		if _, err := srv.Write(down); err != nil {
			t.Fatal(err)
		}
		p1, at1 := between("first window probe", shut, minRTO*3/4, 3*minRTO)
		p2, _ := between("second window probe", at1, 2*minRTO*3/4, 6*minRTO)
		for _, p := range []*rxSeg{p1, p2} {
			if p.flags != flagACK || len(p.payload) != 0 || p.seq != c.ack-1 {
				t.Fatalf("%v, want a window probe at %d", p, c.ack-1)
			}
		}
		c.wnd = 0xffff
		c.send(c.seg(flagACK, nil))
		if got := c.recv("data after the window opened", len(down), true); !bytes.Equal(got, down) {
			t.Fatal("data changed")
		}
		if n := h.st.TCPRetransmits.Load(); n != 2 {
			t.Errorf("TCPRetransmits %d, want 2", n)
		}
	})
}

// TestBulkDownload: 200 KiB from the server reach the guest byte for
// byte through a window of 16 KiB that the guest opens with an ACK per
// segment, both with the peek offset and with the discard buffer.
func TestBulkDownload(t *testing.T) {
	for _, noPeek := range []bool{false, true} {
		t.Run("NoPeekOffset="+strconv.FormatBool(noPeek), func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.NoPeekOffset = noPeek })
			if h.e.peekOff == noPeek {
				t.Skipf("peek offset %v", h.e.peekOff)
			}
			ln := listen(t, false, 8080)
			c := newGuestConn(h, false, 40009, 8080)
			syn := c.tcp(flagSYN, guestISN)
			syn.Window = 16384
			syn.Options = []layers.TCPOption{
				{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
				{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{0}},
			}
			c.send(c.frame(syn, nil))
			sa := c.expect("SYN-ACK", flagSYN|flagACK)
			srv := accept(t, ln)
			c.seq, c.ack, c.wnd, c.scale = guestISN+1, sa.seq+1, 16384, 0
			c.send(c.seg(flagACK, nil))

			down := pattern(200<<10, 7)
			werr := make(chan error, 1)
			go func() {
				_, err := srv.Write(down)
				werr <- err
			}()
			if got := c.recv("download", len(down), true); !bytes.Equal(got, down) {
				i := 0
				for i < len(got) && got[i] == down[i] {
					i++
				}
				t.Fatalf("download differs from byte %d on", i)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			c.hostClose(srv)
			h.checkDrops(nil)
			if n := h.st.TCPRetransmits.Load(); n != 0 {
				t.Errorf("%d retransmissions", n)
			}
		})
	}
}

// TestHalfClose: after the guest's FIN the server's data still reaches
// the guest, and its close ends the connection.
func TestHalfClose(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40010)
		c.guestClose(srv)
		c.download("data after the guest's FIN", srv, pattern(20000, 8), true)
		c.hostClose(srv)
		h.checkFreed()
		h.quiet(20 * time.Millisecond)
	})
}

// forward adds a -t forward of the loopback's port to the guest's
// toPort while the loop runs and connects a client to it: the guest gets
// a SYN from the gateway, at the client's port, with our MSS and window
// scale. It returns the client, the guest's end (its sequence numbers
// not set) and the SYN.
func (h *harness) forward(v6 bool, port, toPort uint16) (net.Conn, *guestConn, *rxSeg) {
	t := h.t
	t.Helper()
	f := fwd.Forward{Proto: fwd.TCP, Addr: loopback(v6), Port: port, ToPort: toPort}
	if err := h.e.AddForward(f); err != nil {
		t.Fatal(err)
	}
	cl, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback(v6), port).String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	c := newGuestConn(h, v6, toPort, uint16(cl.LocalAddr().(*net.TCPAddr).Port))
	syn := c.expect("SYN to the guest", flagSYN)
	wantMSS := 1460
	if v6 {
		wantMSS = 1440
	}
	if syn.ack != 0 || syn.mss != wantMSS || syn.ws != ourScale || !syn.sackOK || len(syn.payload) != 0 {
		t.Fatalf("SYN %v; want MSS %d, window scale %d, SACK-permitted", syn, wantMSS, ourScale)
	}
	return cl, c, syn
}

// synAck answers our SYN syn with the guest's SYN-ACK at isn, with
// options opts, and expects our ACK of it.
func (c *guestConn) synAck(syn *rxSeg, isn uint32, opts []layers.TCPOption) {
	c.h.t.Helper()
	sa := c.tcp(flagSYN|flagACK, isn)
	sa.Ack = syn.seq + 1
	sa.Options = opts
	c.send(c.frame(sa, nil))
	c.seq, c.ack = isn+1, syn.seq+1
	c.expectAck("ACK of the guest's SYN-ACK")
}

// TestListener: a -t forward added while the loop runs: a client on the
// host's loopback appears to the guest as the gateway, its connection is
// established by the guest's SYN-ACK, data goes both ways, and the
// guest's RST resets the client; once the forward is removed the port is
// closed.
func TestListener(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h := newHarness(t, nil)
		const port, toPort = 2222, 22
		cl, c, syn := h.forward(v6, port, toPort)
		c.synAck(syn, guestISN, synOptions())

		c.download("client's data", cl, pattern(3000, 9), true)
		c.write("ACK of the guest's data", []byte("hello, client"))
		readFull(t, cl, []byte("hello, client"))

		c.send(c.seg(flagRST, nil))
		readReset(t, cl)
		h.checkFreed()
		h.checkDrops(nil)

		if err := h.e.RemoveForward(fwd.Forward{Proto: fwd.TCP, Addr: loopback(v6), Port: port, ToPort: toPort}); err != nil {
			t.Error(err)
		}
		if _, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback(v6), port).String(), wait); !errors.Is(err, unix.ECONNREFUSED) {
			t.Errorf("connect after RemoveForward: %v, want ECONNREFUSED", err)
		}
	})
}

// TestListenerNoMSS: a guest whose SYN-ACK has no MSS option gets
// segments of the default MSS, 536 bytes (RFC 9293 3.7.1).
func TestListenerNoMSS(t *testing.T) {
	h := newHarness(t, nil)
	cl, c, syn := h.forward(false, 2222, 22)
	sa := c.tcp(flagSYN|flagACK, 1000)
	sa.Ack = syn.seq + 1
	c.send(c.frame(sa, nil))
	c.seq, c.ack, c.scale = 1001, syn.seq+1, 0
	c.expectAck("ACK of the guest's SYN-ACK")
	// One write of the client's: one read of the engine's, cut in
	// segments of the MSS.
	data := pattern(1000, 10)
	if _, err := cl.Write(data); err != nil {
		t.Fatal(err)
	}
	c.maxSeg = 536
	first := c.recv("data", 536, true)
	if rest := c.recv("data", 464, true); !bytes.Equal(append(first, rest...), data) {
		t.Fatal("data changed")
	}
}

// TestPeerReset: a reset from the server becomes a RST to the guest, at
// our next sequence number, and frees the flow.
func TestPeerReset(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40011)
		_ = srv.SetLinger(0)
		srv.Close()
		rst := c.expect("reset", flagRST|flagACK)
		if rst.seq != c.ack || rst.ack != c.seq || rst.wnd != 0 {
			t.Fatalf("reset %v; want seq %d ack %d window 0", rst, c.ack, c.seq)
		}
		h.checkFreed()
	})
}

// TestOutOfOrder: segments beyond a hole (two, the second overlapping
// the first, then one beyond a second hole, then the guest's FIN beyond
// it) each get a duplicate ACK for the hole and do not reach the server
// yet, but are held: once the first hole is filled, one ACK covers the
// held segment that follows it, and once the second is filled, the
// server reads the whole stream in order and end of file, and the ACK
// covers the FIN, without the guest sending anything twice. Before, a
// keepalive (one byte below the next) is answered and turns keepalives
// on.
func TestOutOfOrder(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40012)
		// A keepalive (one byte below the next) is answered, and turns
		// keepalives on for the host socket.
		c.send(c.frame(c.tcp(flagACK, c.seq-1), nil))
		c.expectAck("ACK of a keepalive")
		_, fd := h.hostSide(c)
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE); err != nil || v != 1 {
			t.Errorf("SO_KEEPALIVE %d, %v; want on", v, err)
		}
		up, base := pattern(5000, 11), c.seq
		at := func(from, to int, flags uint8) *packet.Parsed {
			return c.frame(c.tcp(flags, base+uint32(from)), up[from:to])
		}
		c.send(at(1000, 1700, flagACK|flagPSH))
		c.expectAck("duplicate ACK for the hole")
		c.send(at(1500, 2200, flagACK|flagPSH))
		c.expectAck("duplicate ACK for the hole, again")
		c.send(at(3000, 4000, flagACK|flagPSH))
		c.expectAck("duplicate ACK for the hole, a third")
		c.send(c.frame(c.tcp(flagACK|flagFIN, base+4000), nil))
		c.expectAck("duplicate ACK for the hole, with a FIN beyond")
		h.checkHeld(2200)
		c.send(at(0, 1000, flagACK|flagPSH))
		c.seq += 2200
		c.expectAck("ACK of the first hole and what was held after it")
		c.send(at(800, 3000, flagACK|flagPSH)) // 2200 to 3000 new
		c.seq = base + 4000 + 1
		c.expectAck("ACK of everything, FIN included")
		readFull(t, srv, up[:4000])
		readEOF(t, srv)
		if got := h.st.TCPHeld.Load(); got != 4 {
			t.Errorf("%d segments held, want 4", got)
		}
		h.checkDrops(nil)
	})
}

// TestSACK: a guest that permits SACK in its SYN gets SACK-permitted in
// our SYN-ACK, and while segments are held beyond holes our ACKs carry
// their blocks, adjacent ones merged, the latest first, at most four;
// once the holes are filled the ACK has none, and the server reads the
// stream whole. Through a listener, our SYN offers SACK and a guest whose
// SYN-ACK permits it gets the blocks too.
func TestSACK(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h := newHarness(t, nil)
		c, srv := h.connectSACK(v6, listen(t, v6, 8080), 40014, 8080, true)
		up, base := pattern(6000, 12), c.seq
		at := func(from, to int) *packet.Parsed {
			return c.frame(c.tcp(flagACK|flagPSH, base+uint32(from)), up[from:to])
		}
		type b = [2]uint32
		c.send(at(1000, 2000))
		c.expectSACK("one block", base, b{1000, 2000})
		c.send(at(2000, 2500))
		c.expectSACK("the block grown", base, b{1000, 2500})
		c.send(at(4000, 4500))
		c.expectSACK("the latest first", base, b{4000, 4500}, b{1000, 2500})
		c.send(at(3000, 3500))
		c.expectSACK("the latest first, the others in order", base, b{3000, 3500}, b{1000, 2500}, b{4000, 4500})
		c.send(at(5000, 5100))
		c.expectSACK("four blocks", base, b{5000, 5100}, b{1000, 2500}, b{3000, 3500}, b{4000, 4500})
		c.send(at(5200, 5300))
		c.expectSACK("four blocks of five", base, b{5200, 5300}, b{1000, 2500}, b{3000, 3500}, b{4000, 4500})
		c.send(at(0, 1000))
		c.seq = base + 2500
		c.expectSACK("the first hole filled", base, b{5200, 5300}, b{3000, 3500}, b{4000, 4500}, b{5000, 5100})
		fin := c.frame(c.tcp(flagACK|flagFIN, base+6000), nil)
		c.send(at(2500, 3000), at(3500, 4000), at(4500, 5000), at(5100, 5200), at(5300, 6000), fin)
		c.seq = base + 6001
		c.expectAck("every hole filled: no SACK")
		readFull(t, srv, up)
		readEOF(t, srv)
		h.checkDrops(nil)

		cl, lc, syn := h.forward(v6, 2222, 22)
		lc.synAck(syn, guestISN, append(synOptions(), sackPermittedOption))
		lc.send(lc.frame(lc.tcp(flagACK|flagPSH, lc.seq+10), []byte("later")))
		lc.expectSACK("a block through the listener", lc.seq, b{10, 15})
		lc.send(lc.seg(flagACK|flagPSH, []byte("0123456789")))
		lc.seq += 15
		lc.expectAck("the hole filled")
		readFull(t, cl, []byte("0123456789later"))
	})
}

// TestDataAfterFIN: data a guest sends at or after its FIN's sequence
// number, in the same batch as the FIN or later, is not taken: the
// server reads the stream up to the FIN and then its end, and the ACK
// covers the FIN and nothing beyond it.
func TestDataAfterFIN(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		_, c, srv := established(t, v6, 40016)
		up := pattern(600, 14)
		fin := c.frame(c.tcp(flagACK|flagPSH|flagFIN, c.seq), up[:100])
		after := c.frame(c.tcp(flagACK|flagPSH, c.seq+100), up[100:600])
		c.send(fin, after)
		c.seq += 101
		c.expectAck("ACK of the FIN, not of the data after it")
		c.send(c.frame(c.tcp(flagACK|flagPSH, c.seq), up[:50]))
		c.expectAck("ACK of data after the FIN, in a later batch")
		readFull(t, srv, up[:100])
		readEOF(t, srv)
	})
}

// TestOutOfOrderReset: what a connection holds beyond a hole is released
// when the connection ends (the guest's RST), and a segment that would
// take more than a connection may hold is dropped and counted, not held.
func TestOutOfOrderReset(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, _ := established(t, v6, 40013)
		c.send(c.frame(c.tcp(flagACK|flagPSH, c.seq+100), pattern(1000, 3)))
		c.expectAck("duplicate ACK for the hole")
		c.send(c.frame(c.tcp(flagACK|flagPSH, c.seq+heldMaxBytes), pattern(1000, 4)))
		c.expectAck("duplicate ACK for the hole, far beyond")
		h.checkHeld(1000)
		c.send(c.seg(flagRST, nil))
		h.checkFreed()
		h.checkHeld(0)
		h.checkDrops(map[stats.Reason]uint64{stats.DropOutOfOrder: 1})
	})
}

// TestBeyondWindow: segments the guest sent beyond the window we last
// advertised (a window that shrank while they were on their way) are
// taken when the host socket has room for them, not dropped: in one
// batch, the guest sends four times the window; every byte reaches the
// server, and one ACK acknowledges it all.
func TestBeyondWindow(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40011)
		_, fd := h.hostSide(c)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20); err != nil {
			t.Fatal(err)
		}
		idx := h.flowIndex(c)
		h.e.tab.Mu.Lock()
		wnd := h.e.conns[idx].rcvWnd
		h.e.tab.Mu.Unlock()
		up := pattern(int(wnd)*4, 9)
		var batch []*packet.Parsed
		for off := 0; off < len(up); off += c.maxSeg {
			batch = append(batch, c.frame(c.tcp(flagACK, c.seq+uint32(off)), up[off:min(off+c.maxSeg, len(up))]))
		}
		c.send(batch...)
		c.seq += uint32(len(up))
		c.expectAck("one ACK of all four windows")
		readFull(t, srv, up)
	})
}

// TestPartialSend: when the host socket takes only part of what the
// guest sent, the rest is not acknowledged, and once the socket has room
// again the window update comes with three duplicate ACKs, so that the
// guest retransmits at once instead of after its timeout.
func TestPartialSend(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h, c, srv := established(t, v6, 40012)
		// The server reads nothing yet: fill its receive queue and our
		// send buffer with far more than they hold. Both buffers are
		// fixed, so that the kernel makes no room on its own.
		if err := srv.SetReadBuffer(32 << 10); err != nil {
			t.Fatal(err)
		}
		_, fd := h.hostSide(c)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10); err != nil {
			t.Fatal(err)
		}
		up := pattern(2<<20, 10)
		sent := 0
		for sent < len(up) {
			var batch []*packet.Parsed
			for off := sent; off < len(up) && len(batch) < 64; off += c.maxSeg {
				batch = append(batch, c.frame(c.tcp(flagACK, c.seq+uint32(off-sent)), up[off:min(off+c.maxSeg, len(up))]))
			}
			c.send(batch...)
			var acked uint32
			for s := h.next(50 * time.Millisecond); s != nil; s = h.next(20 * time.Millisecond) {
				if a := s.ack - c.seq; a > acked && a <= uint32(len(up)) {
					acked = a
				}
			}
			if acked == 0 {
				break // the socket took nothing more
			}
			sent += int(acked)
			c.seq += acked
		}
		if sent >= len(up) {
			t.Fatalf("the host socket took all %d bytes: nothing to test", sent)
		}
		// The server reads: the socket drains, the window reopens with
		// an update and three duplicates of it.
		got := make([]byte, sent)
		if _, err := io.ReadFull(srv, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, up[:sent]) {
			t.Fatal("data changed")
		}
		var acks []*rxSeg
		for s := h.next(1500 * time.Millisecond); s != nil && len(acks) < 8; s = h.next(50 * time.Millisecond) {
			acks = append(acks, s)
		}
		if len(acks) < 4 {
			t.Fatalf("%d segments after the socket drained, want a window update and 3 duplicates: %v", len(acks), acks)
		}
		for _, s := range acks[:4] {
			if s.flags != flagACK || s.ack != c.seq || s.wnd == 0 || s.wnd != acks[0].wnd || len(s.payload) != 0 {
				t.Fatalf("%v among %v, want 4 equal ACKs of %d with an open window", s, acks, c.seq)
			}
		}
	})
}

// flowIndex is the index of c's flow.
func (h *harness) flowIndex(c *guestConn) int32 {
	h.e.tab.Mu.Lock()
	defer h.e.tab.Mu.Unlock()
	ref, ok := h.e.tab.Lookup(flow.Key{Type: flow.TypeTCP, PIF: flow.PIFTap, EAddr: c.guest, EPort: c.gport, FAddr: c.gw, FPort: c.port})
	if !ok {
		h.t.Fatal("no flow")
	}
	return ref.Index
}

// TestListenerTimeWait: a guest that still holds an older connection of
// the same addresses and ports in TIME-WAIT answers our SYN with an ACK
// of that connection: it gets a RST at the sequence number it
// acknowledged (RFC 9293 3.10.7.3), with no ACK, and our next SYN opens
// the connection. Initial sequence numbers of the same four-tuple grow
// with time (RFC 6528), those of others do not follow them.
func TestListenerTimeWait(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h := newHarness(t, nil)
		cl, c, syn := h.forward(v6, 2222, 22)
		oldAck := syn.seq - 100000
		ack := c.tcp(flagACK, 5000)
		ack.Ack = oldAck
		c.send(c.frame(ack, nil))
		rst := c.expect("RST for the old connection's ACK", flagRST)
		if rst.seq != oldAck {
			t.Fatalf("RST %v, want seq %d", rst, oldAck)
		}
		again := c.expect("SYN again", flagSYN)
		if again.seq != syn.seq {
			t.Fatalf("SYN again %v, want seq %d", again, syn.seq)
		}
		c.synAck(syn, guestISN, synOptions())
		c.write("data", []byte("after TIME-WAIT"))
		readFull(t, cl, []byte("after TIME-WAIT"))
	})
}

// TestListenerReuse: the host client reconnects from the port of a
// connection that ended (the guest's FIN, then the client's) while our
// FIN still waits for the guest's ACK. The host kernel takes the new SYN
// on its TIME-WAIT socket; the guest gets a RST after our FIN for the
// old connection, then the SYN of the new one, which carries data. A
// connection with data still unacknowledged is not superseded: the new
// client is reset instead.
func TestListenerReuse(t *testing.T) {
	families(t, func(t *testing.T, v6 bool) {
		h := newHarness(t, nil)
		cl, c, syn := h.forward(v6, 2222, 22)
		c.synAck(syn, guestISN, synOptions())
		c.guestClose(cl)
		local := cl.LocalAddr().(*net.TCPAddr)
		cl.Close()
		fin := c.expect("our FIN", flagFIN|flagACK)
		if fin.seq != c.ack {
			t.Fatalf("FIN %v, want seq %d", fin, c.ack)
		}
		// The guest's ACK of our FIN is lost.

		d := net.Dialer{LocalAddr: local, Timeout: wait}
		var again net.Conn
		var err error
		for range 50 { // until the client's own socket has left LAST-ACK
			if again, err = d.Dial("tcp", netip.AddrPortFrom(loopback(v6), 2222).String()); !errors.Is(err, unix.EADDRINUSE) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer again.Close()
		rst := c.expect("RST ending the old connection", flagRST|flagACK)
		if rst.seq != fin.seq+1 {
			t.Fatalf("RST %v, want seq %d", rst, fin.seq+1)
		}
		syn2 := c.expect("SYN of the new connection", flagSYN)
		if syn2.seq-syn.seq > 1<<30 {
			t.Fatalf("new SYN %v does not start above the old ISN %d", syn2, syn.seq)
		}
		c.synAck(syn2, guestISN-5000, synOptions())
		c.write("data on the new connection", []byte("second"))
		readFull(t, again, []byte("second"))
		if n := h.e.st.TCPSuperseded.Load(); n != 1 {
			t.Errorf("superseded %d, want 1", n)
		}

		// Data to the guest still unacknowledged: the old connection
		// stays, the new client is reset.
		if _, err := again.Write([]byte("unacknowledged")); err != nil {
			t.Fatal(err)
		}
		c.recv("the client's data", len("unacknowledged"), false)
		c.send(c.seg(flagFIN|flagACK, nil))
		c.seq++
		c.expect("ACK of the guest's FIN", flagACK)
		readEOF(t, again)
		again.Close()
		var third net.Conn
		for range 50 {
			if third, err = d.Dial("tcp", netip.AddrPortFrom(loopback(v6), 2222).String()); !errors.Is(err, unix.EADDRINUSE) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err == nil {
			defer third.Close()
			readReset(t, third)
		} else if !errors.Is(err, unix.ECONNRESET) {
			t.Fatal(err)
		}
		if n := h.e.st.TCPSuperseded.Load(); n != 1 {
			t.Errorf("superseded %d, want still 1", n)
		}
		// The engine counts the drop after it reset the client.
		deadline := time.Now().Add(wait)
		for h.e.st.Drops[stats.DropNoFlow].Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := h.e.st.Drops[stats.DropNoFlow].Load(); n != 1 {
			t.Errorf("no-flow drops %d, want 1 (the third client)", n)
		}
	})
}

// TestISN: initial sequence numbers (RFC 6528) of one four-tuple move
// forward with the clock, by about one every 64 ns; another four-tuple's
// are unrelated.
func TestISN(t *testing.T) {
	h := newHarness(t, nil)
	s := flow.Side{EAddr: netip.MustParseAddr("192.0.2.2"), EPort: 40000, FAddr: netip.MustParseAddr("192.0.2.1"), FPort: 22}
	a := h.e.isn(&s, 1e9)
	b := h.e.isn(&s, 2e9)
	if d := b - a; d != uint32(2e9>>6)-uint32(1e9>>6) {
		t.Errorf("ISN after 1 s moved by %d, want %d", d, uint32(2e9>>6)-uint32(1e9>>6))
	}
	o := s
	o.EPort++
	if d := h.e.isn(&o, 1e9) - a; d < 1<<16 || d > ^uint32(0)-1<<16 {
		t.Errorf("ISNs of two four-tuples %d apart", d)
	}
}

// TestSteadyStateAllocs: the guest's data path allocates nothing per
// segment once a connection runs: a batch of the guest's segments goes
// to the socket and its ACK back to the guest without a heap allocation
// (the server reads meanwhile).
func TestSteadyStateAllocs(t *testing.T) {
	h, c, srv := established(t, false, 40013)
	const runs, per = 200, 4
	go func() { _, _ = io.Copy(io.Discard, srv) }()
	batches := make([][]*packet.Parsed, runs+1)
	data := pattern(1000, 11)
	for i := range batches {
		for range per {
			batches[i] = append(batches[i], c.frame(c.tcp(flagACK|flagPSH, c.seq), data))
			c.seq += uint32(len(data))
		}
	}
	h.tap.discard.Store(true)
	before := h.tap.counted.Load()
	i := 0
	allocs := testing.AllocsPerRun(runs, func() {
		h.e.HandleTap(batches[i])
		i++
	})
	if got := h.tap.counted.Load() - before; got < runs {
		t.Fatalf("%d frames to the guest for %d batches: the data did not go through", got, runs)
	}
	if allocs > 0 {
		t.Errorf("%.2f allocations per batch of %d segments, want 0", allocs, per)
	}
}
