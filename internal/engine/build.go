package engine

import (
	"net/netip"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/dhcp"
	"github.com/gopasst/gopasst/internal/frag"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/l2"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
	"github.com/gopasst/gopasst/internal/udp"
)

// Build assembles the data path for endpoint ep from the guest's network
// configuration n and the options: the guest state, the L2 responder, the
// DHCP and DHCPv6 servers and the UDP engine with its listening sockets.
// nsSocket creates sockets in pasta's namespace, for the splice path; nil
// (passt, or --no-splice) leaves the splice path out.
func Build(ep tap.Endpoint, n *netcfg.Net, cfg *conf.Config, st *stats.Counters, nsSocket udp.SocketFunc) (*Engine, error) {
	var a4, a6 netip.Addr
	if n.IPv4 {
		a4 = n.Addr4.Addr()
	}
	if n.IPv6 {
		a6 = n.Addr6.Addr()
	}
	guest := fwd.NewGuest(a4, a6)
	e := &Engine{
		EP: ep, Guest: guest, Stats: st, IPv4: n.IPv4, IPv6: n.IPv6, Frag: frag.New(),
		L2: &l2.Responder{OurMAC: n.OurMAC, Guest: guest, Prefix6: n.Addr6, MTU: cfg.MTU,
			NoNDP: cfg.NoNDP, NoRA: cfg.NoRA, Managed: !cfg.NoDHCPv6},
	}
	if cfg.AdvertiseDNS() {
		e.L2.DNS6 = n.DNS6
	}
	if cfg.AdvertiseSearch() {
		e.L2.Search = n.Search
	}
	dc := dhcp.Config{OurMAC: n.OurMAC, MTU: cfg.MTU, Hostname: cfg.Hostname, FQDN: cfg.FQDN,
		OurLinkLocal6: e.L2.LinkLocal(), NoDHCP: cfg.NoDHCP || !n.IPv4, NoDHCPv6: cfg.NoDHCPv6 || !n.IPv6}
	if n.IPv4 {
		dc.Addr4, dc.Gateway4 = n.Addr4, n.Gateway4
	}
	if n.IPv6 {
		dc.Addr6 = n.Addr6.Addr()
	}
	if cfg.AdvertiseDNS() {
		dc.DNS4, dc.DNS6 = n.DNS4, n.DNS6
	}
	if cfg.AdvertiseSearch() {
		dc.Search = n.Search
	}
	e.DHCP = dhcp.New(dc)
	if !n.IPv6 {
		e.L2.Prefix6 = netip.Prefix{}
	}
	if !cfg.NoUDP {
		rules := &fwd.Rules{
			MapHostLoopback4: n.MapHostLoopback4, MapHostLoopback6: n.MapHostLoopback6,
			MapGuestAddr4: n.MapGuestAddr4, MapGuestAddr6: n.MapGuestAddr6, GuestAddr4: a4, GuestAddr6: a6,
			DNSMatch4: n.DNSMatch4, DNSMatch6: n.DNSMatch6, DNSHost4: n.DNSHost4, DNSHost6: n.DNSHost6,
			HostAddrs: n.HostAddrs, Outbound4: cfg.Outbound4, Outbound6: cfg.Outbound6,
			OutboundIf4: cfg.OutboundIf4, OutboundIf6: cfg.OutboundIf6, IPv4: n.IPv4, IPv6: n.IPv6,
			Splice: nsSocket != nil, HostLoToNSLo: cfg.HostLoToNSLo,
		}
		forwards := n.Forwards
		if nsSocket != nil {
			forwards = append(forwards[:len(forwards):len(forwards)], n.NSForwards...)
		}
		if n.MapHostLoopback6.IsValid() {
			rules.RouterLL6 = e.L2.LinkLocal()
		}
		e.Rules = rules
		var err error
		e.UDP, err = udp.New(udp.Config{Rules: rules, Guest: guest, OurMAC: n.OurMAC, Tap: ep, Stats: st,
			Forwards: forwards, Timeout: n.Timeout, StreamTimeout: n.StreamTimeout, MaxFlows: cfg.MaxFlows,
			NSSocket: nsSocket, MTU: cfg.MTU, Router4: n.Gateway4, Router6: router6(n, e.L2.LinkLocal()),
			Offload: !cfg.NoOffload})
		if err != nil {
			return nil, err
		}
	}
	return e, nil
}

// router6 is the address IPv6 time-exceeded errors come from: the
// gateway, or our link-local address, the router of router advertisements.
func router6(n *netcfg.Net, ll netip.Addr) netip.Addr {
	if n.Gateway6.IsValid() {
		return n.Gateway6
	}
	return ll
}
