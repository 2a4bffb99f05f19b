package ctl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
)

// Constants of the pesto protocol, version 2, as upstream passt defines
// them (pesto.h, fwd_rule.h).
const (
	// Magic opens the server's hello: "basil:s" and a NUL.
	Magic = "basil:s\x00"
	// Version is the pesto protocol version spoken.
	Version = 2
	// PIFNameSize is the size of a pif name field, NUL included.
	PIFNameSize = 128
	// IfNameSize is the size of an interface name field (IFNAMSIZ).
	IfNameSize = 16
	// MaxRules bounds the rules of one table, as upstream does
	// (MAX_FWD_RULES) and as conf.MaxRules does.
	MaxRules = 255
	// HelloSize, PIFInfoSize and RuleSize are the sizes of the fixed
	// records.
	HelloSize   = 8 + 4 + 4 + 4
	PIFInfoSize = PIFNameSize + 4 + 4
	RuleSize    = 16 + 16 + IfNameSize + 2 + 2 + 2 + 1 + 1
)

// Pif identifiers and names of the forwarding tables (upstream's enum
// pif_type). PIFNone ends a list of tables.
const (
	PIFNone   = 0
	PIFHost   = 1 // inbound: -t and -u, host sockets towards the guest
	PIFTap    = 2 // no table: the guest's own traffic
	PIFSplice = 3 // outbound: -T and -U, the namespace's loopback towards the host
)

// PIFName names a pif as upstream does.
func PIFName(pif uint8) string {
	switch pif {
	case PIFHost:
		return "HOST"
	case PIFTap:
		return "TAP"
	case PIFSplice:
		return "SPLICE"
	}
	return "?"
}

// Capability bits of a table (FWD_CAP_*).
const (
	CapIPv4   = 1 << 0
	CapIPv6   = 1 << 1
	CapTCP    = 1 << 2
	CapUDP    = 1 << 3
	CapScan   = 1 << 4 // "auto" rules (pasta)
	CapIfname = 1 << 5 // listening on an interface (SO_BINDTODEVICE)
)

// Rule flags (FWD_DUAL_STACK_ANY, FWD_WEAK, FWD_SCAN).
const (
	FlagDualStack = 1 << 0
	FlagWeak      = 1 << 1
	FlagScan      = 1 << 2
	knownFlags    = FlagDualStack | FlagWeak | FlagScan
)

// IP protocol numbers of rules.
const (
	ipprotoTCP = 6
	ipprotoUDP = 17
)

// Rule is one forwarding rule as the control socket carries it: a port
// rule of the command line's syntax (conf.PortRule) for one protocol,
// fixed or automatic.
type Rule struct {
	Proto fwd.Proto
	conf.PortRule
	// Auto marks an "auto" rule: its ports are forwarded while they are
	// bound on the other side.
	Auto bool
}

// Equal reports whether r and o are the same rule.
func (r Rule) Equal(o Rule) bool { return r == o }

// Conflicts reports whether r and o could listen on the same port: same
// protocol, overlapping addresses and overlapping port ranges.
func (r Rule) Conflicts(o Rule) bool {
	if r.Proto != o.Proto || r.Last < o.First || o.Last < r.First {
		return false
	}
	a, b := r.Addr, o.Addr
	if !a.IsValid() || !b.IsValid() {
		return true
	}
	if a.IsUnspecified() || b.IsUnspecified() {
		return a.Is4() == b.Is4()
	}
	return a == b
}

// Option is the command-line option a rule of table pif comes from:
// "-t", "-u", "-T" or "-U".
func (r Rule) Option(pif uint8) string {
	o := "-t"
	if r.Proto == fwd.UDP {
		o = "-u"
	}
	if pif == PIFSplice {
		o = strings.ToUpper(o)
	}
	return o
}

// String formats r the way upstream's pesto shows rules, e.g.
// "TCP [*]:8080  =>  80" or "UDP [127.0.0.1]%lo:5353-5354  =>  53-54 (best effort)".
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(strings.ToUpper(r.Proto.String()))
	b.WriteString(" [")
	switch {
	case !r.Addr.IsValid():
		b.WriteString("*")
	default:
		b.WriteString(r.Addr.String())
	}
	b.WriteString("]")
	if r.Ifname != "" {
		b.WriteString("%" + r.Ifname)
	}
	b.WriteString(":" + conf.PortRange{First: r.First, Last: r.Last}.String() + "  =>  ")
	if r.ToAddr.IsValid() {
		b.WriteString(r.ToAddr.String() + ":")
	}
	b.WriteString(conf.PortRange{First: r.ToFirst, Last: r.ToFirst + (r.Last - r.First)}.String())
	if r.Weak {
		b.WriteString(" (best effort)")
	}
	if r.Auto {
		b.WriteString(" (auto-scan)")
	}
	return b.String()
}

// Table is one forwarding table as the hello carries it.
type Table struct {
	PIF   uint8
	Name  string
	Caps  uint32
	Rules []Rule
}

// ErrProtocol wraps every malformed-input error of the wire code.
var ErrProtocol = errors.New("control protocol")

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

// Hello is the server's greeting.
type Hello struct {
	Version, PIFNameSize, IfNameSize uint32
}

// AppendHello appends the greeting of this server.
func AppendHello(b []byte) []byte {
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint32(b, Version)
	b = binary.BigEndian.AppendUint32(b, PIFNameSize)
	return binary.BigEndian.AppendUint32(b, IfNameSize)
}

// ReadHello reads and checks a server's greeting: the magic, a version
// this client speaks (1 to Version) and the field sizes it uses.
func ReadHello(r io.Reader) (Hello, error) {
	var buf [HelloSize]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return Hello{}, err
	}
	if string(buf[:8]) != Magic {
		return Hello{}, protoErr("bad magic %q from server", buf[:8])
	}
	h := Hello{
		Version:     binary.BigEndian.Uint32(buf[8:]),
		PIFNameSize: binary.BigEndian.Uint32(buf[12:]),
		IfNameSize:  binary.BigEndian.Uint32(buf[16:]),
	}
	switch {
	case h.Version == 0:
		return h, protoErr("server speaks an experimental protocol version (0)")
	case h.Version != Version:
		return h, protoErr("server speaks protocol version %d, not %d", h.Version, Version)
	case h.PIFNameSize != PIFNameSize:
		return h, protoErr("server has pif name size %d, not %d", h.PIFNameSize, PIFNameSize)
	case h.IfNameSize != IfNameSize:
		return h, protoErr("server has interface name size %d, not %d", h.IfNameSize, IfNameSize)
	}
	return h, nil
}

// AppendTables appends the server's list of tables: per table its pif, a
// pif info record (name, capabilities, rule count) and its rules; PIFNone
// ends the list.
func AppendTables(b []byte, ts []Table) ([]byte, error) {
	for _, t := range ts {
		if t.PIF == PIFNone || len(t.Name) >= PIFNameSize || len(t.Rules) > MaxRules {
			return b, protoErr("table %d (%q) cannot be sent", t.PIF, t.Name)
		}
		b = append(b, t.PIF)
		var name [PIFNameSize]byte
		copy(name[:], t.Name)
		b = append(b, name[:]...)
		b = binary.BigEndian.AppendUint32(b, t.Caps)
		b = binary.BigEndian.AppendUint32(b, uint32(len(t.Rules)))
		for _, r := range t.Rules {
			var err error
			if b, err = AppendRule(b, toWire(t.PIF, r)); err != nil {
				return b, err
			}
		}
	}
	return append(b, PIFNone), nil
}

// toWire and fromWire translate the one place where the wire and
// gopasst's rules differ: a rule of the SPLICE table on the namespace's
// wildcard is bound to the loopback interface upstream ("%lo"), while
// gopasst's -T and -U rules name no interface and listen on 127.0.0.1
// and ::1.
func toWire(pif uint8, r Rule) Rule {
	if pif == PIFSplice && r.Ifname == "" && (!r.Addr.IsValid() || r.Addr.IsUnspecified()) {
		r.Ifname = "lo"
	}
	return r
}

func fromWire(pif uint8, r Rule) Rule {
	if pif == PIFSplice && r.Ifname == "lo" && (!r.Addr.IsValid() || r.Addr.IsUnspecified()) {
		r.Ifname = ""
	}
	return r
}

// ReadTables reads a server's list of tables, refusing duplicate pifs or
// names, names without their NUL and more than MaxRules rules in one.
func ReadTables(r io.Reader) ([]Table, error) {
	var ts []Table
	for {
		var pif [1]byte
		if _, err := io.ReadFull(r, pif[:]); err != nil {
			return nil, err
		}
		if pif[0] == PIFNone {
			return ts, nil
		}
		if len(ts) >= 8 {
			return nil, protoErr("too many tables")
		}
		var info [PIFInfoSize]byte
		if _, err := io.ReadFull(r, info[:]); err != nil {
			return nil, err
		}
		name, ok := cString(info[:PIFNameSize])
		if !ok {
			return nil, protoErr("pif name not NUL-terminated")
		}
		t := Table{PIF: pif[0], Name: name, Caps: binary.BigEndian.Uint32(info[PIFNameSize:])}
		n := binary.BigEndian.Uint32(info[PIFNameSize+4:])
		if n > MaxRules {
			return nil, protoErr("%d rules in table %s (maximum %d)", n, name, MaxRules)
		}
		for _, o := range ts {
			if o.PIF == t.PIF || o.Name == t.Name {
				return nil, protoErr("duplicate table %d (%s)", t.PIF, name)
			}
		}
		rules, err := readRules(r, n, t.PIF)
		if err != nil {
			return nil, err
		}
		t.Rules = rules
		ts = append(ts, t)
	}
}

// Update is the new content of one table, as a client sends it.
type Update struct {
	PIF   uint8
	Rules []Rule
}

// AppendUpdate appends a client's update: per table its pif, the rule
// count and the rules; PIFNone ends it.
func AppendUpdate(b []byte, us []Update) ([]byte, error) {
	for _, u := range us {
		if u.PIF == PIFNone || u.PIF == extMarker || len(u.Rules) > MaxRules {
			return b, protoErr("update of table %d cannot be sent", u.PIF)
		}
		b = append(b, u.PIF)
		b = binary.BigEndian.AppendUint32(b, uint32(len(u.Rules)))
		for _, r := range u.Rules {
			var err error
			if b, err = AppendRule(b, toWire(u.PIF, r)); err != nil {
				return b, err
			}
		}
	}
	return append(b, PIFNone), nil
}

// ReadUpdateBody reads the rest of a client's update whose first pif,
// first, has been read already (it is not PIFNone): the rule count and
// rules of each table, up to PIFNone.
func ReadUpdateBody(r io.Reader, first uint8) ([]Update, error) {
	var us []Update
	pif := first
	for pif != PIFNone {
		if len(us) >= 8 {
			return nil, protoErr("too many tables in update")
		}
		for _, u := range us {
			if u.PIF == pif {
				return nil, protoErr("table %d updated twice", pif)
			}
		}
		var cnt [4]byte
		if _, err := io.ReadFull(r, cnt[:]); err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(cnt[:])
		if n > MaxRules {
			return nil, protoErr("%d rules for table %d (maximum %d)", n, pif, MaxRules)
		}
		rules, err := readRules(r, n, pif)
		if err != nil {
			return nil, err
		}
		us = append(us, Update{PIF: pif, Rules: rules})
		var next [1]byte
		if _, err := io.ReadFull(r, next[:]); err != nil {
			return nil, err
		}
		pif = next[0]
	}
	return us, nil
}

func readRules(r io.Reader, n uint32, pif uint8) ([]Rule, error) {
	var rules []Rule
	var buf [RuleSize]byte
	for range n {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return nil, err
		}
		rule, err := DecodeRule(buf[:])
		if err != nil {
			return nil, err
		}
		rules = append(rules, fromWire(pif, rule))
	}
	return rules, nil
}

// AppendRule appends the 56-byte record of r (upstream's struct fwd_rule
// with its ports in network order): the listening address, the target
// address, the interface name, first and last port, the target of the
// first, the IP protocol and the flags. Addresses are IPv6, IPv4 ones
// mapped; a rule on any address of both families is "::" with the
// dual-stack flag; no target address is "::".
func AppendRule(b []byte, r Rule) ([]byte, error) {
	if err := r.validate(); err != nil {
		return b, err
	}
	var flags uint8
	addr := r.Addr
	if !addr.IsValid() {
		addr, flags = netip.IPv6Unspecified(), FlagDualStack
	}
	if r.Weak {
		flags |= FlagWeak
	}
	if r.Auto {
		flags |= FlagScan
	}
	a16 := as16(addr)
	b = append(b, a16[:]...)
	var t16 [16]byte
	if r.ToAddr.IsValid() {
		t16 = as16(r.ToAddr)
	}
	b = append(b, t16[:]...)
	var ifn [IfNameSize]byte
	copy(ifn[:], r.Ifname)
	b = append(b, ifn[:]...)
	b = binary.BigEndian.AppendUint16(b, r.First)
	b = binary.BigEndian.AppendUint16(b, r.Last)
	b = binary.BigEndian.AppendUint16(b, r.ToFirst)
	proto := uint8(ipprotoTCP)
	if r.Proto == fwd.UDP {
		proto = ipprotoUDP
	}
	return append(b, proto, flags), nil
}

// as16 is a in 16 bytes, IPv4 addresses mapped.
func as16(a netip.Addr) [16]byte { return a.As16() }

// DecodeRule decodes a rule record (see AppendRule), refusing what
// upstream's fwd_rule_add refuses: an empty or reversed port range, port
// 0 on either side, a target range beyond port 65535, unknown flags or
// protocols, a dual-stack rule on an address other than "::", an
// interface name without its NUL, a multicast target address or one of
// another family than the listening address.
func DecodeRule(b []byte) (Rule, error) {
	if len(b) != RuleSize {
		return Rule{}, protoErr("rule of %d bytes, not %d", len(b), RuleSize)
	}
	var r Rule
	addr := netip.AddrFrom16([16]byte(b[0:16])).Unmap()
	taddr := netip.AddrFrom16([16]byte(b[16:32])).Unmap()
	ifname, ok := cString(b[32:48])
	if !ok {
		return r, protoErr("interface name not NUL-terminated")
	}
	r.Ifname = ifname
	r.First = binary.BigEndian.Uint16(b[48:])
	r.Last = binary.BigEndian.Uint16(b[50:])
	r.ToFirst = binary.BigEndian.Uint16(b[52:])
	switch b[54] {
	case ipprotoTCP:
		r.Proto = fwd.TCP
	case ipprotoUDP:
		r.Proto = fwd.UDP
	default:
		return r, protoErr("unsupported protocol %d in rule", b[54])
	}
	flags := b[55]
	if flags&^knownFlags != 0 {
		return r, protoErr("unknown rule flags 0x%x", flags&^knownFlags)
	}
	r.Weak, r.Auto = flags&FlagWeak != 0, flags&FlagScan != 0
	r.Addr = addr
	if flags&FlagDualStack != 0 {
		if addr != netip.IPv6Unspecified() {
			return r, protoErr("dual-stack rule on address %s", addr)
		}
		r.Addr = netip.Addr{}
	}
	if !taddr.IsUnspecified() {
		r.ToAddr = taddr
	}
	return r, r.validate()
}

// validate checks what DecodeRule promises of a rule.
func (r Rule) validate() error {
	switch {
	case r.Proto != fwd.TCP && r.Proto != fwd.UDP:
		return protoErr("rule of unknown protocol %d", r.Proto)
	case r.First == 0 || r.ToFirst == 0:
		return protoErr("rule %s maps port 0", r)
	case r.First > r.Last:
		return protoErr("rule has reversed port range %d-%d", r.First, r.Last)
	case uint32(r.ToFirst)+uint32(r.Last-r.First) > 65535:
		return protoErr("rule %d-%d maps beyond port 65535", r.First, r.Last)
	case len(r.Ifname) >= IfNameSize || strings.ContainsAny(r.Ifname, "/\x00") || r.Ifname == "." || r.Ifname == "..":
		return protoErr("invalid interface name %q", r.Ifname)
	case r.Addr.Is6() && r.Addr.Is4In6():
		return protoErr("IPv4-mapped listening address %s", r.Addr)
	}
	if t := r.ToAddr; t.IsValid() {
		switch {
		case t.IsMulticast() || t == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return protoErr("multicast or broadcast target address %s", t)
		case t.IsUnspecified() || t.Is4In6():
			return protoErr("invalid target address %s", t)
		case !r.Addr.IsValid():
			return protoErr("dual-stack rule with target address %s", t)
		case r.Addr.Is4() != t.Is4():
			return protoErr("rule from %s to %s changes the address family", r.Addr, t)
		}
	}
	return nil
}

// cString is the NUL-terminated string at the start of b; ok is false
// when b holds no NUL.
func cString(b []byte) (string, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", false
	}
	return string(b[:i]), true
}
