package e2e_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/pattern"
	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// floodConn is what the flood helper found of one connection.
type floodConn struct {
	Conn int    `json:"flood_conn"`
	To   string `json:"to"`
	// Result is "ok" (echoed byte-exact, and closed cleanly if Closed),
	// or how it failed: "refused", "reset", "eof", "timeout", "other".
	Result string `json:"result"`
	Err    string `json:"err"`
	// ConnectMs is how long connect took (to its failure, if it
	// failed); DoneMs how long from the start of connect to the echo
	// checked or the failure, and DoneUnixMs when that was.
	ConnectMs  float64 `json:"connect_ms"`
	DoneMs     float64 `json:"done_ms"`
	DoneUnixMs int64   `json:"done_unix_ms"`
	// Closed: after the hold, our FIN was answered by EOF, nothing more.
	Closed bool `json:"closed"`
}

// floodResult classifies a connection's error.
func floodResult(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// waitFile waits until path exists or deadline passes.
func waitFile(path string, deadline time.Time) {
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func helperFlood(args []string) error {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	to := fs.String("to", "", "addresses")
	n := fs.Int("n", 0, "connections")
	size := fs.Int("size", 1000, "bytes per connection")
	hold := fs.String("hold", "", "file to wait for before closing")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on each connection")
	connTimeout := fs.Duration("connect-timeout", 10*time.Second, "bound on each connect")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets := strings.Split(*to, ",")
	nets := make([]string, len(targets))
	for i, a := range targets {
		nw, err := helperNet(a)
		if err != nil {
			return err
		}
		nets[i] = nw
	}
	data := make([]byte, *size)
	pattern.Fill(data, 1, 0)
	res := make([]floodConn, *n)
	var pending, ok, failed atomic.Int64
	pending.Store(int64(*n))
	var wg sync.WaitGroup
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &res[i]
			r.Conn, r.To = i, targets[i%len(targets)]
			start := time.Now()
			deadline := start.Add(*timeout)
			fail := func(err error) {
				r.Result, r.Err = floodResult(err), err.Error()
				r.DoneMs, r.DoneUnixMs = ms(time.Since(start)), time.Now().UnixMilli()
				failed.Add(1)
				pending.Add(-1)
			}
			c, err := net.DialTimeout(nets[i%len(nets)], r.To, *connTimeout)
			r.ConnectMs = ms(time.Since(start))
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(deadline)
			got := make([]byte, len(data))
			if _, err := c.Write(data); err != nil {
				fail(err)
				return
			}
			if _, err := io.ReadFull(c, got); err != nil {
				fail(err)
				return
			}
			if !bytes.Equal(got, data) {
				fail(errors.New("the echo differs from what was sent"))
				return
			}
			r.Result = "ok"
			r.DoneMs, r.DoneUnixMs = ms(time.Since(start)), time.Now().UnixMilli()
			ok.Add(1)
			pending.Add(-1)
			if *hold != "" {
				waitFile(*hold, deadline)
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				r.Err = "close: " + err.Error()
				return
			}
			k, err := c.Read(got[:1])
			switch {
			case k == 0 && err == io.EOF:
				r.Closed = true
			case err == nil:
				r.Err = "close: data after the echo"
			default:
				r.Err = "close: " + err.Error()
			}
		}()
	}
	last := ""
	for {
		p := pending.Load()
		s := fmt.Sprintf("pending=%d ok=%d failed=%d", p, ok.Load(), failed.Load())
		if s != last {
			fmt.Println("status", s)
			last = s
		}
		if p == 0 {
			fmt.Printf("opened ok=%d failed=%d\n", ok.Load(), failed.Load())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	for _, r := range res {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
	}
	fmt.Println("flood finished")
	return nil
}

// echoerResult is what the echoer helper prints at the end.
type echoerResult struct {
	Echoed   int64   `json:"echoed"` // bytes sent and read back byte-exact
	OK       bool    `json:"ok"`     // no error, every echo byte-exact, EOF after our FIN
	MaxRTTMs float64 `json:"max_rtt_ms"`
	Err      string  `json:"err"`
}

func helperEchoer(args []string) error {
	fs := flag.NewFlagSet("echoer", flag.ContinueOnError)
	to := fs.String("to", "", "echo server")
	stop := fs.String("stop", "", "stop file")
	rate := fs.Int64("rate", 1<<20, "bytes per second")
	chunk := fs.Int("chunk", 16<<10, "bytes per round trip")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tc, err := helperDial(*to)
	if err != nil {
		return err
	}
	defer tc.Close()
	var r echoerResult
	out, in := make([]byte, *chunk), make([]byte, *chunk)
	pace := newPacedLoop(*stop, float64(*rate))
	for r.Err == "" {
		now, end, ahead := pace.step(r.Echoed)
		if end {
			break
		}
		if ahead {
			continue
		}
		pattern.Fill(out, 1, uint64(r.Echoed))
		_ = tc.SetDeadline(now.Add(20 * time.Second))
		if _, err := tc.Write(out); err != nil {
			r.Err = "write: " + err.Error()
			break
		}
		if _, err := io.ReadFull(tc, in); err != nil {
			r.Err = "read: " + err.Error()
			break
		}
		if !bytes.Equal(in, out) {
			r.Err = fmt.Sprintf("the echo of bytes %d to %d differs from what was sent", r.Echoed, r.Echoed+int64(len(out)))
			break
		}
		r.MaxRTTMs = max(r.MaxRTTMs, ms(time.Since(now)))
		r.Echoed += int64(len(out))
	}
	fmt.Printf("progress %d %d\n", time.Now().UnixMilli(), r.Echoed)
	if r.Err == "" {
		_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
		if err := tc.CloseWrite(); err != nil {
			r.Err = "close: " + err.Error()
		} else if k, err := tc.Read(in); k != 0 || err != io.EOF {
			r.Err = fmt.Sprintf("after our FIN: %d bytes, %v", k, err)
		}
	}
	r.OK = r.Err == ""
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	return nil
}

// fdEchoer is the long-lived connection of TestTCPFDLimit: the echoer
// helper in the namespace and a tcptool echo server on the host's
// loopback (through the gateway address, so through the tap), both
// checking every byte.
type fdEchoer struct {
	cli, srv *sandbox.Proc
	stop     string
}

func startFDEchoer(t *testing.T, n *tcpNS, rate int64) *fdEchoer {
	t.Helper()
	port := nextPort()
	srv := hostPlace(n.sb).start(t, n.sb, "serve", "-l", ap(families[0].loopback, port), "-mode", "echo", "-count", "1", "-timeout", "600s")
	srv.WaitLine(t, "ready", 10*time.Second)
	e := &fdEchoer{srv: srv, stop: filepath.Join(t.TempDir(), "stop-echoer")}
	e.cli = n.place().startHelper(t, n.sb, "echoer", "-to", ap(families[0].gw, port), "-stop", e.stop, "-rate", strconv.FormatInt(rate, 10))
	e.cli.WaitLine(t, "connected", 10*time.Second)
	return e
}

// echoed is how many bytes the echoer had got back so far.
func (e *fdEchoer) echoed() int64 {
	var n int64
	for _, line := range strings.Split(e.cli.Stdout(), "\n") {
		var at, b int64
		if _, err := fmt.Sscanf(line, "progress %d %d", &at, &b); err == nil {
			n = b
		}
	}
	return n
}

// running fails t unless the echoer is still going.
func (e *fdEchoer) running(t *testing.T, what string) {
	t.Helper()
	select {
	case <-e.cli.Done():
		t.Errorf("the long-lived connection ended %s\nstdout:\n%s\nstderr:\n%s", what, e.cli.Stdout(), e.cli.Stderr())
	default:
	}
}

// finish stops the echoer and checks that every byte came back
// byte-exact, the server got exactly what was sent (its own pattern check
// passed), and no round trip took longer than maxRTT.
func (e *fdEchoer) finish(t *testing.T, maxRTT time.Duration) echoerResult {
	t.Helper()
	e.running(t, "before the end of the test")
	touch(t, e.stop)
	line := e.cli.WaitLine(t, `{"echoed"`, 30*time.Second)
	var r echoerResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("echoer: %v: %q", err, line)
	}
	sr := finish(e.srv, 20*time.Second)
	var s serveResult
	if err := jsonLine(sr.stdout, `{"conn"`, &s); err != nil {
		t.Fatalf("echoer's server: %v\n%s", err, sr)
	}
	switch {
	case !r.OK:
		t.Errorf("long-lived connection: %+v", r)
	case !s.OK || s.Received != r.Echoed || s.Sent != r.Echoed:
		t.Errorf("long-lived connection: %d bytes echoed byte-exact, the server received %d and sent %d (ok %v, bad byte at %d, %q)",
			r.Echoed, s.Received, s.Sent, s.OK, s.BadAt, s.Err)
	case time.Duration(r.MaxRTTMs*float64(time.Millisecond)) > maxRTT:
		t.Errorf("long-lived connection: a round trip took %.0f ms, more than %v", r.MaxRTTMs, maxRTT)
	}
	return r
}

// fdsBelow counts the descriptors of pid numbered below limit: a
// descriptor inherited above the limit stays open, but no new one can
// pass it.
func fdsBelow(t *testing.T, pid, limit int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	k := 0
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd < limit {
			k++
		}
	}
	return k
}

// floodStatus parses the last "status" line of a flood helper.
func floodStatus(p *sandbox.Proc) (pending, ok, failed int) {
	for _, line := range strings.Split(p.Stdout(), "\n") {
		var a, b, c int
		if _, err := fmt.Sscanf(line, "status pending=%d ok=%d failed=%d", &a, &b, &c); err == nil {
			pending, ok, failed = a, b, c
		}
	}
	return pending, ok, failed
}

// floodConns waits for the end of a flood helper and returns its
// connections.
func floodConns(t *testing.T, p *sandbox.Proc, limit time.Duration) []floodConn {
	t.Helper()
	p.WaitLine(t, "flood finished", limit)
	var rs []floodConn
	for _, line := range strings.Split(p.Stdout(), "\n") {
		if strings.HasPrefix(line, `{"flood_conn"`) {
			var r floodConn
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("flood: %v: %q", err, line)
			}
			rs = append(rs, r)
		}
	}
	return rs
}

// floodSummary counts a flood's connections by result, and gives the
// median and largest DoneMs of each result.
func floodSummary(rs []floodConn) string {
	by := map[string][]float64{}
	for _, r := range rs {
		by[r.Result] = append(by[r.Result], r.DoneMs)
	}
	var names []string
	for k := range by {
		names = append(names, k)
	}
	sort.Strings(names)
	var parts []string
	for _, k := range names {
		d := by[k]
		sort.Float64s(d)
		parts = append(parts, fmt.Sprintf("%d %s (median %.1f ms, slowest %.1f ms)", len(d), k, d[len(d)/2], d[len(d)-1]))
	}
	return strings.Join(parts, ", ")
}

// startEchoServers starts tcptool echo servers at p on addr's port, one
// per address, and returns them once they listen.
func startEchoServers(t *testing.T, sb *sandbox.Sandbox, p place, addrs ...string) []*sandbox.Proc {
	t.Helper()
	var srvs []*sandbox.Proc
	for _, a := range addrs {
		s := p.start(t, sb, "serve", "-l", a, "-mode", "echo", "-quiet", "-timeout", "300s")
		s.WaitLine(t, "ready", 10*time.Second)
		srvs = append(srvs, s)
	}
	return srvs
}

// stopEchoServers stops the servers of startEchoServers and checks that
// together they served want connections, every one byte-exact.
func stopEchoServers(t *testing.T, srvs []*sandbox.Proc, want int) {
	t.Helper()
	var conns, ok int
	var errs []string
	for _, s := range srvs {
		_ = s.Signal(syscall.SIGTERM)
		sr := finish(s, 20*time.Second)
		var sum serveSummary
		if err := jsonLine(sr.stdout, `{"summary"`, &sum); err != nil {
			t.Errorf("echo server: %v\n%s", err, sr)
			continue
		}
		conns += sum.Conns
		ok += sum.OK
		if sum.FirstErr != "" {
			errs = append(errs, sum.FirstErr)
		}
	}
	if conns != want || ok != want {
		t.Errorf("the echo servers served %d connections, %d of them byte-exact, want %d: %v", conns, ok, want, errs)
	}
}

// cpuShare is the share of one CPU gopasst used over d.
func cpuShare(t *testing.T, pid int, d time.Duration) float64 {
	t.Helper()
	c0, err := watch.CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(d)
	c1, err := watch.CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	return float64(c1-c0) / float64(time.Since(start))
}

// The bounds of TestTCPFDLimit.
const (
	// fdFailBound is how long a connection beyond the limit may take to
	// fail: the SYN's answer, or the reset of an accepted connection,
	// comes at once; a second is a SYN retransmission, that is a SYN
	// gopasst did not answer.
	fdFailBound = time.Second
	// fdMaxCPU bounds gopasst's share of a CPU while it sits at the
	// limit with the long-lived connection running (1 MiB/s): a
	// listener that spins on EMFILE takes a whole CPU.
	fdMaxCPU = 0.5
	// fdRecovery bounds the time from the release of the connections
	// held at the limit to the last connection that waited (in a -t
	// listener's backlog) checked: gopasst retries a paused listener
	// every second.
	fdRecovery = 20 * time.Second
)

// TestTCPFDLimit runs gopasst (pasta) with an open-file limit it cannot
// raise (soft = hard = 64) and floods it, 200 connections at once, while
// one long-lived connection (the namespace to the host's loopback,
// through the gateway address) keeps echoing 1 MiB/s, every byte checked
// by both ends. Each flood's connections send 1,000 bytes, check the
// echo byte-exact and stay open until the test lets them go:
//
//   - ns-to-host: from the namespace to echo servers on the host's
//     loopback (IPv4 and IPv6, through the gateway address). gopasst
//     must use every descriptor up to the limit and not one beyond it,
//     and refuse each connection it has no socket for at once: the
//     client's connect fails with ECONNREFUSED (gopasst's RST) within
//     fdFailBound, and gopasst counts it as "drop socket-error", one for
//     each. The connections it took hold one descriptor each.
//   - host-to-ns: from the host to its own addresses, on a -t port, to
//     echo servers in the namespace (through the tap); and
//     host-loopback-to-ns: the same from the host's loopback (spliced,
//     six descriptors a connection). The host's kernel completes every
//     handshake; beyond the limit gopasst cannot accept, and must
//     neither spin on the listener (under fdMaxCPU of a CPU, at most a
//     few "socket-error" drops a second: a retry per tick) nor give it
//     up. A connection it accepts but cannot carry on (no pipes, no
//     socket) must be reset within fdFailBound; the others wait in the
//     backlog and, once the held connections are let go, must all
//     complete byte-exact within fdRecovery.
//
// While held, the active connections must be those that succeeded (plus
// the long-lived one), the descriptors at the limit, gopasst's CPU low;
// after each flood every connection must be gone and the descriptors
// back to the idle count (plus the long-lived connection's one), and a
// new connection must work byte-exact (a 1 MiB echo). At the end, the
// long-lived connection must have got back every byte byte-exact, no
// round trip taking 5 s, and the descriptors are back to the idle count.
func TestTCPFDLimit(t *testing.T) {
	sb := sandbox.New(t)
	const nofile, flood = 64, 200
	fwdPort := nextPort()
	n := startNS(t, sb, gopasst, []string{"prlimit", fmt.Sprintf("--nofile=%d:%d", nofile, nofile)}, false,
		fwdArgs(strconv.Itoa(int(fwdPort)), "")...)
	if soft, hard, err := watch.NofileLimit(n.gpid); err != nil || soft != nofile || hard != nofile {
		t.Fatalf("gopasst's open-file limit: %d (soft), %d (hard), %v; want both %d", soft, hard, err, nofile)
	}
	base := n.idleFDs(t)
	if low := fdsBelow(t, n.gpid, nofile); nofile-low < 20 {
		t.Fatalf("%d descriptors idle (%d below the limit of %d): no room for the test", base, low, nofile)
	}
	ech := startFDEchoer(t, n, 1<<20)
	n.waitState(t, 1, 0, base+1, 5*time.Second)
	t.Logf("open-file limit %d, %d descriptors idle", nofile, base)

	t.Run("ns-to-host", func(t *testing.T) {
		fdFloodOut(t, n, ech, base, nofile, flood)
	})
	for _, spliced := range []bool{false, true} {
		name := "host-to-ns"
		if spliced {
			name = "host-loopback-to-ns"
		}
		t.Run(name, func(t *testing.T) {
			fdFloodIn(t, n, ech, fwdPort, base, nofile, flood, spliced)
		})
	}
	r := ech.finish(t, 5*time.Second)
	t.Logf("long-lived connection: %d bytes echoed byte-exact, slowest round trip %.0f ms", r.Echoed, r.MaxRTTMs)
	n.waitState(t, 0, 0, base, 5*time.Second)
}

// fdFloodOut is the ns-to-host flood of TestTCPFDLimit.
func fdFloodOut(t *testing.T, n *tcpNS, ech *fdEchoer, base, nofile, flood int) {
	sb := n.sb
	port := nextPort()
	srvs := startEchoServers(t, sb, hostPlace(sb), ap(families[0].loopback, port), ap(families[1].loopback, port))
	hold := filepath.Join(t.TempDir(), "hold")
	c0 := n.counters(t)
	echoed0 := ech.echoed()
	fl := n.place().startHelper(t, sb, "flood", "-to", ap(families[0].gw, port)+","+ap(families[1].gw, port),
		"-n", strconv.Itoa(flood), "-hold", hold, "-timeout", "60s")
	line := fl.WaitLine(t, "opened ", 60*time.Second)
	var ok, failed int
	if _, err := fmt.Sscanf(line, "opened ok=%d failed=%d", &ok, &failed); err != nil {
		t.Fatalf("flood: %q: %v", line, err)
	}
	// Held at the limit.
	cpu := cpuShare(t, n.gpid, 2*time.Second)
	c1 := n.counters(t)
	fds, low := n.fds(t), fdsBelow(t, n.gpid, nofile)
	sockErr := c1["drop socket-error"] - c0["drop socket-error"]
	t.Logf("held: %d connections up, %d failed; %q %d, %d descriptors (%d below the limit), %d socket errors, gopasst %.0f%% of a CPU",
		ok, failed, tcpActive, c1[tcpActive], fds, low, sockErr, 100*cpu)
	if failed == 0 || ok == 0 {
		t.Errorf("%d connections up, %d failed: want the limit reached (the flood is larger than it)", ok, failed)
	}
	if low != nofile {
		t.Errorf("%d descriptors below the limit of %d: want every one of them used, and none beyond", low, nofile)
	}
	if c1[tcpActive] != int64(ok)+1 {
		t.Errorf("%q %d with %d connections of the flood up and the long-lived one\n%s", tcpActive, c1[tcpActive], ok, n.diag())
	}
	if extra := int64(fds-base) - c1[tcpActive]; extra != 0 {
		t.Errorf("%d descriptors, %d idle, %d connections: %d belong to none", fds, base, c1[tcpActive], extra)
	}
	if sockErr != int64(failed) {
		t.Errorf("%d connections refused, %d counted as \"drop socket-error\": want one for each\n%s", failed, sockErr, n.diag())
	}
	if cpu > fdMaxCPU {
		t.Errorf("gopasst used %.0f%% of a CPU at the limit, more than %.0f%%", 100*cpu, 100*fdMaxCPU)
	}
	touch(t, hold)
	rs := floodConns(t, fl, 60*time.Second)
	t.Logf("flood of %d: %s", flood, floodSummary(rs))
	if len(rs) != flood {
		t.Fatalf("%d connections reported, want %d", len(rs), flood)
	}
	var refused int
	for _, r := range rs {
		switch {
		case r.Result == "ok" && !r.Closed:
			t.Errorf("connection %d echoed, then did not close cleanly: %s", r.Conn, r.Err)
		case r.Result == "ok":
		case r.Result != "refused":
			t.Errorf("connection %d to %s: %s after %.1f ms (%s), want it echoed byte-exact or refused", r.Conn, r.To, r.Result, r.DoneMs, r.Err)
		case time.Duration(r.ConnectMs*float64(time.Millisecond)) > fdFailBound:
			t.Errorf("connection %d to %s refused after %.1f ms, want within %v", r.Conn, r.To, r.ConnectMs, fdFailBound)
			refused++
		default:
			refused++
		}
	}
	if refused != failed {
		t.Errorf("%d refused, the flood said %d failed", refused, failed)
	}
	stopEchoServers(t, srvs, ok)
	d := n.waitState(t, 1, 0, base+1, 10*time.Second)
	t.Logf("the flood's connections gone and the descriptors back %v after their release", d.Round(10*time.Millisecond))
	if ech.running(t, "during the flood"); ech.echoed() <= echoed0 {
		t.Errorf("the long-lived connection echoed nothing during the flood (%d bytes before, %d after)", echoed0, ech.echoed())
	}
	p := nextPort()
	fdAfter(t, n, hostPlace(sb), n.place(), ap(families[0].loopback, p), ap(families[0].gw, p), false, base)
}

// fdAfter checks that a new connection works after a flood: a tcptool
// client at client sends 1 MiB to an echo server at server (listening on
// listen) through to, and both ends must get everything byte-exact
// (pattern and SHA-256 checked). gopasst's counters must show the
// bytes spliced (spliced) or through the tap (at least 1 MiB each way;
// the long-lived connection moves some too, so this cannot be exact).
func fdAfter(t *testing.T, n *tcpNS, server, client place, listen, to string, spliced bool, base int) {
	t.Helper()
	const size = mib
	before := n.counters(t)
	srv := server.start(t, n.sb, "serve", "-l", listen, "-mode", "echo", "-count", "1", "-timeout", "30s")
	srv.WaitLine(t, "ready", 10*time.Second)
	cli := client.run(t, n.sb, 30*time.Second, "client", "-to", to, "-send", strconv.Itoa(size), "-expect", strconv.Itoa(size), "-timeout", "20s")
	sr := finish(srv, 20*time.Second)
	after := n.counters(t)
	var c clientResult
	var s serveResult
	err := errors.Join(jsonLine(cli.stdout, `{"local"`, &c), jsonLine(sr.stdout, `{"conn"`, &s))
	switch {
	case err != nil || !c.OK || !s.OK || c.Received != size || s.Received != size || c.SHA256Sent != s.SHA256Received || c.SHA256Received != c.SHA256Sent:
		t.Errorf("new connection after the flood, %s to %s: %v\nclient %s\nserver %s\n%s", client.name, to, err, cli, sr, n.diag())
	case spliced && after[tcpSpliceBytes]-before[tcpSpliceBytes] < 2*size:
		t.Errorf("%q went up by %d, want at least %d: the new connection was not spliced", tcpSpliceBytes, after[tcpSpliceBytes]-before[tcpSpliceBytes], 2*size)
	case !spliced && (after[tcpHostBytes]-before[tcpHostBytes] < size || after[tcpTapBytes]-before[tcpTapBytes] < size):
		t.Errorf("%q went up by %d and %q by %d, want at least %d each: the new connection did not go through the tap",
			tcpHostBytes, after[tcpHostBytes]-before[tcpHostBytes], tcpTapBytes, after[tcpTapBytes]-before[tcpTapBytes], size)
	default:
		t.Logf("new connection after the flood: %d bytes echoed byte-exact in %.0f ms", c.Received, c.Ms)
	}
	n.waitState(t, 1, 0, base+1, 5*time.Second)
}

// fdFloodIn is the host-to-ns flood of TestTCPFDLimit, through the tap or
// (spliced) from the host's loopback.
func fdFloodIn(t *testing.T, n *tcpNS, ech *fdEchoer, port uint16, base, nofile, flood int, spliced bool) {
	sb := n.sb
	srvs := startEchoServers(t, sb, n.place(), ap(families[0].anyAddr, port), ap(families[1].anyAddr, port))
	to := []string{ap(families[0].host, port), ap(families[1].host, port)}
	if spliced {
		to = []string{ap(families[0].loopback, port), ap(families[1].loopback, port)}
	}
	hold := filepath.Join(t.TempDir(), "hold")
	c0 := n.counters(t)
	echoed0 := ech.echoed()
	fl := hostPlace(sb).startHelper(t, sb, "flood", "-to", strings.Join(to, ","), "-n", strconv.Itoa(flood), "-hold", hold, "-timeout", "90s")
	// Wait until nothing moves any more: the flood's status and the
	// active connections hold still for 1.5 s.
	var pending, ok, failed int
	var active int64
	for still, deadline := time.Now(), time.Now().Add(60*time.Second); ; {
		time.Sleep(100 * time.Millisecond)
		p, o, f := floodStatus(fl)
		a := n.counters(t)[tcpActive]
		if p != pending || o != ok || f != failed || a != active || p+o+f == 0 {
			pending, ok, failed, active, still = p, o, f, a, time.Now()
		}
		if time.Since(still) >= 1500*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flood does not settle: pending %d, ok %d, failed %d, %q %d\n%s", pending, ok, failed, tcpActive, active, n.diag())
		}
	}
	// Held at the limit: measure for 3 s.
	c1 := n.counters(t)
	cpu := cpuShare(t, n.gpid, 3*time.Second)
	c2 := n.counters(t)
	fds, low := n.fds(t), fdsBelow(t, n.gpid, nofile)
	perSec := float64(c2["drop socket-error"]-c1["drop socket-error"]) / 3
	t.Logf("held: %d connections up, %d failed, %d waiting; %q %d (%d spliced), %d descriptors (%d below the limit); %d socket errors, %.1f a second while held; gopasst %.0f%% of a CPU",
		ok, failed, pending, tcpActive, c2[tcpActive], c2[tcpActiveSplice], fds, low, c2["drop socket-error"]-c0["drop socket-error"], perSec, 100*cpu)
	if failed > 0 && c2["drop socket-error"]-c0["drop socket-error"] < int64(failed) {
		t.Errorf("%d connections reset, %d counted as \"drop socket-error\": want at least one for each\n%s", failed, c2["drop socket-error"]-c0["drop socket-error"], n.diag())
	}
	if ok == 0 || pending+failed == 0 {
		t.Errorf("%d connections up, %d failed, %d waiting: want the limit reached (the flood is larger than it)", ok, failed, pending)
	}
	// Through the tap a connection holds one descriptor: every one up
	// to the limit must be in use. Spliced, it holds several (its two
	// sockets and two pipes): fewer than that may be left.
	perConn := 1
	if spliced && ok > 0 {
		perConn = (fds - base - 1) / ok
		if (fds-base-1)%ok != 0 {
			t.Errorf("%d descriptors, %d idle, %d spliced connections and the long-lived one: not the same number each", fds, base, ok)
		}
	}
	if low > nofile || nofile-low >= perConn {
		t.Errorf("%d descriptors below the limit of %d, %d a connection: want the limit reached, and not passed", low, nofile, perConn)
	}
	if c2[tcpActive] != int64(ok)+1 || (spliced && c2[tcpActiveSplice] != int64(ok)) {
		t.Errorf("%q %d, %q %d, with %d connections of the flood up and the long-lived one\n%s",
			tcpActive, c2[tcpActive], tcpActiveSplice, c2[tcpActiveSplice], ok, n.diag())
	}
	if !spliced {
		if extra := int64(fds-base) - c2[tcpActive]; extra != 0 {
			t.Errorf("%d descriptors, %d idle, %d connections: %d belong to none", fds, base, c2[tcpActive], extra)
		}
	}
	if c2["drop socket-error"] == c0["drop socket-error"] {
		t.Errorf("no \"drop socket-error\" counted at the limit\n%s", n.diag())
	}
	if cpu > fdMaxCPU || perSec > 10 {
		t.Errorf("at the limit gopasst used %.0f%% of a CPU and counted %.1f socket errors a second: the listener spins", 100*cpu, perSec)
	}
	ech.running(t, "during the flood")

	released := time.Now()
	touch(t, hold)
	rs := floodConns(t, fl, 120*time.Second)
	t.Logf("flood of %d: %s", flood, floodSummary(rs))
	if len(rs) != flood {
		t.Fatalf("%d connections reported, want %d", len(rs), flood)
	}
	var okAll int
	var last time.Time
	for _, r := range rs {
		done := time.UnixMilli(r.DoneUnixMs)
		switch {
		case r.Result == "ok" && !r.Closed:
			t.Errorf("connection %d echoed, then did not close cleanly: %s", r.Conn, r.Err)
		case r.Result == "ok":
			okAll++
			if done.After(last) {
				last = done
			}
		case r.Result != "reset" && r.Result != "eof":
			t.Errorf("connection %d to %s: %s after %.1f ms (%s), want it echoed byte-exact, or reset", r.Conn, r.To, r.Result, r.DoneMs, r.Err)
		case time.Duration(r.DoneMs*float64(time.Millisecond)) > fdFailBound:
			t.Errorf("connection %d to %s: %s after %.1f ms, want within %v", r.Conn, r.To, r.Result, r.DoneMs, fdFailBound)
		}
	}
	if okAll != flood-failed {
		t.Errorf("%d connections echoed byte-exact, want all but the %d that failed while held", okAll, failed)
	}
	if pending > 0 {
		d := last.Sub(released)
		t.Logf("the %d connections waiting in the backlog done %v after the release", pending, d.Round(10*time.Millisecond))
		if d > fdRecovery {
			t.Errorf("the last connection that waited was done %v after the release, want within %v", d, fdRecovery)
		}
	}
	stopEchoServers(t, srvs, okAll)
	d := n.waitState(t, 1, 0, base+1, 10*time.Second)
	t.Logf("the flood's connections gone and the descriptors back %v after the last one", d.Round(10*time.Millisecond))
	if ech.running(t, "during the flood"); ech.echoed() <= echoed0 {
		t.Errorf("the long-lived connection echoed nothing during the flood (%d bytes before, %d after)", echoed0, ech.echoed())
	}
	fdAfter(t, n, n.place(), hostPlace(sb), ap(families[0].anyAddr, port), to[0], spliced, base)
}
