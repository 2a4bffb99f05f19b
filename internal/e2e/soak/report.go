package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
)

// report holds a finished soak and judges it.
type report struct {
	o          options
	base       sample   // idle, before the load
	load       []sample // during the load
	final      sample   // after the load, once flows expired
	sums       []summary
	exit       int
	exitErr    error
	stderr     string
	violations []string
	notes      []string
}

func (r *report) fail(format string, args ...any) {
	r.violations = append(r.violations, fmt.Sprintf(format, args...))
}

// thirds returns the first and last third of the samples taken after
// the warm-up.
func (r *report) thirds() (first, last []sample) {
	var s []sample
	for _, x := range r.load {
		if x.At >= r.o.warmup {
			s = append(s, x)
		}
	}
	n := len(s) / 3
	return s[:n], s[len(s)-n:]
}

func mean(s []sample, f func(*sample) float64) float64 {
	var t float64
	for i := range s {
		t += f(&s[i])
	}
	return t / float64(len(s))
}

func maxOf(s []sample, f func(*sample) float64) float64 {
	m := f(&s[0])
	for i := range s {
		m = max(m, f(&s[i]))
	}
	return m
}

// evaluate runs every check and records the violations.
func (r *report) evaluate() {
	r.checkFlat()
	r.checkExpiry()
	r.checkTraffic()
	r.checkMalformed()
	if r.exit != 0 || r.exitErr != nil {
		r.fail("gopasst exited with status %d (%v)", r.exit, r.exitErr)
	}
	for _, bad := range []string{"panic:", "fatal error:", "DATA RACE"} {
		if strings.Contains(r.stderr, bad) {
			r.fail("gopasst printed %q", bad)
		}
	}
}

// checkFlat compares the last third of the samples with the first:
// descriptors, threads, goroutines and memory must not grow beyond the
// tolerances.
func (r *report) checkFlat() {
	first, last := r.thirds()
	if len(first) == 0 {
		r.fail("too few samples after the warm-up to compare (%d)", len(r.load))
		return
	}
	// Descriptors not held by the live flows: a UDP tap flow holds one
	// socket, a UDP splice flow two (see the udp package); a TCP
	// connection over the tap one socket, a spliced one two sockets and
	// two pipes (see the tcp package). The raw count
	// follows the load, which follows the CPU the machine spares; this
	// one stays flat unless descriptors leak. Flows come and go while
	// the counters are dumped, so descriptors are counted before and
	// after the dump, and half their difference is the uncertainty.
	extra := func(s *sample) float64 {
		return float64(s.FDs+s.FDsAfter)/2 - float64(r.base.FDs) - float64(s.c("udp flows active")+s.c("udp flows active (splice)")) -
			float64(s.c("tcp connections active")+5*s.c("tcp connections active (splice)"))
	}
	spread := func(s *sample) float64 { return math.Abs(float64(s.FDs-s.FDsAfter)) / 2 }
	rss := func(s *sample) float64 { return float64(s.RSSKiB) / 1024 }
	threads := func(s *sample) float64 { return float64(s.Threads) }
	gor := func(s *sample) float64 { return float64(s.c("goroutines")) }
	check := func(what string, a, c, limit float64) {
		verdict := "ok"
		if c > limit {
			verdict = "GROWS"
			r.fail("%s grows: %.1f in the first third, %.1f in the last (limit %.1f)", what, a, c, limit)
		}
		r.notes = append(r.notes, fmt.Sprintf("%-38s first third %8.1f  last third %8.1f  limit %8.1f  %s", what, a, c, limit, verdict))
	}
	a, c := mean(first, extra), mean(last, extra)
	check("descriptors not held by flows (mean)", a, c, a+r.o.fdSlack+mean(first, spread)+mean(last, spread))
	a, c = mean(first, rss), mean(last, rss)
	check("RSS MiB (mean)", a, c, a*(1+r.o.rssSlack)+r.o.rssSlackMiB)
	a, c = maxOf(first, threads), maxOf(last, threads)
	check("threads (max)", a, c, a+float64(r.o.threadSlack))
	a, c = maxOf(first, gor), maxOf(last, gor)
	check("goroutines (max)", a, c, a+float64(r.o.gorSlack))
}

// checkExpiry checks that every flow expired after the load and took its
// sockets with it.
func (r *report) checkExpiry() {
	f, b := &r.final, &r.base
	if r.o.udp {
		if n := f.c("udp flows active"); n != 0 {
			r.fail("%d flows still active after the timeout", n)
		}
		if c, e := f.c("udp flows created")-b.c("udp flows created"), f.c("udp flows expired")-b.c("udp flows expired"); c != e {
			r.fail("%d flows created but %d expired", c, e)
		}
		if c := f.c("udp flows created") - b.c("udp flows created"); c == 0 {
			r.fail("no flows were created")
		}
	}
	if r.o.tcp {
		if n := f.c("tcp connections active"); n != 0 {
			r.fail("%d TCP connections still active after the load (%d spliced)", n, f.c("tcp connections active (splice)"))
		}
		if c, e := f.c("tcp connections created")-b.c("tcp connections created"), f.c("tcp connections closed")-b.c("tcp connections closed"); c != e {
			r.fail("%d TCP connections opened but %d closed", c, e)
		}
		if c := f.c("tcp connections created") - b.c("tcp connections created"); c == 0 {
			r.fail("no TCP connections were opened")
		}
	}
	if f.FDs != b.FDs {
		r.fail("%d descriptors after the flows expired, %d before the load", f.FDs, b.FDs)
	}
	if f.c("goroutines") != b.c("goroutines") {
		r.fail("%d goroutines after the load, %d before", f.c("goroutines"), b.c("goroutines"))
	}
}

// checkTraffic checks the agents' counts: no corruption anywhere, every
// path carried traffic and lost little, echoes came from where they were
// sent.
func (r *report) checkTraffic() {
	for _, s := range r.sums {
		for _, p := range s.Paths {
			if p.Corrupt > 0 {
				r.fail("%s: %d corrupt echoes", p.Name, p.Corrupt)
			}
			if p.Echoed == 0 {
				r.fail("%s: no echo came back", p.Name)
			} else if loss := float64(p.Lost) / float64(p.Sent); loss > r.o.maxLoss {
				r.fail("%s: lost %.2f%% of %d datagrams (limit %.2f%%)", p.Name, 100*loss, p.Sent, 100*r.o.maxLoss)
			}
			if p.WrongPeer > 0 {
				r.fail("%s: %d echoes from the wrong address", p.Name, p.WrongPeer)
			}
		}
		for _, v := range s.Servers {
			if v.Corrupt > 0 {
				r.fail("server %s (%s): %d corrupt datagrams", v.Addr, s.Role, v.Corrupt)
			}
		}
		for _, p := range s.TCPPaths {
			if p.Corrupt > 0 {
				r.fail("%s: %d connections with corrupt bytes", p.Name, p.Corrupt)
			}
			if p.Completed == 0 {
				r.fail("%s: no connection completed", p.Name)
			}
			if p.Failed > 0 || p.ConnectErrors > 0 {
				r.fail("%s: %d of %d connections failed, %d connects failed", p.Name, p.Failed, p.Conns, p.ConnectErrors)
			}
		}
		for _, v := range s.TCPServers {
			if v.Corrupt > 0 {
				r.fail("TCP server %s (%s): %d connections with corrupt bytes or headers", v.Addr, s.Role, v.Corrupt)
			}
			if v.Failed > 0 {
				r.fail("TCP server %s (%s): %d of %d connections failed", v.Addr, s.Role, v.Failed, v.Accepted)
			}
		}
		for _, c := range s.Corrupted {
			r.notes = append(r.notes, "corrupt: "+c)
		}
		for _, c := range s.TCPFailures {
			r.notes = append(r.notes, "failed: "+c)
		}
	}
}

// checkMalformed checks that gopasst counted the injected malformed frames
// by reason: all of them, unless the namespace's kernel dropped some on
// the tap's full queue.
func (r *report) checkMalformed() {
	for _, s := range r.sums {
		in := s.Inject
		if in == nil {
			continue
		}
		if in.Errors > 0 {
			r.fail("injector: %d frames could not be sent", in.Errors)
		}
		var reasons []string
		for k := range in.Malformed {
			reasons = append(reasons, k)
		}
		sort.Strings(reasons)
		for _, k := range reasons {
			sent := int64(in.Malformed[k])
			got := r.final.c("malformed "+k) - r.base.c("malformed "+k)
			if got > sent || got < sent-int64(in.TapTxDropped) {
				r.fail("malformed %s: injected %d, gopasst counted %d (tap drops %d)", k, sent, got, in.TapTxDropped)
			}
		}
		if len(reasons) == 0 {
			r.fail("no malformed frames were injected")
		}
		if !r.o.tcp {
			continue
		}
		// Segments for no connection: the namespace's late segments for
		// connections gopasst already freed count there too.
		for _, k := range tcpInjectReasons {
			sent := int64(in.TCP[k])
			got := r.final.c("drop "+k) - r.base.c("drop "+k)
			switch {
			case sent == 0:
				r.fail("no TCP segments were injected for drop %s", k)
			case got < sent-int64(in.TapTxDropped), got > sent && k != "tcp-no-connection":
				r.fail("drop %s: injected %d bad TCP segments, gopasst counted %d (tap drops %d)", k, sent, got, in.TapTxDropped)
			}
		}
	}
}

// print writes the per-path figures, the checks and the summary.
func (r *report) print(w io.Writer) {
	var udpLine, tcpLine string
	if r.o.udp {
		udpLine = r.printUDP(w)
	}
	if r.o.tcp {
		tcpLine = r.printTCP(w)
	}
	for _, s := range r.sums {
		if in := s.Inject; in != nil {
			fmt.Fprintf(w, "\ninjected on the tap: malformed %v, incomplete fragments %d, bad TCP segments %v, tap drops %d\n",
				in.Malformed, in.Fragments, in.TCP, in.TapTxDropped)
		}
	}
	fmt.Fprintln(w, "\nchecks:")
	for _, n := range r.notes {
		fmt.Fprintln(w, "  "+n)
	}
	var peakFDs, peakThreads, peakRSS int
	var peakFlows, peakConns, peakSplice int64
	for _, s := range r.load {
		peakFDs, peakThreads, peakRSS = max(peakFDs, s.FDs), max(peakThreads, s.Threads), max(peakRSS, s.RSSKiB)
		peakFlows = max(peakFlows, s.c("udp flows active"))
		peakConns = max(peakConns, s.c("tcp connections active"))
		peakSplice = max(peakSplice, s.c("tcp connections active (splice)"))
	}
	b, f := &r.base, &r.final
	fmt.Fprintf(w, "\nsummary: %v of load, MTU %s\n", r.o.duration, mtuName(r.o.mtu))
	if r.o.udp {
		fmt.Fprintln(w, udpLine)
		fmt.Fprintf(w, "gopasst: flows created %d, expired %d; active flows start %d, peak %d, end %d\n",
			f.c("udp flows created")-b.c("udp flows created"), f.c("udp flows expired")-b.c("udp flows expired"),
			b.c("udp flows active"), peakFlows, f.c("udp flows active"))
	}
	if r.o.tcp {
		fmt.Fprintln(w, tcpLine)
		fmt.Fprintf(w, "gopasst: TCP connections opened %d, closed %d; active start %d, peak %d (%d spliced), end %d; "+
			"bytes to host %d, to tap %d, socket to socket %d; retransmits %d, resets to tap %d\n",
			f.c("tcp connections created")-b.c("tcp connections created"), f.c("tcp connections closed")-b.c("tcp connections closed"),
			b.c("tcp connections active"), peakConns, peakSplice, f.c("tcp connections active"),
			f.c("tcp bytes to host")-b.c("tcp bytes to host"), f.c("tcp bytes to tap")-b.c("tcp bytes to tap"),
			f.c("tcp bytes socket to socket")-b.c("tcp bytes socket to socket"),
			f.c("tcp retransmits to tap")-b.c("tcp retransmits to tap"), f.c("tcp resets to tap")-b.c("tcp resets to tap"))
	}
	fmt.Fprintf(w, "gopasst: fds start %d, peak %d, end %d; threads start %d, peak %d, end %d; RSS start %.1f MiB, peak %.1f MiB, end %.1f MiB; goroutines start %d, end %d\n",
		b.FDs, peakFDs, f.FDs, b.Threads, peakThreads, f.Threads, float64(b.RSSKiB)/1024, float64(peakRSS)/1024,
		float64(f.RSSKiB)/1024, b.c("goroutines"), f.c("goroutines"))
	var drops []string
	for k, v := range f.Counters {
		if d := v - b.c(k); strings.HasPrefix(k, "drop ") && d != 0 {
			drops = append(drops, fmt.Sprintf("%s %d", strings.TrimPrefix(k, "drop "), d))
		}
	}
	sort.Strings(drops)
	fmt.Fprintf(w, "gopasst drops: %s\n", strings.Join(drops, ", "))
	for _, v := range r.violations {
		fmt.Fprintln(w, "VIOLATION:", v)
	}
}

// mtuName names an MTU option: 0 is gopasst's default.
func mtuName(mtu int) string {
	if mtu == 0 {
		return "65520 (gopasst's default)"
	}
	return fmt.Sprint(mtu)
}

// printUDP writes the UDP paths and echo servers and returns the UDP
// line of the summary.
func (r *report) printUDP(w io.Writer) string {
	fmt.Fprintf(w, "\n%-22s %7s %9s %9s %11s %6s %6s %7s %6s %7s\n", "path", "flows", "sent", "echoed", "MiB", "lost", "stray", "corrupt", "bind", "refused")
	var sent, echoed, lost, corrupt, flows, bytes uint64
	for _, s := range r.sums {
		for _, p := range s.Paths {
			fmt.Fprintf(w, "%-22s %7d %9d %9d %11.1f %6d %6d %7d %6d %7d\n", p.Name, p.Flows, p.Sent, p.Echoed,
				float64(p.Bytes)/(1<<20), p.Lost, p.Stray, p.Corrupt, p.BindErrors, p.Refused)
			sent += p.Sent
			echoed += p.Echoed
			lost += p.Lost
			corrupt += p.Corrupt
			flows += p.Flows
			bytes += p.Bytes
		}
	}
	fmt.Fprintf(w, "\n%-22s %9s %9s %10s\n", "echo server", "received", "corrupt", "too-short")
	for _, s := range r.sums {
		for _, v := range s.Servers {
			fmt.Fprintf(w, "%-22s %9d %9d %10d\n", v.Addr, v.Received, v.Corrupt, v.Unverified)
			corrupt += v.Corrupt
		}
	}
	return fmt.Sprintf("udp: %d client flows, %d datagrams sent (%.0f MiB), %d echoed, %d lost (%.3f%%), %d corrupt",
		flows, sent, float64(bytes)/(1<<20), echoed, lost, 100*float64(lost)/float64(max(sent, 1)), corrupt)
}

// printTCP writes the TCP paths and servers and returns the TCP line of
// the summary.
func (r *report) printTCP(w io.Writer) string {
	fmt.Fprintf(w, "\n%-26s %7s %7s %6s %6s %9s %9s %7s %6s %7s\n", "tcp path", "conns", "done", "rst-tx", "rst-rx", "MiB-up", "MiB-down", "corrupt", "failed", "connect")
	var conns, done, up, down, corrupt, failed, resets uint64
	var modes [numModes]uint64
	for _, s := range r.sums {
		for _, p := range s.TCPPaths {
			fmt.Fprintf(w, "%-26s %7d %7d %6d %6d %9.1f %9.1f %7d %6d %7d\n", p.Name, p.Conns, p.Completed, p.ResetsSent, p.ResetsSeen,
				float64(p.Sent)/(1<<20), float64(p.Received)/(1<<20), p.Corrupt, p.Failed, p.ConnectErrors)
			conns += p.Conns
			done += p.Completed
			up += p.Sent
			down += p.Received
			corrupt += p.Corrupt
			failed += p.Failed + p.ConnectErrors
			resets += p.ResetsSent + p.ResetsSeen
			for m := range modes {
				modes[m] += p.Modes[m]
			}
		}
	}
	fmt.Fprintf(w, "\n%-26s %8s %8s %6s %6s %9s %9s %7s %6s\n", "tcp server", "accepted", "done", "rst-tx", "rst-rx", "MiB-in", "MiB-out", "corrupt", "failed")
	var srvIn uint64
	for _, s := range r.sums {
		for _, v := range s.TCPServers {
			fmt.Fprintf(w, "%-26s %8d %8d %6d %6d %9.1f %9.1f %7d %6d\n", v.Addr, v.Accepted, v.Completed, v.ResetsSent, v.ResetsSeen,
				float64(v.Received)/(1<<20), float64(v.Sent)/(1<<20), v.Corrupt, v.Failed)
			corrupt += v.Corrupt
			failed += v.Failed
			srvIn += v.Received
		}
	}
	var mix []string
	for m, n := range modes {
		mix = append(mix, fmt.Sprintf("%s %d", modeNames[m], n))
	}
	return fmt.Sprintf("tcp: %d connections (%s), %d completed as planned, %d resets sent or seen as planned; "+
		"%.0f MiB sent by clients (%.0f MiB verified by servers), %.0f MiB verified by clients; %d corrupt, %d failed",
		conns, strings.Join(mix, ", "), done, resets, float64(up)/(1<<20), float64(srvIn)/(1<<20), float64(down)/(1<<20), corrupt, failed)
}
