//go:build linux && (amd64 || arm64)

package sandbox

import (
	"golang.org/x/sys/unix"
)

// The allow-lists were measured: gopasst (default, pure-Go and race
// builds) ran under "strace -f" through the end-to-end tests (pasta with
// -u and -U forwards, splicing, auto forwarding, ICMP errors, fragments,
// ICMP echo, TCP both ways with -t,
// SIGUSR1 counters, flow expiry; passt with a fake guest and with qemu)
// and through the cases they leave out (pasta attached to a named
// namespace in the background, with -P, -l and --log-size, until the
// namespace is deleted; SIGTERM passed to the command; passt -1 with -P
// and -p, until the guest leaves). For each process, the calls made by
// any of its threads after its seccomp(2) call returned are the list.
// Added to them: the calls Go's runtime makes only on rarer paths (new
// threads, signals, memory returned to the system, vDSO fallbacks), those
// the C library makes for threads in cgo and race builds, and the exit
// path. A run with SECCOMP_RET_LOG as the default action (refused calls
// logged by the kernel instead of refused) found nothing else but glibc's
// get_nprocs(), which in race builds opens /sys/devices/system/cpu/online
// and /proc/stat in new threads and, refused, falls back to
// sched_getaffinity.
//
// A change that makes the data path use another system call must add it
// here, or the call fails with EPERM; the end-to-end tests run sandboxed
// and catch that.

// allow is a rule that allows a call whatever its arguments.
func allow(nr uintptr, name string) rule { return rule{nr: nr, name: name} }

// hotRules are the data path's per-datagram calls, first in the filter.
var hotRules = []rule{
	allow(unix.SYS_RECVMMSG, "recvmmsg"),       // socket batches
	allow(unix.SYS_SENDMMSG, "sendmmsg"),       // socket batches
	allow(unix.SYS_READ, "read"),               // tap frames, eventfd, procfs tables, inotify events (pasta's namespace watch)
	allow(unix.SYS_WRITE, "write"),             // tap frames, log
	allow(unix.SYS_EPOLL_PWAIT, "epoll_pwait"), // UDP loop, Go netpoller
	allow(unix.SYS_FUTEX, "futex"),             // Go runtime: goroutine hand-off
	allow(unix.SYS_PPOLL, "ppoll"),             // tap device and qemu stream waits (package yield); has the target's process exited (pasta's pidfd, zero timeout)
	allow(unix.SYS_RECVFROM, "recvfrom"),       // single datagrams, qemu stream, sock_diag answers
	allow(unix.SYS_SENDMSG, "sendmsg"),         // qemu stream, single datagrams
	allow(unix.SYS_RECVMSG, "recvmsg"),         // ICMP errors (MSG_ERRQUEUE)
	allow(unix.SYS_SENDTO, "sendto"),           // as sendmsg (package net's UDP writes), sock_diag requests
	allow(unix.SYS_PWRITE64, "pwrite64"),       // pcap (-p)
	allow(unix.SYS_READV, "readv"),             // tap frames behind a virtio-net header
	allow(unix.SYS_WRITEV, "writev"),           // the same, and segmented frames
}

// runtimeRules are what Go's runtime (and, in cgo and race builds, the C
// library) need on any thread at any time.
func runtimeRules(pid uint32) []rule {
	return []rule{
		allow(unix.SYS_FUTEX, "futex"),             // goroutine hand-off (first among the hot calls)
		allow(unix.SYS_NANOSLEEP, "nanosleep"),     // usleep: sysmon, spinning
		allow(unix.SYS_SCHED_YIELD, "sched_yield"), // osyield
		allow(unix.SYS_GETPID, "getpid"),           // signals
		allow(unix.SYS_GETTID, "gettid"),           // signals, preemption
		// Preemption and signal forwarding, to gopasst's own threads.
		{nr: unix.SYS_TGKILL, name: "tgkill", conds: []cond{argIn(0, pid)}},
		// raiseproc: a fatal signal sent again to itself.
		{nr: unix.SYS_KILL, name: "kill", conds: []cond{argIn(0, pid)}},
		allow(unix.SYS_RT_SIGRETURN, "rt_sigreturn"),
		allow(unix.SYS_RT_SIGPROCMASK, "rt_sigprocmask"),
		allow(unix.SYS_RT_SIGACTION, "rt_sigaction"), // os/signal: Stop at exit
		allow(unix.SYS_SIGALTSTACK, "sigaltstack"),   // new threads
		allow(unix.SYS_RESTART_SYSCALL, "restart_syscall"),
		// Memory, never executable.
		{nr: unix.SYS_MMAP, name: "mmap", conds: []cond{argMasked(2, unix.PROT_EXEC, 0)}},
		{nr: unix.SYS_MPROTECT, name: "mprotect", conds: []cond{argMasked(2, unix.PROT_EXEC, 0)}}, // libc: guard pages of thread stacks
		allow(unix.SYS_MUNMAP, "munmap"),
		allow(unix.SYS_MADVISE, "madvise"), // scavenger
		// New threads, not processes: CLONE_THREAD must be set.
		{nr: unix.SYS_CLONE, name: "clone", conds: []cond{argMasked(0, unix.CLONE_THREAD, unix.CLONE_THREAD)}},
		// clone3's flags are in memory the filter cannot read:
		// ENOSYS makes the C library fall back to clone.
		{nr: unix.SYS_CLONE3, name: "clone3", ret: retENOSYS},
		allow(unix.SYS_SET_ROBUST_LIST, "set_robust_list"),     // libc threads
		allow(unix.SYS_RSEQ, "rseq"),                           // libc threads
		allow(unix.SYS_SCHED_GETAFFINITY, "sched_getaffinity"), // libc threads
		allow(unix.SYS_EXIT, "exit"),                           // thread exit
		allow(unix.SYS_EXIT_GROUP, "exit_group"),
		allow(unix.SYS_CLOCK_GETTIME, "clock_gettime"), // without a vDSO
		allow(unix.SYS_GETRANDOM, "getrandom"),         // without a vDSO
		allow(unix.SYS_EPOLL_CTL, "epoll_ctl"),         // Go netpoller, UDP loop
		allow(unix.SYS_CLOSE, "close"),                 // sockets of expired flows
		allow(unix.SYS_FCNTL, "fcntl"),                 // os.File, non-blocking mode
		allow(unix.SYS_DUP3, "dup3"),                   // daemon: standard error to /dev/null
	}
}

// dataRules are the data path's calls in both modes.
var dataRules = []rule{
	// New flows: UDP sockets, ping sockets (ICMP echo: datagram
	// sockets of IPPROTO_ICMP, IPPROTO_ICMPV6) and TCP sockets over IPv4
	// and IPv6, nothing else (no raw, packet or netlink sockets). The
	// kernel itself refuses the pairs left (a stream of ICMP, ...).
	{nr: unix.SYS_SOCKET, name: "socket", conds: []cond{
		argIn(0, unix.AF_INET, unix.AF_INET6),
		argMasked(1, 0xf, unix.SOCK_DGRAM, unix.SOCK_STREAM), // SOCK_TYPE_MASK
		argIn(2, 0, unix.IPPROTO_UDP, unix.IPPROTO_TCP, unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6),
	}},
	allow(unix.SYS_LISTEN, "listen"),     // -t listeners, also opened by "auto"
	allow(unix.SYS_ACCEPT4, "accept4"),   // TCP connections on -t ports; passt's next guest
	allow(unix.SYS_SHUTDOWN, "shutdown"), // the guest's FIN; passt letting a guest go
	// The room in a TCP socket's send buffer and what its receive queue
	// holds, and nothing else ioctl(2) can do.
	{nr: unix.SYS_IOCTL, name: "ioctl", conds: []cond{argIn(1, unix.TIOCOUTQ, unix.SIOCINQ)}},
	allow(unix.SYS_SPLICE, "splice"), // TCP splice: socket to pipe to socket
	allow(unix.SYS_PIPE2, "pipe2"),   // TCP splice: a pipe per direction
	allow(unix.SYS_BIND, "bind"),
	allow(unix.SYS_CONNECT, "connect"),
	allow(unix.SYS_GETSOCKNAME, "getsockname"),
	allow(unix.SYS_SETSOCKOPT, "setsockopt"),
	allow(unix.SYS_GETSOCKOPT, "getsockopt"),
	allow(unix.SYS_FSTAT, "fstat"),         // log size (-l), own socket inodes
	allow(unix.SYS_PREAD64, "pread64"),     // log rotation (--log-size)
	allow(unix.SYS_FTRUNCATE, "ftruncate"), // log rotation
	allow(unix.SYS_LSEEK, "lseek"),         // procfs tables, rereading
}

// pastaRules are pasta's own calls.
var pastaRules = []rule{
	allow(unix.SYS_GETDENTS64, "getdents64"),               // /proc/self/fd: own sockets
	allow(unix.SYS_NEWFSTATAT, "newfstatat"),               // is the target namespace there (the periodic look-up)
	allow(unix.SYS_WAITID, "waitid"),                       // the command's exit
	allow(unix.SYS_PIDFD_SEND_SIGNAL, "pidfd_send_signal"), // signals for the command
}

// exitRules are for waiting for the helper (or the command) at exit:
// waitid on a pidfd, wait4 on kernels before 5.4.
var exitRules = []rule{
	allow(unix.SYS_WAITID, "waitid"),
	allow(unix.SYS_WAIT4, "wait4"),
}

// helperRules are the helper's calls besides the runtime's: reading the
// pipe, signalling the command and nothing else, removing the files.
func helperRules(p profile) []rule {
	pids := []uint32{p.pid}
	if p.cmdPID != 0 {
		pids = append(pids, p.cmdPID)
	}
	return []rule{
		allow(unix.SYS_READ, "read"), // the pipe
		{nr: unix.SYS_PIDFD_SEND_SIGNAL, name: "pidfd_send_signal", conds: []cond{argIn(0, p.pidfd)}},
		{nr: unix.SYS_KILL, name: "kill", conds: []cond{argIn(0, pids...)}}, // without pidfd
		allow(unix.SYS_NEWFSTATAT, "newfstatat"),
		allow(unix.SYS_UNLINKAT, "unlinkat"),
		allow(unix.SYS_WRITE, "write"), // a message on standard error
	}
}

// helperMode is the pseudo-mode of the helper's filter.
const helperMode Mode = -1

// rules returns the allow-list of profile p.
func rules(p profile) []rule {
	var rs []rule
	seen := map[uintptr]bool{}
	add := func(more ...rule) {
		for _, r := range more {
			if !seen[r.nr] {
				seen[r.nr] = true
				rs = append(rs, r)
			}
		}
	}
	if p.mode == helperMode {
		add(helperRules(p)...)
		add(runtimeRules(p.pid)...)
		add(archRuntimeRules...)
		return rs
	}
	add(hotRules...)
	add(archHotRules...)
	add(runtimeRules(p.pid)...)
	add(archRuntimeRules...)
	add(dataRules...)
	if p.mode == Pasta {
		add(pastaRules...)
	}
	add(exitRules...)
	return rs
}
