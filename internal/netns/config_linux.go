package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IfConfig is the configuration Configure applies to an interface in the
// namespace, the equivalent of the reference's --config-net.
type IfConfig struct {
	// Ifname is the interface to configure (typically the tap).
	Ifname string
	// Up brings the interface (and "lo") up.
	Up bool
	// Addr4 is the IPv4 address and prefix length to assign; zero for none.
	Addr4 netip.Prefix
	// Gateway4 is the IPv4 default gateway; zero for no default route.
	Gateway4 netip.Addr
	// Addr6 is a global IPv6 address and prefix length to assign, without
	// duplicate address detection (IFA_F_NODAD); zero for none.
	Addr6 netip.Prefix
	// Gateway6 is the IPv6 default gateway, possibly link-local; zero for
	// no default route.
	Gateway6 netip.Addr
	// MTU is set on the interface if positive.
	MTU int
}

// Configure applies cfg to the interface cfg.Ifname in the namespace over
// rtnetlink, in the order the reference uses:
//
//   - "lo" is brought up (when cfg.Up);
//   - the MTU is set;
//   - the link is brought up; if IPv6 is configured, IFF_NOARP is set while
//     doing so, so that the kernel skips duplicate address detection for the
//     link-local address it generates, which is then marked IFA_F_NODAD and
//     IFF_NOARP cleared again (neighbour solicitation and ARP work normally
//     afterwards);
//   - the IPv4 address and default route via Gateway4 are added;
//   - the IPv6 address (IFA_F_NODAD) and default route via Gateway6 are
//     added.
//
// Default routes carry the interface as output device, so a link-local IPv6
// gateway works; a gateway outside any on-link prefix is retried with the
// onlink flag. Existing identical addresses and default routes are replaced,
// so Configure can be repeated. Failing to mark the link-local address NODAD
// is not an error (the reference only warns).
func (n *NS) Configure(cfg IfConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	h, err := n.NetlinkHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := configure(h, cfg); err != nil {
		return fmt.Errorf("netns: configuring %s in %s: %w", cfg.Ifname, n.path, err)
	}
	return nil
}

func (cfg IfConfig) validate() error {
	if cfg.Ifname == "" {
		return errors.New("netns: IfConfig without interface name")
	}
	if cfg.Addr4.IsValid() && !cfg.Addr4.Addr().Is4() {
		return fmt.Errorf("netns: Addr4 %v is not IPv4", cfg.Addr4)
	}
	if cfg.Gateway4.IsValid() && !cfg.Gateway4.Is4() {
		return fmt.Errorf("netns: Gateway4 %v is not IPv4", cfg.Gateway4)
	}
	if cfg.Addr6.IsValid() && !(cfg.Addr6.Addr().Is6() && !cfg.Addr6.Addr().Is4In6()) {
		return fmt.Errorf("netns: Addr6 %v is not IPv6", cfg.Addr6)
	}
	if cfg.Gateway6.IsValid() && !(cfg.Gateway6.Is6() && !cfg.Gateway6.Is4In6()) {
		return fmt.Errorf("netns: Gateway6 %v is not IPv6", cfg.Gateway6)
	}
	return nil
}

func configure(h *netlink.Handle, cfg IfConfig) error {
	if cfg.Up {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bringing up loopback: %w", err)
		}
	}

	link, err := h.LinkByName(cfg.Ifname)
	if err != nil {
		return err
	}
	ifindex := link.Attrs().Index

	if cfg.MTU > 0 {
		if err := h.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("setting MTU %d: %w", cfg.MTU, err)
		}
	}

	ip6 := cfg.Addr6.IsValid() || cfg.Gateway6.IsValid()
	noarp := cfg.Up && ip6 && link.Attrs().RawFlags&unix.IFF_NOARP == 0
	if cfg.Up {
		if noarp {
			if err := h.LinkSetARPOff(link); err != nil {
				return fmt.Errorf("setting IFF_NOARP: %w", err)
			}
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("bringing link up: %w", err)
		}
	}

	if cfg.Addr4.IsValid() {
		if err := h.AddrReplace(link, prefixAddr(cfg.Addr4, 0)); err != nil {
			return fmt.Errorf("adding address %v: %w", cfg.Addr4, err)
		}
	}
	if cfg.Gateway4.IsValid() {
		if err := setDefaultRoute(h, ifindex, cfg.Gateway4); err != nil {
			return err
		}
	}

	if noarp {
		// Best effort, as in the reference: keep the kernel from
		// starting DAD on the link-local address later on.
		_ = setLinkLocalNoDAD(h, link)
		if err := h.LinkSetARPOn(link); err != nil {
			return fmt.Errorf("clearing IFF_NOARP: %w", err)
		}
	}

	if cfg.Addr6.IsValid() {
		if err := h.AddrReplace(link, prefixAddr(cfg.Addr6, unix.IFA_F_NODAD)); err != nil {
			return fmt.Errorf("adding address %v: %w", cfg.Addr6, err)
		}
	}
	if cfg.Gateway6.IsValid() {
		if err := setDefaultRoute(h, ifindex, cfg.Gateway6); err != nil {
			return err
		}
	}
	return nil
}

// prefixAddr converts p (keeping its host bits) to a netlink address.
func prefixAddr(p netip.Prefix, flags int) *netlink.Addr {
	a := p.Addr().Unmap()
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())},
		Flags: flags,
	}
}

// setDefaultRoute installs (or replaces) a main-table default route via gw
// out of ifindex. If the kernel refuses the gateway as not directly
// reachable, the route is retried with the onlink flag.
func setDefaultRoute(h *netlink.Handle, ifindex int, gw netip.Addr) error {
	gw = gw.Unmap()
	r := &netlink.Route{
		LinkIndex: ifindex,
		Dst:       &net.IPNet{IP: make(net.IP, gw.BitLen()/8), Mask: net.CIDRMask(0, gw.BitLen())},
		Gw:        gw.AsSlice(),
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  unix.RTPROT_BOOT,
		Scope:     netlink.SCOPE_UNIVERSE,
		Type:      unix.RTN_UNICAST,
	}
	err := h.RouteReplace(r)
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.EINVAL) {
		r.Flags = int(netlink.FLAG_ONLINK)
		if err2 := h.RouteReplace(r); err2 == nil {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("adding default route via %v: %w", gw, err)
	}
	return nil
}

// setLinkLocalNoDAD re-applies every link-scoped IPv6 address of link with
// IFA_F_NODAD added to its flags.
func setLinkLocalNoDAD(h *netlink.Handle, link netlink.Link) error {
	addrs, err := h.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_LINK || a.Flags&unix.IFA_F_NODAD != 0 {
			continue
		}
		na := &netlink.Addr{
			IPNet: a.IPNet,
			Flags: a.Flags | unix.IFA_F_NODAD,
			Scope: unix.RT_SCOPE_LINK,
		}
		if err := h.AddrReplace(link, na); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
