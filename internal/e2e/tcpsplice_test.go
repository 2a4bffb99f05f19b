package e2e_test

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TCP splice (pasta): a client on the host's loopback connecting to a -t
// port is connected, socket to socket, to the namespace's own address (its
// loopback with --host-lo-to-ns-lo), from the client's port; a client on
// the namespace's loopback connecting to a -T port is connected to the
// host's loopback, from the client's own address and port. No byte of it
// enters the tap.

// Names of gopasst's counters the splice tests read (see
// stats.Counters.String).
const (
	tcpSpliceBytes  = "tcp bytes socket to socket"
	tcpActiveSplice = "tcp connections active (splice)"
	tcpTapBytes     = "tcp bytes to tap"
	tcpHostBytes    = "tcp bytes to host"
	tcpTapSegments  = "tcp segments to tap"
	tcpHostSegments = "tcp segments to host"
)

// spliceCounterProblems checks gopasst's counters after conns spliced
// connections that moved bytes payload bytes in all (both ways): at
// least conns connections created, exactly bytes moved socket to socket
// (where gopasst has that counter), and no TCP payload to or from the
// tap. It returns what is wrong.
func spliceCounterProblems(after, delta map[string]int64, bytes, conns int64) []string {
	var p []string
	if _, known := after[tcpCreated]; !known || delta[tcpCreated] < conns {
		p = append(p, fmt.Sprintf("gopasst's %q went up by %d (counter known: %v), want at least %d", tcpCreated, delta[tcpCreated], known, conns))
	}
	if _, known := after[tcpSpliceBytes]; known && delta[tcpSpliceBytes] != bytes {
		p = append(p, fmt.Sprintf("gopasst's %q went up by %d, want %d (the bytes both ways): not spliced, or counted wrong", tcpSpliceBytes, delta[tcpSpliceBytes], bytes))
	}
	for _, k := range []string{tcpTapBytes, tcpHostBytes} {
		if _, known := after[k]; !known || delta[k] != 0 {
			p = append(p, fmt.Sprintf("gopasst's %q went up by %d (counter known: %v), want 0: the connection went through the tap", k, delta[k], known))
		}
	}
	return p
}

// portBlock is a range of consecutive ports taken from nextPort, for the
// forwards of one gopasst, handed out one by one.
type portBlock struct{ first, last, next uint16 }

func newPortBlock(n int) *portBlock {
	last := uint16(tcpPort.Add(uint32(n)))
	first := last - uint16(n) + 1
	return &portBlock{first, last, first}
}

// spec is the block as a port specification: "FIRST-LAST".
func (b *portBlock) spec() string { return fmt.Sprintf("%d-%d", b.first, b.last) }

// take returns the next port of the block.
func (b *portBlock) take(t *testing.T) uint16 {
	t.Helper()
	if b.next > b.last || b.next < b.first {
		t.Fatalf("port block %s used up", b.spec())
	}
	p := b.next
	b.next++
	return p
}

// spliceNS is a pasta namespace with -t and -T forwards of a block of
// ports each (for the splice paths), with or without --host-lo-to-ns-lo.
type spliceNS struct {
	*tcpNS
	hostLo bool
	t, T   *portBlock
}

// startSpliceNS starts gopasst with a block of ports for -t and one for
// -T, and extra arguments.
func startSpliceNS(t *testing.T, sb *sandbox.Sandbox, hostLo bool, extra ...string) *spliceNS {
	t.Helper()
	s := &spliceNS{hostLo: hostLo, t: newPortBlock(32), T: newPortBlock(32)}
	args := append([]string{"-t", s.t.spec(), "-T", s.T.spec()}, extra...)
	if hostLo {
		args = append(args, "--host-lo-to-ns-lo")
	}
	s.tcpNS = startTCPNS(t, sb, args...)
	return s
}

// spliceModes are the two ways -t splices: to the namespace's address,
// and to its loopback.
var spliceModes = []struct {
	name   string
	hostLo bool
}{{"default", false}, {"host-lo-to-ns-lo", true}}

// splicePath is one spliced way across gopasst, for one family: from a
// client on the host's loopback to a -t port, served in the namespace
// ("host-to-ns"), or from a client on the namespace's loopback to a -T
// port, served on the host's loopback ("ns-to-host").
type splicePath struct {
	name           string
	opt            string // "-t" or "-T"
	s              *spliceNS
	f              family
	server, client place
	ports          *portBlock
	// bind is where the server listens: the namespace's wildcard
	// address, the host's loopback.
	bind netip.Addr
	// peer is the address the server sees its client at.
	peer netip.Addr
}

// paths returns the spliced paths of family f: -t, then -T.
func (s *spliceNS) paths(f family) []splicePath {
	nsAddr := f.host // the namespace's own address, copied from the host
	if s.hostLo {
		nsAddr = f.loopback
	}
	return []splicePath{
		{"host-to-ns", "-t", s, f, s.place(), hostPlace(s.sb), s.t, f.anyAddr, nsAddr},
		{"ns-to-host", "-T", s, f, hostPlace(s.sb), s.place(), s.T, f.loopback, f.loopback},
	}
}

// transfer returns a spliced transfer on a new port of p (see transfer):
// the client bound to a port of its own on its loopback, the server
// seeing it at p.peer and that port.
func (p splicePath) transfer(t *testing.T, mode string, send, reply int64) transfer {
	t.Helper()
	port, cport := p.ports.take(t), nextPort()
	return transfer{server: p.server, client: p.client, listen: ap(p.bind, port), to: ap(p.f.loopback, port), from: ap(p.f.loopback, cport),
		mode: mode, send: send, reply: reply, wantPeer: netip.AddrPortFrom(p.peer, cport), peerIsClient: p.peer == p.f.loopback,
		stall: stallBound, spliced: true}
}

// eachPath runs fn as a subtest "MODE/FAMILY/PATH" for every mode (a
// gopasst each, started with extra), family and spliced path; with
// onlyDefault, for the default mode only (--host-lo-to-ns-lo changes
// only where -t connects).
func eachPath(t *testing.T, sb *sandbox.Sandbox, onlyDefault bool, fn func(t *testing.T, p splicePath), extra ...string) {
	t.Helper()
	for _, m := range spliceModes {
		if onlyDefault && m.hostLo {
			continue
		}
		s := startSpliceNS(t, sb, m.hostLo, extra...)
		for _, f := range families {
			for _, p := range s.paths(f) {
				if m.hostLo && p.opt == "-T" {
					continue
				}
				t.Run(m.name+"/"+f.name+"/"+p.name, func(t *testing.T) { fn(t, p) })
			}
		}
	}
}

// TestTCPSpliceTransfers moves 10 MiB across each spliced path (-t from
// the host's loopback into the namespace, with and without
// --host-lo-to-ns-lo; -T from the namespace's loopback to the host's),
// both families, in three shapes: the client sends (and half-closes), the
// server sends, both at once on one connection (an echo). Every byte must
// arrive exactly once, in order (pattern and SHA-256 checked by both
// ends); the server must see its client where the path puts it (the
// namespace's own address, or its loopback, and the client's port behind
// -t; the client's own loopback address and port behind -T), and the
// echo, sent back to that address, must reach the client. gopasst's
// counters must show the connection spliced: created, every byte counted
// socket to socket, none to or from the tap.
func TestTCPSpliceTransfers(t *testing.T) {
	sb := sandbox.New(t)
	eachPath(t, sb, false, func(t *testing.T, p splicePath) {
		mk := func(mode string, send, reply int64) transfer { return p.transfer(t, mode, send, reply) }
		for _, c := range shapes(mk, 10*mib, "client-sends", "server-sends") {
			t.Run(c.name, func(t *testing.T) {
				if o := c.tr.run(t, p.s.tcpNS); o.ok {
					t.Logf("%.0f ms, %s; server saw %s", o.c.Ms, rate(o.c.Sent+o.c.Received, o.c.Ms), o.s.Peer)
				}
			})
		}
	})
}

// TestTCPSpliceGiB moves 1 GiB from the client to the server across each
// spliced path, -t (host's loopback to the namespace) and -T (the
// namespace's loopback to the host's), both families, byte-exact and
// spliced (see TestTCPSpliceTransfers), and logs how long each took
// (about 6 s each on a loaded 2-core machine, gopasst built with -race).
// Skipped with -short.
func TestTCPSpliceGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB transfers are skipped with -short")
	}
	sb := sandbox.New(t)
	s := startSpliceNS(t, sb, false)
	for _, f := range families {
		for _, p := range s.paths(f) {
			t.Run(f.name+"/"+p.name, func(t *testing.T) {
				tr := p.transfer(t, "sink", gib, 0)
				tr.limit, tr.stall = 120*time.Second, 0
				if o := tr.run(t, s.tcpNS); o.ok {
					t.Logf("1 GiB in %.1f s, %s (gopasst built with the race detector: %v)", o.c.Ms/1000, rate(gib, o.c.Ms), raceBuild)
				}
			})
		}
	}
}

// TestTCPSpliceHalfClose checks half-closed spliced connections on every
// path and family: the client sends 256 KiB and half-closes; the server
// reads to EOF, waits half a second and only then replies 64 KiB and
// closes. Both ends must get everything byte-exact, spliced, and the
// client the reply after its own FIN, on the connection it half-closed.
func TestTCPSpliceHalfClose(t *testing.T) {
	sb := sandbox.New(t)
	eachPath(t, sb, false, func(t *testing.T, p splicePath) {
		p.transfer(t, "sink", 0, 0).runHalfClose(t, p.s.tcpNS, 500*time.Millisecond)
	})
}

// TestTCPSpliceReset checks that an abort crosses a spliced connection as
// an abort, on every path and family: the resetter (the client, then the
// server) reads 1 MiB of the stream the victim sends without end, then
// closes with SO_LINGER 0; the victim must see ECONNRESET within 1 s. And
// a connection to a forwarded port no one listens on behind (in the
// namespace for -t, on the host's loopback for -T), which the client's
// kernel completes with gopasst's listener, must be reset or closed
// within 1 s, with no connection left in gopasst.
func TestTCPSpliceReset(t *testing.T) {
	sb := sandbox.New(t)
	eachPath(t, sb, false, func(t *testing.T, p splicePath) {
		for _, resetterIsClient := range []bool{true, false} {
			name := map[bool]string{true: "client-resets", false: "server-resets"}[resetterIsClient]
			t.Run(name, func(t *testing.T) {
				port := p.ports.take(t)
				runReset(t, p.s.tcpNS, p.server, p.client, ap(p.bind, port), ap(p.f.loopback, port), resetterIsClient)
			})
		}
		t.Run("no-listener", func(t *testing.T) {
			where := map[string]string{"-t": "in the namespace", "-T": "on the host's loopback"}[p.opt]
			closedForward(t, p.s.tcpNS, p.client, ap(p.f.loopback, p.ports.take(t)), p.opt, where)
			waitNoConnections(t, p.s.tcpNS, 2*time.Second)
		})
	})
}

// waitNoConnections waits up to limit for gopasst's count of active TCP
// connections to fall to zero.
func waitNoConnections(t *testing.T, n *tcpNS, limit time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		c := n.counters(t)
		if c[tcpActive] == 0 && c[tcpActiveSplice] == 0 {
			return
		}
		if time.Since(start) > limit {
			t.Errorf("%v on, %q is %d and %q %d, want 0\n%s", limit, tcpActive, c[tcpActive], tcpActiveSplice, c[tcpActiveSplice], n.diag())
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTCPSplicePeer checks where spliced connections land and whom the
// server sees, per family: behind -t by default, a server bound to the
// namespace's own address sees its client at that address and the
// client's port, and one bound to the namespace's loopback only is not
// reached (the client is reset or closed within 1 s); with
// --host-lo-to-ns-lo the other way round, the client at the loopback and
// its port. Behind -T, a server bound to the host's wildcard address sees
// the client at its own loopback address and port. Each echo (64 KiB)
// must reach the client byte-exact, spliced.
func TestTCPSplicePeer(t *testing.T) {
	sb := sandbox.New(t)
	for _, m := range spliceModes {
		s := startSpliceNS(t, sb, m.hostLo)
		for _, f := range families {
			fwdT, fwdTT := s.paths(f)[0], s.paths(f)[1]
			reached, missed, names := f.host, f.loopback, [2]string{"own-address", "loopback"}
			if m.hostLo {
				reached, missed, names = f.loopback, f.host, [2]string{"loopback", "own-address"}
			}
			t.Run(m.name+"/"+f.name+"/host-to-ns/bound-"+names[0], func(t *testing.T) {
				p := fwdT
				p.bind = reached
				p.transfer(t, "echo", 64*kib, 0).run(t, s.tcpNS)
			})
			t.Run(m.name+"/"+f.name+"/host-to-ns/bound-"+names[1], func(t *testing.T) {
				port := s.t.take(t)
				srv := s.place().start(t, sb, "serve", "-l", ap(missed, port), "-mode", "echo", "-timeout", "20s")
				srv.WaitLine(t, "ready", 10*time.Second)
				closedForward(t, s.tcpNS, hostPlace(sb), ap(f.loopback, port), "-t", "at the address -t connects to")
				_ = srv.Signal(os.Interrupt)
				var sum serveSummary
				if sr := finish(srv, 10*time.Second); jsonLine(sr.stdout, `{"summary"`, &sum) != nil || sum.Conns != 0 {
					t.Errorf("a server on %s got %+v, want no connection\n%s", ap(missed, port), sum, sr)
				}
			})
			if !m.hostLo {
				t.Run(m.name+"/"+f.name+"/ns-to-host/bound-wildcard", func(t *testing.T) {
					p := fwdTT
					p.bind = f.anyAddr
					p.transfer(t, "echo", 64*kib, 0).run(t, s.tcpNS)
				})
			}
		}
	}
}

// TestTCPSpliceManyConnections opens, per family and direction (-t from
// the host's loopback into the namespace, -T from the namespace's
// loopback to the host's), 1,000 spliced connections at once, each
// echo-checked and all held open together (gopasst's counters of active
// connections, and of spliced ones, must then be up by 1,000), closes
// them, then makes 10,000 short echo-checked connections one after
// another; the echo server must have served all 11,000 byte-exact, all of
// it socket to socket (200 bytes a connection, none through the tap).
// Afterwards no connection may be left and gopasst's descriptors (each
// spliced connection holds two sockets and two pipes) must be back to
// their count before, within 10 s.
func TestTCPSpliceManyConnections(t *testing.T) {
	sb := sandbox.New(t)
	const concurrent, sequential = 1000, 10000
	needNofile(t, 6*concurrent+100, fmt.Sprintf("%d spliced connections at once (6 descriptors each in gopasst)", concurrent))
	// No automatic forwarding, whose listeners would come and go.
	s := startSpliceNS(t, sb, false, "-u", "none", "-U", "none")
	time.Sleep(500 * time.Millisecond)
	base := s.counters(t)
	baseFDs := s.fds(t)
	for _, f := range families {
		for _, p := range s.paths(f) {
			t.Run(f.name+"/"+p.name, func(t *testing.T) {
				port := p.ports.take(t)
				before := s.counters(t)
				held := manyConnections(t, s.tcpNS, p.server, ap(p.bind, port), p.client, ap(f.loopback, port), concurrent, sequential, base, baseFDs)
				if got := held[tcpActiveSplice] - base[tcpActiveSplice]; got != concurrent {
					t.Errorf("with %d connections held open, %q is up by %d", concurrent, tcpActiveSplice, got)
				}
				after := s.counters(t)
				delta := map[string]int64{}
				for k, v := range after {
					delta[k] = v - before[k]
				}
				for _, pr := range spliceCounterProblems(after, delta, 200*(concurrent+sequential), concurrent+sequential) {
					t.Error(pr)
				}
			})
		}
	}
}

// TestTCPSpliceDisabled checks --no-splice: connections from the host's
// loopback to a -t port go through the tap instead, both families, 10 MiB
// in the three shapes (see TestTCPSpliceTransfers) byte-exact; the server
// in the namespace sees the gateway address and the client's port;
// gopasst's counters of TCP bytes and segments to the tap (what the
// client sends) and from it (what the server sends) rise, and nothing is
// spliced.
func TestTCPSpliceDisabled(t *testing.T) {
	sb := sandbox.New(t)
	ports := newPortBlock(16)
	n := startTCPNS(t, sb, "--no-splice", "-t", ports.spec())
	for _, f := range families {
		mk := func(mode string, send, reply int64) transfer {
			port, cport := ports.take(t), nextPort()
			return transfer{server: n.place(), client: hostPlace(sb), listen: ap(f.anyAddr, port), to: ap(f.loopback, port), from: ap(f.loopback, cport),
				mode: mode, send: send, reply: reply, wantPeer: netip.AddrPortFrom(f.gw, cport), stall: stallBound}
		}
		for _, c := range shapes(mk, 10*mib, "client-sends", "server-sends") {
			t.Run(f.name+"/"+c.name, func(t *testing.T) {
				o := c.tr.run(t, n)
				if !o.ok {
					return
				}
				// Segments with payload are counted: the client's data
				// goes to the tap, the server's comes from it.
				toTap, toHost := o.delta[tcpTapSegments], o.delta[tcpHostSegments]
				if (c.tr.send > 0) != (toTap > 0) || (c.tr.reply > 0) != (toHost > 0) || o.delta[tcpSpliceBytes] != 0 || o.delta[tcpCreated] < 1 {
					t.Errorf("with --no-splice, %q up by %d and %q by %d (want more for the %d bytes the client sent and the %d the server did), %q by %d (want 0), %q by %d (want 1)\n%s",
						tcpTapSegments, toTap, tcpHostSegments, toHost, c.tr.send, c.tr.reply, tcpSpliceBytes, o.delta[tcpSpliceBytes], tcpCreated, o.delta[tcpCreated], n.diag())
				}
				t.Logf("%.0f ms, %s, %d segments to the tap, %d from it, %s", o.c.Ms, rate(o.c.Sent+o.c.Received, o.c.Ms), toTap, toHost, o.retransmits())
			})
		}
	}
	if c := n.counters(t); c[tcpActiveSplice] != 0 || c[tcpSpliceBytes] != 0 {
		t.Errorf("with --no-splice, %q is %d and %q %d, want 0", tcpActiveSplice, c[tcpActiveSplice], tcpSpliceBytes, c[tcpSpliceBytes])
	}
}

// TestTCPSpliceAuto checks automatic forwarding on the splice paths, both
// families: with "-t auto", a server that starts listening in the
// namespace after gopasst is reachable from the host's loopback within
// 2 s, spliced (its echo byte-exact, counted socket to socket, none of it
// through the tap), and within 2 s of the server closing its listener
// connections to the port are refused again; with "-T auto" the same for
// a server on the host's loopback and clients on the namespace's.
func TestTCPSpliceAuto(t *testing.T) {
	sb := sandbox.New(t)
	n := startTCPNS(t, sb, "-d", "-t", "auto", "-T", "auto", "-u", "none", "-U", "none")
	for _, f := range families {
		for _, c := range []struct {
			name           string
			server, client place
			bind           netip.Addr
		}{
			{"t-auto", n.place(), hostPlace(sb), f.anyAddr},
			{"T-auto", hostPlace(sb), n.place(), f.loopback},
		} {
			t.Run(f.name+"/"+c.name, func(t *testing.T) {
				port := nextPort()
				to := ap(f.loopback, port)
				srv := c.server.start(t, sb, "serve", "-l", ap(c.bind, port), "-mode", "echo", "-timeout", "30s")
				srv.WaitLine(t, "ready", 10*time.Second)
				before := n.counters(t)
				listening := time.Now()
				const size = 64 * kib
				var cr clientResult
				tries := 0
				for {
					tries++
					r := c.client.run(t, sb, 10*time.Second, "client", "-to", to, "-send", strconv.Itoa(size), "-expect", strconv.Itoa(size), "-timeout", "5s")
					if err := jsonLine(r.stdout, `{"local"`, &cr); err == nil && cr.OK {
						break
					}
					if time.Since(listening) > 2*time.Second {
						t.Fatalf("%s not forwarded 2 s after the server listened (%d tries): last %s\n%s", to, tries, r, n.diag())
					}
					time.Sleep(50 * time.Millisecond)
				}
				t.Logf("forwarded and echoing %v after the server listened (%d tries)", time.Since(listening).Round(10*time.Millisecond), tries)
				after := n.counters(t)
				delta := map[string]int64{}
				for k, v := range after {
					delta[k] = v - before[k]
				}
				// The tries before were refused by the client's
				// kernel (no forward yet): one connection moved all.
				for _, pr := range spliceCounterProblems(after, delta, 2*size, 1) {
					t.Errorf("%s\n%s", pr, n.diag())
				}

				_ = srv.Signal(os.Interrupt)
				var sum serveSummary
				if sr := finish(srv, 10*time.Second); jsonLine(sr.stdout, `{"summary"`, &sum) != nil || sum.Conns != 1 || sum.OK != 1 {
					t.Errorf("server: %+v, want one connection served byte-exact\n%s", sum, sr)
				}
				closed := time.Now()
				for {
					r := c.client.run(t, sb, 10*time.Second, "connect", "-to", to, "-timeout", "1s")
					var res connectResult
					if err := jsonLine(r.stdout, `{"result"`, &res); err == nil && res.Result == "refused" {
						break
					}
					if time.Since(closed) > 2*time.Second {
						t.Fatalf("%s still not refused 2 s after the server closed its listener: last %s\n%s", to, r, n.diag())
					}
					time.Sleep(50 * time.Millisecond)
				}
				t.Logf("refused %v after the server closed its listener", time.Since(closed).Round(10*time.Millisecond))
				waitNoConnections(t, n, 2*time.Second)
			})
		}
	}
}
