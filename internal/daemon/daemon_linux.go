// Package daemon lets gopasst go to the background the way the reference
// does: the foreground process waits until the background one has finished
// starting (so start-up errors still reach the terminal and the exit
// status), then exits.
//
// Go cannot fork, so the background process is a re-execution of the
// binary in a new session, told through an environment variable which
// descriptor to report readiness on; [Ready] writes one byte there and
// detaches standard error. Standard input and output are /dev/null from the
// start.
package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// readyEnv names the descriptor on which a backgrounded gopasst reports
// that it finished starting. It is readyFd, clear of the descriptors that
// joining a user namespace passes on (see netns.JoinUserNS).
const (
	readyEnv = "GOPASST_READY_FD"
	readyFd  = 9
)

// Background re-executes gopasst as a detached process (new session,
// standard input and output on /dev/null) and waits until it reports that
// it started, or exits. It returns the exit status for the foreground
// process. Errors from start-up still reach the terminal: the background
// process keeps standard error until it is ready.
func Background() int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gopasst: %v\n", err)
		return 1
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gopasst: %v\n", err)
		return 1
	}
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: os.Args, Stdin: null, Stdout: null, Stderr: os.Stderr,
		ExtraFiles: append(make([]*os.File, readyFd-3), w), Env: append(os.Environ(), readyEnv+"="+strconv.Itoa(readyFd)),
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "gopasst: starting in background: %v\n", err)
		return 1
	}
	w.Close()
	var b [1]byte
	if n, _ := r.Read(b[:]); n == 1 {
		return 0 // started: leave it running
	}
	err = cmd.Wait()
	return ExitStatus(cmd, err)
}

// ExitStatus is the status a shell would report for cmd, which Wait ended
// with err: the exit code, or 128 plus the signal that killed it.
func ExitStatus(cmd *exec.Cmd, err error) int {
	if err == nil {
		return 0
	}
	if cmd.ProcessState != nil {
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			if ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ws.ExitStatus()
		}
	}
	return 1
}

// RaiseNofile lifts the soft open-file limit to the hard one: every flow
// holds a socket.
func RaiseNofile() {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &r)
	}
}

// InBackground reports whether this process was started by Background.
func InBackground() bool { return os.Getenv(readyEnv) != "" }

// nullFD is /dev/null, opened at start-up by a process started by
// Background, for Ready to put on standard error: Ready runs in the
// sandbox, where nothing can be opened any more.
var nullFD = -1

func init() {
	if InBackground() {
		nullFD, _ = unix.Open(os.DevNull, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	}
}

// Ready tells the foreground process that start-up is complete and lets go
// of the terminal. It opens nothing, so it works in the sandbox.
func Ready() {
	fd, err := strconv.Atoi(os.Getenv(readyEnv))
	if err != nil {
		return
	}
	_, _ = unix.Write(fd, []byte{1})
	unix.Close(fd)
	os.Unsetenv(readyEnv)
	if nullFD >= 0 {
		_ = unix.Dup2(nullFD, 2)
		unix.Close(nullFD)
		nullFD = -1
	}
}

// WritePID writes this process's PID to path (-P), if path is set, once
// start-up is done. The returned function removes the file.
func WritePID(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("PID file: %w", err)
	}
	return func() { os.Remove(path) }, nil
}
