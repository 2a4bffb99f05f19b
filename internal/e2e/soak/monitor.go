package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
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

// monitor samples a running gopasst: /proc for descriptors, threads and
// resident memory, SIGUSR1 for its own counters.
type monitor struct {
	pid  int
	proc *sandbox.Proc // gopasst: its stderr carries the counter dumps
}

// procStatus reads the Threads and VmRSS lines of /proc/PID/status.
func procStatus(pid int) (threads, rssKiB int, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		switch k {
		case "Threads":
			threads, _ = strconv.Atoi(fields[0])
		case "VmRSS":
			rssKiB, _ = strconv.Atoi(fields[0])
		}
	}
	return threads, rssKiB, sc.Err()
}

// countFDs counts the entries of /proc/PID/fd.
func countFDs(pid int) (int, error) {
	d, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		n += len(names)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// dumpEnd is the last line of a counter dump (see stats.Counters.String).
const dumpEnd = "goroutines: "

// counters makes gopasst dump its counters (SIGUSR1) and parses the dump.
func (m *monitor) counters() (map[string]int64, error) {
	start := len(m.proc.Stderr())
	if err := m.proc.Signal(syscall.SIGUSR1); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := m.proc.Stderr()[start:]
		if i := strings.Index(out, dumpEnd); i >= 0 && strings.Contains(out[i:], "\n") {
			return parseDump(out), nil
		}
		select {
		case <-m.proc.Done():
			return nil, fmt.Errorf("gopasst exited:\n%s", m.proc.Stderr())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no counter dump within 5 s of SIGUSR1")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// parseDump reads the "name: value" lines of one counter dump, up to and
// including the goroutines line; other lines (warnings) are skipped.
func parseDump(out string) map[string]int64 {
	c := map[string]int64{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		c[k] = n
		if k == "goroutines" {
			break
		}
	}
	return c
}

// take takes a sample; at is its time relative to the start of the load.
func (m *monitor) take(at time.Duration) (sample, error) {
	s := sample{At: at}
	var err error
	if s.FDs, err = countFDs(m.pid); err != nil {
		return s, err
	}
	if s.Threads, s.RSSKiB, err = procStatus(m.pid); err != nil {
		return s, err
	}
	if s.CPU, err = cpuTime(m.pid); err != nil {
		return s, err
	}
	if s.Counters, err = m.counters(); err != nil {
		return s, err
	}
	s.FDsAfter, err = countFDs(m.pid)
	return s, err
}

// clockTick is the unit of the times in /proc/PID/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// cpuTime reads the user and system time of pid from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may contain spaces: count the
	// fields after it. utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * clockTick, nil
}

// tableHeader and row print samples as a table.
func tableHeader(w io.Writer) {
	fmt.Fprintf(w, "%8s %5s %6s %7s %8s %5s %6s %6s %9s %9s %10s %10s %10s %9s %8s\n",
		"t", "cpu%", "fds", "threads", "rss-MiB", "gor", "flows", "splice", "created", "expired",
		"to-host", "to-tap", "spliced", "malformed", "drops")
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
	fmt.Fprintf(w, "%8s %5.0f %6d %7d %8.1f %5d %6d %6d %9d %9d %10d %10d %10d %9d %8d\n",
		s.At.Round(time.Second), cpu, s.FDs, s.Threads, float64(s.RSSKiB)/1024, s.c("goroutines"),
		s.c("udp flows active"), s.c("udp flows active (splice)"), s.c("udp flows created"), s.c("udp flows expired"),
		s.c("udp datagrams to host"), s.c("udp datagrams to tap"), s.c("udp datagrams socket to socket"),
		s.c("drop malformed"), drops)
}
