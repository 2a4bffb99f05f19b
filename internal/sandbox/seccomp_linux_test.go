//go:build linux && (amd64 || arm64)

package sandbox

import (
	"encoding/binary"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// filterVM runs a seccomp filter in x/net/bpf's interpreter. That
// interpreter loads words in network byte order where the kernel loads
// struct seccomp_data in native order, so call encodes each field, and
// each argument's low word at the offset where a little-endian kernel
// finds it, big-endian: the filter then sees the same values.
type filterVM struct {
	t  *testing.T
	vm *bpf.VM
}

func newFilterVM(t *testing.T, p profile) *filterVM {
	t.Helper()
	f, err := assemble(rules(p))
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]bpf.RawInstruction, len(f))
	for i, ins := range f {
		raw[i] = bpf.RawInstruction{Op: ins.Code, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	prog, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("filter does not disassemble")
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	return &filterVM{t, vm}
}

// call returns what the filter decides for system call nr with args,
// made from architecture arch.
func (v *filterVM) callArch(arch uint32, nr uintptr, args ...uint32) uint32 {
	v.t.Helper()
	data := make([]byte, 64)
	binary.BigEndian.PutUint32(data[offNr:], uint32(nr))
	binary.BigEndian.PutUint32(data[offArch:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(data[offArgs+8*i:], a)
	}
	ret, err := v.vm.Run(data)
	if err != nil {
		v.t.Fatal(err)
	}
	return uint32(ret)
}

func (v *filterVM) call(nr uintptr, args ...uint32) uint32 {
	v.t.Helper()
	return v.callArch(auditArch, nr, args...)
}

const testPID = 4242

func TestFilterDecisions(t *testing.T) {
	for _, mode := range []Mode{Pasta, Passt} {
		t.Run(mode.String(), func(t *testing.T) {
			v := newFilterVM(t, profile{mode: mode, pid: testPID})
			for _, c := range []struct {
				what string
				nr   uintptr
				args []uint32
				want uint32
			}{
				{"read", unix.SYS_READ, nil, retAllow},
				{"recvmmsg", unix.SYS_RECVMMSG, nil, retAllow},
				{"sendmmsg", unix.SYS_SENDMMSG, nil, retAllow},
				{"futex", unix.SYS_FUTEX, nil, retAllow},
				{"execve", unix.SYS_EXECVE, nil, retEPERM},
				{"execveat", unix.SYS_EXECVEAT, nil, retEPERM},
				{"openat", unix.SYS_OPENAT, nil, retEPERM},
				{"unlinkat", unix.SYS_UNLINKAT, nil, retEPERM},
				{"ptrace", unix.SYS_PTRACE, nil, retEPERM},
				{"mount", unix.SYS_MOUNT, nil, retEPERM},
				{"setns", unix.SYS_SETNS, nil, retEPERM},
				{"unshare", unix.SYS_UNSHARE, nil, retEPERM},
				{"setuid", unix.SYS_SETUID, nil, retEPERM},
				{"prctl", unix.SYS_PRCTL, nil, retEPERM},
				{"seccomp", unix.SYS_SECCOMP, nil, retEPERM},
				{"bpf", unix.SYS_BPF, nil, retEPERM},
				{"ioctl", unix.SYS_IOCTL, nil, retEPERM},
				{"clone3", unix.SYS_CLONE3, nil, retENOSYS},
				{"UDP socket", unix.SYS_SOCKET, []uint32{unix.AF_INET, unix.SOCK_DGRAM | unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC, unix.IPPROTO_UDP}, retAllow},
				{"UDP socket, protocol 0", unix.SYS_SOCKET, []uint32{unix.AF_INET6, unix.SOCK_DGRAM, 0}, retAllow},
				{"ping socket", unix.SYS_SOCKET, []uint32{unix.AF_INET, unix.SOCK_DGRAM | unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP}, retAllow},
				{"ICMPv6 ping socket", unix.SYS_SOCKET, []uint32{unix.AF_INET6, unix.SOCK_DGRAM | unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6}, retAllow},
				{"raw ICMP socket", unix.SYS_SOCKET, []uint32{unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP}, retEPERM},
				{"datagram socket of another protocol", unix.SYS_SOCKET, []uint32{unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_SCTP}, retEPERM},
				{"TCP socket", unix.SYS_SOCKET, []uint32{unix.AF_INET6, unix.SOCK_STREAM | unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC, unix.IPPROTO_TCP}, retAllow},
				{"SCTP stream socket", unix.SYS_SOCKET, []uint32{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP}, retEPERM},
				{"ioctl TIOCOUTQ", unix.SYS_IOCTL, []uint32{5, unix.TIOCOUTQ}, retAllow},
				{"ioctl TUNSETIFF", unix.SYS_IOCTL, []uint32{5, unix.TUNSETIFF}, retEPERM},
				{"raw socket", unix.SYS_SOCKET, []uint32{unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP}, retEPERM},
				{"TCP socket, protocol 0", unix.SYS_SOCKET, []uint32{unix.AF_INET6, unix.SOCK_STREAM, 0}, retAllow},
				{"listen", unix.SYS_LISTEN, nil, retAllow},
				{"accept4", unix.SYS_ACCEPT4, nil, retAllow},
				{"shutdown", unix.SYS_SHUTDOWN, nil, retAllow},
				{"packet socket", unix.SYS_SOCKET, []uint32{unix.AF_PACKET, unix.SOCK_DGRAM, 0}, retEPERM},
				{"netlink socket", unix.SYS_SOCKET, []uint32{unix.AF_NETLINK, unix.SOCK_DGRAM, 0}, retEPERM},
				{"UNIX socket", unix.SYS_SOCKET, []uint32{unix.AF_UNIX, unix.SOCK_DGRAM, 0}, retEPERM},
				{"thread", unix.SYS_CLONE, []uint32{unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM | unix.CLONE_SETTLS}, retAllow},
				{"fork", unix.SYS_CLONE, []uint32{uint32(unix.SIGCHLD)}, retEPERM},
				{"new namespace", unix.SYS_CLONE, []uint32{unix.CLONE_NEWUSER | unix.CLONE_NEWNET}, retEPERM},
				{"mmap RW", unix.SYS_MMAP, []uint32{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, retAllow},
				{"mmap none", unix.SYS_MMAP, []uint32{0, 4096, unix.PROT_NONE}, retAllow},
				{"mmap X", unix.SYS_MMAP, []uint32{0, 4096, unix.PROT_READ | unix.PROT_EXEC}, retEPERM},
				{"mprotect X", unix.SYS_MPROTECT, []uint32{0, 4096, unix.PROT_EXEC}, retEPERM},
				{"kill self", unix.SYS_KILL, []uint32{testPID, uint32(unix.SIGQUIT)}, retAllow},
				{"kill other", unix.SYS_KILL, []uint32{1, uint32(unix.SIGKILL)}, retEPERM},
				{"kill group", unix.SYS_KILL, []uint32{0, uint32(unix.SIGKILL)}, retEPERM},
				{"kill all", unix.SYS_KILL, []uint32{0xffffffff, uint32(unix.SIGKILL)}, retEPERM},
				{"tgkill own thread", unix.SYS_TGKILL, []uint32{testPID, testPID + 3, uint32(unix.SIGURG)}, retAllow},
				{"tgkill other", unix.SYS_TGKILL, []uint32{1, 1, uint32(unix.SIGKILL)}, retEPERM},
			} {
				if got := v.call(c.nr, c.args...); got != c.want {
					t.Errorf("%s: got %#x, want %#x", c.what, got, c.want)
				}
			}
			if got := v.callArch(unix.AUDIT_ARCH_I386, unix.SYS_READ); got != retKill {
				t.Errorf("foreign architecture: got %#x, want kill", got)
			}
			if x32Bit != 0 {
				if got := v.call(x32Bit | unix.SYS_READ); got != retKill {
					t.Errorf("x32 call: got %#x, want kill", got)
				}
			}
			// The calls only one mode makes.
			pastaOnly := map[uintptr]string{unix.SYS_GETDENTS64: "getdents64", unix.SYS_NEWFSTATAT: "newfstatat", unix.SYS_PIDFD_SEND_SIGNAL: "pidfd_send_signal"}
			for nr, name := range pastaOnly {
				if got, want := v.call(nr), ifMode(mode, Pasta); got != want {
					t.Errorf("%s: got %#x, want %#x", name, got, want)
				}
			}
		})
	}
}

func ifMode(mode, want Mode) uint32 {
	if mode == want {
		return retAllow
	}
	return retEPERM
}

func TestHelperFilter(t *testing.T) {
	const cmdPID, pidfd = 777, 9
	v := newFilterVM(t, profile{mode: helperMode, pid: testPID, cmdPID: cmdPID, pidfd: pidfd})
	for _, c := range []struct {
		what string
		nr   uintptr
		args []uint32
		want uint32
	}{
		{"read", unix.SYS_READ, nil, retAllow},
		{"unlinkat", unix.SYS_UNLINKAT, nil, retAllow},
		{"signal the command", unix.SYS_PIDFD_SEND_SIGNAL, []uint32{pidfd, uint32(unix.SIGTERM)}, retAllow},
		{"signal another pidfd", unix.SYS_PIDFD_SEND_SIGNAL, []uint32{pidfd + 1, uint32(unix.SIGTERM)}, retEPERM},
		{"kill the command", unix.SYS_KILL, []uint32{cmdPID, uint32(unix.SIGTERM)}, retAllow},
		{"kill another", unix.SYS_KILL, []uint32{cmdPID + 1, uint32(unix.SIGTERM)}, retEPERM},
		{"socket", unix.SYS_SOCKET, []uint32{unix.AF_INET, unix.SOCK_DGRAM, 0}, retEPERM},
		{"openat", unix.SYS_OPENAT, nil, retEPERM},
		{"execve", unix.SYS_EXECVE, nil, retEPERM},
	} {
		if got := v.call(c.nr, c.args...); got != c.want {
			t.Errorf("%s: got %#x, want %#x", c.what, got, c.want)
		}
	}
	// Without a command, kill(0, ...) (the process group) stays refused.
	v = newFilterVM(t, profile{mode: helperMode, pid: testPID, pidfd: 0xffffffff})
	if got := v.call(unix.SYS_KILL, 0, uint32(unix.SIGTERM)); got != retEPERM {
		t.Errorf("kill(0) without a command: got %#x", got)
	}
}

// TestRules checks the lists themselves: no call twice, no rule too long
// for the 8-bit jumps, and the hot calls first.
func TestRules(t *testing.T) {
	for _, p := range []profile{{mode: Pasta, pid: 1}, {mode: Passt, pid: 1}, {mode: helperMode, pid: 1, cmdPID: 2, pidfd: 3}} {
		rs := rules(p)
		seen := map[uintptr]bool{}
		for _, r := range rs {
			if seen[r.nr] {
				t.Errorf("mode %d: %s twice", p.mode, r.name)
			}
			seen[r.nr] = true
		}
		f, err := assemble(rs)
		if err != nil {
			t.Fatalf("mode %d: %v", p.mode, err)
		}
		t.Logf("mode %d: %d calls, %d instructions", p.mode, len(rs), len(f))
	}
	rs := rules(profile{mode: Pasta, pid: 1})
	for i, r := range hotRules {
		if rs[i].nr != r.nr {
			t.Errorf("rule %d is %s, want the hot call %s", i, rs[i].name, r.name)
		}
	}
}
