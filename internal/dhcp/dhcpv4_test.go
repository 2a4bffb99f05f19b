package dhcp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/packet"
)

const testXid = 0x1a2b3c4d

var (
	zero4  = netip.IPv4Unspecified()
	bcast4 = netip.MustParseAddr("255.255.255.255")
)

// msg4 builds a client DHCPv4 message with gopacket; typ 0 leaves the
// message type option out (BOOTP).
func msg4(t testing.TB, typ layers.DHCPMsgType, flags uint16, ciaddr netip.Addr, opts ...layers.DHCPOption) []byte {
	t.Helper()
	var o []layers.DHCPOption
	if typ != 0 {
		o = append(o, layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(typ)}))
	}
	o = append(o, opts...)
	d := &layers.DHCPv4{
		Operation:    layers.DHCPOpRequest,
		HardwareType: layers.LinkTypeEthernet,
		HardwareLen:  6,
		Xid:          testXid,
		Secs:         3,
		Flags:        flags,
		ClientIP:     ciaddr.AsSlice(),
		YourClientIP: net.IPv4zero,
		NextServerIP: net.IPv4zero,
		RelayAgentIP: net.IPv4zero,
		ClientHWAddr: clientMAC,
		Options:      o,
	}
	return serialize(t, d)
}

// frame4 wraps a DHCPv4 message from the client, broadcast from 0.0.0.0
// unless src and dst say otherwise.
func frame4(t testing.TB, payload []byte) []byte {
	return udpFrame(t, clientMAC, layers.EthernetBroadcast, zero4, bcast4, 68, 67, payload)
}

func prl(codes ...byte) layers.DHCPOption {
	return layers.NewDHCPOption(layers.DHCPOptParamsRequest, codes)
}

func ipOpt(code layers.DHCPOpt, a string) layers.DHCPOption {
	return layers.NewDHCPOption(code, netip.MustParseAddr(a).AsSlice())
}

// reply4 checks the parts of a DHCPv4 reply that do not depend on the
// request and returns the DHCP layer and its options by code.
func reply4(t *testing.T, s *Server, reply []byte, dst netip.Addr, wantType layers.DHCPMsgType) (*layers.DHCPv4, map[layers.DHCPOpt][]byte) {
	t.Helper()
	if reply == nil {
		t.Fatal("no reply")
	}
	d := decode(t, reply)
	if d.ip4 == nil || d.dhcp == nil {
		t.Fatal("reply is not DHCPv4 over IPv4")
	}
	if !bytes.Equal(d.eth.DstMAC, clientMAC) || !bytes.Equal(d.eth.SrcMAC, ourMAC[:]) {
		t.Errorf("Ethernet %v -> %v, want %v -> %v", d.eth.SrcMAC, d.eth.DstMAC, ourMAC, clientMAC)
	}
	if got, _ := netip.AddrFromSlice(d.ip4.SrcIP); got != s.Gateway4 {
		t.Errorf("IPv4 source %s, want the gateway %s", got, s.Gateway4)
	}
	if got, _ := netip.AddrFromSlice(d.ip4.DstIP); got != dst {
		t.Errorf("IPv4 destination %s, want %s", got, dst)
	}
	if d.ip4.TTL != 255 || d.ip4.Flags != layers.IPv4DontFragment {
		t.Errorf("TTL %d flags %v, want 255 DF", d.ip4.TTL, d.ip4.Flags)
	}
	if d.udp.SrcPort != 67 || d.udp.DstPort != 68 {
		t.Errorf("UDP %d -> %d, want 67 -> 68", d.udp.SrcPort, d.udp.DstPort)
	}
	if n := len(d.udp.Payload); n < 300 || n > 548 {
		t.Errorf("DHCP message is %d bytes, want 300 to 548", n)
	}
	m := d.dhcp
	if m.Operation != layers.DHCPOpReply || m.Xid != testXid || m.HardwareType != layers.LinkTypeEthernet ||
		!bytes.Equal(m.ClientHWAddr, clientMAC) || m.RelayHops != 0 || m.Secs != 0 {
		t.Errorf("bad fixed fields: %+v", m)
	}
	if got := m.YourClientIP.String(); got != "192.0.2.10" {
		t.Errorf("yiaddr %s, want 192.0.2.10", got)
	}
	if !m.NextServerIP.Equal(net.IPv4zero) {
		t.Errorf("siaddr %s, want 0.0.0.0", m.NextServerIP)
	}
	opts := map[layers.DHCPOpt][]byte{}
	for _, o := range m.Options {
		if o.Type == layers.DHCPOptPad {
			continue
		}
		if _, dup := opts[o.Type]; dup {
			t.Errorf("option %d twice", o.Type)
		}
		opts[o.Type] = o.Data
	}
	if got := opts[layers.DHCPOptMessageType]; !bytes.Equal(got, []byte{byte(wantType)}) {
		t.Errorf("message type %v, want %v", got, wantType)
	}
	return m, opts
}

// optionCodes lists the codes of m's options in order, pads left out.
func optionCodes(m *layers.DHCPv4) []int {
	var c []int
	for _, o := range m.Options {
		if o.Type != layers.DHCPOptPad {
			c = append(c, int(o.Type))
		}
	}
	return c
}

func TestDiscoverOffer(t *testing.T) {
	s := testServer(testConfig())
	req := msg4(t, layers.DHCPMsgTypeDiscover, flagBroadcast, zero4, prl(1, 3, 6, 15, 119, 12, 26))
	m, opts := reply4(t, s, run(t, s, frame4(t, req)), bcast4, layers.DHCPMsgTypeOffer)
	if m.Flags != flagBroadcast {
		t.Errorf("flags %#x not echoed", m.Flags)
	}
	if !m.ClientIP.Equal(net.IPv4zero) {
		t.Errorf("ciaddr %s, want 0.0.0.0", m.ClientIP)
	}
	// Message type first (not requested), then the request list's order
	// (15 is not offered), then the rest by code.
	if got, want := optionCodes(m), []int{53, 1, 3, 6, 119, 12, 26, 51, 54, 81}; !equalInts(got, want) {
		t.Errorf("option order %v, want %v", got, want)
	}
	checks := map[layers.DHCPOpt][]byte{
		layers.DHCPOptSubnetMask:           {255, 255, 255, 0},
		layers.DHCPOptRouter:               {192, 0, 2, 1},
		layers.DHCPOptServerID:             {192, 0, 2, 1},
		layers.DHCPOptDNS:                  {192, 0, 2, 53, 198, 51, 100, 53},
		layers.DHCPOptLeaseTime:            {0xff, 0xff, 0xff, 0xff},
		layers.DHCPOptInterfaceMTU:         {0xff, 0xf0},
		layers.DHCPOptHostname:             []byte("guest"),
		layers.DHCPOpt(81):                 append([]byte{0x04, 0xff, 0xff}, "\x05guest\x07example\x03com\x00"...),
		layers.DHCPOptDomainSearch:         nil, // checked below
		layers.DHCPOptMessageType:          {2},
		layers.DHCPOptT1:                   nil,
		layers.DHCPOptClasslessStaticRoute: nil,
	}
	for code, want := range checks {
		got, ok := opts[code]
		switch {
		case code == layers.DHCPOptDomainSearch:
		case want == nil && ok:
			t.Errorf("option %d present: %x", code, got)
		case want != nil && !bytes.Equal(got, want):
			t.Errorf("option %d = %x, want %x", code, got, want)
		}
	}
	search := opts[layers.DHCPOptDomainSearch]
	if got, want := decodeNames(t, search), []string{"example.com", "sub.example.com", "example.org"}; !equalStrings(got, want) {
		t.Errorf("search list %q, want %q", got, want)
	}
	// "sub.example.com" is "sub" plus a pointer to "example.com" at 0.
	if want := "\x07example\x03com\x00\x03sub\xc0\x00\x07example\x03org\x00"; string(search) != want {
		t.Errorf("search list encoding %q, want %q", search, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDiscoverUnicast(t *testing.T) {
	s := testServer(testConfig())
	// No BROADCAST flag and no parameter request list: unicast to the
	// assigned address, message type still first.
	m, _ := reply4(t, s, run(t, s, frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4))),
		s.Addr4.Addr(), layers.DHCPMsgTypeOffer)
	if got := optionCodes(m); got[0] != 53 {
		t.Errorf("options %v do not start with the message type", got)
	}
}

func TestMessageTypeWhereRequested(t *testing.T) {
	s := testServer(testConfig())
	m, _ := reply4(t, s, run(t, s, frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4, prl(1, 53, 3, 1)))),
		s.Addr4.Addr(), layers.DHCPMsgTypeOffer)
	if got, want := optionCodes(m)[:4], []int{1, 53, 3, 6}; !equalInts(got, want) {
		t.Errorf("option order %v, want %v first", optionCodes(m), want)
	}
}

func TestRapidCommit(t *testing.T) {
	s := testServer(testConfig())
	req := msg4(t, layers.DHCPMsgTypeDiscover, flagBroadcast, zero4, layers.NewDHCPOption(layers.DHCPOpt(80), nil))
	_, opts := reply4(t, s, run(t, s, frame4(t, req)), bcast4, layers.DHCPMsgTypeAck)
	if got, ok := opts[layers.DHCPOpt(80)]; !ok || len(got) != 0 {
		t.Errorf("Rapid Commit option %x (present %v), want empty", got, ok)
	}
}

func TestRequestAck(t *testing.T) {
	s := testServer(testConfig())
	cases := []struct {
		name   string
		src    netip.Addr
		dst    netip.Addr
		flags  uint16
		ciaddr netip.Addr
		opts   []layers.DHCPOption
		to     netip.Addr
	}{
		{"selecting", zero4, bcast4, flagBroadcast, zero4,
			[]layers.DHCPOption{ipOpt(layers.DHCPOptRequestIP, "192.0.2.10"), ipOpt(layers.DHCPOptServerID, "192.0.2.1")}, bcast4},
		{"init-reboot", zero4, bcast4, 0, zero4,
			[]layers.DHCPOption{ipOpt(layers.DHCPOptRequestIP, "192.0.2.10")}, netip.MustParseAddr("192.0.2.10")},
		// Another address, as after a move: passt never NAKs, it ACKs
		// the address it has.
		{"init-reboot-other", zero4, bcast4, flagBroadcast, zero4,
			[]layers.DHCPOption{ipOpt(layers.DHCPOptRequestIP, "10.0.0.5")}, bcast4},
		{"renewing", netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.1"), 0,
			netip.MustParseAddr("192.0.2.10"), nil, netip.MustParseAddr("192.0.2.10")},
		{"rebinding", netip.MustParseAddr("192.0.2.10"), bcast4, 0,
			netip.MustParseAddr("192.0.2.10"), nil, netip.MustParseAddr("192.0.2.10")},
		{"renewing-other", netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("192.0.2.1"), 0,
			netip.MustParseAddr("10.0.0.5"), nil, netip.MustParseAddr("192.0.2.10")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := msg4(t, layers.DHCPMsgTypeRequest, c.flags, c.ciaddr, c.opts...)
			dstMAC := layers.EthernetBroadcast
			if c.dst != bcast4 {
				dstMAC = net.HardwareAddr(ourMAC[:])
			}
			f := udpFrame(t, clientMAC, dstMAC, c.src, c.dst, 68, 67, req)
			m, opts := reply4(t, s, run(t, s, f), c.to, layers.DHCPMsgTypeAck)
			if got, _ := netip.AddrFromSlice(m.ClientIP); got != c.ciaddr {
				t.Errorf("ciaddr %s, want %s echoed", got, c.ciaddr)
			}
			if !bytes.Equal(opts[layers.DHCPOptLeaseTime], []byte{0xff, 0xff, 0xff, 0xff}) {
				t.Errorf("lease time %x, want infinite", opts[layers.DHCPOptLeaseTime])
			}
		})
	}
}

func TestBOOTP(t *testing.T) {
	s := testServer(testConfig())
	m, _ := reply4(t, s, run(t, s, frame4(t, msg4(t, 0, flagBroadcast, zero4))), bcast4, layers.DHCPMsgTypeAck)
	if len(m.Options) == 0 {
		t.Fatal("no options")
	}
}

func TestNoAnswer4(t *testing.T) {
	s := testServer(testConfig())
	for _, typ := range []layers.DHCPMsgType{layers.DHCPMsgTypeDecline, layers.DHCPMsgTypeRelease,
		layers.DHCPMsgTypeInform, layers.DHCPMsgTypeOffer, layers.DHCPMsgTypeAck, layers.DHCPMsgTypeNak, 9, 200} {
		if r := run(t, s, frame4(t, msg4(t, typ, 0, zero4))); r != nil {
			t.Errorf("type %v answered", typ)
		}
	}
	ns := testConfig()
	ns.NoDHCP = true
	if r := run(t, testServer(ns), frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4))); r != nil {
		t.Error("answered with NoDHCP")
	}
	ns = testConfig()
	ns.Addr4 = netip.Prefix{}
	if r := run(t, testServer(ns), frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4))); r != nil {
		t.Error("answered without an address to assign")
	}
}

func TestOffLinkGateway(t *testing.T) {
	cfg := testConfig()
	cfg.Gateway4 = netip.MustParseAddr("198.51.100.1")
	cfg.Hostname, cfg.FQDN, cfg.MTU, cfg.DNS4, cfg.Search = "", "", 0, nil, nil
	s := testServer(cfg)
	m, opts := reply4(t, s, run(t, s, frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, flagBroadcast, zero4))), bcast4, layers.DHCPMsgTypeOffer)
	want := []byte{32, 198, 51, 100, 1, 0, 0, 0, 0, 0, 198, 51, 100, 1}
	if got := opts[layers.DHCPOptClasslessStaticRoute]; !bytes.Equal(got, want) {
		t.Errorf("option 121 = %v, want %v", got, want)
	}
	if got, want := optionCodes(m), []int{53, 1, 3, 51, 54, 121}; !equalInts(got, want) {
		t.Errorf("options %v, want %v", got, want)
	}
}

func TestOptionSpace(t *testing.T) {
	cfg := testConfig()
	cfg.Search = nil
	for i := range 40 {
		cfg.Search = append(cfg.Search, string(rune('a'+i%26))+"long-search-domain-name"+string(rune('a'+i/26))+".example")
	}
	cfg.Search = append(cfg.Search, "bad..name", "", ".", "x.example")
	var dns []netip.Addr
	for i := range 100 {
		dns = append(dns, netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}))
	}
	cfg.DNS4 = dns
	s := testServer(cfg)
	_, opts := reply4(t, s, run(t, s, frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, flagBroadcast, zero4))), bcast4, layers.DHCPMsgTypeOffer)
	if n := len(opts[layers.DHCPOptDNS]); n > 255 || n%4 != 0 {
		t.Errorf("DNS option of %d bytes", n)
	}
	if got := opts[layers.DHCPOptDomainSearch]; len(got) > 0 {
		names := decodeNames(t, got)
		for i, n := range names {
			if n != cfg.Search[i] {
				t.Errorf("search name %d = %q, want %q", i, n, cfg.Search[i])
			}
		}
	}
}

func TestSearchCompression(t *testing.T) {
	names := []string{"a.example.com", "b.example.com", "example.com", "a.example.com", "example.net", "net", "bad..x", "c.b.example.com"}
	b := searchList4(names, 255)
	want := []string{"a.example.com", "b.example.com", "example.com", "a.example.com", "example.net", "net", "c.b.example.com"}
	if got := decodeNames(t, b); !equalStrings(got, want) {
		t.Fatalf("names %q, want %q (encoding %q)", got, want, b)
	}
	// a.example.com 15, b+pointer 4, pointer 2, pointer 2, example.net
	// 13, pointer 2, c+pointer 4.
	if len(b) != 42 {
		t.Errorf("encoding is %d bytes, want 42: %q", len(b), b)
	}
	if got := searchList4(names, 20); len(got) > 20 || !equalStrings(decodeNames(t, got), want[:2]) {
		t.Errorf("truncated list %q", got)
	}
}

func TestMalformed4(t *testing.T) {
	s := testServer(testConfig())
	good := msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4, prl(1, 3))
	if run(t, s, frame4(t, good)) == nil {
		t.Fatal("good message not answered")
	}
	try := func(name string, payload []byte) {
		t.Helper()
		if r := run(t, s, frame4(t, payload)); r != nil {
			t.Errorf("%s: answered", name)
		}
	}
	for n := range bootpFixedLen {
		try("truncated", good[:n])
	}
	bad := bytes.Clone(good)
	bad[0] = 2
	try("BOOTREPLY", bad)
	bad = bytes.Clone(good)
	binary.BigEndian.PutUint32(bad[236:240], 0x01020304)
	try("magic", bad)
	bad = append(bytes.Clone(good[:bootpFixedLen]), 53, 1, 1, 55, 10, 1, 3)
	try("option overrun", bad)
	bad = append(bytes.Clone(good[:bootpFixedLen]), 53, 1, 1, 55)
	try("option without length", bad)
	// Without End the options run to the end of the datagram.
	if r := run(t, s, frame4(t, append(bytes.Clone(good[:bootpFixedLen]), 53, 1, 1))); r == nil {
		t.Error("message without End option not answered")
	}
}

func TestIsRequest(t *testing.T) {
	cases := []struct {
		name         string
		src, dst     netip.Addr
		sport, dport uint16
		want         bool
	}{
		{"dhcp", zero4, bcast4, 68, 67, true},
		{"dhcp-other-sport", netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("203.0.113.1"), 40000, 67, true},
		{"dhcp-reply-port", zero4, bcast4, 67, 68, false},
		{"dns", netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.53"), 40000, 53, false},
		{"dhcpv6", clientLL, allDHCP6, 546, 547, true},
		{"dhcpv6-unicast", clientLL, netip.MustParseAddr("fe80::1"), 546, 547, true},
		{"dhcpv6-reply-port", clientLL, allDHCP6, 547, 546, false},
	}
	for _, c := range cases {
		f := udpFrame(t, clientMAC, layers.EthernetBroadcast, c.src, c.dst, c.sport, c.dport, []byte{1, 2, 3, 4})
		var p packet.Parsed
		if d := packet.Parse(f, &p); d != packet.DropNone {
			t.Fatal(d)
		}
		if got := IsRequest(&p); got != c.want {
			t.Errorf("%s: IsRequest = %v, want %v", c.name, got, c.want)
		}
		if !c.want {
			if n := testServer(testConfig()).Handle(&p, make([]byte, MinOut)); n != 0 {
				t.Errorf("%s: Handle answered", c.name)
			}
		}
	}
	// TCP to port 67 is not DHCP.
	var p packet.Parsed
	p.EtherType, p.Proto, p.DstPort, p.L4 = packet.EtherTypeIPv4, packet.ProtoTCP, 67, make([]byte, 20)
	if IsRequest(&p) {
		t.Error("TCP taken for DHCP")
	}
}

func TestShortOut(t *testing.T) {
	s := testServer(testConfig())
	var p packet.Parsed
	if packet.Parse(frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4)), &p) != packet.DropNone {
		t.Fatal("parse")
	}
	if n := s.Handle(&p, make([]byte, MinOut-1)); n != 0 {
		t.Errorf("wrote %d bytes into a short buffer", n)
	}
}
