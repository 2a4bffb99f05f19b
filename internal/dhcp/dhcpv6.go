package dhcp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/insomniacslk/dhcp/rfc1035label"

	"github.com/gopasst/gopasst/internal/packet"
)

const (
	// maxClientID is the longest client identifier (DUID) accepted: the
	// longest DUID is 128 bytes (RFC 8415, 11.1).
	maxClientID = 128
	// maxMsg6 keeps a reply within the IPv6 minimum MTU.
	maxMsg6 = 1280 - packet.IPv6Len - packet.UDPLen
	// notOnLinkText goes with status NotOnLink.
	notOnLinkText = "Prefix not appropriate for link."
	// Client FQDN option flags (RFC 4704, 4.1): the client asks the
	// server to update the AAAA record (S); the server overrides the
	// client's choice (O).
	fqdnFlagS = 0x01
	fqdnFlagO = 0x02
)

// parseOption6 decodes the options the server looks into (IA_NA and IA_TA,
// with their addresses) and keeps all others as raw data, aliasing the
// frame: a client option the server ignores cannot make it drop the
// message.
func parseOption6(code dhcpv6.OptionCode, data []byte) (dhcpv6.Option, error) {
	switch code {
	case dhcpv6.OptionIANA, dhcpv6.OptionIATA:
		return dhcpv6.ParseOption(code, data)
	}
	return &dhcpv6.OptionGeneric{OptionCode: code, OptionData: data}, nil
}

// rawOption6 returns the data of the first option code in o.
func rawOption6(o dhcpv6.Options, code dhcpv6.OptionCode) ([]byte, bool) {
	opt := o.GetOne(code)
	if opt == nil {
		return nil, false
	}
	return opt.ToBytes(), true
}

// handle6 answers a DHCPv6 message; see the package documentation.
func (s *Server) handle6(p *packet.Parsed, out []byte) int {
	if s.NoDHCPv6 || !p.Dst4.IsMulticast() || p.Src4.IsUnspecified() || p.Src4.IsMulticast() {
		return 0
	}
	m := p.Payload
	if len(m) < 4 {
		return 0
	}
	req := dhcpv6.Message{MessageType: dhcpv6.MessageType(m[0])}
	copy(req.TransactionID[:], m[1:4])
	switch req.MessageType {
	case dhcpv6.MessageTypeSolicit, dhcpv6.MessageTypeRequest, dhcpv6.MessageTypeConfirm,
		dhcpv6.MessageTypeRenew, dhcpv6.MessageTypeRebind:
		if !s.Addr6.Is6() {
			return 0
		}
	case dhcpv6.MessageTypeInformationRequest:
	default:
		return 0 // RELEASE, DECLINE, server and relay messages
	}
	if err := req.Options.FromBytesWithParser(m[4:], parseOption6); err != nil {
		return 0
	}
	opts := req.Options.Options

	clientID, ok := rawOption6(opts, dhcpv6.OptionClientID)
	if !ok || len(clientID) > maxClientID {
		return 0
	}
	if _, err := dhcpv6.DUIDFromBytes(clientID); err != nil {
		return 0
	}
	serverID, hasServerID := rawOption6(opts, dhcpv6.OptionServerID)
	if hasServerID && !bytes.Equal(serverID, s.duid) {
		return 0 // meant for another server
	}
	ia, _ := opts.GetOne(dhcpv6.OptionIANA).(*dhcpv6.OptIANA)

	reply := dhcpv6.Message{MessageType: dhcpv6.MessageTypeReply, TransactionID: req.TransactionID}
	switch req.MessageType {
	case dhcpv6.MessageTypeSolicit:
		if hasServerID {
			return 0
		}
		reply.MessageType = dhcpv6.MessageTypeAdvertise
	case dhcpv6.MessageTypeRequest, dhcpv6.MessageTypeRenew, dhcpv6.MessageTypeConfirm:
		confirm := req.MessageType == dhcpv6.MessageTypeConfirm
		if confirm && hasServerID || !confirm && !hasServerID {
			return 0 // REQUEST and RENEW name us, CONFIRM names nobody
		}
		if bad := s.notOnLink(opts); bad != nil {
			return s.send6(p, out, s.notOnLinkReply(&req, bad, clientID))
		}
	case dhcpv6.MessageTypeRebind:
		// Any server may answer, and we are the only one.
	case dhcpv6.MessageTypeInformationRequest:
		if ia != nil || opts.GetOne(dhcpv6.OptionIATA) != nil {
			return 0
		}
	}

	reply.AddOption(&dhcpv6.OptionGeneric{OptionCode: dhcpv6.OptionServerID, OptionData: s.duid})
	if ia != nil {
		reply.AddOption(&dhcpv6.OptIANA{
			IaId: ia.IaId, T1: infiniteDuration, T2: infiniteDuration,
			Options: dhcpv6.IdentityOptions{Options: dhcpv6.Options{&dhcpv6.OptIAAddress{
				IPv6Addr:          s.Addr6.AsSlice(),
				PreferredLifetime: infiniteDuration,
				ValidLifetime:     infiniteDuration,
			}}},
		})
	}
	reply.AddOption(&dhcpv6.OptionGeneric{OptionCode: dhcpv6.OptionClientID, OptionData: clientID})
	s.configOptions6(&reply, opts)
	return s.send6(p, out, &reply)
}

// configOptions6 appends the DNS servers, domain search list and client
// FQDN options to reply, each only if set and as far as it fits in
// maxMsg6.
func (s *Server) configOptions6(reply *dhcpv6.Message, reqOpts dhcpv6.Options) {
	room := maxMsg6 - len(reply.ToBytes())
	var dns []net.IP
	for _, a := range s.DNS6 {
		if a.Is6() && !a.Is4In6() && !a.IsUnspecified() && 4+16*(len(dns)+1) <= room {
			dns = append(dns, a.AsSlice())
		}
	}
	if len(dns) > 0 {
		reply.AddOption(dhcpv6.OptDNS(dns...))
		room -= 4 + 16*len(dns)
	}

	var names []string
	size := 4
	for _, n := range s.Search {
		labels, ok := domainLabels(n)
		if !ok {
			continue
		}
		name := strings.Join(labels, ".")
		if size+len(name)+2 > room {
			break
		}
		names = append(names, name)
		size += len(name) + 2
	}
	if len(names) > 0 {
		reply.AddOption(dhcpv6.OptDomainSearchList(&rfc1035label.Labels{Labels: names}))
		room -= size
	}

	if labels, ok := domainLabels(s.FQDN); ok {
		name := strings.Join(labels, ".")
		if 4+1+len(name)+2 <= room {
			var flags uint8
			if c, ok := rawOption6(reqOpts, dhcpv6.OptionFQDN); ok && len(c) > 0 && c[0]&fqdnFlagS != 0 {
				flags = fqdnFlagO // we do no DNS updates, whatever the client asked
			}
			reply.AddOption(&dhcpv6.OptFQDN{Flags: flags, DomainName: &rfc1035label.Labels{Labels: []string{name}}})
		}
	}
}

// notOnLink returns the first IA_NA or IA_TA in opts that holds an address
// other than the one we assign, or nil.
func (s *Server) notOnLink(opts dhcpv6.Options) dhcpv6.Option {
	for _, o := range opts {
		var io dhcpv6.IdentityOptions
		switch ia := o.(type) {
		case *dhcpv6.OptIANA:
			io = ia.Options
		case *dhcpv6.OptIATA:
			io = ia.Options
		default:
			continue
		}
		for _, a := range io.Options.Get(dhcpv6.OptionIAAddr) {
			addr, ok := a.(*dhcpv6.OptIAAddress)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(addr.IPv6Addr); !ok || ip != s.Addr6.WithZone("") {
				return o
			}
		}
	}
	return nil
}

// notOnLinkReply builds the REPLY telling the client that an address in
// the IA bad is not for this link: the IA comes back without addresses and
// with status NotOnLink (RFC 8415, 18.3.2); for CONFIRM the status also
// goes at message level, where RFC 8415, 18.3.3, wants it.
func (s *Server) notOnLinkReply(req *dhcpv6.Message, bad dhcpv6.Option, clientID []byte) *dhcpv6.Message {
	status := &dhcpv6.OptStatusCode{StatusCode: iana.StatusNotOnLink, StatusMessage: notOnLinkText}
	inIA := dhcpv6.IdentityOptions{Options: dhcpv6.Options{status}}
	reply := &dhcpv6.Message{MessageType: dhcpv6.MessageTypeReply, TransactionID: req.TransactionID}
	reply.AddOption(&dhcpv6.OptionGeneric{OptionCode: dhcpv6.OptionServerID, OptionData: s.duid})
	switch ia := bad.(type) {
	case *dhcpv6.OptIANA:
		reply.AddOption(&dhcpv6.OptIANA{IaId: ia.IaId, T1: ia.T1, T2: ia.T2, Options: inIA})
	case *dhcpv6.OptIATA:
		reply.AddOption(&dhcpv6.OptIATA{IaId: ia.IaId, Options: inIA})
	}
	reply.AddOption(&dhcpv6.OptionGeneric{OptionCode: dhcpv6.OptionClientID, OptionData: clientID})
	if req.MessageType == dhcpv6.MessageTypeConfirm {
		reply.AddOption(status)
	}
	return reply
}

// send6 writes reply, from our link-local address port 547 to the
// client's address port 546, into out and returns the frame length.
func (s *Server) send6(p *packet.Parsed, out []byte, reply *dhcpv6.Message) int {
	b := reply.ToBytes()
	body := out[packet.EthLen+packet.IPv6Len+packet.UDPLen:]
	if len(b) > len(body) {
		return 0
	}
	copy(body, b)
	ip := out[packet.EthLen:]
	n := packet.PutUDP6(ip, s.OurLinkLocal6, p.Src4, ServerPort6, ClientPort6, len(b))
	// The flow label (not covered by the UDP checksum) comes from the
	// transaction ID, as in passt.
	xid := uint32(reply.TransactionID[0])<<16 | uint32(reply.TransactionID[1])<<8 | uint32(reply.TransactionID[2])
	binary.BigEndian.PutUint32(ip[0:4], 6<<28|xid&0xfffff)
	packet.PutEthernet(out, p.Src, s.OurMAC, packet.EtherTypeIPv6)
	return packet.EthLen + n
}
