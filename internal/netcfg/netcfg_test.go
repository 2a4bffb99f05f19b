package netcfg

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/udp"
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

func TestMapResolvers(t *testing.T) {
	n := &Net{Gateway4: netip.MustParseAddr("192.0.2.1"), Gateway6: netip.MustParseAddr("2001:db8::1")}
	in := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("::1"), netip.MustParseAddr("198.51.100.53")}
	got := n.mapResolvers(in, false)
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("198.51.100.53")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got := n.mapResolvers(in, true); !reflect.DeepEqual(got, want[2:]) {
		t.Fatalf("with --no-map-gw got %v", got)
	}
}

func TestExpandForwards(t *testing.T) {
	cfg, err := conf.Parse(conf.ModePasta, []string{"-u", "5000-5001:6000-6001", "-u", "127.0.0.1/7000"})
	if err != nil {
		t.Fatal(err)
	}
	got := ExpandForwards(cfg.UDPFwd, true, true)
	any4, any6, lo := netip.IPv4Unspecified(), netip.IPv6Unspecified(), netip.MustParseAddr("127.0.0.1")
	want := []udp.Forward{
		{Addr: any4, Port: 5000, ToPort: 6000}, {Addr: any6, Port: 5000, ToPort: 6000},
		{Addr: any4, Port: 5001, ToPort: 6001}, {Addr: any6, Port: 5001, ToPort: 6001},
		{Addr: lo, Port: 7000, ToPort: 7000},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got := ExpandForwards(cfg.UDPFwd, true, false); len(got) != 3 {
		t.Fatalf("IPv4 only: %+v", got)
	}
}
