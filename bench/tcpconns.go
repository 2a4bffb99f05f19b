package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// The many-connections scenarios (tcp/PATH/ipv4/conns-N): N connections
// opened at once through the translator, each checked end to end with a
// request and its answer, then held open and idle while the translator's
// resident memory is read, then ended, after which the translator must
// let go of every one of them.

// secTCPConns is the section of the many-connections rows, after the
// other TCP rows.
const secTCPConns = secTCPRSS + 1

// tcpConnCounts are the numbers of connections of the scenarios.
var tcpConnCounts = []int{1000, 10000}

// Timing of the many-connections trials and tools.
const (
	// tcpOpenBudget bounds the time the client takes to open all its
	// connections (it stops trying after it, and reports how many it
	// has); it is under loadReadyTimeout, which the client's "ready"
	// must beat.
	tcpOpenBudget = 20 * time.Second
	// tcpOpenTimeout bounds one connection's connect, request and
	// answer: time for one retransmission of the SYN (after 1 s), for
	// a translator that dropped it.
	tcpOpenTimeout = 3 * time.Second
	// tcpOpeners is the number of connections the client opens at a
	// time, well under the listening socket's backlog.
	tcpOpeners = 64
	// tcpCloseWait bounds the server's wait, once it has ended its side
	// of every connection, for the clients to end theirs. A burst of
	// 10,000 FINs overflows the tap's queue (with either translator,
	// some 10,000-25,000 frames dropped there), and the retransmissions
	// back off: 0.2 s, 0.4 s, ..., the sixth 12.6 s after the FIN, the
	// seventh 25.4 s (the reference needed 13.4 s once).
	tcpCloseWait = 30 * time.Second
	// tcpIdleSettle is the pause between the last connection opened
	// and the first reading of the translator's memory, tcpIdleSamples
	// readings tcpIdleEvery apart follow it.
	tcpIdleSettle  = 300 * time.Millisecond
	tcpIdleSamples = 4
	tcpIdleEvery   = 250 * time.Millisecond
	// tcpDrainWait bounds the wait for the translator to let go of the
	// ended connections.
	tcpDrainWait = 5 * time.Second
	// tcpFDSlack is how many descriptors more than before the
	// connections the translator may hold once they ended: the
	// reference refills pools of spare sockets and pipes on a timer
	// (about 60 descriptors more after a trial than before it).
	tcpFDSlack = 256
	// tcpFDMargin is what a translator needs beside its descriptors
	// per connection (listening sockets, pools, the tap).
	tcpFDMargin = 1000
)

// The exchange that opens every connection: the client sends
// tcpReqLen bytes (tcpReqMagic, its index and the client's nonce), the
// server answers the SHA-256 of them; the client compares the answer
// byte for byte.
const (
	tcpReqLen  = 16
	tcpRespLen = sha256.Size
)

// tcpReqMagic starts every request.
var tcpReqMagic = [4]byte{'g', 'p', 'c', '1'}

// tcpRequest returns the request of connection i of a client with
// nonce.
func tcpRequest(nonce uint64, i int) []byte {
	req := make([]byte, tcpReqLen)
	copy(req, tcpReqMagic[:])
	binary.LittleEndian.PutUint32(req[4:], uint32(i))
	binary.LittleEndian.PutUint64(req[8:], nonce)
	return req
}

// tcpAnswer returns the answer to req.
func tcpAnswer(req []byte) []byte {
	sum := sha256.Sum256(req)
	return sum[:]
}

// tcpConnsScenarios returns the many-connections scenarios: through the
// tap, namespace to host (the namespace connects to its gateway, which
// is the host's loopback) and host to namespace (the host connects to its
// own address on the -t port), IPv4, each with 1,000 and 10,000
// connections.
func tcpConnsScenarios() []Scenario {
	var out []Scenario
	f := families[0]
	for _, p := range []Path{tcpTapNSHost, tcpTapHostNS} {
		for _, n := range tcpConnCounts {
			out = append(out, Scenario{Name: fmt.Sprintf("tcp/%s/%s/conns-%d", p.Name, f.Name, n), TCP: true,
				Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
					return b.tcpConns(ctx, in, t, p, f, n)
				}})
		}
	}
	return out
}

// connsState is what a many-connections trial reads of the translator.
type connsState struct {
	rss float64 // VmRSS of its processes, summed, MiB
	fds int     // descriptors of its processes, summed
	// active is gopasst's count of TCP connections, goroutines its
	// number of goroutines; -1 for the reference, which has no such
	// counters.
	active, goroutines int64
}

// state reads the translator's memory, descriptors and (gopasst)
// counters.
func (in *Instance) state() (connsState, error) {
	s := connsState{rss: in.rssNow(), active: -1, goroutines: -1}
	for _, pid := range in.scan() {
		if n, err := watch.FDs(pid); err == nil {
			s.fds += n
		}
	}
	c, err := in.gopasstCounters()
	if err != nil {
		return s, err
	}
	if c != nil {
		s.active, s.goroutines = c["tcp connections active"], c["goroutines"]
	}
	return s, nil
}

// rssNow returns the resident set size (VmRSS) of the translator's
// processes, summed, in MiB: what they hold now, where [Instance.RSS]
// gives the peak.
func (in *Instance) rssNow() float64 {
	var kib int
	for _, pid := range in.scan() {
		if st, err := watch.ProcStatus(pid); err == nil {
			kib += watch.KiB(st, "VmRSS")
		}
	}
	return float64(kib) / 1024
}

// dataPID returns the translator's process that serves the namespace:
// the one of its tree that is in the namespace holder's user namespace
// (gopasst's re-executed copy; the reference joins it itself), and
// true; or the translator's first process and false if none is.
func (in *Instance) dataPID() (int, bool) {
	if in.proc == nil {
		return 0, false
	}
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", in.NSPid()))
	if err == nil {
		for _, pid := range in.scan() {
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid)); err == nil && ns == want {
				return pid, true
			}
		}
	}
	return in.proc.pid(), false
}

// gopasstCounters makes gopasst's data-path process dump its counters
// (SIGUSR1) and returns them by name; nil, nil for the reference, which
// has no such dump. Only a process in the namespace's user namespace
// gets the signal: gopasst's waiting parent does not handle it and would
// die of it.
func (in *Instance) gopasstCounters() (map[string]int64, error) {
	if !strings.HasPrefix(in.tr.Name, "gopasst") {
		return nil, nil
	}
	pid, ok := in.dataPID()
	if !ok {
		return nil, errors.New("no gopasst process in the namespace's user namespace, for SIGUSR1")
	}
	off := len(in.proc.out.String())
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return nil, fmt.Errorf("SIGUSR1: %w", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := in.proc.out.String()[off:]
		if i := strings.Index(out, watch.DumpEnd); i >= 0 && strings.Contains(out[i:], "\n") {
			return watch.ParseDump(out), nil
		}
		if err := in.Err(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no counter dump within 5 s of SIGUSR1")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tcpConns opens n connections at once over path p (tcpOpeners at a
// time), each with a request and an answer checked byte for byte, holds
// them open and idle while it reads the translator's resident memory,
// then has the server end them (the server sends its FIN first, the
// client answers with its own) and waits for the translator to let go of
// them. The rows are the translator's RSS with the connections open
// (VmRSS, the largest of tcpIdleSamples readings), that RSS over the
// idle one before the connections, per connection, and the number of
// connections established.
//
// A wrong answer, a connection that does not end cleanly at both ends,
// a translator that still holds descriptors (or, gopasst, counts
// connections) after the end, or one that exits, fail the trial.
// Connections that could not be established fail it for gopasst; for
// the reference, which has limits of its own (two descriptors per
// connection, a socket and a timerfd, against its open-file limit), the
// row of established connections and the note say how far it got.
func (b *Bench) tcpConns(ctx context.Context, in *Instance, t *Trial, p Path, f Family, n int) error {
	t.Via = p.Via
	if pid, _ := in.dataPID(); pid > 0 {
		if soft, hard, err := watch.NofileLimit(pid); err == nil {
			t.note("translator open-file limit %d (hard %d)", soft, hard)
			if need := int64(2*n + tcpFDMargin); hard >= 0 && hard < need {
				t.note("hard open-file limit %d under the %d that two descriptors per connection and a margin take (the bench could not raise it)", hard, need)
			}
		}
	}
	s0, err := in.state()
	if err != nil {
		return err
	}
	tap0, _ := in.TapBytes()
	srv, err := b.startLoad(p.Receiver, in, "tcpkeep", "-l", p.Listen(f).String())
	if err != nil {
		return err
	}
	defer srv.Kill()
	cl, err := b.startLoad(p.Sender, in, "tcpopen", "-to", p.To(f).String(), "-flows", strconv.Itoa(n))
	if err != nil {
		return err
	}
	defer cl.Kill()
	// The client is ready once every connection is established and
	// answered, or it gave up.
	opened, err := cl.Snap()
	if err != nil {
		return err
	}
	est := opened.Msgs
	label := fmt.Sprintf("%s, %s", p.Label, f.Label)
	t.note("%d of %d connections established and answered in %.2f s (%.0f/s)",
		est, n, opened.Secs, float64(est)/max(opened.Secs, 1e-9))
	var bad uint64
	if est < uint64(n) {
		t.note("%d connections not established (client errors %d: %s)", uint64(n)-est, opened.Errors, opened.LastErr)
		if strings.HasPrefix(t.Translator, "gopasst") {
			bad += uint64(n) - est
		}
	}
	if opened.Bad > 0 {
		t.note("%d wrong answers", opened.Bad)
		bad += opened.Bad
	}
	// exited ends the trial of a translator that exited: the row of
	// established connections stays, the note says what it printed.
	exited := func(when string) bool {
		if in.Err() == nil {
			return false
		}
		out := "nothing"
		if lines := distinctLines(in.proc.out.String()); lines != "" {
			out = oneLine(lines)
		}
		t.note("%s exited (%v) %s, after printing %s", t.Translator, in.proc.cmd.ProcessState, when, out)
		t.Bad = max(bad, 1)
		t.add(secTCPConns, fmt.Sprintf("TCP connections established, of %s, %s", commas(n), label), "connections ↑", float64(est))
		return true
	}
	if exited("while the connections opened") {
		return nil
	}
	if err := sleep(ctx, tcpIdleSettle); err != nil {
		return err
	}
	var rss float64
	for i := range tcpIdleSamples {
		if i > 0 {
			if err := sleep(ctx, tcpIdleEvery); err != nil {
				return err
			}
		}
		rss = max(rss, in.rssNow())
	}
	if exited("with the connections open") {
		return nil
	}
	s1, err := in.state()
	if err != nil {
		return err
	}
	peak := in.RSS()
	_, drop0 := in.TapBytes()
	endStart := time.Now()
	if _, err := io.WriteString(srv.in, "stop\n"); err != nil {
		return fmt.Errorf("load %s: %w", srv.name, err)
	}
	ended, err := srv.Final(tcpCloseWait + 10*time.Second)
	if err != nil {
		return err
	}
	endSecs := time.Since(endStart).Seconds()
	_, drop1 := in.TapBytes()
	closed, err := cl.Stop()
	if err != nil {
		return err
	}
	// The translator lets go of a connection once both ends are closed
	// and acknowledged.
	var s2 connsState
	drained := false
	for deadline := time.Now().Add(tcpDrainWait); ; {
		if exited("after the connections ended") {
			return nil
		}
		if s2, err = in.state(); err != nil {
			return err
		}
		if drained = s2.fds <= s0.fds+tcpFDSlack && s2.active <= s0.active; drained || time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	if exited("after the connections ended") {
		return nil
	}
	tap1, _ := in.TapBytes()
	t.TapBytes = tap1 - tap0
	t.Moved = est * (tcpReqLen + tcpRespLen)
	// SYN, SYN-ACK, the request, the answer and the two FINs at least,
	// per connection, and their payload.
	t.checkVia(est * (6*tcpFrameMin + tcpReqLen + tcpRespLen))
	t.note("the server accepted %d; they ended in %.2f s, tap drops meanwhile %d", ended.Msgs, endSecs, drop1-drop0)
	t.note("translator RSS %.1f MiB before, %.1f MiB with the connections open (peak %.1f MiB)", s0.rss, rss, peak)
	t.note("translator descriptors %d before, %d open, %d after", s0.fds, s1.fds, s2.fds)
	if s1.active >= 0 {
		t.note("gopasst TCP connections %d before, %d open, %d after; goroutines %d, %d, %d",
			s0.active, s1.active, s2.active, s0.goroutines, s1.goroutines, s2.goroutines)
	}
	if closed.Dgrams < est || closed.Bad > opened.Bad {
		t.note("the client saw %d of %d connections end cleanly (%d not ended in time, %d ended otherwise)",
			closed.Dgrams, est, closed.Lost, closed.Bad-opened.Bad)
	}
	if ended.Dgrams < est || ended.Bad > 0 {
		t.note("the server saw %d of %d connections end cleanly (%d not ended in time, %d ended otherwise; %s)",
			ended.Dgrams, est, ended.Lost, ended.Bad, ended.LastErr)
	}
	// Every connection established must have ended cleanly at both ends.
	bad += (est - min(est, closed.Dgrams)) + (est - min(est, ended.Dgrams))
	if !drained {
		t.note("the translator still holds %d descriptors more than before %v after the end", s2.fds-s0.fds, tcpDrainWait)
		bad += uint64(max(s2.fds-s0.fds-tcpFDSlack, 1))
		if s2.active > s0.active {
			bad += uint64(s2.active - s0.active)
		}
	}
	t.Bad = bad
	t.add(secTCPConns, fmt.Sprintf("TCP RSS with %s connections open, idle, %s", commas(n), label), "MiB ↓", rss)
	if est > 0 {
		t.add(secTCPConns, fmt.Sprintf("TCP RSS per open connection (over idle), %s connections, %s", commas(n), label),
			"KiB ↓", (rss-s0.rss)*1024/float64(est))
	}
	t.add(secTCPConns, fmt.Sprintf("TCP connections established, of %s, %s", commas(n), label), "connections ↑", float64(est))
	return nil
}

// distinctLines returns the lines of s, each once, in order, with how
// many times it came if more than once, joined by "; ".
func distinctLines(s string) string {
	var order []string
	count := map[string]int{}
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		if count[l] == 0 {
			order = append(order, l)
		}
		count[l]++
	}
	for i, l := range order {
		if count[l] > 1 {
			order[i] = fmt.Sprintf("%s (×%d)", l, count[l])
		}
	}
	return strings.Join(order, "; ")
}

// tcpNetwork returns the Go network name of ap's family.
func tcpNetwork(ap netip.AddrPort) string {
	if ap.Addr().Unmap().Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// runTCPOpen opens o.flows connections to o.to, tcpOpeners at a time,
// each with one request and its answer (a wrong answer counts in Bad, a
// connection that fails or times out in Errors), for at most
// tcpOpenBudget; then it is ready, with Msgs the connections established
// and Secs the time it took, and holds them, idle, until the server ends
// them: a clean end of the stream, with no data, counts in Dgrams and the
// client closes its end; data or a reset count in Bad. On "stop" the
// connections not ended yet count in Lost.
func runTCPOpen(o loadOpts, c *control) (Counters, error) {
	if o.flows < 1 {
		return Counters{}, errors.New("tcpopen: -flows must be positive")
	}
	var st stats
	var lost atomic.Uint64
	var secs float64
	snap := func() Counters {
		s := st.snapshot()
		s.Secs, s.Lost = secs, lost.Load()
		return s
	}
	nonce := rand.Uint64()
	d := &net.Dialer{KeepAlive: -1}
	var mu sync.Mutex
	var conns []net.Conn
	var holders sync.WaitGroup
	hold := func(conn net.Conn) {
		defer conn.Close()
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		switch {
		case n == 0 && errors.Is(err, io.EOF):
			st.dgrams.Add(1)
		case errors.Is(err, os.ErrDeadlineExceeded):
			lost.Add(1)
		default:
			if err != nil {
				st.fail(err)
			}
			st.bad.Add(1)
		}
	}
	start := time.Now()
	budget := start.Add(tcpOpenBudget)
	var next atomic.Int64
	var openers sync.WaitGroup
	for range min(tcpOpeners, o.flows) {
		openers.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= o.flows || time.Now().After(budget) || c.stopped() {
					return
				}
				conn, ok, err := tcpOpenOne(d, o.to, tcpRequest(nonce, i), budget)
				if err != nil {
					st.fail(err)
					continue
				}
				if !ok {
					st.bad.Add(1)
					conn.Close()
					continue
				}
				st.msgs.Add(1)
				st.bytes.Add(tcpRespLen)
				mu.Lock()
				conns = append(conns, conn)
				mu.Unlock()
				holders.Go(func() { hold(conn) })
			}
		})
	}
	openers.Wait()
	secs = time.Since(start).Seconds()
	c.start(snap)
	<-c.stop
	mu.Lock()
	for _, conn := range conns {
		_ = conn.SetReadDeadline(time.Now())
	}
	mu.Unlock()
	holders.Wait()
	return snap(), nil
}

// tcpOpenOne connects to to, sends req and reads the answer, within
// tcpOpenTimeout and before budget; ok reports whether the answer was
// right. The connection returned has no deadline.
func tcpOpenOne(d *net.Dialer, to netip.AddrPort, req []byte, budget time.Time) (conn net.Conn, ok bool, err error) {
	if err := checkTarget(to); err != nil {
		return nil, false, err
	}
	deadline := time.Now().Add(tcpOpenTimeout)
	if budget.Before(deadline) {
		deadline = budget
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	conn, err = d.DialContext(ctx, tcpNetwork(to), to.String())
	if err != nil {
		return nil, false, err
	}
	fail := func(err error) (net.Conn, bool, error) {
		conn.Close()
		return nil, false, err
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return fail(err)
	}
	if _, err := conn.Write(req); err != nil {
		return fail(fmt.Errorf("request: %w", err))
	}
	resp := make([]byte, tcpRespLen)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return fail(fmt.Errorf("answer: %w", err))
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return fail(err)
	}
	return conn, bytes.Equal(resp, tcpAnswer(req)), nil
}

// runTCPKeep accepts connections on o.listen, counting them in Msgs,
// answers each one's request (a request without tcpReqMagic counts in
// Bad) and keeps them open until stopped. Then it ends its side of every
// one (shutdown, its FIN first) and waits up to tcpCloseWait for the
// clients to end theirs: a clean end of the stream counts in Dgrams,
// data, a reset or an end before the server's in Bad, no end in time in
// Lost.
func runTCPKeep(o loadOpts, c *control) (Counters, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), tcpNetwork(o.listen), o.listen.String())
	if err != nil {
		return Counters{}, err
	}
	var st stats
	var lost atomic.Uint64
	snap := func() Counters {
		s := st.snapshot()
		s.Lost = lost.Load()
		return s
	}
	var ending atomic.Bool
	var mu sync.Mutex
	var conns []*net.TCPConn
	var wg sync.WaitGroup
	serveOne := func(conn *net.TCPConn) {
		defer conn.Close()
		req := make([]byte, tcpReqLen)
		if err := conn.SetReadDeadline(time.Now().Add(tcpOpenTimeout)); err != nil {
			st.fail(err)
			return
		}
		if _, err := io.ReadFull(conn, req); err != nil {
			st.fail(fmt.Errorf("request: %w", err))
			st.bad.Add(1)
			return
		}
		if !bytes.Equal(req[:len(tcpReqMagic)], tcpReqMagic[:]) {
			st.bad.Add(1)
			return
		}
		if _, err := conn.Write(tcpAnswer(req)); err != nil {
			st.fail(fmt.Errorf("answer: %w", err))
			st.bad.Add(1)
			return
		}
		st.bytes.Add(tcpRespLen)
		mu.Lock()
		if !ending.Load() {
			_ = conn.SetReadDeadline(time.Time{})
		}
		mu.Unlock()
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		switch {
		case n == 0 && errors.Is(err, io.EOF) && ending.Load():
			st.dgrams.Add(1)
		case errors.Is(err, os.ErrDeadlineExceeded) && ending.Load():
			lost.Add(1)
		default:
			if err != nil {
				st.fail(err)
			}
			st.bad.Add(1)
		}
	}
	c.start(snap)
	go func() {
		<-c.stop
		ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if c.stopped() {
				break
			}
			st.fail(err)
			time.Sleep(time.Millisecond)
			continue
		}
		st.msgs.Add(1)
		tc := conn.(*net.TCPConn)
		mu.Lock()
		conns = append(conns, tc)
		mu.Unlock()
		wg.Go(func() { serveOne(tc) })
	}
	mu.Lock()
	ending.Store(true)
	end := time.Now().Add(tcpCloseWait)
	for _, conn := range conns {
		_ = conn.SetReadDeadline(end)
		_ = conn.CloseWrite()
	}
	mu.Unlock()
	wg.Wait()
	return snap(), nil
}
