package engine

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/dhcp"
	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/frag"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/l2"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
	"github.com/gopasst/gopasst/internal/toguest"
)

// SocketFunc is socket(2): unix.Socket for the host, a namespace's
// factory for sockets that must live in the namespace.
type SocketFunc = func(domain, typ, proto int) (int, error)

// Handler is a protocol running in the engine.
type Handler interface {
	// HandleTap takes a batch of the guest's packets of the protocol,
	// on the tap reader's goroutine.
	HandleTap(pkts []*packet.Parsed)
	// Release closes the protocol's sockets once the host loop has
	// stopped.
	Release()
}

// A Handler that forwards ports also implements fwd.Forwarder, and one
// whose sockets "auto" forwarding must leave alone OwnInodes() map[uint64]bool.

// Protocol describes one protocol to Build.
type Protocol struct {
	Name string
	// IPProtos are the IP protocol numbers whose packets it takes.
	IPProtos []uint8
	// Forwards, if not zero, is the forwarding protocol whose rules it
	// serves.
	Forwards fwd.Proto
	// Off reports whether the options turn it off (--no-udp, ...).
	Off func(*conf.Config) bool
	// New starts it in env.
	New func(env *Env) (Handler, error)
}

// Env is what a protocol gets from the core.
type Env struct {
	Conf  *conf.Config
	Net   *netcfg.Net
	Rules *fwd.Rules
	Guest *fwd.Guest
	// Loop is the host event loop, Flows the flow table of every
	// protocol.
	Loop  *evloop.Loop
	Flows *flow.Table
	// LoopOut writes to the guest from the loop's goroutine, TapOut
	// from the tap reader's.
	LoopOut, TapOut *toguest.Writer
	Stats           *stats.Counters
	// NSSocket creates sockets in pasta's namespace (nil: no splice).
	NSSocket SocketFunc
	// Forwards are the listening sockets of the command line for this
	// protocol.
	Forwards []fwd.Forward
}

// Build assembles the data path for endpoint ep from the guest's network
// configuration n and the options: the guest state, the forwarding rules,
// the L2 responder, the DHCP and DHCPv6 servers, the flow table, the host
// event loop, the guest writers, and every protocol of protos that the
// options leave on, with its listening sockets. nsSocket creates sockets
// in pasta's namespace, for the splice path; nil (passt, or --no-splice)
// leaves the splice path out.
func Build(ep tap.Endpoint, n *netcfg.Net, cfg *conf.Config, st *stats.Counters, nsSocket SocketFunc, protos []Protocol) (*Engine, error) {
	var a4, a6 netip.Addr
	if n.IPv4 {
		a4 = n.Addr4.Addr()
	}
	if n.IPv6 {
		a6 = n.Addr6.Addr()
	}
	guest := fwd.NewGuest(a4, a6)
	e := &Engine{
		oneThread: os.Getenv("GOPASST_THREADS") != "2",
		EP:        ep, Guest: guest, Stats: st, IPv4: n.IPv4, IPv6: n.IPv6, Frag: frag.New(),
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
	rules := &fwd.Rules{
		MapHostLoopback4: n.MapHostLoopback4, MapHostLoopback6: n.MapHostLoopback6,
		MapGuestAddr4: n.MapGuestAddr4, MapGuestAddr6: n.MapGuestAddr6, GuestAddr4: a4, GuestAddr6: a6,
		DNSMatch4: n.DNSMatch4, DNSMatch6: n.DNSMatch6, DNSHost4: n.DNSHost4, DNSHost6: n.DNSHost6,
		HostAddrs: n.HostAddrs, Outbound4: cfg.Outbound4, Outbound6: cfg.Outbound6,
		OutboundIf4: cfg.OutboundIf4, OutboundIf6: cfg.OutboundIf6, IPv4: n.IPv4, IPv6: n.IPv6,
		Splice: nsSocket != nil, HostLoToNSLo: cfg.HostLoToNSLo,
	}
	if n.MapHostLoopback6.IsValid() {
		rules.RouterLL6 = e.L2.LinkLocal()
	}
	rules.OurTapAddr4, rules.OurTapLL6 = n.Gateway4, e.L2.LinkLocal()
	e.Rules = rules
	e.Router4, e.Router6 = n.Gateway4, router6(n, e.L2.LinkLocal())
	maxFlows := cfg.MaxFlows
	if maxFlows <= 0 {
		maxFlows = 65536
	}
	e.Flows = flow.NewTable(maxFlows)
	loop, err := evloop.New()
	if err != nil {
		return nil, err
	}
	e.Loop = loop
	out := func() *toguest.Writer {
		return toguest.New(toguest.Config{EP: ep, Guest: guest, OurMAC: n.OurMAC, Stats: st, MTU: cfg.MTU, Offload: !cfg.NoOffload})
	}
	e.TapOut = out()
	env := Env{Conf: cfg, Net: n, Rules: rules, Guest: guest, Loop: loop, Flows: e.Flows,
		LoopOut: out(), TapOut: e.TapOut, Stats: st, NSSocket: nsSocket}
	forwards := n.Forwards
	if nsSocket != nil {
		forwards = append(forwards[:len(forwards):len(forwards)], n.NSForwards...)
	}
	for _, p := range protos {
		if p.Off != nil && p.Off(cfg) {
			continue
		}
		pe := env
		pe.Forwards = nil
		for _, f := range forwards {
			if p.Forwards != 0 && f.Proto == p.Forwards {
				pe.Forwards = append(pe.Forwards, f)
			}
		}
		h, err := p.New(&pe)
		if err != nil {
			e.release()
			return nil, err
		}
		sv := &served{name: p.Name, h: h}
		e.protos = append(e.protos, sv)
		for _, ip := range p.IPProtos {
			e.byProto[ip] = sv
		}
		if p.Forwards != 0 {
			e.byFwd[p.Forwards] = sv
		}
	}
	for _, f := range forwards {
		if !e.Serves(f.Proto) {
			e.release()
			return nil, fmt.Errorf("%s: %s is off", f, f.Proto)
		}
	}
	return e, nil
}

// release undoes a Build that failed half-way.
func (e *Engine) release() {
	for _, p := range e.protos {
		p.h.Release()
	}
	e.Loop.Discard()
}

// router6 is the address IPv6 time-exceeded errors come from: the
// gateway, or our link-local address, the router of router advertisements.
func router6(n *netcfg.Net, ll netip.Addr) netip.Addr {
	if n.Gateway6.IsValid() {
		return n.Gateway6
	}
	return ll
}
