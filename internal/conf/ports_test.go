package conf

import (
	"errors"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

var (
	mustAddr = netip.MustParseAddr
	any4     = netip.IPv4Unspecified()
	any6     = netip.IPv6Unspecified()
)

// r builds a rule on the wildcard address with no remapping.
func r(first, last uint16) PortRule {
	return PortRule{First: first, Last: last, ToFirst: first}
}

func (p PortRule) to(t uint16) PortRule              { p.ToFirst = t; return p }
func (p PortRule) at(a netip.Addr) PortRule          { p.Addr = a; return p }
func (p PortRule) dev(n string) PortRule             { p.Ifname = n; return p }
func (p PortRule) toAddr(a netip.Addr) PortRule      { p.ToAddr = a; return p }
func (p PortRule) weak() PortRule                    { p.Weak = true; return p }
func rules(rs ...PortRule) []PortRule                { return rs }
func pasta(o SpecOptions) SpecOptions                { o.Mode = ModePasta; return o }
func withEph(o SpecOptions, e PortRange) SpecOptions { o.Ephemeral = e; return o }

// nonEphemeral is what "all" expands to with the default ephemeral range.
func nonEphemeral() []PortRule {
	return rules(r(1, 32767).weak(), r(61000, 65535).weak())
}

func TestAddSpec(t *testing.T) {
	tcp := SpecOptions{Opt: 't', Mode: ModePasst}
	tests := []struct {
		name string
		spec string
		opts SpecOptions
		mode ForwardMode
		want []PortRule // Rules
		auto []PortRule // AutoRules
	}{
		{name: "none", spec: "none", opts: tcp, mode: FwdNone},
		{name: "single", spec: "22", opts: tcp, mode: FwdSpec, want: rules(r(22, 22))},
		{name: "remap", spec: "22:23", opts: tcp, mode: FwdSpec, want: rules(r(22, 22).to(23))},
		{name: "list", spec: "22,25", opts: tcp, mode: FwdSpec, want: rules(r(22, 22), r(25, 25))},
		{name: "range", spec: "22-80", opts: tcp, mode: FwdSpec, want: rules(r(22, 80))},
		{name: "range remap", spec: "22-80:32-90", opts: tcp, mode: FwdSpec, want: rules(r(22, 80).to(32))},
		{name: "max port", spec: "65535", opts: tcp, mode: FwdSpec, want: rules(r(65535, 65535))},
		{name: "full range", spec: "1-65535", opts: tcp, mode: FwdSpec, want: rules(r(1, 65535))},
		{name: "remap to top", spec: "1-10:65526-65535", opts: tcp, mode: FwdSpec, want: rules(r(1, 10).to(65526))},
		{name: "leading zeros", spec: "0022", opts: tcp, mode: FwdSpec, want: rules(r(22, 22))},
		{name: "ipv4 addr", spec: "192.0.2.1/22", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("192.0.2.1")))},
		{name: "ipv4 addr and ifname", spec: "192.0.2.1%eth0/22", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("192.0.2.1")).dev("eth0"))},
		{name: "ifname only", spec: "%eth0/22", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).dev("eth0"))},
		{name: "explicit wildcard", spec: "*/22", opts: tcp, mode: FwdSpec, want: rules(r(22, 22))},
		{name: "wildcard with ifname", spec: "*%lo/22", opts: tcp, mode: FwdSpec, want: rules(r(22, 22).dev("lo"))},
		{name: "empty address", spec: "/22", opts: tcp, mode: FwdSpec, want: rules(r(22, 22))},
		{name: "ifname max length", spec: "%abcdefghijklmno/22", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).dev("abcdefghijklmno"))},
		{name: "ipv6 addr", spec: "::1/22", opts: tcp, mode: FwdSpec, want: rules(r(22, 22).at(mustAddr("::1")))},
		{name: "ipv6 bracketed", spec: "[2001:db8::1]/22-23", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 23).at(mustAddr("2001:db8::1")))},
		{name: "ipv4 bracketed", spec: "[192.0.2.1]/22", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("192.0.2.1")))},
		{name: "ipv4-mapped is ipv4", spec: "::ffff:192.0.2.1/22", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("192.0.2.1")))},
		{name: "link-local with ifname", spec: "fe80::1%eth0/22", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("fe80::1")).dev("eth0"))},
		{name: "unspecified ipv4", spec: "0.0.0.0/22", opts: tcp, mode: FwdSpec, want: rules(r(22, 22).at(any4))},
		{name: "unspecified ipv6", spec: "[::]/22", opts: tcp, mode: FwdSpec, want: rules(r(22, 22).at(any6))},
		{name: "target address and port", spec: "0.0.0.0/5000:192.0.2.5/6000", opts: tcp, mode: FwdSpec,
			want: rules(r(5000, 5000).at(any4).to(6000).toAddr(mustAddr("192.0.2.5")))},
		{name: "target address only", spec: "192.0.2.1/22:192.0.2.9", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("192.0.2.1")).toAddr(mustAddr("192.0.2.9")))},
		{name: "ipv6 target", spec: "[::]/22-23:[2001:db8::5]/2222-2223", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 23).at(any6).to(2222).toAddr(mustAddr("2001:db8::5")))},
		{name: "unbracketed ipv6 target", spec: "::1/22:2001:db8::5/2222", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("::1")).to(2222).toAddr(mustAddr("2001:db8::5")))},
		{name: "unspecified target means automatic", spec: "192.0.2.1/22:0.0.0.0", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("192.0.2.1")))},
		{name: "target with -4", spec: "22:192.0.2.9", opts: SpecOptions{Opt: 't', IPv4Only: true}, mode: FwdSpec,
			want: rules(r(22, 22).at(any4).toAddr(mustAddr("192.0.2.9")))},
		{name: "-6 makes wildcard ipv6", spec: "22", opts: SpecOptions{Opt: 't', IPv6Only: true}, mode: FwdSpec,
			want: rules(r(22, 22).at(any6))},
		{name: "exclusion inside range", spec: "2000-5000,~3000-3010", opts: tcp, mode: FwdSpec,
			want: rules(r(2000, 2999), r(3011, 5000))},
		{name: "exclusion first", spec: "~25,20-30", opts: tcp, mode: FwdSpec,
			want: rules(r(20, 24), r(26, 30))},
		{name: "exclusion inside remapped range", spec: "192.0.2.1/20-30:120-130,~25", opts: tcp, mode: FwdSpec,
			want: rules(r(20, 24).at(mustAddr("192.0.2.1")).to(120), r(26, 30).at(mustAddr("192.0.2.1")).to(126))},
		{name: "overlapping exclusions", spec: "1-10,~2-5,~4-8", opts: tcp, mode: FwdSpec,
			want: rules(r(1, 1), r(9, 10))},
		{name: "exclusion only", spec: "~20000-20010", opts: tcp, mode: FwdSpec,
			want: rules(r(1, 19999).weak(), r(20011, 32767).weak(), r(61000, 65535).weak())},
		{name: "exclusion of port 0", spec: "~0-1023", opts: tcp, mode: FwdSpec,
			want: rules(r(1024, 32767).weak(), r(61000, 65535).weak())},
		{name: "all", spec: "all", opts: tcp, mode: FwdSpec, want: nonEphemeral()},
		{name: "all custom ephemeral", spec: "all", opts: withEph(tcp, PortRange{1024, 65535}), mode: FwdSpec,
			want: rules(r(1, 1023).weak())},
		{name: "all ephemeral in the middle", spec: "all,~1-999", opts: withEph(tcp, PortRange{2000, 3000}), mode: FwdSpec,
			want: rules(r(1000, 1999).weak(), r(3001, 65535).weak())},
		{name: "all with exclusion", spec: "all,~22", opts: tcp, mode: FwdSpec,
			want: rules(r(1, 21).weak(), r(23, 32767).weak(), r(61000, 65535).weak())},
		{name: "all with include", spec: "all,22:2222", opts: tcp, mode: FwdSpec,
			want: rules(r(22, 22).to(2222), r(1, 21).weak(), r(23, 32767).weak(), r(61000, 65535).weak())},
		{name: "all with ephemeral include", spec: "40000,all", opts: tcp, mode: FwdSpec,
			want: rules(r(40000, 40000), r(1, 32767).weak(), r(61000, 65535).weak())},
		{name: "address all", spec: "::1/all", opts: tcp, mode: FwdSpec,
			want: rules(r(1, 32767).at(mustAddr("::1")).weak(), r(61000, 65535).at(mustAddr("::1")).weak())},
		{name: "all with target", spec: "127.0.0.6/all:192.0.2.6", opts: tcp, mode: FwdSpec,
			want: rules(r(1, 32767).at(mustAddr("127.0.0.6")).toAddr(mustAddr("192.0.2.6")).weak(),
				r(61000, 65535).at(mustAddr("127.0.0.6")).toAddr(mustAddr("192.0.2.6")).weak())},
		{name: "auto", spec: "auto", opts: pasta(tcp), mode: FwdAuto, auto: nonEphemeral()},
		{name: "address auto", spec: "::1/auto", opts: pasta(tcp), mode: FwdAuto,
			auto: rules(r(1, 32767).at(mustAddr("::1")).weak(), r(61000, 65535).at(mustAddr("::1")).weak())},
		{name: "range auto", spec: "8000-8010,auto", opts: pasta(tcp), mode: FwdAuto, auto: rules(r(8000, 8010))},
		{name: "auto first", spec: "auto,8000-8010", opts: pasta(tcp), mode: FwdAuto, auto: rules(r(8000, 8010))},
		{name: "auto with exclusion", spec: "auto,~22", opts: pasta(tcp), mode: FwdAuto,
			auto: rules(r(1, 21).weak(), r(23, 32767).weak(), r(61000, 65535).weak())},
		{name: "-T", spec: "8080", opts: pasta(SpecOptions{Opt: 'T'}), mode: FwdSpec, want: rules(r(8080, 8080))},
		{name: "-U auto", spec: "auto", opts: pasta(SpecOptions{Opt: 'U'}), mode: FwdAuto, auto: nonEphemeral()},
		{name: "udp", spec: "53", opts: SpecOptions{Opt: 'u'}, mode: FwdSpec, want: rules(r(53, 53))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Forward
			if err := f.AddSpec(tt.spec, tt.opts); err != nil {
				t.Fatalf("AddSpec(%q): %v", tt.spec, err)
			}
			if f.Mode != tt.mode {
				t.Errorf("Mode = %v, want %v", f.Mode, tt.mode)
			}
			if !reflect.DeepEqual(f.Rules, tt.want) {
				t.Errorf("Rules =\n  %v\nwant\n  %v", f.Rules, tt.want)
			}
			if !reflect.DeepEqual(f.AutoRules, tt.auto) {
				t.Errorf("AutoRules =\n  %v\nwant\n  %v", f.AutoRules, tt.auto)
			}
		})
	}
}

func TestAddSpecErrors(t *testing.T) {
	tcp := SpecOptions{Opt: 't', Mode: ModePasta}
	passt := SpecOptions{Opt: 't', Mode: ModePasst}
	tests := []struct {
		spec string
		opts SpecOptions
		want string
	}{
		{"", tcp, "no ports given"},
		{"70000", tcp, "port out of range"},
		{"65536", tcp, "port out of range"},
		{"99999999999999999999999", tcp, "port out of range"},
		{"22-70000", tcp, "port out of range"},
		{"22:70000", tcp, "port out of range"},
		{"~70000", tcp, "port out of range"},
		{"0", tcp, "port 0"},
		{"0-10", tcp, "port 0"},
		{"22:0", tcp, "to port 0"},
		{"80-22", tcp, "below start"},
		{"~80-22", tcp, "below start"},
		{"22-80:32-40", tcp, "differs in length"},
		{"22-80:32", tcp, "differs in length"},
		{"22:32-33", tcp, "differs in length"},
		{"22-", tcp, "missing port number"},
		{"22:", tcp, "missing port number"},
		{"~", tcp, "missing port number"},
		{"22-:30", tcp, "expected port number"},
		{"-22", tcp, "expected port"},
		{"+22", tcp, "expected port"},
		{" 22", tcp, "expected port"},
		{"22 ", tcp, `unexpected " "`},
		{"22,", tcp, "empty entry"},
		{",22", tcp, "expected port"},
		{"22,,23", tcp, "expected port"},
		{"abc", tcp, "expected port"},
		{"22x", tcp, `unexpected "x"`},
		{"22:abc", tcp, "expected port number"},
		{"22;23", tcp, "unexpected"},
		{"22-23-24", tcp, "unexpected"},
		{"1.2.3.4", tcp, `unexpected ".2.3.4"`},
		{"1.2.3.4/", tcp, "no ports given"},
		{"999.1.1.1/22", tcp, "unexpected"},
		{"[::1/22", tcp, "expected port"},
		{"[fe80::1%eth0]/22", tcp, "expected port"},
		{"%/22", tcp, "empty interface name"},
		{"1.2.3.4%/22", tcp, "empty interface name"},
		{"%abcdefghijklmnop/22", tcp, "too long"},
		{"%./22", tcp, "invalid interface name"},
		{"%../22", tcp, "invalid interface name"},
		{"%eth0", tcp, "expected port"},
		{"NONE", tcp, "expected port"},
		{"none,22", tcp, "expected port"},
		{"allx", tcp, "expected port"},
		{"all:", tcp, "missing target address"},
		{"all:foo", tcp, "invalid target address"},
		{"auto:22", tcp, `unexpected ":22"`},
		{"autox", tcp, "expected port"},
		{"auto", passt, "'auto' is only allowed in pasta mode"},
		{"22,auto", passt, "'auto' is only allowed in pasta mode"},
		{"22-80,50-60", tcp, "overlaps"},
		{"22,22", tcp, "overlaps"},
		{"22,~22", tcp, "no ports left"},
		{"~1-65535", tcp, "no ports left"},
		{"all", withEph(passt, PortRange{1, 65535}), "no ports left"},
		{"22:192.0.2.1", tcp, "needs a listening address"},
		{"all:192.0.2.1", passt, "needs a listening address"},
		{"all", tcp, "'all' port forwarding is only allowed for passt"},
		{"::1/all", tcp, "'all' port forwarding is only allowed for passt"},
		{"all,~22", tcp, "'all' port forwarding is only allowed for passt"},
		{"all:192.0.2.1", SpecOptions{Opt: 'u', Mode: ModePasta}, "'all' port forwarding is only allowed for passt"},
		{"all", SpecOptions{Opt: 'T', Mode: ModePasta}, "'all' port forwarding is only allowed for passt"},
		{"all", SpecOptions{Opt: 'U', Mode: ModePasta}, "'all' port forwarding is only allowed for passt"},
		{"all,auto", tcp, "'all' port forwarding is only allowed for passt"},
		{"all,auto", passt, "'auto' is only allowed in pasta mode"},
		{"1.2.3.4/22:[::1]/22", tcp, "differ in family"},
		{"[::1]/22:1.2.3.4", tcp, "differ in family"},
		{"1.2.3.4/22:224.0.0.1", tcp, "multicast"},
		{"1.2.3.4/22:255.255.255.255", tcp, "broadcast"},
		{"[::]/22:ff02::1", tcp, "multicast"},
		{"::1/22", SpecOptions{Opt: 't', IPv4Only: true}, "IPv6 is disabled"},
		{"127.0.0.1/22", SpecOptions{Opt: 't', IPv6Only: true}, "IPv4 is disabled"},
		{"22:[::1]/22", SpecOptions{Opt: 't', IPv4Only: true}, "differ in family"},
		{"22", SpecOptions{Opt: 't', Disabled: true}, "TCP is disabled"},
		{"53", SpecOptions{Opt: 'u', Disabled: true}, "UDP is disabled"},
		{"::1/22", SpecOptions{Opt: 'T', Mode: ModePasta}, "not allowed for -T"},
		{"%lo/22", SpecOptions{Opt: 'U', Mode: ModePasta}, "not allowed for -U"},
		{"*/22", SpecOptions{Opt: 'T', Mode: ModePasta}, "not allowed for -T"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			var f Forward
			err := f.AddSpec(tt.spec, tt.opts)
			if err == nil {
				t.Fatalf("AddSpec(%q) = nil error, rules %v %v", tt.spec, f.Rules, f.AutoRules)
			}
			var se *SpecError
			if !errors.As(err, &se) {
				t.Errorf("error %v is not a *SpecError", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not contain %q", msg, tt.want)
			}
			prefix := "invalid port specification " + strconv.Quote(tt.spec) + " for -" + string(tt.opts.Opt) + ": "
			if !strings.HasPrefix(msg, prefix) {
				t.Errorf("error %q does not start with %q", msg, prefix)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is not one line", msg)
			}
			if !reflect.DeepEqual(f, Forward{}) {
				t.Errorf("Forward changed on error: %+v", f)
			}
		})
	}
}

func TestSpecErrorMessage(t *testing.T) {
	_, err := ParseForward("70000", SpecOptions{Opt: 'u'})
	want := `invalid port specification "70000" for -u: port out of range: 70000`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// TestAddSpecAccumulates covers several options for the same direction.
func TestAddSpecAccumulates(t *testing.T) {
	tests := []struct {
		name  string
		specs []string
		mode  ForwardMode
		want  []PortRule
		auto  []PortRule
		err   string
		passt bool // passt mode, pasta otherwise
	}{
		{name: "two singles", specs: []string{"22", "80"}, mode: FwdSpec, want: rules(r(22, 22), r(80, 80))},
		{name: "same port twice", specs: []string{"22", "22"}, err: "*/22 overlaps */22"},
		{name: "same port, distinct addresses", specs: []string{"127.0.0.1/22", "::1/22"}, mode: FwdSpec,
			want: rules(r(22, 22).at(mustAddr("127.0.0.1")), r(22, 22).at(mustAddr("::1")))},
		{name: "wildcard then address", specs: []string{"22", "127.0.0.1/22"}, err: "overlaps"},
		{name: "address then wildcard", specs: []string{"127.0.0.1/20-30", "25"}, err: "overlaps"},
		{name: "family wildcards don't overlap", specs: []string{"0.0.0.0/22", "::1/22"}, mode: FwdSpec,
			want: rules(r(22, 22).at(any4), r(22, 22).at(mustAddr("::1")))},
		{name: "family wildcard and address", specs: []string{"0.0.0.0/22", "127.0.0.1/22"}, err: "overlaps"},
		{name: "ifname does not separate", specs: []string{"%eth0/22", "%eth1/22"}, err: "overlaps"},
		{name: "none first", specs: []string{"none", "22"}, err: "specific ports cannot be specified together with all/none/auto"},
		{name: "none twice", specs: []string{"none", "none"}, mode: FwdNone},
		{name: "none after rules", specs: []string{"22", "none"}, err: "specific ports cannot be specified together with all/none/auto"},
		{name: "none after a range", specs: []string{"8000-8010:9000-9010", "none"}, err: "specific ports cannot be specified together with all/none/auto"},
		{name: "none after specific auto", specs: []string{"8000-8010,auto", "none"}, err: "specific ports cannot be specified together with all/none/auto"},
		{name: "none after auto", specs: []string{"auto", "none"}, err: "'none' conflicts with previous -t options"},
		{name: "none after all", specs: []string{"all", "none"}, passt: true, err: "'none' conflicts with previous -t options"},
		{name: "auto after none", specs: []string{"none", "auto"}, err: "conflicts with previous -t none"},
		{name: "all after none", specs: []string{"none", "all"}, passt: true, err: "conflicts with previous -t none"},
		{name: "exclusion after none", specs: []string{"none", "~22"}, err: "specific ports cannot be specified together with all/none/auto"},
		{name: "address after none", specs: []string{"none", "127.0.0.1/22"}, err: "specific ports cannot be specified together with all/none/auto"},
		{name: "passt none first", specs: []string{"none", "22"}, passt: true, err: "specific ports cannot be specified together with all/none/auto"},
		{name: "auto then fixed inside", specs: []string{"auto", "22"}, err: "overlaps"},
		{name: "auto then ephemeral fixed", specs: []string{"auto", "40000"}, mode: FwdAuto,
			want: rules(r(40000, 40000)), auto: nonEphemeral()},
		{name: "fixed then auto range", specs: []string{"22", "8000-8010,auto"}, mode: FwdAuto,
			want: rules(r(22, 22)), auto: rules(r(8000, 8010))},
		{name: "all twice", specs: []string{"all", "all"}, passt: true, err: "overlaps"},
		{name: "all per address", specs: []string{"127.0.0.1/all", "::1/all"}, passt: true, mode: FwdSpec,
			want: rules(r(1, 32767).at(mustAddr("127.0.0.1")).weak(), r(61000, 65535).at(mustAddr("127.0.0.1")).weak(),
				r(1, 32767).at(mustAddr("::1")).weak(), r(61000, 65535).at(mustAddr("::1")).weak())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Forward
			var err error
			o := SpecOptions{Opt: 't', Mode: ModePasta}
			if tt.passt {
				o.Mode = ModePasst
			}
			for _, s := range tt.specs {
				if err = f.AddSpec(s, o); err != nil {
					break
				}
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Mode != tt.mode {
				t.Errorf("Mode = %v, want %v", f.Mode, tt.mode)
			}
			if !reflect.DeepEqual(f.Rules, tt.want) {
				t.Errorf("Rules = %v, want %v", f.Rules, tt.want)
			}
			if !reflect.DeepEqual(f.AutoRules, tt.auto) {
				t.Errorf("AutoRules = %v, want %v", f.AutoRules, tt.auto)
			}
		})
	}
}

func TestAddSpecTooManyRules(t *testing.T) {
	var ports []string
	for p := 1; p <= 4*MaxRules; p += 2 {
		ports = append(ports, strconv.Itoa(p))
	}
	_, err := ParseForward(strings.Join(ports, ","), SpecOptions{Opt: 't'})
	if err == nil || !strings.Contains(err.Error(), "too many forwarding rules") {
		t.Errorf("got %v, want too many rules", err)
	}
	// Exactly at the limit is fine.
	_, err = ParseForward(strings.Join(ports[:MaxRules], ","), SpecOptions{Opt: 't'})
	if err != nil {
		t.Error(err)
	}
}

func TestForwardTarget(t *testing.T) {
	var f Forward
	o := SpecOptions{Opt: 't', Mode: ModePasta}
	for _, s := range []string{"22-80:1022-1080,~25", "127.0.0.1/8080:80", "::1/8080:81", "9000-9001,auto"} {
		if err := f.AddSpec(s, o); err != nil {
			t.Fatal(err)
		}
	}
	lo4, lo6, other := mustAddr("127.0.0.1"), mustAddr("::1"), mustAddr("192.0.2.1")
	tests := []struct {
		addr netip.Addr
		port uint16
		want uint16
		ok   bool
	}{
		{netip.Addr{}, 22, 1022, true},
		{other, 22, 1022, true},
		{other, 80, 1080, true},
		{other, 24, 1024, true},
		{other, 25, 0, false},
		{other, 26, 1026, true},
		{other, 81, 0, false},
		{lo4, 8080, 80, true},
		{lo6, 8080, 81, true},
		{other, 8080, 0, false},
		{netip.Addr{}, 9001, 9001, true},
		{other, 1, 0, false},
	}
	for _, tt := range tests {
		got, ok := f.Target(tt.addr, tt.port)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Target(%v, %d) = %d, %v; want %d, %v", tt.addr, tt.port, got, ok, tt.want, tt.ok)
		}
	}
	if r, ok := f.Rule(other, 9000); !ok || r.First != 9000 || r.Last != 9001 {
		t.Errorf("Rule(9000) = %v, %v", r, ok)
	}
}

func TestForwardTargetHandBuiltAuto(t *testing.T) {
	// A hand-built automatic Forward without rules covers every port.
	f := Forward{Mode: FwdAuto}
	if to, ok := f.Target(mustAddr("192.0.2.1"), 40000); !ok || to != 40000 {
		t.Errorf("Target(40000) = %d, %v", to, ok)
	}
	if _, ok := f.Target(netip.Addr{}, 0); ok {
		t.Error("port 0 covered")
	}
	f = Forward{Mode: FwdSpec}
	if _, ok := f.Target(netip.Addr{}, 22); ok {
		t.Error("empty FwdSpec Forward covers port 22")
	}
}

func TestPortRuleString(t *testing.T) {
	tests := []struct {
		r    PortRule
		want string
	}{
		{r(22, 22), "*/22 => 22"},
		{r(22, 80).to(32), "*/22-80 => 32-90"},
		{r(22, 22).at(mustAddr("127.0.0.1")).dev("lo"), "127.0.0.1%lo/22 => 22"},
		{r(5000, 5000).at(any4).to(6000).toAddr(mustAddr("192.0.2.5")), "0.0.0.0/5000 => 192.0.2.5/6000"},
		{r(1, 10).at(mustAddr("::1")).weak(), "[::1]/1-10 => 1-10 (best effort)"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestReadEphemeralRange(t *testing.T) {
	tests := []struct {
		in   string
		want PortRange
		err  bool
	}{
		{in: "32768\t60999\n", want: PortRange{32768, 60999}},
		{in: "1024 65535", want: PortRange{1024, 65535}},
		{in: "  5000   5000  \nrest", want: PortRange{5000, 5000}},
		{in: "", err: true},
		{in: "32768\n", err: true},
		{in: "a b\n", err: true},
		{in: "1 2 3\n", err: true},
		{in: "70000 80000\n", err: true},
		{in: "0 100\n", err: true},
		{in: "5000 4000\n", err: true},
	}
	for _, tt := range tests {
		got, err := ReadEphemeralRange(strings.NewReader(tt.in))
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ReadEphemeralRange(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestSystemEphemeralRange(t *testing.T) {
	r, err := SystemEphemeralRange()
	if err != nil {
		t.Skipf("no ephemeral range on this system: %v", err)
	}
	if r.First == 0 || r.Last < r.First {
		t.Errorf("implausible range %v", r)
	}
}

// FuzzAddSpec checks that any specification either fails cleanly or yields
// well-formed, non-conflicting rules.
func FuzzAddSpec(f *testing.F) {
	for _, s := range []string{"22", "22-80:32-90", "::1/all", "192.0.2.1%eth0/20-30,~25", "auto,~22",
		"0.0.0.0/5000:192.0.2.5/6000", "[::]/1:[::2]", "~1-1000", "all:1.2.3.4", "%lo/1,2,3"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, spec string, v4 bool) {
		o := SpecOptions{Opt: 't', Mode: ModePasta, IPv4Only: v4}
		fw, err := ParseForward(spec, o)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			return
		}
		all := append(append([]PortRule(nil), fw.Rules...), fw.AutoRules...)
		if spec != "none" && len(all) == 0 {
			t.Errorf("%q: no rules", spec)
		}
		for i, r := range all {
			if r.First == 0 || r.Last < r.First || r.ToFirst == 0 || int(r.ToFirst)+int(r.Last-r.First) > 65535 {
				t.Errorf("%q: bad rule %v", spec, r)
			}
			if v4 && !r.Addr.Is4() {
				t.Errorf("%q: rule %v not IPv4 with -4", spec, r)
			}
			if r.ToAddr.IsValid() && (!r.Addr.IsValid() || r.Addr.Is4() != r.ToAddr.Is4()) {
				t.Errorf("%q: rule %v has bad target", spec, r)
			}
			for _, q := range all[:i] {
				if rulesConflict(r, q) {
					t.Errorf("%q: %v conflicts with %v", spec, r, q)
				}
			}
		}
	})
}
