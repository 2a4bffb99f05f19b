package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RunDir is where ip-netns(8) bind-mounts named network namespaces.
// Open resolves a bare name (no slash) relative to it.
const RunDir = "/run/netns"

// threadNetnsPath names the network namespace of the calling OS thread (as
// opposed to /proc/self/ns/net, which is the thread group leader's).
const threadNetnsPath = "/proc/thread-self/ns/net"

// ErrClosed is returned by methods of an NS after Close.
var ErrClosed = errors.New("netns: namespace handle is closed")

// NS is a handle on a network namespace: an open file descriptor on its nsfs
// inode. Holding the descriptor keeps the namespace alive even when no
// process lives in it and it is not bind-mounted anywhere.
//
// All methods are safe for concurrent use, except that Close must not race
// with other calls.
type NS struct {
	mu   sync.RWMutex
	fd   int
	path string
}

// New creates a fresh, empty network namespace (it only contains a "lo"
// interface, down) and returns a handle on it. The calling thread is not
// moved: the namespace is created on a dedicated locked OS thread that is
// discarded afterwards.
func New() (*NS, error) {
	fd := -1
	err := onLockedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: unshare(CLONE_NEWNET): %w", err)
		}
		var err error
		fd, err = unix.Open(threadNetnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("netns: open %s: %w", threadNetnsPath, err)
		}
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	return &NS{fd: fd, path: fdNsName(fd)}, nil
}

// Open returns a handle on an existing network namespace, given the path of
// an nsfs file such as /proc/PID/ns/net or /run/netns/NAME. As with
// ip-netns(8) and the reference --netns option, a path without any slash is
// taken as a name under RunDir. The file must refer to a network
// namespace.
func Open(path string) (*NS, error) {
	if path == "" {
		return nil, errors.New("netns: empty namespace path")
	}
	if !strings.Contains(path, "/") {
		path = RunDir + "/" + path
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns: open %s: %w", path, err)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netns: %s is not a namespace file: %w", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		unix.Close(fd)
		return nil, fmt.Errorf("netns: %s is not a network namespace", path)
	}
	return &NS{fd: fd, path: path}, nil
}

// Fd returns the namespace file descriptor (-1 after Close). It stays owned by
// n: do not close it.
func (n *NS) Fd() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.fd
}

// Path returns a human-readable name for the namespace, for logging: the path
// given to Open, or "net:[INODE]" for a namespace made by New.
func (n *NS) Path() string {
	return n.path
}

// Close releases the namespace descriptor. The namespace itself goes away
// once nothing else (processes, bind mounts, other descriptors) refers to it;
// devices in it, such as a tap created by CreateTap, are then destroyed.
// Closing twice returns ErrClosed. Close waits for Do calls in progress, so
// it must not be called from within Do.
func (n *NS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fd < 0 {
		return ErrClosed
	}
	err := unix.Close(n.fd)
	n.fd = -1
	return err
}

// Do runs fn on an OS thread that has joined the namespace; the thread is
// discarded afterwards (see onLockedThread). fn runs on a separate goroutine
// locked to its thread; Do blocks until it returns. Anything fn creates that
// is bound to a namespace at creation time (sockets, netlink handles, tap
// devices, child processes forked from this thread) belongs to n. Goroutines
// started by fn do not run inside the namespace.
//
// A panic in fn is propagated to the caller of Do.
func (n *NS) Do(fn func() error) error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.fd < 0 {
		return ErrClosed
	}

	var fnErr error
	var panicked bool
	var panicVal any
	err := onLockedThread(func() error {
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: setns to %s: %w", n.path, err)
		}
		defer func() {
			if r := recover(); r != nil {
				panicked, panicVal = true, r
			}
		}()
		fnErr = fn()
		return nil
	})
	if panicked {
		panic(panicVal)
	}
	if err != nil {
		if fnErr != nil {
			return errors.Join(fnErr, err)
		}
		return err
	}
	return fnErr
}

// onLockedThread runs body on a new goroutine locked to its OS thread and
// never unlocks it, so the runtime terminates the thread when the goroutine
// ends instead of handing it to other goroutines. Body may therefore leave
// the thread in another namespace. Switching back is not attempted: inside
// a user namespace gopasst has no right to re-enter the host's network
// namespace (it lacks CAP_SYS_ADMIN over the namespace's owner), and a
// discarded thread costs one clone.
//
// The main thread is the exception: the runtime cannot terminate it, and
// /proc/self names it, so it must never change namespace. A goroutine that
// finds itself locked to it keeps it (so no other goroutine can land there)
// while a further goroutine does the work, then releases it unchanged.
func onLockedThread(body func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			done <- onLockedThread(body)
			runtime.UnlockOSThread()
			return
		}
		done <- body()
	}()
	return <-done
}

// fdNsName returns the "net:[INODE]" description of a namespace descriptor.
func fdNsName(fd int) string {
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "netns fd " + strconv.Itoa(fd)
	}
	return link
}

// NetlinkHandle returns a new rtnetlink handle whose socket lives in the
// namespace. A netlink socket belongs to the namespace of the thread that
// created it, so once created the handle can be used from any goroutine
// without entering the namespace again. The caller must Close it.
func (n *NS) NetlinkHandle() (*netlink.Handle, error) {
	var h *netlink.Handle
	err := n.Do(func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: netlink handle in %s: %w", n.path, err)
	}
	return h, nil
}

// StartCommand starts cmd (as cmd.Start does) so that the new process lives
// in the namespace: the fork happens on a locked thread that joined it, and a
// child inherits the network namespace of the thread that forked it.
// cmd.SysProcAttr may ask for further new namespaces (CLONE_NEWUTS,
// CLONE_NEWPID, ...), but not CLONE_NEWNET, which would defeat the purpose.
// Wait for the command as usual with cmd.Wait, from any goroutine.
//
// cmd.SysProcAttr.Pdeathsig must not be set: it fires when the forking
// thread exits, and the thread used here is discarded right after the fork.
func (n *NS) StartCommand(cmd *exec.Cmd) error {
	if cmd.SysProcAttr != nil && cmd.SysProcAttr.Cloneflags&unix.CLONE_NEWNET != 0 {
		return errors.New("netns: StartCommand: CLONE_NEWNET requested in SysProcAttr")
	}
	return n.Do(cmd.Start)
}
