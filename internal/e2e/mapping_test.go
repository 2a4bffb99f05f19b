package e2e_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// echoAt starts an echo server on addr in namespace ns.
func echoAt(t *testing.T, sb *sandbox.Sandbox, ns, addr string) {
	t.Helper()
	e := sb.Start(t, ns, udptool, "echo", "-l", addr, "-timeout", "30s")
	e.WaitLine(t, "ready", 20*time.Second)
}

// exchange runs pasta with args and, inside, one echo exchange with to;
// the echo must come back from to.
func exchange(t *testing.T, sb *sandbox.Sandbox, args []string, to string) {
	t.Helper()
	p := pasta(t, sb, append([]string{"-q"}, args...), udptool, "send", "-to", to, "-size", "100", "-count", "2", "-echo", "-connect")
	wait(t, p, 0)
	if r := parseSend(t, p.Stdout()); r.Received != 2 || r.Peer != to {
		t.Fatalf("%v: send result %+v, want 2 echoes from %s", args, r, to)
	}
}

// TestAddressMapping exercises the address mapping options of the man
// page through real namespaces.
func TestAddressMapping(t *testing.T) {
	sb := sandbox.New(t)
	t.Run("dns-forward", func(t *testing.T) {
		echoAt(t, sb, sb.HostNS, "127.0.0.53:53")
		echoAt(t, sb, sb.HostNS, "[::1]:53")
		exchange(t, sb, []string{"--dns-forward", "192.0.2.53", "--dns-host", "127.0.0.53"}, "192.0.2.53:53")
		exchange(t, sb, []string{"--dns-forward", "2001:db8::53", "--dns-host", "::1"}, "[2001:db8::53]:53")
	})
	t.Run("map-host-loopback", func(t *testing.T) {
		echoAt(t, sb, sb.HostNS, "127.0.0.1:5601")
		exchange(t, sb, []string{"--map-host-loopback", "192.0.2.200"}, "192.0.2.200:5601")
	})
	t.Run("map-guest-addr", func(t *testing.T) {
		echoAt(t, sb, sb.HostNS, "192.0.2.2:5602")
		echoAt(t, sb, sb.HostNS, "[2001:db8::2]:5602")
		exchange(t, sb, []string{"--map-guest-addr", "192.0.2.99"}, "192.0.2.99:5602")
		exchange(t, sb, []string{"--map-guest-addr", "2001:db8::99"}, "[2001:db8::99]:5602")
	})
	t.Run("no-map-gw", func(t *testing.T) {
		// The gateway address is then the real gateway, in the world.
		echoAt(t, sb, sb.WorldNS, "192.0.2.1:5603")
		exchange(t, sb, []string{"--no-map-gw"}, "192.0.2.1:5603")
	})
	t.Run("outbound", func(t *testing.T) {
		if out, err := sb.Command(sb.HostNS, "ip", "addr", "add", "192.0.2.3/24", "dev", "eth0").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		e := sb.Start(t, sb.WorldNS, udptool, "echo", "-l", "198.51.100.1:5604", "-count", "4", "-timeout", "20s")
		e.WaitLine(t, "ready", 20*time.Second)
		exchange(t, sb, []string{"-o", "192.0.2.3"}, "198.51.100.1:5604")
		exchange(t, sb, []string{"--outbound-if4", "eth0"}, "198.51.100.1:5604")
		wait(t, e, 0)
		if peers := parseEcho(t, e.Stdout()).Peers; len(peers) != 2 || peers[0][:len("192.0.2.3:")] != "192.0.2.3:" {
			t.Fatalf("world saw %v, want the first flow from 192.0.2.3", peers)
		}
	})
}

// TestDNSLoopbackStub gives the sandbox host a resolv.conf whose resolver
// is a loopback stub (127.0.0.53, as systemd-resolved has it): the
// namespace's queries to its gateway must reach the stub, with no option.
func TestDNSLoopbackStub(t *testing.T) {
	sb := sandbox.New(t)
	// ip netns exec bind-mounts /etc/netns/NAME/resolv.conf over
	// /etc/resolv.conf for what it runs.
	dir := filepath.Join("/etc/netns", sb.HostNS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver 127.0.0.53\nsearch example.org\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	echoAt(t, sb, sb.HostNS, "127.0.0.53:53")
	exchange(t, sb, nil, "192.0.2.1:53")
	// Other ports of the gateway still reach the host's 127.0.0.1.
	echoAt(t, sb, sb.HostNS, "127.0.0.1:5605")
	exchange(t, sb, nil, fmt.Sprintf("192.0.2.1:%d", 5605))
}
