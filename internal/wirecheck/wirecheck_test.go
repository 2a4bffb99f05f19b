package wirecheck

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	macA = net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	a4   = netip.MustParseAddr("192.0.2.1")
	b4   = netip.MustParseAddr("192.0.2.2")
	a6   = netip.MustParseAddr("2001:db8::1")
	b6   = netip.MustParseAddr("2001:db8::2")
)

func build(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(buf.Bytes())
	// gopacket pads to the Ethernet minimum; gopasst does not.
	switch layers.EthernetType(binary.BigEndian.Uint16(b[12:])) {
	case layers.EthernetTypeIPv4:
		b = b[:EthLen+int(binary.BigEndian.Uint16(b[EthLen+2:]))]
	case layers.EthernetTypeIPv6:
		b = b[:EthLen+40+int(binary.BigEndian.Uint16(b[EthLen+4:]))]
	}
	return b
}

func udp4(t *testing.T, payload []byte) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: a4.AsSlice(), DstIP: b4.AsSlice()}
	u := &layers.UDP{SrcPort: 53, DstPort: 40000}
	_ = u.SetNetworkLayerForChecksum(ip)
	return build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}, ip, u, gopacket.Payload(payload))
}

func udp6(t *testing.T, payload []byte) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolUDP, SrcIP: a6.AsSlice(), DstIP: b6.AsSlice()}
	u := &layers.UDP{SrcPort: 53, DstPort: 40000}
	_ = u.SetNetworkLayerForChecksum(ip)
	return build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6}, ip, u, gopacket.Payload(payload))
}

func icmp6Error(t *testing.T, quoted []byte) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: a6.AsSlice(), DstIP: b6.AsSlice()}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(1, 4)}
	_ = ic.SetNetworkLayerForChecksum(ip)
	return build(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6}, ip, ic,
		gopacket.Payload(append([]byte{0, 0, 0, 0}, quoted...)))
}

func TestCheckAccepts(t *testing.T) {
	quote := udp6(t, []byte("x"))[EthLen:]
	copy(quote[8:24], b6.AsSlice()) // from the guest
	for name, f := range map[string][]byte{
		"udp4":       udp4(t, []byte("hello")),
		"udp4-empty": udp4(t, nil),
		"udp6":       udp6(t, bytes.Repeat([]byte{0xff}, 1000)),
		"icmp6":      icmp6Error(t, quote),
	} {
		if _, err := Check(f); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	fr, err := Check(udp4(t, []byte("hello")))
	if err != nil || fr.SrcIP != a4 || fr.DstIP != b4 || fr.SrcPort != 53 || fr.DstPort != 40000 || string(fr.Payload) != "hello" {
		t.Errorf("decoded %+v, %v", fr, err)
	}
}

func TestCheckRejects(t *testing.T) {
	mut := func(b []byte, f func([]byte)) []byte { c := bytes.Clone(b); f(c); return c }
	good4, good6 := udp4(t, []byte("hello")), udp6(t, []byte("hello"))
	for name, f := range map[string][]byte{
		"short":          good4[:10],
		"ip4-checksum":   mut(good4, func(b []byte) { b[EthLen+10] ^= 1 }),
		"udp4-checksum":  mut(good4, func(b []byte) { b[len(b)-1] ^= 1 }),
		"udp6-checksum":  mut(good6, func(b []byte) { b[len(b)-1] ^= 1 }),
		"udp6-zero-sum":  mut(good6, func(b []byte) { b[EthLen+40+6], b[EthLen+40+7] = 0, 0 }),
		"padded":         append(bytes.Clone(good4), 0, 0),
		"ip4-options":    mut(good4, func(b []byte) { b[EthLen] = 0x46 }),
		"multicast-src":  mut(good4, func(b []byte) { b[6] = 1 }),
		"ttl0":           mut(good4, func(b []byte) { b[EthLen+8] = 0 }),
		"udp-len":        mut(good6, func(b []byte) { b[EthLen+40+5]-- }),
		"ethertype":      mut(good4, func(b []byte) { b[12], b[13] = 0x88, 0xcc }),
		"icmp6-no-quote": icmp6Error(t, []byte{0x60, 0, 0, 0}),
	} {
		if _, err := Check(f); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
