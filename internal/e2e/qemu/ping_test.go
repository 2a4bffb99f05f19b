package qemu_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/internal/e2e/qemu"
	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// Console markers around each guest ping of TestPingGuest.
const (
	markPingBegin = "GUEST-PING-BEGIN" // name; busybox ping output follows
	markPingEnd   = "GUEST-PING-END"   // name and exit status
)

// pingTargets are what the guest pings: the gateway (passt maps it to the
// host's loopback, whose kernel answers) and the world namespace's
// addresses.
var pingTargets = []struct {
	name string
	addr netip.Addr
}{
	{"gw4", sandbox.GatewayAddr4},
	{"gw6", sandbox.GatewayAddr6},
	{"remote4", sandbox.RemoteAddr4},
	{"remote6", sandbox.RemoteAddr6},
}

// busyboxPing matches the summary line of busybox ping.
var busyboxPing = regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`)

// TestPingGuest boots a guest against "gopasst passt" and pings, with
// busybox ping from the guest's own stack, the gateway and the world
// namespace's addresses: all three replies of each must arrive.
func TestPingGuest(t *testing.T) {
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	bin := sandbox.BuildBinary(t, "github.com/gopasst/gopasst/cmd/gopasst")
	pingGuest(t, []string{bin, "passt"}, true)
}

// TestPingGuestReference runs the same pings against the reference passt
// when GOPASST_QEMU_REFERENCE=1, for comparison.
func TestPingGuestReference(t *testing.T) {
	if os.Getenv(referenceEnv) != "1" {
		t.Skipf("set %s=1 to compare with the reference passt", referenceEnv)
	}
	if _, err := exec.LookPath(qemu.ReferencePasst[0]); err != nil {
		t.Skip(err)
	}
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	pingGuest(t, qemu.ReferencePasst, false)
}

func pingGuest(t *testing.T, command []string, gopasst bool) {
	sb := sandbox.New(t)
	// passt opens ping sockets in the sandbox host, as nobody: let every
	// group (this namespace only; it starts closed, "1 0").
	const key = "net.ipv4.ping_group_range"
	old, err := sb.Command(sb.HostNS, "sysctl", "-n", key).Output()
	if err != nil {
		t.Fatalf("read %s in %s: %v", key, sb.HostNS, err)
	}
	if out, err := sb.Command(sb.HostNS, "sysctl", "-q", "-w", key+"=0 2147483647").CombinedOutput(); err != nil {
		t.Fatalf("set %s in %s: %v: %s", key, sb.HostNS, err, out)
	}
	t.Cleanup(func() {
		prev := strings.Join(strings.Fields(string(old)), " ")
		if out, err := sb.Command(sb.HostNS, "sysctl", "-q", "-w", key+"="+prev).CombinedOutput(); err != nil {
			t.Errorf("restore %s in %s: %v: %s", key, sb.HostNS, err, out)
		}
	})

	passt := qemu.StartPasst(t, sb, command)
	var extra strings.Builder
	for _, p := range pingTargets {
		fmt.Fprintf(&extra, "echo \"%s %s\"\nping -c 3 -W 2 %s 2>&1\necho \"%s %s $?\"\n", markPingBegin, p.name, p.addr, markPingEnd, p.name)
	}
	vm := qemu.Start(t, sb, passt.Socket, qemu.InitScript(qemu.InitOptions{NoDHCP6: true, Extra: extra.String()}))
	console := vm.Wait(t, qemu.CheckTimeout)
	r := qemu.ParseConsole(console)
	if !r.Done {
		t.Errorf("guest script did not finish")
	}
	if r.IPv4 != netip.PrefixFrom(sandbox.HostAddr4, sandbox.LinkPrefixLen4) || !r.HasGlobal6In(netip.MustParsePrefix("2001:db8::/64")) {
		t.Errorf("guest addresses %v %v: the pings need DHCPv4 and SLAAC", r.IPv4, r.IPv6)
	}

	blocks := pingBlocks(console)
	for _, p := range pingTargets {
		b, ok := blocks[p.name]
		m := busyboxPing.FindStringSubmatch(b.out)
		switch {
		case !ok:
			t.Errorf("[%s] ping %v: no output", p.name, p.addr)
		case b.exit != "0" || m == nil || m[1] != "3" || m[2] != "3":
			t.Errorf("[%s] ping %v: exit %s, want 3 of 3 replies:\n%s", p.name, p.addr, b.exit, b.out)
		case strings.Count(b.out, " bytes from "+p.addr.String()+":") != 3:
			t.Errorf("[%s] ping %v: replies not from the address pinged:\n%s", p.name, p.addr, b.out)
		}
	}
	if !gopasst {
		return
	}
	c, err := watch.Counters(passt.Proc)
	if err != nil {
		t.Fatal(err)
	}
	if c["icmp echo requests to host"] < 12 || c["icmp echo replies to tap"] < 12 || c["icmp flows created"] < 4 {
		t.Errorf("counters: requests %d, replies %d, flows %d; want at least 12, 12, 4",
			c["icmp echo requests to host"], c["icmp echo replies to tap"], c["icmp flows created"])
	}
}

type pingBlock struct{ out, exit string }

// pingBlocks returns the output of each guest ping by name.
func pingBlocks(console string) map[string]pingBlock {
	res := map[string]pingBlock{}
	var name string
	var lines []string
	for _, line := range strings.Split(strings.ReplaceAll(console, "\r", ""), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == markPingBegin:
			name, lines = f[1], nil
		case len(f) >= 3 && f[0] == markPingEnd && f[1] == name:
			res[name] = pingBlock{strings.Join(lines, "\n"), f[2]}
			name = ""
		case name != "":
			lines = append(lines, line)
		}
	}
	return res
}
