package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// sample is one look at the gopasst process.
type sample struct {
	At       time.Duration // since the load started
	FDs      int           // descriptors before the counter dump
	FDsAfter int           // and after it: flows come and go meanwhile
	CPU      time.Duration // user and system time so far
	Threads  int
	RSSKiB   int
	Counters map[string]int64 // gopasst's SIGUSR1 dump, "goroutines" included
}

// c returns counter name, or 0.
func (s *sample) c(name string) int64 { return s.Counters[name] }

// monitor samples a running gopasst: /proc for descriptors, threads,
// resident memory and CPU time, SIGUSR1 for its own counters (package
// watch).
type monitor struct {
	pid  int
	proc *sandbox.Proc // gopasst: its stderr carries the counter dumps
}

// take takes a sample; at is its time relative to the start of the load.
func (m *monitor) take(at time.Duration) (sample, error) {
	s := sample{At: at}
	var err error
	if s.FDs, err = watch.FDs(m.pid); err != nil {
		return s, err
	}
	if s.Threads, s.RSSKiB, err = watch.Status(m.pid); err != nil {
		return s, err
	}
	if s.CPU, err = watch.CPU(m.pid); err != nil {
		return s, err
	}
	if s.Counters, err = watch.Counters(m.proc); err != nil {
		return s, err
	}
	s.FDsAfter, err = watch.FDs(m.pid)
	return s, err
}

// tableHeader and row print samples as a table: UDP flows and datagrams,
// TCP connections (active, spliced, opened, closed) and MiB (to the host,
// to the tap, socket to socket).
func tableHeader(w io.Writer) {
	fmt.Fprintf(w, "%8s %5s %6s %7s %8s %5s %6s %6s %9s %9s %10s %10s %10s %5s %5s %8s %8s %7s %7s %7s %9s %8s\n",
		"t", "cpu%", "fds", "threads", "rss-MiB", "gor", "flows", "splice", "created", "expired",
		"to-host", "to-tap", "spliced", "conns", "tcp-s", "opened", "closed", "MiB-h", "MiB-t", "MiB-s", "malformed", "drops")
}

// row prints s; prev is the sample before (for the CPU use in between).
func (s *sample) row(w io.Writer, prev *sample) {
	cpu := 0.0
	if prev != nil && s.At > prev.At {
		cpu = 100 * float64(s.CPU-prev.CPU) / float64(s.At-prev.At)
	}
	var drops int64
	for k, v := range s.Counters {
		if strings.HasPrefix(k, "drop ") && k != "drop malformed" {
			drops += v
		}
	}
	mib := func(k string) float64 { return float64(s.c(k)) / (1 << 20) }
	fmt.Fprintf(w, "%8s %5.0f %6d %7d %8.1f %5d %6d %6d %9d %9d %10d %10d %10d %5d %5d %8d %8d %7.0f %7.0f %7.0f %9d %8d\n",
		s.At.Round(time.Second), cpu, s.FDs, s.Threads, float64(s.RSSKiB)/1024, s.c("goroutines"),
		s.c("udp flows active"), s.c("udp flows active (splice)"), s.c("udp flows created"), s.c("udp flows expired"),
		s.c("udp datagrams to host"), s.c("udp datagrams to tap"), s.c("udp datagrams socket to socket"),
		s.c("tcp connections active"), s.c("tcp connections active (splice)"), s.c("tcp connections created"), s.c("tcp connections closed"),
		mib("tcp bytes to host"), mib("tcp bytes to tap"), mib("tcp bytes socket to socket"),
		s.c("drop malformed"), drops)
}
