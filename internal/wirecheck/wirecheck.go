// Package wirecheck checks frames that gopasst sends to the guest, for the
// tests and fuzz targets of the packages that build them.
//
// # Theory of operation
//
// A check that used gopasst's own parser would share its mistakes, so
// [Check] decodes the frame with gopacket, an independent decoder, and
// has gopacket verify every checksum (IPv4 header, UDP, ICMP, ICMPv6). On
// top of what gopacket accepts, it holds the frame to what gopasst
// promises to send: Ethernet II with a unicast source; ARP replies, or
// IPv4 and IPv6 packets without options or extension headers that fill
// the frame exactly (no padding, no trailing bytes); UDP, ICMP or ICMPv6
// inside, with lengths that agree with each other; non-zero UDP ports and
// a non-zero UDP checksum; ICMP errors within the sizes RFC 1812 and
// RFC 4443 allow, quoting an IP header of the right family; NDP messages
// with hop limit 255 and well-formed options; IPv4 fragments that a
// receiver can reassemble.
//
// Policy that depends on the sender (which MAC or address a frame should
// come from or go to) is left to the caller, which gets what Check
// decoded in a [Frame].
package wirecheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Limits on what gopasst sends.
const (
	EthLen        = 14
	MaxFrame      = EthLen + 65535 // largest frame: an Ethernet header and a maximal IP packet
	MaxICMP4Error = 576            // RFC 1812 4.3.2.3
	MaxICMP6Error = 1280           // RFC 4443 2.4
)

// Frame is what [Check] found in a well-formed frame.
type Frame struct {
	Src, Dst  net.HardwareAddr
	EtherType layers.EthernetType

	// ARP is set for ARP frames.
	ARP *layers.ARP

	// For IPv4 and IPv6: the addresses, the hop limit (TTL), and the
	// transport protocol (UDP, TCP, ICMP or ICMPv6).
	SrcIP, DstIP netip.Addr
	HopLimit     uint8
	Proto        layers.IPProtocol

	// For IPv4 fragments: the fragment's byte offset, whether more
	// follow, its identification, and its data. UDP fields are not set.
	Fragment   bool
	FragOffset int
	MoreFrags  bool
	FragID     uint16
	FragData   []byte

	// For UDP (not fragmented) and TCP: ports and payload.
	SrcPort, DstPort uint16
	Payload          []byte

	// For TCP: the sequence and acknowledgement numbers, the flags (FIN
	// 0x01 to ACK 0x10), the window as sent, and the SYN's MSS option
	// (0 if absent).
	Seq, Ack uint32
	TCPFlags uint8
	Window   uint16
	MSS      uint16

	// For ICMP and ICMPv6: type, code, and the message after the 4-byte
	// type, code and checksum.
	ICMPType, ICMPCode uint8
	ICMPBody           []byte
}

// Check decodes frame, which gopasst sent to the guest, and reports the
// first way in which it is not well formed, or nil. Check does not modify
// frame; the slices in the returned Frame point into a copy of it.
func Check(frame []byte) (*Frame, error) {
	if len(frame) < EthLen {
		return nil, fmt.Errorf("frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	if len(frame) > MaxFrame {
		return nil, fmt.Errorf("frame of %d bytes is longer than %d", len(frame), MaxFrame)
	}
	// gopacket's checksum verification appends to layer contents in
	// place: work on a copy.
	b := bytes.Clone(frame)
	pkt := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.DecodeOptions{NoCopy: true})
	// What follows a UDP header is the application's business (gopacket
	// tries DNS on port 53, for one): only failures before it count.
	if el := pkt.ErrorLayer(); el != nil && pkt.Layer(layers.LayerTypeUDP) == nil {
		return nil, fmt.Errorf("gopacket cannot decode the frame: %v", el.Error())
	}
	eth, ok := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !ok {
		return nil, errors.New("no Ethernet layer")
	}
	f := &Frame{Src: eth.SrcMAC, Dst: eth.DstMAC, EtherType: eth.EthernetType}
	if eth.SrcMAC[0]&1 != 0 || bytes.Equal(eth.SrcMAC, make([]byte, 6)) {
		return nil, fmt.Errorf("source MAC %v is not a unicast address", eth.SrcMAC)
	}
	if bytes.Equal(eth.DstMAC, make([]byte, 6)) {
		return nil, errors.New("destination MAC is zero")
	}
	var err error
	switch eth.EthernetType {
	case layers.EthernetTypeARP:
		err = checkARP(pkt, b, f)
	case layers.EthernetTypeIPv4:
		err = checkIPv4(pkt, b[EthLen:], f)
	case layers.EthernetTypeIPv6:
		err = checkIPv6(pkt, b[EthLen:], f)
	default:
		err = fmt.Errorf("EtherType %#04x", uint16(eth.EthernetType))
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

func checkARP(pkt gopacket.Packet, b []byte, f *Frame) error {
	arp, ok := pkt.Layer(layers.LayerTypeARP).(*layers.ARP)
	if !ok {
		return errors.New("ARP frame without an ARP layer")
	}
	if len(b) != EthLen+28 {
		return fmt.Errorf("ARP frame of %d bytes, want %d", len(b), EthLen+28)
	}
	if arp.AddrType != layers.LinkTypeEthernet || arp.Protocol != layers.EthernetTypeIPv4 ||
		arp.HwAddressSize != 6 || arp.ProtAddressSize != 4 {
		return fmt.Errorf("ARP for hardware %v protocol %v sizes %d/%d", arp.AddrType, arp.Protocol, arp.HwAddressSize, arp.ProtAddressSize)
	}
	if arp.Operation != layers.ARPRequest && arp.Operation != layers.ARPReply {
		return fmt.Errorf("ARP operation %d", arp.Operation)
	}
	if !bytes.Equal(arp.SourceHwAddress, f.Src) {
		return fmt.Errorf("ARP sender %v differs from the Ethernet source %v", net.HardwareAddr(arp.SourceHwAddress), f.Src)
	}
	f.ARP = arp
	return nil
}

// unicast reports whether a can be the source of a packet.
func unicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// verify has gopacket check the checksum of the layer of type typ, which
// must be present; a transport layer's pseudo-header comes from the
// network layer.
func verify(pkt gopacket.Packet, typ gopacket.LayerType) error {
	l, ok := pkt.Layer(typ).(gopacket.LayerWithChecksum)
	if !ok {
		return fmt.Errorf("no %v layer", typ)
	}
	if t, ok := l.(interface {
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
	}); ok {
		if err := t.SetNetworkLayerForChecksum(pkt.NetworkLayer()); err != nil {
			return fmt.Errorf("%v checksum: %w", typ, err)
		}
	}
	err, res := l.VerifyChecksum()
	if err != nil {
		return fmt.Errorf("%v checksum: %w", typ, err)
	}
	if !res.Valid {
		return fmt.Errorf("%v checksum %#04x, want %#04x", typ, res.Actual, res.Correct)
	}
	return nil
}

func checkIPv4(pkt gopacket.Packet, h []byte, f *Frame) error {
	ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if !ok {
		return errors.New("IPv4 frame without an IPv4 layer")
	}
	if len(h) < 20 || h[0] != 0x45 {
		return fmt.Errorf("IPv4 version and header length %#02x, want 0x45 (no options)", h[0])
	}
	if int(ip.Length) != len(h) {
		return fmt.Errorf("IPv4 total length %d, but %d bytes follow the Ethernet header", ip.Length, len(h))
	}
	if err := verify(pkt, layers.LayerTypeIPv4); err != nil {
		return err
	}
	f.SrcIP, _ = netip.AddrFromSlice(ip.SrcIP.To4())
	f.DstIP, _ = netip.AddrFromSlice(ip.DstIP.To4())
	f.HopLimit, f.Proto = ip.TTL, ip.Protocol
	if !unicast(f.SrcIP) {
		return fmt.Errorf("IPv4 source %v is not unicast", f.SrcIP)
	}
	if !f.DstIP.IsValid() || f.DstIP.IsUnspecified() {
		return fmt.Errorf("IPv4 destination %v", f.DstIP)
	}
	if ip.TTL == 0 {
		return errors.New("IPv4 TTL 0")
	}
	if ip.Flags&layers.IPv4EvilBit != 0 {
		return errors.New("IPv4 reserved flag set")
	}
	data := h[20:]
	if ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0 {
		if ip.Flags&layers.IPv4DontFragment != 0 {
			return errors.New("IPv4 fragment with DF set")
		}
		if ip.Protocol != layers.IPProtocolUDP {
			return fmt.Errorf("IPv4 fragment of protocol %v", ip.Protocol)
		}
		f.Fragment, f.FragOffset, f.FragID, f.FragData = true, int(ip.FragOffset)*8, ip.Id, data
		f.MoreFrags = ip.Flags&layers.IPv4MoreFragments != 0
		if f.MoreFrags && (len(data) == 0 || len(data)%8 != 0) {
			return fmt.Errorf("IPv4 fragment with more to follow carries %d bytes, not a non-zero multiple of 8", len(data))
		}
		if f.FragOffset+len(data) > 65535-20 {
			return fmt.Errorf("IPv4 fragment at %d with %d bytes ends beyond the largest datagram", f.FragOffset, len(data))
		}
		return nil
	}
	switch ip.Protocol {
	case layers.IPProtocolUDP:
		return checkUDP(pkt, data, f)
	case layers.IPProtocolTCP:
		return checkTCP(pkt, data, f)
	case layers.IPProtocolICMPv4:
		if err := verify(pkt, layers.LayerTypeICMPv4); err != nil {
			return err
		}
		if len(data) < 8 {
			return fmt.Errorf("ICMP message of %d bytes", len(data))
		}
		f.ICMPType, f.ICMPCode, f.ICMPBody = data[0], data[1], data[4:]
		switch f.ICMPType {
		case 3, 4, 5, 11, 12: // errors
			if len(h) > MaxICMP4Error {
				return fmt.Errorf("ICMP error of %d bytes, more than %d", len(h), MaxICMP4Error)
			}
			return checkQuote(data[8:], 4, f)
		}
		return nil
	}
	return fmt.Errorf("IPv4 protocol %v", ip.Protocol)
}

func checkIPv6(pkt gopacket.Packet, h []byte, f *Frame) error {
	ip, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if !ok {
		return errors.New("IPv6 frame without an IPv6 layer")
	}
	if len(h) < 40 || h[0]>>4 != 6 {
		return errors.New("IPv6 version is not 6")
	}
	if int(ip.Length)+40 != len(h) {
		return fmt.Errorf("IPv6 payload length %d, but %d bytes follow the IPv6 header", ip.Length, len(h)-40)
	}
	f.SrcIP, _ = netip.AddrFromSlice(ip.SrcIP.To16())
	f.DstIP, _ = netip.AddrFromSlice(ip.DstIP.To16())
	f.HopLimit, f.Proto = ip.HopLimit, ip.NextHeader
	if !unicast(f.SrcIP) {
		return fmt.Errorf("IPv6 source %v is not unicast", f.SrcIP)
	}
	if !f.DstIP.IsValid() || f.DstIP.IsUnspecified() {
		return fmt.Errorf("IPv6 destination %v", f.DstIP)
	}
	if ip.HopLimit == 0 {
		return errors.New("IPv6 hop limit 0")
	}
	data := h[40:]
	switch ip.NextHeader {
	case layers.IPProtocolUDP:
		return checkUDP(pkt, data, f)
	case layers.IPProtocolTCP:
		return checkTCP(pkt, data, f)
	case layers.IPProtocolICMPv6:
		if err := verify(pkt, layers.LayerTypeICMPv6); err != nil {
			return err
		}
		if len(data) < 8 {
			return fmt.Errorf("ICMPv6 message of %d bytes", len(data))
		}
		f.ICMPType, f.ICMPCode, f.ICMPBody = data[0], data[1], data[4:]
		return checkICMPv6(h, data, f)
	}
	return fmt.Errorf("IPv6 next header %v", ip.NextHeader)
}

func checkUDP(pkt gopacket.Packet, data []byte, f *Frame) error {
	udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok {
		return errors.New("no UDP layer")
	}
	if len(data) < 8 || int(udp.Length) != len(data) {
		return fmt.Errorf("UDP length %d, but the IP payload is %d bytes", udp.Length, len(data))
	}
	if udp.Checksum == 0 {
		return errors.New("UDP checksum not set")
	}
	if err := verify(pkt, layers.LayerTypeUDP); err != nil {
		return err
	}
	if udp.SrcPort == 0 || udp.DstPort == 0 {
		return fmt.Errorf("UDP port 0 (%d -> %d)", udp.SrcPort, udp.DstPort)
	}
	f.SrcPort, f.DstPort, f.Payload = uint16(udp.SrcPort), uint16(udp.DstPort), data[8:]
	return nil
}

// checkTCP checks a TCP segment: its header length, checksum, ports and
// flags.
func checkTCP(pkt gopacket.Packet, data []byte, f *Frame) error {
	tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		return errors.New("no TCP layer")
	}
	if len(data) < 20 || int(tcp.DataOffset)*4 < 20 || int(tcp.DataOffset)*4 > len(data) {
		return fmt.Errorf("TCP data offset %d in a segment of %d bytes", tcp.DataOffset, len(data))
	}
	if err := verify(pkt, layers.LayerTypeTCP); err != nil {
		return err
	}
	if tcp.SrcPort == 0 || tcp.DstPort == 0 {
		return fmt.Errorf("TCP port 0 (%d -> %d)", tcp.SrcPort, tcp.DstPort)
	}
	flags := data[13] & 0x3f
	if flags&0x02 != 0 && flags&0x05 != 0 {
		return fmt.Errorf("TCP SYN with FIN or RST (flags %#02x)", flags)
	}
	if flags&0x16 == 0 {
		return fmt.Errorf("TCP segment without SYN, ACK or RST (flags %#02x)", flags)
	}
	if flags&0x04 != 0 && len(tcp.Payload) > 0 {
		return errors.New("TCP RST with payload")
	}
	f.SrcPort, f.DstPort, f.Payload = uint16(tcp.SrcPort), uint16(tcp.DstPort), data[int(tcp.DataOffset)*4:]
	f.Seq, f.Ack, f.TCPFlags, f.Window = tcp.Seq, tcp.Ack, flags, tcp.Window
	for _, o := range tcp.Options {
		if o.OptionType == layers.TCPOptionKindMSS && len(o.OptionData) == 2 {
			f.MSS = uint16(o.OptionData[0])<<8 | uint16(o.OptionData[1])
		}
	}
	return nil
}

// ICMPv6 types gopasst sends.
const (
	icmp6DstUnreach     = 1
	icmp6PacketTooBig   = 2
	icmp6TimeExceeded   = 3
	icmp6ParamProblem   = 4
	icmp6RouterAdvert   = 134
	icmp6NeighborAdvert = 136
)

func checkICMPv6(h, m []byte, f *Frame) error {
	switch m[0] {
	case icmp6DstUnreach, icmp6PacketTooBig, icmp6TimeExceeded, icmp6ParamProblem:
		if len(h) > MaxICMP6Error {
			return fmt.Errorf("ICMPv6 error of %d bytes, more than %d", len(h), MaxICMP6Error)
		}
		return checkQuote(m[8:], 6, f)
	case icmp6RouterAdvert, icmp6NeighborAdvert:
		// RFC 4861: NDP is sent with hop limit 255, so a receiver knows
		// it did not cross a router.
		if f.HopLimit != 255 {
			return fmt.Errorf("NDP type %d with hop limit %d", m[0], f.HopLimit)
		}
		fixed := 16 // RA: type, code, checksum, hop limit, flags, lifetime, reachable, retrans
		if m[0] == icmp6NeighborAdvert {
			fixed = 24 // NA: type, code, checksum, flags, target
		}
		if len(m) < fixed {
			return fmt.Errorf("NDP type %d of %d bytes", m[0], len(m))
		}
		return checkNDPOptions(m[fixed:])
	}
	return nil
}

// checkNDPOptions walks NDP options: each is a type, a length in units of
// 8 bytes (never 0) and its data, and they fill the message exactly.
func checkNDPOptions(o []byte) error {
	for len(o) > 0 {
		if len(o) < 8 {
			return fmt.Errorf("NDP option tail of %d bytes", len(o))
		}
		n := int(o[1]) * 8
		if n == 0 {
			return fmt.Errorf("NDP option %d of length 0", o[0])
		}
		if n > len(o) {
			return fmt.Errorf("NDP option %d of %d bytes overruns the message (%d left)", o[0], n, len(o))
		}
		o = o[n:]
	}
	return nil
}

// checkQuote checks the datagram an ICMP error quotes: an IP header of
// the frame's family and at least the 8 bytes after it (all of the
// datagram if it is shorter), from the address the error goes to.
func checkQuote(q []byte, version int, f *Frame) error {
	hl := 20
	if version == 6 {
		hl = 40
	}
	if len(q) < hl {
		return fmt.Errorf("ICMP error quotes %d bytes, less than an IPv%d header", len(q), version)
	}
	total := int(binary.BigEndian.Uint16(q[2:4]))
	if version == 6 {
		total = hl + int(binary.BigEndian.Uint16(q[4:6]))
	}
	if len(q) < min(hl+8, total) {
		return fmt.Errorf("ICMP error quotes %d bytes, less than an IPv%d header and 8 bytes of a datagram of %d", len(q), version, total)
	}
	if int(q[0]>>4) != version {
		return fmt.Errorf("ICMP error quotes an IP version %d header in IPv%d", q[0]>>4, version)
	}
	var src netip.Addr
	if version == 4 {
		if q[0]&0x0f < 5 {
			return fmt.Errorf("quoted IPv4 header length %d", q[0]&0x0f)
		}
		src = netip.AddrFrom4([4]byte(q[12:16]))
	} else {
		src = netip.AddrFrom16([16]byte(q[8:24]))
	}
	if src != f.DstIP {
		return fmt.Errorf("ICMP error to %v quotes a datagram from %v", f.DstIP, src)
	}
	return nil
}
