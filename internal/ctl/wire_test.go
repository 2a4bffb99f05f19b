package ctl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
)

func rule(p fwd.Proto, addr string, first, last, to uint16) Rule {
	r := Rule{Proto: p, PortRule: conf.PortRule{First: first, Last: last, ToFirst: to}}
	if addr != "" {
		r.Addr = netip.MustParseAddr(addr)
	}
	return r
}

func sampleTables() []Table {
	weak := rule(fwd.UDP, "0.0.0.0", 1, 1000, 1)
	weak.Weak = true
	auto := rule(fwd.TCP, "", 2000, 3000, 2000)
	auto.Auto, auto.Weak = true, true
	ifn := rule(fwd.TCP, "192.0.2.1", 22, 22, 2222)
	ifn.Ifname = "eth0"
	tgt := rule(fwd.TCP, "::1", 80, 81, 8080)
	tgt.ToAddr = netip.MustParseAddr("2001:db8::5")
	return []Table{
		{PIF: PIFHost, Name: "HOST", Caps: CapIPv4 | CapIPv6 | CapTCP | CapUDP | CapScan | CapIfname,
			Rules: []Rule{rule(fwd.TCP, "", 8080, 8080, 80), weak, auto, ifn, tgt}},
		{PIF: PIFSplice, Name: "SPLICE", Caps: CapIPv4 | CapTCP,
			Rules: []Rule{rule(fwd.TCP, "", 9000, 9001, 9000), rule(fwd.UDP, "127.0.0.1", 53, 53, 5353)}},
		{PIF: 7, Name: "EMPTY"},
	}
}

func TestTablesRoundTrip(t *testing.T) {
	b, err := AppendTables(AppendHello(nil), sampleTables())
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(b)
	h, err := ReadHello(r)
	if err != nil || h.Version != Version {
		t.Fatalf("hello %+v, %v", h, err)
	}
	got, err := ReadTables(r)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != 0 {
		t.Errorf("%d bytes left over", r.Len())
	}
	want := sampleTables()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

// TestWireLayout checks the records against upstream's layout byte by
// byte: the hello, and a rule of each kind.
func TestWireLayout(t *testing.T) {
	h := AppendHello(nil)
	want := append([]byte("basil:s\x00"), 0, 0, 0, 2, 0, 0, 0, 128, 0, 0, 0, 16)
	if !bytes.Equal(h, want) {
		t.Errorf("hello % x, want % x", h, want)
	}
	// Dual stack: "::" and flag 1; no target: "::".
	b, err := AppendRule(nil, rule(fwd.TCP, "", 8080, 8081, 80))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != RuleSize || !bytes.Equal(b[:32], make([]byte, 32)) || b[32] != 0 ||
		binary.BigEndian.Uint16(b[48:]) != 8080 || binary.BigEndian.Uint16(b[50:]) != 8081 ||
		binary.BigEndian.Uint16(b[52:]) != 80 || b[54] != 6 || b[55] != FlagDualStack {
		t.Errorf("dual-stack rule % x", b)
	}
	// IPv4: mapped; SPLICE wildcard rules carry "lo".
	r := rule(fwd.UDP, "0.0.0.0", 53, 53, 53)
	r.Weak = true
	b, err = AppendTables(nil, []Table{{PIF: PIFSplice, Name: "SPLICE", Rules: []Rule{r}}})
	if err != nil {
		t.Fatal(err)
	}
	rec := b[1+PIFInfoSize : 1+PIFInfoSize+RuleSize]
	mapped := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0}
	if !bytes.Equal(rec[:16], mapped) || string(rec[32:35]) != "lo\x00" || rec[54] != 17 || rec[55] != FlagWeak {
		t.Errorf("splice rule % x", rec)
	}
	if b[len(b)-1] != PIFNone {
		t.Error("tables not terminated")
	}
}

func TestUpdateRoundTrip(t *testing.T) {
	us := []Update{
		{PIF: PIFHost, Rules: sampleTables()[0].Rules},
		{PIF: PIFSplice, Rules: sampleTables()[1].Rules},
		{PIF: 9},
	}
	b, err := AppendUpdate(nil, us)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(b)
	first, _ := r.ReadByte()
	got, err := ReadUpdateBody(r, first)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, us) || r.Len() != 0 {
		t.Errorf("round trip:\n got %+v\nwant %+v (%d left)", got, us, r.Len())
	}
}

func TestExtRoundTrip(t *testing.T) {
	q := Request{Version: ExtVersion, Op: OpAdd, Arg: "-t 8080"}
	b, err := AppendRequest(nil, q)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != extMarker {
		t.Fatalf("marker %x", b[0])
	}
	got, err := ReadRequestBody(bytes.NewReader(b[1:]))
	if err != nil || got != q {
		t.Errorf("request %+v, %v", got, err)
	}
	for _, p := range []Reply{{Version: 1, OK: true, Text: "a\nb\n"}, {Version: 1, Text: "refused"}, {Version: 1, OK: true}} {
		b, err := AppendReply(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadReply(bytes.NewReader(b))
		if err != nil || got != p {
			t.Errorf("reply %+v: %+v, %v", p, got, err)
		}
	}
}

// TestMalformed checks that every kind of bad input is refused with a
// protocol error (or, cut short, an unexpected end), never accepted.
func TestMalformed(t *testing.T) {
	good, err := AppendRule(nil, rule(fwd.TCP, "192.0.2.1", 10, 20, 30))
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	rules := map[string][]byte{
		"short":            good[:RuleSize-1],
		"port 0":           mod(func(b []byte) { b[48], b[49] = 0, 0 }),
		"to 0":             mod(func(b []byte) { b[52], b[53] = 0, 0 }),
		"reversed":         mod(func(b []byte) { b[51] = 5 }),
		"beyond 65535":     mod(func(b []byte) { b[52], b[53] = 0xff, 0xff }),
		"protocol":         mod(func(b []byte) { b[54] = 1 }),
		"flags":            mod(func(b []byte) { b[55] = 0x80 }),
		"dual on address":  mod(func(b []byte) { b[55] = FlagDualStack }),
		"ifname no NUL":    mod(func(b []byte) { copy(b[32:48], "0123456789abcdef") }),
		"ifname slash":     mod(func(b []byte) { copy(b[32:], "a/b\x00") }),
		"multicast target": mod(func(b []byte) { copy(b[16:32], netip.MustParseAddr("::ffff:224.0.0.1").AsSlice()) }),
		"family change":    mod(func(b []byte) { copy(b[16:32], netip.MustParseAddr("2001:db8::1").AsSlice()) }),
	}
	for name, b := range rules {
		if r, err := DecodeRule(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: decoded %+v, %v", name, r, err)
		}
	}

	tables, _ := AppendTables(nil, sampleTables()[:1])
	noNUL := bytes.Clone(tables)
	copy(noNUL[1:], strings.Repeat("x", PIFNameSize))
	tooMany := bytes.Clone(tables)
	binary.BigEndian.PutUint32(tooMany[1+PIFNameSize+4:], MaxRules+1)
	dup := append(bytes.Clone(tables[:len(tables)-1]), tables...)
	badRule := bytes.Clone(tables)
	badRule[1+PIFInfoSize+54] = 99
	streams := map[string][]byte{
		"pif name without NUL": noNUL,
		"too many rules":       tooMany,
		"duplicate table":      dup,
		"bad rule":             badRule,
	}
	for name, b := range streams {
		if _, err := ReadTables(bytes.NewReader(b)); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for n := 1; n < len(tables); n += 7 {
		if _, err := ReadTables(bytes.NewReader(tables[:n])); !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Errorf("cut at %d: %v", n, err)
		}
	}

	hello := AppendHello(nil)
	for name, f := range map[string]func(b []byte){
		"magic":   func(b []byte) { b[0] = 'B' },
		"version": func(b []byte) { b[11] = 3 },
		"v0":      func(b []byte) { b[11] = 0 },
		"names":   func(b []byte) { b[15] = 64 },
		"ifnames": func(b []byte) { b[19] = 32 },
	} {
		b := bytes.Clone(hello)
		f(b)
		if _, err := ReadHello(bytes.NewReader(b)); !errors.Is(err, ErrProtocol) {
			t.Errorf("hello %s: %v", name, err)
		}
	}

	upd, _ := AppendUpdate(nil, []Update{{PIF: PIFHost, Rules: []Rule{rule(fwd.TCP, "", 1, 1, 1)}}})
	twice := append(bytes.Clone(upd[:len(upd)-1]), upd...)
	big := bytes.Clone(upd)
	binary.BigEndian.PutUint32(big[1:], 1000)
	for name, b := range map[string][]byte{"twice": twice, "count": big} {
		r := bytes.NewReader(b)
		first, _ := r.ReadByte()
		if _, err := ReadUpdateBody(r, first); !errors.Is(err, ErrProtocol) {
			t.Errorf("update %s: %v", name, err)
		}
	}

	req, _ := AppendRequest(nil, Request{Version: 1, Op: OpFlows})
	badMagic := bytes.Clone(req[1:])
	badMagic[0] = 'G'
	longArg := bytes.Clone(req[1:])
	binary.BigEndian.PutUint32(longArg[13:], MaxArg+1)
	for name, b := range map[string][]byte{"magic": badMagic, "argument": longArg} {
		if _, err := ReadRequestBody(bytes.NewReader(b)); !errors.Is(err, ErrProtocol) {
			t.Errorf("request %s: %v", name, err)
		}
	}
	if _, err := AppendRequest(nil, Request{Arg: strings.Repeat("x", MaxArg+1)}); err == nil {
		t.Error("oversized argument sent")
	}
	rep, _ := AppendReply(nil, Reply{Version: 1, OK: true})
	rep[12] = 7
	if _, err := ReadReply(bytes.NewReader(rep)); !errors.Is(err, ErrProtocol) {
		t.Errorf("reply status: %v", err)
	}
}

func TestRuleString(t *testing.T) {
	r := rule(fwd.UDP, "127.0.0.1", 5353, 5354, 53)
	r.Ifname, r.Weak = "lo", true
	if s, want := r.String(), "UDP [127.0.0.1]%lo:5353-5354  =>  53-54 (best effort)"; s != want {
		t.Errorf("%q, want %q", s, want)
	}
	a := rule(fwd.TCP, "", 80, 80, 8080)
	a.Auto = true
	if s, want := a.String(), "TCP [*]:80  =>  8080 (auto-scan)"; s != want {
		t.Errorf("%q, want %q", s, want)
	}
}

// FuzzReadTables feeds arbitrary bytes to the client's decoder and, what
// decodes, back through the encoder: it must come out the same.
func FuzzReadTables(f *testing.F) {
	b, _ := AppendTables(nil, sampleTables())
	f.Add(b)
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, in []byte) {
		ts, err := ReadTables(bytes.NewReader(in))
		if err != nil {
			return
		}
		out, err := AppendTables(nil, ts)
		if err != nil {
			t.Fatalf("decoded tables do not encode: %v", err)
		}
		again, err := ReadTables(bytes.NewReader(out))
		if err != nil || !reflect.DeepEqual(again, ts) {
			t.Fatalf("re-encoded tables differ: %v", err)
		}
	})
}
