package sandbox

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A probe makes one system call the sandbox is about and returns its
// error: for the tests, which run them in a sandboxed process (a helper,
// or gopasst built with the "sandboxtest" tag). Each forbidden call is
// chosen so that, were the filter to let it through, it would fail with
// another error or do no harm.
type probe struct {
	name string
	// allowed says whether the sandbox lets the call through.
	allowed bool
	call    func() error
}

// probes are the calls tried by the tests.
var probes = []probe{
	// Running anything at all. The path does not exist in the empty
	// root: ENOENT if execve got through.
	{"execve", false, func() error {
		p, _ := unix.BytePtrFromString("/bin/true")
		argv := []*byte{p, nil}
		envv := []*byte{nil}
		_, _, e := unix.Syscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(p)), uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])))
		return errnoErr(e)
	}},
	// Opening anything, even the (empty) root.
	{"openat", false, func() error {
		fd, err := unix.Openat(unix.AT_FDCWD, "/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}},
	{"socket AF_PACKET", false, func() error { return trySocket(unix.AF_PACKET, unix.SOCK_RAW, 0) }},
	{"socket AF_NETLINK", false, func() error { return trySocket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE) }},
	{"socket AF_INET SOCK_RAW", false, func() error { return trySocket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP) }},
	{"socket AF_INET SOCK_STREAM", true, func() error { return trySocket(unix.AF_INET, unix.SOCK_STREAM, 0) }},
	{"socket AF_INET SOCK_STREAM IPPROTO_SCTP", false, func() error { return trySocket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP) }},
	{"socket AF_UNIX", false, func() error { return trySocket(unix.AF_UNIX, unix.SOCK_DGRAM, 0) }},
	{"socket AF_INET6 SOCK_DGRAM", true, func() error {
		return trySocket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	}},
	// A new process: CLONE_SIGHAND without CLONE_VM is EINVAL for the
	// kernel, so nothing is forked if the filter fails.
	{"clone (fork)", false, func() error {
		_, _, e := unix.RawSyscall6(unix.SYS_CLONE, unix.CLONE_SIGHAND|uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		return errnoErr(e)
	}},
	{"unshare CLONE_NEWUSER", false, func() error { return unix.Unshare(unix.CLONE_NEWUSER) }},
	{"setns", false, func() error { return unix.Setns(-1, unix.CLONE_NEWNET) }},
	{"ptrace", false, func() error {
		_, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
		return errnoErr(e)
	}},
	{"mmap PROT_EXEC", false, func() error {
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err == nil {
			_ = unix.Munmap(b)
		}
		return err
	}},
	{"mount", false, func() error { return unix.Mount("none", "/", "tmpfs", 0, "") }},
	{"setuid 0", false, func() error {
		_, _, e := unix.RawSyscall(unix.SYS_SETUID, 0, 0, 0)
		return errnoErr(e)
	}},
	{"kill 1", false, func() error { return unix.Kill(1, 0) }},
	{"kill self", true, func() error { return unix.Kill(unix.Getpid(), 0) }},
	{"unlinkat", false, func() error { return unix.Unlinkat(unix.AT_FDCWD, "gopasst-probe", 0) }},
}

func trySocket(domain, typ, proto int) error {
	fd, err := unix.Socket(domain, typ, proto)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// runProbes runs the probes and returns, for each, "ok" or its error.
func runProbes() map[string]string {
	out := make(map[string]string, len(probes))
	for _, p := range probes {
		err := p.call()
		switch {
		case err == nil:
			out[p.name] = "ok"
		case errors.Is(err, unix.EPERM):
			out[p.name] = "EPERM"
		default:
			out[p.name] = err.Error()
		}
	}
	return out
}
