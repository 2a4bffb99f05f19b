package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// fuzzFrame wraps payload in a frame to the DHCP (v6 false) or DHCPv6
// server, built in place to keep the fuzzing loop fast.
func fuzzFrame(v6 bool, payload []byte) []byte {
	f := make([]byte, packet.MaxHeadroom+len(payload))
	var n int
	if v6 {
		copy(f[packet.EthLen+packet.IPv6Len+packet.UDPLen:], payload)
		n = packet.PutUDP6(f[packet.EthLen:], clientLL, allDHCP6, ClientPort6, ServerPort6, len(payload))
		packet.PutEthernet(f, packet.MAC(dhcp6MAC), packet.MAC(clientMAC), packet.EtherTypeIPv6)
	} else {
		copy(f[packet.EthLen+packet.IPv4Len+packet.UDPLen:], payload)
		n = packet.PutUDP4(f[packet.EthLen:], zero4, bcast4, ClientPort4, ServerPort4, len(payload))
		packet.PutEthernet(f, packet.BroadcastMAC, packet.MAC(clientMAC), packet.EtherTypeIPv4)
	}
	return f[:packet.EthLen+n]
}

// FuzzHandle feeds arbitrary DHCP and DHCPv6 messages to the server: it
// must not panic, and whatever it sends must be a well-formed reply of
// bounded size (see checkReply).
func FuzzHandle(f *testing.F) {
	s := testServer(testConfig())
	for _, seed := range seedMessages(f, s) {
		f.Add(seed.v6, seed.msg)
	}
	out := make([]byte, MinOut)
	f.Fuzz(func(t *testing.T, v6 bool, payload []byte) {
		if len(payload) > 1400 {
			return
		}
		var p packet.Parsed
		if packet.Parse(fuzzFrame(v6, payload), &p) != packet.DropNone {
			t.Fatal("fuzz frame does not parse")
		}
		checkReply(t, s, &p, s.Handle(&p, out), out)
	})
}

type seedMessage struct {
	v6  bool
	msg []byte
}

// seedMessages are requests of every kind, encoded by gopacket.
func seedMessages(tb testing.TB, s *Server) []seedMessage {
	return []seedMessage{
		{false, msg4(tb, layers.DHCPMsgTypeDiscover, flagBroadcast, zero4, prl(1, 3, 6, 119, 53))},
		{false, msg4(tb, layers.DHCPMsgTypeRequest, 0, netip.MustParseAddr("192.0.2.10"))},
		{false, msg4(tb, layers.DHCPMsgTypeDiscover, 0, zero4, layers.NewDHCPOption(layers.DHCPOpt(80), nil))},
		{false, msg4(tb, 0, 0, zero4)},
		{true, msg6(tb, layers.DHCPv6MsgTypeSolicit, iaNA())},
		{true, msg6(tb, layers.DHCPv6MsgTypeRequest, serverIDOpt(s), iaNA(s.Addr6))},
		{true, msg6(tb, layers.DHCPv6MsgTypeConfirm, iaNA(netip.MustParseAddr("2001:db8:1::1")))},
		{true, msg6(tb, layers.DHCPv6MsgTypeRebind, iaNA(s.Addr6), opt6(layers.DHCPv6OptOro, []byte{0, 23, 0, 24, 0, 39}))},
		{true, msg6(tb, layers.DHCPv6MsgTypeInformationRequest, opt6(layers.DHCPv6OptClientFQDN, []byte{1}))},
	}
}

// checkReply checks the reply of n bytes in out that s gave to p: none
// unless p is a request from a station's MAC address; otherwise a frame
// gopacket finds well formed, checksums included, carrying a DHCP or
// DHCPv6 message that gopacket decodes, from the server's port and
// address to the client's port, at the MAC address the request came
// from, within the sizes the protocols allow.
func checkReply(t *testing.T, s *Server, p *packet.Parsed, n int, out []byte) {
	t.Helper()
	if n == 0 {
		return
	}
	if !IsRequest(p) || p.Src.IsZero() || p.Src.IsMulticast() {
		t.Fatalf("answered a frame from %v that is not a request", p.Src)
	}
	if n > len(out) {
		t.Fatalf("reply of %d bytes", n)
	}
	w, err := wirecheck.Check(out[:n])
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	if !bytes.Equal(w.Src, s.OurMAC[:]) || !bytes.Equal(w.Dst, p.Src[:]) || w.Proto != layers.IPProtocolUDP {
		t.Fatalf("reply from %v to %v, protocol %v, for a request from %v", w.Src, w.Dst, w.Proto, p.Src)
	}
	pkt := gopacket.NewPacket(out[:n], layers.LayerTypeEthernet, gopacket.Default)
	if w.EtherType == layers.EthernetTypeIPv6 {
		if w.SrcPort != ServerPort6 || w.DstPort != ClientPort6 || len(w.Payload) > maxMsg6 ||
			w.SrcIP != s.OurLinkLocal6 || w.DstIP != p.Src4 {
			t.Fatalf("bad DHCPv6 reply: %v:%d -> %v:%d, %d bytes", w.SrcIP, w.SrcPort, w.DstIP, w.DstPort, len(w.Payload))
		}
		if _, ok := pkt.Layer(layers.LayerTypeDHCPv6).(*layers.DHCPv6); !ok {
			t.Fatalf("gopacket does not decode the DHCPv6 reply: %v", pkt.ErrorLayer())
		}
		return
	}
	if w.SrcPort != ServerPort4 || w.DstPort != ClientPort4 || len(w.Payload) < 300 || len(w.Payload) > 548 ||
		w.SrcIP != s.Gateway4 || w.DstIP != s.Addr4.Addr() && w.DstIP != bcast4 {
		t.Fatalf("bad DHCP reply: %v:%d -> %v:%d, %d bytes", w.SrcIP, w.SrcPort, w.DstIP, w.DstPort, len(w.Payload))
	}
	d, ok := pkt.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
	if !ok {
		t.Fatalf("gopacket does not decode the DHCP reply: %v", pkt.ErrorLayer())
	}
	// RFC 2131, table 3: OFFER and ACK carry the lease time and the
	// server identifier, whatever else fills the options.
	have := map[layers.DHCPOpt]bool{}
	for _, o := range d.Options {
		have[o.Type] = true
	}
	for _, o := range []layers.DHCPOpt{layers.DHCPOptMessageType, layers.DHCPOptServerID, layers.DHCPOptLeaseTime} {
		if !have[o] {
			t.Fatalf("DHCP reply without option %v", o)
		}
	}
}

// FuzzHandleFrame feeds whole arbitrary frames to the server, so that the
// addresses, ports and MAC addresses of requests vary too; replies are
// checked as in FuzzHandle.
func FuzzHandleFrame(f *testing.F) {
	s := testServer(testConfig())
	for _, seed := range seedMessages(f, s) {
		if seed.v6 {
			f.Add(frame6(f, seed.msg))
			f.Add(udpFrame(f, clientMAC, dhcp6MAC, netip.MustParseAddr("2001:db8::77"), netip.MustParseAddr("ff05::1:3"), 546, 547, seed.msg))
		} else {
			f.Add(frame4(f, seed.msg))
			f.Add(udpFrame(f, clientMAC, net.HardwareAddr(ourMAC[:]), netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.1"), 68, 67, seed.msg))
		}
	}
	out := make([]byte, MinOut)
	f.Fuzz(func(t *testing.T, frame []byte) {
		var p packet.Parsed
		if packet.Parse(frame, &p) != packet.DropNone {
			return
		}
		checkReply(t, s, &p, s.Handle(&p, out), out)
	})
}

// FuzzConfig answers fixed requests from servers configured with
// arbitrary names, search lists, resolvers and MTUs (all of which come
// from the user or the host): the replies must stay well formed and
// within size, and gopacket must find the configured options in them.
func FuzzConfig(f *testing.F) {
	c := testConfig()
	f.Add(c.Hostname, c.FQDN, strings.Join(c.Search, " "), []byte{192, 0, 2, 53}, uint16(c.MTU))
	f.Add("", "", "", []byte{}, uint16(0))
	f.Add(strings.Repeat("h", 300), strings.Repeat("a.", 130), strings.Repeat(strings.Repeat("x", 63)+".example ", 30), bytes.Repeat([]byte{10, 0, 0, 1}, 80), uint16(65535))
	// 63 resolvers and a 36-byte name fill the option space exactly.
	f.Add(strings.Repeat("h", 36), "", "", bytes.Repeat([]byte{192, 0, 2, 53}, 63), uint16(1500))
	f.Add("a b", "..", ". a..b -.- a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p", []byte{0, 0, 0, 0, 255, 255, 255, 255}, uint16(68))
	out := make([]byte, MinOut)
	f.Fuzz(func(t *testing.T, hostname, fqdn, search string, dns []byte, mtu uint16) {
		cfg := testConfig()
		cfg.Hostname, cfg.FQDN, cfg.Search, cfg.MTU = hostname, fqdn, strings.Fields(search), int(mtu)
		cfg.DNS4, cfg.DNS6 = nil, nil
		for i := 0; i+4 <= len(dns); i += 4 {
			cfg.DNS4 = append(cfg.DNS4, netip.AddrFrom4([4]byte(dns[i:])))
			var a [16]byte
			copy(a[:], dns[i:])
			cfg.DNS6 = append(cfg.DNS6, netip.AddrFrom16(a))
		}
		s := testServer(cfg)
		for _, seed := range seedMessages(t, s) {
			var p packet.Parsed
			if packet.Parse(fuzzFrame(seed.v6, seed.msg), &p) != packet.DropNone {
				t.Fatal("fuzz frame does not parse")
			}
			n := s.Handle(&p, out)
			checkReply(t, s, &p, n, out)
			if n == 0 && seed.msg[0] == byte(layers.DHCPOpRequest) && !seed.v6 {
				t.Fatal("DHCP request unanswered")
			}
		}
	})
}

// TestConcurrent runs both servers from several goroutines at once, for
// the race detector.
func TestConcurrent(t *testing.T) {
	s := testServer(testConfig())
	frames := [][]byte{
		frame4(t, msg4(t, layers.DHCPMsgTypeDiscover, 0, zero4, prl(1, 3))),
		frame6(t, msg6(t, layers.DHCPv6MsgTypeSolicit, iaNA())),
	}
	done := make(chan bool)
	for g := range 4 {
		go func() {
			ok := true
			out := make([]byte, MinOut)
			for i := range 200 {
				var p packet.Parsed
				packet.Parse(frames[(g+i)%2], &p)
				ok = ok && s.Handle(&p, out) > 0
			}
			done <- ok
		}()
	}
	for range 4 {
		if !<-done {
			t.Error("a request went unanswered")
		}
	}
}
