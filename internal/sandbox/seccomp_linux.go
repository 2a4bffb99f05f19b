package sandbox

import (
	"fmt"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Offsets in struct seccomp_data: int nr; __u32 arch; __u64
// instruction_pointer; __u64 args[6]. Arguments are read as their low 32
// bits (little-endian), which is all the kernel looks at for the int and
// flag arguments checked here.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// Filter return values.
const (
	retAllow  = unix.SECCOMP_RET_ALLOW
	retKill   = unix.SECCOMP_RET_KILL_PROCESS
	retEPERM  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	retENOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
)

// cond is a condition on one argument of a system call: its low 32 bits,
// masked with mask (all bits if mask is 0), must be one of vals.
type cond struct {
	arg  int
	mask uint32
	vals []uint32
}

// rule allows a system call, if all its conditions hold.
type rule struct {
	nr    uintptr
	name  string
	conds []cond
	// ret, when not 0, is returned instead of allowing the call.
	ret uint32
}

// argIn is the condition that argument arg is one of vals.
func argIn(arg int, vals ...uint32) cond { return cond{arg: arg, vals: vals} }

// argMasked is the condition that argument arg, masked with mask, is one
// of vals.
func argMasked(arg int, mask uint32, vals ...uint32) cond {
	return cond{arg: arg, mask: mask, vals: vals}
}

// profile says which filter to build.
type profile struct {
	mode Mode
	// pid is the process's own: kill and tgkill may only target it.
	pid uint32
	// cmdPID and pidfd, for the helper, are pasta's command and a
	// pidfd on it (-1 without): the helper may signal them.
	cmdPID, pidfd uint32
}

// Filter returns the seccomp filter of mode for process pid, the one
// Apply installs.
func Filter(mode Mode, pid int) ([]unix.SockFilter, error) {
	return assemble(rules(profile{mode: mode, pid: uint32(pid)}))
}

// assemble compiles rules to classic BPF: check the architecture, then
// each rule in order (the frequent calls first, so that they cost the
// fewest instructions on kernels without the filter cache), then refuse.
//
//	ld arch; jeq AUDIT_ARCH ? next : kill
//	ld nr; jset X32 ? kill : next          (x86-64 only)
//	jeq NR1 ? next : skip; ret allow       (a rule without conditions)
//	jeq NR2 ? next : skip block; block     (a rule with conditions)
//	...
//	ret EPERM
//
// A block loads each argument in turn and jumps to the next condition on a
// match, or falls to "ret EPERM"; past the last one it allows. Every block
// ends in a return, so the skip path still holds nr in A.
func assemble(rs []rule) ([]unix.SockFilter, error) {
	if auditArch == 0 {
		return nil, fmt.Errorf("no seccomp profile for this architecture")
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: auditArch, SkipTrue: 1},
		bpf.RetConstant{Val: retKill},
		bpf.LoadAbsolute{Off: offNr, Size: 4},
	}
	if x32Bit != 0 {
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: x32Bit, SkipFalse: 1},
			bpf.RetConstant{Val: retKill})
	}
	for _, r := range rs {
		block := ruleBlock(r)
		if len(block) > 255 {
			return nil, fmt.Errorf("rule for %s too long", r.name)
		}
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(r.nr), SkipFalse: uint8(len(block))})
		prog = append(prog, block...)
	}
	prog = append(prog, bpf.RetConstant{Val: retEPERM})
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	if len(raw) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("filter too long: %d instructions", len(raw))
	}
	out := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		out[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	return out, nil
}

// ruleBlock is what runs once the system call number matched r.
func ruleBlock(r rule) []bpf.Instruction {
	if r.ret != 0 {
		return []bpf.Instruction{bpf.RetConstant{Val: r.ret}}
	}
	var block []bpf.Instruction
	for _, c := range r.conds {
		block = append(block, bpf.LoadAbsolute{Off: uint32(offArgs + 8*c.arg), Size: 4})
		if c.mask != 0 {
			block = append(block, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: c.mask})
		}
		// Value i matches: skip the remaining values and the refusal.
		for i, v := range c.vals {
			block = append(block, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipTrue: uint8(len(c.vals) - i)})
		}
		block = append(block, bpf.RetConstant{Val: retEPERM})
	}
	return append(block, bpf.RetConstant{Val: retAllow})
}
