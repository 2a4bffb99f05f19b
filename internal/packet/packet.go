package packet

import (
	"encoding/binary"
	"net/netip"
)

// Header lengths and field values used on the tap side.
const (
	EthLen  = 14 // Ethernet II header
	IPv4Len = 20 // IPv4 header without options
	IPv6Len = 40 // IPv6 fixed header
	UDPLen  = 8  // UDP header

	// MaxHeadroom is the room needed in front of a UDP payload for the
	// largest header stack we build (Ethernet + IPv6 + UDP).
	MaxHeadroom = EthLen + IPv6Len + UDPLen

	EtherTypeIPv4 = 0x0800 // IPv4 EtherType
	EtherTypeARP  = 0x0806 // ARP EtherType
	EtherTypeIPv6 = 0x86dd // IPv6 EtherType

	ProtoICMP   = 1  // IPv4 protocol number of ICMP
	ProtoTCP    = 6  // IP protocol number of TCP
	ProtoUDP    = 17 // IP protocol number of UDP
	ProtoICMPv6 = 58 // IPv6 next header value of ICMPv6

	// MaxUDPPayload is the largest UDP payload that fits in an IPv4 datagram.
	MaxUDPPayload = 65535 - IPv4Len - UDPLen
)

// MAC is an Ethernet hardware address.
type MAC [6]byte

// BroadcastMAC is ff:ff:ff:ff:ff:ff.
var BroadcastMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

// IsMulticast reports whether m has the group bit set (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// String formats m as six colon-separated hex bytes.
func (m MAC) String() string {
	const hex = "0123456789abcdef"
	b := make([]byte, 0, 17)
	for i, c := range m {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hex[c>>4], hex[c&15])
	}
	return string(b)
}

// Drop says why a frame was not accepted. DropNone means it was.
type Drop uint8

// Reasons for dropping a frame from the guest.
const (
	DropNone        Drop = iota
	DropShort            // shorter than the headers it announces
	DropBadHeader        // version, header length or length fields inconsistent
	DropFragment         // fragment that cannot be reassembled (see package frag)
	DropUnsupported      // EtherType or protocol we do not handle
	NumDrops             // number of drop reasons
)

var dropNames = [NumDrops]string{"none", "short", "bad-header", "fragment", "unsupported"}

// String names the reason as it appears in counters.
func (d Drop) String() string {
	if d < NumDrops {
		return dropNames[d]
	}
	return "unknown"
}

// Parsed is the result of [Parse]: the parts of one frame, as slices that
// alias the frame.
type Parsed struct {
	Dst, Src  MAC
	EtherType uint16

	// L3 is the network header and everything after it, trimmed to the
	// length the IP header announces (Ethernet padding removed).
	L3 []byte

	// For IPv4 and IPv6 frames:
	Src4, Dst4 netip.Addr // source and destination addresses
	Proto      uint8      // transport protocol after extension headers
	HopLimit   uint8      // TTL or hop limit
	L4         []byte     // transport header and payload

	// For fragments (IPv4 fragments and IPv6 packets with a fragment
	// header): Fragment is set, L4 holds this fragment's data, FragOffset
	// is its byte offset in the datagram, FragMore says more follow, and
	// FragID is the identification. UDP fields are then not set: package
	// frag reassembles the datagram and parses its UDP header.
	Fragment   bool
	FragMore   bool
	FragOffset int
	FragID     uint32

	// For UDP:
	SrcPort, DstPort uint16
	Payload          []byte

	// GSOSize is not set by Parse: the reader of a tap with UDP
	// segmentation offload sets it for a segmented frame, whose Payload
	// holds many datagrams of GSOSize bytes (the last may be shorter).
	GSOSize int
	// CsumPartial is not set by Parse either: the reader of a tap with
	// checksum offload sets it for a frame whose L4 checksum the sender
	// left partial (the pseudo-header's sum), which cannot be checked.
	CsumPartial bool
}

// Parse decodes the Ethernet, IP and (when present) UDP headers of frame
// into p. ARP frames stop after Ethernet with p.L3 set. It returns DropNone
// when the frame is well formed as far as it was read.
func Parse(frame []byte, p *Parsed) Drop {
	if len(frame) < EthLen {
		return DropShort
	}
	copy(p.Dst[:], frame[0:6])
	copy(p.Src[:], frame[6:12])
	p.EtherType = binary.BigEndian.Uint16(frame[12:14])
	l3 := frame[EthLen:]
	p.L3 = l3
	p.Src4, p.Dst4, p.Proto, p.HopLimit = netip.Addr{}, netip.Addr{}, 0, 0
	p.L4, p.Payload = nil, nil
	p.SrcPort, p.DstPort = 0, 0
	p.Fragment, p.FragMore, p.FragOffset, p.FragID = false, false, 0, 0
	switch p.EtherType {
	case EtherTypeARP:
		return DropNone
	case EtherTypeIPv4:
		if d := parseIPv4(l3, p); d != DropNone {
			return d
		}
	case EtherTypeIPv6:
		if d := parseIPv6(l3, p); d != DropNone {
			return d
		}
	default:
		return DropUnsupported
	}
	if p.Proto == ProtoUDP && !p.Fragment {
		return ParseUDP(p)
	}
	return DropNone
}

func parseIPv4(b []byte, p *Parsed) Drop {
	if len(b) < IPv4Len {
		return DropShort
	}
	if b[0]>>4 != 4 {
		return DropBadHeader
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < IPv4Len || total < ihl {
		return DropBadHeader
	}
	if total > len(b) {
		return DropShort
	}
	if frag := binary.BigEndian.Uint16(b[6:8]); frag&0x3fff != 0 {
		// MF set or non-zero offset: a fragment.
		p.Fragment = true
		p.FragMore = frag&0x2000 != 0
		p.FragOffset = int(frag&0x1fff) * 8
		p.FragID = uint32(binary.BigEndian.Uint16(b[4:6]))
	}
	p.L3 = b[:total]
	p.HopLimit = b[8]
	p.Proto = b[9]
	p.Src4 = netip.AddrFrom4([4]byte(b[12:16]))
	p.Dst4 = netip.AddrFrom4([4]byte(b[16:20]))
	p.L4 = b[ihl:total]
	return DropNone
}

// IPv6 extension headers that Parse skips to find the transport header.
const (
	ip6HopByHop = 0
	ip6Routing  = 43
	ip6Fragment = 44
	ip6DestOpts = 60
)

func parseIPv6(b []byte, p *Parsed) Drop {
	if len(b) < IPv6Len {
		return DropShort
	}
	if b[0]>>4 != 6 {
		return DropBadHeader
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	if IPv6Len+plen > len(b) {
		return DropShort
	}
	p.L3 = b[:IPv6Len+plen]
	p.HopLimit = b[7]
	p.Src4 = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst4 = netip.AddrFrom16([16]byte(b[24:40]))
	next := b[6]
	rest := b[IPv6Len : IPv6Len+plen]
	// Bounded: every extension header is at least 8 bytes long.
	for {
		switch next {
		case ip6HopByHop, ip6Routing, ip6DestOpts:
			if len(rest) < 8 {
				return DropShort
			}
			n := (int(rest[1]) + 1) * 8
			if n > len(rest) {
				return DropShort
			}
			next, rest = rest[0], rest[n:]
			continue
		case ip6Fragment:
			if len(rest) < 8 {
				return DropShort
			}
			off := binary.BigEndian.Uint16(rest[2:4])
			p.FragOffset = int(off &^ 7)
			p.FragMore = off&1 != 0
			p.FragID = binary.BigEndian.Uint32(rest[4:8])
			// An atomic fragment (offset 0, no more) is whole.
			p.Fragment = p.FragOffset != 0 || p.FragMore
			next, rest = rest[0], rest[8:]
			if p.Fragment {
				break
			}
			continue
		}
		break
	}
	p.Proto = next
	p.L4 = rest
	return DropNone
}

// ParseUDP parses the UDP header in p.L4, setting the ports and payload.
func ParseUDP(p *Parsed) Drop {
	b := p.L4
	if len(b) < UDPLen {
		return DropShort
	}
	ulen := int(binary.BigEndian.Uint16(b[4:6]))
	if ulen < UDPLen {
		return DropBadHeader
	}
	if ulen > len(b) {
		return DropShort
	}
	p.SrcPort = binary.BigEndian.Uint16(b[0:2])
	p.DstPort = binary.BigEndian.Uint16(b[2:4])
	p.Payload = b[UDPLen:ulen]
	return DropNone
}

// PutEthernet writes an Ethernet II header into b[:EthLen].
func PutEthernet(b []byte, dst, src MAC, etherType uint16) {
	_ = b[EthLen-1]
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], etherType)
}

// PutUDP4 writes IPv4 and UDP headers into b[:IPv4Len+UDPLen] for a payload
// of plen bytes that already sits at b[IPv4Len+UDPLen:], with both checksums.
// It returns the length of the IPv4 datagram.
func PutUDP4(b []byte, src, dst netip.Addr, sport, dport uint16, plen int) int {
	return putUDP4(b, src, dst, sport, dport, plen, false)
}

// PutUDP4Partial is PutUDP4 for a frame whose UDP checksum the receiving
// kernel completes (a segmented frame on a tap with offloads): the UDP
// checksum field holds the pseudo-header sum only, as the Linux
// CHECKSUM_PARTIAL convention wants, and the payload is not read.
func PutUDP4Partial(b []byte, src, dst netip.Addr, sport, dport uint16, plen int) int {
	return putUDP4(b, src, dst, sport, dport, plen, true)
}

// PutIPv4 writes an IPv4 header without options into h[:IPv4Len] for a
// packet of total bytes carrying protocol proto, with TTL ttl, the
// don't-fragment flag if df, and its checksum.
func PutIPv4(h []byte, src, dst netip.Addr, proto, ttl uint8, total int, df bool) {
	h[0], h[1] = 0x45, 0
	binary.BigEndian.PutUint16(h[2:4], uint16(total))
	binary.BigEndian.PutUint16(h[4:6], 0) // identification
	flags := uint16(0)
	if df {
		flags = 0x4000
	}
	binary.BigEndian.PutUint16(h[6:8], flags)
	h[8], h[9] = ttl, proto
	h[10], h[11] = 0, 0
	s4, d4 := src.As4(), dst.As4()
	copy(h[12:16], s4[:])
	copy(h[16:20], d4[:])
	binary.BigEndian.PutUint16(h[10:12], Fold(Sum(h[:IPv4Len], 0)))
}

// PutIPv6 writes an IPv6 header into h[:IPv6Len] for plen payload bytes
// of next header next, with hop limit hop.
func PutIPv6(h []byte, src, dst netip.Addr, next, hop uint8, plen int) {
	binary.BigEndian.PutUint32(h[0:4], 6<<28)
	binary.BigEndian.PutUint16(h[4:6], uint16(plen))
	h[6], h[7] = next, hop
	s16, d16 := src.As16(), dst.As16()
	copy(h[8:24], s16[:])
	copy(h[24:40], d16[:])
}

func putUDP4(b []byte, src, dst netip.Addr, sport, dport uint16, plen int, partial bool) int {
	total := IPv4Len + UDPLen + plen
	PutIPv4(b, src, dst, ProtoUDP, 255, total, true)
	s4, d4 := src.As4(), dst.As4()
	ulen := UDPLen + plen
	sum := PseudoSum4(s4, d4, ProtoUDP, ulen)
	if partial {
		u := b[IPv4Len : IPv4Len+UDPLen]
		putUDPHeader(u, sport, dport, ulen)
		binary.BigEndian.PutUint16(u[6:8], ^Fold(sum))
		return total
	}
	u := b[IPv4Len:total]
	putUDPHeader(u, sport, dport, ulen)
	binary.BigEndian.PutUint16(u[6:8], udpChecksum(Sum(u, sum)))
	return total
}

// PutUDP6 writes IPv6 and UDP headers into b[:IPv6Len+UDPLen] for a payload
// of plen bytes that already sits at b[IPv6Len+UDPLen:], with the UDP
// checksum. It returns the length of the IPv6 packet.
func PutUDP6(b []byte, src, dst netip.Addr, sport, dport uint16, plen int) int {
	return putUDP6(b, src, dst, sport, dport, plen, false)
}

// PutUDP6Partial is PutUDP6 with the UDP checksum left for the receiving
// kernel to complete, as PutUDP4Partial.
func PutUDP6Partial(b []byte, src, dst netip.Addr, sport, dport uint16, plen int) int {
	return putUDP6(b, src, dst, sport, dport, plen, true)
}

func putUDP6(b []byte, src, dst netip.Addr, sport, dport uint16, plen int, partial bool) int {
	ulen := UDPLen + plen
	PutIPv6(b, src, dst, ProtoUDP, 255, ulen)
	s16, d16 := src.As16(), dst.As16()
	sum := PseudoSum6(s16, d16, ProtoUDP, ulen)
	if partial {
		u := b[IPv6Len : IPv6Len+UDPLen]
		putUDPHeader(u, sport, dport, ulen)
		binary.BigEndian.PutUint16(u[6:8], ^Fold(sum))
		return IPv6Len + ulen
	}
	u := b[IPv6Len : IPv6Len+ulen]
	putUDPHeader(u, sport, dport, ulen)
	binary.BigEndian.PutUint16(u[6:8], udpChecksum(Sum(u, sum)))
	return IPv6Len + ulen
}

func putUDPHeader(u []byte, sport, dport uint16, ulen int) {
	binary.BigEndian.PutUint16(u[0:2], sport)
	binary.BigEndian.PutUint16(u[2:4], dport)
	binary.BigEndian.PutUint16(u[4:6], uint16(ulen))
	u[6], u[7] = 0, 0
}

// udpChecksum turns a folded sum into the value for the UDP header, where
// zero means "no checksum" and is sent as 0xffff instead (RFC 768).
func udpChecksum(sum uint32) uint16 {
	c := Fold(sum)
	if c == 0 {
		return 0xffff
	}
	return c
}
