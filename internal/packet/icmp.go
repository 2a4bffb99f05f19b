package packet

import (
	"encoding/binary"
	"net/netip"
)

// ICMP error messages quote the datagram that caused them, up to these
// totals (RFC 1812 4.3.2.3 for IPv4, RFC 4443 2.4 for IPv6).
const (
	MaxICMP4Error = 576
	MaxICMP6Error = 1280
	ICMPLen       = 8 // ICMP or ICMPv6 error header
)

// QuoteUDP writes into b, and returns, the IP and UDP headers and payload
// of a datagram from src to dst, as an ICMP error quotes it. payload is cut
// to what fits in b.
func QuoteUDP(b []byte, src, dst netip.AddrPort, payload []byte) []byte {
	hl := IPv4Len
	if src.Addr().Is6() {
		hl = IPv6Len
	}
	n := min(len(payload), len(b)-hl-UDPLen)
	copy(b[hl+UDPLen:], payload[:n])
	full := UDPLen + len(payload) // the original lengths, not the cut ones
	var total int
	if src.Addr().Is4() {
		total = PutUDP4(b, src.Addr(), dst.Addr(), src.Port(), dst.Port(), n)
		binary.BigEndian.PutUint16(b[2:4], uint16(IPv4Len+full))
		binary.BigEndian.PutUint16(b[hl+4:hl+6], uint16(full))
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:12], Fold(Sum(b[:IPv4Len], 0)))
	} else {
		total = PutUDP6(b, src.Addr(), dst.Addr(), src.Port(), dst.Port(), n)
		binary.BigEndian.PutUint16(b[4:6], uint16(full))
		binary.BigEndian.PutUint16(b[hl+4:hl+6], uint16(full))
	}
	return b[:total]
}

// PutICMP4Error writes an IPv4 ICMP error (type, code, and the 32-bit
// field after the checksum, e.g. the next-hop MTU) from src to dst quoting
// quoted, into b after an Ethernet header's room, and returns the length of
// the IPv4 packet written at b[EthLen:]. quoted is cut to keep the packet
// within MaxICMP4Error bytes.
func PutICMP4Error(b []byte, src, dst netip.Addr, typ, code uint8, rest uint32, quoted []byte) int {
	q := min(len(quoted), MaxICMP4Error-IPv4Len-ICMPLen)
	total := IPv4Len + ICMPLen + q
	PutIPv4(b[EthLen:], src, dst, ProtoICMP, 64, total, false)
	m := b[EthLen+IPv4Len : EthLen+total]
	m[0], m[1], m[2], m[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(m[4:8], rest)
	copy(m[8:], quoted[:q])
	binary.BigEndian.PutUint16(m[2:4], Fold(Sum(m, 0)))
	return total
}

// PutICMP6Error is PutICMP4Error for ICMPv6 (checksum over the pseudo
// header, packet within MaxICMP6Error bytes).
func PutICMP6Error(b []byte, src, dst netip.Addr, typ, code uint8, rest uint32, quoted []byte) int {
	q := min(len(quoted), MaxICMP6Error-IPv6Len-ICMPLen)
	plen := ICMPLen + q
	PutIPv6(b[EthLen:], src, dst, ProtoICMPv6, 64, plen)
	s16, d16 := src.As16(), dst.As16()
	m := b[EthLen+IPv6Len : EthLen+IPv6Len+plen]
	m[0], m[1], m[2], m[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(m[4:8], rest)
	copy(m[8:], quoted[:q])
	binary.BigEndian.PutUint16(m[2:4], Fold(Sum(m, PseudoSum6(s16, d16, ProtoICMPv6, plen))))
	return IPv6Len + plen
}
