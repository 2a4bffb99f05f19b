// Package netcfg decides what the guest is given: its addresses, gateways,
// MTU, DNS resolvers and search list, the MAC address gopasst answers
// with, the forwarded ports and the flow timeouts. Both modes use it;
// pasta writes the result into the namespace over netlink, passt hands it
// out over DHCP, NDP and DHCPv6.
//
// # Theory of operation
//
// The guest copies the host: by default it gets the addresses and gateways
// of the host's uplink (the interface of the default route, or -i), so
// that from the network's point of view guest and host are one machine.
// Options override each piece (-a, -n, -g, -m, -M, -D, -S). Resolvers come
// from the host's resolv.conf; a resolver on the host's loopback cannot be
// reached from the guest by its own address, so the guest is told to use
// the gateway address instead (or the --dns-forward address), and DNS
// queries to that address are redirected to the resolver.
package netcfg

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netns"
	"github.com/gopasst/gopasst/internal/packet"
)

// DefaultMAC is the MAC address gopasst uses towards the guest, as the
// reference does.
var DefaultMAC = packet.MAC{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}

// Net is the guest's network configuration.
type Net struct {
	// Ifname is the name for the namespace's tap device (pasta).
	Ifname string
	// HostIfname is the host's uplink interface.
	HostIfname string
	MTU        int
	Addr4      netip.Prefix
	Gateway4   netip.Addr
	Addr6      netip.Prefix
	Gateway6   netip.Addr
	// IPv4 and IPv6 say which families are served.
	IPv4, IPv6 bool
	OurMAC     packet.MAC
	// HostAddrs are the host's own addresses.
	HostAddrs []netip.Addr
	// DNS4 and DNS6 are the resolvers to advertise, Search the domains.
	DNS4, DNS6 []netip.Addr
	Search     []string
	// MapHostLoopback4 and MapHostLoopback6 stand for the host's loopback
	// (--map-host-loopback, by default the gateway; invalid: none).
	MapHostLoopback4, MapHostLoopback6 netip.Addr
	// MapGuestAddr4 and MapGuestAddr6 are --map-guest-addr.
	MapGuestAddr4, MapGuestAddr6 netip.Addr
	// DNSMatch4 and DNSMatch6 are where the guest's DNS queries are taken
	// from (--dns-forward, or the address a host-local resolver is
	// advertised as), DNSHost4 and DNSHost6 where they go.
	DNSMatch4, DNSMatch6 netip.Addr
	DNSHost4, DNSHost6   netip.Addr
	// Forwards are the -u and -t listening sockets, NSForwards the -U
	// and -T ones (in the namespace, on its loopback).
	Forwards, NSForwards []fwd.Forward
	// Timeout and StreamTimeout expire UDP flows.
	Timeout, StreamTimeout time.Duration
}

// Derive computes the configuration from the options and the host.
func Derive(cfg *conf.Config) (*Net, error) {
	up, err := netns.HostUplink(cfg.Interface)
	if err != nil && cfg.Interface != "" {
		return nil, fmt.Errorf("interface %s: %w", cfg.Interface, err)
	}
	n := &Net{MTU: cfg.MTU, OurMAC: DefaultMAC, HostIfname: up.Ifname}
	if len(cfg.MAC) == 6 {
		n.OurMAC = packet.MAC(cfg.MAC)
	}
	n.Ifname = cfg.NSIfname
	if n.Ifname == "" {
		n.Ifname = up.Ifname
	}
	if n.Ifname == "" {
		n.Ifname = "tap0"
	}
	n.Addr4, n.Gateway4 = up.Addr4, up.Gateway4
	if cfg.Addr4.IsValid() {
		n.Addr4 = cfg.Addr4
	} else if cfg.PrefixLen4 >= 0 && n.Addr4.IsValid() {
		n.Addr4 = netip.PrefixFrom(n.Addr4.Addr(), cfg.PrefixLen4) // -n alone
	}
	if cfg.Gateway4.IsValid() {
		n.Gateway4 = cfg.Gateway4
	}
	n.Addr6, n.Gateway6 = up.Addr6, up.Gateway6
	if cfg.Addr6.IsValid() {
		n.Addr6 = netip.PrefixFrom(cfg.Addr6, 64)
	}
	if cfg.Gateway6.IsValid() {
		n.Gateway6 = cfg.Gateway6
	}
	n.IPv4 = !cfg.IPv6Only && n.Addr4.IsValid()
	n.IPv6 = !cfg.IPv4Only && n.Addr6.IsValid()
	if !n.IPv4 && !n.IPv6 {
		return nil, errors.New("no IPv4 or IPv6 address to give the guest: use -a")
	}
	n.HostAddrs = hostAddrs()
	n.Timeout, n.StreamTimeout = conntrackTimeouts()
	if cfg.UDPTimeout > 0 {
		n.Timeout, n.StreamTimeout = cfg.UDPTimeout, cfg.UDPTimeout
	}
	n.Forwards = ExpandForwards(fwd.UDP, cfg.UDPFwd, n.IPv4, n.IPv6)
	n.Forwards = append(n.Forwards, ExpandForwards(fwd.TCP, cfg.TCPFwd, n.IPv4, n.IPv6)...)
	n.NSForwards = ExpandNSForwards(fwd.UDP, cfg.UDPNSFwd, n.IPv4, n.IPv6)
	n.NSForwards = append(n.NSForwards, ExpandNSForwards(fwd.TCP, cfg.TCPNSFwd, n.IPv4, n.IPv6)...)
	n.mappings(cfg)
	n.dns(cfg)
	return n, nil
}

// mappings sets the addresses that stand for the host.
func (n *Net) mappings(cfg *conf.Config) {
	n.MapHostLoopback4, n.MapHostLoopback6 = cfg.MapHostLoopback4, cfg.MapHostLoopback6
	if !cfg.NoMapGW {
		if !n.MapHostLoopback4.IsValid() {
			n.MapHostLoopback4 = n.Gateway4
		}
		if !n.MapHostLoopback6.IsValid() {
			n.MapHostLoopback6 = n.Gateway6
		}
	}
	n.MapGuestAddr4, n.MapGuestAddr6 = cfg.MapGuestAddr4, cfg.MapGuestAddr6
	n.DNSMatch4, n.DNSMatch6 = cfg.DNSForward4, cfg.DNSForward6
	n.DNSHost4, n.DNSHost6 = cfg.DNSHost4, cfg.DNSHost6
}

// dns fills the resolvers and search list: -D and -S, or resolv.conf,
// and the DNS redirection (--dns-forward, --dns-host).
func (n *Net) dns(cfg *conf.Config) {
	var resolv []netip.Addr
	var domains []string
	if f, err := os.Open("/etc/resolv.conf"); err == nil {
		resolv, domains = ReadResolvConf(f)
		f.Close()
	}
	// The host's first resolver of each family is where redirected
	// queries go, unless --dns-host says otherwise.
	for _, r := range resolv {
		if r.Is4() && !n.DNSHost4.IsValid() {
			n.DNSHost4 = r
		}
		if r.Is6() && !n.DNSHost6.IsValid() {
			n.DNSHost6 = r
		}
	}
	servers := cfg.DNS
	if len(servers) == 0 && !cfg.DNSNone {
		servers = n.advertised(resolv)
	}
	for _, s := range servers {
		switch {
		case s.Is4() && n.IPv4:
			n.DNS4 = append(n.DNS4, s)
		case s.Is6() && n.IPv6:
			n.DNS6 = append(n.DNS6, s)
		}
	}
	n.Search = cfg.Search
	if len(n.Search) == 0 && !cfg.SearchNone {
		n.Search = domains
	}
}

// advertised turns the host's resolvers into what the guest is told. A
// resolver on the host's loopback, or one at the address that stands for
// the host (the gateway, when it is also the resolver), cannot be reached
// by that address from the guest: it is advertised as the --dns-forward
// address or, without one, as the address that stands for the host, and
// queries to that address are redirected to it.
func (n *Net) advertised(rs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, r := range rs {
		match, mapHost, host := &n.DNSMatch6, n.MapHostLoopback6, &n.DNSHost6
		if r.Is4() {
			match, mapHost, host = &n.DNSMatch4, n.MapHostLoopback4, &n.DNSHost4
		}
		if !r.IsLoopback() && r != mapHost {
			out = append(out, r)
			continue
		}
		if !match.IsValid() {
			if !mapHost.IsValid() {
				log.Debugf("DNS: resolver %s cannot be reached from the guest: not advertised", r)
				continue
			}
			*match = mapHost
		}
		if *host != r {
			log.Debugf("DNS: resolver %s is not the one queries are redirected to (%s): not advertised", r, *host)
			continue
		}
		out = append(out, *match)
	}
	return out
}

// ReadResolvConf returns the nameserver addresses and the search domains
// of a resolv.conf(5) file. Unparsable lines are skipped.
func ReadResolvConf(r io.Reader) (servers []netip.Addr, search []string) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			// A zone (fe80::1%eth0) cannot be given to the guest.
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Zone() == "" {
				servers = append(servers, a.Unmap())
			}
		case "search", "domain":
			search = nil
			for _, d := range f[1:] {
				if strings.HasPrefix(d, "#") || strings.HasPrefix(d, ";") {
					break
				}
				search = append(search, d)
			}
		}
	}
	return servers, search
}

// ExpandForwards turns the fixed rules of protocol proto's host side
// (-u, -t) into one listening socket per port and address family ("auto"
// ones are opened as ports get bound).
func ExpandForwards(proto fwd.Proto, f conf.Forward, v4, v6 bool) []fwd.Forward {
	return expand(proto, f, v4, v6, false)
}

// ExpandNSForwards turns the fixed rules of the namespace side (-U, -T)
// into listening sockets on the namespace's loopback, one per port and
// address family.
func ExpandNSForwards(proto fwd.Proto, f conf.Forward, v4, v6 bool) []fwd.Forward {
	return expand(proto, f, v4, v6, true)
}

func expand(proto fwd.Proto, f conf.Forward, v4, v6, splice bool) []fwd.Forward {
	if f.Mode != conf.FwdSpec && f.Mode != conf.FwdAuto {
		return nil
	}
	var out []fwd.Forward
	for _, r := range f.Rules {
		for p := uint32(r.First); p <= uint32(r.Last); p++ {
			to := uint16(uint32(r.ToFirst) + p - uint32(r.First))
			out = append(out, Listeners(proto, r.Addr, r.Ifname, uint16(p), to, v4, v6, splice)...)
		}
	}
	return out
}

// Listeners are the listening sockets that forward port to guest port to:
// one on addr if it is a specific address, otherwise one per enabled
// family on the wildcard address, or, for the namespace side of the
// splice path, on its loopback.
func Listeners(proto fwd.Proto, addr netip.Addr, ifname string, port, to uint16, v4, v6, splice bool) []fwd.Forward {
	if addr.IsValid() && !addr.IsUnspecified() && !splice {
		if a := addr.Unmap(); a.Is4() && v4 || a.Is6() && v6 {
			return []fwd.Forward{{Proto: proto, Addr: a, Ifname: ifname, Port: port, ToPort: to}}
		}
		return nil
	}
	any4, any6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
	if splice {
		any4, any6, ifname = netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback(), ""
	}
	var out []fwd.Forward
	if v4 {
		out = append(out, fwd.Forward{Proto: proto, Addr: any4, Ifname: ifname, Port: port, ToPort: to, Splice: splice})
	}
	if v6 {
		out = append(out, fwd.Forward{Proto: proto, Addr: any6, Ifname: ifname, Port: port, ToPort: to, Splice: splice})
	}
	return out
}

// hostAddrs lists the host's own unicast addresses.
func hostAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && !ip.IsLoopback() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// conntrackTimeouts reads the host's UDP conntrack timeouts, the ones a
// NAT router would apply, falling back to the kernel's defaults.
func conntrackTimeouts() (time.Duration, time.Duration) {
	read := func(name string, def int) time.Duration {
		b, err := os.ReadFile("/proc/sys/net/netfilter/" + name)
		if err == nil {
			if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
				def = v
			}
		}
		return time.Duration(def) * time.Second
	}
	return read("nf_conntrack_udp_timeout", 30), read("nf_conntrack_udp_timeout_stream", 120)
}

// Log prints the configuration at info level, as the reference does at
// start.
func (n *Net) Log() {
	if n.IPv4 {
		log.Infof("IPv4: address %s, gateway %s, DNS %v", n.Addr4, n.Gateway4, n.DNS4)
	}
	if n.IPv6 {
		log.Infof("IPv6: address %s, gateway %s, DNS %v", n.Addr6, n.Gateway6, n.DNS6)
	}
	if len(n.Search) > 0 {
		log.Infof("DNS search list: %s", strings.Join(n.Search, " "))
	}
	if len(n.Forwards) > 0 {
		log.Infof("UDP: %d forwarded host port sockets", len(n.Forwards))
	}
}
