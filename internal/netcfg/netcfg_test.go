package netcfg

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
)

func TestReadResolvConf(t *testing.T) {
	in := `# comment
nameserver 198.51.100.53
nameserver 127.0.0.1
nameserver fe80::1%eth0
nameserver 2001:db8::53
nameserver bogus
search example.org corp.example ; trailing
options ndots:2
`
	s, d := ReadResolvConf(strings.NewReader(in))
	want := []netip.Addr{netip.MustParseAddr("198.51.100.53"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("2001:db8::53")}
	if !reflect.DeepEqual(s, want) || !reflect.DeepEqual(d, []string{"example.org", "corp.example"}) {
		t.Fatalf("got %v %v", s, d)
	}
}

func TestAdvertised(t *testing.T) {
	a := netip.MustParseAddr
	cases := []struct {
		name           string
		n              Net
		in, want       []netip.Addr
		match4, match6 netip.Addr
	}{
		{"loopback stub via the gateway",
			Net{MapHostLoopback4: a("192.0.2.1"), MapHostLoopback6: a("2001:db8::1"), DNSHost4: a("127.0.0.53")},
			[]netip.Addr{a("127.0.0.53"), a("198.51.100.53")}, []netip.Addr{a("192.0.2.1"), a("198.51.100.53")},
			a("192.0.2.1"), netip.Addr{}},
		{"gateway that is also the resolver",
			Net{MapHostLoopback4: a("192.0.2.1"), DNSHost4: a("192.0.2.1")},
			[]netip.Addr{a("192.0.2.1")}, []netip.Addr{a("192.0.2.1")}, a("192.0.2.1"), netip.Addr{}},
		{"--dns-forward with --no-map-gw",
			Net{DNSMatch6: a("2001:db8::53"), DNSHost6: a("::1")},
			[]netip.Addr{a("::1")}, []netip.Addr{a("2001:db8::53")}, netip.Addr{}, a("2001:db8::53")},
		{"unreachable loopback resolver",
			Net{DNSHost4: a("127.0.0.1")},
			[]netip.Addr{a("127.0.0.1"), a("198.51.100.53")}, []netip.Addr{a("198.51.100.53")}, netip.Addr{}, netip.Addr{}},
		{"second loopback resolver not redirected",
			Net{MapHostLoopback4: a("192.0.2.1"), DNSHost4: a("127.0.0.53")},
			[]netip.Addr{a("127.0.0.53"), a("127.0.0.1")}, []netip.Addr{a("192.0.2.1")}, a("192.0.2.1"), netip.Addr{}},
	}
	for _, c := range cases {
		n := c.n
		got := n.advertised(c.in)
		if !reflect.DeepEqual(got, c.want) || n.DNSMatch4 != c.match4 || n.DNSMatch6 != c.match6 {
			t.Errorf("%s: got %v match %v %v, want %v match %v %v", c.name, got, n.DNSMatch4, n.DNSMatch6, c.want, c.match4, c.match6)
		}
	}
}

func TestExpandForwards(t *testing.T) {
	cfg, err := conf.Parse(conf.ModePasta, []string{"-u", "5000-5001:6000-6001", "-u", "127.0.0.1/7000"})
	if err != nil {
		t.Fatal(err)
	}
	got := ExpandForwards(fwd.UDP, cfg.UDPFwd, true, true)
	any4, any6, lo := netip.IPv4Unspecified(), netip.IPv6Unspecified(), netip.MustParseAddr("127.0.0.1")
	u := fwd.UDP
	want := []fwd.Forward{
		{Proto: u, Addr: any4, Port: 5000, ToPort: 6000}, {Proto: u, Addr: any6, Port: 5000, ToPort: 6000},
		{Proto: u, Addr: any4, Port: 5001, ToPort: 6001}, {Proto: u, Addr: any6, Port: 5001, ToPort: 6001},
		{Proto: u, Addr: lo, Port: 7000, ToPort: 7000},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got := ExpandForwards(fwd.UDP, cfg.UDPFwd, true, false); len(got) != 3 {
		t.Fatalf("IPv4 only: %+v", got)
	}
}
