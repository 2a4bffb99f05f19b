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
// the gateway address instead, which gopasst maps to the host's loopback.
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
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netns"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/udp"
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
	// Forwards are the -u listening sockets.
	Forwards []udp.Forward
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
	n.Forwards = ExpandForwards(cfg.UDPFwd, n.IPv4, n.IPv6)
	n.dns(cfg)
	return n, nil
}

// dns fills the resolvers and search list: -D and -S, or resolv.conf.
func (n *Net) dns(cfg *conf.Config) {
	servers, search := cfg.DNS, cfg.Search
	if len(servers) == 0 && !cfg.DNSNone || len(search) == 0 && !cfg.SearchNone {
		if f, err := os.Open("/etc/resolv.conf"); err == nil {
			rs, rsearch := ReadResolvConf(f)
			f.Close()
			if len(servers) == 0 && !cfg.DNSNone {
				servers = n.mapResolvers(rs, cfg.NoMapGW)
			}
			if len(search) == 0 && !cfg.SearchNone {
				search = rsearch
			}
		}
	}
	for _, s := range servers {
		switch {
		case s.Is4() && n.IPv4:
			n.DNS4 = append(n.DNS4, s)
		case s.Is6() && n.IPv6:
			n.DNS6 = append(n.DNS6, s)
		}
	}
	n.Search = search
}

// mapResolvers replaces resolvers on the host's loopback by the gateway
// address, which reaches them through the gateway mapping; other loopback
// addresses (a stub such as 127.0.0.53) cannot be reached that way yet.
func (n *Net) mapResolvers(rs []netip.Addr, noMapGW bool) []netip.Addr {
	var out []netip.Addr
	for _, r := range rs {
		switch {
		case !r.IsLoopback():
			out = append(out, r)
		case noMapGW:
			log.Debugf("DNS: resolver %s is on loopback and --no-map-gw is set: not advertised", r)
		case r == netip.AddrFrom4([4]byte{127, 0, 0, 1}) && n.Gateway4.IsValid():
			out = append(out, n.Gateway4)
		case r == netip.IPv6Loopback() && n.Gateway6.IsValid():
			out = append(out, n.Gateway6)
		default:
			log.Debugf("DNS: resolver %s is not reachable through the gateway: not advertised", r)
		}
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

// ExpandForwards turns -u rules into one listening socket per port and
// address family.
func ExpandForwards(f conf.Forward, v4, v6 bool) []udp.Forward {
	if f.Mode != conf.FwdSpec {
		return nil
	}
	var out []udp.Forward
	for _, r := range f.Rules {
		for p := uint32(r.First); p <= uint32(r.Last); p++ {
			to := uint16(uint32(r.ToFirst) + p - uint32(r.First))
			switch {
			case r.Addr.IsValid():
				a := r.Addr.Unmap()
				if a.Is4() && v4 || a.Is6() && v6 {
					out = append(out, udp.Forward{Addr: a, Ifname: r.Ifname, Port: uint16(p), ToPort: to})
				}
			default:
				if v4 {
					out = append(out, udp.Forward{Addr: netip.IPv4Unspecified(), Ifname: r.Ifname, Port: uint16(p), ToPort: to})
				}
				if v6 {
					out = append(out, udp.Forward{Addr: netip.IPv6Unspecified(), Ifname: r.Ifname, Port: uint16(p), ToPort: to})
				}
			}
		}
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
