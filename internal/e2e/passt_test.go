package e2e_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// fakeGuest speaks passt's framing over the socket, with frames built and
// parsed by gopacket.
type fakeGuest struct {
	t    *testing.T
	conn net.Conn
	mac  net.HardwareAddr
	ip4  netip.Addr
	ip6  netip.Addr
}

var guestMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0xaa}

// passt starts "gopasst passt -f -s SOCKET ARGS" in the sandbox host and
// returns the process and the socket path once it listens.
func passt(t *testing.T, sb *sandbox.Sandbox, args ...string) (*sandbox.Proc, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "passt.socket")
	p := sb.Start(t, sb.HostNS, gopasst, append([]string{"passt", "-f", "-s", sock}, args...)...)
	waitListening(t, p, sock)
	return p, sock
}

// waitListening waits until process p listens on the UNIX socket path,
// as its /proc/PID/net/unix shows (a probe connection would count as a
// guest).
func waitListening(t *testing.T, p *sandbox.Proc, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", p.Cmd.Process.Pid))
		for _, line := range strings.Split(string(b), "\n") {
			// Flags 00010000 mark a listening socket.
			if f := strings.Fields(line); len(f) >= 8 && f[len(f)-1] == path && f[3] == "00010000" {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("passt did not listen on %s\n%s", path, p.Stderr())
}

func connectGuest(t *testing.T, sock string) *fakeGuest {
	t.Helper()
	// The backlog holds one waiting guest, as the reference's does: retry
	// while the previous guest is still being let go.
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = net.Dial("unix", sock); !errors.Is(err, syscall.EAGAIN) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeGuest{t: t, conn: c, mac: guestMAC, ip4: sandbox.HostAddr4, ip6: sandbox.HostAddr6}
}

// frame serializes layers with lengths and checksums computed.
func frame(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// framed prefixes f with its length, as passt's protocol wants.
func framed(f []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(f)))
	return append(out, f...)
}

func (g *fakeGuest) write(b []byte) {
	g.t.Helper()
	if _, err := g.conn.Write(b); err != nil {
		g.t.Fatal(err)
	}
}

func (g *fakeGuest) send(ls ...gopacket.SerializableLayer) {
	g.t.Helper()
	g.write(framed(frame(g.t, ls...)))
}

// readFrame reads one frame, failing after timeout.
func (g *fakeGuest) readFrame(timeout time.Duration) ([]byte, error) {
	_ = g.conn.SetReadDeadline(time.Now().Add(timeout))
	var hdr [4]byte
	if _, err := io.ReadFull(g.conn, hdr[:]); err != nil {
		return nil, err
	}
	f := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(g.conn, f); err != nil {
		return nil, err
	}
	return f, nil
}

// expect reads frames until one satisfies match.
func (g *fakeGuest) expect(what string, match func(gopacket.Packet) bool) gopacket.Packet {
	g.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f, err := g.readFrame(time.Until(deadline))
		if err != nil {
			break
		}
		pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		if pkt.ErrorLayer() == nil && match(pkt) {
			return pkt
		}
	}
	g.t.Fatalf("no %s arrived", what)
	return nil
}

func (g *fakeGuest) eth(typ layers.EthernetType, dst net.HardwareAddr) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: g.mac, DstMAC: dst, EthernetType: typ}
}

var (
	bcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	gwMAC    = net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
)

// sendUDP sends a UDP datagram from the guest.
func (g *fakeGuest) sendUDP(src, dst netip.AddrPort, payload []byte) {
	g.t.Helper()
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	if src.Addr().Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip)
		g.send(g.eth(layers.EthernetTypeIPv4, gwMAC), ip, udp, gopacket.Payload(payload))
		return
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	_ = udp.SetNetworkLayerForChecksum(ip)
	g.send(g.eth(layers.EthernetTypeIPv6, gwMAC), ip, udp, gopacket.Payload(payload))
}

// expectUDP waits for a datagram from src to dst and returns its payload,
// after checking its checksum with gopacket.
func (g *fakeGuest) expectUDP(src, dst netip.AddrPort) []byte {
	g.t.Helper()
	pkt := g.expect(fmt.Sprintf("UDP %s -> %s", src, dst), func(p gopacket.Packet) bool {
		u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok || uint16(u.SrcPort) != src.Port() || uint16(u.DstPort) != dst.Port() {
			return false
		}
		s, d := addrs(p)
		return s == src.Addr() && d == dst.Addr()
	})
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.DstMAC, g.mac) {
		g.t.Errorf("frame to %v, want the guest's MAC %v", eth.DstMAC, g.mac)
	}
	u := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !udpChecksumOK(g.t, pkt) {
		g.t.Errorf("bad UDP checksum from %s", src)
	}
	return u.Payload
}

func addrs(p gopacket.Packet) (netip.Addr, netip.Addr) {
	switch l := p.NetworkLayer().(type) {
	case *layers.IPv4:
		s, _ := netip.AddrFromSlice(l.SrcIP)
		d, _ := netip.AddrFromSlice(l.DstIP)
		return s.Unmap(), d.Unmap()
	case *layers.IPv6:
		s, _ := netip.AddrFromSlice(l.SrcIP)
		d, _ := netip.AddrFromSlice(l.DstIP)
		return s, d
	}
	return netip.Addr{}, netip.Addr{}
}

// udpChecksumOK recomputes the UDP checksum with gopacket.
func udpChecksumOK(t *testing.T, p gopacket.Packet) bool {
	u := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	c := *u
	_ = c.SetNetworkLayerForChecksum(p.NetworkLayer())
	if err := gopacket.SerializeLayers(gopacket.NewSerializeBuffer(), gopacket.SerializeOptions{ComputeChecksums: true}, &c, gopacket.Payload(u.Payload)); err != nil {
		t.Fatal(err)
	}
	return c.Checksum == u.Checksum
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestPasstDHCP runs a DHCP exchange (discover, offer, request, ack, then
// a renewal) and checks the lease is the host's address and gateway.
func TestPasstDHCP(t *testing.T) {
	sb := sandbox.New(t)
	_, sock := passt(t, sb)
	g := connectGuest(t, sock)
	xid := uint32(0x1234abcd)
	dhcp := func(msg layers.DHCPMsgType, ciaddr net.IP, opts ...layers.DHCPOption) {
		d := &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6, Xid: xid,
			ClientHWAddr: g.mac, ClientIP: ciaddr, Flags: 0x8000,
			Options: append([]layers.DHCPOption{layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(msg)})}, opts...)}
		src := net.IPv4zero
		if ciaddr != nil {
			src = ciaddr
		}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src, DstIP: net.IPv4bcast}
		udp := &layers.UDP{SrcPort: 68, DstPort: 67}
		_ = udp.SetNetworkLayerForChecksum(ip)
		g.send(g.eth(layers.EthernetTypeIPv4, bcastMAC), ip, udp, d)
	}
	reply := func(want layers.DHCPMsgType) *layers.DHCPv4 {
		pkt := g.expect("DHCP "+want.String(), func(p gopacket.Packet) bool {
			d, ok := p.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
			return ok && d.Xid == xid && d.Operation == layers.DHCPOpReply
		})
		if !udpChecksumOK(t, pkt) {
			t.Error("bad UDP checksum on DHCP reply")
		}
		d := pkt.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
		if typ := dhcpOpt(d, layers.DHCPOptMessageType); len(typ) != 1 || layers.DHCPMsgType(typ[0]) != want {
			t.Fatalf("DHCP reply type %v, want %v", typ, want)
		}
		return d
	}
	dhcp(layers.DHCPMsgTypeDiscover, nil)
	offer := reply(layers.DHCPMsgTypeOffer)
	if !offer.YourClientIP.Equal(sandbox.HostAddr4.AsSlice()) {
		t.Fatalf("offered %v, want %v", offer.YourClientIP, sandbox.HostAddr4)
	}
	if r := dhcpOpt(offer, layers.DHCPOptRouter); !net.IP(r).Equal(sandbox.GatewayAddr4.AsSlice()) {
		t.Errorf("router %v", net.IP(r))
	}
	if m := dhcpOpt(offer, layers.DHCPOptSubnetMask); !bytes.Equal(m, []byte{255, 255, 255, 0}) {
		t.Errorf("mask %v", m)
	}
	if mtu := dhcpOpt(offer, layers.DHCPOptInterfaceMTU); len(mtu) != 2 || binary.BigEndian.Uint16(mtu) != 65520 {
		t.Errorf("MTU option %v", mtu)
	}
	server := dhcpOpt(offer, layers.DHCPOptServerID)
	dhcp(layers.DHCPMsgTypeRequest, nil,
		layers.NewDHCPOption(layers.DHCPOptRequestIP, offer.YourClientIP.To4()),
		layers.NewDHCPOption(layers.DHCPOptServerID, server))
	if ack := reply(layers.DHCPMsgTypeAck); !ack.YourClientIP.Equal(offer.YourClientIP) {
		t.Fatalf("ack for %v", ack.YourClientIP)
	}
	// Renewal: unicast-style request with ciaddr set.
	xid++
	dhcp(layers.DHCPMsgTypeRequest, offer.YourClientIP.To4())
	reply(layers.DHCPMsgTypeAck)
}

func dhcpOpt(d *layers.DHCPv4, typ layers.DHCPOpt) []byte {
	for _, o := range d.Options {
		if o.Type == typ {
			return o.Data
		}
	}
	return nil
}

// TestPasstSLAACAndDHCPv6 asks for a router advertisement and a DHCPv6
// address.
func TestPasstSLAACAndDHCPv6(t *testing.T) {
	sb := sandbox.New(t)
	_, sock := passt(t, sb)
	g := connectGuest(t, sock)
	ll := netip.MustParseAddr("fe80::ff:fe00:aa")

	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: ll.AsSlice(), DstIP: net.ParseIP("ff02::2")}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeRouterSolicitation, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	g.send(g.eth(layers.EthernetTypeIPv6, net.HardwareAddr{0x33, 0x33, 0, 0, 0, 2}), ip, icmp, &layers.ICMPv6RouterSolicitation{})
	pkt := g.expect("router advertisement", func(p gopacket.Packet) bool {
		return p.Layer(layers.LayerTypeICMPv6RouterAdvertisement) != nil
	})
	ra := pkt.Layer(layers.LayerTypeICMPv6RouterAdvertisement).(*layers.ICMPv6RouterAdvertisement)
	var prefix net.IP
	for _, o := range ra.Options {
		if o.Type == layers.ICMPv6OptPrefixInfo && o.Data[1]&0x40 != 0 {
			prefix = net.IP(o.Data[14:30])
		}
	}
	if !prefix.Equal(net.ParseIP("2001:db8::")) || ra.RouterLifetime == 0 {
		t.Fatalf("RA prefix %v lifetime %d", prefix, ra.RouterLifetime)
	}

	// DHCPv6: solicit, then request, for an address.
	duid := append([]byte{0, 3, 0, 1}, g.mac...)
	solicit := func(typ layers.DHCPv6MsgType, extra ...layers.DHCPv6Option) {
		d := &layers.DHCPv6{MsgType: typ, TransactionID: []byte{1, 2, 3}, Options: append(layers.DHCPv6Options{
			layers.NewDHCPv6Option(layers.DHCPv6OptClientID, duid),
			layers.NewDHCPv6Option(layers.DHCPv6OptIANA, []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}),
			layers.NewDHCPv6Option(layers.DHCPv6OptElapsedTime, []byte{0, 0}),
		}, extra...)}
		ip := &layers.IPv6{Version: 6, HopLimit: 1, NextHeader: layers.IPProtocolUDP, SrcIP: ll.AsSlice(), DstIP: net.ParseIP("ff02::1:2")}
		udp := &layers.UDP{SrcPort: 546, DstPort: 547}
		_ = udp.SetNetworkLayerForChecksum(ip)
		g.send(g.eth(layers.EthernetTypeIPv6, net.HardwareAddr{0x33, 0x33, 0, 1, 0, 2}), ip, udp, d)
	}
	answer := func(want layers.DHCPv6MsgType) *layers.DHCPv6 {
		pkt := g.expect("DHCPv6 "+want.String(), func(p gopacket.Packet) bool {
			d, ok := p.Layer(layers.LayerTypeDHCPv6).(*layers.DHCPv6)
			return ok && d.MsgType == want
		})
		if !udpChecksumOK(t, pkt) {
			t.Error("bad UDP checksum on DHCPv6 reply")
		}
		if _, d := addrs(pkt); d != ll {
			t.Errorf("DHCPv6 reply to %v, want %v", d, ll)
		}
		return pkt.Layer(layers.LayerTypeDHCPv6).(*layers.DHCPv6)
	}
	solicit(layers.DHCPv6MsgTypeSolicit)
	adv := answer(layers.DHCPv6MsgTypeAdvertise)
	var server []byte
	for _, o := range adv.Options {
		if o.Code == layers.DHCPv6OptServerID {
			server = o.Data
		}
	}
	solicit(layers.DHCPv6MsgTypeRequest, layers.NewDHCPv6Option(layers.DHCPv6OptServerID, server))
	reply := answer(layers.DHCPv6MsgTypeReply)
	if a := iaAddr(reply); a != sandbox.HostAddr6 {
		t.Fatalf("DHCPv6 assigned %v, want %v", a, sandbox.HostAddr6)
	}
}

// iaAddr digs the IA address out of a DHCPv6 reply's IA_NA option.
func iaAddr(d *layers.DHCPv6) netip.Addr {
	for _, o := range d.Options {
		if o.Code != layers.DHCPv6OptIANA || len(o.Data) < 12 {
			continue
		}
		sub := o.Data[12:]
		for len(sub) >= 4 {
			code, l := binary.BigEndian.Uint16(sub), int(binary.BigEndian.Uint16(sub[2:]))
			if len(sub) < 4+l {
				break
			}
			if code == uint16(layers.DHCPv6OptIAAddr) && l >= 16 {
				a, _ := netip.AddrFromSlice(sub[4:20])
				return a
			}
			sub = sub[4+l:]
		}
	}
	return netip.Addr{}
}

// TestPasstUDP exchanges datagrams between the guest and the host both
// ways, IPv4 and IPv6, including from an address the guest was not given.
func TestPasstUDP(t *testing.T) {
	sb := sandbox.New(t)
	_, sock := passt(t, sb, "-u", "10001", "-u", "10002:20002")
	g := connectGuest(t, sock)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			g.t = t
			echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", ap(f.loopback, 5500), "-timeout", "20s")
			echo.WaitLine(t, "ready", 20*time.Second)
			// An address the guest was not given is served too; the
			// one it used last is where forwarded datagrams go.
			guestAddrs := []netip.Addr{netip.MustParseAddr("192.0.2.77"), f.host}
			if f.host.Is6() {
				guestAddrs[0] = netip.MustParseAddr("2001:db8::77")
			}
			// Guest to host, through the gateway address.
			for i, size := range []int{1, 1372, 65000} {
				for _, addr := range guestAddrs {
					src := netip.AddrPortFrom(addr, uint16(41000+i))
					dst := netip.AddrPortFrom(f.gw, 5500)
					payload := randomPayload(size)
					g.sendUDP(src, dst, payload)
					if got := g.expectUDP(dst, src); !bytes.Equal(got, payload) {
						t.Fatalf("echo of %d bytes from %s differs", size, addr)
					}
				}
			}
			// Host to guest through -u, plain and remapped.
			for _, c := range []struct{ port, guestPort uint16 }{{10001, 10001}, {10002, 20002}} {
				sender := sb.Start(t, sb.HostNS, udptool, "send", "-to", ap(f.loopback, c.port), "-from", ap(f.loopback, 46000+c.port%10),
					"-size", "1372", "-count", "1", "-echo", "-connect", "-wait", "4s")
				from := netip.AddrPortFrom(f.gw, 46000+c.port%10)
				to := netip.AddrPortFrom(f.host, c.guestPort)
				got := g.expectUDP(from, to)
				g.sendUDP(to, from, got) // the guest echoes
				code, err := sender.Wait(10 * time.Second)
				if code != 0 || err != nil {
					t.Fatalf("host sender: %d %v\n%s%s", code, err, sender.Stdout(), sender.Stderr())
				}
			}
		})
	}
}

// TestPasstFraming checks the stream protocol: frames split at every byte
// boundary, several frames in one write, broken length prefixes, and a
// guest that leaves and another that comes.
func TestPasstFraming(t *testing.T) {
	sb := sandbox.New(t)
	p, sock := passt(t, sb)
	arp := func(g *fakeGuest, target string) []byte {
		return frame(t, g.eth(layers.EthernetTypeARP, bcastMAC), &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest, SourceHwAddress: g.mac,
			SourceProtAddress: sandbox.HostAddr4.AsSlice(), DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(target).To4()})
	}
	isReply := func(target string) func(gopacket.Packet) bool {
		return func(p gopacket.Packet) bool {
			a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP)
			return ok && a.Operation == layers.ARPReply && net.IP(a.SourceProtAddress).Equal(net.ParseIP(target))
		}
	}

	g := connectGuest(t, sock)
	whole := framed(arp(g, "192.0.2.1"))
	for k := 1; k < len(whole); k++ {
		g.write(whole[:k])
		time.Sleep(time.Millisecond) // let the first part be read on its own
		g.write(whole[k:])
		g.expect(fmt.Sprintf("ARP reply (split at %d)", k), isReply("192.0.2.1"))
	}
	// Ten frames in one write: ten replies.
	var many []byte
	for i := 0; i < 10; i++ {
		many = append(many, framed(arp(g, fmt.Sprintf("192.0.2.%d", 100+i)))...)
	}
	g.write(many)
	for i := 0; i < 10; i++ {
		g.expect("ARP reply in a batch", isReply(fmt.Sprintf("192.0.2.%d", 100+i)))
	}

	// A zero and an oversized length are broken peers: disconnected, and
	// the next guest is served.
	for _, bad := range [][]byte{{0, 0, 0, 0}, {0, 1, 0, 0}} {
		g.write(bad)
		if _, err := g.readFrame(3 * time.Second); err != io.EOF {
			t.Fatalf("length prefix % x: want the connection closed, got %v", bad, err)
		}
		g = connectGuest(t, sock)
		g.write(framed(arp(g, "192.0.2.1")))
		g.expect("ARP reply after reconnecting", isReply("192.0.2.1"))
	}
	// An orderly disconnect, and a new guest.
	g.conn.Close()
	g = connectGuest(t, sock)
	g.write(framed(arp(g, "192.0.2.1")))
	g.expect("ARP reply for the next guest", isReply("192.0.2.1"))
	if p.Stderr() != "" && testing.Verbose() {
		t.Logf("passt stderr:\n%s", p.Stderr())
	}
}

// TestPasstOneOff checks that -1 makes passt exit when the guest leaves,
// and that -P writes the PID file and, like the socket, removes it at exit
// (sandboxed as "nobody" in a directory only root may write to, through
// its helper).
func TestPasstOneOff(t *testing.T) {
	sb := sandbox.New(t)
	dir := t.TempDir()
	sock, pidFile := filepath.Join(dir, "passt.socket"), filepath.Join(dir, "passt.pid")
	p := sb.Start(t, sb.HostNS, gopasst, "passt", "-f", "-1", "-s", sock, "-P", pidFile)
	waitListening(t, p, sock)
	// The socket listens a little before the PID file is written.
	var b []byte
	var err error
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		if b, err = os.ReadFile(pidFile); err == nil {
			break
		}
	}
	if err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(p.Cmd.Process.Pid) {
		t.Fatalf("PID file: %q %v, want %d", b, err, p.Cmd.Process.Pid)
	}
	g := connectGuest(t, sock)
	g.conn.Close()
	wait(t, p, 0)
	for _, f := range []string{pidFile, sock} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", f, err)
		}
	}
}
