package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/packet"
)

// Frames in these tests are built and decoded with gopacket, independently
// of the library the server uses.

var (
	clientMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	ourMAC    = packet.MAC{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
	clientLL  = netip.MustParseAddr("fe80::5054:ff:fe12:3456")
	allDHCP6  = netip.MustParseAddr("ff02::1:2")
	testTime  = time.Date(2026, 5, 4, 3, 2, 1, 0, time.UTC)
)

func testConfig() Config {
	return Config{
		OurMAC:        ourMAC,
		Addr4:         netip.MustParsePrefix("192.0.2.10/24"),
		Gateway4:      netip.MustParseAddr("192.0.2.1"),
		DNS4:          []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("198.51.100.53")},
		Search:        []string{"example.com", "sub.example.com", "example.org."},
		MTU:           65520,
		Hostname:      "guest",
		FQDN:          "guest.example.com",
		Addr6:         netip.MustParseAddr("2001:db8::10"),
		OurLinkLocal6: netip.MustParseAddr("fe80::1"),
		DNS6:          []netip.Addr{netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("2001:db8::54")},
	}
}

func testServer(cfg Config) *Server { return newAt(cfg, testTime) }

// udpFrame builds an Ethernet/IP/UDP frame around payload with gopacket.
func udpFrame(t testing.TB, srcMAC net.HardwareAddr, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	var ip gopacket.SerializableLayer
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		if err := udp.SetNetworkLayerForChecksum(ip4); err != nil {
			t.Fatal(err)
		}
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 1, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		if err := udp.SetNetworkLayerForChecksum(ip6); err != nil {
			t.Fatal(err)
		}
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// serialize encodes one gopacket layer on its own.
func serialize(t testing.TB, l gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := l.SerializeTo(buf, gopacket.SerializeOptions{FixLengths: true}); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// run parses frame and hands it to s; it returns the reply frame, nil for
// none.
func run(t testing.TB, s *Server, frame []byte) []byte {
	t.Helper()
	var p packet.Parsed
	if d := packet.Parse(frame, &p); d != packet.DropNone {
		t.Fatalf("test frame does not parse: %v", d)
	}
	if !IsRequest(&p) {
		t.Fatalf("IsRequest false for a request")
	}
	out := make([]byte, MinOut)
	n := s.Handle(&p, out)
	if n == 0 {
		return nil
	}
	return out[:n]
}

// decoded is a reply taken apart by gopacket.
type decoded struct {
	eth  *layers.Ethernet
	ip4  *layers.IPv4
	ip6  *layers.IPv6
	udp  *layers.UDP
	dhcp *layers.DHCPv4
	d6   *layers.DHCPv6
}

// decode takes reply apart with gopacket and checks that re-serialising it
// with computed checksums and lengths gives the same bytes: IPv4 header
// checksum, UDP checksum and all lengths are right.
func decode(t testing.TB, reply []byte) decoded {
	t.Helper()
	pkt := gopacket.NewPacket(reply, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("reply does not decode: %v", el.Error())
	}
	var d decoded
	var ok bool
	if d.eth, ok = pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !ok {
		t.Fatal("no Ethernet layer")
	}
	if d.udp, ok = pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); !ok {
		t.Fatal("no UDP layer")
	}
	d.ip4, _ = pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	d.ip6, _ = pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	d.dhcp, _ = pkt.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
	d.d6, _ = pkt.Layer(layers.LayerTypeDHCPv6).(*layers.DHCPv6)

	var ip gopacket.SerializableLayer
	eth := *d.eth
	udp := *d.udp
	if d.ip4 != nil {
		ip4 := *d.ip4
		if err := udp.SetNetworkLayerForChecksum(&ip4); err != nil {
			t.Fatal(err)
		}
		ip = &ip4
	} else {
		ip6 := *d.ip6
		if err := udp.SetNetworkLayerForChecksum(&ip6); err != nil {
			t.Fatal(err)
		}
		ip = &ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&eth, ip, &udp, gopacket.Payload(d.udp.Payload)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), reply) {
		t.Errorf("reply differs from its re-serialisation with computed checksums and lengths:\n got %x\nwant %x", reply, buf.Bytes())
	}
	return d
}

// decodeNames decodes a sequence of DNS wire-format names with compression
// pointers relative to the start of b (RFC 1035, 4.1.4; RFC 3397).
func decodeNames(t testing.TB, b []byte) []string {
	t.Helper()
	var names []string
	for pos := 0; pos < len(b); {
		var labels []string
		p, jumped, hops := pos, false, 0
		for {
			if p >= len(b) {
				t.Fatalf("name runs off the end at %d in %x", p, b)
			}
			l := int(b[p])
			if l == 0 {
				if !jumped {
					pos = p + 1
				}
				break
			}
			if l&0xc0 == 0xc0 {
				if p+1 >= len(b) {
					t.Fatalf("truncated pointer in %x", b)
				}
				if !jumped {
					pos = p + 2
				}
				jumped = true
				if hops++; hops > 64 {
					t.Fatalf("pointer loop in %x", b)
				}
				np := (l&0x3f)<<8 | int(b[p+1])
				if np >= p {
					t.Fatalf("forward pointer %d at %d in %x", np, p, b)
				}
				p = np
				continue
			}
			if p+1+l > len(b) {
				t.Fatalf("label runs off the end in %x", b)
			}
			labels = append(labels, string(b[p+1:p+1+l]))
			p += 1 + l
		}
		name := ""
		for i, l := range labels {
			if i > 0 {
				name += "."
			}
			name += l
		}
		names = append(names, name)
	}
	return names
}

func equalStrings(a, b []string) bool {
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
