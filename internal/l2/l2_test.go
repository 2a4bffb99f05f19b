package l2

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/packet"
)

var (
	guestMAC = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 1}
	ourMAC   = packet.MAC{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
)

func responder() *Responder {
	return &Responder{
		OurMAC:  ourMAC,
		Guest:   fwd.NewGuest(netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")),
		Prefix6: netip.MustParsePrefix("2001:db8::/64"),
		MTU:     65520,
	}
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func handle(t *testing.T, r *Responder, frame []byte) gopacket.Packet {
	t.Helper()
	var p packet.Parsed
	if d := packet.Parse(frame, &p); d != packet.DropNone {
		t.Fatalf("parse: %v", d)
	}
	out := make([]byte, 1536)
	n := r.Handle(&p, out)
	if n == 0 {
		return nil
	}
	pkt := gopacket.NewPacket(out[:n], layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("reply does not decode: %v", el.Error())
	}
	return pkt
}

func arpRequest(t *testing.T, sender, target string) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: guestMAC, DstMAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: guestMAC, SourceProtAddress: netip.MustParseAddr(sender).AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: netip.MustParseAddr(target).AsSlice()})
}

func TestARP(t *testing.T) {
	r := responder()
	pkt := handle(t, r, arpRequest(t, "192.0.2.2", "192.0.2.1"))
	if pkt == nil {
		t.Fatal("no reply to ARP request for the gateway")
	}
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	arp := pkt.Layer(layers.LayerTypeARP).(*layers.ARP)
	if !bytes.Equal(eth.DstMAC, guestMAC) || !bytes.Equal(eth.SrcMAC, ourMAC[:]) {
		t.Errorf("ethernet %v -> %v", eth.SrcMAC, eth.DstMAC)
	}
	if arp.Operation != layers.ARPReply || !bytes.Equal(arp.SourceHwAddress, ourMAC[:]) ||
		!net.IP(arp.SourceProtAddress).Equal(net.ParseIP("192.0.2.1")) ||
		!bytes.Equal(arp.DstHwAddress, guestMAC) || !net.IP(arp.DstProtAddress).Equal(net.ParseIP("192.0.2.2")) {
		t.Errorf("bad reply %+v", arp)
	}
	if handle(t, r, arpRequest(t, "192.0.2.2", "192.0.2.2")) != nil {
		t.Error("answered a gratuitous ARP")
	}
	if handle(t, r, arpRequest(t, "0.0.0.0", "192.0.2.2")) != nil {
		t.Error("answered a probe for the guest's own address")
	}
}

func icmp6Frame(t *testing.T, src, dst string, hop uint8, msg gopacket.SerializableLayer, typ uint8) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: hop, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, &layers.Ethernet{SrcMAC: guestMAC, DstMAC: net.HardwareAddr{0x33, 0x33, 0xff, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}, ip, icmp, msg)
}

// checksumOK re-encodes the decoded ICMPv6 message with gopacket and
// compares checksums.
func checksumOK(t *testing.T, pkt gopacket.Packet) bool {
	ip := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	icmp := pkt.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	got := icmp.Checksum
	c := *icmp
	if err := c.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, &c, gopacket.Payload(icmp.Payload)); err != nil {
		t.Fatal(err)
	}
	return c.Checksum == got
}

func TestNeighborSolicitation(t *testing.T) {
	r := responder()
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: net.ParseIP("2001:db8::1"),
		Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: guestMAC}}}
	pkt := handle(t, r, icmp6Frame(t, "2001:db8::2", "ff02::1:ff00:1", 255, ns, layers.ICMPv6TypeNeighborSolicitation))
	if pkt == nil {
		t.Fatal("no neighbour advertisement")
	}
	na, ok := pkt.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
	if !ok {
		t.Fatalf("not an NA: %v", pkt)
	}
	ip := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if ip.HopLimit != 255 || !ip.DstIP.Equal(net.ParseIP("2001:db8::2")) || !checksumOK(t, pkt) {
		t.Errorf("bad IPv6 header or checksum: %+v", ip)
	}
	if !na.TargetAddress.Equal(net.ParseIP("2001:db8::1")) || !na.Solicited() || !na.Override() || !na.Router() {
		t.Errorf("bad NA %+v", na)
	}
	if len(na.Options) != 1 || na.Options[0].Type != layers.ICMPv6OptTargetAddress || !bytes.Equal(na.Options[0].Data, ourMAC[:]) {
		t.Errorf("bad options %+v", na.Options)
	}
	// Duplicate address detection, the guest's own address, and a hop
	// limit below 255 get no answer.
	if handle(t, r, icmp6Frame(t, "::", "ff02::1:ff00:1", 255, ns, layers.ICMPv6TypeNeighborSolicitation)) != nil {
		t.Error("answered DAD")
	}
	own := &layers.ICMPv6NeighborSolicitation{TargetAddress: net.ParseIP("2001:db8::2")}
	if handle(t, r, icmp6Frame(t, "fe80::1", "ff02::1:ff00:2", 255, own, layers.ICMPv6TypeNeighborSolicitation)) != nil {
		t.Error("claimed the guest's own address")
	}
	if handle(t, r, icmp6Frame(t, "2001:db8::2", "ff02::1:ff00:1", 64, ns, layers.ICMPv6TypeNeighborSolicitation)) != nil {
		t.Error("answered NS with hop limit 64")
	}
}

func TestRouterAdvertisement(t *testing.T) {
	r := responder()
	rs := &layers.ICMPv6RouterSolicitation{}
	pkt := handle(t, r, icmp6Frame(t, "fe80::aa:1", "ff02::2", 255, rs, layers.ICMPv6TypeRouterSolicitation))
	if pkt == nil {
		t.Fatal("no RA")
	}
	ra, ok := pkt.Layer(layers.LayerTypeICMPv6RouterAdvertisement).(*layers.ICMPv6RouterAdvertisement)
	if !ok {
		t.Fatalf("not an RA: %v", pkt)
	}
	ip := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if !ip.SrcIP.IsLinkLocalUnicast() || !ip.SrcIP.Equal(r.LinkLocal().AsSlice()) || !checksumOK(t, pkt) {
		t.Errorf("bad source or checksum: %v", ip.SrcIP)
	}
	if ra.RouterLifetime == 0 {
		t.Error("zero router lifetime")
	}
	var sawPrefix, sawMTU bool
	for _, o := range ra.Options {
		switch o.Type {
		case layers.ICMPv6OptPrefixInfo:
			sawPrefix = o.Data[0] == 64 && o.Data[1]&0xc0 == 0xc0 && net.IP(o.Data[14:30]).Equal(net.ParseIP("2001:db8::"))
		case layers.ICMPv6OptMTU:
			sawMTU = o.Data[2] == 0 && o.Data[3] == 0 && o.Data[4] == 0xff && o.Data[5] == 0xf0
		}
	}
	if !sawPrefix || !sawMTU {
		t.Errorf("options %+v", ra.Options)
	}
	if ra.RouterLifetime != 65535 || ra.HopLimit != 255 || ra.Flags&0x80 != 0 {
		t.Errorf("lifetime %d hop limit %d flags %02x", ra.RouterLifetime, ra.HopLimit, ra.Flags)
	}

	// With resolvers, a search list and DHCPv6: RDNSS, DNSSL, M flag.
	r.DNS6 = []netip.Addr{netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("2001:db8::54")}
	r.Search = []string{"example.org", "a.b.example"}
	r.Managed = true
	pkt = handle(t, r, icmp6Frame(t, "fe80::aa:1", "ff02::2", 255, rs, layers.ICMPv6TypeRouterSolicitation))
	ra = pkt.Layer(layers.LayerTypeICMPv6RouterAdvertisement).(*layers.ICMPv6RouterAdvertisement)
	if !checksumOK(t, pkt) || ra.Flags&0x80 == 0 {
		t.Errorf("checksum or M flag wrong: flags %02x", ra.Flags)
	}
	var rdnss, dnssl []byte
	for _, o := range ra.Options {
		switch o.Type {
		case 25:
			rdnss = o.Data
		case 31:
			dnssl = o.Data
		}
	}
	if len(rdnss) != 6+32 || !net.IP(rdnss[6:22]).Equal(net.ParseIP("2001:db8::53")) || !net.IP(rdnss[22:38]).Equal(net.ParseIP("2001:db8::54")) {
		t.Errorf("RDNSS % x", rdnss)
	}
	wantDNSSL := "\x07example\x03org\x00\x01a\x01b\x07example\x00"
	if len(dnssl) < 6 || (len(dnssl)+2)%8 != 0 || !strings.HasPrefix(string(dnssl[6:]), wantDNSSL) || strings.Trim(string(dnssl[6+len(wantDNSSL):]), "\x00") != "" {
		t.Errorf("DNSSL %q", dnssl)
	}
	r.NoRA = true
	if handle(t, r, icmp6Frame(t, "fe80::aa:1", "ff02::2", 255, rs, layers.ICMPv6TypeRouterSolicitation)) != nil {
		t.Error("RA sent with NoRA")
	}
}

func TestHandleAllocs(t *testing.T) {
	r := responder()
	f := arpRequest(t, "192.0.2.2", "192.0.2.1")
	out := make([]byte, 1536)
	var p packet.Parsed
	if a := testing.AllocsPerRun(100, func() {
		packet.Parse(f, &p)
		r.Handle(&p, out)
	}); a != 0 {
		t.Fatalf("%v allocs", a)
	}
}

// TestRouterAdvertisementBounds checks that long resolver and search lists
// are cut to fit instead of overrunning the reply buffer.
func TestRouterAdvertisementBounds(t *testing.T) {
	r := responder()
	for i := 0; i < 20; i++ {
		r.DNS6 = append(r.DNS6, netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)))
		r.Search = append(r.Search, strings.Repeat("d", 60)+"."+strings.Repeat("e", 60)+".example")
	}
	pkt := handle(t, r, icmp6Frame(t, "fe80::aa:1", "ff02::2", 255, &layers.ICMPv6RouterSolicitation{}, layers.ICMPv6TypeRouterSolicitation))
	if pkt == nil || !checksumOK(t, pkt) {
		t.Fatal("no valid RA")
	}
}
