package sandbox

import "golang.org/x/sys/unix"

// auditArch is the architecture the filter accepts calls from.
const auditArch = unix.AUDIT_ARCH_AARCH64

// x32Bit is 0: there is no second ABI to keep out.
const x32Bit = 0

// archHotRules are per-datagram calls that exist on this architecture only.
var archHotRules []rule

// archRuntimeRules are the runtime's calls that exist on this
// architecture only.
var archRuntimeRules []rule
