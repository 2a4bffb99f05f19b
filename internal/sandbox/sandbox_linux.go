package sandbox

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/log"
)

// Mode selects the system call allow-list.
type Mode int

// The modes, as gopasst's.
const (
	Pasta Mode = iota
	Passt
)

func (m Mode) String() string {
	if m == Passt {
		return "passt"
	}
	return "pasta"
}

// Config says how to sandbox.
type Config struct {
	// Mode is gopasst's mode; each has its own system call list.
	Mode Mode
	// RunAs is --runas: UID, UID:GID, LOGIN or LOGIN:GROUP; "" for the
	// default ("nobody" when started as root).
	RunAs string
	// Disabled is --no-sandbox: New returns a nil *Sandbox, whose
	// methods do nothing.
	Disabled bool
	// InOwnUserNS says that gopasst runs in the user namespace it made
	// (or joined) for itself because it was not root (pasta): RunAs was
	// checked before, outside, and gopasst stays UID 0 in there.
	InOwnUserNS bool
}

// Sandbox is the sandbox of one gopasst process. Make it with New early
// (it checks --runas while the user database is reachable), register the
// files to remove at exit with RemoveAtExit and pasta's command with
// SetCommand, Apply it after set-up, send the command signals with Signal,
// and Close it at exit. A nil *Sandbox (--no-sandbox) is valid: Apply and
// Close do nothing, Signal signals directly.
type Sandbox struct {
	mode Mode
	// change says whether to switch to uid and gid.
	change   bool
	uid, gid int
	// keep are the capabilities kept when the process stays UID 0.
	keep uint64

	remove  []fileID
	applied bool
	helperState
}

// fileID names a file to remove at exit, if it is still the same one.
type fileID struct {
	path     string
	dev, ino uint64
}

// probeHook, when set (builds with the "sandboxtest" tag only), runs at
// the end of Apply: it tries forbidden calls for the tests.
var probeHook func()

// New checks cfg and returns the sandbox to apply, or nil with
// cfg.Disabled. It resolves --runas, and fails if it asks for a switch
// gopasst has no right to make.
func New(cfg Config) (*Sandbox, error) {
	if cfg.Disabled {
		return nil, nil
	}
	s := &Sandbox{mode: cfg.Mode}
	if cfg.Mode == Pasta {
		s.keep = 1 << unix.CAP_NET_BIND_SERVICE
	}
	switch {
	case cfg.InOwnUserNS:
		// The user namespace maps UID 0 to the user who started
		// gopasst, who was checked against --runas before.
	case os.Geteuid() != 0:
		if cfg.RunAs == "" {
			break
		}
		uid, gid, err := LookupRunAs(cfg.RunAs)
		if err != nil {
			return nil, err
		}
		// As the reference: setuid() and setgid() to oneself work,
		// anything else needs privileges.
		if uid != os.Getuid() || (gid != os.Getgid() && gid != os.Getegid()) {
			return nil, fmt.Errorf("--runas %s: cannot switch to UID %d, GID %d without privileges", cfg.RunAs, uid, gid)
		}
	default:
		init, err := initialUserNS()
		if err != nil {
			return nil, err
		}
		runas := cfg.RunAs
		if runas == "" {
			if !init {
				break // root of a container: stay, as the reference
			}
			runas = "nobody"
		}
		uid, gid, err := LookupRunAs(runas)
		if err != nil {
			if cfg.RunAs != "" {
				return nil, err
			}
			// No user database entry: the conventional
			// overflow IDs.
			uid, gid = 65534, 65534
		}
		s.uid, s.gid = uid, gid
		s.change = uid != 0 || gid != 0
		if cfg.RunAs == "" {
			log.Debugf("Started as root, will change to nobody (UID %d, GID %d)", uid, gid)
		}
	}
	return s, nil
}

// initialUserNS reports whether the process is in the initial user
// namespace, whose UID map is the identity over all IDs.
func initialUserNS() (bool, error) {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false, fmt.Errorf("sandbox: %w", err)
	}
	var inside, outside, count uint64
	if n, _ := fmt.Sscan(string(b), &inside, &outside, &count); n != 3 {
		return false, fmt.Errorf("sandbox: unexpected /proc/self/uid_map %q", b)
	}
	return inside == 0 && outside == 0 && count == 1<<32-1, nil
}

// RemoveAtExit has path removed when gopasst exits, if it is then still
// the file it is now; the sandboxed process cannot remove files itself,
// the helper does (see the package documentation). Call it before Apply.
// An empty path is ignored.
func (s *Sandbox) RemoveAtExit(path string) {
	if s == nil || path == "" {
		return
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		log.Debugf("sandbox: %s will not be removed at exit: %v", path, err)
		return
	}
	s.remove = append(s.remove, fileID{path, st.Dev, st.Ino})
}

// Apply confines the process for good (see the package documentation).
// Call it once set-up is complete; whatever is not open by then stays out
// of reach.
func (s *Sandbox) Apply() error {
	if s == nil || s.applied {
		return nil
	}
	s.applied = true
	// Lazily loaded data the data path may want later.
	_, _ = time.Now().Zone()

	if s.needsHelper() {
		if err := s.startHelper(); err != nil {
			return fmt.Errorf("sandbox: %w", err)
		}
	}
	// One thread for the per-thread calls: no_new_privs before seccomp,
	// capget for the decisions.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("sandbox: PR_SET_DUMPABLE: %w", err)
	}
	caps, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	all := allThreadsSupported()

	if has(caps, unix.CAP_SYS_ADMIN) && has(caps, unix.CAP_SYS_CHROOT) {
		if err := emptyRoot(); err != nil {
			return fmt.Errorf("sandbox: empty root: %w", err)
		}
	} else {
		log.Debugf("sandbox: no privileges for an empty root directory")
	}

	switch {
	case !has(caps, unix.CAP_SYS_ADMIN):
		log.Debugf("sandbox: no privileges to detach IPC and UTS namespaces")
	case !all:
		log.Debugf("sandbox: IPC and UTS namespaces not detached (cgo build: no AllThreadsSyscall)")
	default:
		if err := allThreads(unix.SYS_UNSHARE, unix.CLONE_NEWIPC|unix.CLONE_NEWUTS, 0, 0); err != nil {
			return fmt.Errorf("sandbox: unshare IPC and UTS namespaces: %w", err)
		}
	}

	if err := s.dropPrivileges(caps, all); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}

	filter, err := assemble(rules(profile{mode: s.mode, pid: uint32(os.Getpid())}))
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := install(filter); err != nil {
		return fmt.Errorf("sandbox: seccomp: %w", err)
	}
	log.Debugf("sandbox: applied (%s profile, %d instructions)", s.mode, len(filter))
	if probeHook != nil {
		probeHook()
	}
	return nil
}

// dropPrivileges empties the bounding and inheritable sets, switches user
// if asked to, and leaves only s.keep (or nothing, for another user) in
// the effective and permitted sets.
func (s *Sandbox) dropPrivileges(caps uint64, all bool) error {
	if all {
		if has(caps, unix.CAP_SETPCAP) {
			for c := 0; c < 64; c++ {
				if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err != nil {
					break // past the last capability
				}
				if err := allThreads(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil {
					return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
				}
			}
		}
		if err := allThreads(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil {
			return fmt.Errorf("clearing ambient capabilities: %w", err)
		}
	}
	if s.change {
		// The standard library makes these on every thread, with or
		// without cgo.
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("dropping supplementary groups: %w", err)
		}
		if err := syscall.Setresgid(s.gid, s.gid, s.gid); err != nil {
			return fmt.Errorf("switching to GID %d: %w", s.gid, err)
		}
		if err := syscall.Setresuid(s.uid, s.uid, s.uid); err != nil {
			return fmt.Errorf("switching to UID %d: %w", s.uid, err)
		}
	}
	keep := s.keep & caps
	if s.uid != 0 {
		keep = 0 // already cleared by the kernel on the UID change
	}
	if !all {
		if keep != caps && s.uid == 0 {
			log.Debugf("sandbox: capabilities not dropped (cgo build: no AllThreadsSyscall); the seccomp filter stands in")
		}
		return nil
	}
	hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := &[2]unix.CapUserData{
		{Effective: uint32(keep), Permitted: uint32(keep)},
		{Effective: uint32(keep >> 32), Permitted: uint32(keep >> 32)},
	}
	err := allThreads(unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(data)), 0)
	runtime.KeepAlive(hdr)
	runtime.KeepAlive(data)
	if err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	return nil
}

// effectiveCaps returns the calling thread's effective capabilities.
func effectiveCaps() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("capget: %w", err)
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

func has(caps uint64, c int) bool { return caps&(1<<c) != 0 }

// allThreadsSupported reports whether syscall.AllThreadsSyscall works: not
// in binaries that link cgo.
func allThreadsSupported() bool {
	// A harmless call every thread makes alike.
	_, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_GET_DUMPABLE, 0, 0)
	return e != unix.ENOTSUP
}

// allThreads makes a system call on every thread of the process.
func allThreads(trap, a1, a2, a3 uintptr) error {
	if _, _, e := syscall.AllThreadsSyscall(trap, a1, a2, a3); e != 0 {
		return e
	}
	return nil
}

// emptyRoot makes an empty read-only directory the root and working
// directory of every thread: a detached tmpfs, built on a throwaway thread
// that has a private mount namespace (so that the mount, if mount(2) has to
// make one, never shows anywhere else), then entered with fchdir and
// chroot from a thread that shares the process's fs_struct.
func emptyRoot() error {
	var fd int
	err := onThrowawayThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare(CLONE_NEWNS): %w", err)
		}
		var err error
		fd, err = emptyFS()
		return err
	})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fchdir(fd); err != nil {
		return fmt.Errorf("fchdir: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return nil
}

// emptyFS returns a directory descriptor on the root of a new, empty,
// read-only tmpfs that is mounted nowhere.
func emptyFS() (int, error) {
	const attrs = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return emptyFSMount()
	}
	if err != nil {
		return -1, fmt.Errorf("fsopen: %w", err)
	}
	defer unix.Close(fs)
	for _, kv := range [][2]string{{"mode", "0555"}, {"size", "4k"}, {"nr_inodes", "1"}} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return -1, fmt.Errorf("fsconfig %s=%s: %w", kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigSetFlag(fs, "ro"); err != nil {
		return -1, fmt.Errorf("fsconfig ro: %w", err)
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return -1, fmt.Errorf("fsconfig create: %w", err)
	}
	m, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return -1, fmt.Errorf("fsmount: %w", err)
	}
	return m, nil
}

// emptyFSMount is emptyFS for kernels before 5.2: the tmpfs is mounted on
// /proc of the calling thread's private mount namespace, which disappears
// with the thread; the descriptor keeps the file system.
func emptyFSMount() (int, error) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return -1, fmt.Errorf("making mounts private: %w", err)
	}
	const flags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("gopasst", "/proc", "tmpfs", flags, "mode=0555,size=4k,nr_inodes=1"); err != nil {
		return -1, fmt.Errorf("mounting tmpfs: %w", err)
	}
	fd, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening tmpfs: %w", err)
	}
	return fd, nil
}

// onThrowawayThread runs body on a goroutine locked to an OS thread other
// than the main one, and never unlocks it, so the thread ends with the
// goroutine and whatever body did to it (its own mount namespace and
// fs_struct) goes with it. The main thread cannot end: a goroutine that
// lands there keeps it, so no other lands there, and tries again.
func onThrowawayThread(body func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			done <- onThrowawayThread(body)
			runtime.UnlockOSThread()
			return
		}
		done <- body()
	}()
	return <-done
}

// install installs filter on every thread. no_new_privs is set on the
// calling thread, which must stay the same (the caller locks it); TSYNC
// sets it on the others.
func install(filter []unix.SockFilter) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
	}
	prog := &unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(prog)))
	runtime.KeepAlive(prog)
	runtime.KeepAlive(filter)
	switch {
	case e != 0:
		return e
	case r != 0:
		return fmt.Errorf("thread %d cannot take the filter", r)
	}
	return nil
}
