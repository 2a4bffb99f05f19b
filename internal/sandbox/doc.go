// Package sandbox confines gopasst once it has set up, the way the
// reference passt/pasta isolates itself (its isolation.c), adapted to what
// Go's runtime allows and extended to the case the reference refuses:
// being started as root.
//
// # Theory of operation
//
// gopasst parses every byte a guest sends. Should a bug in that parsing
// ever let a guest run code inside gopasst, the sandbox decides what that
// code can reach: ideally nothing but the sockets and devices gopasst
// already holds. Set-up (namespaces, the tap device, netlink, the qemu
// socket, the files of -p, -l and -P) needs privileges and the file
// system; the data path needs neither. So [Sandbox.Apply] runs once, after
// set-up and before the data path can be reached by anything new (the
// pasta command has been started, the passt socket listens), and takes
// away, in order:
//
//  1. The file system. A throwaway OS thread (never the main one) makes a
//     private mount namespace for itself and builds there a detached,
//     read-only, empty tmpfs (fsopen/fsmount, or mount(2) on old kernels);
//     every thread then fchdir()s to it and chroot()s into it: Go threads
//     share one fs_struct (CLONE_FS), so one call moves them all. Paths
//     resolve to nothing from then on. The reference pivots its whole
//     mount namespace instead; a Go process cannot, because mount
//     namespaces are per thread and setns(CLONE_NEWNS) refuses a shared
//     fs_struct, so every Go thread would need its own namespace. The
//     difference is invisible to the data path: nothing of the host's
//     mounts is reachable by path, mount(2) and friends are refused by
//     the filter, and the capabilities they need are gone.
//  2. IPC and UTS namespaces: new, empty ones (SysV IPC, POSIX message
//     queues, host name), as the reference. unshare(2) of these is per
//     thread, so it is made on every thread with
//     [syscall.AllThreadsSyscall].
//  3. Identity and capabilities. Started as root in the initial user
//     namespace, gopasst switches to --runas (default "nobody"): no
//     supplementary groups, then GID, then UID, on every thread; the
//     kernel then clears the effective, permitted and ambient sets. In a
//     user namespace of its own (unprivileged pasta), or with --runas 0,
//     it stays UID 0 there and keeps only what the data path needs: in
//     pasta mode CAP_NET_BIND_SERVICE, so spliced flows can keep low source
//     ports in the namespace, as the reference keeps it; in passt mode
//     nothing. The bounding and inheritable sets are emptied too, and the
//     process is made non-dumpable (no ptrace, no core dumps, /proc/PID
//     owned by root).
//  4. no_new_privs, and a seccomp filter: an allow-list of the system calls
//     the data path and Go's runtime make after set-up, one for each mode
//     (see syscalls_linux.go), installed with SECCOMP_FILTER_FLAG_TSYNC so
//     that it covers every thread the runtime has started and, by
//     inheritance, every one it starts later. Some calls are allowed only
//     with given arguments: socket(2) only for UDP over IPv4 and IPv6,
//     clone(2) only for threads, mmap(2) and mprotect(2) never executable,
//     kill(2) and tgkill(2) only for gopasst itself, no ioctl(2) at
//     all. The filter first checks the architecture (x86-64 or
//     aarch64, and not the x32 ABI); a call from another one kills the
//     process, since Go never makes one. Every other call fails with
//     EPERM (clone3 with ENOSYS, so that a caller falls back to clone):
//     the reference kills the process instead, but Go's runtime and
//     standard library probe some calls and handle errors (the C library
//     of race builds, for one, tries two files in every new thread before
//     it falls back to sched_getaffinity), and a refused call on a rare
//     path should cost a failed operation, not the user's network. An
//     attacker gains nothing from EPERM either.
//
// What survives is what was open before: the tap device or qemu socket,
// the UDP sockets and their epoll instance, the socket factory thread
// inside pasta's namespace (a socket belongs to the namespace of the thread
// that creates it, so spliced flows keep working), the procfs socket tables
// that "auto" forwarding rereads, a directory descriptor on /proc/self/fd
// (gopasst's own sockets are told apart by fstat of its descriptors, no
// path lookups), the log and capture files, and, when pasta is attached to
// an existing namespace, a directory descriptor from which it checks that
// the namespace still exists.
//
// # The helper: files to remove, signals to pass
//
// gopasst removes its PID file (-P) and the passt socket when it exits.
// Sandboxed it can do neither: no paths, and unlinkat(2) is not in the
// filter (a descriptor on the directory would not do, as "../" escapes
// it), and as "nobody" it may not have the right anyway, the files having
// been created by root before the switch (the reference, which creates them
// the same way, never removes them). Likewise, pasta started as root runs
// its command as root, and once it is "nobody" it may no longer pass it
// SIGTERM or SIGHUP, or kill it when the data path fails.
//
// So, when there is a file to remove or a command it will lose the right
// to signal, [Sandbox.Apply] first starts a helper: gopasst's own binary
// again, with the credentials gopasst started with and the read end of a
// pipe whose write end only gopasst holds. The helper takes no_new_privs
// and a filter of its own, in which it may read the pipe, send signals to
// the command and nothing else (the filter checks the pidfd, or the PID),
// and remove files; its standard streams are /dev/null, it has its own
// process group and ignores the usual termination signals. Each byte
// gopasst writes is a signal to pass to the command ([Sandbox.Signal]).
// When the pipe reaches end of file, however gopasst ended (even
// SIGKILL), the helper removes each file that is still the one gopasst
// created (same device and inode) and exits; [Sandbox.Close] closes the
// pipe on an orderly exit and waits for it, so the files are gone when
// gopasst's exit status is known. A compromised gopasst can make the
// helper do no more than that: signal the command it serves, or remove
// gopasst's own files early.
//
// # Go-specific limits
//
// Capabilities, the bounding set and IPC/UTS namespaces are per thread, and
// Go offers only [syscall.AllThreadsSyscall] to change all threads, which
// does not work in a binary that links cgo (the default build links it
// through package net's resolver; race-detector builds always do). In such
// a build:
//   - the switch to another user still covers every thread (the C library
//     broadcasts set*id calls), and with it the loss of all capabilities,
//     so the default, root to "nobody", is complete;
//   - with UID 0 kept (a user namespace, or --runas 0), capabilities
//     cannot be dropped from every thread: they are left as they are, and
//     the filter, which refuses the calls through which they would act
//     (mount, setns, unshare, raw and packet sockets, ptrace, chown, ...),
//     is what stands in the way; privileged socket options (SO_MARK, the
//     *BUFFORCE ones) on gopasst's own sockets remain;
//   - IPC and UTS namespaces are not detached (the calls they would guard,
//     shmget, msgget, sethostname..., are refused by the filter).
//
// A pure-Go build (go build -tags netgo,osusergo, or CGO_ENABLED=0) does
// every step on every thread. no_new_privs and the filter reach every
// thread in both builds (TSYNC).
//
// Without privileges and without a user namespace of its own (passt mode
// and pasta's --netns-only, run by an ordinary user), the steps that need
// privileges (1 to 3) are skipped; no_new_privs and the filter still apply.
//
// --no-sandbox turns all of this off, for debugging; the reference has no
// such switch (its --chroot-fallback, accepted by gopasst, has nothing to
// fall back from here).
package sandbox
