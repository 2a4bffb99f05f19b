package netns

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Uplink describes the host interface(s) pasta derives the namespace's
// addresses and routes from.
//
// IPv4 and IPv6 are looked up independently and may end up on different
// interfaces: Ifindex4/Ifname4 and Ifindex6/Ifname6 tell which. Ifname,
// Ifindex and MTU describe the IPv4 interface if there is one, the IPv6
// interface otherwise; all are zero if neither family has a usable
// interface.
type Uplink struct {
	// Ifname, Ifindex and MTU describe the primary interface.
	Ifname  string
	Ifindex int
	MTU     int

	// Addr4 is the most specific non-deprecated IPv4 address on the IPv4
	// interface; zero if none.
	Addr4 netip.Prefix
	// Gateway4 is the gateway of the IPv4 default route on that interface;
	// zero if none.
	Gateway4 netip.Addr

	// Addr6 is the most specific non-deprecated global (not link-local)
	// IPv6 address on the IPv6 interface; zero if none.
	Addr6 netip.Prefix
	// Gateway6 is the gateway of the IPv6 default route on that interface;
	// zero if none.
	Gateway6 netip.Addr
	// LinkLocal6 is the host's link-local address on the IPv6 interface,
	// if any.
	LinkLocal6 netip.Addr

	// Ifname4 and Ifindex4 identify the interface IPv4 information comes
	// from (zero if none).
	Ifname4  string
	Ifindex4 int
	// Ifname6 and Ifindex6 identify the interface IPv6 information comes
	// from (zero if none).
	Ifname6  string
	Ifindex6 int
}

// HostUplink inspects, read-only, the network namespace of the calling thread
// (normally the init namespace) and picks, for each IP version, the
// interface to take addresses and routes from, following the reference's
// rules for -i, -a and -g:
//
//   - if ifname is not empty, that interface, for both versions;
//   - otherwise the interface of the first default route of that version
//     (main table, unicast; for a multipath route its first next hop);
//   - failing that, the first interface with any route of that version.
//
// Loopback and routes to link-local destinations are ignored. The gateway is
// the one of the first default route using the chosen interface; for a
// multipath route, the first next hop with the highest weight (which, as in
// the reference, may be on another interface than the first next hop).
//
// A family without a usable interface leaves its fields zero; that is not an
// error. Calling HostUplink inside NS.Do inspects that namespace instead.
func HostUplink(ifname string) (Uplink, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Uplink{}, fmt.Errorf("netns: netlink: %w", err)
	}
	defer h.Close()

	var u Uplink
	if ifname != "" {
		link, err := h.LinkByName(ifname)
		if err != nil {
			return Uplink{}, fmt.Errorf("netns: interface %s: %w", ifname, err)
		}
		u.Ifindex4, u.Ifindex6 = link.Attrs().Index, link.Attrs().Index
	} else {
		if u.Ifindex4, err = externalIf(h, netlink.FAMILY_V4); err != nil {
			return Uplink{}, err
		}
		if u.Ifindex6, err = externalIf(h, netlink.FAMILY_V6); err != nil {
			return Uplink{}, err
		}
	}

	if u.Ifindex4 != 0 {
		link, err := h.LinkByIndex(u.Ifindex4)
		if err != nil {
			return Uplink{}, fmt.Errorf("netns: interface %d: %w", u.Ifindex4, err)
		}
		u.Ifname4 = link.Attrs().Name
		u.Ifname, u.Ifindex, u.MTU = link.Attrs().Name, link.Attrs().Index, link.Attrs().MTU
		if u.Gateway4, err = defaultGateway(h, netlink.FAMILY_V4, u.Ifindex4); err != nil {
			return Uplink{}, err
		}
		if u.Addr4, _, err = ifAddrs(h, link, netlink.FAMILY_V4); err != nil {
			return Uplink{}, err
		}
	}
	if u.Ifindex6 != 0 {
		link, err := h.LinkByIndex(u.Ifindex6)
		if err != nil {
			return Uplink{}, fmt.Errorf("netns: interface %d: %w", u.Ifindex6, err)
		}
		u.Ifname6 = link.Attrs().Name
		if u.Ifindex == 0 {
			u.Ifname, u.Ifindex, u.MTU = link.Attrs().Name, link.Attrs().Index, link.Attrs().MTU
		}
		if u.Gateway6, err = defaultGateway(h, netlink.FAMILY_V6, u.Ifindex6); err != nil {
			return Uplink{}, err
		}
		if u.Addr6, u.LinkLocal6, err = ifAddrs(h, link, netlink.FAMILY_V6); err != nil {
			return Uplink{}, err
		}
	}
	return u, nil
}

// mainRoutes lists the unicast routes of the main table for family.
func mainRoutes(h *netlink.Handle, family int) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST}
	routes, err := h.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	if err != nil {
		return nil, fmt.Errorf("netns: listing routes: %w", err)
	}
	return routes, nil
}

// isDefault reports whether r is a default route (zero-length destination).
func isDefault(r *netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// externalIf returns the index of the interface of the first default route
// for family or, failing that, of the first interface with any route; 0 if
// there is none.
func externalIf(h *netlink.Handle, family int) (int, error) {
	routes, err := mainRoutes(h, family)
	if err != nil {
		return 0, err
	}
	var defIf, anyIf int
	for i := range routes {
		r := &routes[i]
		ifindex := r.LinkIndex
		if len(r.MultiPath) > 0 {
			ifindex = r.MultiPath[0].LinkIndex
		}
		if ifindex == 0 || ifindex == 1 { // no device, or "lo"
			continue
		}
		if r.Dst != nil && linkLocalNet(r.Dst) {
			continue
		}
		if isDefault(r) {
			if defIf == 0 {
				defIf = ifindex
			}
		} else if anyIf == 0 {
			anyIf = ifindex
		}
	}
	if defIf != 0 {
		return defIf, nil
	}
	return anyIf, nil
}

// linkLocalNet reports whether the destination is within 169.254.0.0/16 or
// fe80::/10.
func linkLocalNet(dst *net.IPNet) bool {
	ones, _ := dst.Mask.Size()
	a, ok := netip.AddrFromSlice(dst.IP)
	if !ok {
		return false
	}
	a = a.Unmap()
	if a.Is4() {
		return ones >= 16 && a.IsLinkLocalUnicast()
	}
	return ones >= 10 && a.IsLinkLocalUnicast()
}

// defaultGateway returns the gateway of the first default route using
// ifindex.
func defaultGateway(h *netlink.Handle, family, ifindex int) (netip.Addr, error) {
	routes, err := mainRoutes(h, family)
	if err != nil {
		return netip.Addr{}, err
	}
	for i := range routes {
		r := &routes[i]
		if !isDefault(r) {
			continue
		}
		if len(r.MultiPath) == 0 {
			if r.LinkIndex != ifindex || r.Gw == nil {
				continue
			}
			if gw, ok := ipAddr(r.Gw); ok {
				return gw, nil
			}
			continue
		}
		// Multipath route using our interface: as documented for the
		// reference's -g, the first next hop with the highest weight
		// in the whole set (rtnh_hops is weight - 1).
		uses := false
		for _, nh := range r.MultiPath {
			uses = uses || nh.LinkIndex == ifindex
		}
		if !uses {
			continue
		}
		var best netip.Addr
		bestHops := -1
		for _, nh := range r.MultiPath {
			if nh.Gw == nil || nh.Hops <= bestHops {
				continue
			}
			if gw, ok := ipAddr(nh.Gw); ok {
				best, bestHops = gw, nh.Hops
			}
		}
		if best.IsValid() {
			return best, nil
		}
	}
	return netip.Addr{}, nil
}

// ifAddrs returns the most specific non-deprecated address of family on link
// (global or site scope only, for IPv6) and, for IPv6, the most specific
// link-local address.
func ifAddrs(h *netlink.Handle, link netlink.Link, family int) (global netip.Prefix, ll netip.Addr, err error) {
	addrs, err := h.AddrList(link, family)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("netns: listing addresses of %s: %w", link.Attrs().Name, err)
	}
	bestBits, bestLLBits := 0, 0
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_DEPRECATED != 0 || a.IPNet == nil {
			continue
		}
		ip, ok := ipAddr(a.IPNet.IP)
		if !ok {
			continue
		}
		// For point-to-point addresses the prefix length is the peer's.
		bits, _ := a.IPNet.Mask.Size()
		if a.Peer != nil {
			bits, _ = a.Peer.Mask.Size()
		}
		if family == netlink.FAMILY_V6 && a.Scope == unix.RT_SCOPE_LINK {
			if !ll.IsValid() || bits > bestLLBits {
				ll, bestLLBits = ip, bits
			}
			continue
		}
		if family == netlink.FAMILY_V6 && a.Scope >= unix.RT_SCOPE_LINK {
			continue
		}
		if !global.IsValid() || bits > bestBits {
			global, bestBits = netip.PrefixFrom(ip, bits), bits
		}
	}
	return global, ll, nil
}

// ipAddr converts a net.IP as found in netlink attributes (4 bytes for IPv4,
// 16 for IPv6) to a netip.Addr; IPv4-mapped forms are unmapped.
func ipAddr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}
