package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// stopTimeout bounds how long a killed process may take to be reaped.
const stopTimeout = 10 * time.Second

// Proc is a process started by [Sandbox.Start]. Its output is captured;
// its methods are safe for concurrent use.
type Proc struct {
	// Cmd is the running command. Do not call its Wait method; use
	// [Proc.Wait] instead.
	Cmd *exec.Cmd

	mu      sync.Mutex
	stdout  bytes.Buffer
	stderr  bytes.Buffer
	changed chan struct{} // closed and replaced when output arrives
	done    chan struct{} // closed when the process has been reaped
	waitErr error         // result of Cmd.Wait, valid after done
}

// procWriter appends to one of the output buffers of a Proc.
type procWriter struct {
	p   *Proc
	buf *bytes.Buffer
}

func (w procWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	w.buf.Write(b)
	close(w.p.changed)
	w.p.changed = make(chan struct{})
	return len(b), nil
}

// newProc wraps cmd, which must not have been started.
func newProc(cmd *exec.Cmd) *Proc {
	p := &Proc{Cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	cmd.Stdout = procWriter{p, &p.stdout}
	cmd.Stderr = procWriter{p, &p.stderr}
	// Do not hang on output pipes inherited by stray grandchildren.
	cmd.WaitDelay = time.Second
	return p
}

// start starts the process and a goroutine that reaps it.
func (p *Proc) start() error {
	if err := p.Cmd.Start(); err != nil {
		return err
	}
	go func() {
		err := p.Cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	return nil
}

// stop kills the process (if still running) and waits until it is reaped.
func (p *Proc) stop() {
	p.Kill()
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
	}
}

// Stdout returns everything the process wrote to stdout so far.
func (p *Proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

// Stderr returns everything the process wrote to stderr so far.
func (p *Proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// Done returns a channel that is closed once the process has exited and
// its output has been collected.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Kill sends SIGKILL to the process. It does nothing if the process has
// already exited.
func (p *Proc) Kill() {
	_ = p.Signal(os.Kill)
}

// Signal sends sig to the process. It returns nil if the process has
// already exited.
func (p *Proc) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.Cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// WaitLine waits until a complete line of stdout (or, once the process has
// exited, its unterminated last line) contains substr, and returns that
// line. It fails t if the process exits or timeout expires first. Like
// t.Fatal, it must be called from the goroutine running the test.
func (p *Proc) WaitLine(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	line, err := p.AwaitLine(substr, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// AwaitLine is [Proc.WaitLine] for programs that are not tests: it
// returns an error, with the process's output, if the process exits or
// timeout expires before such a line.
func (p *Proc) AwaitLine(substr string, timeout time.Duration) (string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		out := p.stdout.String()
		changed := p.changed
		p.mu.Unlock()
		exited := false
		select {
		case <-p.done:
			exited = true
			// All output has been written once done is closed.
			out = p.Stdout()
		default:
		}
		lines := strings.Split(out, "\n")
		if !exited {
			lines = lines[:len(lines)-1] // drop the incomplete last line
		}
		for _, l := range lines {
			if strings.Contains(l, substr) {
				return l, nil
			}
		}
		if exited {
			code, err := p.Wait(0)
			return "", fmt.Errorf("sandbox: %s exited (code %d, %v) without printing %q\nstdout:\n%s\nstderr:\n%s",
				p.name(), code, err, substr, out, p.Stderr())
		}
		select {
		case <-changed:
		case <-p.done:
		case <-timer.C:
			return "", fmt.Errorf("sandbox: %s did not print %q within %v\nstdout:\n%s\nstderr:\n%s",
				p.name(), substr, timeout, p.Stdout(), p.Stderr())
		}
	}
}

// Wait waits up to timeout for the process to exit and returns its exit
// status. A non-zero exit status is not an error: err is nil whenever the
// process exited normally. If the process was killed by a signal, the exit
// code is -1 and err describes the signal. If timeout expires, the process
// is killed and Wait returns -1 and an error.
func (p *Proc) Wait(timeout time.Duration) (exitCode int, err error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
	default:
		select {
		case <-p.done:
		case <-timer.C:
			p.stop()
			return -1, fmt.Errorf("%s did not exit within %v", p.name(), timeout)
		}
	}
	p.mu.Lock()
	werr := p.waitErr
	p.mu.Unlock()
	state := p.Cmd.ProcessState
	if state == nil {
		return -1, werr
	}
	if state.Exited() {
		return state.ExitCode(), nil
	}
	if werr == nil {
		werr = fmt.Errorf("%s: %v", p.name(), state)
	}
	return -1, werr
}

// name describes the process for messages.
func (p *Proc) name() string {
	return strings.Join(p.Cmd.Args, " ")
}
