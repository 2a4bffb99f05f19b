package sandbox

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sendResult mirrors the JSON line printed by "udptool send".
type sendResult struct {
	Sent     int    `json:"sent"`
	Received int    `json:"received"`
	Bad      int    `json:"bad"`
	Local    string `json:"local"`
	Peer     string `json:"peer"`
	Error    string `json:"error"`
}

// echoSummary mirrors the JSON line printed by "udptool echo" on exit.
type echoSummary struct {
	Echoed int      `json:"echoed"`
	Peers  []string `json:"peers"`
}

// send runs "udptool send" in namespace ns and checks that all echoes
// arrived intact from to.
func send(t *testing.T, s *Sandbox, udptool, ns string, to netip.AddrPort, args ...string) sendResult {
	t.Helper()
	args = append([]string{"send", "-to", to.String(), "-echo"}, args...)
	cmd := s.Command(ns, udptool, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res sendResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("udptool %v in %s: %v, output %q, stderr %q", args, ns, err, out, stderr.String())
	}
	if err != nil || res.Bad != 0 || res.Received == 0 || res.Received != res.Sent || res.Peer != to.String() {
		t.Fatalf("udptool %v in %s: %v, %+v, stderr %q", args, ns, err, res, stderr.String())
	}
	return res
}

// stopEcho stops an echo server with SIGTERM and returns its summary.
func stopEcho(t *testing.T, p *Proc) echoSummary {
	t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(5 * time.Second)
	if code != 0 || err != nil {
		t.Fatalf("echo exited %d, %v; stderr %q", code, err, p.Stderr())
	}
	var sum echoSummary
	line := p.WaitLine(t, `"echoed"`, time.Second)
	if err := json.Unmarshal([]byte(line), &sum); err != nil {
		t.Fatalf("echo summary %q: %v", line, err)
	}
	return sum
}

func TestTopology(t *testing.T) {
	s := New(t)
	for _, tc := range []struct {
		ns   string
		args []string
		want []string
	}{
		{s.HostNS, []string{"addr", "show", "dev", IfName}, []string{"192.0.2.2/24", "2001:db8::2/64", "UP"}},
		{s.WorldNS, []string{"addr", "show", "dev", IfName}, []string{"192.0.2.1/24", "2001:db8::1/64", "UP"}},
		{s.WorldNS, []string{"addr", "show", "dev", "lo"}, []string{"198.51.100.1/32", "2001:db8:1::1/128", "UP"}},
		{s.HostNS, []string{"-4", "route", "show", "default"}, []string{"default via 192.0.2.1 dev eth0"}},
		{s.HostNS, []string{"-6", "route", "show", "default"}, []string{"default via 2001:db8::1 dev eth0"}},
		{s.HostNS, []string{"link", "show", "dev", "lo"}, []string{"UP"}},
	} {
		out, err := ipCmd(append([]string{"-n", tc.ns}, tc.args...)...)
		if err != nil {
			t.Fatalf("ip %v: %v: %s", tc.args, err, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("ip -n %s %v: missing %q in\n%s", tc.ns, tc.args, w, out)
			}
		}
	}
	for _, ns := range []string{s.HostNS, s.WorldNS} {
		out, err := ipCmd("-n", ns, "addr", "show")
		if err != nil || strings.Contains(out, "tentative") || strings.Contains(out, "dadfailed") {
			t.Errorf("ip -n %s addr show: %v\n%s", ns, err, out)
		}
	}
}

func TestEchoThroughWorld(t *testing.T) {
	udptool := BuildUdptool(t)
	s := New(t)

	remote4 := netip.AddrPortFrom(RemoteAddr4, 7000)
	remote6 := netip.AddrPortFrom(RemoteAddr6, 7000)
	echo4 := s.Start(t, s.WorldNS, udptool, "echo", "-l", remote4.String())
	echo6 := s.Start(t, s.WorldNS, udptool, "echo", "-l", remote6.String())
	// A wildcard server must answer from the address it was sent to.
	echoAny := s.Start(t, s.WorldNS, udptool, "echo", "-l", "0.0.0.0:7001")
	for _, p := range []*Proc{echo4, echo6, echoAny} {
		p.WaitLine(t, "ready", 5*time.Second)
	}

	for _, to := range []netip.AddrPort{remote4, remote6} {
		for _, args := range [][]string{
			{"-size", "0", "-count", "5"},
			{"-size", "1372", "-count", "50", "-flows", "4"},
			{"-size", "65000", "-count", "10", "-connect"},
		} {
			t.Run(fmt.Sprintf("%s/%s", to, strings.Join(args, " ")), func(t *testing.T) {
				send(t, s, udptool, s.HostNS, to, args...)
			})
		}
	}
	send(t, s, udptool, s.HostNS, netip.AddrPortFrom(RemoteAddr4, 7001), "-count", "3")
	send(t, s, udptool, s.HostNS, netip.AddrPortFrom(GatewayAddr4, 7001), "-count", "3")

	// The world sees the host's upstream addresses as sources.
	for _, c := range []struct {
		p    *Proc
		addr netip.Addr
	}{{echo4, HostAddr4}, {echo6, HostAddr6}, {echoAny, HostAddr4}} {
		sum := stopEcho(t, c.p)
		if sum.Echoed == 0 {
			t.Errorf("echo %v: nothing echoed", c.p.Cmd.Args)
		}
		for _, peer := range sum.Peers {
			if ap, err := netip.ParseAddrPort(peer); err != nil || ap.Addr() != c.addr {
				t.Errorf("echo %v: peer %q, want address %v", c.p.Cmd.Args, peer, c.addr)
			}
		}
	}
}

func TestEchoHostLoopback(t *testing.T) {
	udptool := BuildUdptool(t)
	s := New(t)
	for _, addr := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		to := netip.AddrPortFrom(addr, 7000)
		p := s.Start(t, s.HostNS, udptool, "echo", "-l", to.String(), "-count", "20")
		p.WaitLine(t, "ready", 5*time.Second)
		send(t, s, udptool, s.HostNS, to, "-count", "10", "-size", "65000")
		send(t, s, udptool, s.HostNS, to, "-count", "10", "-size", "1", "-connect")
		if code, err := p.Wait(5 * time.Second); code != 0 || err != nil {
			t.Errorf("echo -count 20: exit %d, %v, stderr %q", code, err, p.Stderr())
		}
	}
}

func TestProc(t *testing.T) {
	s := New(t)
	p := s.Start(t, s.WorldNS, "sh", "-c", "echo one; echo two >&2; echo ready 1; exec sleep 30")
	if l := p.WaitLine(t, "ready", 5*time.Second); l != "ready 1" {
		t.Errorf("WaitLine = %q", l)
	}
	if p.Stdout() != "one\nready 1\n" {
		t.Errorf("Stdout = %q", p.Stdout())
	}
	if code, err := p.Wait(100 * time.Millisecond); code != -1 || err == nil {
		t.Errorf("Wait on a sleeping process = %d, %v; want -1, timeout error", code, err)
	}
	select {
	case <-p.Done():
	default:
		t.Error("process not killed after Wait timeout")
	}
	// Output is complete once the process is done.
	if p.Stderr() != "two\n" {
		t.Errorf("Stderr = %q", p.Stderr())
	}

	p = s.Start(t, s.HostNS, "sh", "-c", "exit 3")
	if code, err := p.Wait(5 * time.Second); code != 3 || err != nil {
		t.Errorf("Wait = %d, %v; want 3, nil", code, err)
	}
	// The process runs in the namespace.
	p = s.Start(t, s.HostNS, "ip", "-o", "addr", "show", "dev", IfName)
	if code, err := p.Wait(5 * time.Second); code != 0 || err != nil || !strings.Contains(p.Stdout(), HostAddr4.String()) {
		t.Errorf("ip addr in host ns: %d, %v, %q", code, err, p.Stdout())
	}
}

// TestCleanup checks that a sandbox leaves no namespaces or processes
// behind.
func TestCleanup(t *testing.T) {
	var s *Sandbox
	var started *Proc
	var cmds []*exec.Cmd
	t.Run("sandbox", func(t *testing.T) {
		s = New(t)
		started = s.Start(t, s.WorldNS, "sleep", "60")
		// Processes started with Command and never waited for.
		for _, ns := range []string{s.HostNS, s.WorldNS} {
			cmd := s.Command(ns, "sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, cmd)
		}
		// "ip netns exec" enters the namespace after it starts: wait
		// until both processes are inside.
		var out string
		var err error
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if out, err = ipCmd("netns", "pids", s.WorldNS); err == nil && len(strings.Fields(out)) == 2 {
				break
			}
		}
		if err != nil || len(strings.Fields(out)) != 2 {
			t.Errorf("ip netns pids %s: %v %q", s.WorldNS, err, out)
		}
	})
	select {
	case <-started.Done():
	default:
		t.Error("started process still running")
	}
	for _, cmd := range cmds {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%v exited 0, want killed", cmd.Args)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%v still running", cmd.Args)
			cmd.Process.Kill()
			<-done
		}
	}
	out, err := ipCmd("netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{s.HostNS, s.WorldNS} {
		if strings.Contains(out, ns) {
			t.Errorf("namespace %s still listed:\n%s", ns, out)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("/run/netns/%s still exists", ns)
		}
	}
}
