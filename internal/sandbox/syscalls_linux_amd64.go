package sandbox

import "golang.org/x/sys/unix"

// auditArch is the architecture the filter accepts calls from.
const auditArch = unix.AUDIT_ARCH_X86_64

// x32Bit marks x32 system calls, which report the x86-64 architecture.
const x32Bit = 0x40000000

// archHotRules are per-datagram calls that exist on this architecture only.
var archHotRules = []rule{
	allow(unix.SYS_EPOLL_WAIT, "epoll_wait"), // the standard library's EpollWait
}

// archRuntimeRules are the runtime's calls that exist on this
// architecture only.
var archRuntimeRules []rule
