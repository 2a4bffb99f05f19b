package qemu_test

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/qemu"
	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// referenceEnv, set to 1, makes TestReferencePasstGuest run: the same
// checks against the reference passt of Debian's passt package, for
// comparison.
const referenceEnv = "GOPASST_QEMU_REFERENCE"

// TestPasstGuest boots guests against "gopasst passt" and runs
// qemu.CheckPasst with the sandbox host's IPv6 default route via a global
// and via a link-local address. The two guests boot in parallel. Every
// check must pass.
func TestPasstGuest(t *testing.T) {
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	bin := sandbox.BuildBinary(t, "github.com/gopasst/gopasst/cmd/gopasst")
	runGuests(t, []string{bin, "passt"}, nil, nil)
}

// TestReferencePasstGuest runs the same checks against the reference
// passt when GOPASST_QEMU_REFERENCE=1, tolerating its known limits.
func TestReferencePasstGuest(t *testing.T) {
	if os.Getenv(referenceEnv) != "1" {
		t.Skipf("set %s=1 to compare with the reference passt", referenceEnv)
	}
	if _, err := exec.LookPath(qemu.ReferencePasst[0]); err != nil {
		t.Skip(err)
	}
	runGuests(t, qemu.ReferencePasst, []string{"-e"}, referenceLimits)
}

func runGuests(t *testing.T, command, args []string, optional map[string][]string) {
	for _, c := range []struct {
		name      string
		linkLocal bool
	}{
		{"GlobalGateway6", false},
		{"LinkLocalGateway6", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			qemu.CheckPasst(t, qemu.CheckConfig{
				Command:           command,
				Args:              args,
				LinkLocalGateway6: c.linkLocal,
				Optional:          optional[c.name],
			})
		})
	}
}

// referenceLimits are the known failures of the reference passt of Debian
// 12 (0.0~git20230309.7c7625d) by subtest. With a global IPv6 gateway
// (2001:db8::1), it answers datagrams the guest sends to the gateway from
// its own link-local address instead of the gateway address, and sends
// datagrams the guest addresses to that link-local address (its router
// address in the router advertisement) out of the host's interface
// instead of to the host's loopback.
var referenceLimits = map[string][]string{
	"GlobalGateway6": {qemu.CheckGw6, qemu.CheckRouter6, qemu.CheckFwd6},
}

// TestStartPasstAs runs the reference passt through su as an ordinary
// user and checks it listens; the sandbox cleanup then fails the test if
// passt survives.
func TestStartPasstAs(t *testing.T) {
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath(qemu.ReferencePasst[0]); err != nil {
		t.Skip(err)
	}
	sb := sandbox.New(t)
	p := qemu.StartPasstAs(t, sb, "gopasst-test", qemu.ReferencePasst, "-e")
	if _, err := os.Stat(p.Socket); err != nil {
		t.Fatal(err)
	}
}

func TestParseConsole(t *testing.T) {
	r := qemu.ParseConsole(sampleConsole)
	if !r.Done || r.BootTime != 1700*time.Millisecond || r.NetUpTime != 8790*time.Millisecond || !r.Ready {
		t.Errorf("times/flags: %+v", r)
	}
	if r.IPv4 != netip.MustParsePrefix("192.0.2.2/24") || r.Gateway4 != netip.MustParseAddr("192.0.2.1") || r.MTU != 65520 {
		t.Errorf("IPv4: %v via %v mtu %d", r.IPv4, r.Gateway4, r.MTU)
	}
	if r.DHCP4["router"] != "192.0.2.1" || r.DHCP4["dns"] != "10.255.255.53" || r.DHCP4["mask"] != "24" {
		t.Errorf("DHCP4 %v", r.DHCP4)
	}
	if r.DHCP6 == nil || len(r.DHCP6.Addresses) != 1 || r.DHCP6.Addresses[0] != "2001:db8::2" || r.DHCP6.Reply != "reply" {
		t.Errorf("DHCP6 %+v", r.DHCP6)
	}
	if len(r.IPv6) != 2 || !r.HasGlobal6In(netip.MustParsePrefix("2001:db8::/64")) || r.Gateway6 != netip.MustParseAddr("fe80::281a:63ff:fee6:b20") {
		t.Errorf("IPv6 %v via %v", r.IPv6, r.Gateway6)
	}
	if s := r.Sends["gw4"]; s.Exit != 0 || s.Received != 3 || s.Peer != "192.0.2.1:5301" {
		t.Errorf("gw4 %+v", s)
	}
	if s := r.Sends["gw6"]; s.Exit != 1 || s.Received != 0 || !strings.Contains(s.Output, "received 0 of 3") {
		t.Errorf("gw6 %+v", s)
	}
	if e := r.Echoes["fwd6"]; e.Exit != 0 || e.Echoed != 3 || len(e.Peers) != 1 {
		t.Errorf("fwd6 %+v", e)
	}
	if len(r.Errors) != 1 || r.Errors[0] != "something odd" {
		t.Errorf("errors %q", r.Errors)
	}
	if r.Phases["dhcp4"] != 2120*time.Millisecond {
		t.Errorf("phases %v", r.Phases)
	}
}

// sampleConsole is the console of a run against the reference passt,
// trimmed, with an error line and a kernel message added.
var sampleConsole = strings.ReplaceAll(`GUEST-BOOTED 1.70
GUEST-PHASE link 1.95
GUEST-MAC 52:54:00:12:34:56
udhcpc: started, v1.35.0
udhcpc: broadcasting discover
udhcpc: lease of 192.0.2.2 obtained from 192.0.2.1, lease time 4294967295
GUEST-DHCP4 ip=192.0.2.2 mask=24 subnet=255.255.255.0 router=192.0.2.1 dns=10.255.255.53 mtu=65520 domain= search= lease=4294967295 serverid=192.0.2.1
GUEST-PHASE dhcp4 2.12
GUEST-IPV4 192.0.2.2/24
GUEST-GW4 192.0.2.1
GUEST-MTU 65520
GUEST-DHCP6 {"reply":"reply","rapid_commit":false,"addresses":["2001:db8::2"],"preferred":[4294967295],"valid":[4294967295],"dns":[],"search":[],"server_id":"00010001329523792a1a63e60b20"}
GUEST-IPV6 2001:db8::2/128
GUEST-IPV6 2001:db8::5054:ff:fe12:3456/64
GUEST-GW6 fe80::281a:63ff:fee6:b20
GUEST-NET-UP 8.79
GUEST-ERROR something odd
GUEST-SEND-BEGIN gw4
{"sent":3,"received":3,"bad":0,"local":"192.0.2.2:42271","peer":"192.0.2.1:5301"}
GUEST-SEND-END gw4 0
GUEST-SEND-BEGIN gw6
[    9.123456] some kernel message
{"sent":3,"received":0,"bad":0,"local":"[2001:db8::2]:49943","peer":""}
udptool: send: received 0 of 3 echoes
GUEST-SEND-END gw6 1
GUEST-READY 15.11
GUEST-ECHO-BEGIN fwd6
listen [::]:5303
ready
{"echoed":3,"peers":["[fe80::281a:63ff:fee6:b20%eth0]:38518"]}
GUEST-ECHO-END fwd6 0
GUEST-DONE 19.19
[   19.212639] reboot: Power down
`, "\n", "\r\n")
