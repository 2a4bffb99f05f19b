package autoscan

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/gopasst/gopasst/internal/conf"
)

func autoRules(t *testing.T, specs ...string) []conf.PortRule {
	t.Helper()
	var f conf.Forward
	for _, s := range specs {
		if err := f.AddSpec(s, conf.SpecOptions{Opt: 'u', Mode: conf.ModePasta}); err != nil {
			t.Fatal(err)
		}
	}
	return RulesFor(&f)
}

func sock(addr string, port uint16, ino uint64) Socket {
	return Socket{Addr: netip.MustParseAddr(addr), Port: port, Inode: ino}
}

func fwd(port, to uint16) Fwd { return Fwd{Port: port, ToPort: to} }

func TestDesired(t *testing.T) {
	own := map[uint64]bool{100: true, 101: true}
	for _, tc := range []struct {
		name  string
		rules []conf.PortRule
		bound []Socket
		want  []Fwd
	}{{
		name:  "nothing bound",
		rules: autoRules(t, "auto"),
	}, {
		name:  "no rules",
		bound: []Socket{sock("0.0.0.0", 53, 1)},
	}, {
		// "auto" alone covers the non-ephemeral ports only.
		name:  "default auto",
		rules: autoRules(t, "auto"),
		bound: []Socket{
			sock("127.0.0.53", 53, 1),
			sock("0.0.0.0", 5353, 2), sock("::", 5353, 3), // one forward
			sock("10.0.2.15", 68, 4),  // any address counts
			sock("0.0.0.0", 40000, 5), // ephemeral: not covered
			sock("0.0.0.0", 4789, 0),  // kernel socket: counts
			sock("::1", 65535, 6),
			sock("0.0.0.0", 8080, 100), // ours
			sock("::", 9090, 101),      // ours
		},
		want: []Fwd{fwd(53, 53), fwd(68, 68), fwd(4789, 4789), fwd(5353, 5353), fwd(65535, 65535)},
	}, {
		name:  "own socket beside a foreign one on the same port",
		rules: autoRules(t, "auto"),
		bound: []Socket{sock("0.0.0.0", 8080, 100), sock("127.0.0.1", 8080, 7)},
		want:  []Fwd{fwd(8080, 8080)},
	}, {
		name:  "range with exclusion",
		rules: autoRules(t, "8000-8010,~8005,auto"),
		bound: []Socket{
			sock("0.0.0.0", 7999, 1), sock("0.0.0.0", 8000, 2),
			sock("0.0.0.0", 8004, 3), sock("0.0.0.0", 8005, 4),
			sock("0.0.0.0", 8010, 5), sock("0.0.0.0", 8011, 6),
		},
		want: []Fwd{fwd(8000, 8000), fwd(8004, 8004), fwd(8010, 8010)},
	}, {
		name:  "ephemeral port included explicitly",
		rules: autoRules(t, "40000,auto"),
		bound: []Socket{sock("0.0.0.0", 40000, 1), sock("0.0.0.0", 53, 2)},
		want:  []Fwd{fwd(40000, 40000)},
	}, {
		// The target port has to be bound, not the listened one.
		name:  "remap",
		rules: autoRules(t, "80-82:8080-8082,auto"),
		bound: []Socket{sock("0.0.0.0", 81, 1), sock("::", 8081, 2), sock("::", 8083, 3)},
		want:  []Fwd{fwd(81, 8081)},
	}, {
		name:  "listening address, interface and target address",
		rules: autoRules(t, "127.0.0.1%lo/5000,auto", "0.0.0.0/6000:192.0.2.5/7000,auto"),
		bound: []Socket{sock("::1", 5000, 1), sock("0.0.0.0", 6000, 2), sock("192.0.2.5", 7000, 3)},
		want: []Fwd{
			{Addr: netip.MustParseAddr("0.0.0.0"), Port: 6000, ToPort: 7000, ToAddr: netip.MustParseAddr("192.0.2.5")},
			{Addr: netip.MustParseAddr("127.0.0.1"), Ifname: "lo", Port: 5000, ToPort: 5000},
		},
	}, {
		name:  "same port on two addresses",
		rules: autoRules(t, "::1/auto", "127.0.0.1/auto"),
		bound: []Socket{sock("0.0.0.0", 22, 1)},
		want: []Fwd{
			{Addr: netip.MustParseAddr("127.0.0.1"), Port: 22, ToPort: 22},
			{Addr: netip.MustParseAddr("::1"), Port: 22, ToPort: 22},
		},
	}, {
		name: "hand-built rules",
		rules: []conf.PortRule{
			{First: 10, Last: 20, ToFirst: 10},
			{First: 10, Last: 20, ToFirst: 10},          // duplicate
			{First: 30, Last: 29, ToFirst: 30},          // empty
			{First: 0, Last: 2, ToFirst: 1000},          // port 0 listened
			{First: 65000, Last: 65535, ToFirst: 65500}, // targets past 65535
		},
		bound: []Socket{
			sock("0.0.0.0", 15, 1), sock("0.0.0.0", 30, 2),
			sock("0.0.0.0", 1000, 3), sock("0.0.0.0", 1002, 4),
			sock("0.0.0.0", 65535, 5), sock("0.0.0.0", 0, 6),
		},
		want: []Fwd{fwd(2, 1002), fwd(15, 15), fwd(65035, 65535)},
	}, {
		name:  "whole range mode without AutoRules",
		rules: RulesFor(&conf.Forward{Mode: conf.FwdAuto}),
		bound: []Socket{sock("0.0.0.0", 40000, 1)},
		want:  []Fwd{fwd(40000, 40000)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := Desired(tc.rules, tc.bound, own)
			if !slices.Equal(got, tc.want) {
				t.Errorf("Desired =\n%v\nwant\n%v", got, tc.want)
			}
		})
	}
}

func TestRulesFor(t *testing.T) {
	if r := RulesFor(&conf.Forward{Mode: conf.FwdSpec, AutoRules: []conf.PortRule{{First: 1, Last: 1, ToFirst: 1}}}); r != nil {
		t.Errorf("RulesFor(spec) = %v, want nil", r)
	}
	if r := RulesFor(&conf.Forward{}); r != nil {
		t.Errorf("RulesFor(unset) = %v, want nil", r)
	}
	all := RulesFor(&conf.Forward{Mode: conf.FwdAuto})
	if len(all) != 1 || all[0] != (conf.PortRule{First: 1, Last: 65535, ToFirst: 1}) {
		t.Errorf("RulesFor(auto, no rules) = %v", all)
	}
	rules := autoRules(t, "8000-8010,~8005,auto")
	if len(rules) != 2 || rules[0].Last != 8004 || rules[1].First != 8006 {
		t.Errorf("RulesFor(8000-8010,~8005,auto) = %v", rules)
	}
}

func TestDiff(t *testing.T) {
	a := Fwd{Addr: netip.MustParseAddr("127.0.0.1"), Port: 22, ToPort: 22}
	for _, tc := range []struct {
		name                string
		current, desired    []Fwd
		wantOpen, wantClose []Fwd
	}{
		{name: "empty"},
		{name: "open all", desired: []Fwd{fwd(2, 2), fwd(1, 1)}, wantOpen: []Fwd{fwd(1, 1), fwd(2, 2)}},
		{name: "close all", current: []Fwd{fwd(2, 2), fwd(1, 1)}, wantClose: []Fwd{fwd(1, 1), fwd(2, 2)}},
		{name: "same", current: []Fwd{fwd(1, 1), a}, desired: []Fwd{a, fwd(1, 1)}},
		{
			name:      "mixed",
			current:   []Fwd{fwd(1, 1), fwd(2, 2), a},
			desired:   []Fwd{fwd(2, 2), fwd(3, 3), fwd(3, 3), a},
			wantOpen:  []Fwd{fwd(3, 3)},
			wantClose: []Fwd{fwd(1, 1)},
		},
		{
			name:      "target changed",
			current:   []Fwd{fwd(80, 8080)},
			desired:   []Fwd{fwd(80, 8081)},
			wantOpen:  []Fwd{fwd(80, 8081)},
			wantClose: []Fwd{fwd(80, 8080)},
		},
		{
			name:      "address differs",
			current:   []Fwd{fwd(22, 22)},
			desired:   []Fwd{a},
			wantOpen:  []Fwd{a},
			wantClose: []Fwd{fwd(22, 22)},
		},
	} {
		open, close := Diff(tc.current, tc.desired)
		if !slices.Equal(open, tc.wantOpen) || !slices.Equal(close, tc.wantClose) {
			t.Errorf("%s: Diff = open %v, close %v; want open %v, close %v",
				tc.name, open, close, tc.wantOpen, tc.wantClose)
		}
	}
}

func TestFwdString(t *testing.T) {
	for _, tc := range []struct {
		f    Fwd
		want string
	}{
		{fwd(53, 53), "*/53 => 53"},
		{Fwd{Addr: netip.MustParseAddr("127.0.0.1"), Ifname: "lo", Port: 5000, ToPort: 6000,
			ToAddr: netip.MustParseAddr("127.0.0.2")}, "127.0.0.1%lo/5000 => 127.0.0.2/6000"},
		{Fwd{Addr: netip.MustParseAddr("::1"), Port: 80, ToPort: 8080}, "[::1]/80 => 8080"},
	} {
		if got := tc.f.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}
