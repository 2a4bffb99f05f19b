package dhcp

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/packet"
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
// bounded size.
func FuzzHandle(f *testing.F) {
	s := testServer(testConfig())
	f.Add(false, msg4(f, layers.DHCPMsgTypeDiscover, flagBroadcast, zero4, prl(1, 3, 6, 119, 53)))
	f.Add(false, msg4(f, layers.DHCPMsgTypeRequest, 0, netip.MustParseAddr("192.0.2.10")))
	f.Add(false, msg4(f, 0, 0, zero4))
	f.Add(true, msg6(f, layers.DHCPv6MsgTypeSolicit, iaNA()))
	f.Add(true, msg6(f, layers.DHCPv6MsgTypeRequest, serverIDOpt(s), iaNA(s.Addr6)))
	f.Add(true, msg6(f, layers.DHCPv6MsgTypeConfirm, iaNA(netip.MustParseAddr("2001:db8:1::1"))))
	f.Add(true, msg6(f, layers.DHCPv6MsgTypeInformationRequest, opt6(layers.DHCPv6OptClientFQDN, []byte{1})))
	out := make([]byte, MinOut)
	f.Fuzz(func(t *testing.T, v6 bool, payload []byte) {
		if len(payload) > 1400 {
			return
		}
		var p packet.Parsed
		if packet.Parse(fuzzFrame(v6, payload), &p) != packet.DropNone {
			t.Fatal("fuzz frame does not parse")
		}
		n := s.Handle(&p, out)
		if n == 0 {
			return
		}
		var r packet.Parsed
		if d := packet.Parse(out[:n], &r); d != packet.DropNone {
			t.Fatalf("reply does not parse: %v", d)
		}
		if r.Proto != packet.ProtoUDP || len(r.L3)+packet.EthLen != n {
			t.Fatalf("reply is not one UDP datagram filling the frame")
		}
		if v6 {
			if r.SrcPort != ServerPort6 || r.DstPort != ClientPort6 || len(r.Payload) > maxMsg6 {
				t.Fatalf("bad DHCPv6 reply: ports %d %d, %d bytes", r.SrcPort, r.DstPort, len(r.Payload))
			}
		} else if r.SrcPort != ServerPort4 || r.DstPort != ClientPort4 || len(r.Payload) < 300 || len(r.Payload) > 548 {
			t.Fatalf("bad DHCP reply: ports %d %d, %d bytes", r.SrcPort, r.DstPort, len(r.Payload))
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
