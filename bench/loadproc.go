package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Side is where a load tool runs.
type Side int

const (
	// OnHost is the sandbox's host namespace, where the translator runs.
	OnHost Side = iota
	// InNS is the translator's namespace (the "guest").
	InNS
)

// loadCommand returns the command that runs load tool args[0] with
// args[1:] on side, as root. In the namespace it runs under nsenter(1),
// network namespace only: root needs no user namespace to open sockets
// there.
func (b *Bench) loadCommand(side Side, in *Instance, args ...string) *exec.Cmd {
	full := append([]string{loadArg}, args...)
	if side == InNS {
		return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(in.NSPid()), "-n", "--", b.self}, full...)...)
	}
	return b.sb.Command(b.sb.HostNS, b.self, full...)
}

// LoadProc is a running load tool (see [loadMain] for the protocol).
type LoadProc struct {
	p     *started
	name  string
	in    io.WriteCloser
	lines chan string // stdout, closed at its end
}

// readyTimeout for load tools; opening 10,000 sockets takes a while.
const loadReadyTimeout = 30 * time.Second

// startLoad starts a load tool on side and waits until it is ready.
func (b *Bench) startLoad(side Side, in *Instance, args ...string) (*LoadProc, error) {
	cmd := b.loadCommand(side, in, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	l := &LoadProc{name: strings.Join(args, " "), in: stdin, lines: make(chan string, 16)}
	l.p = &started{cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = &l.p.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("load %s: %w", l.name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l.lines <- sc.Text()
		}
		close(l.lines)
		_ = cmd.Wait()
		close(l.p.done)
	}()
	line, err := l.line(loadReadyTimeout)
	if err == nil && line != "ready" {
		err = fmt.Errorf("unexpected %q", line)
	}
	if err != nil {
		l.Kill()
		return nil, fmt.Errorf("load %s: %v: %s", l.name, err, l.p.out.String())
	}
	return l, nil
}

// line returns the next line of output.
func (l *LoadProc) line(timeout time.Duration) (string, error) {
	select {
	case s, ok := <-l.lines:
		if !ok {
			<-l.p.done
			return "", fmt.Errorf("exited (%v)", l.p.cmd.ProcessState)
		}
		return s, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("no output within %v", timeout)
	}
}

// counters reads the next line as Counters.
func (l *LoadProc) counters(timeout time.Duration) (Counters, error) {
	s, err := l.line(timeout)
	if err != nil {
		return Counters{}, fmt.Errorf("load %s: %v: %s", l.name, err, l.p.out.String())
	}
	var c Counters
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		return Counters{}, fmt.Errorf("load %s: bad output %q", l.name, s)
	}
	return c, nil
}

// Snap asks for the counters.
func (l *LoadProc) Snap() (Counters, error) {
	if _, err := io.WriteString(l.in, "snap\n"); err != nil {
		return Counters{}, fmt.Errorf("load %s: %v: %s", l.name, err, l.p.out.String())
	}
	return l.counters(5 * time.Second)
}

// Stop tells the tool to stop and returns its final counters.
func (l *LoadProc) Stop() (Counters, error) {
	_, _ = io.WriteString(l.in, "stop\n")
	return l.Final(10 * time.Second)
}

// Final waits up to timeout for the final counters of a tool that stops
// by itself, and for its exit.
func (l *LoadProc) Final(timeout time.Duration) (Counters, error) {
	c, err := l.counters(timeout)
	l.in.Close()
	select {
	case <-l.p.done:
	case <-time.After(5 * time.Second):
		l.Kill()
	}
	return c, err
}

// Kill ends the tool if it still runs.
func (l *LoadProc) Kill() {
	l.in.Close()
	l.p.stop(syscall.SIGKILL, 0)
}
