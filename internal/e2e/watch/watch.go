// Package watch reads the state of a running gopasst for the end-to-end
// tests and the soak tool: descriptors, threads, memory, CPU time and
// limits from /proc, and gopasst's own counters, which it prints when it
// gets SIGUSR1.
package watch

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// FDs counts the open descriptors of pid (the entries of /proc/PID/fd).
func FDs(pid int) (int, error) {
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

// ProcStatus returns the fields of /proc/PID/status, by name, their
// values without the surrounding blanks ("Uid" holds its four tab-separated
// numbers, "VmRSS" a number and "kB").
func ProcStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	st := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st, nil
}

// KiB reads a status field in kB ("VmRSS", "VmHWM"); 0 if it is missing.
func KiB(st map[string]string, field string) int {
	n, _ := strconv.Atoi(strings.TrimSuffix(st[field], " kB"))
	return n
}

// Status reads the thread count and resident memory of pid from
// /proc/PID/status.
func Status(pid int) (threads, rssKiB int, err error) {
	st, err := ProcStatus(pid)
	if err != nil {
		return 0, 0, err
	}
	threads, _ = strconv.Atoi(st["Threads"])
	return threads, KiB(st, "VmRSS"), nil
}

// clockTick is the unit of the times in /proc/PID/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// CPU reads the user plus system time pid used so far from
// /proc/PID/stat.
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may contain spaces: count the
	// fields after it. utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * clockTick, nil
}

// NofileLimit reads the soft and hard open-file limits of pid from
// /proc/PID/limits ("unlimited" is -1).
func NofileLimit(pid int) (soft, hard int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			break
		}
		parse := func(s string) int64 {
			if s == "unlimited" {
				return -1
			}
			n, _ := strconv.ParseInt(s, 10, 64)
			return n
		}
		return parse(f[0]), parse(f[1]), nil
	}
	return 0, 0, fmt.Errorf("no open-file limit in /proc/%d/limits", pid)
}

// ReadPID reads a PID file (gopasst -P), waiting up to five seconds for
// it to appear.
func ReadPID(path string) (int, error) {
	for i := 0; ; i++ {
		b, err := os.ReadFile(path)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid, nil
			}
		}
		if i == 50 {
			return 0, fmt.Errorf("no PID in %s", path)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DumpEnd starts the last line of a counter dump (see
// stats.Counters.String).
const DumpEnd = "goroutines: "

// Counters makes gopasst (p, whose standard error is captured) dump its
// counters with SIGUSR1 and returns them by name, "goroutines" included.
func Counters(p *sandbox.Proc) (map[string]int64, error) {
	start := len(p.Stderr())
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := p.Stderr()[start:]
		if i := strings.Index(out, DumpEnd); i >= 0 && strings.Contains(out[i:], "\n") {
			return ParseDump(out), nil
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("gopasst exited:\n%s", p.Stderr())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no counter dump within 5 s of SIGUSR1")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ParseDump reads the "name: value" lines of one counter dump, up to and
// including the goroutines line; other lines (warnings) are skipped.
func ParseDump(out string) map[string]int64 {
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
