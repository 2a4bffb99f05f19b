package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/rfc1035label"

	"github.com/gopasst/gopasst/internal/packet"
)

const (
	// bootpFixedLen is the length of the fixed BOOTP fields plus the
	// DHCP magic cookie: where options start.
	bootpFixedLen = 240
	// optSpace is the room for options, End included, in a message that
	// fits the 576-byte datagram every host must accept (RFC 2131, 2).
	optSpace = 576 - packet.IPv4Len - packet.UDPLen - bootpFixedLen
	// optMinLen pads options so the message has the 300 bytes of a BOOTP
	// message (RFC 951), which some relays and clients insist on.
	optMinLen = 60
	// maxOptLen is the most one option instance carries.
	maxOptLen = 255
	// flagBroadcast is the BROADCAST bit of the flags field: the client
	// cannot receive unicast before it is configured.
	flagBroadcast = 0x8000
	// fqdnFlagE says the name in option 81 is in DNS wire format
	// (RFC 4702, 2.1); the two RCODE bytes that follow are 255 from a
	// server.
	fqdnFlagE = 0x04
)

var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// handle4 answers a DHCPv4 message; see the package documentation.
func (s *Server) handle4(p *packet.Parsed, out []byte) int {
	if s.NoDHCP || !s.Addr4.IsValid() || !s.Addr4.Addr().Is4() || !s.Gateway4.Is4() {
		return 0
	}
	m := p.Payload
	if len(m) < bootpFixedLen || m[0] != byte(dhcpv4.OpcodeBootRequest) {
		return 0
	}
	// Options run to the End option or, failing one, to the end of the
	// datagram; the decoder wants an End, so give it one after the data
	// (it stops at the first). The frame itself is not touched.
	req, err := dhcpv4.FromBytes(append(m[:len(m):len(m)], dhcpv4.OptionEnd.Code()))
	if err != nil {
		return 0
	}

	var typ dhcpv4.MessageType
	rapid := false
	switch t := req.Options.Get(dhcpv4.OptionDHCPMessageType); {
	case len(t) > 0 && dhcpv4.MessageType(t[0]) == dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
		if req.Options.Has(dhcpv4.OptionRapidCommit) {
			typ, rapid = dhcpv4.MessageTypeAck, true
		}
	case len(t) == 0 || dhcpv4.MessageType(t[0]) == dhcpv4.MessageTypeRequest:
		// REQUEST in any state, or BOOTP (no message type at all): the
		// only address there is, whatever the client asked for.
		typ = dhcpv4.MessageTypeAck
	default:
		return 0 // DECLINE, RELEASE, INFORM, or not for a server
	}

	reply := dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  req.ClientIPAddr,
		YourIPAddr:    s.Addr4.Addr().AsSlice(),
		GatewayIPAddr: req.GatewayIPAddr,
		ClientHWAddr:  req.ClientHWAddr,
		Options:       dhcpv4.Options{},
	}
	body := out[packet.EthLen+packet.IPv4Len+packet.UDPLen:]
	copy(body, reply.ToBytes()[:bootpFixedLen])
	n := bootpFixedLen + s.putOptions4(body[bootpFixedLen:], s.options4(typ, rapid), req.Options.Get(dhcpv4.OptionParameterRequestList))

	dst := s.Addr4.Addr()
	if req.Flags&flagBroadcast != 0 {
		dst = broadcast4
	}
	packet.PutEthernet(out, p.Src, s.OurMAC, packet.EtherTypeIPv4)
	return packet.EthLen + packet.PutUDP4(out[packet.EthLen:], s.Gateway4, dst, ServerPort4, ClientPort4, n)
}

// options4 returns the options of a reply of type typ, by code.
func (s *Server) options4(typ dhcpv4.MessageType, rapid bool) dhcpv4.Options {
	gw := s.Gateway4.AsSlice()
	o := dhcpv4.Options{}
	o.Update(dhcpv4.OptMessageType(typ))
	o.Update(dhcpv4.OptSubnetMask(net.CIDRMask(s.Addr4.Bits(), 32)))
	o.Update(dhcpv4.OptRouter(gw))
	o.Update(dhcpv4.OptServerIdentifier(gw))
	o.Update(dhcpv4.OptIPAddressLeaseTime(infiniteDuration))
	if rapid {
		o.Update(dhcpv4.OptGeneric(dhcpv4.OptionRapidCommit, nil))
	}
	if !s.Addr4.Masked().Contains(s.Gateway4) {
		// Off-link gateway: a host route to it, then the default route
		// (a client using option 121 ignores option 3, RFC 3442).
		o.Update(dhcpv4.OptClasslessStaticRoute(
			&dhcpv4.Route{Dest: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Router: net.IPv4zero.To4()},
			&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Router: gw},
		))
	}
	if s.MTU > 0 && s.MTU <= 0xffff {
		o.Update(dhcpv4.Option{Code: dhcpv4.OptionInterfaceMTU, Value: dhcpv4.Uint16(s.MTU)})
	}
	var dns []net.IP
	for _, a := range s.DNS4 {
		if a.Is4() && !a.IsUnspecified() && len(dns) < maxOptLen/4 {
			dns = append(dns, a.AsSlice())
		}
	}
	if len(dns) > 0 {
		o.Update(dhcpv4.OptDNS(dns...))
	}
	if h := s.Hostname; h != "" && len(h) <= maxOptLen {
		o.Update(dhcpv4.OptHostName(h))
	}
	if labels, ok := domainLabels(s.FQDN); ok {
		v := append([]byte{fqdnFlagE, 0xff, 0xff}, (&rfc1035label.Labels{Labels: []string{strings.Join(labels, ".")}}).ToBytes()...)
		if len(v) <= maxOptLen {
			o.Update(dhcpv4.OptGeneric(dhcpv4.OptionFQDN, v))
		}
	}
	// The search list gets what the others leave of the option space.
	room := optSpace - 1 - 2
	for _, v := range o {
		room -= 2 + len(v)
	}
	if v := searchList4(s.Search, min(room, maxOptLen)); len(v) > 0 {
		o.Update(dhcpv4.OptGeneric(dhcpv4.OptionDNSDomainSearchList, v))
	}
	return o
}

// essential4 are the options every reply carries, whatever else is left
// out for room: the message type, the server identifier and lease time
// (which RFC 2131, table 3, requires in OFFER and ACK), the subnet mask
// and the router.
var essential4 = []uint8{
	dhcpv4.OptionDHCPMessageType.Code(), dhcpv4.OptionServerIdentifier.Code(),
	dhcpv4.OptionIPAddressLeaseTime.Code(), dhcpv4.OptionSubnetMask.Code(), dhcpv4.OptionRouter.Code(),
}

// putOptions4 writes the options o into b, End and padding included, and
// returns the length written. Order: message type first unless the
// client's parameter request list prl names it, then the options prl asks
// for in its order, then the others by code. An option that does not fit
// in optSpace is left out; room for the essential4 options is kept until
// they are written.
func (s *Server) putOptions4(b []byte, o dhcpv4.Options, prl []byte) int {
	var done [256]bool
	n := 0
	reserved := 0 // room the essential options not yet written need
	for _, c := range essential4 {
		if v, ok := o[c]; ok {
			reserved += 2 + len(v)
		}
	}
	put := func(code uint8) {
		v, ok := o[code]
		if !ok || done[code] {
			return
		}
		need := 2 + len(v)
		if bytes.IndexByte(essential4, code) >= 0 {
			reserved -= need
		}
		if n+need+reserved > optSpace-1 {
			return
		}
		done[code] = true
		b[n], b[n+1] = code, byte(len(v))
		n += 2 + copy(b[n+2:], v)
	}
	if !bytes.Contains(prl, []byte{dhcpv4.OptionDHCPMessageType.Code()}) {
		put(dhcpv4.OptionDHCPMessageType.Code())
	}
	for _, c := range prl {
		put(c)
	}
	for c := 1; c < 255; c++ {
		put(uint8(c))
	}
	b[n] = dhcpv4.OptionEnd.Code()
	n++
	if n < optMinLen {
		clear(b[n:optMinLen])
		n = optMinLen
	}
	return n
}

// searchList4 encodes names as option 119 data (RFC 3397): DNS wire
// format with compression pointers, relative to the start of the data, to
// suffixes already written. Names are added in order while they fit in
// room bytes; invalid names are skipped.
func searchList4(names []string, room int) []byte {
	var b []byte
	at := map[string]int{} // suffix → offset of its first label
	for _, name := range names {
		labels, ok := domainLabels(name)
		if !ok {
			continue
		}
		type pending struct {
			suffix string
			off    int
		}
		var enc []byte
		var added []pending
		ptr := -1
		for i := range labels {
			suffix := strings.Join(labels[i:], ".")
			if off, ok := at[suffix]; ok {
				ptr = off
				break
			}
			added = append(added, pending{suffix, len(b) + len(enc)})
			enc = append(enc, byte(len(labels[i])))
			enc = append(enc, labels[i]...)
		}
		if ptr >= 0 {
			enc = append(enc, 0xc0|byte(ptr>>8), byte(ptr))
		} else {
			enc = append(enc, 0)
		}
		if len(b)+len(enc) > room {
			break
		}
		for _, a := range added {
			at[a.suffix] = a.off
		}
		b = append(b, enc...)
	}
	return b
}
