package pasta

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

// background re-executes gopasst as a detached process (new session,
// standard input and output on /dev/null) and waits until it reports that
// it started, or exits. It returns the exit status for the foreground
// process. Errors from start-up still reach the terminal: the background
// process keeps standard error until it is ready.
func background() int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pasta: %v\n", err)
		return 1
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pasta: %v\n", err)
		return 1
	}
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: os.Args, Stdin: null, Stdout: null, Stderr: os.Stderr,
		ExtraFiles: append(make([]*os.File, readyFd-3), w), Env: append(os.Environ(), readyEnv+"="+strconv.Itoa(readyFd)),
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "pasta: starting in background: %v\n", err)
		return 1
	}
	w.Close()
	var b [1]byte
	if n, _ := r.Read(b[:]); n == 1 {
		return 0 // started: leave it running
	}
	err = cmd.Wait()
	return exitStatus(cmd, err)
}

// inBackground reports whether this process was started by background.
func inBackground() bool { return os.Getenv(readyEnv) != "" }

// ready tells the foreground process that start-up is complete and lets go
// of the terminal.
func ready() {
	fd, err := strconv.Atoi(os.Getenv(readyEnv))
	if err != nil {
		return
	}
	_, _ = unix.Write(fd, []byte{1})
	unix.Close(fd)
	os.Unsetenv(readyEnv)
	if null, err := unix.Open(os.DevNull, unix.O_WRONLY, 0); err == nil {
		_ = unix.Dup2(null, 2)
		unix.Close(null)
	}
}
