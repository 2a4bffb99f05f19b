package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReexecMarker is the environment variable set for a copy of the program that
// EnterUserNS or JoinUserNS re-executed inside a user namespace. Its presence
// tells the copy not to re-execute itself again. The package removes it from
// the environment at initialisation, so commands started later do not inherit
// it; InUserNSChild reports whether it was present.
const ReexecMarker = "GOPASST_USERNS_REEXEC"

// reexecArgv0 carries the original argv[0] across nsenter, which replaces it.
const reexecArgv0 = "GOPASST_USERNS_ARGV0"

// reexecChild records whether this process was started with ReexecMarker.
var reexecChild bool

func init() {
	val, ok := os.LookupEnv(ReexecMarker)
	if !ok {
		return
	}
	reexecChild = true
	os.Unsetenv(ReexecMarker)

	if argv0, ok := os.LookupEnv(reexecArgv0); ok {
		os.Unsetenv(reexecArgv0)
		if len(os.Args) > 0 {
			os.Args[0] = argv0
		}
	}
	// "fds=3,4": descriptors our parent handed to nsenter, which leaked
	// through it into this process.
	if list, ok := strings.CutPrefix(val, "fds="); ok {
		for _, s := range strings.Split(list, ",") {
			if fd, err := strconv.Atoi(s); err == nil && fd > 2 {
				unix.Close(fd)
			}
		}
	}
}

// InUserNSChild reports whether this process is the copy re-executed by
// EnterUserNS or JoinUserNS.
func InUserNSChild() bool {
	return reexecChild
}

// reexecSignals are relayed from the waiting parent to the re-executed copy.
var reexecSignals = []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT}

// EnterUserNS makes sure the program runs with full privileges over the
// network namespaces it is going to create. A multi-threaded process cannot
// unshare(CLONE_NEWUSER), so if the effective UID is not 0, the program
// re-executes itself (/proc/self/exe, same arguments, environment plus
// ReexecMarker, same stdin/stdout/stderr) in a new user namespace mapping
// UID and GID 0 to the caller's effective UID and GID (one ID each,
// setgroups denied), relays SIGINT, SIGTERM, SIGHUP and SIGQUIT to it, waits
// for it and returns (exitCode, true, nil): the caller should exit with
// exitCode (128+N if the copy was killed by signal N).
//
// In the re-executed copy, or when already running as UID 0, it returns
// (0, false, nil) and the caller carries on. If the copy could not be
// started, reexeced is false and err says why.
func EnterUserNS() (exitCode int, reexeced bool, err error) {
	if reexecChild || os.Geteuid() == 0 {
		return 0, false, nil
	}
	cmd := &exec.Cmd{
		Path: "/proc/self/exe",
		Args: selfArgs(),
		Env:  reexecEnv("enter", ""),
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: unix.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{
				{ContainerID: 0, HostID: os.Geteuid(), Size: 1},
			},
			GidMappings: []syscall.SysProcIDMap{
				{ContainerID: 0, HostID: os.Getegid(), Size: 1},
			},
			GidMappingsEnableSetgroups: false,
			Pdeathsig:                  unix.SIGKILL,
		},
	}
	return runRelaying(cmd)
}

// JoinUserNS is like EnterUserNS, but re-executes the program inside the
// existing user namespace at path (for example /proc/PID/ns/user), by way of
// "nsenter --user=PATH -- EXE ARGS...": nsenter is single-threaded, so it can
// setns() into a user namespace, and it switches to UID 0 there before
// executing the program again, so that the copy keeps full capabilities in
// that namespace. When running as root, nsenter also drops supplementary
// groups and switches to GID 0; otherwise (setgroups() would fail) groups are
// kept and the GID is whatever the caller's maps to in the namespace, which
// is 0 in the usual case of a namespace mapping 0 to the caller. The original
// argv[0] is preserved.
//
// This happens whatever the current UID. It returns (0, false, nil) in the
// re-executed copy, and also if the process is already in that user
// namespace. nsenter itself failing (for example if the namespace has no
// mapping for UID 0) shows up as a non-zero exit code, with nsenter's
// message on stderr.
func JoinUserNS(path string) (exitCode int, reexeced bool, err error) {
	if reexecChild {
		return 0, false, nil
	}
	ns, err := os.Open(path)
	if err != nil {
		return 0, false, fmt.Errorf("netns: user namespace: %w", err)
	}
	defer ns.Close()
	typ, err := unix.IoctlRetInt(int(ns.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWUSER {
		return 0, false, fmt.Errorf("netns: %s is not a user namespace", path)
	}
	if same, err := sameFile(ns, "/proc/self/ns/user"); err == nil && same {
		return 0, false, nil
	}

	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return 0, false, fmt.Errorf("netns: joining user namespace: %w", err)
	}
	exe, err := os.Open("/proc/self/exe")
	if err != nil {
		return 0, false, fmt.Errorf("netns: opening own executable: %w", err)
	}
	defer exe.Close()

	// ExtraFiles become fds 3 and 4 in nsenter, which keeps them open
	// across its exec; the copy closes them at initialisation.
	argv0 := "/proc/self/exe"
	if len(os.Args) > 0 {
		argv0 = os.Args[0]
	}
	args := []string{"nsenter", "--user=/proc/self/fd/4"}
	if !canDropGroups() {
		// By default nsenter calls setgroups(), setgid(0) and
		// setuid(0). setgroups() fails without CAP_SETGID here if the
		// target namespace denies it too (as "unshare -r" or a Go
		// CLONE_NEWUSER child without setgroups do), and nsenter
		// gives up. Keep our groups and only switch the UID: the
		// GID stays whatever ours maps to there.
		args = append(args, "--preserve-credentials", "--setuid=0")
	}
	args = append(args, "--", "/proc/self/fd/3")
	args = append(args, selfArgs()[1:]...)
	cmd := &exec.Cmd{
		Path:       nsenter,
		Args:       args,
		Env:        reexecEnv("fds=3,4", argv0),
		ExtraFiles: []*os.File{exe, ns},
		SysProcAttr: &syscall.SysProcAttr{
			Pdeathsig: unix.SIGKILL,
		},
	}
	return runRelaying(cmd)
}

// canDropGroups reports whether this process may call setgroups(): it needs
// to be UID 0 (assumed to have CAP_SETGID) in a user namespace that allows
// setgroups.
func canDropGroups() bool {
	if os.Geteuid() != 0 {
		return false
	}
	b, err := os.ReadFile("/proc/self/setgroups")
	if err != nil {
		return true // before Linux 3.19: no such restriction
	}
	return strings.TrimSpace(string(b)) == "allow"
}

// selfArgs returns os.Args, never empty.
func selfArgs() []string {
	if len(os.Args) == 0 {
		return []string{"/proc/self/exe"}
	}
	return os.Args
}

// reexecEnv returns the current environment with the marker (and, if not
// empty, the original argv[0]) set.
func reexecEnv(marker, argv0 string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, ReexecMarker+"=") || strings.HasPrefix(kv, reexecArgv0+"=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, ReexecMarker+"="+marker)
	if argv0 != "" {
		env = append(env, reexecArgv0+"="+argv0)
	}
	return env
}

// sameFile reports whether f and the file at path are the same inode.
func sameFile(f *os.File, path string) (bool, error) {
	a, err := f.Stat()
	if err != nil {
		return false, err
	}
	b, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return os.SameFile(a, b), nil
}

// runRelaying starts cmd with our standard streams, relays termination
// signals to it until it exits, and converts its fate to an exit code.
func runRelaying(cmd *exec.Cmd) (int, bool, error) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr

	// Pdeathsig fires when the forking thread exits: stay on it until the
	// child is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, reexecSignals...)
	defer signal.Stop(sigc)

	if err := cmd.Start(); err != nil {
		return 0, false, fmt.Errorf("netns: re-executing in user namespace: %w", err)
	}

	done := make(chan struct{})
	relayed := make(chan struct{})
	go func() {
		defer close(relayed)
		for {
			select {
			case s := <-sigc:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	<-relayed

	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return 1, true, fmt.Errorf("netns: waiting for re-executed process: %w", err)
		}
	}
	return exitStatus(cmd.ProcessState), true, nil
}

// exitStatus maps a process's end to a shell-style exit code.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
