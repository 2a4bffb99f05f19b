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
	// Descriptors not held by the live flows: a tap flow holds one
	// socket, a splice flow two (see the udp package). The raw count
	// follows the load, which follows the CPU the machine spares; this
	// one stays flat unless descriptors leak. Flows come and go while
	// the counters are dumped, so descriptors are counted before and
	// after the dump, and half their difference is the uncertainty.
	extra := func(s *sample) float64 {
		return float64(s.FDs+s.FDsAfter)/2 - float64(r.base.FDs) - float64(s.c("udp flows active")+s.c("udp flows active (splice)"))
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
	if n := f.c("udp flows active"); n != 0 {
		r.fail("%d flows still active after the timeout", n)
	}
	if c, e := f.c("udp flows created")-b.c("udp flows created"), f.c("udp flows expired")-b.c("udp flows expired"); c != e {
		r.fail("%d flows created but %d expired", c, e)
	}
	if c := f.c("udp flows created") - b.c("udp flows created"); c == 0 {
		r.fail("no flows were created")
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
		for _, c := range s.Corrupted {
			r.notes = append(r.notes, "corrupt: "+c)
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
	}
}

// print writes the per-path figures, the checks and the summary.
func (r *report) print(w io.Writer) {
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
		if in := s.Inject; in != nil {
			fmt.Fprintf(w, "\ninjected on the tap: malformed %v, incomplete fragments %d, tap drops %d\n",
				in.Malformed, in.Fragments, in.TapTxDropped)
		}
	}
	fmt.Fprintln(w, "\nchecks:")
	for _, n := range r.notes {
		fmt.Fprintln(w, "  "+n)
	}
	var peakFDs, peakThreads, peakRSS int
	var peakFlows int64
	for _, s := range r.load {
		peakFDs, peakThreads, peakRSS = max(peakFDs, s.FDs), max(peakThreads, s.Threads), max(peakRSS, s.RSSKiB)
		peakFlows = max(peakFlows, s.c("udp flows active"))
	}
	b, f := &r.base, &r.final
	fmt.Fprintf(w, "\nsummary: %v of load, %d client flows, %d datagrams sent (%.0f MiB), %d echoed, %d lost (%.3f%%), %d corrupt\n",
		r.o.duration, flows, sent, float64(bytes)/(1<<20), echoed, lost, 100*float64(lost)/float64(max(sent, 1)), corrupt)
	fmt.Fprintf(w, "gopasst: flows created %d, expired %d; active flows start %d, peak %d, end %d\n",
		f.c("udp flows created")-b.c("udp flows created"), f.c("udp flows expired")-b.c("udp flows expired"),
		b.c("udp flows active"), peakFlows, f.c("udp flows active"))
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
