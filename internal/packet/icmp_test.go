package packet

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// TestICMPErrors builds port unreachable errors quoting a datagram and
// checks them with gopacket: types, checksums, and the quoted headers.
func TestICMPErrors(t *testing.T) {
	for _, c := range []struct {
		src, dst  netip.AddrPort
		from      netip.Addr
		typ, code uint8
		size      int
	}{
		{netip.MustParseAddrPort("192.0.2.2:40000"), netip.MustParseAddrPort("192.0.2.1:5000"), netip.MustParseAddr("192.0.2.1"), 3, 3, 100},
		{netip.MustParseAddrPort("192.0.2.2:40000"), netip.MustParseAddrPort("192.0.2.1:5000"), netip.MustParseAddr("192.0.2.1"), 3, 3, 2000},
		{netip.MustParseAddrPort("[2001:db8::2]:40000"), netip.MustParseAddrPort("[2001:db8::1]:5000"), netip.MustParseAddr("2001:db8::1"), 1, 4, 100},
		{netip.MustParseAddrPort("[2001:db8::2]:40000"), netip.MustParseAddrPort("[2001:db8::1]:5000"), netip.MustParseAddr("2001:db8::1"), 1, 4, 3000},
	} {
		payload := bytes.Repeat([]byte{0x5a}, c.size)
		var quote [MaxICMP6Error]byte
		q := QuoteUDP(quote[:], c.src, c.dst, payload)
		buf := make([]byte, EthLen+MaxICMP6Error)
		var n int
		if c.src.Addr().Is4() {
			n = PutICMP4Error(buf, c.from, c.src.Addr(), c.typ, c.code, 0, q)
			PutEthernet(buf, MAC{2}, MAC{4}, EtherTypeIPv4)
		} else {
			n = PutICMP6Error(buf, c.from, c.src.Addr(), c.typ, c.code, 0, q)
			PutEthernet(buf, MAC{2}, MAC{4}, EtherTypeIPv6)
		}
		frame := buf[:EthLen+n]
		pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
		var inner gopacket.Packet
		if c.src.Addr().Is4() {
			if n > MaxICMP4Error {
				t.Fatalf("ICMP error of %d bytes", n)
			}
			ip := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			icmp := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if icmp.TypeCode != layers.CreateICMPv4TypeCode(c.typ, c.code) {
				t.Errorf("type %v", icmp.TypeCode)
			}
			// Checksums: re-encode and compare.
			ic, hc := icmp.Checksum, ip.Checksum
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ip, icmp, gopacket.Payload(icmp.Payload)); err != nil {
				t.Fatal(err)
			}
			if icmp.Checksum != ic || ip.Checksum != hc {
				t.Errorf("checksums %04x %04x, want %04x %04x", ic, hc, icmp.Checksum, ip.Checksum)
			}
			inner = gopacket.NewPacket(icmp.Payload, layers.LayerTypeIPv4, gopacket.Default)
		} else {
			if n > MaxICMP6Error {
				t.Fatalf("ICMPv6 error of %d bytes", n)
			}
			ip := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			icmp := pkt.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
			if icmp.TypeCode != layers.CreateICMPv6TypeCode(c.typ, c.code) {
				t.Errorf("type %v", icmp.TypeCode)
			}
			ic := icmp.Checksum
			_ = icmp.SetNetworkLayerForChecksum(ip)
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, icmp, gopacket.Payload(icmp.Payload)); err != nil {
				t.Fatal(err)
			}
			if icmp.Checksum != ic {
				t.Errorf("ICMPv6 checksum %04x, want %04x", ic, icmp.Checksum)
			}
			// Skip the 4 unused bytes gopacket leaves in the payload.
			inner = gopacket.NewPacket(icmp.Payload[4:], layers.LayerTypeIPv6, gopacket.Lazy)
		}
		if ip4, ok := inner.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
			want := ip4.Checksum
			c := *ip4
			if err := c.SerializeTo(gopacket.NewSerializeBuffer(), gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
				t.Fatal(err)
			}
			if c.Checksum != want || int(ip4.Length) != IPv4Len+UDPLen+len(payload) {
				t.Errorf("quoted IPv4 header: checksum %04x (want %04x), length %d", want, c.Checksum, ip4.Length)
			}
		}
		// The quoted datagram names the guest's socket.
		udp, ok := inner.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			t.Fatalf("quoted datagram has no UDP header: %v", inner)
		}
		if uint16(udp.SrcPort) != c.src.Port() || uint16(udp.DstPort) != c.dst.Port() || int(udp.Length) != UDPLen+c.size {
			t.Errorf("quoted UDP %d -> %d len %d", udp.SrcPort, udp.DstPort, udp.Length)
		}
	}
}
