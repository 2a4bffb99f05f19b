package udp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/autoscan"
	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/toguest"
)

var (
	guestMAC = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 1}
	ourMAC   = packet.MAC{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
	guest4   = netip.MustParseAddr("192.0.2.2")
	gw4      = netip.MustParseAddr("192.0.2.1")
	guest6   = netip.MustParseAddr("2001:db8::2")
	gw6      = netip.MustParseAddr("2001:db8::1")
)

// fakeTap collects the frames the engine writes to the guest.
type fakeTap struct{ frames chan []byte }

func (f *fakeTap) WriteFrame(b []byte) error {
	f.frames <- bytes.Clone(b)
	return nil
}

// testConfig is the configuration of an engine that writes to ep, with
// a loop of its own (not running) and a flow table for 65536 flows.
func testConfig(t *testing.T, ep toguest.FrameWriter, g *fwd.Guest, r *fwd.Rules, offload bool, fwds ...Forward) Config {
	t.Helper()
	loop, err := evloop.New()
	if err != nil {
		t.Fatal(err)
	}
	st := &stats.Counters{}
	return Config{Rules: r, Guest: g, Loop: loop, Flows: flow.NewTable(65536), Stats: st,
		Out:      toguest.New(toguest.Config{EP: ep, Guest: g, OurMAC: ourMAC, Stats: st, Offload: offload}),
		Forwards: fwds, Timeout: time.Minute, StreamTimeout: time.Minute, Offload: offload}
}

// run runs e's loop until the test ends.
func run(t *testing.T, e *Engine) {
	done := make(chan error)
	go func() { done <- e.loop.Run() }()
	t.Cleanup(func() {
		e.loop.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
		e.Release()
	})
}

func newEngine(t *testing.T, fwds ...Forward) (*Engine, *fakeTap, *fwd.Guest) {
	t.Helper()
	tap := &fakeTap{frames: make(chan []byte, 256)}
	g := fwd.NewGuest(guest4, guest6)
	g.SeeMAC(packet.MAC(guestMAC))
	e, err := New(testConfig(t, tap, g, &fwd.Rules{MapHostLoopback4: gw4, MapHostLoopback6: gw6, IPv4: true, IPv6: true}, false, fwds...))
	if err != nil {
		t.Fatal(err)
	}
	run(t, e)
	return e, tap, g
}

// guestFrame builds a UDP frame from the guest with gopacket.
func guestFrame(t *testing.T, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: guestMAC, DstMAC: net.HardwareAddr(ourMAC[:])}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func parse(t *testing.T, frame []byte) *packet.Parsed {
	t.Helper()
	p := &packet.Parsed{}
	if d := packet.Parse(frame, p); d != packet.DropNone {
		t.Fatalf("parse: %v", d)
	}
	return p
}

// checkFrame decodes a frame written to the guest with gopacket and checks
// addresses, ports, payload and checksums.
func checkFrame(t *testing.T, frame []byte, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("frame does not decode: %v", el.Error())
	}
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.DstMAC, guestMAC) || !bytes.Equal(eth.SrcMAC, ourMAC[:]) {
		t.Errorf("MACs %v -> %v", eth.SrcMAC, eth.DstMAC)
	}
	udp := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	var netl gopacket.NetworkLayer
	var s, d net.IP
	if l, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		netl, s, d = l, l.SrcIP, l.DstIP
		// IPv4 header checksum: re-encode and compare.
		want := l.Checksum
		c := *l
		if err := c.SerializeTo(gopacket.NewSerializeBuffer(), gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
			t.Fatal(err)
		}
		if c.Checksum != want {
			t.Errorf("IPv4 header checksum %04x, want %04x", want, c.Checksum)
		}
	} else {
		l := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		netl, s, d = l, l.SrcIP, l.DstIP
	}
	if !s.Equal(src.Addr().AsSlice()) || !d.Equal(dst.Addr().AsSlice()) || uint16(udp.SrcPort) != src.Port() || uint16(udp.DstPort) != dst.Port() {
		t.Errorf("got %v:%d -> %v:%d, want %v -> %v", s, udp.SrcPort, d, udp.DstPort, src, dst)
	}
	if !bytes.Equal(udp.Payload, payload) {
		t.Errorf("payload differs (%d bytes, want %d)", len(udp.Payload), len(payload))
	}
	want := udp.Checksum
	c := *udp
	_ = c.SetNetworkLayerForChecksum(netl)
	if err := gopacket.SerializeLayers(gopacket.NewSerializeBuffer(), gopacket.SerializeOptions{ComputeChecksums: true},
		&c, gopacket.Payload(udp.Payload)); err != nil {
		t.Fatal(err)
	}
	if c.Checksum != want {
		t.Errorf("UDP checksum %04x, want %04x", want, c.Checksum)
	}
}

func recvFrame(t *testing.T, tap *fakeTap) []byte {
	t.Helper()
	select {
	case f := <-tap.frames:
		return f
	case <-time.After(3 * time.Second):
		t.Fatal("no frame reached the guest")
		return nil
	}
}

// TestGuestToLoopbackEcho sends frames from the guest to its gateway; the
// engine must map them to the host's loopback, keep the source port, and
// turn the echo into a well-formed frame from the gateway.
func TestGuestToLoopbackEcho(t *testing.T) {
	for _, c := range []struct {
		loop, gw, guest netip.Addr
		network         string
	}{
		{netip.MustParseAddr("127.0.0.1"), gw4, guest4, "udp4"},
		{netip.IPv6Loopback(), gw6, guest6, "udp6"},
	} {
		t.Run(c.network, func(t *testing.T) {
			e, tap, _ := newEngine(t)
			srv, err := net.ListenUDP(c.network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.loop, 0)))
			if err != nil {
				t.Skipf("no loopback for %s: %v", c.network, err)
			}
			defer srv.Close()
			port := uint16(srv.LocalAddr().(*net.UDPAddr).Port)
			// A port that was just free on the host, so the engine can
			// keep it as the source port.
			src := netip.AddrPortFrom(c.guest, freePortOn(t, c.network, c.loop))
			dst := netip.AddrPortFrom(c.gw, port)

			payloads := [][]byte{{}, []byte("x"), bytes.Repeat([]byte("gopasst"), 196), bytes.Repeat([]byte{0xa5}, 65000)}
			var pkts []*packet.Parsed
			for _, pl := range payloads {
				pkts = append(pkts, parse(t, guestFrame(t, src, dst, pl)))
			}
			e.HandleTap(pkts)
			buf := make([]byte, 65535)
			for _, pl := range payloads {
				_ = srv.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, from, err := srv.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf[:n], pl) {
					t.Fatalf("host got %d bytes, want %d", n, len(pl))
				}
				if from.Port() != src.Port() {
					t.Errorf("source port %d, want the guest's %d", from.Port(), src.Port())
				}
				if _, err := srv.WriteToUDPAddrPort(buf[:n], from); err != nil {
					t.Fatal(err)
				}
			}
			for _, pl := range payloads {
				checkFrame(t, recvFrame(t, tap), dst, src, pl)
			}
			if e.Flows() != 1 {
				t.Errorf("%d flows, want 1", e.Flows())
			}
			// The flow's reply socket is the engine's only socket.
			if own := e.OwnInodes(); len(own) != 1 {
				t.Errorf("engine reports %d sockets of its own, want 1", len(own))
			}
		})
	}
}

// TestForwardToGuest sends to a forwarded port from loopback: the guest
// sees the datagram from its gateway, on the remapped port, and its reply
// goes back to the sender.
func TestForwardToGuest(t *testing.T) {
	lport := freePort(t)
	e, tap, _ := newEngine(t, Forward{Proto: fwd.UDP, Addr: netip.MustParseAddr("127.0.0.1"), Port: lport, ToPort: 8053})
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), lport)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("question")); err != nil {
		t.Fatal(err)
	}
	cport := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	checkFrame(t, recvFrame(t, tap), netip.AddrPortFrom(gw4, cport), netip.AddrPortFrom(guest4, 8053), []byte("question"))

	// The guest answers from its port to the gateway address and port.
	e.HandleTap([]*packet.Parsed{parse(t, guestFrame(t, netip.AddrPortFrom(guest4, 8053), netip.AddrPortFrom(gw4, cport), []byte("answer")))})
	buf := make([]byte, 100)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("reply: %q %v", buf[:n], err)
	}
}

func freePort(t *testing.T) uint16 {
	return freePortOn(t, "udp4", netip.MustParseAddr("127.0.0.1"))
}

// freePortOn returns a UDP port that is free on every address of the
// family (the engine binds the unspecified address).
func freePortOn(t *testing.T, network string, a netip.Addr) uint16 {
	t.Helper()
	any := netip.IPv4Unspecified()
	if a.Is6() {
		any = netip.IPv6Unspecified()
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(any, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// TestHandleTapAllocs checks the guest-to-host path allocates nothing per
// datagram once the flow exists.
func TestHandleTapAllocs(t *testing.T) {
	e, _, _ := newEngine(t)
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	port := uint16(srv.LocalAddr().(*net.UDPAddr).Port)
	f := guestFrame(t, netip.AddrPortFrom(guest4, 41000), netip.AddrPortFrom(gw4, port), make([]byte, 1372))
	pkts := []*packet.Parsed{parse(t, f), parse(t, f), parse(t, f), parse(t, f)}
	e.HandleTap(pkts) // creates the flow
	if a := testing.AllocsPerRun(200, func() { e.HandleTap(pkts) }); a != 0 {
		t.Fatalf("%v allocations per batch", a)
	}
}

// TestAddRemoveForward opens and closes a forward while the engine runs:
// new senders reach the guest only while it exists, and flows it started
// survive it.
func TestAddRemoveForward(t *testing.T) {
	e, tap, _ := newEngine(t)
	lo := netip.MustParseAddr("127.0.0.1")
	f := Forward{Proto: fwd.UDP, Addr: lo, Port: freePort(t), ToPort: 9999}
	if err := e.AddForward(f); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, f.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	cport := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	checkFrame(t, recvFrame(t, tap), netip.AddrPortFrom(gw4, cport), netip.AddrPortFrom(guest4, 9999), []byte("hello"))

	// The listening socket is the engine's own, for automatic forwarding.
	bound, err := autoscan.Read("/proc/self/net")
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	for _, b := range bound {
		if b.Addr == lo && b.Port == f.Port {
			ino = b.Inode
		}
	}
	if ino == 0 || !e.OwnInodes()[ino] {
		t.Errorf("listening socket on port %d (inode %d) not among the engine's own %v", f.Port, ino, e.OwnInodes())
	}

	if err := e.RemoveForward(f); err != nil {
		t.Fatal(err)
	}
	// The flow keeps a duplicate of it: still bound, still ours.
	if !e.OwnInodes()[ino] {
		t.Errorf("duplicate of the closed listening socket (inode %d) not among the engine's own", ino)
	}
	if err := e.RemoveForward(f); err == nil {
		t.Fatal("removing twice succeeded")
	}
	// A new sender is no longer forwarded (the flow's duplicate of the
	// listening socket still holds the port, but nobody reads it for new
	// peers).
	c2, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, f.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	select {
	case fr := <-tap.frames:
		t.Fatalf("datagram from a new sender reached the guest after RemoveForward: %d bytes", len(fr))
	case <-time.After(300 * time.Millisecond):
	}
	// The flow the listener started lives on: the guest can still answer.
	e.HandleTap([]*packet.Parsed{parse(t, guestFrame(t, netip.AddrPortFrom(guest4, 9999), netip.AddrPortFrom(gw4, cport), []byte("still here")))})
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "still here" {
		t.Fatalf("reply after RemoveForward: %q %v", buf[:n], err)
	}
}

// batchTap records the batches the engine hands over.
type batchTap struct {
	fakeTap
	batches chan int
}

func (b *batchTap) WriteFrames(frames [][]byte) (int, error) {
	for _, f := range frames {
		b.frames <- bytes.Clone(f)
	}
	b.batches <- len(frames)
	return len(frames), nil
}

// TestBatchWrite checks that datagrams received together reach a batch
// endpoint in one call.
func TestBatchWrite(t *testing.T) {
	tap := &batchTap{fakeTap: fakeTap{frames: make(chan []byte, 64)}, batches: make(chan int, 8)}
	g := fwd.NewGuest(guest4, guest6)
	g.SeeMAC(packet.MAC(guestMAC))
	lo := netip.MustParseAddr("127.0.0.1")
	port := freePort(t)
	e, err := New(testConfig(t, tap, g, &fwd.Rules{MapHostLoopback4: gw4, IPv4: true, IPv6: true}, false,
		Forward{Proto: fwd.UDP, Addr: lo, Port: port, ToPort: 9053}))
	if err != nil {
		t.Fatal(err)
	}
	// Ten datagrams wait in the socket before the loop starts.
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 10; i++ {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	run(t, e)
	select {
	case n := <-tap.batches:
		if n != 10 {
			t.Fatalf("first batch of %d frames, want 10", n)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no batch written")
	}
	cport := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	for i := 0; i < 10; i++ {
		checkFrame(t, recvFrame(t, &tap.fakeTap), netip.AddrPortFrom(gw4, cport), netip.AddrPortFrom(guest4, 9053), []byte{byte(i)})
	}
}

// countTap counts frames and bytes without keeping them.
type countTap struct{ frames, bytes int }

func (c *countTap) WriteFrame(b []byte) error {
	c.frames++
	c.bytes += len(b)
	return nil
}

// TestToGuestAllocs checks the host-to-guest path (listening socket to
// tap) allocates nothing per datagram once the flow exists. The engine's
// loop is not running: the test calls it step by step.
func TestToGuestAllocs(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	port := freePort(t)
	tap := &countTap{}
	g := fwd.NewGuest(guest4, guest6)
	g.SeeMAC(packet.MAC(guestMAC))
	e, err := New(testConfig(t, tap, g, &fwd.Rules{MapHostLoopback4: gw4, MapHostLoopback6: gw6, IPv4: true, IPv6: true}, true,
		Forward{Proto: fwd.UDP, Addr: lo, Port: port, ToPort: 8053}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Release)
	l := &e.lst[0]
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := make([]byte, 1372)
	step := func() {
		for i := 0; i < 4; i++ {
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		e.fromListener(l)
	}
	step() // creates the flow; AllocsPerRun adds a warm-up run to its 200
	if a := testing.AllocsPerRun(200, step); a != 0 {
		t.Fatalf("%v allocations per batch of 4 datagrams", a)
	}
	if want := 202 * 4; tap.frames != want || tap.bytes != want*(len(p)+packet.EthLen+packet.IPv4Len+packet.UDPLen) {
		t.Fatalf("%d frames, %d bytes to the guest, want %d frames of %d payload bytes", tap.frames, tap.bytes, want, len(p))
	}
}
