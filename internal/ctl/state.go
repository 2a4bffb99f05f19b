package ctl

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/stats"
)

// Forwarder is what the server changes and asks: engine.Engine.
type Forwarder interface {
	fwd.Forwarder
	// Serves reports whether a protocol forwarding ports of p runs,
	// Splices whether it also forwards the namespace's loopback.
	Serves(p fwd.Proto) bool
	Splices(p fwd.Proto) bool
}

// Config is what a server serves.
type Config struct {
	// Mode says which options apply ("auto" is pasta's).
	Mode conf.Mode
	// Eng opens and closes listening sockets.
	Eng Forwarder
	// Flows and Stats are listed and dumped on request; either may be
	// nil (nothing to show).
	Flows *flow.Table
	Stats *stats.Counters
	// IPv4 and IPv6 are the families served; IPv4Only and IPv6Only are
	// -4 and -6, for parsing specifications as the command line does.
	IPv4, IPv6         bool
	IPv4Only, IPv6Only bool
	// Splice: the namespace side has listening sockets (pasta without
	// --no-splice), so there is a SPLICE table for -T and -U.
	Splice bool
	// Ephemeral is the range "all" and exclusions leave out.
	Ephemeral conf.PortRange
	// TCP, UDP, TCPNS and UDPNS are the rules of -t, -u, -T and -U at
	// start, whose listening sockets are open already.
	TCP, UDP, TCPNS, UDPNS conf.Forward
}

// entry is a rule of a table and the listening sockets opened for it
// (none for "auto" rules, whose sockets come and go with the scans).
type entry struct {
	rule Rule
	fwds []fwd.Forward
}

type table struct {
	pif     uint8
	caps    uint32
	entries []entry
}

// state is the forwarding tables and what changes them, independent of
// sockets: the server holds one, tests drive one with a fake engine.
type state struct {
	cfg    Config
	mu     sync.Mutex // serialises changes (and readers of tables)
	tables []*table
}

// newState builds the tables of cfg's rules at start.
func newState(cfg Config) *state {
	s := &state{cfg: cfg}
	var caps uint32
	if cfg.IPv4 {
		caps |= CapIPv4
	}
	if cfg.IPv6 {
		caps |= CapIPv6
	}
	if cfg.Mode == conf.ModePasta {
		caps |= CapScan
	}
	caps |= CapIfname
	host := &table{pif: PIFHost, caps: caps}
	if cfg.Eng.Serves(fwd.TCP) {
		host.caps |= CapTCP
	}
	if cfg.Eng.Serves(fwd.UDP) {
		host.caps |= CapUDP
	}
	s.tables = append(s.tables, host)
	s.addStart(host, fwd.TCP, cfg.TCP)
	s.addStart(host, fwd.UDP, cfg.UDP)
	if cfg.Splice {
		ns := &table{pif: PIFSplice, caps: caps}
		if cfg.Eng.Splices(fwd.TCP) {
			ns.caps |= CapTCP
		}
		if cfg.Eng.Splices(fwd.UDP) {
			ns.caps |= CapUDP
		}
		s.tables = append(s.tables, ns)
		s.addStart(ns, fwd.TCP, cfg.TCPNS)
		s.addStart(ns, fwd.UDP, cfg.UDPNS)
	}
	return s
}

// addStart enters the rules of f, whose sockets the engine opened.
func (s *state) addStart(t *table, p fwd.Proto, f conf.Forward) {
	if f.Mode != conf.FwdSpec && f.Mode != conf.FwdAuto {
		return
	}
	for _, r := range f.Rules {
		rule := Rule{Proto: p, PortRule: r}
		t.entries = append(t.entries, entry{rule: rule, fwds: s.expand(t.pif, rule)})
	}
	for _, r := range f.AutoRules {
		t.entries = append(t.entries, entry{rule: Rule{Proto: p, PortRule: r, Auto: true}})
	}
	if f.Mode == conf.FwdAuto && len(f.AutoRules) == 0 {
		// Built by hand: every port.
		r := conf.PortRule{First: 1, Last: 65535, ToFirst: 1, Weak: true}
		t.entries = append(t.entries, entry{rule: Rule{Proto: p, PortRule: r, Auto: true}})
	}
}

func (s *state) table(pif uint8) *table {
	for _, t := range s.tables {
		if t.pif == pif {
			return t
		}
	}
	return nil
}

// Tables returns the forwarding tables as the hello sends them.
func (s *state) Tables() []Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Table
	for _, t := range s.tables {
		tt := Table{PIF: t.pif, Name: PIFName(t.pif), Caps: t.caps}
		for _, e := range t.entries {
			tt.Rules = append(tt.Rules, e.rule)
		}
		out = append(out, tt)
	}
	return out
}

// expand lists the listening sockets of rule r of table pif, as the
// command line's rules are expanded (netcfg.Listeners): one per port and
// family, a wildcard of one family ("0.0.0.0", "::") only that family;
// on the namespace side the loopback, of one family for a rule with an
// address of that family.
func (s *state) expand(pif uint8, r Rule) []fwd.Forward {
	v4, v6 := s.cfg.IPv4, s.cfg.IPv6
	addr := r.Addr
	splice := pif == PIFSplice
	if addr.IsValid() && (addr.IsUnspecified() || splice) {
		v4, v6 = v4 && addr.Is4(), v6 && addr.Is6()
		addr = netip.Addr{}
	}
	var out []fwd.Forward
	for p := uint32(r.First); p <= uint32(r.Last); p++ {
		to := uint16(uint32(r.ToFirst) + p - uint32(r.First))
		out = append(out, netcfg.Listeners(r.Proto, addr, r.Ifname, uint16(p), to, v4, v6, splice)...)
	}
	return out
}

// check refuses a rule that table t cannot hold.
func (s *state) check(t *table, r Rule) error {
	switch {
	case r.Proto == fwd.TCP && t.caps&CapTCP == 0, r.Proto == fwd.UDP && t.caps&CapUDP == 0:
		return fmt.Errorf("%s: %s forwarding is off in %s", r, r.Proto, PIFName(t.pif))
	case r.Addr.IsValid() && r.Addr.Is4() && t.caps&CapIPv4 == 0:
		return fmt.Errorf("%s: IPv4 is off", r)
	case r.Addr.IsValid() && r.Addr.Is6() && t.caps&CapIPv6 == 0:
		return fmt.Errorf("%s: IPv6 is off", r)
	case r.Auto && t.caps&CapScan == 0:
		return fmt.Errorf("%s: 'auto' is only allowed in pasta mode", r)
	}
	if t.pif == PIFSplice {
		if r.Ifname != "" {
			return fmt.Errorf("%s: %s rules listen on the namespace's loopback, not on an interface", r, PIFName(t.pif))
		}
		if a := r.Addr; a.IsValid() && !a.IsUnspecified() && !a.IsLoopback() {
			return fmt.Errorf("%s: %s rules listen on the namespace's loopback, not on %s", r, PIFName(t.pif), a)
		}
	}
	return nil
}

// replace makes the rules of each update the content of its table: rules
// that stay keep their sockets (and their flows are not disturbed), rules
// that go have their listening sockets closed, new ones get theirs
// opened. Either every update is applied, or nothing changes: a rule
// that fails validation, overlaps another or cannot bind all its ports
// (best-effort rules: any port) leaves every table as it was. Tables not
// named keep their rules. "auto" rules cannot come or go.
func (s *state) replace(us []Update) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.replaceLocked(us)
}

type change struct {
	t       *table
	rules   []Rule
	removed []entry
	added   []Rule
}

func (s *state) replaceLocked(us []Update) error {
	var plan []change
	for _, u := range us {
		t := s.table(u.PIF)
		if t == nil {
			return fmt.Errorf("no forwarding table %d (%s) here", u.PIF, PIFName(u.PIF))
		}
		for _, c := range plan {
			if c.t == t {
				return fmt.Errorf("table %s updated twice", PIFName(t.pif))
			}
		}
		if len(u.Rules) > MaxRules {
			return fmt.Errorf("%d rules for %s (maximum %d)", len(u.Rules), PIFName(t.pif), MaxRules)
		}
		c := change{t: t, rules: u.Rules}
		for i, r := range u.Rules {
			if err := r.validate(); err != nil {
				return err
			}
			if err := s.check(t, r); err != nil {
				return err
			}
			for _, o := range u.Rules[:i] {
				if r.Conflicts(o) {
					return fmt.Errorf("%s overlaps %s", r, o)
				}
			}
			if !slices.ContainsFunc(t.entries, func(e entry) bool { return e.rule.Equal(r) }) {
				switch {
				case r.Auto:
					return fmt.Errorf("%s: 'auto' rules are fixed at start and cannot be added at run time", r)
				case r.ToAddr.IsValid():
					return fmt.Errorf("%s: target addresses are not supported", r)
				}
				c.added = append(c.added, r)
			}
		}
		for _, e := range t.entries {
			if !slices.ContainsFunc(u.Rules, e.rule.Equal) {
				if e.rule.Auto {
					return fmt.Errorf("%s: 'auto' rules are fixed at start and cannot be removed at run time", e.rule)
				}
				c.removed = append(c.removed, e)
			}
		}
		plan = append(plan, c)
	}

	// Close what goes first, so that a rule can be replaced by one on
	// the same port (another target, say).
	for _, c := range plan {
		for _, e := range c.removed {
			s.close(e.fwds)
		}
	}
	opened := map[*table][]entry{}
	var err error
open:
	for _, c := range plan {
		for _, r := range c.added {
			var fs []fwd.Forward
			if fs, err = s.open(c.t, r); err != nil {
				break open
			}
			opened[c.t] = append(opened[c.t], entry{rule: r, fwds: fs})
		}
	}
	if err != nil {
		for _, es := range opened {
			for _, e := range es {
				s.close(e.fwds)
			}
		}
		for _, c := range plan {
			for _, e := range c.removed {
				fs, rerr := s.open(c.t, e.rule)
				if rerr != nil {
					log.Warnf("control: %s could not be restored: %v", e.rule, rerr)
				}
				i := slices.IndexFunc(c.t.entries, func(o entry) bool { return o.rule.Equal(e.rule) })
				c.t.entries[i].fwds = fs
			}
		}
		return err
	}
	for _, c := range plan {
		var entries []entry
		for _, r := range c.rules {
			if i := slices.IndexFunc(c.t.entries, func(e entry) bool { return e.rule.Equal(r) }); i >= 0 {
				entries = append(entries, c.t.entries[i])
			} else {
				i := slices.IndexFunc(opened[c.t], func(e entry) bool { return e.rule.Equal(r) })
				entries = append(entries, opened[c.t][i])
			}
		}
		c.t.entries = entries
	}
	return nil
}

// open opens the listening sockets of r, all or none: a failure closes
// what was opened. Best-effort rules skip ports that fail, unless all do.
func (s *state) open(t *table, r Rule) ([]fwd.Forward, error) {
	want := s.expand(t.pif, r)
	var got []fwd.Forward
	var first error
	for _, f := range want {
		if err := s.cfg.Eng.AddForward(f); err != nil {
			if r.Weak {
				if first == nil {
					first = err
				}
				continue
			}
			s.close(got)
			return nil, err
		}
		got = append(got, f)
	}
	if len(got) == 0 && len(want) > 0 {
		return nil, fmt.Errorf("%s: no port could be forwarded: %v", r, first)
	}
	return got, nil
}

// close closes listening sockets; one already gone is no error.
func (s *state) close(fs []fwd.Forward) {
	for _, f := range fs {
		if err := s.cfg.Eng.RemoveForward(f); err != nil {
			log.Debugf("control: closing %s: %v", f, err)
		}
	}
}

// parseArg parses a request's argument, an option and its port
// specification as on the command line ("-t 8080", "-U 5353:53"), into
// the table it is for and its rules. "auto" and "none" are refused.
func (s *state) parseArg(arg string) (*table, []Rule, error) {
	opt, spec, ok := strings.Cut(strings.TrimSpace(arg), " ")
	spec = strings.TrimSpace(spec)
	if !ok && len(opt) > 2 && opt[0] == '-' && opt[1] != '-' {
		opt, spec = opt[:2], opt[2:] // "-t8080"
	}
	letter := byte(0)
	switch opt {
	case "-t", "--tcp-ports":
		letter = 't'
	case "-u", "--udp-ports":
		letter = 'u'
	case "-T", "--tcp-ns":
		letter = 'T'
	case "-U", "--udp-ns":
		letter = 'U'
	default:
		return nil, nil, fmt.Errorf("expected -t, -u, -T or -U and a port specification, not %q", arg)
	}
	if spec == "" {
		return nil, nil, fmt.Errorf("%s: missing port specification", opt)
	}
	pif, proto := uint8(PIFHost), fwd.TCP
	if letter == 'T' || letter == 'U' {
		pif = PIFSplice
	}
	if letter == 'u' || letter == 'U' {
		proto = fwd.UDP
	}
	t := s.table(pif)
	if t == nil {
		return nil, nil, fmt.Errorf("-%c: no namespace side to forward from here (pasta only, not with --no-splice)", letter)
	}
	capProto := uint32(CapTCP)
	if proto == fwd.UDP {
		capProto = CapUDP
	}
	f, err := conf.ParseForward(spec, conf.SpecOptions{
		Opt: letter, Mode: s.cfg.Mode, Ephemeral: s.cfg.Ephemeral,
		IPv4Only: s.cfg.IPv4Only, IPv6Only: s.cfg.IPv6Only,
		Disabled: t.caps&capProto == 0,
	})
	switch {
	case err != nil:
		return nil, nil, err
	case len(f.AutoRules) > 0:
		return nil, nil, fmt.Errorf("-%c %s: 'auto' rules are fixed at start and cannot be changed at run time", letter, spec)
	case len(f.Rules) == 0:
		return nil, nil, fmt.Errorf("-%c %s: no ports", letter, spec)
	}
	rules := make([]Rule, len(f.Rules))
	for i, r := range f.Rules {
		rules[i] = Rule{Proto: proto, PortRule: r}
	}
	return t, rules, nil
}

// add adds the rules of a request's argument to their table.
func (s *state) add(arg string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, rules, err := s.parseArg(arg)
	if err != nil {
		return "", err
	}
	next := make([]Rule, 0, len(t.entries)+len(rules))
	for _, e := range t.entries {
		next = append(next, e.rule)
	}
	for _, r := range rules {
		for _, e := range t.entries {
			if r.Conflicts(e.rule) {
				return "", fmt.Errorf("%s overlaps the rule %s", r, e.rule)
			}
		}
	}
	next = append(next, rules...)
	if err := s.replaceLocked([]Update{{PIF: t.pif, Rules: next}}); err != nil {
		return "", err
	}
	return describe("added", t.pif, rules), nil
}

// del deletes the rules of a request's argument from their table: each
// must be there exactly as the specification gives it.
func (s *state) del(arg string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, rules, err := s.parseArg(arg)
	if err != nil {
		return "", err
	}
	var next []Rule
	for _, e := range t.entries {
		if !slices.ContainsFunc(rules, e.rule.Equal) {
			next = append(next, e.rule)
		}
	}
	for _, r := range rules {
		if slices.ContainsFunc(t.entries, func(e entry) bool { return e.rule.Equal(r) }) {
			continue
		}
		for _, e := range t.entries {
			if r.Conflicts(e.rule) {
				return "", fmt.Errorf("%s does not match the rule %s", r, e.rule)
			}
		}
		return "", fmt.Errorf("no rule %s in %s", r, PIFName(t.pif))
	}
	if err := s.replaceLocked([]Update{{PIF: t.pif, Rules: next}}); err != nil {
		return "", err
	}
	return describe("deleted", t.pif, rules), nil
}

func describe(verb string, pif uint8, rules []Rule) string {
	var b strings.Builder
	for _, r := range rules {
		fmt.Fprintf(&b, "%s %s: %s\n", verb, PIFName(pif), r)
	}
	return b.String()
}
