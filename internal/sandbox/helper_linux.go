package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/log"
)

// helperEnv marks the helper process (see the package documentation).
// Its arguments are "pid=PID", the command to pass signals to (0 for
// none), then the files to remove, as "DEV:INO:PATH".
const helperEnv = "GOPASST_SANDBOX_HELPER"

// helperFD is the helper's end of the pipe. Each byte gopasst writes is a
// signal for the command; end of file means gopasst is gone.
const helperFD = 3

// helperWait bounds the wait for the helper at exit.
const helperWait = 5 * time.Second

// IsHelper reports whether this process is a helper started by
// [Sandbox.Apply]; if so, the program must run [HelperMain] and nothing
// else.
func IsHelper() bool { return os.Getenv(helperEnv) == "1" }

// SetCommand tells the sandbox about the command pasta started, before
// Apply: once gopasst has switched to another user it may no longer signal
// it, and [Sandbox.Signal] asks the helper to.
func (s *Sandbox) SetCommand(p *os.Process) {
	if s != nil {
		s.cmd = p
	}
}

// Signal sends sig to p, the command: directly, or through the helper if
// gopasst, now another user, may not.
func (s *Sandbox) Signal(p *os.Process, sig syscall.Signal) error {
	if s == nil {
		return p.Signal(sig)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.relay || s.pipe == nil || p.Pid != s.cmd.Pid {
		return p.Signal(sig)
	}
	_, err := s.pipe.Write([]byte{byte(sig)})
	return err
}

// mustRelay says whether gopasst will lose the right to signal its
// command: it switches from root to another user.
func (s *Sandbox) mustRelay() bool {
	return s.cmd != nil && s.change && s.uid != 0
}

// needsHelper says whether Apply must start the helper.
func (s *Sandbox) needsHelper() bool {
	return len(s.remove) > 0 || s.mustRelay()
}

// startHelper starts the helper, which keeps the credentials gopasst has
// now.
func (s *Sandbox) startHelper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	pid := 0
	if s.mustRelay() {
		pid = s.cmd.Pid
	}
	args := []string{"gopasst (sandbox helper)", "pid=" + strconv.Itoa(pid)}
	for _, f := range s.remove {
		args = append(args, fmt.Sprintf("%d:%d:%s", f.dev, f.ino, f.path))
	}
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       args,
		Env:        append(os.Environ(), helperEnv+"=1"),
		ExtraFiles: []*os.File{r},
		// Its own process group: the terminal's SIGINT is not for it.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("starting the helper: %w", err)
	}
	s.mu.Lock()
	s.helper, s.pipe, s.relay = cmd, w, pid != 0
	s.mu.Unlock()
	return nil
}

// Close lets the helper, if any, remove the files and waits for it, so
// they are gone when gopasst exits. Call it last.
func (s *Sandbox) Close() {
	if s == nil || s.helper == nil {
		return
	}
	s.mu.Lock()
	s.pipe.Close()
	s.pipe = nil
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		_ = s.helper.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(helperWait):
		log.Warnf("sandbox: the helper did not finish")
	}
	s.helper = nil
}

// HelperMain is the helper: it passes the signals gopasst writes on the
// pipe to the command, and once the pipe reaches end of file (gopasst
// exited, one way or another), removes the files named in args that are
// still the ones gopasst made. It returns the exit status.
func HelperMain(args []string) int {
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGPIPE)
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "gopasst helper: "+format+"\n", a...)
		return 1
	}
	if len(args) == 0 || !strings.HasPrefix(args[0], "pid=") {
		return fail("bad arguments %q", args)
	}
	pid, err := strconv.Atoi(strings.TrimPrefix(args[0], "pid="))
	if err != nil || pid < 0 {
		return fail("bad argument %q", args[0])
	}
	var files []fileID
	for _, a := range args[1:] {
		f, ok := parseFileID(a)
		if !ok {
			return fail("bad argument %q", a)
		}
		files = append(files, f)
	}
	pidfd := -1
	if pid > 0 {
		// The command is gopasst's child, which reaps it only once
		// this helper runs: the PID cannot have been reused.
		if pidfd, err = unix.PidfdOpen(pid, 0); err != nil && !errors.Is(err, unix.ENOSYS) {
			return fail("pidfd_open %d: %v", pid, err)
		}
	}
	if err := confineHelper(pid, pidfd); err != nil {
		return fail("%v", err)
	}
	var b [64]byte
	for {
		n, err := unix.Read(helperFD, b[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 {
			break
		}
		for _, sig := range b[:n] {
			if pid == 0 || sig == 0 {
				continue
			}
			if pidfd >= 0 {
				_ = unix.PidfdSendSignal(pidfd, unix.Signal(sig), nil, 0)
			} else {
				_ = unix.Kill(pid, unix.Signal(sig))
			}
		}
	}
	status := 0
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Lstat(f.path, &st); err != nil || st.Dev != f.dev || st.Ino != f.ino {
			continue // gone, or another file now
		}
		if err := unix.Unlink(f.path); err != nil {
			status = fail("removing %s: %v", f.path, err)
		}
	}
	return status
}

// parseFileID reads "DEV:INO:PATH".
func parseFileID(s string) (fileID, bool) {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 || parts[2] == "" {
		return fileID{}, false
	}
	dev, err1 := strconv.ParseUint(parts[0], 10, 64)
	ino, err2 := strconv.ParseUint(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return fileID{}, false
	}
	return fileID{path: parts[2], dev: dev, ino: ino}, true
}

// confineHelper gives the helper no_new_privs and its own filter: it
// keeps its user, to be able to remove the files and signal the command,
// but nothing it has no use for; it may signal nothing but the command.
func confineHelper(cmdPID, pidfd int) error {
	if auditArch == 0 {
		return nil // no filter for this architecture
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	filter, err := assemble(rules(profile{mode: helperMode, pid: uint32(os.Getpid()), cmdPID: uint32(cmdPID), pidfd: uint32(pidfd)}))
	if err != nil {
		return err
	}
	return install(filter)
}

// helperState is the part of Sandbox that deals with the helper.
type helperState struct {
	cmd    *os.Process // pasta's command, or nil
	helper *exec.Cmd
	mu     sync.Mutex // guards pipe and relay
	pipe   *os.File
	// relay says whether the helper passes signals to cmd.
	relay bool
}
