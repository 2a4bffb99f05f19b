package fwd

import (
	"net/netip"
	"testing"

	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/packet"
)

var a = netip.MustParseAddr

func rules() *Rules {
	return &Rules{
		MapHostLoopback4: a("192.0.2.1"), MapHostLoopback6: a("2001:db8::1"),
		GuestAddr4: a("192.0.2.2"), GuestAddr6: a("2001:db8::2"),
		HostAddrs: []netip.Addr{a("192.0.2.2"), a("2001:db8::2")},
		IPv4:      true, IPv6: true,
	}
}

// noMap is --no-map-gw.
func noMap(r *Rules) { r.MapHostLoopback4, r.MapHostLoopback6 = netip.Addr{}, netip.Addr{} }

func TestFromTap(t *testing.T) {
	cases := []struct {
		name      string
		r         func(*Rules)
		ini, want flow.Side
		v         Verdict
	}{
		{"gw4 to loopback", nil,
			flow.Side{EAddr: a("192.0.2.2"), EPort: 4000, FAddr: a("192.0.2.1"), FPort: 53},
			flow.Side{EAddr: a("127.0.0.1"), EPort: 53, FAddr: a("0.0.0.0"), FPort: 4000}, OK},
		{"gw6 to loopback", nil,
			flow.Side{EAddr: a("2001:db8::2"), EPort: 4000, FAddr: a("2001:db8::1"), FPort: 53},
			flow.Side{EAddr: a("::1"), EPort: 53, FAddr: a("::"), FPort: 4000}, OK},
		{"no-map-gw", noMap,
			flow.Side{EAddr: a("192.0.2.2"), EPort: 4000, FAddr: a("192.0.2.1"), FPort: 53},
			flow.Side{EAddr: a("192.0.2.1"), EPort: 53, FAddr: a("0.0.0.0"), FPort: 4000}, OK},
		{"remote as is", nil,
			flow.Side{EAddr: a("192.0.2.2"), EPort: 4000, FAddr: a("198.51.100.1"), FPort: 7},
			flow.Side{EAddr: a("198.51.100.1"), EPort: 7, FAddr: a("0.0.0.0"), FPort: 4000}, OK},
		{"outbound address", func(r *Rules) { r.Outbound6 = a("2001:db8::9") },
			flow.Side{EAddr: a("2001:db8::2"), EPort: 4000, FAddr: a("2001:db8:1::1"), FPort: 7},
			flow.Side{EAddr: a("2001:db8:1::1"), EPort: 7, FAddr: a("2001:db8::9"), FPort: 4000}, OK},
		{"multicast dest", nil, flow.Side{EAddr: a("192.0.2.2"), EPort: 1, FAddr: a("224.0.0.251"), FPort: 5353}, flow.Side{}, BadDest},
		{"broadcast dest", nil, flow.Side{EAddr: a("192.0.2.2"), EPort: 1, FAddr: a("255.255.255.255"), FPort: 67}, flow.Side{}, BadDest},
		{"port 0 dest", nil, flow.Side{EAddr: a("192.0.2.2"), EPort: 1, FAddr: a("192.0.2.1"), FPort: 0}, flow.Side{}, BadDest},
		{"port 0 source", nil, flow.Side{EAddr: a("192.0.2.2"), EPort: 0, FAddr: a("192.0.2.1"), FPort: 1}, flow.Side{}, BadSource},
		{"unspecified source", nil, flow.Side{EAddr: a("0.0.0.0"), EPort: 68, FAddr: a("192.0.2.1"), FPort: 1}, flow.Side{}, BadSource},
		{"loopback source", nil, flow.Side{EAddr: a("127.0.0.1"), EPort: 68, FAddr: a("192.0.2.1"), FPort: 1}, flow.Side{}, BadSource},
		{"loopback6 source", nil, flow.Side{EAddr: a("::1"), EPort: 68, FAddr: a("2001:db8::1"), FPort: 1}, flow.Side{}, BadSource},
		{"this-network source", nil, flow.Side{EAddr: a("0.1.2.3"), EPort: 68, FAddr: a("192.0.2.1"), FPort: 1}, flow.Side{}, BadSource},
		{"multicast source", nil, flow.Side{EAddr: a("224.0.0.1"), EPort: 68, FAddr: a("192.0.2.1"), FPort: 1}, flow.Side{}, BadSource},
		{"multicast6 source", nil, flow.Side{EAddr: a("ff02::1"), EPort: 68, FAddr: a("2001:db8::1"), FPort: 1}, flow.Side{}, BadSource},
		{"broadcast source", nil, flow.Side{EAddr: a("255.255.255.255"), EPort: 68, FAddr: a("192.0.2.1"), FPort: 1}, flow.Side{}, BadSource},
		{"gateway posing", nil, flow.Side{EAddr: a("192.0.2.1"), EPort: 53, FAddr: a("198.51.100.1"), FPort: 7}, flow.Side{}, BadSource},
		{"gateway6 posing", nil, flow.Side{EAddr: a("2001:db8::1"), EPort: 53, FAddr: a("2001:db8:1::1"), FPort: 7}, flow.Side{}, BadSource},
		{"router link-local to loopback", func(r *Rules) { r.RouterLL6 = a("fe80::9855:9aff:fe55:9a55") },
			flow.Side{EAddr: a("2001:db8::2"), EPort: 4000, FAddr: a("fe80::9855:9aff:fe55:9a55"), FPort: 53},
			flow.Side{EAddr: a("::1"), EPort: 53, FAddr: a("::"), FPort: 4000}, OK},
		{"map-host-loopback elsewhere", func(r *Rules) { r.MapHostLoopback4 = a("192.0.2.200") },
			flow.Side{EAddr: a("192.0.2.2"), EPort: 4000, FAddr: a("192.0.2.200"), FPort: 53},
			flow.Side{EAddr: a("127.0.0.1"), EPort: 53, FAddr: a("0.0.0.0"), FPort: 4000}, OK},
		{"map-guest-addr out", func(r *Rules) { r.MapGuestAddr6 = a("2001:db8::9") },
			flow.Side{EAddr: a("2001:db8::2"), EPort: 4000, FAddr: a("2001:db8::9"), FPort: 7},
			flow.Side{EAddr: a("2001:db8::2"), EPort: 7, FAddr: a("::"), FPort: 4000}, OK},
		{"dns-forward to a loopback stub", func(r *Rules) { r.DNSMatch4, r.DNSHost4 = a("192.0.2.53"), a("127.0.0.53") },
			flow.Side{EAddr: a("192.0.2.2"), EPort: 4000, FAddr: a("192.0.2.53"), FPort: 53},
			flow.Side{EAddr: a("127.0.0.53"), EPort: 53, FAddr: a("0.0.0.0"), FPort: 4000}, OK},
		{"dns-forward only for port 53", func(r *Rules) { r.DNSMatch4, r.DNSHost4 = a("192.0.2.53"), a("127.0.0.53") },
			flow.Side{EAddr: a("192.0.2.2"), EPort: 4000, FAddr: a("192.0.2.53"), FPort: 54},
			flow.Side{EAddr: a("192.0.2.53"), EPort: 54, FAddr: a("0.0.0.0"), FPort: 4000}, OK},
		{"dns on the gateway goes to the resolver", func(r *Rules) { r.DNSMatch6, r.DNSHost6 = a("2001:db8::1"), a("::1") },
			flow.Side{EAddr: a("2001:db8::2"), EPort: 4000, FAddr: a("2001:db8::1"), FPort: 53},
			flow.Side{EAddr: a("::1"), EPort: 53, FAddr: a("::"), FPort: 4000}, OK},
		{"loopback dest", nil, flow.Side{EAddr: a("192.0.2.2"), EPort: 1, FAddr: a("127.0.0.1"), FPort: 7}, flow.Side{}, BadDest},
		{"loopback dest v6", noMap, flow.Side{EAddr: a("2001:db8::2"), EPort: 1, FAddr: a("::1"), FPort: 7}, flow.Side{}, BadDest},
		{"v4-mapped loopback dest", nil, flow.Side{EAddr: a("2001:db8::2"), EPort: 1, FAddr: a("::ffff:127.0.0.1"), FPort: 7}, flow.Side{}, BadDest},
		{"loopback source", nil, flow.Side{EAddr: a("127.0.0.1"), EPort: 1, FAddr: a("192.0.2.1"), FPort: 7}, flow.Side{}, BadSource},
		{"link-local dest", nil, flow.Side{EAddr: a("2001:db8::2"), EPort: 1, FAddr: a("fe80::5"), FPort: 1}, flow.Side{}, BadDest},
		{"v6 off", func(r *Rules) { r.IPv6 = false }, flow.Side{EAddr: a("2001:db8::2"), EPort: 1, FAddr: a("2001:db8::1"), FPort: 1}, flow.Side{}, FamilyOff},
	}
	for _, c := range cases {
		r := rules()
		if c.r != nil {
			c.r(r)
		}
		got, v := r.FromTap(c.ini)
		if v != c.v || got != c.want {
			t.Errorf("%s: got %v %v, want %v %v", c.name, got, v, c.want, c.v)
		}
	}
}

func TestFromHost(t *testing.T) {
	g := NewGuest(a("192.0.2.2"), a("2001:db8::2"))
	cases := []struct {
		name      string
		r         func(*Rules)
		ini, want flow.Side
		v         Verdict
	}{
		{"loopback appears as gateway", nil,
			flow.Side{EAddr: a("127.0.0.1"), EPort: 5555, FAddr: a("0.0.0.0"), FPort: 10001},
			flow.Side{EAddr: a("192.0.2.2"), EPort: 10002, FAddr: a("192.0.2.1"), FPort: 5555}, OK},
		{"host address appears as gateway", nil,
			flow.Side{EAddr: a("2001:db8::2"), EPort: 5555, FAddr: a("::"), FPort: 10001},
			flow.Side{EAddr: a("2001:db8::2"), EPort: 10002, FAddr: a("2001:db8::1"), FPort: 5555}, OK},
		{"remote kept", nil,
			flow.Side{EAddr: a("198.51.100.1"), EPort: 5555, FAddr: a("0.0.0.0"), FPort: 10001},
			flow.Side{EAddr: a("192.0.2.2"), EPort: 10002, FAddr: a("198.51.100.1"), FPort: 5555}, OK},
		{"map-guest-addr", func(r *Rules) { r.MapGuestAddr4 = a("192.0.2.9") },
			flow.Side{EAddr: a("192.0.2.2"), EPort: 5555, FAddr: a("0.0.0.0"), FPort: 10001},
			flow.Side{EAddr: a("192.0.2.2"), EPort: 10002, FAddr: a("192.0.2.9"), FPort: 5555}, OK},
		{"custom map-host-loopback", func(r *Rules) { r.MapHostLoopback6 = a("2001:db8::99") },
			flow.Side{EAddr: a("::1"), EPort: 5555, FAddr: a("::"), FPort: 10001},
			flow.Side{EAddr: a("2001:db8::2"), EPort: 10002, FAddr: a("2001:db8::99"), FPort: 5555}, OK},
		{"loopback without mapping", noMap,
			flow.Side{EAddr: a("::1"), EPort: 5555, FAddr: a("::"), FPort: 10001}, flow.Side{}, Unmappable},
	}
	for _, c := range cases {
		r := rules()
		if c.r != nil {
			c.r(r)
		}
		pif, got, v := r.FromHost(c.ini, 10002, g)
		if v != c.v || got != c.want || v == OK && pif != flow.PIFTap {
			t.Errorf("%s: got %v %v %v, want %v %v", c.name, pif, got, v, c.want, c.v)
		}
	}
}

// TestFromHostPodman is what podman runs pasta with: --no-map-gw and an
// IPv4-only --map-guest-addr. The host's own IPv6 address and its
// loopback (without splice) have nothing to appear as but our link-local
// address, the reference's our_tap_ll; the IPv4 loopback appears as the
// gateway, its our_tap_addr. Without those, the flow is Unmappable.
func TestFromHostPodman(t *testing.T) {
	g := NewGuest(a("192.0.2.2"), a("2001:db8::2"))
	ll := a("fe80::9855:9aff:fe55:9a55")
	podman := func(r *Rules) {
		noMap(r)
		r.MapGuestAddr4 = a("169.254.1.2")
		r.OurTapAddr4, r.OurTapLL6 = a("192.0.2.1"), ll
	}
	cases := []struct {
		name      string
		r         func(*Rules)
		ini, want flow.Side
		v         Verdict
	}{
		{"host's IPv6 address appears as our link-local", podman,
			flow.Side{EAddr: a("2001:db8::2"), EPort: 5555, FAddr: a("::"), FPort: 10001},
			flow.Side{EAddr: a("2001:db8::2"), EPort: 10002, FAddr: ll, FPort: 5555}, OK},
		{"IPv6 loopback appears as our link-local", podman,
			flow.Side{EAddr: a("::1"), EPort: 5555, FAddr: a("::"), FPort: 10001},
			flow.Side{EAddr: a("2001:db8::2"), EPort: 10002, FAddr: ll, FPort: 5555}, OK},
		{"host's IPv4 address appears as map-guest-addr", podman,
			flow.Side{EAddr: a("192.0.2.2"), EPort: 5555, FAddr: a("0.0.0.0"), FPort: 10001},
			flow.Side{EAddr: a("192.0.2.2"), EPort: 10002, FAddr: a("169.254.1.2"), FPort: 5555}, OK},
		{"IPv4 loopback appears as the gateway", podman,
			flow.Side{EAddr: a("127.0.0.1"), EPort: 5555, FAddr: a("0.0.0.0"), FPort: 10001},
			flow.Side{EAddr: a("192.0.2.2"), EPort: 10002, FAddr: a("192.0.2.1"), FPort: 5555}, OK},
		{"remote IPv6 peer kept", podman,
			flow.Side{EAddr: a("2001:db8:1::1"), EPort: 5555, FAddr: a("::"), FPort: 10001},
			flow.Side{EAddr: a("2001:db8::2"), EPort: 10002, FAddr: a("2001:db8:1::1"), FPort: 5555}, OK},
		{"map-host-loopback still wins", func(r *Rules) { r.OurTapLL6 = ll },
			flow.Side{EAddr: a("2001:db8::2"), EPort: 5555, FAddr: a("::"), FPort: 10001},
			flow.Side{EAddr: a("2001:db8::2"), EPort: 10002, FAddr: a("2001:db8::1"), FPort: 5555}, OK},
		{"nothing to appear as", func(r *Rules) { podman(r); r.OurTapLL6 = netip.Addr{} },
			flow.Side{EAddr: a("2001:db8::2"), EPort: 5555, FAddr: a("::"), FPort: 10001}, flow.Side{}, Unmappable},
	}
	for _, c := range cases {
		r := rules()
		c.r(r)
		pif, got, v := r.FromHost(c.ini, 10002, g)
		if v != c.v || got != c.want || v == OK && pif != flow.PIFTap {
			t.Errorf("%s: got %v %v %v, want %v %v", c.name, pif, got, v, c.want, c.v)
		}
	}
}

func TestGuestLearning(t *testing.T) {
	g := NewGuest(netip.Addr{}, netip.Addr{})
	if g.MAC() != packet.BroadcastMAC {
		t.Fatal("unknown MAC should be broadcast")
	}
	m := packet.MAC{0x02, 1, 2, 3, 4, 5}
	g.SeeMAC(m)
	g.SeeMAC(packet.MAC{0x33, 0x33, 0, 0, 0, 1}) // multicast: ignored
	if g.MAC() != m {
		t.Fatalf("MAC %v", g.MAC())
	}
	g.SeeAddr(a("fe80::1"))
	g.SeeAddr(a("2001:db8::5"))
	g.SeeAddr(a("192.0.2.9"))
	g.SeeAddr(a("127.0.0.1")) // never on the guest's link: ignored
	g.SeeAddr(a("::1"))
	if g.Addr6() != a("2001:db8::5") || g.Addr4() != a("192.0.2.9") {
		t.Fatalf("addrs %v %v", g.Addr4(), g.Addr6())
	}
}

func TestSplice(t *testing.T) {
	g := NewGuest(a("192.0.2.2"), a("2001:db8::2"))
	r := rules()
	r.Splice = true
	ini := flow.Side{EAddr: a("127.0.0.1"), EPort: 5555, FAddr: a("0.0.0.0"), FPort: 10001}
	pif, tgt, v := r.FromHost(ini, 10002, g)
	// The kernel picks the source towards the namespace's address (that
	// address itself); the client's port is kept.
	want := flow.Side{EAddr: a("192.0.2.2"), EPort: 10002, FAddr: a("0.0.0.0"), FPort: 5555}
	if pif != flow.PIFSplice || tgt != want || v != OK {
		t.Errorf("splice to the namespace's address: %v %v %v", pif, tgt, v)
	}
	r.HostLoToNSLo = true
	ini6 := flow.Side{EAddr: a("::1"), EPort: 5555, FAddr: a("::"), FPort: 10001}
	pif, tgt, _ = r.FromHost(ini6, 10002, g)
	if pif != flow.PIFSplice || tgt != (flow.Side{EAddr: a("::1"), EPort: 10002, FAddr: a("::"), FPort: 5555}) {
		t.Errorf("splice to the namespace's loopback: %v %v", pif, tgt)
	}
	// Non-loopback senders still go through the tap.
	if pif, _, _ := r.FromHost(flow.Side{EAddr: a("198.51.100.1"), EPort: 1, FPort: 10001}, 10002, g); pif != flow.PIFTap {
		t.Errorf("remote sender spliced")
	}
	got, v := r.FromSplice(flow.Side{EAddr: a("127.0.0.1"), EPort: 4000, FAddr: a("127.0.0.1"), FPort: 6000}, 6001)
	if v != OK || got != (flow.Side{EAddr: a("127.0.0.1"), EPort: 6001, FAddr: a("127.0.0.1"), FPort: 4000}) {
		t.Errorf("FromSplice: %v %v", got, v)
	}
	if _, v := r.FromSplice(flow.Side{EAddr: a("192.0.2.2"), EPort: 4000, FAddr: a("127.0.0.1"), FPort: 6000}, 6001); v == OK {
		t.Error("non-loopback splice source accepted")
	}
}
