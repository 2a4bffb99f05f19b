package qemu

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// Ports used by [CheckPasst].
const (
	// GatewayPort is where udptool echo listens on the host's loopback
	// (127.0.0.1 and ::1) for datagrams the guest sends to its gateway
	// (192.0.2.1, 2001:db8::1).
	GatewayPort = 5301
	// RemotePort is where udptool echo listens in the world namespace
	// (198.51.100.1 and 2001:db8:1::1).
	RemotePort = 5302
	// ForwardPort is forwarded by passt (-u) from the host to the guest.
	ForwardPort = 5303
	// RouterPort is where udptool echo listens on ::1 for datagrams the
	// guest sends to its IPv6 default router (a link-local address).
	RouterPort = 5304
)

// CheckTimeout bounds the whole guest run of [CheckPasst].
const CheckTimeout = 3 * time.Minute

// Names of the checks of [CheckPasst], for [CheckConfig.Optional].
const (
	CheckDHCP4   = "dhcp4"   // lease 192.0.2.2/24, router 192.0.2.1
	CheckSLAAC   = "slaac"   // a global address in 2001:db8::/64, a default route
	CheckDHCP6   = "dhcp6"   // DHCPv6 assigns 2001:db8::2
	CheckGw4     = "gw4"     // guest -> 192.0.2.1:GatewayPort -> host 127.0.0.1
	CheckGw6     = "gw6"     // guest -> [2001:db8::1]:GatewayPort -> host ::1
	CheckRouter6 = "router6" // guest -> [default router%eth0]:RouterPort -> host ::1
	CheckRemote4 = "remote4" // guest -> 198.51.100.1:RemotePort (world)
	CheckRemote6 = "remote6" // guest -> [2001:db8:1::1]:RemotePort (world)
	CheckFwd4    = "fwd4"    // host 127.0.0.1:ForwardPort -> guest, echoed back
	CheckFwd6    = "fwd6"    // host [::1]:ForwardPort -> guest, echoed back
)

// CheckConfig selects the passt under test and what [CheckPasst] expects
// of it.
type CheckConfig struct {
	// Command runs passt: [ReferencePasst], or {GOPASST, "passt"}. See
	// [StartPasst].
	Command []string
	// Args are added after "-f -s SOCKET -u ForwardPort".
	Args []string
	// LinkLocalGateway6 replaces the sandbox host's IPv6 default route
	// (via 2001:db8::1) with one via the world namespace's link-local
	// address, as on networks where the route comes from router
	// advertisements. The gw6 check is then not run: 2001:db8::1 is no
	// longer the gateway.
	LinkLocalGateway6 bool
	// Optional names checks (Check* constants) whose failure is logged
	// instead of failing the test: known limitations of the passt under
	// test.
	Optional []string
}

// CheckResult is what [CheckPasst] observed, for further assertions.
type CheckResult struct {
	// Report is the parsed console.
	Report *Report
	// Console is the raw console.
	Console string
	// Passt is the passt process (stopped when the test ends).
	Passt *Passt
	// Gateway6 is the sandbox host's IPv6 default gateway.
	Gateway6 netip.Addr
	// HostSends are the results of the host-to-guest sends by name
	// ("fwd4", "fwd6").
	HostSends map[string]SendResult
	// HostEchoes are the results of the host's echo servers by name
	// ("gw4", "gw6", "router6", "remote4", "remote6").
	HostEchoes map[string]EchoResult
	// Failed lists the checks that failed, optional ones included.
	Failed []string
	// Wall is the time from starting qemu to its exit.
	Wall time.Duration
}

// CheckPasst runs passt as cfg says, with "-u ForwardPort", in a new
// sandbox, boots a guest connected to it and checks (names in brackets):
//
//   - [dhcp4] DHCPv4 assigns 192.0.2.2/24 (the host's address) with router
//     192.0.2.1 (the host's gateway), and the interface takes the offered
//     MTU;
//   - [slaac] the guest gets a global address in 2001:db8::/64 from the
//     router advertisement, and an IPv6 default route;
//   - [dhcp6] DHCPv6 assigns 2001:db8::2;
//   - [gw4, gw6] UDP datagrams from the guest to the gateway (192.0.2.1,
//     2001:db8::1), which passt maps to the host's loopback, are echoed
//     back byte-exact from the gateway address;
//   - [router6] the same for the guest's IPv6 default router, a link-local
//     address;
//   - [remote4, remote6] the same for 198.51.100.1 and 2001:db8:1::1 in the
//     world namespace;
//   - [fwd4, fwd6] datagrams sent on the host to 127.0.0.1 and ::1 port
//     ForwardPort reach an echo server in the guest and come back.
//
// Failures are reported with t.Errorf (t.Logf for cfg.Optional), so that
// one run shows them all; the console is logged when t fails. It skips t
// if [Available] fails.
func CheckPasst(t *testing.T, cfg CheckConfig) *CheckResult {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("qemu: %v", err)
	}
	sb := sandbox.New(t)
	udptool := sandbox.BuildUdptool(t)
	res := &CheckResult{HostSends: map[string]SendResult{}, HostEchoes: map[string]EchoResult{}, Gateway6: sandbox.GatewayAddr6}
	fail := func(check, format string, args ...any) {
		t.Helper()
		res.Failed = append(res.Failed, check)
		msg := fmt.Sprintf("[%s] ", check) + fmt.Sprintf(format, args...)
		if contains(cfg.Optional, check) {
			t.Logf("%s (optional, known limitation)", msg)
		} else {
			t.Error(msg)
		}
	}

	if cfg.LinkLocalGateway6 {
		res.Gateway6 = useLinkLocalGateway6(t, sb)
	}

	loop4, loop6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	type service struct {
		name, ns string
		addr     netip.AddrPort
	}
	services := []service{
		{CheckGw4, sb.HostNS, netip.AddrPortFrom(loop4, GatewayPort)},
		{CheckGw6, sb.HostNS, netip.AddrPortFrom(loop6, GatewayPort)},
		{CheckRouter6, sb.HostNS, netip.AddrPortFrom(loop6, RouterPort)},
		{CheckRemote4, sb.WorldNS, netip.AddrPortFrom(sandbox.RemoteAddr4, RemotePort)},
		{CheckRemote6, sb.WorldNS, netip.AddrPortFrom(sandbox.RemoteAddr6, RemotePort)},
	}
	sends := []Send{
		{Name: CheckGw4, To: netip.AddrPortFrom(sandbox.GatewayAddr4, GatewayPort)},
		{Name: CheckGw6, To: netip.AddrPortFrom(sandbox.GatewayAddr6, GatewayPort)},
		{Name: CheckRouter6, To: netip.AddrPortFrom(netip.IPv6Unspecified(), RouterPort), ToRouter6: true},
		{Name: CheckRemote4, To: netip.AddrPortFrom(sandbox.RemoteAddr4, RemotePort)},
		{Name: CheckRemote6, To: netip.AddrPortFrom(sandbox.RemoteAddr6, RemotePort)},
	}
	if cfg.LinkLocalGateway6 {
		services = append(services[:1], services[2:]...)
		sends = append(sends[:1], sends[2:]...)
	}
	echoes := map[string]*sandbox.Proc{}
	for _, s := range services {
		p := sb.Start(t, s.ns, udptool, "echo", "-l", s.addr.String(), "-count", "3", "-timeout", CheckTimeout.String())
		p.WaitLine(t, "ready", 10*time.Second)
		echoes[s.name] = p
	}

	res.Passt = StartPasst(t, sb, cfg.Command, append([]string{"-u", strconv.Itoa(ForwardPort)}, cfg.Args...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("qemu: passt stderr:\n%s", res.Passt.Proc.Stderr())
		}
	})

	opts := InitOptions{
		Sends: sends,
		Echoes: []Echo{
			{Name: CheckFwd4, Listen: netip.AddrPortFrom(netip.IPv4Unspecified(), ForwardPort), Count: 3, Timeout: 20 * time.Second},
			{Name: CheckFwd6, Listen: netip.AddrPortFrom(netip.IPv6Unspecified(), ForwardPort), Count: 3, Timeout: 20 * time.Second},
		},
	}
	vm := Start(t, sb, res.Passt.Socket, InitScript(opts))

	// Host to guest, once the guest's echo servers listen, both flows at
	// once.
	vm.WaitLine(t, MarkReady, CheckTimeout)
	hostSends := map[string]*sandbox.Proc{}
	for name, addr := range map[string]netip.Addr{CheckFwd4: loop4, CheckFwd6: loop6} {
		to := netip.AddrPortFrom(addr, ForwardPort).String()
		hostSends[name] = sb.Start(t, sb.HostNS, udptool, "send", "-to", to, "-echo", "-connect", "-count", "3", "-size", "1372", "-timeout", "10s")
	}
	for name, p := range hostSends {
		code, err := p.Wait(20 * time.Second)
		r := parseJSONLine[SendResult](p.Stdout())
		r.Exit, r.Output = code, strings.TrimSpace(p.Stdout()+p.Stderr())
		if err != nil {
			r.Output += "\n" + err.Error()
		}
		res.HostSends[name] = r
	}

	res.Console = vm.Wait(t, CheckTimeout)
	res.Wall = time.Since(vm.Started)
	r := ParseConsole(res.Console)
	res.Report = r
	for name, p := range echoes {
		_ = p.Signal(syscall.SIGTERM) // makes udptool echo print its summary
		_, _ = p.Wait(5 * time.Second)
		e := parseJSONLine[EchoResult](p.Stdout())
		e.Output = strings.TrimSpace(p.Stdout() + p.Stderr())
		res.HostEchoes[name] = e
	}

	// Assertions.
	if !r.Done {
		t.Errorf("guest script did not finish")
	}
	for _, e := range r.Errors {
		t.Errorf("guest: %s", e)
	}
	switch want := netip.PrefixFrom(sandbox.HostAddr4, sandbox.LinkPrefixLen4); {
	case r.DHCP4 == nil:
		fail(CheckDHCP4, "no DHCPv4 lease")
	case r.IPv4 != want || r.Gateway4 != sandbox.GatewayAddr4:
		fail(CheckDHCP4, "guest IPv4 address %v via %v, want %v via %v", r.IPv4, r.Gateway4, want, sandbox.GatewayAddr4)
	case r.DHCP4["mtu"] != "" && r.DHCP4["mtu"] != strconv.Itoa(r.MTU):
		fail(CheckDHCP4, "guest MTU %d, DHCP offered %s", r.MTU, r.DHCP4["mtu"])
	}
	link6 := netip.PrefixFrom(sandbox.HostAddr6, sandbox.LinkPrefixLen6).Masked()
	if !r.HasGlobal6In(link6) || !r.Gateway6.IsValid() {
		fail(CheckSLAAC, "guest IPv6 addresses %v, default router %v; want an address in %v and a router", r.IPv6, r.Gateway6, link6)
	}
	switch {
	case r.DHCP6 == nil:
		fail(CheckDHCP6, "no DHCPv6 result")
	case r.DHCP6.Error != "":
		fail(CheckDHCP6, "%s", r.DHCP6.Error)
	case !contains(r.DHCP6.Addresses, sandbox.HostAddr6.String()):
		fail(CheckDHCP6, "DHCPv6 addresses %v, want %v", r.DHCP6.Addresses, sandbox.HostAddr6)
	}
	for _, s := range sends {
		got, ok := r.Sends[s.Name]
		wantPeer := s.To.String()
		if s.ToRouter6 && r.Gateway6.IsValid() {
			wantPeer = netip.AddrPortFrom(r.Gateway6.WithZone("eth0"), s.To.Port()).String()
		}
		switch {
		case !ok:
			fail(s.Name, "guest send: no result")
		case got.Exit != 0 || got.Received != 3 || got.Bad != 0:
			fail(s.Name, "guest send to %s: %s", wantPeer, got.Output)
		case got.Peer != wantPeer:
			fail(s.Name, "guest send: echoes from %s, want %s", got.Peer, wantPeer)
		case res.HostEchoes[s.Name].Echoed != 3:
			fail(s.Name, "echo server: %s", res.HostEchoes[s.Name].Output)
		}
	}
	for _, name := range []string{CheckFwd4, CheckFwd6} {
		hs, ge := res.HostSends[name], r.Echoes[name]
		switch {
		case hs.Exit != 0 || hs.Received != 3 || hs.Bad != 0:
			fail(name, "host send to port %d: %s; guest echo server: %s", ForwardPort, hs.Output, ge.Output)
		case ge.Exit != 0 || ge.Echoed != 3:
			fail(name, "guest echo server: %s", ge.Output)
		}
	}
	if e := r.Echoes[CheckFwd4]; len(e.Peers) > 0 {
		if ap, err := netip.ParseAddrPort(e.Peers[0]); err != nil || ap.Addr() != sandbox.GatewayAddr4 {
			fail(CheckFwd4, "guest echo: datagrams from %v, want the gateway %v (host loopback mapped)", e.Peers, sandbox.GatewayAddr4)
		}
	}
	t.Logf("qemu: guest phases %v, network up %v after boot; qemu ran %v (accel %s); guest IPv6 %v router %v; fwd6 reached the guest from %v",
		roundPhases(r.Phases), r.NetUpTime.Round(10*time.Millisecond), res.Wall.Round(10*time.Millisecond), accelName(),
		r.IPv6, r.Gateway6, r.Echoes[CheckFwd6].Peers)
	return res
}

// useLinkLocalGateway6 switches the sandbox host's IPv6 default route to
// the world namespace's link-local address on eth0 and returns it.
func useLinkLocalGateway6(t testing.TB, sb *sandbox.Sandbox) netip.Addr {
	t.Helper()
	out, err := sb.Command(sb.WorldNS, "ip", "-6", "-o", "addr", "show", "dev", sandbox.IfName, "scope", "link").CombinedOutput()
	if err != nil {
		t.Fatalf("qemu: world link-local address: %v: %s", err, out)
	}
	var ll netip.Addr
	for _, f := range strings.Fields(string(out)) {
		if p, err := netip.ParsePrefix(f); err == nil && p.Addr().IsLinkLocalUnicast() {
			ll = p.Addr()
		}
	}
	if !ll.IsValid() {
		t.Fatalf("qemu: no link-local address in the world namespace: %s", out)
	}
	if out, err := sb.Command(sb.HostNS, "ip", "-6", "route", "replace", "default", "via", ll.String(), "dev", sandbox.IfName).CombinedOutput(); err != nil {
		t.Fatalf("qemu: ip -6 route replace default via %v: %v: %s", ll, err, out)
	}
	return ll
}

// roundPhases formats phase times for logging.
func roundPhases(p map[string]time.Duration) string {
	var parts []string
	for _, k := range []string{"link", "dhcp4", "slaac", "dhcp6"} {
		if d, ok := p[k]; ok {
			parts = append(parts, fmt.Sprintf("%s@%v", k, d.Round(10*time.Millisecond)))
		}
	}
	return strings.Join(parts, " ")
}

func accelName() string {
	if KVM() {
		return "kvm"
	}
	return "tcg"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// parseJSONLine decodes the last line of out that starts with "{".
func parseJSONLine[T any](out string) T {
	var v T
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); strings.HasPrefix(l, "{") {
			_ = json.Unmarshal([]byte(l), &v)
			break
		}
	}
	return v
}
