package dhcp

import (
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/gopasst/gopasst/internal/packet"
)

// UDP ports of the two protocols.
const (
	ServerPort4 = 67  // DHCPv4 server port, where requests go
	ClientPort4 = 68  // DHCPv4 client port, where replies go
	ServerPort6 = 547 // DHCPv6 server port, where requests go
	ClientPort6 = 546 // DHCPv6 client port, where replies go
)

// MinOut is the smallest out buffer [Server.Handle] writes into; the
// largest reply is a little over 1300 bytes (a DHCPv6 reply is kept within
// the IPv6 minimum MTU).
const MinOut = 1500

// infinity is the "never expires" value of DHCP lease times and of
// DHCPv6 T1, T2 and lifetimes.
const infinity = 0xffffffff

// infiniteDuration is infinity as the time.Duration the library encodes.
const infiniteDuration = time.Duration(infinity) * time.Second

// Config is what the servers hand out. Fields for a family that is not in
// use may be left zero.
type Config struct {
	// OurMAC is the source MAC address of replies and, for DHCPv6, part of
	// the server DUID.
	OurMAC packet.MAC

	// Addr4 is the address (yiaddr) and prefix length (option 1) assigned
	// to the guest. DHCPv4 is not answered when it is not a valid IPv4
	// prefix.
	Addr4 netip.Prefix
	// Gateway4 is the router (option 3), the server identifier (option 54)
	// and the source address of DHCPv4 replies. DHCPv4 is not answered
	// when it is not a valid IPv4 address.
	Gateway4 netip.Addr
	// DNS4 are the resolvers (option 6); none leaves the option out.
	DNS4 []netip.Addr
	// Search is the domain search list: DHCPv4 option 119 (RFC 3397) and
	// DHCPv6 option 24 (RFC 3646). Invalid names are skipped.
	Search []string
	// MTU is sent as option 26 when non-zero.
	MTU int
	// Hostname is sent as option 12 and FQDN as option 81 (DHCPv4) and 39
	// (DHCPv6), when set.
	Hostname, FQDN string

	// Addr6 is the address assigned in IA_NA options. When invalid, only
	// INFORMATION-REQUEST is answered.
	Addr6 netip.Addr
	// OurLinkLocal6 is the source address of DHCPv6 replies; when invalid,
	// the EUI-64 link-local address of OurMAC is used.
	OurLinkLocal6 netip.Addr
	// DNS6 are the resolvers of DHCPv6 option 23; none leaves it out.
	DNS6 []netip.Addr

	// NoDHCP and NoDHCPv6 disable the servers: requests are still
	// recognised by IsRequest (and so not forwarded) but never answered.
	NoDHCP, NoDHCPv6 bool
}

// Server answers the guest's DHCP and DHCPv6 requests. It holds no state
// that changes after New, so Handle may be called concurrently.
type Server struct {
	Config
	duid []byte // our DHCPv6 DUID, DUID-LLT
}

// New returns a server handing out cfg. The DHCPv6 server DUID is a
// DUID-LLT of OurMAC stamped with the current time, as passt does.
func New(cfg Config) *Server {
	return newAt(cfg, time.Now())
}

// duidEpoch is the time origin of DUID-LLT timestamps (RFC 8415, 11.2).
var duidEpoch = time.Date(2000, time.January, 1, 0, 0, 0, 0, time.UTC)

func newAt(cfg Config, now time.Time) *Server {
	d := dhcpv6.DUIDLLT{
		HWType:        iana.HWTypeEthernet,
		Time:          uint32(now.Sub(duidEpoch) / time.Second),
		LinkLayerAddr: cfg.OurMAC[:],
	}
	if !cfg.OurLinkLocal6.IsValid() {
		m := cfg.OurMAC
		cfg.OurLinkLocal6 = netip.AddrFrom16([16]byte{0xfe, 0x80, 8: m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]})
	}
	return &Server{Config: cfg, duid: d.ToBytes()}
}

// ServerDUID returns a copy of the DUID the DHCPv6 server identifies
// itself with (the contents of its Server Identifier option).
func (s *Server) ServerDUID() []byte {
	return append([]byte(nil), s.duid...)
}

// IsRequest reports whether p is a message to a DHCP or DHCPv6 server:
// a UDP datagram over IPv4 to port 67, or over IPv6 to port 547. Like
// passt, gopasst consumes all of them, answered or not, so none reaches
// the UDP forwarder.
func IsRequest(p *packet.Parsed) bool {
	if p.Proto != packet.ProtoUDP || len(p.L4) < packet.UDPLen {
		return false
	}
	switch p.EtherType {
	case packet.EtherTypeIPv4:
		return p.DstPort == ServerPort4
	case packet.EtherTypeIPv6:
		return p.DstPort == ServerPort6
	}
	return false
}

// Handle answers p if it is a DHCP or DHCPv6 request the server should
// answer, writing the whole reply frame (Ethernet, IP, UDP, DHCP) into out
// and returning its length. It returns 0 when there is nothing to send:
// p is not a request (see [IsRequest]), the server is disabled, or the
// message is malformed or of a kind that gets no answer, or it comes from
// a zero or multicast MAC address, which no client has (the reply goes
// back to the request's source MAC address). out must hold at least
// [MinOut] bytes.
func (s *Server) Handle(p *packet.Parsed, out []byte) int {
	if !IsRequest(p) || len(out) < MinOut || p.Src.IsZero() || p.Src.IsMulticast() {
		return 0
	}
	if p.EtherType == packet.EtherTypeIPv4 {
		return s.handle4(p, out)
	}
	return s.handle6(p, out)
}

// domainLabels splits a domain name into its labels, ignoring one final
// dot. It reports false for the root, empty labels, labels longer than 63
// bytes and names longer than 255 bytes in wire format.
func domainLabels(name string) ([]string, bool) {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name)+2 > 255 {
		return nil, false
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return nil, false
		}
	}
	return labels, true
}
