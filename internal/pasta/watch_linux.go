package pasta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/log"
)

// targetWatch tells when the namespace pasta is attached to goes away.
//
// A process's namespace (a PID, or --netns /proc/PID/ns/net) goes with
// the process: a pidfd on it becomes readable when it exits. A file
// elsewhere (/run/netns/NAME, podman's /run/user/UID/netns/...) is
// removed from its directory: inotify there reports it. Either is set up
// before the sandbox takes paths away; what the wait then calls (read,
// ppoll, epoll through Go's netpoller) is on the seccomp allow-list.
//
// What neither sees (a file unmounted but left in place, a procfs path
// of another shape, no pidfd or inotify to be had) the periodic look-up
// catches: the file is looked up from a descriptor on its directory and
// must still be the same inode.
type targetWatch struct {
	path     string
	dir      int // -1 with --no-netns-quit
	base     string
	dev, ino uint64

	// notify is the inotify instance or the pidfd, nil without.
	notify *os.File
	// events receives true when the target process exited, false when
	// the directory changed in a way that may concern the file (look
	// again). Never closed; nothing is sent without notify.
	events chan bool
	// stopped is closed when the goroutine reading notify returns.
	stopped chan struct{}
}

// watchTarget starts watching the target namespace's file.
func watchTarget(cfg *conf.Config) (*targetWatch, error) {
	w := &targetWatch{path: targetNetns(cfg), dir: -1, events: make(chan bool, 1)}
	if cfg.NoNetnsQuit {
		return w, nil
	}
	dir, base := filepath.Split(w.path)
	if dir == "" {
		dir = "."
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", w.path, err)
	}
	w.dir, w.base = fd, base
	var st unix.Stat_t
	if unix.Fstatat(fd, base, &st, 0) == nil {
		w.dev, w.ino = st.Dev, st.Ino
	}
	pid := cfg.TargetPID
	if pid <= 0 {
		pid = procNetnsPID(w.path)
	}
	if pid > 0 {
		err = w.watchProcess(pid)
	} else {
		err = w.watchDir(dir)
	}
	if err != nil {
		log.Debugf("namespace watch: %v: looking every second instead", err)
	}
	return w, nil
}

// procNetnsPID is N for a path /proc/N/ns/net, else 0.
func procNetnsPID(path string) int {
	rest, ok := strings.CutPrefix(filepath.Clean(path), "/proc/")
	if !ok {
		return 0
	}
	num, ok := strings.CutSuffix(rest, "/ns/net")
	if !ok {
		return 0
	}
	pid, err := strconv.Atoi(num)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != num {
		return 0
	}
	return pid
}

// watchProcess watches for process pid's exit through a pidfd, which the
// Go netpoller waits on.
func (w *targetWatch) watchProcess(pid int) error {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.EINVAL) { // PIDFD_NONBLOCK: Linux 5.10
		if fd, err = unix.PidfdOpen(pid, 0); err == nil {
			err = unix.SetNonblock(fd, true)
		}
	}
	if errors.Is(err, unix.ESRCH) {
		w.events <- true // gone already
		return nil
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return err
	}
	w.notify, w.stopped = f, make(chan struct{})
	go func() {
		defer close(w.stopped)
		// Called once, then each time the netpoller says the pidfd is
		// readable (the process exited), until it returns true.
		err := rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Ppoll(pfd, &unix.Timespec{}, nil)
			return err == nil && n > 0
		})
		if err == nil {
			w.send(true)
		} else if !errors.Is(err, os.ErrClosed) {
			log.Debugf("namespace watch: pidfd: %v", err)
		}
	}()
	return nil
}

// watchMask is what inotify reports on the directory: the file removed or
// renamed away, the directory itself removed. IN_IGNORED (the watch is
// gone: the directory removed, its file system unmounted) and IN_UNMOUNT
// come anyway.
const watchMask = unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_DELETE_SELF | unix.IN_ONLYDIR

// watchDir watches dir, where the namespace file is, with inotify. Like
// the reference, not on pseudo file systems, which report nothing.
func (w *targetWatch) watchDir(dir string) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(w.dir, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	switch fs.Type {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.DEVPTS_SUPER_MAGIC:
		return fmt.Errorf("%s: no inotify events on this file system", dir)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("inotify_init1: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, watchMask); err != nil {
		unix.Close(fd)
		return fmt.Errorf("inotify_add_watch %s: %w", dir, err)
	}
	w.notify, w.stopped = os.NewFile(uintptr(fd), "inotify"), make(chan struct{})
	go func() {
		defer close(w.stopped)
		w.readInotify()
	}()
	return nil
}

// readInotify reads inotify events until the watch or the descriptor is
// gone, and says when one may concern the namespace file.
func (w *targetWatch) readInotify() {
	// Room for many events: each is a header and a name of up to
	// NAME_MAX bytes, and the kernel refuses a buffer too short for the
	// next one.
	buf := make([]byte, 16*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.notify.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				log.Debugf("namespace watch: inotify: %v", err)
			}
			return
		}
		look, ignored := w.parseEvents(buf[:n])
		if look {
			w.send(false)
		}
		if ignored {
			return
		}
	}
}

// parseEvents tells whether the events in b may concern the namespace
// file (look) and whether the watch is gone (ignored).
func (w *targetWatch) parseEvents(b []byte) (look, ignored bool) {
	for len(b) >= unix.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(b[4:])
		size := int(binary.NativeEndian.Uint32(b[12:]))
		if size > len(b)-unix.SizeofInotifyEvent {
			break
		}
		name := b[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+size]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		b = b[unix.SizeofInotifyEvent+size:]
		switch {
		case mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) != 0:
			look = look || string(name) == w.base
		case mask&(unix.IN_DELETE_SELF|unix.IN_UNMOUNT|unix.IN_IGNORED|unix.IN_Q_OVERFLOW) != 0:
			look = true
		}
		ignored = ignored || mask&unix.IN_IGNORED != 0
	}
	return look, ignored
}

// send passes an event on without blocking: one pending is as good as
// many, but "exited" must not be lost behind "look again".
func (w *targetWatch) send(exited bool) {
	select {
	case w.events <- exited:
	default:
		if exited {
			select {
			case <-w.events:
			default:
			}
			select {
			case w.events <- true:
			default:
			}
		}
	}
}

// gone reports whether the namespace file disappeared or now names
// another namespace. EACCES means it is there: /proc/PID/ns/net of a
// process that pasta, having switched to another user, may no longer
// look into (the reference checks it the same way).
func (w *targetWatch) gone() bool {
	if w.dir < 0 {
		return false
	}
	var st unix.Stat_t
	err := unix.Fstatat(w.dir, w.base, &st, 0)
	switch {
	case err == nil:
		return st.Dev != w.dev || st.Ino != w.ino
	case errors.Is(err, unix.EACCES):
		return false
	}
	return true
}

func (w *targetWatch) close() {
	if w.notify != nil {
		w.notify.Close()
		<-w.stopped
		w.notify = nil
	}
	if w.dir >= 0 {
		unix.Close(w.dir)
		w.dir = -1
	}
}
