package e2e_test

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

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// Binaries built once by TestMain into a directory every user may read, so
// the unprivileged test can run them too.
var (
	binDir  string
	gopasst string
	udptool string
	// gopasstPlain is gopasst built without the race detector, whose
	// shadow memory would swamp what the memory bounds measure.
	gopasstPlain string
)

func TestMain(m *testing.M) {
	if os.Getenv(injectEnv) != "" {
		os.Exit(injectMain())
	}
	if os.Getenv(refusedEnv) != "" {
		os.Exit(refusedMain())
	}
	if os.Getenv(ttlEnv) != "" {
		os.Exit(ttlMain())
	}
	if os.Getenv(replyEnv) != "" {
		os.Exit(replyMain())
	}
	if os.Getenv(gsoEnv) != "" {
		os.Exit(gsoMain())
	}
	if os.Getenv(spoofEnv) != "" {
		os.Exit(spoofMain())
	}
	if os.Getenv(floodEnv) != "" {
		os.Exit(floodMain())
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "gopasst-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = dir
	gopasst = filepath.Join(dir, "gopasst")
	udptool = filepath.Join(dir, "udptool")
	tcptool = filepath.Join(dir, "tcptool")
	gopasstPlain = gopasst
	bins := map[string]string{gopasst: "github.com/gopasst/gopasst/cmd/gopasst", udptool: sandbox.UdptoolPackage, tcptool: tcptoolPackage}
	if raceBuild {
		gopasstPlain = filepath.Join(dir, "gopasst-plain")
		bins[gopasstPlain] = "github.com/gopasst/gopasst/cmd/gopasst"
	}
	for bin, pkg := range bins {
		args := []string{"build", "-o", bin}
		if raceBuild && bin == gopasst {
			args = append(args, "-race")
		}
		if out, err := exec.Command("go", append(args, pkg)...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

// sendResult is what "udptool send" prints.
type sendResult struct {
	Sent, Received, Bad int
	Local, Peer         string
}

func parseSend(t *testing.T, out string) sendResult {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, `{"sent"`) {
			var r sendResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("bad send output %q: %v", line, err)
			}
			return r
		}
	}
	t.Fatalf("no send result in output:\n%s", out)
	return sendResult{}
}

// echoResult is what "udptool echo" prints when it exits.
type echoResult struct {
	Echoed int
	Peers  []string
}

func parseEcho(t *testing.T, out string) echoResult {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, `{"echoed"`) {
			var r echoResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("bad echo output %q: %v", line, err)
			}
			return r
		}
	}
	t.Fatalf("no echo result in output:\n%s", out)
	return echoResult{}
}

func ap(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// family describes the addresses of one IP version in the sandbox.
type family struct {
	name              string
	gw, host, remote  netip.Addr
	loopback, anyAddr netip.Addr
}

var families = []family{
	{"IPv4", sandbox.GatewayAddr4, sandbox.HostAddr4, sandbox.RemoteAddr4, netip.MustParseAddr("127.0.0.1"), netip.IPv4Unspecified()},
	{"IPv6", sandbox.GatewayAddr6, sandbox.HostAddr6, sandbox.RemoteAddr6, netip.IPv6Loopback(), netip.IPv6Unspecified()},
}

// pasta runs "gopasst pasta --config-net ARGS -- CMD..." in the sandbox host
// and returns the process once started.
func pasta(t *testing.T, sb *sandbox.Sandbox, args []string, cmd ...string) *sandbox.Proc {
	t.Helper()
	full := append([]string{"pasta", "--config-net"}, args...)
	full = append(full, "--")
	full = append(full, cmd...)
	return sb.Start(t, sb.HostNS, gopasst, full...)
}

// wait waits for p and fails the test unless it exits with want.
func wait(t *testing.T, p *sandbox.Proc, want int) {
	t.Helper()
	code, err := p.Wait(30 * time.Second)
	if err != nil || code != want {
		t.Fatalf("exit %d (%v), want %d\nstdout:\n%s\nstderr:\n%s", code, err, want, p.Stdout(), p.Stderr())
	}
	if strings.Contains(p.Stderr(), "WARNING: DATA RACE") {
		t.Fatalf("data race in gopasst:\n%s", p.Stderr())
	}
}

// TestNamespaceToHostGateway sends from the namespace to its gateway
// address, which gopasst maps to the host's loopback, and checks the echo
// comes back byte-exact, from the gateway address, to the sender's socket,
// and that the host saw the namespace's source port.
func TestNamespaceToHostGateway(t *testing.T) {
	sb := sandbox.New(t)
	for _, f := range families {
		for i, size := range []int{0, 1, 1372, 65000} {
			t.Run(fmt.Sprintf("%s/%d", f.name, size), func(t *testing.T) {
				port := uint16(5000 + i)
				srcPort := uint16(40100 + i)
				echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", ap(f.loopback, port), "-count", "3", "-timeout", "20s")
				echo.WaitLine(t, "ready", 20*time.Second)
				p := pasta(t, sb, nil, udptool, "send", "-to", ap(f.gw, port), "-from", ap(f.anyAddr, srcPort),
					"-size", fmt.Sprint(size), "-count", "3", "-echo", "-connect")
				wait(t, p, 0)
				r := parseSend(t, p.Stdout())
				if r.Received != 3 || r.Bad != 0 || r.Peer != ap(f.gw, port) {
					t.Fatalf("send result %+v, want 3 echoes from %s", r, ap(f.gw, port))
				}
				wait(t, echo, 0)
				e := parseEcho(t, echo.Stdout())
				if len(e.Peers) != 1 || e.Peers[0] != ap(f.loopback, srcPort) {
					t.Fatalf("host saw peers %v, want %s (source port kept)", e.Peers, ap(f.loopback, srcPort))
				}
			})
		}
	}
}

// TestNamespaceToRemote sends to an address outside the sandbox host (in
// the "world" namespace): gopasst sends to it as is, from the host's
// address.
func TestNamespaceToRemote(t *testing.T) {
	sb := sandbox.New(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			echo := sb.Start(t, sb.WorldNS, udptool, "echo", "-l", ap(f.remote, 7000), "-count", "4", "-timeout", "20s")
			echo.WaitLine(t, "ready", 20*time.Second)
			p := pasta(t, sb, nil, "sh", "-c", fmt.Sprintf("%s send -to %s -size 1372 -count 2 -echo -connect && %s send -to %s -size 65000 -count 2 -echo",
				udptool, ap(f.remote, 7000), udptool, ap(f.remote, 7000)))
			wait(t, p, 0)
			for _, line := range strings.Split(strings.TrimSpace(p.Stdout()), "\n") {
				if r := parseSend(t, line); r.Received != 2 || r.Peer != ap(f.remote, 7000) {
					t.Fatalf("send result %+v", r)
				}
			}
			wait(t, echo, 0)
			for _, peer := range parseEcho(t, echo.Stdout()).Peers {
				if pa, err := netip.ParseAddrPort(peer); err != nil || pa.Addr() != f.host {
					t.Fatalf("remote saw %s, want the host's address %s", peer, f.host)
				}
			}
		})
	}
}

// TestHostToNamespace forwards host ports into the namespace with -u
// through the tap (--no-splice), including a remapped one, and checks what
// the namespace sees as the source: the gateway for the host's loopback
// and its own addresses, the real address for a remote peer.
func TestHostToNamespace(t *testing.T) {
	sb := sandbox.New(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			script := fmt.Sprintf("%[1]s echo -l %[2]s -count 3 -timeout 20s & %[1]s echo -l %[3]s -count 1 -timeout 20s & wait",
				udptool, ap(f.anyAddr, 10001), ap(f.anyAddr, 20002))
			// --no-splice: loopback senders go through the tap too.
			p := pasta(t, sb, []string{"--no-splice", "-u", "10001", "-u", "10002:20002"}, "sh", "-c", script)
			p.WaitLine(t, "listen "+ap(f.anyAddr, 10001), 5*time.Second)
			p.WaitLine(t, "listen "+ap(f.anyAddr, 20002), 5*time.Second)

			sends := []struct {
				ns   string
				args []string
			}{
				{sb.HostNS, []string{"-to", ap(f.loopback, 10001), "-from", ap(f.loopback, 45001), "-size", "65000"}},
				{sb.HostNS, []string{"-to", ap(f.host, 10001), "-from", ap(f.host, 45002), "-size", "1"}},
				{sb.WorldNS, []string{"-to", ap(f.host, 10001), "-from", ap(f.remote, 45003), "-size", "1372"}},
				{sb.HostNS, []string{"-to", ap(f.loopback, 10002), "-from", ap(f.loopback, 45004), "-size", "1372"}},
			}
			for _, s := range sends {
				out, err := sb.Command(s.ns, udptool, append([]string{"send", "-count", "1", "-echo", "-connect"}, s.args...)...).CombinedOutput()
				if err != nil {
					t.Fatalf("send %v: %v\n%s\npasta stderr:\n%s", s.args, err, out, p.Stderr())
				}
			}
			wait(t, p, 0)
			var peers []string
			for _, line := range strings.Split(p.Stdout(), "\n") {
				if strings.HasPrefix(line, `{"echoed"`) {
					peers = append(peers, parseEcho(t, line).Peers...)
				}
			}
			want := []string{ap(f.gw, 45001), ap(f.gw, 45002), ap(f.remote, 45003), ap(f.gw, 45004)}
			for _, w := range want {
				if !contains(peers, w) {
					t.Errorf("namespace did not see peer %s; saw %v", w, peers)
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestConcurrentFlows runs 200 flows at once from the namespace.
func TestConcurrentFlows(t *testing.T) {
	sb := sandbox.New(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", ap(f.loopback, 5100), "-timeout", "30s")
			echo.WaitLine(t, "ready", 20*time.Second)
			// One exchange first, so the namespace has resolved its
			// gateway: a burst of new flows would otherwise overflow
			// the kernel's queue of packets waiting for ARP or NDP.
			p := pasta(t, sb, nil, "sh", "-c", fmt.Sprintf(
				"%[1]s send -to %[2]s -count 1 -echo >/dev/null && %[1]s send -to %[2]s -flows 200 -count 5 -size 512 -echo -timeout 20s",
				udptool, ap(f.gw, 5100)))
			wait(t, p, 0)
			if r := parseSend(t, p.Stdout()); r.Sent != 1000 || r.Received != 1000 || r.Bad != 0 {
				t.Fatalf("send result %+v, want 1000 echoes", r)
			}
		})
	}
}

// TestFlowExpiry checks that an idle flow is closed: the host port its
// reply socket held (the namespace's source port) becomes free again.
func TestFlowExpiry(t *testing.T) {
	sb := sandbox.New(t)
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5200", "-timeout", "30s")
	echo.WaitLine(t, "ready", 20*time.Second)
	p := pasta(t, sb, []string{"-d", "--udp-timeout", "2"}, "sh", "-c",
		udptool+" send -to 192.0.2.1:5200 -from 0.0.0.0:40999 -count 1 -echo -connect && sleep 5")
	p.WaitLine(t, `"sent"`, 10*time.Second)
	start := time.Now()
	bind := func() bool {
		return sb.Command(sb.HostNS, udptool, "echo", "-l", "0.0.0.0:40999", "-timeout", "10ms").Run() == nil
	}
	if bind() {
		t.Fatal("port 40999 is free while the flow is alive: the reply socket did not keep the source port")
	}
	for !bind() {
		if time.Since(start) > 4*time.Second {
			t.Fatalf("flow did not expire within 4 s\n%s", p.Stderr())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("flow expired after %v, before its 2 s timeout", d)
	}
	wait(t, p, 0)
	if !strings.Contains(p.Stderr(), "udp flows expired: 1") {
		t.Fatalf("counters do not show the expiry:\n%s", p.Stderr())
	}
}

// TestExitStatus checks that pasta exits with the command's status.
func TestExitStatus(t *testing.T) {
	sb := sandbox.New(t)
	for _, c := range []struct {
		cmd  []string
		want int
	}{
		{[]string{"true"}, 0},
		{[]string{"sh", "-c", "exit 7"}, 7},
		{[]string{"sh", "-c", "kill -TERM $$"}, 128 + int(syscall.SIGTERM)},
		{[]string{"/nonexistent/command"}, 1},
	} {
		wait(t, pasta(t, sb, []string{"-q"}, c.cmd...), c.want)
	}
}

// TestUnprivileged runs pasta as an ordinary user: gopasst creates a user
// namespace of its own, and the command is root inside it.
func TestUnprivileged(t *testing.T) {
	sb := sandbox.New(t)
	const user = "gopasst-test"
	if exec.Command("id", user).Run() != nil {
		if out, err := exec.Command("useradd", "-M", "-s", "/bin/sh", user).CombinedOutput(); err != nil {
			t.Skipf("cannot create user %s: %v %s", user, err, out)
		}
	}
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Skipf("cannot make /dev/net/tun usable: %v", err)
	}
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5300", "-timeout", "30s")
	echo.WaitLine(t, "ready", 20*time.Second)
	echo6 := sb.Start(t, sb.WorldNS, udptool, "echo", "-l", ap(sandbox.RemoteAddr6, 5300), "-timeout", "30s")
	echo6.WaitLine(t, "ready", 20*time.Second)
	inner := fmt.Sprintf("id -u; %[1]s send -to 192.0.2.1:5300 -size 1372 -count 3 -echo -connect && %[1]s send -to %[2]s -size 1372 -count 3 -echo -connect; exit 5",
		udptool, ap(sandbox.RemoteAddr6, 5300))
	shell := fmt.Sprintf("%s pasta --config-net -- sh -c '%s'", gopasst, inner)
	p := sb.Start(t, sb.HostNS, "su", user, "-s", "/bin/sh", "-c", shell)
	wait(t, p, 5)
	lines := strings.Split(strings.TrimSpace(p.Stdout()), "\n")
	if len(lines) != 3 || lines[0] != "0" {
		t.Fatalf("want uid 0 and two send results, got:\n%s", p.Stdout())
	}
	for _, l := range lines[1:] {
		if r := parseSend(t, l); r.Received != 3 {
			t.Fatalf("send result %+v", r)
		}
	}
}

// TestCLIErrors checks that bad command lines fail fast with one line.
func TestCLIErrors(t *testing.T) {
	for _, args := range [][]string{
		{"pasta", "--bogus"},
		{"pasta", "-u", "70000"},
		{"pasta", "-u", "10-5"},
		{"pasta", "-u", "1000:2000-2001"},
		{"pasta", "-t", "nonsense"},
		{"pasta", "-s", "/tmp/sock"},
		{"pasta", "-m", "abc"},
		{"pasta", "-a", "300.1.1.1"},
		{"pasta", "--ns-mac-addr", "01:00:00:00:00:00"},
		{"pasta", "--netns"},
		{"passt", "-I", "eth0"},
		{"bogus-mode"},
	} {
		start := time.Now()
		cmd := exec.Command(gopasst, args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 {
			t.Errorf("%v: exit %v, want 1", args, err)
			continue
		}
		if msg := strings.TrimSuffix(stderr.String(), "\n"); msg == "" || strings.Contains(msg, "\n") {
			t.Errorf("%v: want one line on stderr, got %q", args, stderr.String())
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%v: took %v", args, d)
		}
	}
	// Help and version succeed, also under a "pasta" name.
	link := filepath.Join(t.TempDir(), "pasta")
	if err := os.Symlink(gopasst, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{gopasst, "pasta", "--help"}, {link, "--version"}, {link, "-h"}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil || len(out) == 0 {
			t.Errorf("%v: %v %q", c, err, out)
		}
	}
}

// TestTCPWarning checks that -t and -T, both served, print nothing (they
// printed a warning while TCP was missing), and that the command runs.
func TestTCPWarning(t *testing.T) {
	sb := sandbox.New(t)
	// Without ICMP, whose warning about ping sockets the sandbox's
	// closed ping_group_range would add.
	for _, opt := range []string{"-t", "-T"} {
		p := pasta(t, sb, []string{opt, "8080", "--no-icmp"}, "true")
		wait(t, p, 0)
		if p.Stderr() != "" {
			t.Errorf("%s: want no warning, got %q", opt, p.Stderr())
		}
	}
}

// TestLargestDatagrams moves the largest datagrams each direction allows:
// from the host, 65507 bytes (the IPv4 maximum) and 65527 (IPv6); from the
// namespace, what fits its 65520-byte MTU unfragmented.
func TestLargestDatagrams(t *testing.T) {
	sb := sandbox.New(t)
	for _, c := range []struct {
		f               family
		in, out         int
		inPort, outPort uint16
	}{
		{families[0], 65507, 65520 - 28, 10010, 5010},
		{families[1], 65527, 65520 - 48, 10011, 5011},
	} {
		t.Run(c.f.name, func(t *testing.T) {
			echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", ap(c.f.loopback, c.outPort), "-count", "1", "-timeout", "20s")
			echo.WaitLine(t, "ready", 20*time.Second)
			script := fmt.Sprintf("%[1]s send -to %[2]s -size %[3]d -count 1 -echo -connect && %[1]s recv -l %[4]s -count 1 -timeout 10s",
				udptool, ap(c.f.gw, c.outPort), c.out, ap(c.f.anyAddr, c.inPort))
			p := pasta(t, sb, []string{"-u", fmt.Sprint(c.inPort)}, "sh", "-c", script)
			p.WaitLine(t, "ready", 20*time.Second)
			if out, err := sb.Command(sb.HostNS, udptool, "send", "-to", ap(c.f.loopback, c.inPort), "-size", fmt.Sprint(c.in), "-count", "1").CombinedOutput(); err != nil {
				t.Fatalf("send: %v %s", err, out)
			}
			wait(t, p, 0)
			if !strings.Contains(p.Stdout(), fmt.Sprintf(`"len":%d,"ok":true`, c.in)) {
				t.Fatalf("namespace did not receive %d bytes intact:\n%s", c.in, p.Stdout())
			}
		})
	}
}
