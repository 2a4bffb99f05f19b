package conf

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ForwardMode summarises what a [Forward] asks for.
type ForwardMode int

// Forwarding modes. FwdUnset means no option configured the direction; the
// caller then applies the mode default (see [Config.ApplyForwardDefaults]).
const (
	// FwdUnset: no -t/-u/-T/-U option was given for this direction.
	FwdUnset ForwardMode = iota
	// FwdNone: "none" was given and nothing else.
	FwdNone
	// FwdAuto: at least one specification contained "auto", so the
	// AutoRules have to be scanned; Rules may hold fixed forwards too.
	FwdAuto
	// FwdSpec: explicit rules only ("all" and exclusion-only
	// specifications included, already expanded).
	FwdSpec
)

// String returns the keyword for m as used on the command line.
func (m ForwardMode) String() string {
	switch m {
	case FwdUnset:
		return "unset"
	case FwdNone:
		return "none"
	case FwdAuto:
		return "auto"
	case FwdSpec:
		return "spec"
	}
	return "ForwardMode(" + strconv.Itoa(int(m)) + ")"
}

// MaxRules bounds the number of rules one [Forward] may hold (fixed and
// automatic rules together). The reference has a limit of the same size.
const MaxRules = 255

// PortRange is an inclusive range of port numbers.
type PortRange struct {
	First, Last uint16
}

// DefaultEphemeral is the ephemeral port range assumed when the system's
// cannot be read: the Linux default, 32768-60999. It is a variable only
// because Go has no struct constants; don't change it.
var DefaultEphemeral = PortRange{First: 32768, Last: 60999}

// Contains reports whether p lies in r.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// String formats r as "FIRST" or "FIRST-LAST".
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return strconv.Itoa(int(r.First)) + "-" + strconv.Itoa(int(r.Last))
}

// PortRule is one forwarding rule: listened ports First..Last, bound to Addr
// and Ifname, forwarded to ToFirst..ToFirst+(Last-First) on ToAddr.
type PortRule struct {
	// Addr is the listening address. The zero Addr means any address of
	// any enabled family; 0.0.0.0 or :: mean any address of that family
	// only (the parser uses these when -4 or -6 was given). IPv4-mapped
	// IPv6 addresses are stored as IPv4.
	Addr netip.Addr
	// Ifname is the listening interface ("ADDR%IFNAME/" or "%IFNAME/"),
	// "" for none.
	Ifname string
	// First and Last are the listened ports, inclusive.
	First, Last uint16
	// ToFirst is the target port of First; port p maps to
	// ToFirst+(p-First).
	ToFirst uint16
	// ToAddr is the target address given with ":ADDR" in the
	// specification; the zero Addr lets the forwarder pick the guest or
	// namespace address as usual. When valid it has the family of Addr.
	ToAddr netip.Addr
	// Weak marks best-effort rules (from "all" or exclusion-only
	// specifications): failing to bind some of their ports is not an
	// error, as long as some port of the direction could be bound.
	Weak bool
}

// Contains reports whether listened port p is in r.
func (r PortRule) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// Target returns the target port for listened port p, which must be in r.
func (r PortRule) Target(p uint16) uint16 { return r.ToFirst + (p - r.First) }

// MatchesAddr reports whether a packet or connection to local address a is
// covered by r's listening address: the zero Addr matches everything, an
// unspecified Addr matches its own family, anything else matches itself.
// The zero a (no particular address) matches every rule.
func (r PortRule) MatchesAddr(a netip.Addr) bool {
	return addrsOverlap(r.Addr, a)
}

// String formats r for messages, e.g. "*/22-80 => 32-90" or
// "127.0.0.1%lo/5000 => 192.0.2.5/6000".
func (r PortRule) String() string {
	var b strings.Builder
	b.WriteString(fmtAddr(r.Addr))
	if r.Ifname != "" {
		b.WriteString("%" + r.Ifname)
	}
	b.WriteString("/" + PortRange{r.First, r.Last}.String() + " => ")
	if r.ToAddr.IsValid() {
		b.WriteString(fmtAddr(r.ToAddr) + "/")
	}
	b.WriteString(PortRange{r.ToFirst, r.ToFirst + (r.Last - r.First)}.String())
	if r.Weak {
		b.WriteString(" (best effort)")
	}
	return b.String()
}

func fmtAddr(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "*"
	case a.Is6():
		return "[" + a.String() + "]"
	}
	return a.String()
}

// Forward is the forwarding configuration of one protocol in one direction,
// accumulated from all -t (or -u, -T, -U) options in order.
type Forward struct {
	// Mode summarises the options given, see [ForwardMode].
	Mode ForwardMode
	// Rules are the fixed forwards, exclusions already applied (a range
	// with exclusions inside is split into several rules).
	Rules []PortRule
	// AutoRules are the ports forwarded only while the corresponding
	// port is bound on the other side ("auto"). The parser always fills
	// them explicitly; an empty AutoRules with Mode FwdAuto, as a value
	// built by hand may have, means every port.
	AutoRules []PortRule
}

// Rule returns the rule forwarding listened port p on local address addr,
// looking at Rules first and AutoRules second. The zero addr matches any
// rule. A FwdAuto Forward without AutoRules covers every port, unmapped.
func (f *Forward) Rule(addr netip.Addr, p uint16) (PortRule, bool) {
	for _, list := range [][]PortRule{f.Rules, f.AutoRules} {
		for _, r := range list {
			if r.Contains(p) && r.MatchesAddr(addr) {
				return r, true
			}
		}
	}
	if f.Mode == FwdAuto && len(f.AutoRules) == 0 && p != 0 {
		return PortRule{First: 1, Last: 65535, ToFirst: 1}, true
	}
	return PortRule{}, false
}

// Target returns the target port for listened port p on local address addr
// if some rule (fixed or automatic) covers it. The zero addr matches any
// rule.
func (f *Forward) Target(addr netip.Addr, p uint16) (uint16, bool) {
	r, ok := f.Rule(addr, p)
	if !ok {
		return 0, false
	}
	return r.Target(p), true
}

// SpecOptions is the context a port specification is interpreted in.
type SpecOptions struct {
	// Opt is the option letter, 't', 'u', 'T' or 'U'. With 'T' and 'U' a
	// listening address is refused (those bind to loopback in the
	// namespace). It also names the option in error messages.
	Opt byte
	// Mode is the program mode; "auto" needs ModePasta.
	Mode Mode
	// Ephemeral is the range "all" and exclusion-only specifications
	// skip. The zero value means [DefaultEphemeral].
	Ephemeral PortRange
	// IPv4Only and IPv6Only restrict the address families rules may use
	// (-4 and -6), and turn a missing listening address into 0.0.0.0 or
	// :: respectively.
	IPv4Only, IPv6Only bool
	// Disabled refuses any rule: the protocol was disabled (--no-tcp,
	// --no-udp). "none" is still accepted.
	Disabled bool
}

// SpecError reports an invalid port specification. Its message is one line,
// e.g. `invalid port specification "70000" for -u: port out of range`.
type SpecError struct {
	Opt    byte   // option letter
	Spec   string // the whole specification
	Reason string // what is wrong with it
}

// Error formats the error as one line.
func (e *SpecError) Error() string {
	return fmt.Sprintf("invalid port specification %q for -%c: %s", e.Spec, e.Opt, e.Reason)
}

// ParseForward parses a single specification into a fresh Forward.
func ParseForward(spec string, o SpecOptions) (Forward, error) {
	var f Forward
	err := f.AddSpec(spec, o)
	return f, err
}

// AddSpec parses the port specification spec and adds the resulting rules
// to f. On error f is left unchanged.
//
// The grammar is
//
//	spec   = "none" | [listen "/"] chunk {"," chunk}
//	listen = [ADDR | "*"] ["%" IFNAME]
//	chunk  = "all" [":" ADDR] | "auto" | "~" range | range [":" target]
//	target = ADDR "/" range | ADDR | range
//	range  = PORT ["-" PORT]
//
// where ADDR is an IPv4 or IPv6 address, optionally in square brackets.
// Exclusions ("~") remove ports from every include range of the same
// specification; "all", or a specification with no include range at all,
// adds every port outside the ephemeral range that is neither excluded nor
// explicitly included; "auto" turns all the rules of the specification into
// automatic ones ("all" is for passt only). "none" adds nothing and
// records FwdNone; together with other specifications for the same
// option, before or after it, it is refused.
func (f *Forward) AddSpec(spec string, o SpecOptions) error {
	fail := func(format string, a ...any) error {
		return &SpecError{Opt: o.Opt, Spec: spec, Reason: fmt.Sprintf(format, a...)}
	}

	// "none" and anything else for the same option conflict, in either
	// order, as with the reference (before 2026, and Debian 13's pasta;
	// the newer one accepts "none" first and then ports).
	if spec == "none" {
		if f.hasSpecific() {
			return fail("%s", errSpecificAndKeyword)
		}
		if len(f.Rules)+len(f.AutoRules) > 0 {
			return fail("'none' conflicts with previous -%c options", o.Opt)
		}
		if f.Mode == FwdUnset {
			f.Mode = FwdNone
		}
		return nil
	}

	ps, err := parseSpec(spec)
	if err != nil {
		return fail("%s", err)
	}
	if f.Mode == FwdNone {
		if ps.specific() {
			return fail("%s", errSpecificAndKeyword)
		}
		return fail("conflicts with previous -%c none", o.Opt)
	}
	rules, err := ps.build(o)
	if err != nil {
		return fail("%s", err)
	}

	// Conflicts: among the new rules, and with what is there already.
	old := make([]PortRule, 0, len(f.Rules)+len(f.AutoRules))
	old = append(append(old, f.Rules...), f.AutoRules...)
	if len(old)+len(rules) > MaxRules {
		return fail("too many forwarding rules (maximum %d)", MaxRules)
	}
	for i, n := range rules {
		for _, list := range [][]PortRule{old, rules[:i]} {
			for _, r := range list {
				if rulesConflict(n, r) {
					return fail("%s overlaps %s", n.ruleText(), r.ruleText())
				}
			}
		}
	}

	if ps.auto {
		f.AutoRules = append(f.AutoRules, rules...)
		f.Mode = FwdAuto
	} else {
		f.Rules = append(f.Rules, rules...)
		if f.Mode != FwdAuto {
			f.Mode = FwdSpec
		}
	}
	return nil
}

// errSpecificAndKeyword is the reference's word for ports given together
// with "none" for the same option.
const errSpecificAndKeyword = "specific ports cannot be specified together with all/none/auto"

// hasSpecific tells whether f has rules for specific ports: include
// ranges, not what "all", "auto" or exclusions alone expand to.
func (f *Forward) hasSpecific() bool {
	for _, list := range [][]PortRule{f.Rules, f.AutoRules} {
		for _, r := range list {
			if !r.Weak {
				return true
			}
		}
	}
	return false
}

// ruleText is the listening side of a rule, for conflict messages.
func (r PortRule) ruleText() string {
	s := fmtAddr(r.Addr)
	if r.Ifname != "" {
		s += "%" + r.Ifname
	}
	return s + "/" + PortRange{r.First, r.Last}.String()
}

// addrsOverlap reports whether listening addresses a and b can see the
// same traffic: the zero Addr overlaps everything, an unspecified address
// overlaps its whole family.
func addrsOverlap(a, b netip.Addr) bool {
	if !a.IsValid() || !b.IsValid() {
		return true
	}
	if a.IsUnspecified() || b.IsUnspecified() {
		return a.Is4() == b.Is4()
	}
	return a == b
}

func rulesConflict(a, b PortRule) bool {
	return addrsOverlap(a.Addr, b.Addr) && a.First <= b.Last && b.First <= a.Last
}

// chunkKind tells the comma-separated pieces of a specification apart.
type chunkKind int

const (
	chunkAll chunkKind = iota
	chunkAuto
	chunkExclude
	chunkInclude
)

type chunk struct {
	kind   chunkKind
	listen PortRange  // include and exclude
	to     PortRange  // include
	toAddr netip.Addr // include and all
}

// parsedSpec is the syntax of a specification, before interpretation.
type parsedSpec struct {
	hasListen bool
	addr      netip.Addr // zero for "*" or none
	ifname    string
	chunks    []chunk
	auto      bool
}

// specific tells whether the specification names ports (include ranges
// or exclusions) rather than only the keywords "all" and "auto".
func (ps *parsedSpec) specific() bool {
	for _, ch := range ps.chunks {
		if ch.kind == chunkInclude || ch.kind == chunkExclude {
			return true
		}
	}
	return false
}

// parseSpec checks the syntax of spec (anything but "none").
func parseSpec(spec string) (*parsedSpec, error) {
	c := &cursor{s: spec}
	ps := &parsedSpec{}
	if err := ps.parseListen(c); err != nil {
		return nil, err
	}
	if c.eof() {
		return nil, fmt.Errorf("no ports given")
	}
	for {
		ch, err := parseChunk(c)
		if err != nil {
			return nil, err
		}
		ps.chunks = append(ps.chunks, ch)
		if ch.kind == chunkAuto {
			ps.auto = true
		}
		if c.lit(",") {
			continue
		}
		if !c.eof() {
			return nil, fmt.Errorf("unexpected %q", c.rest())
		}
		return ps, nil
	}
}

// parseListen consumes an optional "[ADDR|*][%IFNAME]/" prefix. If what
// follows is not such a prefix the cursor is left where it was.
func (ps *parsedSpec) parseListen(c *cursor) error {
	start := c.pos
	var addr netip.Addr
	if !c.lit("*") {
		addr, _ = c.addr()
	}
	var ifname string
	if c.lit("%") {
		n := strings.IndexAny(c.rest(), "/ \t\n\v\f\r")
		if n < 0 || c.rest()[n] != '/' {
			c.pos = start
			return nil
		}
		ifname = c.rest()[:n]
		c.pos += n
		switch {
		case ifname == "":
			return fmt.Errorf("empty interface name")
		case len(ifname) > maxIfname:
			return fmt.Errorf("interface name %q too long (maximum %d characters)", ifname, maxIfname)
		case ifname == "." || ifname == "..":
			return fmt.Errorf("invalid interface name %q", ifname)
		}
	}
	if !c.lit("/") {
		c.pos = start
		return nil
	}
	ps.hasListen, ps.addr, ps.ifname = true, addr, ifname
	return nil
}

func parseChunk(c *cursor) (chunk, error) {
	var ch chunk
	switch {
	case c.word("all"):
		ch.kind = chunkAll
		if c.lit(":") {
			a, ok := c.addr()
			switch {
			case !ok && c.eof():
				return ch, fmt.Errorf("missing target address")
			case !ok:
				return ch, fmt.Errorf("invalid target address at %q", c.rest())
			}
			ch.toAddr = a
		}
	case c.word("auto"):
		ch.kind = chunkAuto
	case c.lit("~"):
		ch.kind = chunkExclude
		r, err := c.portRange()
		if err != nil {
			return ch, err
		}
		ch.listen = r
	case c.peekDigit():
		ch.kind = chunkInclude
		r, err := c.portRange()
		if err != nil {
			return ch, err
		}
		ch.listen, ch.to = r, r
		if !c.lit(":") {
			break
		}
		if a, ok := c.addr(); ok {
			ch.toAddr = a
			if !c.lit("/") {
				break
			}
		}
		if ch.to, err = c.portRange(); err != nil {
			return ch, err
		}
	case c.eof():
		return ch, fmt.Errorf("empty entry in port list")
	default:
		return ch, fmt.Errorf("expected port, range, 'all', 'auto' or '~' at %q", c.rest())
	}
	return ch, nil
}

// build interprets a parsed specification, returning the new rules.
func (ps *parsedSpec) build(o SpecOptions) ([]PortRule, error) {
	proto := "TCP"
	if o.Opt == 'u' || o.Opt == 'U' {
		proto = "UDP"
	}
	if o.Disabled {
		return nil, fmt.Errorf("%s is disabled", proto)
	}
	if ps.auto && o.Mode != ModePasta {
		return nil, fmt.Errorf("'auto' is only allowed in pasta mode")
	}
	// As the reference before 2026 (Debian 13's pasta): in pasta, "all"
	// would bind every free port of the host for one namespace; "auto"
	// or an exclusion ("~32768-60999") says what is meant.
	if o.Mode == ModePasta {
		for _, ch := range ps.chunks {
			if ch.kind == chunkAll {
				return nil, fmt.Errorf("'all' port forwarding is only allowed for passt")
			}
		}
	}
	if ps.hasListen && (o.Opt == 'T' || o.Opt == 'U') {
		return nil, fmt.Errorf("listening address or interface not allowed for -%c", o.Opt)
	}

	addr := ps.addr
	switch {
	case addr.IsValid() && addr.Is4() && o.IPv6Only:
		return nil, fmt.Errorf("IPv4 listening address %s, but IPv4 is disabled", addr)
	case addr.IsValid() && addr.Is6() && o.IPv4Only:
		return nil, fmt.Errorf("IPv6 listening address %s, but IPv6 is disabled", addr)
	case !addr.IsValid() && o.IPv4Only:
		addr = netip.IPv4Unspecified()
	case !addr.IsValid() && o.IPv6Only:
		addr = netip.IPv6Unspecified()
	}

	var exclude, included portSet
	all, anyInclude := false, false
	var allTo netip.Addr
	for _, ch := range ps.chunks {
		switch ch.kind {
		case chunkExclude:
			exclude.addRange(ch.listen)
		case chunkAll:
			all, allTo = true, ch.toAddr
		case chunkInclude:
			anyInclude = true
		}
	}

	checkTarget := func(t netip.Addr) (netip.Addr, error) {
		if !t.IsValid() {
			return t, nil
		}
		t = t.Unmap()
		switch {
		case t.IsUnspecified():
			return netip.Addr{}, nil
		case t.IsMulticast() || t == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return t, fmt.Errorf("multicast or broadcast target address %s", t)
		case !addr.IsValid():
			wild := "0.0.0.0"
			if t.Is6() {
				wild = "[::]"
			}
			return t, fmt.Errorf("target address %s needs a listening address of the same family (e.g. %s/...)", t, wild)
		case addr.Is4() != t.Is4():
			return t, fmt.Errorf("listening address %s and target address %s differ in family", addr, t)
		}
		return t, nil
	}

	var rules []PortRule
	emit := func(r PortRange, to uint16, toAddr netip.Addr, weak bool, skip *portSet) {
		for p := int(r.First); p <= int(r.Last); p++ {
			if skip.has(uint16(p)) {
				continue
			}
			q := p
			for q < int(r.Last) && !skip.has(uint16(q+1)) {
				q++
			}
			rules = append(rules, PortRule{
				Addr: addr, Ifname: ps.ifname,
				First: uint16(p), Last: uint16(q),
				ToFirst: to + uint16(p-int(r.First)),
				ToAddr:  toAddr, Weak: weak,
			})
			p = q
		}
	}

	for _, ch := range ps.chunks {
		if ch.kind != chunkInclude {
			continue
		}
		if ch.listen.First == 0 {
			return nil, fmt.Errorf("port 0 cannot be forwarded")
		}
		if ch.to.First == 0 {
			return nil, fmt.Errorf("cannot forward to port 0")
		}
		if ch.to.Last-ch.to.First != ch.listen.Last-ch.listen.First {
			return nil, fmt.Errorf("target range %s differs in length from %s", ch.to, ch.listen)
		}
		to, err := checkTarget(ch.toAddr)
		if err != nil {
			return nil, err
		}
		emit(ch.listen, ch.to.First, to, false, &exclude)
		included.addRange(ch.listen)
	}

	if all || !anyInclude {
		to, err := checkTarget(allTo)
		if err != nil {
			return nil, err
		}
		eph := o.Ephemeral
		if eph.Last == 0 {
			eph = DefaultEphemeral
		}
		skip := exclude
		skip.addRange(eph)
		skip.or(&included)
		emit(PortRange{1, 65535}, 1, to, true, &skip)
	}

	if len(rules) == 0 {
		return nil, fmt.Errorf("no ports left to forward")
	}
	return rules, nil
}

// portSet is a bitmap of port numbers.
type portSet [65536 / 64]uint64

func (s *portSet) has(p uint16) bool { return s[p/64]&(1<<(p%64)) != 0 }

func (s *portSet) addRange(r PortRange) {
	for p := int(r.First); p <= int(r.Last); p++ {
		s[p/64] |= 1 << (p % 64)
	}
}

func (s *portSet) or(o *portSet) {
	for i := range s {
		s[i] |= o[i]
	}
}

// cursor walks a string left to right. Its methods consume input only when
// they succeed, unless they return an error.
type cursor struct {
	s   string
	pos int
}

func (c *cursor) rest() string { return c.s[c.pos:] }
func (c *cursor) eof() bool    { return c.pos >= len(c.s) }

func (c *cursor) lit(l string) bool {
	if strings.HasPrefix(c.rest(), l) {
		c.pos += len(l)
		return true
	}
	return false
}

// word consumes keyword w if it is not followed by a letter or digit.
func (c *cursor) word(w string) bool {
	r := c.rest()
	if !strings.HasPrefix(r, w) {
		return false
	}
	if len(r) > len(w) && isAlnum(r[len(w)]) {
		return false
	}
	c.pos += len(w)
	return true
}

func (c *cursor) peekDigit() bool { return !c.eof() && isDigit(c.s[c.pos]) }

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

func isAlnum(b byte) bool {
	return isDigit(b) || (b|0x20 >= 'a' && b|0x20 <= 'z')
}

// span returns the length of the longest prefix of the rest made of bytes
// in set.
func (c *cursor) span(set string) int {
	r := c.rest()
	n := 0
	for n < len(r) && strings.IndexByte(set, r[n]) >= 0 {
		n++
	}
	return n
}

// addr consumes an IPv4 or IPv6 address, optionally in square brackets.
// Unbracketed, the longest run of characters that can make up an address
// is taken, so "1.2.3.4/..." and "::1/..." both stop at the slash.
func (c *cursor) addr() (netip.Addr, bool) {
	r := c.rest()
	if strings.HasPrefix(r, "[") {
		end := strings.IndexByte(r, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(r[1:end])
		if err != nil || a.Zone() != "" {
			return netip.Addr{}, false
		}
		c.pos += end + 1
		return a.Unmap(), true
	}
	if n := c.span("0123456789abcdefABCDEF:."); strings.Contains(r[:n], ":") {
		if a, err := netip.ParseAddr(r[:n]); err == nil {
			c.pos += n
			return a.Unmap(), true
		}
	}
	if n := c.span("0123456789."); n > 0 {
		if a, err := netip.ParseAddr(r[:n]); err == nil && a.Is4() {
			c.pos += n
			return a, true
		}
	}
	return netip.Addr{}, false
}

// port consumes a decimal port number, 0 to 65535.
func (c *cursor) port() (uint16, error) {
	n := c.span("0123456789")
	if n == 0 {
		if c.eof() {
			return 0, fmt.Errorf("missing port number")
		}
		return 0, fmt.Errorf("expected port number at %q", c.rest())
	}
	digits := c.rest()[:n]
	v, err := strconv.ParseUint(digits, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port out of range: %s", digits)
	}
	c.pos += n
	return uint16(v), nil
}

// portRange consumes "FIRST[-LAST]".
func (c *cursor) portRange() (PortRange, error) {
	first, err := c.port()
	if err != nil {
		return PortRange{}, err
	}
	last := first
	if c.lit("-") {
		if last, err = c.port(); err != nil {
			return PortRange{}, err
		}
		if last < first {
			return PortRange{}, fmt.Errorf("range end %d below start %d", last, first)
		}
	}
	return PortRange{first, last}, nil
}
