package e2e_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// netnsQuitLimit is how soon pasta, attached to a namespace, must exit
// once the namespace is gone: 50 ms. About 1-3 ms of it is pasta noticing
// and returning; most of the rest is the kernel's, in exit_group(2):
// releasing the inotify instance (an SRCU grace period) and unregistering
// the tap device (some 15-20 ms of RCU grace periods). It is measured on
// gopasstPlain, the binary users run; on a loaded machine grace periods
// stretch, so each case gets netnsQuitTries attempts and the best counts.
const (
	netnsQuitLimit = 50 * time.Millisecond
	netnsQuitTries = 3
	// netnsQuitRaceLimit bounds the race build's exit, run once per
	// case for the race detector's sake: well under the look-up every
	// second, so the watch is what ended it.
	netnsQuitRaceLimit = 500 * time.Millisecond
)

// TestNetnsQuit attaches pasta to a named namespace (ip-netns) and to a
// process's namespace, in the foreground and in the background, removes
// the namespace (as ip netns del does; the process exits) and measures
// how soon pasta exits: it watches the namespace (inotify on the directory, a
// pidfd on the process) instead of looking every second.
func TestNetnsQuit(t *testing.T) {
	sb := sandbox.New(t)
	for _, bg := range []bool{false, true} {
		mode := "foreground"
		if bg {
			mode = "background"
		}
		t.Run("named/"+mode, func(t *testing.T) {
			name := fmt.Sprintf("%s-quit-%s", sb.HostNS, mode[:2])
			quitWithin(t, func(bin string) time.Duration {
				if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
					t.Fatalf("ip netns add: %v %s", err, out)
				}
				path := filepath.Join("/run/netns", name)
				defer func() {
					if _, err := os.Stat(path); err == nil {
						_ = exec.Command("ip", "netns", "del", name).Run()
					}
				}()
				pidfd, p := startAttached(t, sb, bin, bg, "--netns", name)
				// What "ip netns del" (and podman) do, timed from the
				// moment the file goes: a lazy unmount, then unlink.
				if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
					t.Fatalf("umount %s: %v", path, err)
				}
				start := time.Now()
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
				return checkQuit(t, pidfd, p, start)
			})
		})
		t.Run("process/"+mode, func(t *testing.T) {
			quitWithin(t, func(bin string) time.Duration {
				target := sb.Start(t, sb.HostNS, "unshare", "--net", "sleep", "60")
				pid := target.Cmd.Process.Pid
				waitOwnNetns(t, pid)
				pidfd, p := startAttached(t, sb, bin, bg, strconv.Itoa(pid))
				start := time.Now()
				target.Kill()
				return checkQuit(t, pidfd, p, start)
			})
		})
	}
}

// quitWithin runs one case (attach, remove the namespace, time the exit)
// on gopasstPlain until an exit comes within netnsQuitLimit, at most
// netnsQuitTries times, and, in a race build, once more on the race
// binary, whose exit must come within netnsQuitRaceLimit.
func quitWithin(t *testing.T, run func(bin string) time.Duration) {
	t.Helper()
	var took []time.Duration
	for len(took) < netnsQuitTries {
		d := run(gopasstPlain)
		took = append(took, d)
		if d <= netnsQuitLimit {
			break
		}
	}
	if best := slices.Min(took); best > netnsQuitLimit {
		t.Errorf("pasta took %v to exit (best of %v), want less than %v", best, took, netnsQuitLimit)
	}
	if raceBuild {
		if d := run(gopasst); d > netnsQuitRaceLimit {
			t.Errorf("race build: pasta took %v to exit, want less than %v", d, netnsQuitRaceLimit)
		}
	}
}

// waitOwnNetns waits until process pid (unshare, then sleep) runs in a
// network namespace of its own.
func waitOwnNetns(t *testing.T, pid int) {
	t.Helper()
	host, _ := os.Readlink("/proc/self/ns/net")
	p := strconv.Itoa(pid)
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if ns, _ := os.Readlink("/proc/" + p + "/ns/net"); ns != "" && ns != host {
			if comm, _ := os.ReadFile("/proc/" + p + "/comm"); strings.TrimSpace(string(comm)) == "sleep" {
				return
			}
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("target process has no namespace of its own")
		}
	}
}

// startAttached starts pasta attached to target (in the background, or
// with -f) and returns a pidfd on the process that serves the namespace
// once it is ready: sandboxed, so that it watches the namespace. p is
// the foreground process, nil in the background.
func startAttached(t *testing.T, sb *sandbox.Sandbox, bin string, bg bool, target ...string) (int, *sandbox.Proc) {
	t.Helper()
	args := []string{"pasta", "--config-net"}
	var pidFile string
	if bg {
		pidFile = filepath.Join(t.TempDir(), "pasta.pid")
		args = append(args, "-P", pidFile)
	} else {
		args = append(args, "-f")
	}
	// A race build sleeps for a second at exit (atexit_sleep_ms), unless told otherwise.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	p := sb.Start(t, sb.HostNS, "env", append([]string{"GORACE=" + gorace, bin}, append(args, target...)...)...)
	pid := p.Cmd.Process.Pid
	if bg {
		// The parent exits once the daemon is ready (sandboxed).
		code, err := p.Wait(10 * time.Second)
		if err != nil || code != 0 {
			t.Fatalf("pasta: exit %d (%v)\n%s", code, err, p.Stderr())
		}
		b, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			t.Fatalf("PID file: %v", err)
		}
		p = nil
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	t.Cleanup(func() {
		_ = unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
		unix.Close(pidfd)
	})
	if !bg {
		sandboxedStatus(t, pid)
	}

	return pidfd, p
}

// checkQuit waits for the process behind pidfd to exit and returns how
// long after start it did; in the foreground it checks the exit status
// and the log too.
func checkQuit(t *testing.T, pidfd int, p *sandbox.Proc, start time.Time) time.Duration {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		left := 5*time.Second - time.Since(start)
		if left <= 0 {
			t.Fatal("pasta did not exit within 5 s of the namespace going away")
		}
		ts := unix.NsecToTimespec(left.Nanoseconds())
		n, err := unix.Ppoll(fds, &ts, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("ppoll: %v", err)
		}
		if n > 0 {
			break
		}
	}
	took := time.Since(start)
	t.Logf("pasta exited %v after the namespace went away", took.Round(100*time.Microsecond))
	if p != nil {
		code, err := p.Wait(5 * time.Second)
		if err != nil || code != 0 {
			t.Errorf("pasta: exit %d (%v)\n%s", code, err, p.Stderr())
		}
		if !strings.Contains(p.Stderr(), "is gone") {
			t.Errorf("no word of the namespace going away:\n%s", p.Stderr())
		}
		if strings.Contains(p.Stderr(), "WARNING: DATA RACE") {
			t.Errorf("data race in gopasst:\n%s", p.Stderr())
		}
	}
	return took
}
