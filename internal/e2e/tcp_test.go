package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// tcptoolPackage is the import path of the TCP test program TestMain
// builds into tcptool.
const tcptoolPackage = "github.com/gopasst/gopasst/internal/e2e/tcptool"

// tcptool is the binary built by TestMain.
var tcptool string

// Sizes of the transfers.
const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// Names of gopasst's TCP counters (see stats.Counters.String).
const (
	tcpActive  = "tcp connections active"
	tcpCreated = "tcp connections created"
)

// Seeds of the tcptool patterns: what clients send, what servers send.
const (
	clientSeed = "1"
	serverSeed = "2"
)

// tcpPort hands out ports for the TCP tests' servers and clients, so that
// no two uses within the test binary share one (and none is in the
// ephemeral range, 32768 and up).
var tcpPort atomic.Uint32

func init() { tcpPort.Store(7000) }

func nextPort() uint16 { return uint16(tcpPort.Add(1)) }

// tcpNS is a pasta namespace kept alive, running "sleep", while a test
// runs tcptool inside it with nsenter.
type tcpNS struct {
	p    *sandbox.Proc // gopasst
	gpid int           // gopasst's pid
	sb   *sandbox.Sandbox
	pid  string // the namespace's command, for nsenter
}

// tcpPcapEnv, set to a directory, makes every gopasst of the TCP tests
// capture its tap traffic there (--pcap), one file per test, to debug a
// failure: GOPASST_E2E_TCP_PCAP=/tmp/caps go test -run TestTCPReset ...
const tcpPcapEnv = "GOPASST_E2E_TCP_PCAP"

// startTCPNS runs gopasst pasta --config-net with args around a command
// that only sleeps, waits for the namespace and registers its stop (and
// the check for data races) on t.
func startTCPNS(t *testing.T, sb *sandbox.Sandbox, args ...string) *tcpNS {
	t.Helper()
	return startTCPNSPrefix(t, sb, nil, args...)
}

// startTCPNSPrefix is startTCPNS with gopasst's command line wrapped in
// prefix (e.g. env VAR=VALUE).
func startTCPNSPrefix(t *testing.T, sb *sandbox.Sandbox, prefix []string, args ...string) *tcpNS {
	t.Helper()
	if dir := os.Getenv(tcpPcapEnv); dir != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		file := filepath.Join(dir, fmt.Sprintf("%s-%d.pcap", name, time.Now().UnixNano()))
		args = append([]string{"--pcap", file}, args...)
		t.Logf("gopasst captures to %s", file)
	}
	g := startGP(t, sb, gopasst, prefix, args, "echo up; exec sleep 1000")
	g.p.WaitLine(t, "up", 20*time.Second)
	n := &tcpNS{p: g.p, gpid: g.pid, sb: sb, pid: nsPID(t, g.p)}
	t.Cleanup(func() { stopPasta(t, g.p, n.pid) })
	return n
}

// counters dumps gopasst's counters (SIGUSR1).
func (n *tcpNS) counters(t *testing.T) map[string]int64 {
	t.Helper()
	c, err := watch.Counters(n.p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fds counts gopasst's open descriptors.
func (n *tcpNS) fds(t *testing.T) int {
	t.Helper()
	c, err := watch.FDs(n.gpid)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// diag describes gopasst's state for a failure message: the counters
// that are not zero (and every TCP one) and the end of its stderr.
func (n *tcpNS) diag() string {
	stderr := n.p.Stderr()
	var b strings.Builder
	c, err := watch.Counters(n.p)
	if err != nil {
		fmt.Fprintf(&b, "gopasst counters: %v\n", err)
	} else {
		names := make([]string, 0, len(c))
		for k, v := range c {
			if v != 0 || strings.HasPrefix(k, "tcp ") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		b.WriteString("gopasst counters (not zero, and every tcp one):")
		for _, k := range names {
			fmt.Fprintf(&b, " %s=%d;", k, c[k])
		}
		b.WriteString("\n")
	}
	stderr = stripDumps(stderr)
	const tail = 4000
	if len(stderr) > tail {
		stderr = "..." + stderr[len(stderr)-tail:]
	}
	fmt.Fprintf(&b, "gopasst stderr (counter dumps left out):\n%s", stderr)
	return b.String()
}

// stripDumps leaves the counter dumps (SIGUSR1) out of gopasst's stderr.
func stripDumps(stderr string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.SplitAfter(stderr, "\n") {
		switch {
		case strings.HasSuffix(strings.TrimSpace(line), "counters:"):
			in = true
		case in && strings.HasPrefix(line, watch.DumpEnd):
			in = false
		case !in:
			b.WriteString(line)
		}
	}
	return b.String()
}

// place is where a tcptool runs: a sandbox namespace (HostNS, WorldNS),
// or the pasta namespace through nsenter.
type place struct {
	name string
	ns   string   // the sandbox namespace; "" for the pasta namespace
	pre  []string // the nsenter command line into the pasta namespace
}

func hostPlace(sb *sandbox.Sandbox) place  { return place{"host", sb.HostNS, nil} }
func worldPlace(sb *sandbox.Sandbox) place { return place{"remote", sb.WorldNS, nil} }
func (n *tcpNS) place() place              { return place{"namespace", "", []string{"nsenter", "-t", n.pid, "-n"}} }

func (p place) argv(args []string) []string {
	return append(append(append([]string{}, p.pre...), tcptool), args...)
}

// start starts tcptool with args at p; it is killed when t ends.
func (p place) start(t *testing.T, sb *sandbox.Sandbox, args ...string) *sandbox.Proc {
	t.Helper()
	a := p.argv(args)
	return sb.Start(t, p.ns, a[0], a[1:]...)
}

// toolRun is the outcome of a tcptool that ran to its end.
type toolRun struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r toolRun) String() string {
	return fmt.Sprintf("exit %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// run runs tcptool with args at p to its end, killing it after limit.
func (p place) run(t *testing.T, sb *sandbox.Sandbox, limit time.Duration, args ...string) toolRun {
	t.Helper()
	a := p.argv(args)
	cmd := sb.Command(p.ns, a[0], a[1:]...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(limit, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	r := toolRun{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		if r.code < 0 {
			r.stderr += fmt.Sprintf("\n(killed after %v: %v)", limit, err)
		}
	default:
		t.Fatal(err)
	}
	return r
}

// finish waits for a tcptool server started with place.start.
func finish(p *sandbox.Proc, limit time.Duration) toolRun {
	start := time.Now()
	code, err := p.Wait(limit)
	r := toolRun{stdout: p.Stdout(), stderr: p.Stderr(), code: code, took: time.Since(start)}
	if err != nil {
		r.stderr += "\n(" + err.Error() + ")"
	}
	return r
}

// jsonLine decodes into v the first line of out that starts with prefix.
func jsonLine(out, prefix string, v any) error {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, prefix) {
			return json.Unmarshal([]byte(line), v)
		}
	}
	return fmt.Errorf("no line starting with %s", prefix)
}

// clientResult is what "tcptool client" prints.
type clientResult struct {
	Local, Peer    string
	Sent, Received int64
	OK             bool
	BadAt          int64   `json:"bad_at"`
	SHA256Sent     string  `json:"sha256_sent"`
	SHA256Received string  `json:"sha256_received"`
	ConnectMs      float64 `json:"connect_ms"`
	ShutMs         float64 `json:"shut_ms"`
	FirstByteMs    float64 `json:"first_byte_ms"`
	EOFMs          float64 `json:"eof_ms"`
	Ms             float64
	Err, Errno     string
}

// serveResult is what "tcptool serve" prints per connection.
type serveResult struct {
	Conn           int
	Mode           string
	Local, Peer    string
	Received, Sent int64
	OK             bool
	BadAt          int64   `json:"bad_at"`
	SHA256Received string  `json:"sha256_received"`
	SHA256Sent     string  `json:"sha256_sent"`
	EOFMs          float64 `json:"eof_ms"`
	Ms             float64
	Err            string
}

// serveSummary is the last line of "tcptool serve".
type serveSummary struct {
	Conns, OK, Failed int
	Received          int64
	FirstErr          string `json:"first_err"`
	Peers             []string
}

// transfer is one connection between a tcptool client and server.
type transfer struct {
	server, client place
	listen         string // the server's -l
	to             string // the client's -to
	from           string // the client's -from, if any
	// mode is the server's: "echo" sends back what the client sends;
	// "sink" reads to EOF, then replies reply bytes; "source" sends reply
	// bytes, reading what the client sends.
	mode  string
	send  int64 // bytes the client sends
	reply int64 // bytes the server sends (echo: send)
	// wantPeer is where the server must see the client come from; a zero
	// port accepts any port, an invalid address anything.
	wantPeer netip.AddrPort
	// peerIsClient: the server must see the client at the client's own
	// address and port.
	peerIsClient bool
	serverArgs   []string
	clientArgs   []string
	limit        time.Duration // bound on the client's run (default 60 s)
	// stall, if set, is how long the exchange may take at most: far
	// more than it takes when nothing goes wrong, so that only a stall
	// (a lost wake-up, a missed window update) exceeds it.
	stall time.Duration
	// spliced: the connection must go socket to socket (TCP splice),
	// not through gopasst's TCP over the tap (see spliceCounterProblems).
	spliced bool
}

// outcome is what transfer.run saw.
type outcome struct {
	c     clientResult
	s     serveResult
	delta map[string]int64 // gopasst's counters after, less before
	ok    bool             // every check passed
}

// run runs tr and checks it: both ends succeeded, each received exactly
// what the other sent (the byte counts, the receivers' pattern check and
// the SHA-256 of both ends), the server saw the client where it should,
// and gopasst's counters show at least the bytes each way (the data went
// through its TCP over the tap; with tr.spliced, socket to socket
// instead, see spliceCounterProblems). It reports failures on t, with the
// output of both ends and gopasst's state.
func (tr transfer) run(t *testing.T, n *tcpNS) outcome {
	t.Helper()
	if tr.limit == 0 {
		tr.limit = 60 * time.Second
	}
	if tr.mode == "echo" {
		tr.reply = tr.send
	}
	secs := strconv.Itoa(int(tr.limit/time.Second) + 10)
	srvArgs := append([]string{"serve", "-l", tr.listen, "-mode", tr.mode, "-count", "1", "-size", strconv.FormatInt(tr.reply, 10),
		"-seed", serverSeed, "-peer-seed", clientSeed, "-timeout", secs + "s"}, tr.serverArgs...)
	before := n.counters(t)
	srv := tr.server.start(t, n.sb, srvArgs...)
	srv.WaitLine(t, "ready", 10*time.Second)
	peerSeed := serverSeed
	if tr.mode == "echo" {
		peerSeed = clientSeed
	}
	cliArgs := []string{"client", "-to", tr.to, "-send", strconv.FormatInt(tr.send, 10), "-expect", strconv.FormatInt(tr.reply, 10),
		"-seed", clientSeed, "-peer-seed", peerSeed, "-timeout", strconv.Itoa(int(tr.limit/time.Second)) + "s"}
	if tr.from != "" {
		cliArgs = append(cliArgs, "-from", tr.from)
	}
	cli := tr.client.run(t, n.sb, tr.limit+15*time.Second, append(cliArgs, tr.clientArgs...)...)
	sr := finish(srv, 20*time.Second)
	after := n.counters(t)
	delta := map[string]int64{}
	for k, v := range after {
		delta[k] = v - before[k]
	}

	var c clientResult
	var s serveResult
	var problems []string
	if err := jsonLine(cli.stdout, `{"local"`, &c); err != nil {
		problems = append(problems, "client: "+err.Error())
	} else {
		if !c.OK || cli.code != 0 {
			problems = append(problems, fmt.Sprintf("client failed: %s (errno %s), bad byte at %d", c.Err, c.Errno, c.BadAt))
		}
		if c.Sent != tr.send || c.Received != tr.reply {
			problems = append(problems, fmt.Sprintf("client sent %d and received %d bytes, want %d and %d", c.Sent, c.Received, tr.send, tr.reply))
		}
		if took := time.Duration(c.Ms * float64(time.Millisecond)); tr.stall > 0 && took > tr.stall {
			problems = append(problems, fmt.Sprintf("the exchange took %v, more than %v: it stalled", took.Round(time.Millisecond), tr.stall))
		}
	}
	if err := jsonLine(sr.stdout, `{"conn"`, &s); err != nil {
		problems = append(problems, "server: "+err.Error())
	} else {
		if !s.OK || sr.code != 0 {
			problems = append(problems, fmt.Sprintf("server failed: %s, bad byte at %d", s.Err, s.BadAt))
		}
		if s.Received != tr.send || s.Sent != tr.reply {
			problems = append(problems, fmt.Sprintf("server received %d and sent %d bytes, want %d and %d", s.Received, s.Sent, tr.send, tr.reply))
		}
		if c.SHA256Sent != s.SHA256Received || s.SHA256Sent != c.SHA256Received {
			problems = append(problems, fmt.Sprintf("SHA-256 differ: client sent %.16s, server received %.16s; server sent %.16s, client received %.16s",
				c.SHA256Sent, s.SHA256Received, s.SHA256Sent, c.SHA256Received))
		}
		if tr.wantPeer.Addr().IsValid() {
			got, err := netip.ParseAddrPort(s.Peer)
			if err != nil || got.Addr() != tr.wantPeer.Addr() || (tr.wantPeer.Port() != 0 && got.Port() != tr.wantPeer.Port()) {
				want := tr.wantPeer.String()
				if tr.wantPeer.Port() == 0 {
					want = tr.wantPeer.Addr().String() + " (any port)"
				}
				problems = append(problems, fmt.Sprintf("server saw the client at %s, want %s", s.Peer, want))
			}
		}
		if tr.peerIsClient && s.Peer != c.Local {
			problems = append(problems, fmt.Sprintf("server saw the client at %s, want the client's own address %s", s.Peer, c.Local))
		}
	}
	if tr.spliced {
		problems = append(problems, spliceCounterProblems(after, delta, tr.send+tr.reply, 1)...)
	} else {
		// What the namespace sends goes to the host, the rest to the tap.
		toHost, toTap := tr.send, tr.reply
		if tr.client.ns != "" {
			toHost, toTap = tr.reply, tr.send
		}
		for _, k := range []struct {
			name string
			min  int64
		}{{"tcp bytes to host", toHost}, {"tcp bytes to tap", toTap}} {
			if _, known := after[k.name]; !known || delta[k.name] < k.min {
				problems = append(problems, fmt.Sprintf("gopasst's %q went up by %d (counter known: %v), want at least %d", k.name, delta[k.name], known, k.min))
			}
		}
	}
	if len(problems) > 0 {
		t.Errorf("%s %s -> %s %s (%s, %d bytes out, %d back):\n  %s\nclient %s\nserver %s\n%s",
			tr.client.name, c.Local, tr.server.name, tr.to, tr.mode, tr.send, tr.reply, strings.Join(problems, "\n  "), cli, sr, n.diag())
		return outcome{c, s, delta, false}
	}
	return outcome{c, s, delta, true}
}

// retransmits names the retransmissions gopasst counted in o.
func (o outcome) retransmits() string {
	return fmt.Sprintf("%d retransmits to the tap", o.delta["tcp retransmits to tap"])
}

// rate formats bytes moved in ms milliseconds.
func rate(bytes int64, ms float64) string {
	if ms <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MB/s", float64(bytes)/ms/1000)
}

// stallBound is how long a transfer of up to 10 MiB with nothing slowing
// it down may take: it takes well under a second on a loaded 2-core
// machine with gopasst built with the race detector.
const stallBound = 10 * time.Second

// outbound returns the transfers of TestTCPTransfers for family f, from
// the namespace to target (the gateway address, served on the host's
// loopback, or the remote host) in the three shapes: client sends, server
// sends, both at once (an echo).
func outbound(sb *sandbox.Sandbox, n *tcpNS, f family, remote bool, size int64) []namedTransfer {
	srv, srvAddr, dst, peer := hostPlace(sb), f.loopback, f.gw, f.loopback
	if remote {
		srv, srvAddr, dst, peer = worldPlace(sb), f.remote, f.remote, f.host
	}
	mk := func(mode string, send, reply int64) transfer {
		port := nextPort()
		return transfer{server: srv, client: n.place(), listen: ap(srvAddr, port), to: ap(dst, port), mode: mode,
			send: send, reply: reply, wantPeer: netip.AddrPortFrom(peer, 0), stall: stallBound}
	}
	return shapes(mk, size, "ns-sends", "host-sends")
}

// namedTransfer is a transfer and the name of its subtest.
type namedTransfer = struct {
	name string
	tr   transfer
}

// shapes returns the three transfers of size bytes that mk makes for a
// server mode: the client sends (clientSends, the server a sink), the
// server sends (serverSends, a source), both at once (an echo).
func shapes(mk func(mode string, send, reply int64) transfer, size int64, clientSends, serverSends string) []namedTransfer {
	return []namedTransfer{
		{clientSends, mk("sink", size, 0)},
		{serverSends, mk("source", 0, size)},
		{"both", mk("echo", size, size)},
	}
}

// TestTCPTransfers connects from the namespace to the gateway address
// (which gopasst maps to the host's loopback, where the server is) and to
// the remote host, both families, and moves 1 KiB and 10 MiB each way:
// the namespace sends (and half-closes), the server sends, and both at
// once on one connection (an echo). Every byte must arrive exactly once,
// in order (each receiver checks the seeded pattern; the SHA-256 of both
// ends agree), and the server must see the client at the host's loopback
// (gateway) or the host's address (remote). No transfer may take longer
// than stallBound.
func TestTCPTransfers(t *testing.T) {
	sb := sandbox.New(t)
	n := startTCPNS(t, sb)
	for _, f := range families {
		for _, remote := range []bool{false, true} {
			target := "gateway"
			if remote {
				target = "remote"
			}
			for _, size := range []int64{kib, 10 * mib} {
				for _, c := range outbound(sb, n, f, remote, size) {
					t.Run(fmt.Sprintf("%s/%s/%s/%s", f.name, target, sizeName(size), c.name), func(t *testing.T) {
						if o := c.tr.run(t, n); o.ok && size > kib {
							t.Logf("%.0f ms, %s, %s", o.c.Ms, rate(o.c.Sent+o.c.Received, o.c.Ms), o.retransmits())
						}
					})
				}
			}
		}
	}
}

func sizeName(size int64) string {
	switch {
	case size >= gib && size%gib == 0:
		return fmt.Sprintf("%dGiB", size/gib)
	case size >= mib && size%mib == 0:
		return fmt.Sprintf("%dMiB", size/mib)
	case size >= kib && size%kib == 0:
		return fmt.Sprintf("%dKiB", size/kib)
	}
	return fmt.Sprintf("%dB", size)
}

// gibCases are the 1 GiB transfers of TestTCPGiB (family, direction).
var gibCases = []struct {
	family int
	mode   string // "sink": the namespace sends; "source": the host sends
}{
	{0, "sink"}, {0, "source"}, {1, "sink"}, {1, "source"},
}

// TestTCPGiB moves 1 GiB from the namespace to the host's loopback
// (through the gateway address) and 1 GiB back, byte-exact (pattern and
// SHA-256 checked by both ends), and logs how long each took. Skipped
// with -short.
func TestTCPGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB transfers are skipped with -short")
	}
	sb := sandbox.New(t)
	n := startTCPNS(t, sb)
	for _, c := range gibCases {
		f := families[c.family]
		dir := map[string]string{"sink": "ns-sends", "source": "host-sends"}[c.mode]
		t.Run(f.name+"/"+dir, func(t *testing.T) {
			port := nextPort()
			tr := transfer{server: hostPlace(sb), client: n.place(), listen: ap(f.loopback, port), to: ap(f.gw, port), mode: c.mode,
				wantPeer: netip.AddrPortFrom(f.loopback, 0), limit: 240 * time.Second}
			if c.mode == "sink" {
				tr.send = gib
			} else {
				tr.reply = gib
			}
			if o := tr.run(t, n); o.ok {
				t.Logf("1 GiB in %.1f s, %s, %s (gopasst built with the race detector: %v)", o.c.Ms/1000, rate(gib, o.c.Ms), o.retransmits(), raceBuild)
			}
		})
	}
}

// TestTCPHostToNamespace connects from outside the namespace to ports
// forwarded with -t, through the tap, to a server in the namespace, both
// families, and checks the echoed data byte-exact both ways at once and
// the address the server sees: a remote client's own address and port
// (bound to the remote address, or left to its kernel, which picks the
// address of its link to the host); the gateway address, with the client's port, for a client on the host's
// own address; and, with --no-splice (TCP splice would take it
// otherwise), the gateway address and the client's port for a client on
// the host's loopback. gopasst's counters must show the connections.
func TestTCPHostToNamespace(t *testing.T) {
	sb := sandbox.New(t)
	pa, pb := nextPort(), nextPort()
	na := startTCPNS(t, sb, "-t", strconv.Itoa(int(pa)))
	nb := startTCPNS(t, sb, "--no-splice", "-t", strconv.Itoa(int(pb)))
	for _, f := range families {
		cases := []struct {
			name   string
			n      *tcpNS
			client place
			to     netip.AddrPort
			from   netip.Addr
			peer   netip.Addr
			size   int64
		}{
			{"remote", na, worldPlace(sb), netip.AddrPortFrom(f.host, pa), f.remote, f.remote, 10 * mib},
			{"remote-link-address", na, worldPlace(sb), netip.AddrPortFrom(f.host, pa), netip.Addr{}, netip.Addr{}, mib},
			{"host-address", na, hostPlace(sb), netip.AddrPortFrom(f.host, pa), f.host, f.gw, mib},
			{"host-loopback-no-splice", nb, hostPlace(sb), netip.AddrPortFrom(f.loopback, pb), f.loopback, f.gw, mib},
		}
		for _, c := range cases {
			t.Run(f.name+"/"+c.name, func(t *testing.T) {
				before := c.n.counters(t)
				cport := nextPort()
				tr := transfer{server: c.n.place(), client: c.client, listen: ap(f.anyAddr, c.to.Port()), to: c.to.String(),
					mode: "echo", send: c.size, peerIsClient: c.peer == c.from, stall: stallBound}
				if c.from.IsValid() {
					tr.from, tr.wantPeer = ap(c.from, cport), netip.AddrPortFrom(c.peer, cport)
				}
				o := tr.run(t, c.n)
				if !o.ok {
					return
				}
				after := c.n.counters(t)
				if _, known := after[tcpCreated]; !known || after[tcpCreated] <= before[tcpCreated] {
					t.Errorf("%q went from %d to %d: the connection did not go through gopasst's TCP over the tap\n%s",
						tcpCreated, before[tcpCreated], after[tcpCreated], c.n.diag())
				}
				t.Logf("%.0f ms, %s, %s", o.c.Ms, rate(o.c.Sent+o.c.Received, o.c.Ms), o.retransmits())
			})
		}
	}
}

// TestTCPHalfClose checks half-closed connections, both families, with
// the namespace as client (to the gateway address) and as server (behind
// -t, the client on the remote host): the client sends 256 KiB and
// half-closes; the server reads to EOF, waits half a second and only then
// replies 64 KiB and closes. Both ends must get everything byte-exact,
// and the client must get the reply after its own FIN, on the connection
// it half-closed.
func TestTCPHalfClose(t *testing.T) {
	sb := sandbox.New(t)
	port := nextPort()
	n := startTCPNS(t, sb, "-t", strconv.Itoa(int(port)))
	const delay = 500 * time.Millisecond
	for _, f := range families {
		cases := []struct {
			name string
			tr   transfer
		}{
			{"ns-client", func() transfer {
				p := nextPort()
				return transfer{server: hostPlace(sb), client: n.place(), listen: ap(f.loopback, p), to: ap(f.gw, p),
					wantPeer: netip.AddrPortFrom(f.loopback, 0)}
			}()},
			{"ns-server", transfer{server: n.place(), client: worldPlace(sb), listen: ap(f.anyAddr, port), to: ap(f.host, port),
				from: ap(f.remote, 0), wantPeer: netip.AddrPortFrom(f.remote, 0), peerIsClient: true}},
		}
		for _, c := range cases {
			t.Run(f.name+"/"+c.name, func(t *testing.T) { c.tr.runHalfClose(t, n, delay) })
		}
	}
}

// runHalfClose runs tr as a half-closed exchange: the client sends 256
// KiB and half-closes; the server reads to EOF, waits delay and only then
// replies 64 KiB and closes. Beyond the checks of run, the client must
// get the first byte of the reply after its own FIN (and the wait).
func (tr transfer) runHalfClose(t *testing.T, n *tcpNS, delay time.Duration) {
	t.Helper()
	tr.mode, tr.send, tr.reply = "sink", 256*kib, 64*kib
	tr.serverArgs = []string{"-reply-delay", delay.String()}
	o := tr.run(t, n)
	if !o.ok {
		return
	}
	cr, sr := o.c, o.s
	// The reply left the server only after it saw EOF and
	// waited; the client must have half-closed before.
	if cr.FirstByteMs < cr.ShutMs+float64(delay/time.Millisecond)*0.8 {
		t.Errorf("client half-closed at %.1f ms and got the first byte of the reply at %.1f ms; the server waited %v after EOF (at %.1f ms of its own)",
			cr.ShutMs, cr.FirstByteMs, delay, sr.EOFMs)
	}
	t.Logf("client FIN at %.1f ms, server EOF at %.1f ms, reply from %.1f ms, EOF at %.1f ms", cr.ShutMs, sr.EOFMs, cr.FirstByteMs, cr.EOFMs)
}

// resetResult is what "tcptool reset" prints.
type resetResult struct {
	Role           string
	Local, Peer    string
	Sent, Received int64
	ResetNs        int64 `json:"reset_ns"`
	ErrorNs        int64 `json:"error_ns"`
	Err, Errno     string
}

// connectResult is what "tcptool connect" prints.
type connectResult struct {
	Result, Local, Err, Errno string
	Ms                        float64
}

// TestTCPReset checks that an abort crosses gopasst as an abort, quickly,
// both families: one end (the resetter) reads 1 MiB of a stream the other
// (the victim) sends without end, then closes with SO_LINGER 0 (RST); the
// victim, reading and writing at once, must see ECONNRESET (on one of the
// two: the kernel reports a reset once), not just EOF and EPIPE (a
// graceful close), and its first error within 1 s of the RST. The resetter
// is the namespace or the host, as client to the gateway address or as
// server behind -t with the client on the remote host. Connections to
// closed ports are refused within 1 s: from the namespace to the gateway
// address and to the remote host; from the remote host to a -t port no
// one listens on in the namespace, the connection gopasst accepted must
// end (EOF or reset) within 1 s.
func TestTCPReset(t *testing.T) {
	sb := sandbox.New(t)
	port, closedFwd := nextPort(), nextPort()
	n := startTCPNS(t, sb, "-t", fmt.Sprintf("%d,%d", port, closedFwd))
	for _, f := range families {
		cases := []struct {
			name             string
			server, client   place
			listen, to       string
			resetterIsClient bool
		}{
			{"ns-client-resets", hostPlace(sb), n.place(), "", "", true},
			{"host-server-resets", hostPlace(sb), n.place(), "", "", false},
			{"ns-server-resets", n.place(), worldPlace(sb), ap(f.anyAddr, port), ap(f.host, port), false},
			{"remote-client-resets", n.place(), worldPlace(sb), ap(f.anyAddr, port), ap(f.host, port), true},
		}
		for _, c := range cases {
			t.Run(f.name+"/"+c.name, func(t *testing.T) {
				if c.listen == "" {
					p := nextPort()
					c.listen, c.to = ap(f.loopback, p), ap(f.gw, p)
				}
				runReset(t, n, c.server, c.client, c.listen, c.to, c.resetterIsClient)
			})
		}
		t.Run(f.name+"/refused", func(t *testing.T) {
			for _, to := range []netip.Addr{f.gw, f.remote} {
				r := n.place().run(t, sb, 10*time.Second, "connect", "-to", ap(to, nextPort()), "-timeout", "3s")
				var cr connectResult
				if err := jsonLine(r.stdout, `{"result"`, &cr); err != nil || cr.Result != "refused" || cr.Ms > 1000 {
					t.Errorf("connect to closed port at %s: %+v (%v), want refused within 1 s\n%s\n%s", to, cr, err, r, n.diag())
				} else {
					t.Logf("%s: refused after %.1f ms", to, cr.Ms)
				}
			}
		})
		t.Run(f.name+"/closed-in-namespace", func(t *testing.T) {
			closedForward(t, n, worldPlace(sb), ap(f.host, closedFwd), "-t", "in the namespace")
		})
	}
}

// runReset runs one RST test (see TestTCPReset) between a tcptool reset
// server at server, listening on listen, and its client at client,
// connecting to to; the resetter is the client if resetterIsClient, else
// the server. The victim must see ECONNRESET within 1 s of the RST.
func runReset(t *testing.T, n *tcpNS, server, client place, listen, to string, resetterIsClient bool) {
	t.Helper()
	sb := n.sb
	srvRole, cliRole := "victim", "resetter"
	if !resetterIsClient {
		srvRole, cliRole = "resetter", "victim"
	}
	srv := server.start(t, sb, "reset", "-l", listen, "-role", srvRole, "-timeout", "20s")
	srv.WaitLine(t, "ready", 10*time.Second)
	cli := client.run(t, sb, 30*time.Second, "reset", "-to", to, "-role", cliRole, "-timeout", "20s")
	sr := finish(srv, 30*time.Second)
	var rs, vs resetResult
	rrun, vrun := cli, sr
	if !resetterIsClient {
		rrun, vrun = sr, cli
	}
	errR, errV := jsonLine(rrun.stdout, `{"role"`, &rs), jsonLine(vrun.stdout, `{"role"`, &vs)
	if errR != nil || errV != nil || rs.ResetNs == 0 {
		t.Fatalf("no results (%v, %v)\nresetter %s\nvictim %s\n%s", errR, errV, rrun, vrun, n.diag())
	}
	d := time.Duration(vs.ErrorNs - rs.ResetNs)
	if !strings.Contains(vs.Errno, "ECONNRESET") || vrun.code != 0 {
		t.Errorf("victim's errors %q (%s), the first %v after the RST, want ECONNRESET on one of them\nresetter %s\nvictim %s\n%s", vs.Errno, vs.Err, d, rrun, vrun, n.diag())
	} else if d < 0 || d > time.Second {
		t.Errorf("victim saw %s %v after the RST, want within 1 s\nresetter %s\nvictim %s\n%s", vs.Errno, d, rrun, vrun, n.diag())
	} else {
		t.Logf("victim saw %s %v after the RST (it had sent %d bytes)", vs.Errno, d.Round(time.Microsecond), vs.Sent)
	}
}

// closedForward connects from client to to, a port gopasst forwards
// (option opt) to where no one listens (where), and checks that the
// connection is refused, or accepted and then closed or reset, within 1 s.
func closedForward(t *testing.T, n *tcpNS, client place, to, opt, where string) {
	t.Helper()
	r := client.run(t, n.sb, 15*time.Second, "client", "-to", to, "-send", "0", "-expect", "0", "-timeout", "5s")
	var cr clientResult
	if err := jsonLine(r.stdout, `{"local"`, &cr); err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	// Refused at connect (gopasst did not accept yet), or
	// accepted and then closed (EOF) or reset.
	end := cr.ConnectMs
	switch {
	case cr.Errno == "ECONNREFUSED" || cr.Errno == "ECONNRESET":
		end += cr.Ms
	case cr.OK:
		end += cr.EOFMs
	default:
		t.Fatalf("connection to a %s port no one listens on %s: %s (%s), want it refused, reset or closed\n%s\n%s", opt, where, cr.Errno, cr.Err, r, n.diag())
	}
	if end > 1000 {
		t.Errorf("connection to a %s port no one listens on %s ended after %.0f ms (errno %q), want within 1 s\n%s\n%s", opt, where, end, cr.Errno, r, n.diag())
	}
	t.Logf("connection ended after %.1f ms: %s", end, map[bool]string{true: "EOF", false: cr.Errno}[cr.OK])
}

// TestTCPSlowReader checks that a reader which pauses 1 to 10 ms between
// reads of 32 KiB, with a 64 KiB receive buffer (so the window it
// announces fills and closes again and again), gets all of 10 MiB
// byte-exact, both families: the host's server reading what the
// namespace sends, and the namespace reading what the host's server
// sends.
func TestTCPSlowReader(t *testing.T) {
	sb := sandbox.New(t)
	n := startTCPNS(t, sb)
	slow := []string{"-sleep-per-read", "1ms,10ms", "-read-size", "32768", "-rcvbuf", "65536"}
	for _, f := range families {
		for _, mode := range []string{"sink", "source"} {
			name := map[string]string{"sink": "host-reads-slowly", "source": "ns-reads-slowly"}[mode]
			t.Run(f.name+"/"+name, func(t *testing.T) {
				p := nextPort()
				tr := transfer{server: hostPlace(sb), client: n.place(), listen: ap(f.loopback, p), to: ap(f.gw, p), mode: mode,
					wantPeer: netip.AddrPortFrom(f.loopback, 0), limit: 90 * time.Second}
				if mode == "sink" {
					tr.send, tr.serverArgs = 10*mib, slow
				} else {
					tr.reply, tr.clientArgs = 10*mib, slow
				}
				if o := tr.run(t, n); o.ok {
					t.Logf("%.0f ms, %s, %s", o.c.Ms, rate(10*mib, o.c.Ms), o.retransmits())
				}
			})
		}
	}
}

// manyResult is what "tcptool many" prints per phase.
type manyResult struct {
	Phase             string
	Conns, OK, Failed int
	FirstErr          string `json:"first_err"`
	Ms                float64
}

// TestTCPManyConnections opens, per family, 1,000 connections at once
// from the namespace to the gateway address (an echo server on the host's
// loopback), each echo-checked and all held open together (gopasst's
// counter of active connections must then say 1,000), closes them, then
// makes 10,000 short echo-checked connections one after another. The
// echo server must have served all 11,000 byte-exact. Afterwards no
// connection may be left in gopasst and its descriptors must be back to
// their count before (within 10 s, for teardown; slack of 2).
func TestTCPManyConnections(t *testing.T) {
	sb := sandbox.New(t)
	const concurrent, sequential = 1000, 10000
	needNofile(t, 2*concurrent+100, fmt.Sprintf("%d connections at once (tcptool and gopasst need one descriptor each, and more)", concurrent))
	// No automatic forwarding, whose listeners would come and go.
	n := startTCPNS(t, sb, "-t", "none", "-T", "none", "-u", "none", "-U", "none")
	time.Sleep(500 * time.Millisecond)
	base := n.counters(t)
	baseFDs := n.fds(t)
	if _, ok := base[tcpActive]; !ok {
		t.Fatalf("gopasst has no counter %q:\n%v", tcpActive, base)
	}
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			port := nextPort()
			manyConnections(t, n, hostPlace(sb), ap(f.loopback, port), n.place(), ap(f.gw, port), concurrent, sequential, base, baseFDs)
		})
	}
}

// needNofile skips t unless the hard open-file limit allows want
// descriptors; why says what needs them.
func needNofile(t *testing.T, want int64, why string) {
	t.Helper()
	_, hard, err := watch.NofileLimit(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if hard >= 0 && hard < want {
		t.Skipf("hard open-file limit %d: too low for %s", hard, why)
	}
}

// manyConnections runs the connections of TestTCPManyConnections: a
// tcptool echo server at server, listening on listen, and "tcptool many"
// at client, to to, concurrent connections at once, held open, then
// sequential one after another; base and baseFDs are gopasst's counters
// and descriptor count before. It returns gopasst's counters while the
// concurrent connections were held open.
func manyConnections(t *testing.T, n *tcpNS, server place, listen string, client place, to string, concurrent, sequential int,
	base map[string]int64, baseFDs int) map[string]int64 {
	t.Helper()
	sb := n.sb
	total := concurrent + sequential
	srv := server.start(t, sb, "serve", "-l", listen, "-mode", "echo", "-count", strconv.Itoa(total), "-quiet", "-timeout", "300s")
	srv.WaitLine(t, "ready", 10*time.Second)
	hold := filepath.Join(t.TempDir(), "hold")
	cli := client.start(t, sb, "many", "-to", to, "-concurrent", strconv.Itoa(concurrent), "-sequential", strconv.Itoa(sequential),
		"-size", "100", "-hold", hold, "-timeout", "240s")
	start := time.Now()
	cli.WaitLine(t, "holding ", 120*time.Second)
	opened := time.Since(start)
	held := n.counters(t)
	heldFDs := n.fds(t)
	touch(t, hold)
	cr := finish(cli, 300*time.Second)
	var conc, closing, seq manyResult
	errs := errors.Join(jsonLine(cr.stdout, `{"phase":"concurrent"`, &conc), jsonLine(cr.stdout, `{"phase":"concurrent-close"`, &closing),
		jsonLine(cr.stdout, `{"phase":"sequential"`, &seq))
	if errs != nil || cr.code != 0 || conc.OK != concurrent || closing.OK != concurrent || seq.OK != sequential {
		t.Errorf("client: %v\nconcurrent %+v\nclose %+v\nsequential %+v\n%s\n%s", errs, conc, closing, seq, cr, n.diag())
	}
	if got := held[tcpActive] - base[tcpActive]; got != int64(concurrent) {
		t.Errorf("with %d connections held open, %q is %d (%d before)\n%s", conc.OK, tcpActive, held[tcpActive], base[tcpActive], n.diag())
	}
	t.Logf("%d connections at once in %v (%d descriptors, %d idle); %d sequential in %.1f s (%.2f ms each)",
		conc.OK, opened.Round(time.Millisecond), heldFDs, baseFDs, seq.OK, seq.Ms/1000, seq.Ms/float64(max(seq.OK, 1)))
	sr := finish(srv, 30*time.Second)
	var sum serveSummary
	if err := jsonLine(sr.stdout, `{"summary"`, &sum); err != nil || sr.code != 0 || sum.Conns != total || sum.OK != total {
		t.Errorf("echo server: %+v (%v), want %d connections served byte-exact\n%s", sum, err, total, sr)
	}
	// Teardown: no connection left, descriptors back.
	const slack, teardown = 2, 10 * time.Second
	done := time.Now()
	for {
		c, fds := n.counters(t), n.fds(t)
		if c[tcpActive] == base[tcpActive] && fds <= baseFDs+slack {
			t.Logf("all connections gone and %d descriptors (%d before) %v after the last one closed", fds, baseFDs, time.Since(done).Round(10*time.Millisecond))
			break
		}
		if time.Since(done) > teardown {
			t.Errorf("%v after the last connection closed: %q %d (%d before), %d descriptors (%d before)\n%s",
				teardown, tcpActive, c[tcpActive], base[tcpActive], fds, baseFDs, n.diag())
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return held
}

// TestTCPDisabled checks --no-tcp: a connection from the namespace to the
// gateway address, where a server listens on the host's loopback, does not
// come about (gopasst drops the SYN: the connect times out, or is
// refused) and the server sees nothing; and no host port forwards TCP to
// a server listening in the namespace (the default -t auto is off).
func TestTCPDisabled(t *testing.T) {
	sb := sandbox.New(t)
	n := startTCPNS(t, sb, "--no-tcp")
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			port := nextPort()
			srv := hostPlace(sb).start(t, sb, "serve", "-l", ap(f.loopback, port), "-mode", "echo", "-timeout", "30s")
			srv.WaitLine(t, "ready", 10*time.Second)
			r := n.place().run(t, sb, 10*time.Second, "connect", "-to", ap(f.gw, port), "-timeout", "2s")
			var cr connectResult
			if err := jsonLine(r.stdout, `{"result"`, &cr); err != nil || (cr.Result != "timeout" && cr.Result != "refused") {
				t.Errorf("with --no-tcp, connect from the namespace to %s: %+v (%v), want a timeout or a refusal\n%s\n%s", ap(f.gw, port), cr, err, r, n.diag())
			} else {
				t.Logf("connect: %s after %.0f ms", cr.Result, cr.Ms)
			}
			_ = srv.Signal(os.Interrupt)
			sr := finish(srv, 10*time.Second)
			var sum serveSummary
			if err := jsonLine(sr.stdout, `{"summary"`, &sum); err != nil || sum.Conns != 0 {
				t.Errorf("with --no-tcp, the host's server saw %+v (%v), want no connection\n%s", sum, err, sr)
			}

			// A server in the namespace; nothing forwards to it.
			nsPort := nextPort()
			nsSrv := n.place().start(t, sb, "serve", "-l", ap(f.anyAddr, nsPort), "-mode", "echo", "-timeout", "30s")
			nsSrv.WaitLine(t, "ready", 10*time.Second)
			time.Sleep(1500 * time.Millisecond) // longer than an automatic forwarding scan
			for _, c := range []struct {
				p  place
				to netip.Addr
			}{{hostPlace(sb), f.loopback}, {worldPlace(sb), f.host}} {
				r := c.p.run(t, sb, 10*time.Second, "connect", "-to", ap(c.to, nsPort), "-timeout", "2s")
				if err := jsonLine(r.stdout, `{"result"`, &cr); err != nil || cr.Result == "connected" {
					t.Errorf("with --no-tcp, connect from %s to %s: %+v (%v), want no connection\n%s", c.p.name, ap(c.to, nsPort), cr, err, r)
				}
			}
			_ = nsSrv.Signal(os.Interrupt)
			sr = finish(nsSrv, 10*time.Second)
			if err := jsonLine(sr.stdout, `{"summary"`, &sum); err != nil || sum.Conns != 0 {
				t.Errorf("with --no-tcp, the namespace's server saw %+v (%v), want no connection\n%s", sum, err, sr)
			}
		})
	}
}

// tcDropped matches the drop count in "tc -s qdisc show".
var tcDropped = regexp.MustCompile(`dropped (\d+)`)

// nftDropped matches the packet counts of the rules of lossyRuleset.
var nftDropped = regexp.MustCompile(`counter packets (\d+)`)

// lossyRuleset makes nftables drop 2 % of the TCP packets that leave and
// that arrive on dev: the loss of netem, without its reordering and delay,
// for kernels without netem.
func lossyRuleset(dev string) string {
	return fmt.Sprintf(`table inet gplossy {
	chain in {
		type filter hook input priority 0; policy accept;
		iifname %[1]q meta l4proto tcp numgen random mod 50 == 0 counter drop
	}
	chain out {
		type filter hook output priority 0; policy accept;
		oifname %[1]q meta l4proto tcp numgen random mod 50 == 0 counter drop
	}
}
`, dev)
}

// TestTCPLossyLink makes the namespace's side of the tap lossy and moves
// 10 MiB from the namespace to the host's loopback (gateway address) and
// 10 MiB back, both families: everything must arrive byte-exact. With
// netem (tc qdisc ... netem loss 2% reorder 10% delay 1ms), what the
// namespace sends (its data one way, its acknowledgements the other) is
// lost, reordered and delayed. Kernels without netem get, if nft is
// installed, 2 % loss of the TCP packets both ways instead (no reordering,
// no delay); without either the test is skipped. The emulation must have
// dropped something, or the test tested nothing.
func TestTCPLossyLink(t *testing.T) {
	sb := sandbox.New(t)
	n := startTCPNS(t, sb)
	nsCmd := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command("nsenter", append([]string{"-t", n.pid, "-n"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	links, err := nsCmd("", "ip", "-o", "link", "show")
	if err != nil {
		t.Fatalf("%v\n%s", err, links)
	}
	dev := ""
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] != "lo:" {
			dev, _, _ = strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			break
		}
	}
	// dropped reads how much the emulation dropped so far.
	var dropped func() (int64, string)
	var why []string
	if _, err := exec.LookPath("tc"); err != nil {
		why = append(why, "tc is not installed (apt-get install iproute2)")
	} else if out, err := nsCmd("", "tc", "qdisc", "add", "dev", dev, "root", "netem", "loss", "2%", "reorder", "10%", "delay", "1ms"); err != nil {
		why = append(why, fmt.Sprintf("tc cannot add netem to %s (a kernel without sch_netem?): %v %s", dev, err, strings.TrimSpace(out)))
	} else {
		t.Logf("netem on %s: loss 2%%, reorder 10%%, delay 1ms", dev)
		dropped = func() (int64, string) {
			out, _ := nsCmd("", "tc", "-s", "qdisc", "show", "dev", dev)
			var d int64
			if m := tcDropped.FindStringSubmatch(out); m != nil {
				d, _ = strconv.ParseInt(m[1], 10, 64)
			}
			return d, strings.Join(strings.Fields(out), " ")
		}
	}
	if dropped == nil {
		if _, err := exec.LookPath("nft"); err != nil {
			why = append(why, "nft is not installed (apt-get install nftables) for the fallback")
		} else if out, err := nsCmd(lossyRuleset(dev), "nft", "-f", "-"); err != nil {
			why = append(why, fmt.Sprintf("nft cannot load the lossy ruleset: %v %s", err, strings.TrimSpace(out)))
		} else {
			t.Logf("%s; instead nftables drops 2%% of the TCP packets both ways on %s (no reordering, no delay)", why[0], dev)
			dropped = func() (int64, string) {
				out, _ := nsCmd("", "nft", "list", "table", "inet", "gplossy")
				var d int64
				for _, m := range nftDropped.FindAllStringSubmatch(out, -1) {
					v, _ := strconv.ParseInt(m[1], 10, 64)
					d += v
				}
				return d, strings.Join(strings.Fields(out), " ")
			}
		}
	}
	if dropped == nil {
		t.Skip(strings.Join(why, "; "))
	}
	for _, f := range families {
		for _, mode := range []string{"sink", "source"} {
			dir := map[string]string{"sink": "ns-sends", "source": "host-sends"}[mode]
			t.Run(f.name+"/"+dir, func(t *testing.T) {
				p := nextPort()
				d0, _ := dropped()
				tr := transfer{server: hostPlace(sb), client: n.place(), listen: ap(f.loopback, p), to: ap(f.gw, p), mode: mode,
					wantPeer: netip.AddrPortFrom(f.loopback, 0), limit: 120 * time.Second}
				if mode == "sink" {
					tr.send = 10 * mib
				} else {
					tr.reply = 10 * mib
				}
				if o := tr.run(t, n); o.ok {
					d1, _ := dropped()
					t.Logf("%.0f ms, %s, %d packets dropped on the way, %s", o.c.Ms, rate(10*mib, o.c.Ms), d1-d0, o.retransmits())
				}
			})
		}
	}
	if d, state := dropped(); d == 0 {
		t.Errorf("the lossy link dropped nothing: the test did not test loss\n%s", state)
	}
}
