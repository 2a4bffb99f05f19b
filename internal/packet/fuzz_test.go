package packet

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"reflect"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/wirecheck"
)

// Fuzz targets of the frame parser and the header writers. Seeds are
// built with gopacket; testdata/fuzz holds the corpus and any crashers.

var (
	fuzzSrc4 = netip.MustParseAddr("192.0.2.2")
	fuzzDst4 = netip.MustParseAddr("192.0.2.1")
	fuzzSrc6 = netip.MustParseAddr("2001:db8::2")
	fuzzDst6 = netip.MustParseAddr("2001:db8::1")
)

// encode serializes layers with gopacket, computing lengths and checksums.
func encode(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	for _, l := range ls {
		if u, ok := l.(*layers.UDP); ok {
			for _, n := range ls {
				if nl, ok := n.(gopacket.NetworkLayer); ok {
					_ = u.SetNetworkLayerForChecksum(nl)
				}
			}
		}
		if ic, ok := l.(*layers.ICMPv6); ok {
			for _, n := range ls {
				if nl, ok := n.(gopacket.NetworkLayer); ok {
					_ = ic.SetNetworkLayerForChecksum(nl)
				}
			}
		}
	}
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

func eth(typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: typ}
}

func ip4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: fuzzSrc4.AsSlice(), DstIP: fuzzDst4.AsSlice()}
}

func ip6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: fuzzSrc6.AsSlice(), DstIP: fuzzDst6.AsSlice()}
}

// seedFrames are valid frames of every kind Parse knows, built with
// gopacket: UDP over IPv4 (with and without options) and IPv6 (with each
// extension header), fragments, ARP, ICMP and ICMPv6.
func seedFrames(tb testing.TB) [][]byte {
	udp := func() *layers.UDP { return &layers.UDP{SrcPort: 40000, DstPort: 53} }
	payload := gopacket.Payload("0123456789abcdef")
	hbh := &layers.IPv6HopByHop{}
	hbh.NextHeader = layers.IPProtocolIPv6Destination
	hbh.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}}}
	dst := &layers.IPv6Destination{}
	dst.NextHeader = layers.IPProtocolIPv6Routing
	dst.Options = []*layers.IPv6DestinationOption{{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}}}
	rt := &layers.IPv6Routing{RoutingType: 0, SegmentsLeft: 0, SourceRoutingIPs: nil}
	rt.NextHeader = layers.IPProtocolIPv6Fragment
	frag6 := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, FragmentOffset: 0, MoreFragments: true, Identification: 0xdeadbeef}
	lastFrag6 := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, FragmentOffset: 3, Identification: 0xdeadbeef}
	atomic6 := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, Identification: 7}
	opts4 := ip4(layers.IPProtocolUDP)
	opts4.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	firstFrag4 := ip4(layers.IPProtocolUDP)
	firstFrag4.Flags, firstFrag4.Id = layers.IPv4MoreFragments, 0x1234
	lastFrag4 := ip4(layers.IPProtocolUDP)
	lastFrag4.FragOffset, lastFrag4.Id = 3, 0x1234
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: macA, SourceProtAddress: fuzzSrc4.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: fuzzDst4.AsSlice()}
	ns := ip6(layers.IPProtocolICMPv6)
	ns.HopLimit = 255
	return [][]byte{
		encode(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), udp(), payload),
		encode(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), udp()), // padded to 60 bytes
		encode(tb, eth(layers.EthernetTypeIPv4), opts4, udp(), payload),
		encode(tb, eth(layers.EthernetTypeIPv4), firstFrag4, udp(), payload),
		encode(tb, eth(layers.EthernetTypeIPv4), lastFrag4, payload),
		encode(tb, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolUDP), udp(), payload),
		encode(tb, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolIPv6HopByHop), hbh, dst, rt, frag6, udp(), payload),
		encode(tb, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolIPv6Fragment), lastFrag6, payload),
		encode(tb, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolIPv6Fragment), atomic6, udp(), payload),
		encode(tb, eth(layers.EthernetTypeARP), arp),
		encode(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1}, payload),
		encode(tb, eth(layers.EthernetTypeIPv6), ns, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)},
			&layers.ICMPv6NeighborSolicitation{TargetAddress: fuzzDst6.AsSlice(),
				Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: macA}}}),
	}
}

// FuzzParse feeds arbitrary frames to Parse. Beyond not panicking, what it
// accepts must be consistent with the frame's own header fields (lengths,
// addresses, ports, fragment fields, slices within the frame), and where
// gopacket decodes the same frame to UDP, both must agree on addresses,
// ports and payload.
func FuzzParse(f *testing.F) {
	f.Add([]byte{})
	for _, s := range seedFrames(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		var p Parsed
		d := Parse(b, &p)
		if !bytes.Equal(b, orig) {
			t.Fatal("Parse modified the frame")
		}
		if d >= NumDrops {
			t.Fatalf("drop reason %d out of range", d)
		}
		// The engine reuses Parsed values: what a frame leaves behind
		// must not change how the next one is parsed.
		dirty := dirtyParsed
		if d2 := Parse(b, &dirty); d2 != d || d == DropNone && !reflect.DeepEqual(dirty, p) {
			t.Fatalf("Parse into a used Parsed: %v, %+v; into a new one: %v, %+v", d2, dirty, d, p)
		}
		if d != DropNone {
			return
		}
		checkParsed(t, b, &p)
		compareGopacket(t, b, &p)
	})
}

// dirtyParsed has every field set, as a Parsed reused by the engine may.
var dirtyParsed = Parsed{Dst: MAC{1}, Src: MAC{2}, EtherType: 3, L3: []byte{4}, Src4: fuzzSrc6, Dst4: fuzzDst4,
	Proto: 5, HopLimit: 6, L4: []byte{7}, Fragment: true, FragMore: true, FragOffset: 8, FragID: 9,
	SrcPort: 10, DstPort: 11, Payload: []byte{12}}

// within reports whether s is a subslice of b (by address).
func within(s, b []byte) bool {
	if len(s) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	start := cap(b) - cap(s)
	return start >= 0 && start+len(s) <= len(b) && &b[0:cap(b)][start] == &s[0]
}

// checkParsed checks an accepted frame's Parsed against the frame bytes.
func checkParsed(t *testing.T, b []byte, p *Parsed) {
	t.Helper()
	if p.Dst != MAC(b[0:6]) || p.Src != MAC(b[6:12]) || p.EtherType != binary.BigEndian.Uint16(b[12:14]) {
		t.Fatal("Ethernet fields differ from the frame")
	}
	if !within(p.L3, b[EthLen:]) || !within(p.L4, p.L3) || !within(p.Payload, p.L4) {
		t.Fatal("slices outside the frame")
	}
	if len(p.L3) > 0 && &p.L3[0] != &b[EthLen] {
		t.Fatal("L3 does not start after the Ethernet header")
	}
	l3 := p.L3
	switch p.EtherType {
	case EtherTypeARP:
		return
	case EtherTypeIPv4:
		ihl := int(l3[0]&15) * 4
		if l3[0]>>4 != 4 || ihl < IPv4Len || len(l3) != int(binary.BigEndian.Uint16(l3[2:4])) || len(l3) < ihl {
			t.Fatalf("accepted IPv4 header %x with %d bytes of L3", l3[:IPv4Len], len(l3))
		}
		if len(p.L4) != len(l3)-ihl || len(p.L4) > 0 && &p.L4[0] != &l3[ihl] {
			t.Fatal("IPv4 L4 is not what follows the header")
		}
		fo := binary.BigEndian.Uint16(l3[6:8])
		if p.Fragment != (fo&0x3fff != 0) || p.Fragment && (p.FragOffset != int(fo&0x1fff)*8 || p.FragMore != (fo&0x2000 != 0) ||
			p.FragID != uint32(binary.BigEndian.Uint16(l3[4:6]))) {
			t.Fatalf("IPv4 fragment fields %+v from %04x", p, fo)
		}
		if p.Proto != l3[9] || p.HopLimit != l3[8] || p.Src4 != netip.AddrFrom4([4]byte(l3[12:16])) || p.Dst4 != netip.AddrFrom4([4]byte(l3[16:20])) {
			t.Fatal("IPv4 fields differ from the header")
		}
	case EtherTypeIPv6:
		if l3[0]>>4 != 6 || len(l3) != IPv6Len+int(binary.BigEndian.Uint16(l3[4:6])) {
			t.Fatalf("accepted IPv6 header %x with %d bytes of L3", l3[:IPv6Len], len(l3))
		}
		// L4 is a tail of the payload, after whole extension headers.
		if len(p.L4) > len(l3)-IPv6Len || len(p.L4) > 0 && &p.L4[len(p.L4)-1] != &l3[len(l3)-1] ||
			(len(l3)-IPv6Len-len(p.L4))%8 != 0 {
			t.Fatal("IPv6 L4 is not a tail of the payload after extension headers")
		}
		if l3[6] == p.Proto && len(p.L4) != len(l3)-IPv6Len && !p.Fragment {
			t.Fatal("IPv6 without extension headers has L4 shorter than its payload")
		}
		if p.HopLimit != l3[7] || p.Src4 != netip.AddrFrom16([16]byte(l3[8:24])) || p.Dst4 != netip.AddrFrom16([16]byte(l3[24:40])) {
			t.Fatal("IPv6 fields differ from the header")
		}
		if p.Fragment && (p.FragOffset%8 != 0 || !p.FragMore && p.FragOffset == 0) {
			t.Fatalf("IPv6 fragment at %d, more %v", p.FragOffset, p.FragMore)
		}
	default:
		t.Fatalf("accepted EtherType %04x", p.EtherType)
	}
	if p.Proto != ProtoUDP || p.Fragment {
		if p.Payload != nil || p.SrcPort != 0 || p.DstPort != 0 {
			t.Fatal("UDP fields set for something that is not a whole UDP datagram")
		}
		return
	}
	u := p.L4
	ulen := int(binary.BigEndian.Uint16(u[4:6]))
	if len(u) < UDPLen || ulen < UDPLen || ulen > len(u) || len(p.Payload) != ulen-UDPLen ||
		p.SrcPort != binary.BigEndian.Uint16(u[0:2]) || p.DstPort != binary.BigEndian.Uint16(u[2:4]) {
		t.Fatalf("UDP fields %d->%d, %d bytes of payload, from header %x", p.SrcPort, p.DstPort, len(p.Payload), u[:UDPLen])
	}
	if len(p.Payload) > 0 && &p.Payload[0] != &u[UDPLen] {
		t.Fatal("UDP payload does not follow the header")
	}
}

// compareGopacket decodes a frame that Parse accepted as a whole UDP
// datagram with gopacket, and, if gopacket finds one too, compares.
func compareGopacket(t *testing.T, b []byte, p *Parsed) {
	t.Helper()
	if p.Proto != ProtoUDP || p.Fragment {
		return
	}
	pkt := gopacket.NewPacket(bytes.Clone(b), layers.LayerTypeEthernet, gopacket.DecodeOptions{NoCopy: true})
	udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok {
		return // gopacket is stricter in places (IPv4 options, for one)
	}
	var src, dst netip.Addr
	if l, ok := pkt.NetworkLayer().(*layers.IPv4); ok {
		src, _ = netip.AddrFromSlice(l.SrcIP.To4())
		dst, _ = netip.AddrFromSlice(l.DstIP.To4())
	} else if l, ok := pkt.NetworkLayer().(*layers.IPv6); ok {
		src, _ = netip.AddrFromSlice(l.SrcIP.To16())
		dst, _ = netip.AddrFromSlice(l.DstIP.To16())
	}
	if src != p.Src4 || dst != p.Dst4 || uint16(udp.SrcPort) != p.SrcPort || uint16(udp.DstPort) != p.DstPort ||
		!bytes.Equal(udp.Payload, p.Payload) {
		t.Fatalf("gopacket sees %v:%d -> %v:%d with %d bytes, Parse %v:%d -> %v:%d with %d bytes",
			src, udp.SrcPort, dst, udp.DstPort, len(udp.Payload), p.Src4, p.SrcPort, p.Dst4, p.DstPort, len(p.Payload))
	}
}

// addr makes an address of the family v6 says from the fuzzer's bytes.
func addr(v6 bool, b []byte) netip.Addr {
	if v6 {
		var a [16]byte
		copy(a[:], b)
		return netip.AddrFrom16(a)
	}
	var a [4]byte
	copy(a[:], b)
	return netip.AddrFrom4(a)
}

// FuzzPutUDP builds frames with PutUDP4 or PutUDP6 and PutEthernet from
// arbitrary addresses, ports and payloads: Parse must give back what went
// in, and gopacket must find the frame well formed with right checksums.
func FuzzPutUDP(f *testing.F) {
	f.Add(false, fuzzSrc4.AsSlice(), fuzzDst4.AsSlice(), uint16(53), uint16(40000), []byte("hello"))
	f.Add(true, fuzzSrc6.AsSlice(), fuzzDst6.AsSlice(), uint16(5353), uint16(5353), []byte{})
	f.Add(false, []byte{255, 255, 255, 255}, []byte{0, 0, 0, 0}, uint16(0), uint16(0), bytes.Repeat([]byte{0xff}, 1001))
	f.Add(true, []byte{0xfe, 0x80}, []byte{0xff, 0x02}, uint16(0xffff), uint16(1), bytes.Repeat([]byte{0, 0xff}, 700))
	f.Fuzz(func(t *testing.T, v6 bool, sb, db []byte, sport, dport uint16, payload []byte) {
		if len(payload) > 65535-IPv6Len-UDPLen || !v6 && len(payload) > MaxUDPPayload {
			return
		}
		src, dst := addr(v6, sb), addr(v6, db)
		buf := make([]byte, MaxHeadroom+len(payload))
		copy(buf[MaxHeadroom:], payload)
		var frame []byte
		if v6 {
			n := PutUDP6(buf[EthLen:], src, dst, sport, dport, len(payload))
			PutEthernet(buf, MAC(macB), MAC(macA), EtherTypeIPv6)
			frame = buf[:EthLen+n]
		} else {
			start := MaxHeadroom - UDPLen - IPv4Len - EthLen
			n := PutUDP4(buf[start+EthLen:], src, dst, sport, dport, len(payload))
			PutEthernet(buf[start:], MAC(macB), MAC(macA), EtherTypeIPv4)
			frame = buf[start : start+EthLen+n]
		}
		want := EthLen + IPv4Len + UDPLen + len(payload)
		if v6 {
			want += IPv6Len - IPv4Len
		}
		if len(frame) != want {
			t.Fatalf("frame of %d bytes for %d bytes of payload", len(frame), len(payload))
		}
		var p Parsed
		if d := Parse(frame, &p); d != DropNone {
			t.Fatalf("Parse dropped our own frame: %v", d)
		}
		if p.Src4 != src || p.Dst4 != dst || p.SrcPort != sport || p.DstPort != dport || p.Proto != ProtoUDP ||
			p.Fragment || !bytes.Equal(p.Payload, payload) || p.Src != MAC(macA) || p.Dst != MAC(macB) {
			t.Fatalf("round trip: got %v:%d -> %v:%d, %d bytes", p.Src4, p.SrcPort, p.Dst4, p.DstPort, len(p.Payload))
		}
		// wirecheck holds frames to gopasst's policy too: unicast
		// source, no port 0. Only check what the policy allows.
		if sport == 0 || dport == 0 || !src.IsValid() || src.IsUnspecified() || src.IsMulticast() || dst.IsUnspecified() ||
			src == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return
		}
		w, err := wirecheck.Check(frame)
		if err != nil {
			t.Fatalf("gopacket: %v", err)
		}
		if w.SrcIP != src || w.DstIP != dst || !bytes.Equal(w.Payload, payload) {
			t.Fatalf("gopacket decodes %v -> %v with %d bytes", w.SrcIP, w.DstIP, len(w.Payload))
		}
	})
}

// ICMP error types gopasst sends.
var (
	icmp4Errors = []uint8{3, 4, 5, 11, 12}
	icmp6Errors = []uint8{1, 2, 3, 4}
)

// FuzzICMPError quotes arbitrary datagrams in ICMP and ICMPv6 errors:
// gopacket must find them well formed (checksums, quoted header, size
// limits), and the quote must hold the datagram's original lengths and
// as much of its payload as fits.
func FuzzICMPError(f *testing.F) {
	f.Add(false, uint8(0), uint8(3), uint32(0), uint16(40000), uint16(5000), []byte("hello"))
	f.Add(true, uint8(0), uint8(4), uint32(0), uint16(40000), uint16(5000), bytes.Repeat([]byte{0x5a}, 2000))
	f.Add(false, uint8(4), uint8(0), uint32(1500), uint16(1), uint16(65535), []byte{})
	f.Add(true, uint8(1), uint8(0), uint32(1280), uint16(1), uint16(1), bytes.Repeat([]byte{0xff}, 1233))
	f.Fuzz(func(t *testing.T, v6 bool, typ, code uint8, rest uint32, sport, dport uint16, payload []byte) {
		if len(payload) > MaxUDPPayload {
			return
		}
		guest, peer := netip.AddrPortFrom(fuzzSrc4, sport), netip.AddrPortFrom(fuzzDst4, dport)
		types := icmp4Errors
		if v6 {
			guest, peer, types = netip.AddrPortFrom(fuzzSrc6, sport), netip.AddrPortFrom(fuzzDst6, dport), icmp6Errors
		}
		typ = types[int(typ)%len(types)]
		var qbuf [MaxICMP6Error]byte
		q := QuoteUDP(qbuf[:], guest, peer, payload)
		hl := IPv4Len
		if v6 {
			hl = IPv6Len
		}
		if len(q) != hl+UDPLen+min(len(payload), len(qbuf)-hl-UDPLen) || !bytes.Equal(q[hl+UDPLen:], payload[:len(q)-hl-UDPLen]) {
			t.Fatalf("quote of %d bytes for %d bytes of payload", len(q), len(payload))
		}
		if ulen := binary.BigEndian.Uint16(q[hl+4:]); int(ulen) != UDPLen+len(payload) {
			t.Fatalf("quoted UDP length %d, want %d", ulen, UDPLen+len(payload))
		}
		buf := make([]byte, EthLen+MaxICMP6Error)
		var n, max int
		if v6 {
			n, max = PutICMP6Error(buf, peer.Addr(), guest.Addr(), typ, code, rest, q), MaxICMP6Error
			PutEthernet(buf, MAC(macA), MAC(macB), EtherTypeIPv6)
		} else {
			n, max = PutICMP4Error(buf, peer.Addr(), guest.Addr(), typ, code, rest, q), MaxICMP4Error
			PutEthernet(buf, MAC(macA), MAC(macB), EtherTypeIPv4)
		}
		if n > max {
			t.Fatalf("ICMP error of %d bytes", n)
		}
		w, err := wirecheck.Check(buf[:EthLen+n])
		if err != nil {
			t.Fatalf("gopacket: %v", err)
		}
		if w.ICMPType != typ || w.ICMPCode != code || binary.BigEndian.Uint32(w.ICMPBody) != rest ||
			!bytes.Equal(w.ICMPBody[4:], q[:len(w.ICMPBody)-4]) {
			t.Fatalf("ICMP %d/%d rest %x: decoded %d/%d", typ, code, rest, w.ICMPType, w.ICMPCode)
		}
	})
}

// FuzzSum compares the unrolled Sum with the plain one, and checks that
// sums chain over an even split.
func FuzzSum(f *testing.F) {
	f.Add([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, uint32(0), uint16(4))
	f.Add(bytes.Repeat([]byte{0xff}, 67), uint32(0xffffffff), uint16(32))
	f.Fuzz(func(t *testing.T, b []byte, initial uint32, split uint16) {
		got := Sum(b, initial)
		if want := wirecheck.Sum(b, initial); got != want {
			t.Fatalf("Sum = %#x, want %#x", got, want)
		}
		if s := int(split) &^ 1; s <= len(b) {
			if c := Sum(b[s:], Sum(b[:s], initial)); c != got {
				t.Fatalf("chained at %d: %#x, whole %#x", s, c, got)
			}
		}
	})
}
