package dhcp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

var (
	testXid6 = []byte{0xab, 0xcd, 0xef}
	testIAID = []byte{0xde, 0xad, 0xbe, 0xef}
	// dhcp6MAC is the multicast MAC address of ff02::1:2.
	dhcp6MAC = net.HardwareAddr{0x33, 0x33, 0, 1, 0, 2}
)

// clientDUID is the client's DUID-LL, encoded by gopacket.
func clientDUID() []byte {
	d := &layers.DHCPv6DUID{Type: layers.DHCPv6DUIDTypeLL, HardwareType: []byte{0, 1}, LinkLayerAddress: clientMAC}
	return d.Encode()
}

func opt6(code layers.DHCPv6Opt, data []byte) layers.DHCPv6Option {
	return layers.NewDHCPv6Option(code, data)
}

// iaNA builds an IA_NA option (T1 = T2 = 0) holding addrs.
func iaNA(addrs ...netip.Addr) layers.DHCPv6Option {
	b := append([]byte(nil), testIAID...)
	b = append(b, make([]byte, 8)...)
	for _, a := range addrs {
		ia := make([]byte, 4+24)
		binary.BigEndian.PutUint16(ia[0:2], uint16(layers.DHCPv6OptIAAddr))
		binary.BigEndian.PutUint16(ia[2:4], 24)
		a16 := a.As16()
		copy(ia[4:20], a16[:])
		b = append(b, ia...)
	}
	return opt6(layers.DHCPv6OptIANA, b)
}

// msg6 builds a client DHCPv6 message with gopacket: the client ID and
// elapsed time, then opts.
func msg6(t testing.TB, typ layers.DHCPv6MsgType, opts ...layers.DHCPv6Option) []byte {
	t.Helper()
	o := []layers.DHCPv6Option{opt6(layers.DHCPv6OptClientID, clientDUID()), opt6(layers.DHCPv6OptElapsedTime, []byte{0, 0})}
	d := &layers.DHCPv6{MsgType: typ, TransactionID: testXid6, Options: append(o, opts...)}
	return serialize(t, d)
}

func frame6(t testing.TB, payload []byte) []byte {
	return udpFrame(t, clientMAC, dhcp6MAC, clientLL, allDHCP6, 546, 547, payload)
}

func serverIDOpt(s *Server) layers.DHCPv6Option {
	return opt6(layers.DHCPv6OptServerID, s.ServerDUID())
}

// reply6 checks the addressing and the fixed parts of a DHCPv6 reply and
// returns its options in order.
func reply6(t *testing.T, s *Server, reply []byte, wantType layers.DHCPv6MsgType) []layers.DHCPv6Option {
	t.Helper()
	if reply == nil {
		t.Fatal("no reply")
	}
	d := decode(t, reply)
	if d.ip6 == nil || d.d6 == nil {
		t.Fatal("reply is not DHCPv6 over IPv6")
	}
	if !bytes.Equal(d.eth.DstMAC, clientMAC) || !bytes.Equal(d.eth.SrcMAC, s.OurMAC[:]) {
		t.Errorf("Ethernet %v -> %v, want %v -> %v", d.eth.SrcMAC, d.eth.DstMAC, s.OurMAC, clientMAC)
	}
	if src, _ := netip.AddrFromSlice(d.ip6.SrcIP); src != s.OurLinkLocal6 {
		t.Errorf("IPv6 source %s, want %s", src, s.OurLinkLocal6)
	}
	if dst, _ := netip.AddrFromSlice(d.ip6.DstIP); dst != clientLL {
		t.Errorf("IPv6 destination %s, want %s", dst, clientLL)
	}
	if d.ip6.HopLimit != 255 {
		t.Errorf("hop limit %d, want 255", d.ip6.HopLimit)
	}
	if want := uint32(0xbcdef); d.ip6.FlowLabel != want {
		t.Errorf("flow label %#x, want %#x", d.ip6.FlowLabel, want)
	}
	if d.udp.SrcPort != 547 || d.udp.DstPort != 546 {
		t.Errorf("UDP %d -> %d, want 547 -> 546", d.udp.SrcPort, d.udp.DstPort)
	}
	if len(d.udp.Payload) > 1232 {
		t.Errorf("reply of %d bytes exceeds the IPv6 minimum MTU", len(d.udp.Payload))
	}
	if d.d6.MsgType != wantType || !bytes.Equal(d.d6.TransactionID, testXid6) {
		t.Errorf("type %v xid %x, want %v %x", d.d6.MsgType, d.d6.TransactionID, wantType, testXid6)
	}
	opts := d.d6.Options
	if len(opts) < 2 || opts[0].Code != layers.DHCPv6OptServerID {
		t.Fatalf("options %v do not start with the server ID", opts)
	}
	// Server ID: DUID-LLT, Ethernet, seconds since 2000, our MAC.
	var duid layers.DHCPv6DUID
	if err := duid.DecodeFromBytes(opts[0].Data); err != nil {
		t.Fatal(err)
	}
	if duid.Type != layers.DHCPv6DUIDTypeLLT || !bytes.Equal(duid.HardwareType, []byte{0, 1}) ||
		!bytes.Equal(duid.LinkLayerAddress, s.OurMAC[:]) || binary.BigEndian.Uint32(duid.Time) != uint32(testTime.Sub(duidEpoch).Seconds()) {
		t.Errorf("server DUID %v", duid.String())
	}
	var clientID []byte
	n := 0
	for _, o := range opts {
		if o.Code == layers.DHCPv6OptClientID {
			clientID = o.Data
			n++
		}
	}
	if n != 1 || !bytes.Equal(clientID, clientDUID()) {
		t.Errorf("client ID %x (%d times), want %x once", clientID, n, clientDUID())
	}
	return opts
}

func find6(opts []layers.DHCPv6Option, code layers.DHCPv6Opt) ([]byte, bool) {
	for _, o := range opts {
		if o.Code == code {
			return o.Data, true
		}
	}
	return nil, false
}

// checkIANA checks that opts assign addr in an IA_NA with the test IAID
// and infinite times.
func checkIANA(t *testing.T, opts []layers.DHCPv6Option, addr netip.Addr) {
	t.Helper()
	ia, ok := find6(opts, layers.DHCPv6OptIANA)
	if !ok {
		t.Fatal("no IA_NA")
	}
	a16 := addr.As16()
	want := append(append([]byte(nil), testIAID...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // IAID, T1, T2
		0, 5, 0, 24) // IAADDR
	want = append(want, a16[:]...)
	want = append(want, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff) // lifetimes
	if !bytes.Equal(ia, want) {
		t.Errorf("IA_NA %x, want %x", ia, want)
	}
}

// checkConfig6 checks the DNS, domain list and FQDN options.
func checkConfig6(t *testing.T, opts []layers.DHCPv6Option, fqdnFlags byte) {
	t.Helper()
	dns, _ := find6(opts, layers.DHCPv6OptDNSServers)
	want := append(netip.MustParseAddr("2001:db8::53").AsSlice(), netip.MustParseAddr("2001:db8::54").AsSlice()...)
	if !bytes.Equal(dns, want) {
		t.Errorf("DNS servers %x, want %x", dns, want)
	}
	list, _ := find6(opts, layers.DHCPv6OptDomainList)
	if want := "\x07example\x03com\x00\x03sub\x07example\x03com\x00\x07example\x03org\x00"; string(list) != want {
		t.Errorf("domain list %q, want %q (uncompressed)", list, want)
	}
	fqdn, _ := find6(opts, layers.DHCPv6OptClientFQDN)
	if want := string([]byte{fqdnFlags}) + "\x05guest\x07example\x03com\x00"; string(fqdn) != want {
		t.Errorf("FQDN %q, want %q", fqdn, want)
	}
	var codes []layers.DHCPv6Opt
	for _, o := range opts {
		codes = append(codes, o.Code)
	}
	n := len(codes)
	if n < 3 || codes[n-3] != layers.DHCPv6OptDNSServers || codes[n-2] != layers.DHCPv6OptDomainList || codes[n-1] != layers.DHCPv6OptClientFQDN {
		t.Errorf("options %v do not end with DNS servers, domain list, FQDN", codes)
	}
}

func TestSolicitAdvertise(t *testing.T) {
	s := testServer(testConfig())
	opts := reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA(),
		opt6(layers.DHCPv6OptOro, []byte{0, 23, 0, 24})))), layers.DHCPv6MsgTypeAdvertise)
	checkIANA(t, opts, s.Addr6)
	checkConfig6(t, opts, 0)
	if opts[1].Code != layers.DHCPv6OptIANA || opts[2].Code != layers.DHCPv6OptClientID {
		t.Errorf("options %v: want server ID, IA_NA, client ID first", opts)
	}
	if _, ok := find6(opts, layers.DHCPv6OptStatusCode); ok {
		t.Error("status code in ADVERTISE")
	}
}

func TestSolicitRapidCommitIgnored(t *testing.T) {
	s := testServer(testConfig())
	reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA(), opt6(layers.DHCPv6OptRapidCommit, nil)))),
		layers.DHCPv6MsgTypeAdvertise)
}

func TestReply(t *testing.T) {
	s := testServer(testConfig())
	cases := []struct {
		name string
		typ  layers.DHCPv6MsgType
		opts []layers.DHCPv6Option
	}{
		{"request", layers.DHCPv6MsgTypeRequest, []layers.DHCPv6Option{serverIDOpt(s), iaNA(s.Addr6)}},
		{"request-no-address", layers.DHCPv6MsgTypeRequest, []layers.DHCPv6Option{serverIDOpt(s), iaNA()}},
		{"renew", layers.DHCPv6MsgTypeRenew, []layers.DHCPv6Option{serverIDOpt(s), iaNA(s.Addr6)}},
		{"rebind", layers.DHCPv6MsgTypeRebind, []layers.DHCPv6Option{iaNA(s.Addr6)}},
		{"rebind-other-address", layers.DHCPv6MsgTypeRebind, []layers.DHCPv6Option{iaNA(netip.MustParseAddr("2001:db8:1::5"))}},
		{"confirm", layers.DHCPv6MsgTypeConfirm, []layers.DHCPv6Option{iaNA(s.Addr6)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := reply6(t, s, run(t, s, frame6(t, msg6(t, c.typ, c.opts...))), layers.DHCPv6MsgTypeReply)
			checkIANA(t, opts, s.Addr6)
			checkConfig6(t, opts, 0)
		})
	}
}

func TestInformationRequest(t *testing.T) {
	s := testServer(testConfig())
	for _, extra := range [][]layers.DHCPv6Option{nil, {serverIDOpt(s)}} {
		opts := reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeInformationRequest, extra...))), layers.DHCPv6MsgTypeReply)
		if _, ok := find6(opts, layers.DHCPv6OptIANA); ok {
			t.Error("IA_NA in reply to INFORMATION-REQUEST")
		}
		checkConfig6(t, opts, 0)
	}
	// Also without an address to assign.
	cfg := testConfig()
	cfg.Addr6 = netip.Addr{}
	s = testServer(cfg)
	reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeInformationRequest))), layers.DHCPv6MsgTypeReply)
	if run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA()))) != nil {
		t.Error("SOLICIT answered without an address to assign")
	}
}

func TestNotOnLink(t *testing.T) {
	s := testServer(testConfig())
	other := netip.MustParseAddr("2001:db8:1::5")
	for _, c := range []struct {
		name string
		typ  layers.DHCPv6MsgType
		opts []layers.DHCPv6Option
	}{
		{"request", layers.DHCPv6MsgTypeRequest, []layers.DHCPv6Option{serverIDOpt(s), iaNA(other)}},
		{"renew", layers.DHCPv6MsgTypeRenew, []layers.DHCPv6Option{serverIDOpt(s), iaNA(s.Addr6, other)}},
		{"confirm", layers.DHCPv6MsgTypeConfirm, []layers.DHCPv6Option{iaNA(other)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := reply6(t, s, run(t, s, frame6(t, msg6(t, c.typ, c.opts...))), layers.DHCPv6MsgTypeReply)
			ia, ok := find6(opts, layers.DHCPv6OptIANA)
			if !ok {
				t.Fatal("no IA_NA")
			}
			status := append([]byte{0, 13, 0, 2 + 32, 0, 4}, "Prefix not appropriate for link."...)
			want := append(append(append([]byte(nil), testIAID...), make([]byte, 8)...), status...)
			if !bytes.Equal(ia, want) {
				t.Errorf("IA_NA %x, want %x", ia, want)
			}
			top, ok := find6(opts, layers.DHCPv6OptStatusCode)
			if confirm := c.typ == layers.DHCPv6MsgTypeConfirm; ok != confirm || ok && !bytes.Equal(top, status[4:]) {
				t.Errorf("message-level status %x (present %v), want it for CONFIRM only", top, ok)
			}
			if _, ok := find6(opts, layers.DHCPv6OptDNSServers); ok {
				t.Error("configuration options in NotOnLink reply")
			}
		})
	}
}

func TestFQDNOverride(t *testing.T) {
	s := testServer(testConfig())
	opts := reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA(),
		opt6(layers.DHCPv6OptClientFQDN, []byte("\x01\x04host"))))), layers.DHCPv6MsgTypeAdvertise)
	checkConfig6(t, opts, fqdnFlagO)
}

func TestNoAnswer6(t *testing.T) {
	s := testServer(testConfig())
	otherServer := opt6(layers.DHCPv6OptServerID, (&layers.DHCPv6DUID{Type: layers.DHCPv6DUIDTypeLL,
		HardwareType: []byte{0, 1}, LinkLayerAddress: net.HardwareAddr{2, 0, 0, 0, 0, 9}}).Encode())
	cases := []struct {
		name    string
		payload []byte
	}{
		{"solicit-with-server-id", msg6(t, layers.DHCPv6MsgTypeSolicit, serverIDOpt(s), iaNA())},
		{"request-without-server-id", msg6(t, layers.DHCPv6MsgTypeRequest, iaNA(s.Addr6))},
		{"request-other-server", msg6(t, layers.DHCPv6MsgTypeRequest, otherServer, iaNA(s.Addr6))},
		{"renew-other-server", msg6(t, layers.DHCPv6MsgTypeRenew, otherServer, iaNA(s.Addr6))},
		{"rebind-other-server", msg6(t, layers.DHCPv6MsgTypeRebind, otherServer, iaNA(s.Addr6))},
		{"confirm-with-server-id", msg6(t, layers.DHCPv6MsgTypeConfirm, serverIDOpt(s), iaNA(s.Addr6))},
		{"info-request-with-ia-na", msg6(t, layers.DHCPv6MsgTypeInformationRequest, iaNA())},
		{"info-request-with-ia-ta", msg6(t, layers.DHCPv6MsgTypeInformationRequest, opt6(layers.DHCPv6OptIATA, testIAID))},
		{"info-request-other-server", msg6(t, layers.DHCPv6MsgTypeInformationRequest, otherServer)},
		{"release", msg6(t, layers.DHCPv6MsgTypeRelease, serverIDOpt(s), iaNA(s.Addr6))},
		{"decline", msg6(t, layers.DHCPv6MsgTypeDecline, serverIDOpt(s), iaNA(s.Addr6))},
		{"advertise", msg6(t, layers.DHCPv6MsgTypeAdvertise, serverIDOpt(s))},
		{"reply", msg6(t, layers.DHCPv6MsgTypeReply, serverIDOpt(s))},
		{"no-client-id", serialize(t, &layers.DHCPv6{MsgType: layers.DHCPv6MsgTypeSolicit, TransactionID: testXid6,
			Options: []layers.DHCPv6Option{iaNA()}})},
		{"long-client-id", serialize(t, &layers.DHCPv6{MsgType: layers.DHCPv6MsgTypeSolicit, TransactionID: testXid6,
			Options: []layers.DHCPv6Option{opt6(layers.DHCPv6OptClientID, append([]byte{0, 4}, make([]byte, 127)...))}})},
		{"short-client-id", serialize(t, &layers.DHCPv6{MsgType: layers.DHCPv6MsgTypeSolicit, TransactionID: testXid6,
			Options: []layers.DHCPv6Option{opt6(layers.DHCPv6OptClientID, []byte{0})}})},
		{"short-ia-na", msg6(t, layers.DHCPv6MsgTypeSolicit, opt6(layers.DHCPv6OptIANA, testIAID))},
		{"header-only", []byte{1, 2, 3}},
		{"empty", nil},
		{"option-overrun", append(msg6(t, layers.DHCPv6MsgTypeSolicit), 0, 3, 0, 40, 1, 2)},
		{"trailing-garbage", append(msg6(t, layers.DHCPv6MsgTypeSolicit), 0, 3)},
	}
	for _, c := range cases {
		if r := run(t, s, frame6(t, c.payload)); r != nil {
			t.Errorf("%s: answered", c.name)
		}
	}

	// Unicast is not answered (clients only unicast when told they may).
	f := udpFrame(t, clientMAC, net.HardwareAddr(s.OurMAC[:]), clientLL, s.OurLinkLocal6, 546, 547, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA()))
	if run(t, s, f) != nil {
		t.Error("unicast SOLICIT answered")
	}

	cfg := testConfig()
	cfg.NoDHCPv6 = true
	if run(t, testServer(cfg), frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA()))) != nil {
		t.Error("answered with NoDHCPv6")
	}
	// NoDHCP leaves DHCPv6 alone, and the other way round.
	cfg = testConfig()
	cfg.NoDHCP = true
	if run(t, testServer(cfg), frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA()))) == nil {
		t.Error("NoDHCP disabled DHCPv6")
	}
	cfg = testConfig()
	cfg.NoDHCPv6 = true
	if run(t, testServer(cfg), frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4))) == nil {
		t.Error("NoDHCPv6 disabled DHCP")
	}
}

func TestMinimalConfig6(t *testing.T) {
	// No resolvers, search list or names, and no link-local address: the
	// one derived from the MAC address is used.
	cfg := Config{OurMAC: ourMAC, Addr6: netip.MustParseAddr("2001:db8::10")}
	s := testServer(cfg)
	if want := netip.MustParseAddr("fe80::9855:9aff:fe55:9a55"); s.OurLinkLocal6 != want {
		t.Fatalf("link-local %s, want %s", s.OurLinkLocal6, want)
	}
	opts := reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA()))), layers.DHCPv6MsgTypeAdvertise)
	if len(opts) != 3 {
		t.Errorf("options %v, want server ID, IA_NA, client ID only", opts)
	}
	// Without IA_NA in the request, none in the reply.
	opts = reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit))), layers.DHCPv6MsgTypeAdvertise)
	if len(opts) != 2 {
		t.Errorf("options %v, want server ID, client ID only", opts)
	}
}

func TestLargeConfig6(t *testing.T) {
	cfg := testConfig()
	for i := range 100 {
		cfg.DNS6 = append(cfg.DNS6, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}))
		cfg.Search = append(cfg.Search, "a-rather-long-search-domain-name.example")
	}
	s := testServer(cfg)
	reply6(t, s, run(t, s, frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA()))), layers.DHCPv6MsgTypeAdvertise)
}

func TestServerDUID(t *testing.T) {
	s := New(Config{OurMAC: ourMAC})
	d := s.ServerDUID()
	if len(d) != 14 || d[0] != 0 || d[1] != 1 || d[2] != 0 || d[3] != 1 || !bytes.Equal(d[8:], ourMAC[:]) {
		t.Errorf("DUID %x", d)
	}
	d[13] ^= 1
	if bytes.Equal(d, s.ServerDUID()) {
		t.Error("ServerDUID returns the server's own slice")
	}
}
