// Package l2 answers the link-layer questions a guest asks before it can
// send any IP traffic: ARP requests and IPv6 neighbour and router
// solicitations.
//
// # Theory of operation
//
// gopasst is the only other node on the guest's link, and it stands for
// every address the guest might want to reach: the gateway and, since the
// guest shares the host's prefix, any neighbour. So ARP requests and
// neighbour solicitations for any address but the guest's own are answered
// with our MAC address; requests for the guest's own address (duplicate
// address detection, gratuitous ARP) are left unanswered so the guest keeps
// its address. Router solicitations are answered, unless disabled, with a
// router advertisement carrying the guest's /64 prefix for SLAAC and the
// MTU, sent from our link-local address.
//
// [Responder.Handle] takes a parsed frame and writes the reply into a
// caller's buffer; it allocates nothing.
package l2

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/packet"
)

// ICMPv6 types used by NDP.
const (
	icmp6RouterSolicit    = 133
	icmp6RouterAdvert     = 134
	icmp6NeighborSolicit  = 135
	icmp6NeighborAdvert   = 136
	ndpOptSourceLinkAddr  = 1
	ndpOptTargetLinkAddr  = 2
	ndpOptPrefixInfo      = 3
	ndpOptMTU             = 5
	ndpOptRDNSS           = 25
	ndpOptDNSSL           = 31
	arpLen                = 28
	raRouterLifetime      = 65535 // seconds, the most RFC 8319 allows
	maxRDNSS              = 8     // resolvers advertised at most
	maxDNSSL              = 1024  // bytes of DNSSL option at most
	infiniteLifetime      = 0xffffffff
	naFlagsRouterSolOverr = 0xe0000000
)

var allNodes = netip.MustParseAddr("ff02::1")

// Responder answers ARP and NDP on behalf of the rest of the network.
type Responder struct {
	// OurMAC is the MAC address replies come from.
	OurMAC packet.MAC
	// Guest tells the guest's own addresses, which are never claimed.
	Guest *fwd.Guest
	// Prefix6 is advertised in router advertisements; invalid disables them.
	Prefix6 netip.Prefix
	// MTU is advertised in router advertisements when non-zero.
	MTU int
	// DNS6 and Search, when set, are advertised as RDNSS and DNSSL options
	// (RFC 8106).
	DNS6   []netip.Addr
	Search []string
	// Managed sets the M flag: addresses are also available by DHCPv6.
	Managed bool
	// NoNDP ignores all NDP; NoRA ignores router solicitations.
	NoNDP, NoRA bool
}

// LinkLocal is our IPv6 link-local address, derived from our MAC (EUI-64).
func (r *Responder) LinkLocal() netip.Addr {
	m := r.OurMAC
	return netip.AddrFrom16([16]byte{0xfe, 0x80, 8: m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]})
}

// Handle answers the frame p if it is a question for us, writing the reply
// frame into out (which must hold at least 1536 bytes) and returning its
// length; it returns 0 when there is nothing to answer. A frame from a
// zero or multicast MAC address, which no station has, gets no answer:
// the reply would go to an address that is not one.
func (r *Responder) Handle(p *packet.Parsed, out []byte) int {
	if p.Src.IsZero() || p.Src.IsMulticast() {
		return 0
	}
	switch {
	case p.EtherType == packet.EtherTypeARP:
		return r.arp(p, out)
	case p.EtherType == packet.EtherTypeIPv6 && p.Proto == packet.ProtoICMPv6 && !r.NoNDP:
		return r.ndp(p, out)
	}
	return 0
}

func (r *Responder) arp(p *packet.Parsed, out []byte) int {
	a := p.L3
	if len(a) < arpLen {
		return 0
	}
	// Ethernet hardware, IPv4 protocol, request.
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != packet.EtherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:8]) != 1 {
		return 0
	}
	sip, tip := netip.AddrFrom4([4]byte(a[14:18])), netip.AddrFrom4([4]byte(a[24:28]))
	if sip == tip || tip == r.Guest.Addr4() {
		return 0 // announcement or probe of the guest's own address
	}
	if !claimable(tip) {
		return 0
	}
	packet.PutEthernet(out, p.Src, r.OurMAC, packet.EtherTypeARP)
	b := out[packet.EthLen : packet.EthLen+arpLen]
	copy(b[0:6], a[0:6])
	binary.BigEndian.PutUint16(b[6:8], 2) // reply
	copy(b[8:14], r.OurMAC[:])
	copy(b[14:18], a[24:28])
	copy(b[18:24], a[8:14])
	copy(b[24:28], a[14:18])
	return packet.EthLen + arpLen
}

func (r *Responder) ndp(p *packet.Parsed, out []byte) int {
	m := p.L4
	if len(m) < 8 || p.HopLimit != 255 {
		return 0 // RFC 4861: NDP that crossed a router is invalid
	}
	switch m[0] {
	case icmp6NeighborSolicit:
		if len(m) < 24 || p.Src4.IsUnspecified() {
			return 0 // duplicate address detection: stay silent
		}
		target := netip.AddrFrom16([16]byte(m[8:24]))
		if target == p.Src4 || target == r.Guest.Addr6() || !claimable(target) {
			return 0
		}
		body := out[packet.EthLen+packet.IPv6Len:]
		body[0], body[1] = icmp6NeighborAdvert, 0
		binary.BigEndian.PutUint32(body[4:8], naFlagsRouterSolOverr)
		copy(body[8:24], m[8:24])
		body[24], body[25] = ndpOptTargetLinkAddr, 1
		copy(body[26:32], r.OurMAC[:])
		return r.icmp6(out, p.Src, target, p.Src4, 32)
	case icmp6RouterSolicit:
		if r.NoRA || !r.Prefix6.IsValid() {
			return 0
		}
		dst := p.Src4
		if dst.IsUnspecified() {
			dst = allNodes
		}
		n := r.routerAdvert(out[packet.EthLen+packet.IPv6Len:])
		return r.icmp6(out, p.Src, r.LinkLocal(), dst, n)
	}
	return 0
}

// claimable reports whether a is an address a neighbour can have, and so
// one we answer for: unicast, global or link-local; not unspecified,
// loopback, multicast or broadcast.
func claimable(a netip.Addr) bool {
	return a.IsGlobalUnicast() || a.IsLinkLocalUnicast()
}

// routerAdvert writes the body of a router advertisement into body and
// returns its length.
func (r *Responder) routerAdvert(body []byte) int {
	clear(body[:16])
	body[0] = icmp6RouterAdvert
	body[4] = 255 // current hop limit, as the reference
	if r.Managed {
		body[5] = 0x80
	}
	binary.BigEndian.PutUint16(body[6:8], raRouterLifetime)
	o := body[16:]
	o[0], o[1], o[2], o[3] = ndpOptPrefixInfo, 4, 64, 0xc0 // on-link, autonomous
	binary.BigEndian.PutUint32(o[4:8], infiniteLifetime)
	binary.BigEndian.PutUint32(o[8:12], infiniteLifetime)
	clear(o[12:16])
	pfx := r.Prefix6.Masked().Addr().As16()
	copy(o[16:32], pfx[:])
	n := 16 + 32
	if r.MTU > 0 {
		o = body[n:]
		o[0], o[1], o[2], o[3] = ndpOptMTU, 1, 0, 0
		binary.BigEndian.PutUint32(o[4:8], uint32(r.MTU))
		n += 8
	}
	if dns := r.DNS6[:min(len(r.DNS6), maxRDNSS)]; len(dns) > 0 {
		o = body[n:]
		o[0], o[1], o[2], o[3] = ndpOptRDNSS, byte(1+2*len(dns)), 0, 0
		binary.BigEndian.PutUint32(o[4:8], infiniteLifetime)
		for i, a := range dns {
			a16 := a.As16()
			copy(o[8+16*i:], a16[:])
		}
		n += 8 + 16*len(dns)
	}
	if len(r.Search) > 0 {
		o = body[n:]
		o[0], o[2], o[3] = ndpOptDNSSL, 0, 0
		binary.BigEndian.PutUint32(o[4:8], infiniteLifetime)
		l := 8
		for _, d := range r.Search {
			if l+len(d)+2 > maxDNSSL {
				break // what does not fit is left out
			}
			l += putDomain(o[l:], d)
		}
		for l%8 != 0 {
			o[l] = 0
			l++
		}
		o[1] = byte(l / 8)
		n += l
	}
	o = body[n:]
	o[0], o[1] = ndpOptSourceLinkAddr, 1
	copy(o[2:8], r.OurMAC[:])
	return n + 8
}

// putDomain writes d in DNS wire format (length-prefixed labels, then a
// zero) and returns the bytes written. Empty labels are skipped.
func putDomain(b []byte, d string) int {
	n := 0
	for len(d) > 0 {
		label := d
		if i := indexDot(d); i >= 0 {
			label, d = d[:i], d[i+1:]
		} else {
			d = ""
		}
		if len(label) == 0 || len(label) > 63 {
			continue
		}
		b[n] = byte(len(label))
		copy(b[n+1:], label)
		n += 1 + len(label)
	}
	b[n] = 0
	return n + 1
}

func indexDot(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			return i
		}
	}
	return -1
}

// icmp6 completes an ICMPv6 message of n bytes already in place after the
// headers: IPv6 header with hop limit 255, checksum, Ethernet header.
func (r *Responder) icmp6(out []byte, dstMAC packet.MAC, src, dst netip.Addr, n int) int {
	packet.PutEthernet(out, dstMAC, r.OurMAC, packet.EtherTypeIPv6)
	h := out[packet.EthLen : packet.EthLen+packet.IPv6Len]
	binary.BigEndian.PutUint32(h[0:4], 6<<28)
	binary.BigEndian.PutUint16(h[4:6], uint16(n))
	h[6], h[7] = packet.ProtoICMPv6, 255
	s, d := src.As16(), dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	body := out[packet.EthLen+packet.IPv6Len : packet.EthLen+packet.IPv6Len+n]
	body[2], body[3] = 0, 0
	sum := packet.Sum(body, packet.PseudoSum6(s, d, packet.ProtoICMPv6, n))
	binary.BigEndian.PutUint16(body[2:4], packet.Fold(sum))
	return packet.EthLen + packet.IPv6Len + n
}
