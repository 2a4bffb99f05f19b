package l2

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// outLen is the reply buffer size Handle documents as enough; the fuzz
// targets give it exactly that, so an overrun panics.
const outLen = 1536

// build serializes layers with gopacket, computing lengths and checksums.
func build(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	for _, l := range ls {
		if ic, ok := l.(*layers.ICMPv6); ok {
			_ = ic.SetNetworkLayerForChecksum(ls[1].(gopacket.NetworkLayer))
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// ndp builds an NDP message from the guest with gopacket.
func ndp(tb testing.TB, src, dst string, hop uint8, typ uint8, msg gopacket.SerializableLayer) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: hop, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	return build(tb, &layers.Ethernet{SrcMAC: guestMAC, DstMAC: net.HardwareAddr{0x33, 0x33, 0xff, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6},
		ip, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}, msg)
}

func arpFrame(tb testing.TB, op uint16, sender, target string) []byte {
	return build(tb,
		&layers.Ethernet{SrcMAC: guestMAC, DstMAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: guestMAC, SourceProtAddress: netip.MustParseAddr(sender).AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: netip.MustParseAddr(target).AsSlice()})
}

// fuzzResponder is the responder of the fuzz targets, with every option
// that lengthens a router advertisement.
func fuzzResponder() *Responder {
	r := responder()
	r.MTU = 1500
	r.DNS6 = []netip.Addr{netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("2001:db8::54")}
	r.Search = []string{"example.com", "sub.example.org"}
	r.Managed = true
	return r
}

// FuzzHandle feeds arbitrary frames to the ARP and NDP responder. A reply
// must fit the documented buffer, be well formed to gopacket (checksums,
// lengths, NDP options, hop limit 255), go back to the asker from our MAC
// address, and answer what was asked: never claiming the guest's own
// addresses, nor answering a solicitation that crossed a router. The
// frame must be left as it was, and the same frame must get the same
// answer.
func FuzzHandle(f *testing.F) {
	ns := func(target string) *layers.ICMPv6NeighborSolicitation {
		return &layers.ICMPv6NeighborSolicitation{TargetAddress: net.ParseIP(target),
			Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: guestMAC}}}
	}
	f.Add(arpFrame(f, 1, "192.0.2.2", "192.0.2.1"))
	f.Add(arpFrame(f, 1, "192.0.2.2", "192.0.2.2"))
	f.Add(arpFrame(f, 1, "0.0.0.0", "192.0.2.2"))
	f.Add(arpFrame(f, 2, "192.0.2.2", "192.0.2.1"))
	f.Add(ndp(f, "2001:db8::2", "ff02::1:ff00:1", 255, layers.ICMPv6TypeNeighborSolicitation, ns("2001:db8::1")))
	f.Add(ndp(f, "fe80::5054:ff:fe12:3456", "ff02::1:ff00:1", 255, layers.ICMPv6TypeNeighborSolicitation, ns("fe80::1")))
	f.Add(ndp(f, "::", "ff02::1:ff00:2", 255, layers.ICMPv6TypeNeighborSolicitation, ns("2001:db8::2")))
	f.Add(ndp(f, "2001:db8::2", "ff02::1:ff00:1", 64, layers.ICMPv6TypeNeighborSolicitation, ns("2001:db8::1")))
	f.Add(ndp(f, "fe80::5054:ff:fe12:3456", "ff02::2", 255, layers.ICMPv6TypeRouterSolicitation,
		&layers.ICMPv6RouterSolicitation{Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: guestMAC}}}))
	f.Add(ndp(f, "::", "ff02::2", 255, layers.ICMPv6TypeRouterSolicitation, &layers.ICMPv6RouterSolicitation{}))
	f.Add(ndp(f, "2001:db8::2", "2001:db8::1", 255, layers.ICMPv6TypeNeighborAdvertisement,
		&layers.ICMPv6NeighborAdvertisement{TargetAddress: net.ParseIP("2001:db8::2"), Flags: 0x20}))
	r := fuzzResponder()
	out, again := make([]byte, outLen), make([]byte, outLen)
	f.Fuzz(func(t *testing.T, frame []byte) {
		var p packet.Parsed
		if packet.Parse(frame, &p) != packet.DropNone {
			return
		}
		orig := bytes.Clone(frame)
		n := r.Handle(&p, out)
		if !bytes.Equal(frame, orig) {
			t.Fatal("Handle modified the frame")
		}
		if m := r.Handle(&p, again); m != n || !bytes.Equal(out[:n], again[:m]) {
			t.Fatal("the same frame got another answer")
		}
		if n == 0 {
			return
		}
		if n > outLen {
			t.Fatalf("reply of %d bytes", n)
		}
		w, err := wirecheck.Check(out[:n])
		if err != nil {
			t.Fatalf("reply to %x: %v", frame, err)
		}
		if !bytes.Equal(w.Src, r.OurMAC[:]) || !bytes.Equal(w.Dst, p.Src[:]) {
			t.Fatalf("reply from %v to %v, asked by %v", w.Src, w.Dst, p.Src)
		}
		switch {
		case w.ARP != nil:
			checkARPReply(t, r, p.L3, w.ARP)
		case w.Proto == layers.IPProtocolICMPv6:
			checkNDPReply(t, r, &p, w)
		default:
			t.Fatalf("reply of EtherType %v protocol %v", w.EtherType, w.Proto)
		}
	})
}

// checkARPReply checks an ARP reply against the request in req.
func checkARPReply(t *testing.T, r *Responder, req []byte, a *layers.ARP) {
	t.Helper()
	sender, target := req[14:18], req[24:28]
	if binary.BigEndian.Uint16(req[6:8]) != 1 {
		t.Fatal("answered an ARP message that is not a request")
	}
	if a.Operation != layers.ARPReply || !bytes.Equal(a.SourceHwAddress, r.OurMAC[:]) ||
		!bytes.Equal(a.SourceProtAddress, target) || !bytes.Equal(a.DstHwAddress, req[8:14]) || !bytes.Equal(a.DstProtAddress, sender) {
		t.Fatalf("ARP reply %+v to request %x", a, req)
	}
	if a := netip.AddrFrom4([4]byte(target)); a == r.Guest.Addr4() || bytes.Equal(sender, target) || !a.IsGlobalUnicast() && !a.IsLinkLocalUnicast() {
		t.Fatalf("ARP reply claims %v, the guest's own or not a unicast address", a)
	}
}

// checkNDPReply checks a neighbour or router advertisement against the
// solicitation p.
func checkNDPReply(t *testing.T, r *Responder, p *packet.Parsed, w *wirecheck.Frame) {
	t.Helper()
	if p.HopLimit != 255 || len(p.L4) < 8 {
		t.Fatalf("answered NDP with hop limit %d", p.HopLimit)
	}
	switch w.ICMPType {
	case icmp6NeighborAdvert:
		target := netip.AddrFrom16([16]byte(p.L4[8:24]))
		if p.L4[0] != icmp6NeighborSolicit || p.Src4.IsUnspecified() {
			t.Fatalf("neighbour advertisement for ICMPv6 type %d from %v", p.L4[0], p.Src4)
		}
		if target == r.Guest.Addr6() || target == p.Src4 || !target.IsGlobalUnicast() && !target.IsLinkLocalUnicast() {
			t.Fatalf("neighbour advertisement claims %v", target)
		}
		if w.SrcIP != target || w.DstIP != p.Src4 || !bytes.Equal(w.ICMPBody[4:20], p.L4[8:24]) {
			t.Fatalf("neighbour advertisement %v -> %v for %v asked by %v", w.SrcIP, w.DstIP, target, p.Src4)
		}
	case icmp6RouterAdvert:
		if p.L4[0] != icmp6RouterSolicit || r.NoRA {
			t.Fatalf("router advertisement for ICMPv6 type %d", p.L4[0])
		}
		want := p.Src4
		if want.IsUnspecified() {
			want = allNodes
		}
		if w.SrcIP != r.LinkLocal() || w.DstIP != want {
			t.Fatalf("router advertisement %v -> %v", w.SrcIP, w.DstIP)
		}
	default:
		t.Fatalf("ICMPv6 type %d in reply", w.ICMPType)
	}
}

// FuzzRouterAdvert builds router advertisements from arbitrary resolver
// and search lists (the user's and the host's resolv.conf) and MTUs: the
// advertisement must fit the buffer, be well formed to gopacket, and
// carry the prefix, the MTU, the first resolvers and, in order, the
// search domains that fit, as gopacket decodes them.
func FuzzRouterAdvert(f *testing.F) {
	f.Add("example.com sub.example.org", []byte(netip.MustParseAddr("2001:db8::53").AsSlice()), uint16(1500), true)
	f.Add("", []byte{}, uint16(0), false)
	f.Add(strings.Repeat(strings.Repeat("d", 63)+"."+strings.Repeat("e", 64)+"..x. ", 12), bytes.Repeat([]byte{0x20, 1}, 200), uint16(65535), false)
	f.Add(". .. a.b.c.", bytes.Repeat([]byte{0xfe, 0x80}, 8), uint16(1280), true)
	rs := ndp(f, "fe80::5054:ff:fe12:3456", "ff02::2", 255, layers.ICMPv6TypeRouterSolicitation, &layers.ICMPv6RouterSolicitation{})
	var p packet.Parsed
	if packet.Parse(rs, &p) != packet.DropNone {
		f.Fatal("router solicitation does not parse")
	}
	out := make([]byte, outLen)
	f.Fuzz(func(t *testing.T, search string, dns []byte, mtu uint16, managed bool) {
		r := responder()
		r.MTU, r.Managed, r.Search = int(mtu), managed, strings.Fields(search)
		for i := 0; i+16 <= len(dns); i += 16 {
			r.DNS6 = append(r.DNS6, netip.AddrFrom16([16]byte(dns[i:])))
		}
		n := r.Handle(&p, out)
		if n == 0 || n > outLen {
			t.Fatalf("router advertisement of %d bytes", n)
		}
		w, err := wirecheck.Check(out[:n])
		if err != nil {
			t.Fatal(err)
		}
		pkt := gopacket.NewPacket(out[:n], layers.LayerTypeEthernet, gopacket.Default)
		ra, ok := pkt.Layer(layers.LayerTypeICMPv6RouterAdvertisement).(*layers.ICMPv6RouterAdvertisement)
		if !ok || w.ICMPType != icmp6RouterAdvert {
			t.Fatalf("no router advertisement: %v", pkt)
		}
		if ra.ManagedAddressConfig() != managed {
			t.Errorf("M flag %v", ra.ManagedAddressConfig())
		}
		var gotDNS []netip.Addr
		var gotSearch []string
		gotMTU, prefixes := 0, 0
		for _, o := range ra.Options {
			switch o.Type {
			case layers.ICMPv6OptPrefixInfo:
				prefixes++
				if pfx := netip.PrefixFrom(netip.AddrFrom16([16]byte(o.Data[14:30])), int(o.Data[0])); pfx != r.Prefix6 {
					t.Errorf("prefix %v", pfx)
				}
			case layers.ICMPv6OptMTU:
				gotMTU = int(binary.BigEndian.Uint32(o.Data[2:6]))
			case ndpOptRDNSS:
				for a := o.Data[6:]; len(a) >= 16; a = a[16:] {
					gotDNS = append(gotDNS, netip.AddrFrom16([16]byte(a)))
				}
			case ndpOptDNSSL:
				gotSearch = dnsNames(t, o.Data[6:])
			}
		}
		if prefixes != 1 || gotMTU != r.MTU {
			t.Errorf("%d prefixes, MTU %d", prefixes, gotMTU)
		}
		if want := r.DNS6[:min(len(r.DNS6), maxRDNSS)]; !equalAddrs(gotDNS, want) {
			t.Errorf("resolvers %v, want %v", gotDNS, want)
		}
		if got, want := trimEmpty(gotSearch), trimEmpty(fitSearch(r.Search)); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("search list %q, want %q", got, want)
		}
	})
}

// fitSearch is the search list a DNSSL option carries: domains in order
// while they fit in maxDNSSL bytes, with empty labels and labels over 63
// bytes left out.
func fitSearch(domains []string) []string {
	var out []string
	l := 8
	for _, d := range domains {
		if l+len(d)+2 > maxDNSSL {
			break
		}
		var labels []string
		for _, lb := range strings.Split(d, ".") {
			if lb != "" && len(lb) <= 63 {
				labels = append(labels, lb)
				l += 1 + len(lb)
			}
		}
		l++
		out = append(out, strings.Join(labels, "."))
	}
	return out
}

// dnsNames decodes the uncompressed names of a DNSSL option; the padding
// after the last name is zeros, which are not names.
func dnsNames(t *testing.T, b []byte) []string {
	t.Helper()
	var names []string
	for len(b) > 0 {
		if allZero(b) && len(names) > 0 {
			break // padding
		}
		var labels []string
		for {
			if len(b) == 0 {
				t.Fatal("DNSSL name runs off the option")
			}
			n := int(b[0])
			b = b[1:]
			if n == 0 {
				break
			}
			if n > 63 || n > len(b) {
				t.Fatalf("DNSSL label of %d bytes", n)
			}
			labels = append(labels, string(b[:n]))
			b = b[n:]
		}
		names = append(names, strings.Join(labels, "."))
	}
	return names
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// trimEmpty drops trailing empty names (root), which a DNSSL option's
// zero padding makes indistinguishable from no name.
func trimEmpty(names []string) []string {
	for len(names) > 0 && names[len(names)-1] == "" {
		names = names[:len(names)-1]
	}
	return names
}

func equalAddrs(a, b []netip.Addr) bool {
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
