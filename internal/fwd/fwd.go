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
// A few mappings make the host itself reachable:
//
//   - Outbound, one address stands for the host (--map-host-loopback; by
//     default the guest's gateway, and with it our link-local address, the
//     router of router advertisements): datagrams to it are sent to the
//     host's loopback (127.0.0.1 or ::1), unless --no-map-gw.
//   - Inbound, datagrams from the host's loopback or from one of the host's
//     own addresses, which the guest could not tell from its own, appear to
//     come from that address.
//   - --map-guest-addr names an address that stands for the host's own
//     address, which the guest's shadows (it was given the same one).
//   - DNS to the --dns-forward address goes to the host's resolver
//     (--dns-host), which may live on the host's loopback.
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
	// MapHostLoopback4 and MapHostLoopback6 stand for the host: the guest
	// reaches the host's loopback through them, and datagrams from the
	// host's loopback (and its own addresses) appear to come from them.
	// By default the gateway (--map-host-loopback; --no-map-gw: none).
	MapHostLoopback4, MapHostLoopback6 netip.Addr
	// RouterLL6 is our link-local address, the router that router
	// advertisements name; it stands for the host like MapHostLoopback6.
	RouterLL6 netip.Addr
	// MapGuestAddr4 and MapGuestAddr6 (--map-guest-addr) stand for the
	// address the guest was assigned (GuestAddr4, GuestAddr6) as the host
	// has it: the guest's own address shadows the host's otherwise.
	MapGuestAddr4, MapGuestAddr6 netip.Addr
	GuestAddr4, GuestAddr6       netip.Addr
	// DNSMatch4 and DNSMatch6 (--dns-forward) redirect DNS (port 53) to
	// DNSHost4 and DNSHost6 (--dns-host, or the host's first resolver).
	DNSMatch4, DNSMatch6 netip.Addr
	DNSHost4, DNSHost6   netip.Addr
	// HostAddrs are the host's own addresses: datagrams from them appear to
	// the guest as coming from MapHostLoopback.
	HostAddrs []netip.Addr
	// OurTapAddr4 and OurTapLL6 are where the host's loopback and own
	// addresses appear from when nothing above stands for them (with
	// --no-map-gw, as podman runs pasta: its --map-guest-addr is IPv4
	// only): the gateway, and our link-local address, as the reference's
	// our_tap_addr and our_tap_ll. Invalid: such flows are Unmappable.
	OurTapAddr4, OurTapLL6 netip.Addr
	// Outbound4 and Outbound6, when valid, are bound by outbound sockets
	// (-o); OutboundIf4 and OutboundIf6 name their device (--outbound-if4/6).
	Outbound4, Outbound6     netip.Addr
	OutboundIf4, OutboundIf6 string
	// IPv4 and IPv6 say which families are enabled.
	IPv4, IPv6 bool
	// Splice sends datagrams from the host's loopback to forwarded ports
	// socket to socket into the namespace (pasta, unless --no-splice):
	// to the namespace's own address, or to its loopback with
	// HostLoToNSLo (--host-lo-to-ns-lo).
	Splice, HostLoToNSLo bool
}

var (
	loop4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	loop6 = netip.IPv6Loopback()
)

// dnsPort is where --dns-forward applies.
const dnsPort = 53

// Verdict explains a refusal to forward.
type Verdict uint8

// Reasons a flow is not created.
const (
	OK          Verdict = iota
	BadSource           // source address not unicast or port zero
	BadDest             // destination multicast, broadcast, unspecified or port zero
	FamilyOff           // address family disabled
	Unmappable          // host-local source with no address to stand for it
	NumVerdicts         // number of verdicts
)

// FromTap computes the host side of a flow that the guest initiated with the
// datagram described by ini (EAddr:EPort the guest's source, FAddr:FPort the
// destination it used). The target's FAddr is the address to bind (possibly
// unspecified) and FPort the guest's source port, kept where possible.
//
// Loopback addresses never come from the guest's link: the guest reaches
// the host's loopback only through the address that stands for it, so that
// --no-map-gw keeps it out, and a datagram to or from a loopback address is
// refused (its replies would reach the guest from a loopback address).
func (r *Rules) FromTap(ini flow.Side) (flow.Side, Verdict) {
	if ini.EPort == 0 {
		return flow.Side{}, BadSource
	}
	if ini.FPort == 0 {
		return flow.Side{}, BadDest
	}
	return r.FromTapEcho(ini)
}

// FromTapEcho is FromTap for protocols whose "ports" are identifiers that
// may take any value (ICMP echo): only the addresses are vetted and
// translated, and DNS redirection, which is for port 53, does not apply
// unless FPort is 53.
func (r *Rules) FromTapEcho(ini flow.Side) (flow.Side, Verdict) {
	if !r.GuestSource(ini.EAddr) {
		return flow.Side{}, BadSource
	}
	if !unicast(ini.FAddr) || ini.FAddr.IsLoopback() {
		return flow.Side{}, BadDest
	}
	if !r.familyOn(ini.FAddr) {
		return flow.Side{}, FamilyOff
	}
	dst, ok := r.outbound(ini.FAddr, ini.FPort)
	if !ok {
		return flow.Side{}, BadDest
	}
	tgt := flow.Side{EAddr: dst, EPort: ini.FPort, FPort: ini.EPort}
	switch {
	case dst.Is4() && r.Outbound4.IsValid() && !dst.IsLoopback():
		tgt.FAddr = r.Outbound4
	case dst.Is6() && r.Outbound6.IsValid() && !dst.IsLoopback():
		tgt.FAddr = r.Outbound6
	case dst.Is4():
		tgt.FAddr = netip.IPv4Unspecified()
	default:
		tgt.FAddr = netip.IPv6Unspecified()
	}
	return tgt, OK
}

// outbound translates the destination the guest used into the one on the
// host; it fails for addresses the host cannot reach (link-local ones that
// stand for nothing).
func (r *Rules) outbound(a netip.Addr, port uint16) (netip.Addr, bool) {
	v4 := a.Is4()
	pick := func(a4, a6 netip.Addr) netip.Addr {
		if v4 {
			return a4
		}
		return a6
	}
	if m := pick(r.DNSMatch4, r.DNSMatch6); port == dnsPort && m.IsValid() && a == m {
		if h := pick(r.DNSHost4, r.DNSHost6); h.IsValid() {
			return h, true
		}
	}
	if m := pick(r.MapHostLoopback4, r.MapHostLoopback6); m.IsValid() && (a == m || !v4 && a == r.RouterLL6) {
		return pick(loop4, loop6), true
	}
	if m := pick(r.MapGuestAddr4, r.MapGuestAddr6); m.IsValid() && a == m {
		if g := pick(r.GuestAddr4, r.GuestAddr6); g.IsValid() {
			return g, true
		}
	}
	if a.IsLinkLocalUnicast() {
		return netip.Addr{}, false
	}
	return a, true
}

// OutboundIf is the device outbound sockets to dst are bound to, or "".
func (r *Rules) OutboundIf(dst netip.Addr) string {
	switch {
	case dst.IsLoopback():
		return ""
	case dst.Is4():
		return r.OutboundIf4
	}
	return r.OutboundIf6
}

// FromHost computes the target side of a flow initiated by a datagram
// that a listening socket received: ini.EAddr:EPort is the sender, ini.FPort
// the port it was sent to, guestPort the port it is forwarded to. The
// target is the tap (the guest's address comes from g) or, for a sender on
// the host's loopback with Splice, a socket in the namespace.
func (r *Rules) FromHost(ini flow.Side, guestPort uint16, g *Guest) (flow.PIF, flow.Side, Verdict) {
	if !unicast(ini.EAddr) || ini.EPort == 0 {
		return flow.PIFNone, flow.Side{}, BadSource
	}
	if !r.familyOn(ini.EAddr) {
		return flow.PIFNone, flow.Side{}, FamilyOff
	}
	v4 := ini.EAddr.Is4()
	tgt := flow.Side{EPort: guestPort, FPort: ini.EPort, FAddr: ini.EAddr}
	if v4 {
		tgt.EAddr = g.Addr4()
	} else {
		tgt.EAddr = g.Addr6()
	}
	if r.Splice && ini.EAddr.IsLoopback() {
		return flow.PIFSplice, r.spliceTarget(tgt), OK
	}
	if !tgt.EAddr.IsValid() {
		return flow.PIFNone, flow.Side{}, FamilyOff
	}
	mapHost, mapGuest, guestAddr := r.MapHostLoopback6, r.MapGuestAddr6, r.GuestAddr6
	if v4 {
		mapHost, mapGuest, guestAddr = r.MapHostLoopback4, r.MapGuestAddr4, r.GuestAddr4
	}
	switch src := ini.EAddr; {
	case mapGuest.IsValid() && src == guestAddr:
		tgt.FAddr = mapGuest
	case src.IsLoopback() || r.isHostAddr(src):
		if !mapHost.IsValid() {
			// A link-local source reaches the guest's global address
			// too: the guest answers it on the link it came from.
			mapHost = r.OurTapLL6
			if v4 {
				mapHost = r.OurTapAddr4
			}
		}
		if !mapHost.IsValid() {
			return flow.PIFNone, flow.Side{}, Unmappable
		}
		tgt.FAddr = mapHost
	}
	return flow.PIFTap, tgt, OK
}

// spliceTarget completes the namespace side of a flow from the host's
// loopback (pasta's splice path) whose EAddr is the namespace's address
// (invalid if unknown) and FPort the client's port. The namespace is
// reached at its own address, or at its loopback with HostLoToNSLo (or
// when it has no address of the family). The source address is left
// unspecified, for the kernel to pick the one it would use towards that
// destination: the namespace's own address, or loopback. A loopback source
// towards a non-loopback destination would be a pair no server can answer:
// its reply, or its socket connected to the client, would leave from a
// loopback address, which the flow's socket does not take. The client's
// port is kept (where free). TCP and UDP splice both use this pair.
func (r *Rules) spliceTarget(tgt flow.Side) flow.Side {
	v4 := tgt.FAddr.Is4()
	if r.HostLoToNSLo || !tgt.EAddr.IsValid() {
		tgt.EAddr = loop6
		if v4 {
			tgt.EAddr = loop4
		}
	}
	tgt.FAddr = netip.IPv6Unspecified()
	if v4 {
		tgt.FAddr = netip.IPv4Unspecified()
	}
	return tgt
}

// FromSplice computes the host side of a flow initiated by a datagram that
// a listening socket in the namespace (-U) received from ini.EAddr:EPort:
// it goes to the host's loopback address the datagram was sent to, on
// hostPort, from the same loopback source address and port.
func (r *Rules) FromSplice(ini flow.Side, hostPort uint16) (flow.Side, Verdict) {
	if !ini.EAddr.IsLoopback() || ini.EPort == 0 {
		return flow.Side{}, BadSource
	}
	dst := ini.FAddr
	if !dst.IsLoopback() {
		dst = loop6
		if ini.EAddr.Is4() {
			dst = loop4
		}
	}
	return flow.Side{EAddr: dst, EPort: hostPort, FAddr: ini.EAddr, FPort: ini.EPort}, OK
}

// StandsForHost reports whether the guest reaches the host itself at a:
// the addresses mapped to its loopback or its own address.
func (r *Rules) StandsForHost(a netip.Addr) bool {
	m4, m6 := r.MapHostLoopback4, r.MapHostLoopback6
	return a.IsValid() && (a == m4 || a == m6 || a == r.RouterLL6 ||
		a == r.MapGuestAddr4 || a == r.MapGuestAddr6 || a == r.DNSMatch4 || a == r.DNSMatch6)
}

// Inbound translates an address on the host side into what the guest
// sees: the host's loopback and own addresses become the address that
// stands for the host. It fails when nothing stands for it.
func (r *Rules) Inbound(a netip.Addr) (netip.Addr, bool) {
	if !a.IsLoopback() && !r.isHostAddr(a) {
		return a, true
	}
	m := r.MapHostLoopback6
	if a.Is4() {
		m = r.MapHostLoopback4
	}
	return m, m.IsValid()
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

// GuestSource reports whether the guest may send from a: a unicast
// address that is not loopback, not in 0.0.0.0/8, and not one of the
// addresses that stand for the host (a guest posing as its gateway).
// Datagrams from other sources are dropped, and the guest's address is
// not learnt from them.
func (r *Rules) GuestSource(a netip.Addr) bool {
	if !unicast(a) || a.IsLoopback() || r.StandsForHost(a) {
		return false
	}
	return !a.Is4() || a.As4()[0] != 0
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
// address could not be routed by the guest's peers. Loopback addresses,
// which a guest's link never carries, are not kept either.
func (g *Guest) SeeAddr(a netip.Addr) {
	if !unicast(a) || a.IsLoopback() {
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
