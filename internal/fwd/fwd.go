// Package fwd decides where a new flow goes and how its addresses are
// translated: the NAT-free address mapping of passt and pasta.
//
// # Theory of operation
//
// The guest (or namespace) shares the host's addresses, so most traffic is
// forwarded with its addresses unchanged: a datagram from the guest to
// 198.51.100.1 leaves the host from a socket connected to 198.51.100.1, and
// a datagram from a remote peer reaches the guest from that peer's address.
//
// Two mappings make the host itself reachable:
//
//   - Outbound, the guest's default gateway address (and our link-local
//     address, the router of router advertisements) stands for the host:
//     datagrams to it are sent to the host's loopback (127.0.0.1 or ::1),
//     unless --no-map-gw.
//   - Inbound, datagrams from the host's loopback or from one of the host's
//     own addresses, which the guest could not tell from its own, appear to
//     come from the gateway address.
//
// [Rules] holds the configuration, [Guest] what has been learnt about the
// guest from its frames (its MAC address and the addresses it uses), and the
// two functions [Rules.FromTap] and [Rules.FromHost] compute the target side
// of a new flow from its initiating side.
package fwd

import (
	"net/netip"
	"sync/atomic"

	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/packet"
)

// Rules is the forwarding configuration.
type Rules struct {
	// Gateway4 and Gateway6 are the guest's gateway addresses.
	Gateway4, Gateway6 netip.Addr
	// RouterLL6 is our link-local address, the router that router
	// advertisements name; it stands for the host like the gateway does.
	RouterLL6 netip.Addr
	// NoMapGW disables the gateway ↔ host loopback mapping.
	NoMapGW bool
	// HostAddrs are the host's own addresses: datagrams from them appear to
	// the guest as coming from the gateway.
	HostAddrs []netip.Addr
	// Outbound4 and Outbound6, when valid, are bound by outbound sockets.
	Outbound4, Outbound6 netip.Addr
	// IPv4 and IPv6 say which families are enabled.
	IPv4, IPv6 bool
}

var (
	loop4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	loop6 = netip.IPv6Loopback()
)

// Verdict explains a refusal to forward.
type Verdict uint8

// Reasons a flow is not created.
const (
	OK          Verdict = iota
	BadSource           // source address not unicast or port zero
	BadDest             // destination multicast, broadcast, unspecified or port zero
	FamilyOff           // address family disabled
	Unmappable          // loopback source with no gateway to stand for it
	NumVerdicts         // number of verdicts
)

// FromTap computes the host side of a flow that the guest initiated with the
// datagram described by ini (EAddr:EPort the guest's source, FAddr:FPort the
// destination it used). The target's FAddr is the address to bind (possibly
// unspecified) and FPort the guest's source port, kept where possible.
func (r *Rules) FromTap(ini flow.Side) (flow.Side, Verdict) {
	if !unicast(ini.EAddr) || ini.EPort == 0 {
		return flow.Side{}, BadSource
	}
	if !unicast(ini.FAddr) || ini.FPort == 0 || ini.FAddr.IsLinkLocalUnicast() && !r.isGateway(ini.FAddr) {
		return flow.Side{}, BadDest
	}
	if !r.familyOn(ini.FAddr) {
		return flow.Side{}, FamilyOff
	}
	tgt := flow.Side{EAddr: ini.FAddr, EPort: ini.FPort, FPort: ini.EPort}
	if !r.NoMapGW && r.isGateway(ini.FAddr) {
		if ini.FAddr.Is4() {
			tgt.EAddr = loop4
		} else {
			tgt.EAddr = loop6
		}
	}
	switch {
	case tgt.EAddr.Is4() && r.Outbound4.IsValid() && !tgt.EAddr.IsLoopback():
		tgt.FAddr = r.Outbound4
	case tgt.EAddr.Is6() && r.Outbound6.IsValid() && !tgt.EAddr.IsLoopback():
		tgt.FAddr = r.Outbound6
	case tgt.EAddr.Is4():
		tgt.FAddr = netip.IPv4Unspecified()
	default:
		tgt.FAddr = netip.IPv6Unspecified()
	}
	return tgt, OK
}

// FromHost computes the guest side of a flow initiated by a datagram that a
// listening socket received: ini.EAddr:EPort is the sender, ini.FPort the
// port it was sent to, guestPort the port it is forwarded to. The guest's
// address comes from g.
func (r *Rules) FromHost(ini flow.Side, guestPort uint16, g *Guest) (flow.Side, Verdict) {
	if !unicast(ini.EAddr) || ini.EPort == 0 {
		return flow.Side{}, BadSource
	}
	if !r.familyOn(ini.EAddr) {
		return flow.Side{}, FamilyOff
	}
	tgt := flow.Side{EPort: guestPort, FPort: ini.EPort, FAddr: ini.EAddr}
	if ini.EAddr.Is4() {
		tgt.EAddr = g.Addr4()
	} else {
		tgt.EAddr = g.Addr6()
	}
	if !tgt.EAddr.IsValid() {
		return flow.Side{}, FamilyOff
	}
	if ini.EAddr.IsLoopback() || r.isHostAddr(ini.EAddr) {
		gw := r.Gateway6
		if ini.EAddr.Is4() {
			gw = r.Gateway4
		}
		if r.NoMapGW || !gw.IsValid() {
			return flow.Side{}, Unmappable
		}
		tgt.FAddr = gw
	}
	return tgt, OK
}

func (r *Rules) isGateway(a netip.Addr) bool {
	return a.IsValid() && (a == r.Gateway4 || a == r.Gateway6 || a == r.RouterLL6)
}

func (r *Rules) isHostAddr(a netip.Addr) bool {
	for _, h := range r.HostAddrs {
		if h == a {
			return true
		}
	}
	return false
}

func (r *Rules) familyOn(a netip.Addr) bool {
	if a.Is4() {
		return r.IPv4
	}
	return r.IPv6
}

// unicast reports whether a can be the address of a single peer.
func unicast(a netip.Addr) bool {
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
		return false
	}
	if a.Is4() {
		b := a.As4()
		return b != [4]byte{255, 255, 255, 255}
	}
	return true
}

// Guest is what gopasst has learnt about the guest from its frames. It is
// safe for concurrent use: the tap reader writes it, the socket loop reads
// it.
type Guest struct {
	mac   atomic.Uint64
	addr4 atomic.Pointer[netip.Addr]
	addr6 atomic.Pointer[netip.Addr]
}

// NewGuest starts with the configured addresses (either may be invalid).
func NewGuest(addr4, addr6 netip.Addr) *Guest {
	g := &Guest{}
	g.addr4.Store(&addr4)
	g.addr6.Store(&addr6)
	return g
}

// MAC is the guest's MAC address, broadcast until one was seen.
func (g *Guest) MAC() packet.MAC {
	v := g.mac.Load()
	if v == 0 {
		return packet.BroadcastMAC
	}
	var m packet.MAC
	for i := range m {
		m[i] = byte(v >> (40 - 8*i))
	}
	return m
}

// SeeMAC records the source MAC address of a frame from the guest.
func (g *Guest) SeeMAC(m packet.MAC) {
	if m.IsMulticast() || m.IsZero() {
		return
	}
	var v uint64
	for _, b := range m {
		v = v<<8 | uint64(b)
	}
	if g.mac.Load() != v {
		g.mac.Store(v)
	}
}

// ForgetMAC goes back to sending to the broadcast address until the next
// frame from the guest (a new guest connected).
func (g *Guest) ForgetMAC() { g.mac.Store(0) }

// Addr4 is the IPv4 address the guest was last seen using.
func (g *Guest) Addr4() netip.Addr { return *g.addr4.Load() }

// Addr6 is the global IPv6 address the guest was last seen using.
func (g *Guest) Addr6() netip.Addr { return *g.addr6.Load() }

// SeeAddr records the source address of a datagram from the guest. For
// IPv6 only global unicast addresses are kept: replies to a link-local
// address could not be routed by the guest's peers.
func (g *Guest) SeeAddr(a netip.Addr) {
	if !unicast(a) {
		return
	}
	p := &g.addr4
	if a.Is6() {
		if a.IsLinkLocalUnicast() {
			return
		}
		p = &g.addr6
	}
	if *p.Load() != a {
		p.Store(&a)
	}
}
