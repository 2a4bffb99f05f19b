package packet

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/wirecheck"
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
)

// frame builds a frame with gopacket, the independent encoder.
func frame(t *testing.T, src, dst netip.Addr, sport, dport uint16, payload []byte, extra ...gopacket.SerializableLayer) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	var ls []gopacket.SerializableLayer
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Flags: layers.IPv4DontFragment}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, eth, ip)
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		if len(extra) > 0 {
			ip.NextHeader = layers.IPProtocolIPv6HopByHop
		}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, eth, ip)
		ls = append(ls, extra...)
	}
	ls = append(ls, udp, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestParseUDP(t *testing.T) {
	cases := []struct {
		name     string
		src, dst netip.Addr
		size     int
	}{
		{"v4-empty", netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1"), 0},
		{"v4-1", netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("198.51.100.7"), 1},
		{"v4-1372", netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1"), 1372},
		{"v4-max", netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1"), MaxUDPPayload},
		{"v6-odd", netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::1"), 333},
		{"v6-65000", netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8:1::1"), 65000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			payload := make([]byte, c.size)
			for i := range payload {
				payload[i] = byte(i*7 + 3)
			}
			f := frame(t, c.src, c.dst, 40000, 53, payload)
			var p Parsed
			if d := Parse(f, &p); d != DropNone {
				t.Fatalf("Parse dropped: %v", d)
			}
			if p.Src != MAC(macA) || p.Dst != MAC(macB) {
				t.Errorf("MACs %v %v", p.Src, p.Dst)
			}
			if p.Src4 != c.src || p.Dst4 != c.dst || p.SrcPort != 40000 || p.DstPort != 53 || p.Proto != ProtoUDP {
				t.Errorf("got %v:%d -> %v:%d proto %d", p.Src4, p.SrcPort, p.Dst4, p.DstPort, p.Proto)
			}
			if !bytes.Equal(p.Payload, payload) {
				t.Errorf("payload differs")
			}
		})
	}
}

func TestParseIPv6ExtensionHeader(t *testing.T) {
	hbh := &layers.IPv6HopByHop{}
	hbh.NextHeader = layers.IPProtocolUDP
	hbh.Options = append(hbh.Options, &layers.IPv6HopByHopOption{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}})
	f := frame(t, netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::1"), 1, 2, []byte("hi"), hbh)
	var p Parsed
	if d := Parse(f, &p); d != DropNone {
		t.Fatalf("dropped: %v", d)
	}
	if p.Proto != ProtoUDP || string(p.Payload) != "hi" {
		t.Fatalf("proto %d payload %q", p.Proto, p.Payload)
	}
}

func TestParseMalformed(t *testing.T) {
	good4 := frame(t, netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1"), 1, 2, []byte("abcdef"))
	good6 := frame(t, netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::1"), 1, 2, []byte("abcdef"))
	mut := func(b []byte, f func([]byte)) []byte { c := bytes.Clone(b); f(c); return c }
	cases := []struct {
		name string
		f    []byte
		want Drop
	}{
		{"empty", nil, DropShort},
		{"eth-only", good4[:EthLen], DropShort},
		{"v4-truncated", good4[:EthLen+10], DropShort},
		{"v4-bad-version", mut(good4, func(b []byte) { b[EthLen] = 0x55 }), DropBadHeader},
		{"v4-ihl-small", mut(good4, func(b []byte) { b[EthLen] = 0x44 }), DropBadHeader},
		{"v4-total-long", mut(good4, func(b []byte) { b[EthLen+2] = 0xff }), DropShort},
		{"v4-total-small", mut(good4, func(b []byte) { b[EthLen+2], b[EthLen+3] = 0, 10 }), DropBadHeader},
		{"v6-fragment-short", mut(good6, func(b []byte) { b[EthLen+6] = 44; b[EthLen+5] = 4 })[:EthLen+IPv6Len+4], DropShort},
		{"v4-udp-len-long", mut(good4, func(b []byte) { b[EthLen+IPv4Len+4] = 0xff }), DropShort},
		{"v4-udp-len-small", mut(good4, func(b []byte) { b[EthLen+IPv4Len+4], b[EthLen+IPv4Len+5] = 0, 4 }), DropBadHeader},
		{"v6-truncated", good6[:EthLen+39], DropShort},
		{"v6-plen-long", mut(good6, func(b []byte) { b[EthLen+4] = 0xff }), DropShort},
		{"v6-ext-overrun", mut(good6, func(b []byte) { b[EthLen+6] = 0; b[EthLen+IPv6Len+1] = 200 }), DropShort},
		{"unknown-ethertype", mut(good4, func(b []byte) { b[12], b[13] = 0x88, 0x8e }), DropUnsupported},
	}
	for _, c := range cases {
		var p Parsed
		if got := Parse(c.f, &p); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPutUDP checks our header writers against gopacket's encoding of the
// same datagram, byte for byte, checksums included.
func TestPutUDP(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 2, 3, 7, 64, 1372, 1373, 9000, 65000} {
		for _, pair := range [][2]string{{"192.0.2.1", "192.0.2.2"}, {"2001:db8::1", "2001:db8::2"}, {"fe80::1", "2001:db8::2"}} {
			src, dst := netip.MustParseAddr(pair[0]), netip.MustParseAddr(pair[1])
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(r.Uint32())
			}
			buf := make([]byte, MaxHeadroom+size)
			copy(buf[MaxHeadroom:], payload)
			var start int
			if src.Is4() {
				start = MaxHeadroom - UDPLen - IPv4Len - EthLen
				PutUDP4(buf[start+EthLen:], src, dst, 5353, 40000, size)
				PutEthernet(buf[start:], MAC(macB), MAC(macA), EtherTypeIPv4)
			} else {
				start = 0
				PutUDP6(buf[EthLen:], src, dst, 5353, 40000, size)
				PutEthernet(buf, MAC(macB), MAC(macA), EtherTypeIPv6)
			}
			got := buf[start:]
			// Decode with gopacket and re-encode with its checksums.
			pkt := gopacket.NewPacket(got, layers.LayerTypeEthernet, gopacket.Default)
			if el := pkt.ErrorLayer(); el != nil {
				t.Fatalf("gopacket decode: %v", el.Error())
			}
			udp := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if !bytes.Equal(udp.Payload, payload) || udp.SrcPort != 5353 || udp.DstPort != 40000 {
				t.Fatalf("size %d: decoded UDP differs", size)
			}
			want := frameFrom(t, pkt)
			// gopacket pads short frames to the Ethernet minimum.
			if len(want) > len(got) && len(want) == 60 {
				want = want[:len(got)]
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("size %d %v: our frame differs from gopacket's\n got %x\nwant %x", size, src, got[:min(len(got), MaxHeadroom)], want[:min(len(want), MaxHeadroom)])
			}
		}
	}
}

// frameFrom re-serializes a decoded packet with gopacket computing lengths
// and checksums.
func frameFrom(t *testing.T, pkt gopacket.Packet) []byte {
	t.Helper()
	udp := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	var net gopacket.NetworkLayer
	if l := pkt.Layer(layers.LayerTypeIPv4); l != nil {
		ip := l.(*layers.IPv4)
		ip.Checksum = 0
		net = ip
	} else {
		net = pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	}
	if err := udp.SetNetworkLayerForChecksum(net); err != nil {
		t.Fatal(err)
	}
	udp.Checksum = 0
	var ls []gopacket.SerializableLayer
	for _, l := range pkt.Layers() {
		if s, ok := l.(gopacket.SerializableLayer); ok {
			ls = append(ls, s)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestSumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for n := 0; n < 300; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if got, want := Fold(Sum(b, 0)), wirecheck.Checksum(b); got != want {
			t.Fatalf("len %d: got %04x want %04x", n, got, want)
		}
	}
}

func TestPutUDPAllocs(t *testing.T) {
	buf := make([]byte, MaxHeadroom+1372)
	src, dst := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	var p Parsed
	if a := testing.AllocsPerRun(100, func() {
		PutUDP6(buf[EthLen:], src, dst, 1, 2, 1372)
		PutEthernet(buf, MAC(macA), MAC(macB), EtherTypeIPv6)
		Parse(buf, &p)
	}); a != 0 {
		t.Fatalf("%v allocations per datagram", a)
	}
}

// TestParseFragments checks the fragment fields against fragments built
// with gopacket.
func TestParseFragments(t *testing.T) {
	// IPv4: more fragments, offset 185 (1480 bytes), id 0x1234.
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, Id: 0x1234, Flags: layers.IPv4MoreFragments,
		FragOffset: 185, SrcIP: netip.MustParseAddr("192.0.2.2").AsSlice(), DstIP: netip.MustParseAddr("192.0.2.1").AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}, ip, gopacket.Payload(make([]byte, 64)))
	var p Parsed
	if d := Parse(buf.Bytes(), &p); d != DropNone {
		t.Fatal(d)
	}
	if !p.Fragment || !p.FragMore || p.FragOffset != 1480 || p.FragID != 0x1234 || len(p.L4) != 64 || p.Payload != nil {
		t.Fatalf("IPv4 fragment: %+v", p)
	}
	// IPv6: last fragment at offset 1448, id 0xdeadbeef.
	ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment,
		SrcIP: netip.MustParseAddr("2001:db8::2").AsSlice(), DstIP: netip.MustParseAddr("2001:db8::1").AsSlice()}
	fh := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, FragmentOffset: 181, Identification: 0xdeadbeef}
	buf = gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
		&layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6}, ip6, fh, gopacket.Payload(make([]byte, 40)))
	if d := Parse(buf.Bytes(), &p); d != DropNone {
		t.Fatal(d)
	}
	if !p.Fragment || p.FragMore || p.FragOffset != 1448 || p.FragID != 0xdeadbeef || p.Proto != ProtoUDP || len(p.L4) != 40 {
		t.Fatalf("IPv6 fragment: %+v", p)
	}
}
