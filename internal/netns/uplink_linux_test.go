package netns

import (
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestHostUplinkHost(t *testing.T) {
	u, err := HostUplink("")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host uplink: %+v", u)
	if u.Ifindex == 0 {
		if os.Getenv("GOPASST_TEST_REQUIRE_UPLINK") != "" {
			t.Fatal("no uplink found")
		}
		t.Skip("no interface with routes on this machine")
	}
	if u.Ifname == "" || u.MTU <= 0 {
		t.Errorf("incomplete uplink %+v", u)
	}
	if u.Ifindex != u.Ifindex4 && u.Ifindex != u.Ifindex6 {
		t.Errorf("primary interface %d is neither the IPv4 (%d) nor the IPv6 (%d) one", u.Ifindex, u.Ifindex4, u.Ifindex6)
	}
	if u.Addr4.IsValid() && !u.Addr4.Addr().Is4() {
		t.Errorf("Addr4 %v", u.Addr4)
	}
	if u.Gateway4.IsValid() && !u.Gateway4.Is4() {
		t.Errorf("Gateway4 %v", u.Gateway4)
	}
	if u.Addr6.IsValid() && (!u.Addr6.Addr().Is6() || u.Addr6.Addr().IsLinkLocalUnicast()) {
		t.Errorf("Addr6 %v", u.Addr6)
	}
	if u.Gateway6.IsValid() && !u.Gateway6.Is6() {
		t.Errorf("Gateway6 %v", u.Gateway6)
	}
	if u.LinkLocal6.IsValid() && !u.LinkLocal6.IsLinkLocalUnicast() {
		t.Errorf("LinkLocal6 %v", u.LinkLocal6)
	}
	if u.Gateway4.IsValid() && u.Ifindex4 == 0 || u.Gateway6.IsValid() && u.Ifindex6 == 0 {
		t.Errorf("gateway without interface: %+v", u)
	}

	// Naming an interface explicitly gives the same for that interface.
	v, err := HostUplink(u.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if v.Ifindex != u.Ifindex || v.Ifindex4 != u.Ifindex || v.Ifindex6 != u.Ifindex {
		t.Errorf("HostUplink(%q) = %+v", u.Ifname, v)
	}
	if _, err := HostUplink("gopasst-nonexistent"); err == nil {
		t.Error("HostUplink accepted a missing interface")
	}
}

// uplinkIn runs HostUplink inside n.
func uplinkIn(t *testing.T, n *NS, ifname string) Uplink {
	t.Helper()
	var u Uplink
	if err := n.Do(func() error {
		var err error
		u, err = HostUplink(ifname)
		return err
	}); err != nil {
		t.Fatalf("HostUplink(%q) in namespace: %v", ifname, err)
	}
	return u
}

func TestHostUplinkInNamespace(t *testing.T) {
	requireRoot(t, false)
	n := newNS(t)

	// Empty namespace: nothing usable, no error.
	if u := uplinkIn(t, n, ""); u != (Uplink{}) {
		t.Errorf("empty namespace: %+v", u)
	}

	// Two veth pairs, all ends in the namespace: gpv0 carries the default
	// routes, gpv1 only a prefix route and a static one.
	runInNS(t, n, `
ip link set lo up
ip link add gpv0 mtu 1400 type veth peer name gpv0p
ip link add gpv1 mtu 1300 type veth peer name gpv1p
for l in gpv0 gpv1; do ip link set $l addrgenmode none; done
ip link set gpv0 up; ip link set gpv0p up; ip link set gpv1 up; ip link set gpv1p up
ip addr add 192.0.2.10/24 dev gpv0
ip addr add 192.0.2.20/28 dev gpv0
ip addr add 2001:db8:1::10/64 dev gpv0 nodad
ip addr add 2001:db8:1::20/96 dev gpv0 nodad preferred_lft 0
ip addr add fe80::10/64 dev gpv0 nodad
ip addr add 198.51.100.2/24 dev gpv1
ip route add 203.0.113.0/24 via 198.51.100.1 dev gpv1
ip route add 169.254.0.0/16 dev gpv1
ip route add default via 192.0.2.1 dev gpv0
ip -6 route add default via 2001:db8:1::1 dev gpv0
`)
	var idx0, idx1 int
	n.Do(func() error {
		l0, err := netlink.LinkByName("gpv0")
		if err != nil {
			t.Fatal(err)
		}
		l1, err := netlink.LinkByName("gpv1")
		if err != nil {
			t.Fatal(err)
		}
		idx0, idx1 = l0.Attrs().Index, l1.Attrs().Index
		return nil
	})

	want := Uplink{
		Ifname: "gpv0", Ifindex: idx0, MTU: 1400,
		// /28 is more specific than /24.
		Addr4:    netip.MustParsePrefix("192.0.2.20/28"),
		Gateway4: netip.MustParseAddr("192.0.2.1"),
		// The /96 is deprecated (preferred_lft 0): skipped.
		Addr6:      netip.MustParsePrefix("2001:db8:1::10/64"),
		Gateway6:   netip.MustParseAddr("2001:db8:1::1"),
		LinkLocal6: netip.MustParseAddr("fe80::10"),
		Ifname4:    "gpv0", Ifindex4: idx0,
		Ifname6: "gpv0", Ifindex6: idx0,
	}
	if u := uplinkIn(t, n, ""); u != want {
		t.Errorf("default routes:\n got %+v\nwant %+v", u, want)
	}

	// -i gpv1: that interface, whatever the routes say; no default
	// route on it, no IPv6 global address.
	want1 := Uplink{
		Ifname: "gpv1", Ifindex: idx1, MTU: 1300,
		Addr4:   netip.MustParsePrefix("198.51.100.2/24"),
		Ifname4: "gpv1", Ifindex4: idx1,
		Ifname6: "gpv1", Ifindex6: idx1,
	}
	if u := uplinkIn(t, n, "gpv1"); u != want1 {
		t.Errorf("ifname gpv1:\n got %+v\nwant %+v", u, want1)
	}

	// IPv4 default route moved to gpv1: the families split.
	runInNS(t, n, `
ip route del default via 192.0.2.1
ip route add default via 198.51.100.1 dev gpv1
`)
	u := uplinkIn(t, n, "")
	if u.Ifindex != idx1 || u.Ifname4 != "gpv1" || u.Ifindex6 != idx0 || u.Ifname6 != "gpv0" ||
		u.Gateway4 != netip.MustParseAddr("198.51.100.1") || u.Gateway6 != want.Gateway6 ||
		u.Addr4 != want1.Addr4 || u.Addr6 != want.Addr6 || u.MTU != 1300 {
		t.Errorf("split families: %+v", u)
	}

	// Multipath default route: the interface is the first next hop's, the
	// gateway the highest-weight next hop's.
	runInNS(t, n, `
ip route del default
ip route add default nexthop via 192.0.2.1 dev gpv0 weight 1 nexthop via 198.51.100.1 dev gpv1 weight 3
`)
	u = uplinkIn(t, n, "")
	if u.Ifindex4 != idx0 || u.Gateway4 != netip.MustParseAddr("198.51.100.1") || u.Addr4 != want.Addr4 {
		t.Errorf("multipath, weights 1/3: %+v", u)
	}
	runInNS(t, n, `
ip route del default
ip route add default nexthop via 192.0.2.1 dev gpv0 weight 2 nexthop via 198.51.100.1 dev gpv1 weight 2
`)
	u = uplinkIn(t, n, "")
	if u.Ifindex4 != idx0 || u.Gateway4 != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("multipath, equal weights: %+v", u)
	}

	// No default routes: the first interface with any route that is not
	// link-local (169.254.0.0/16 on gpv1 is skipped), and no gateway.
	runInNS(t, n, `
ip route del default
ip -6 route del default
ip route add 10.0.0.0/8 via 198.51.100.1
`)
	u = uplinkIn(t, n, "")
	// 10.0.0.0/8 sorts first in the dump and is on gpv1.
	if u.Ifindex4 != idx1 || u.Gateway4.IsValid() || u.Addr4 != want1.Addr4 {
		t.Errorf("no default IPv4 route: %+v, want gpv1 (first route 10.0.0.0/8)", u)
	}
	if u.Ifindex6 != idx0 || u.Gateway6.IsValid() || u.Addr6 != want.Addr6 {
		t.Errorf("no default IPv6 route: %+v, want gpv0", u)
	}

	// Only link-local routes and loopback left: nothing usable.
	runInNS(t, n, `
ip addr flush dev gpv0
ip addr flush dev gpv1
ip route flush table main
ip route add 169.254.0.0/16 dev gpv1
`)
	u = uplinkIn(t, n, "")
	if u.Ifindex != 0 || u.Ifindex4 != 0 || u.Ifindex6 != 0 {
		t.Errorf("link-local routes only: %+v", u)
	}
}
