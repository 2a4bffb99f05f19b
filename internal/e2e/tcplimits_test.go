package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// Spoofed sources of the SYN flood: in the namespace's subnets, owned by
// no one, so that the namespace's kernel (forwarding off) drops gopasst's
// SYN-ACKs to them without a word: every SYN leaves a half-open
// connection in gopasst until its SYN-ACK retries end (about 15 s).
const (
	spoof4 = "192.0.2.200"
	spoof6 = "2001:db8::200"
)

// TestTCPSynFlood injects 100,000 SYNs (spoofed sources, distinct source
// ports, IPv4 and IPv6 alternating, through a packet socket on the
// namespace's interface) towards a server on the host's loopback that
// accepts and closes every connection (through the gateway address),
// once with --max-flows 1000 and once with the defaults (the table of
// 65,536, or the open-file limit when lower), while a connection opened
// before keeps streaming 2 MiB/s. Every SYN that reached gopasst must be
// accounted for: a connection created, a "table-full" drop or a
// "socket-error" drop; the active connections never exceed the table,
// every descriptor beyond the idle ones belongs to a connection, peak
// resident memory (VmHWM, gopasst built without the race detector) stays
// under maxRSSMiB. With --max-flows 1000 the table must have filled, and
// a new connection from the namespace must get no answer while it is.
// Once the flood's connections expire (within 25 s) only the streaming
// one is left and the descriptors are back to their idle count plus
// its one; a new connection then works byte-exact, and the streaming
// connection got every byte byte-exact, never stalling for 8 s.
func TestTCPSynFlood(t *testing.T) {
	for _, c := range []struct {
		name     string
		args     []string
		maxFlows int64
	}{
		{"max-flows-1000", []string{"--max-flows", "1000"}, 1000},
		{"defaults", nil, 65536},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			synFlood(t, c.args, c.maxFlows)
		})
	}
}

func synFlood(t *testing.T, args []string, maxFlows int64) {
	sb := sandbox.New(t)
	const attempts = 100000
	floodPort, afterPort := nextPort(), nextPort()
	acc := hostPlace(sb).startHelper(t, sb, "acceptor", "-l", fmt.Sprintf("127.0.0.1:%d,[::1]:%d", floodPort, floodPort))
	acc.WaitLine(t, "ready", 10*time.Second)
	after := hostPlace(sb).start(t, sb, "serve", "-l", ap(families[0].loopback, afterPort), "-mode", "echo", "-count", "1", "-timeout", "120s")
	after.WaitLine(t, "ready", 10*time.Second)
	n := startNS(t, sb, gopasstPlain, nil, false, fwdArgs("", "", args...)...)
	base := n.idleFDs(t)
	_, nofile, err := watch.NofileLimit(n.gpid)
	if err != nil {
		t.Fatal(err)
	}
	by := startBystander(t, n, 2<<20)
	time.Sleep(300 * time.Millisecond)
	c0 := n.counters(t)

	fl := n.place().startHelper(t, sb, "synflood", "-if", "eth0", "-count", strconv.Itoa(attempts), "-dport", strconv.Itoa(int(floodPort)),
		"-src4", spoof4, "-src6", spoof6)
	floodStart := time.Now()
	var maxFDs int
	var maxActive int64
	sample := func() map[string]int64 {
		c := n.counters(t)
		maxActive = max(maxActive, c[tcpActive])
		maxFDs = max(maxFDs, n.fds(t))
		return c
	}
	for done := false; !done; {
		select {
		case <-fl.Done():
			done = true
		case <-time.After(200 * time.Millisecond):
			sample()
		}
	}
	nSyn, dropped := flooded(t, fl)
	floodEnd := time.Now()
	// Let gopasst read what the tap still holds (the bystander keeps
	// it busy: "tap frames in" never holds still).
	time.Sleep(500 * time.Millisecond)
	c1 := sample()
	fds := n.fds(t)
	st, err := watch.ProcStatus(n.gpid)
	if err != nil {
		t.Fatal(err)
	}
	hwm := float64(watch.KiB(st, "VmHWM")) / 1024
	created := c1[tcpCreated] - c0[tcpCreated]
	full := c1["drop table-full"] - c0["drop table-full"]
	sockErr := c1["drop socket-error"] - c0["drop socket-error"]
	t.Logf("%d SYNs in %v (%d dropped on the tap), open-file limit %d: %d connections created, %d table-full, %d socket errors; peak %d active, %d descriptors (%d idle), VmHWM %.1f MiB",
		nSyn, floodEnd.Sub(floodStart).Round(time.Millisecond), dropped, nofile, created, full, sockErr, maxActive, maxFDs, base, hwm)
	if sum := created + full + sockErr; sum < nSyn-dropped || sum > nSyn {
		t.Errorf("%d created + %d table-full + %d socket errors = %d, want the %d SYNs (%d dropped on the tap)", created, full, sockErr, sum, nSyn, dropped)
	}
	// While the table is full, a new connection gets no answer (its
	// SYNs come after the accounting above).
	var fullChecked bool
	if maxFlows < 65536 && sample()[tcpActive] == maxFlows {
		r := n.place().run(t, sb, 10*time.Second, "connect", "-to", ap(families[0].gw, afterPort), "-timeout", "1s")
		var cr connectResult
		if err := jsonLine(r.stdout, `{"result"`, &cr); err != nil || cr.Result != "timeout" {
			t.Errorf("connect while the table is full: %+v (%v), want no answer\n%s", cr, err, r)
		}
		fullChecked = sample()[tcpActive] == maxFlows
	}
	if maxActive > maxFlows {
		t.Errorf("%d connections active, more than the table's %d", maxActive, maxFlows)
	}
	if extra := int64(fds-base) - c1[tcpActive]; extra < 0 || extra > 2 {
		t.Errorf("%d descriptors, %d idle, %d connections: %d belong to none", fds, base, c1[tcpActive], extra)
	}
	if hwm > maxRSSMiB {
		t.Errorf("VmHWM %.1f MiB, more than %d MiB", hwm, maxRSSMiB)
	}
	switch {
	case maxFlows < 65536:
		if maxActive != maxFlows || full == 0 {
			t.Errorf("peak %d active, %d table-full drops: the table of %d never filled", maxActive, full, maxFlows)
		}
		if !fullChecked {
			t.Logf("the flood's connections began to expire before the check of a full table ended")
		}
	case nofile >= 0 && nofile < maxFlows+int64(base):
		if sockErr == 0 || int64(maxFDs) < nofile-8 {
			t.Errorf("open-file limit %d: peak %d descriptors, %d socket errors: want the limit reached and counted", nofile, maxFDs, sockErr)
		}
	default:
		if maxActive != maxFlows || full == 0 {
			t.Errorf("peak %d active, %d table-full drops: the table of %d never filled", maxActive, full, maxFlows)
		}
	}

	n.waitState(t, 1, 0, base+1, 25*time.Second)
	t.Logf("the flood's connections gone %v after it ended", time.Since(floodEnd).Round(100*time.Millisecond))
	by.running("the flood's connections expired")
	r := n.place().run(t, sb, 20*time.Second, "client", "-to", ap(families[0].gw, afterPort), "-send", "65536", "-expect", "65536", "-timeout", "10s")
	var cr clientResult
	if err := jsonLine(r.stdout, `{"local"`, &cr); err != nil || !cr.OK {
		t.Errorf("new connection after the flood: %+v (%v)\n%s\n%s", cr, err, r, n.diag())
	}
	if by.start.After(floodStart) {
		t.Errorf("the bystander started after the flood")
	}
	br := by.finish(8 * time.Second)
	t.Logf("bystander: %d bytes byte-exact (%d during the flood), longest stall %.0f ms", br.Sent, by.sentAt(floodEnd)-by.sentAt(floodStart), br.MaxStallMs)
	n.waitState(t, 0, 0, base, 3*time.Second)
}

// TestTCPHalfOpen leaves connections half-open, both families, and
// checks that gopasst gives them up and frees them: a remote client
// connects to a -t port whose SYN the namespace never answers (a
// blackhole route to the client in the namespace; a server listens
// there, so only the route stops it), and the namespace connects to an
// address of the remote network that no one has (the remote host, not
// forwarding, drops the SYNs without a word). While they wait, gopasst
// holds one connection and one socket each. The namespace's connect must
// be refused (gopasst's RST) after its 10 s connect timeout (9.5 to
// 13 s); the remote client, accepted at once by gopasst's listener, must
// be reset once gopasst's SYN retries end (14 to 20 s); the namespace's
// servers must have seen nothing. Then no connection is left and the
// descriptors are back to their idle count.
func TestTCPHalfOpen(t *testing.T) {
	sb := sandbox.New(t)
	port, blackPort := nextPort(), nextPort()
	n := startNS(t, sb, gopasst, nil, false, fwdArgs(strconv.Itoa(int(port)), "")...)
	n.nsRun(t, "ip", "route", "add", "blackhole", "198.51.100.1/32")
	n.nsRun(t, "ip", "-6", "route", "add", "blackhole", "2001:db8:1::1/128")
	base := n.idleFDs(t)
	black := []netip.Addr{netip.MustParseAddr("198.51.100.99"), netip.MustParseAddr("2001:db8:1::99")}
	sbRun(t, sb, sb.WorldNS, "ip", "route", "add", "blackhole", "198.51.100.99/32")
	sbRun(t, sb, sb.WorldNS, "ip", "-6", "route", "add", "blackhole", "2001:db8:1::99/128")
	type pair struct{ srv, in, out *sandbox.Proc }
	var ps []pair
	for i, f := range families {
		srv := n.place().start(t, sb, "serve", "-l", ap(f.anyAddr, port), "-mode", "echo", "-count", "1", "-timeout", "40s")
		srv.WaitLine(t, "ready", 10*time.Second)
		in := worldPlace(sb).start(t, sb, "client", "-to", ap(f.host, port), "-from", ap(f.remote, 0), "-send", "1024", "-expect", "1024", "-timeout", "40s")
		out := n.place().start(t, sb, "connect", "-to", ap(black[i], blackPort), "-timeout", "30s")
		ps = append(ps, pair{srv, in, out})
	}
	time.Sleep(2 * time.Second)
	if c, fds := n.counters(t), n.fds(t); c[tcpActive] != 4 || fds != base+4 {
		t.Errorf("half-open: %q %d, %d descriptors (%d idle); want 4 and 4 more\n%s", tcpActive, c[tcpActive], fds, base, n.diag())
	}
	for i, p := range ps {
		f := families[i]
		or := finish(p.out, 30*time.Second)
		var co connectResult
		if err := jsonLine(or.stdout, `{"result"`, &co); err != nil || co.Result != "refused" || co.Ms < 9500 || co.Ms > 13000 {
			t.Errorf("%s: connect to a silent peer: %+v (%v), want refused after 9.5 to 13 s\n%s", f.name, co, err, or)
		} else {
			t.Logf("%s: connect to a silent peer refused after %.0f ms", f.name, co.Ms)
		}
		ir := finish(p.in, 40*time.Second)
		var ci clientResult
		if err := jsonLine(ir.stdout, `{"local"`, &ci); err != nil || ci.Errno != "ECONNRESET" || ci.Ms < 14000 || ci.Ms > 20000 {
			t.Errorf("%s: client of a -t port the namespace does not answer: %+v (%v), want reset after 14 to 20 s\n%s", f.name, ci, err, ir)
		} else {
			t.Logf("%s: client of the silent namespace reset after %.0f ms", f.name, ci.Ms)
		}
		_ = p.srv.Signal(syscall.SIGTERM)
		sr := finish(p.srv, 10*time.Second)
		var sum serveSummary
		if err := jsonLine(sr.stdout, `{"summary"`, &sum); err != nil || sum.Conns != 0 {
			t.Errorf("%s: the namespace's server saw %+v (%v), want nothing", f.name, sum, err)
		}
	}
	n.waitState(t, 0, 0, base, 3*time.Second)
}

// TestTCPZeroWindow closes windows for a long time, through the tap: 8
// namespace clients that never read (4 KiB receive buffers) of host
// servers that send without end, and a namespace client that reads
// nothing for 6 s, then 8 MiB. While every reader waits, gopasst
// (built without the race detector) must hold no more memory: resident
// memory under maxRSSMiB and up by less than 4 MiB from 2 s to 5 s in,
// and less than 512 KiB more to the tap in that time (the data waits in
// the host sockets, not in gopasst). Once the two readers read, both
// transfers must complete byte-exact within 15 s; once the never-readers
// are killed, every connection is gone and the descriptors are back to
// their idle count.
func TestTCPZeroWindow(t *testing.T) {
	sb := sandbox.New(t)
	const never, size = 8, 8 * mib
	n := startNS(t, sb, gopasstPlain, nil, false, fwdArgs("", "")...)
	base := n.idleFDs(t)
	f := families[0]
	pNever, pGuest := nextPort(), nextPort()
	src := hostPlace(sb).start(t, sb, "serve", "-l", ap(f.loopback, pNever), "-mode", "source", "-size", strconv.Itoa(gib),
		"-count", strconv.Itoa(never), "-quiet", "-timeout", "60s")
	src.WaitLine(t, "ready", 10*time.Second)
	var nevers []*sandbox.Proc
	for range never {
		p := n.place().startHelper(t, sb, "pausereader", "-to", ap(f.gw, pNever), "-pause", "1h", "-rcvbuf", "4096", "-closewrite")
		p.WaitLine(t, "connected", 10*time.Second)
		nevers = append(nevers, p)
	}
	srcG := hostPlace(sb).start(t, sb, "serve", "-l", ap(f.loopback, pGuest), "-mode", "source", "-size", strconv.Itoa(size), "-count", "1", "-timeout", "60s")
	srcG.WaitLine(t, "ready", 10*time.Second)
	start := time.Now()
	rg := n.place().startHelper(t, sb, "pausereader", "-to", ap(f.gw, pGuest), "-pause", "6s", "-rcvbuf", "4096", "-closewrite", "-peer-seed", serverSeed)

	var rss [2]float64
	var toTap [2]int64
	var peak float64
	for i, at := range []time.Duration{2 * time.Second, 5 * time.Second} {
		time.Sleep(time.Until(start.Add(at)))
		_, kib, err := watch.Status(n.gpid)
		if err != nil {
			t.Fatal(err)
		}
		rss[i], toTap[i] = float64(kib)/1024, n.counters(t)[tcpTapBytes]
		peak = max(peak, rss[i])
	}
	if c := n.counters(t); c[tcpActive] != never+1 {
		t.Errorf("%q %d, want %d\n%s", tcpActive, c[tcpActive], never+1, n.diag())
	}
	t.Logf("windows closed: RSS %.1f MiB at 2 s, %.1f MiB at 5 s; %d bytes to the tap in between", rss[0], rss[1], toTap[1]-toTap[0])
	if peak > maxRSSMiB || rss[1]-rss[0] > 4 || toTap[1]-toTap[0] > 512*kib {
		t.Errorf("while every window is closed: RSS %.1f then %.1f MiB, %d bytes to the tap; want under %d MiB, up by less than 4, less than 512 KiB",
			rss[0], rss[1], toTap[1]-toTap[0], maxRSSMiB)
	}
	for _, c := range []struct {
		name string
		p    *sandbox.Proc
	}{{"namespace reader", rg}} {
		line, err := c.p.AwaitLine(`{"received"`, time.Until(start.Add(21*time.Second)))
		var r readResult
		if err == nil {
			err = json.Unmarshal([]byte(line), &r)
		}
		if err != nil || !r.OK || r.Received != size {
			t.Errorf("%s after 6 s of closed window: %+v (%v), want %d bytes byte-exact within 15 s\n%s", c.name, r, err, size, n.diag())
		} else {
			t.Logf("%s: %d bytes byte-exact, done %v after the start", c.name, r.Received, time.Since(start).Round(time.Millisecond))
		}
	}
	if sr := finish(srcG, 20*time.Second); sr.code != 0 {
		t.Errorf("host source to the paused namespace reader: %s", sr)
	}
	for _, p := range nevers {
		p.Kill()
	}
	n.waitState(t, 0, 0, base, 5*time.Second)
}

// TestTCPHostWindowClosed is the other way of TestTCPZeroWindow: a host
// server (4 KiB receive buffer) reads nothing for 6 s of the 8 MiB a
// namespace client sends (through the gateway address), then reads to
// the end: everything must arrive byte-exact within 15 s of the start.
// The same transfer without the pause takes well under a second.
func TestTCPHostWindowClosed(t *testing.T) {
	sb := sandbox.New(t)
	const size = 8 * mib
	n := startNS(t, sb, gopasst, nil, false, fwdArgs("", "")...)
	f := families[0]
	port := nextPort()
	rh := hostPlace(sb).startHelper(t, sb, "pausereader", "-l", ap(f.loopback, port), "-pause", "6s", "-rcvbuf", "4096", "-peer-seed", clientSeed)
	rh.WaitLine(t, "ready", 10*time.Second)
	start := time.Now()
	cli := n.place().start(t, sb, "client", "-to", ap(f.gw, port), "-send", strconv.Itoa(size), "-expect", "0", "-timeout", "40s")

	line, err := rh.AwaitLine(`{"received"`, 21*time.Second)
	var r readResult
	if err == nil {
		err = json.Unmarshal([]byte(line), &r)
	}
	if err != nil || !r.OK || r.Received != size || time.Since(start) > 15*time.Second {
		t.Errorf("host reader after 6 s of closed window: %+v (%v) after %v, want %d bytes byte-exact within 15 s\n%s", r, err, time.Since(start), size, n.diag())
	}
	if cr := finish(cli, 20*time.Second); cr.code != 0 {
		t.Errorf("namespace client: %s", cr)
	}
}
