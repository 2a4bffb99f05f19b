package autoscan

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/gopasst/gopasst/internal/conf"
)

// Fwd is one forwarded port: listen on Addr (and Ifname) port Port, forward
// to ToPort (on ToAddr). It is comparable, so it can be used as a map key.
type Fwd struct {
	// Addr is the listening address, the zero Addr meaning both
	// families' wildcard, as in [conf.PortRule].
	Addr netip.Addr
	// Ifname is the listening interface, "" for none.
	Ifname string
	// Port is the listened port.
	Port uint16
	// ToPort is the target port, the one found bound on the other side.
	ToPort uint16
	// ToAddr is the rule's target address, the zero Addr for the usual
	// guest or namespace address.
	ToAddr netip.Addr
}

// String formats f like a [conf.PortRule] with a single port.
func (f Fwd) String() string {
	return conf.PortRule{
		Addr: f.Addr, Ifname: f.Ifname,
		First: f.Port, Last: f.Port, ToFirst: f.ToPort, ToAddr: f.ToAddr,
	}.String()
}

// compareFwd orders forwards by address, interface, port, then target.
func compareFwd(a, b Fwd) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Ifname, b.Ifname); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	if c := cmp.Compare(a.ToPort, b.ToPort); c != 0 {
		return c
	}
	return a.ToAddr.Compare(b.ToAddr)
}

// sortFwds sorts and deduplicates fs in place.
func sortFwds(fs []Fwd) []Fwd {
	slices.SortFunc(fs, compareFwd)
	return slices.Compact(fs)
}

// RulesFor returns the automatic rules of f to pass to [Desired] and
// [NewScanner]: nil unless f.Mode is [conf.FwdAuto], f.AutoRules if there
// are any, and otherwise, as [conf.Forward.Rule] has it, one rule
// forwarding every port to itself.
func RulesFor(f *conf.Forward) []conf.PortRule {
	switch {
	case f.Mode != conf.FwdAuto:
		return nil
	case len(f.AutoRules) == 0:
		return []conf.PortRule{{First: 1, Last: 65535, ToFirst: 1}}
	}
	return f.AutoRules
}

// Desired returns the forwards that should exist, sorted and deduplicated:
// for each rule and each listened port p it covers, the forward of p when
// some socket in bound whose inode is not in own is bound to the target
// port rule.Target(p). Sockets with inode 0 (kernel sockets) always count.
//
// The socket's address is not looked at, following the reference: any
// bound address of either family makes the port count (see the package
// documentation). Rules with an impossible range (Last < First, port 0,
// targets beyond 65535) contribute only their valid ports.
//
// Note that the reference tests the listened port number, not the target,
// against the bound ports; the two differ only for remapping rules
// ("auto" with "80:8080"), for which the man page says the target counts,
// as here.
func Desired(rules []conf.PortRule, bound []Socket, own map[uint64]bool) []Fwd {
	var ports []uint16
	for _, s := range bound {
		if s.Port != 0 && (s.Inode == 0 || !own[s.Inode]) {
			ports = append(ports, s.Port)
		}
	}
	if len(ports) == 0 {
		return nil
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)

	var out []Fwd
	for _, r := range rules {
		if r.Last < r.First {
			continue
		}
		// Listened ports First..Last map to targets lo..hi.
		lo := int(r.ToFirst)
		hi := lo + int(r.Last-r.First)
		i, _ := slices.BinarySearch(ports, uint16(lo))
		for ; i < len(ports) && int(ports[i]) <= hi; i++ {
			q := ports[i]
			p := int(r.First) + int(q) - lo
			if p == 0 {
				continue
			}
			out = append(out, Fwd{
				Addr: r.Addr, Ifname: r.Ifname,
				Port: uint16(p), ToPort: q, ToAddr: r.ToAddr,
			})
		}
	}
	return sortFwds(out)
}

// Diff compares the current forwards with the desired ones and returns the
// forwards to open (desired but not current) and to close (current but not
// desired), each sorted and deduplicated. Neither input needs to be sorted.
//
// A forward whose target changed (same Addr, Ifname and Port, other ToPort
// or ToAddr, which only happens when the rules change) is both closed and
// opened: apply the closes before the opens, since both listen on the same
// port.
func Diff(current, desired []Fwd) (open, close []Fwd) {
	cur := make(map[Fwd]bool, len(current))
	for _, f := range current {
		cur[f] = true
	}
	want := make(map[Fwd]bool, len(desired))
	for _, f := range desired {
		want[f] = true
		if !cur[f] {
			open = append(open, f)
		}
	}
	for _, f := range current {
		if !want[f] {
			close = append(close, f)
		}
	}
	return sortFwds(open), sortFwds(close)
}
