package qemu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// QEMU is the emulator binary.
const QEMU = "qemu-system-x86_64"

// DisableEnv names an environment variable that, set to "0", makes
// [Available] report qemu tests as disabled.
const DisableEnv = "GOPASST_QEMU"

// VerboseEnv names an environment variable that, when not empty, makes
// [Start] log the guest console even when the test passes.
const VerboseEnv = "GOPASST_QEMU_VERBOSE"

// GuestMAC is the MAC address of the guest's virtio-net interface.
const GuestMAC = "52:54:00:12:34:56"

// KernelArgs is the kernel command line. panic=-1 with qemu's -no-reboot
// turns a guest panic (for example /init exiting) into qemu exiting.
const KernelArgs = "console=ttyS0 panic=-1 quiet mitigations=off"

// Available returns nil if qemu tests can run here, or an error saying why
// not: not root (the sandbox needs it), qemu, a kernel image, a static
// busybox, the ip or the go command missing, or DisableEnv set to "0".
func Available() error {
	if os.Getenv(DisableEnv) == "0" {
		return fmt.Errorf("qemu tests disabled by %s=0", DisableEnv)
	}
	if os.Geteuid() != 0 {
		return errors.New("qemu tests need root (network namespaces)")
	}
	for _, c := range []string{QEMU, "ip", "go"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s not found (run .ci/install-qemu-deps): %w", c, err)
		}
	}
	k, err := FindKernel()
	if err != nil {
		return err
	}
	if _, err := k.resolveModules(GuestModules); err != nil {
		return fmt.Errorf("kernel %s: %w", k.Image, err)
	}
	if _, err := findBusybox(); err != nil {
		return err
	}
	return nil
}

// KVM reports whether qemu is to use hardware acceleration instead of TCG
// (emulation): when GOPASST_QEMU_KVM=1 and /dev/kvm can be opened. TCG is
// the default because KVM can be there and still fail: on paravirtualized
// CI machines the nested hypervisor stops the guest kernel early with
// "KVM internal error. Suberror: 1 ... emulation failure" (seen on lock
// cmpxchg16b), and the test would wait for a guest that never boots. A
// test guest boots in about 15 s with TCG.
func KVM() bool {
	if os.Getenv("GOPASST_QEMU_KVM") != "1" {
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// Args returns qemu's command line (without the binary) for booting
// kernel with initrd and one virtio-net interface connected to the passt
// socket socketPath. The serial console is on stdio; there is no other
// device, display or monitor, and no network but the socket.
func Args(k Kernel, initrd, socketPath string) []string {
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-monitor", "none",
		"-m", "256", "-smp", "1", "-no-reboot",
	}
	if KVM() {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg")
	}
	return append(args,
		"-kernel", k.Image, "-initrd", initrd, "-append", KernelArgs,
		"-netdev", "stream,id=n0,server=off,addr.type=unix,addr.path="+socketPath,
		"-device", "virtio-net-pci,netdev=n0,mac="+GuestMAC,
	)
}

// VM is a running guest.
type VM struct {
	// Proc is the qemu process; its stdout is the serial console.
	Proc *sandbox.Proc
	// Kernel is the booted kernel.
	Kernel Kernel
	// Started is when qemu was started.
	Started time.Time
}

// Start builds an initramfs around initScript (see [BuildInitramfs];
// extra files are added to it) and starts qemu in the host namespace of
// sb, connected to the passt socket socketPath. It does not wait for the
// guest. If t fails (or [VerboseEnv] is set), the console is logged when
// t ends. Start skips t if
// [Available] reports a problem.
func Start(t testing.TB, sb *sandbox.Sandbox, socketPath, initScript string, extra ...File) *VM {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("qemu: %v", err)
	}
	k, err := FindKernel()
	if err != nil {
		t.Fatalf("qemu: %v", err)
	}
	initrd := BuildInitramfs(t, k, initScript, extra...)
	vm := &VM{Kernel: k, Started: time.Now()}
	vm.Proc = sb.Start(t, sb.HostNS, QEMU, Args(k, initrd, socketPath)...)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv(VerboseEnv) != "" {
			t.Logf("qemu: guest console:\n%s\nqemu stderr:\n%s", vm.Console(), vm.Proc.Stderr())
		}
	})
	return vm
}

// Console returns the serial console output so far, with "\r\n" turned
// into "\n".
func (vm *VM) Console() string {
	return strings.ReplaceAll(vm.Proc.Stdout(), "\r\n", "\n")
}

// WaitLine waits until a console line contains substr and returns it (see
// [sandbox.Proc.WaitLine]); it fails t if the guest stops or timeout
// passes first.
func (vm *VM) WaitLine(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	return strings.TrimRight(vm.Proc.WaitLine(t, substr, timeout), "\r")
}

// Wait waits until qemu exits (the guest powered off) and returns the
// console. If timeout passes first, it kills qemu and marks t failed
// (without stopping it); if qemu exits with an error, it marks t failed
// too. Either way it returns the console output.
func (vm *VM) Wait(t testing.TB, timeout time.Duration) string {
	t.Helper()
	code, err := vm.Proc.Wait(timeout)
	switch {
	case err != nil:
		t.Errorf("qemu: guest did not power off: %v", err)
	case code != 0:
		t.Errorf("qemu exited with status %d: %s", code, strings.TrimSpace(vm.Proc.Stderr()))
	}
	return vm.Console()
}

// Boot runs a guest with /init initScript connected to the passt socket
// socketPath (see [Start]) and returns its console output once it powers
// off, or once timeout passes (marking t failed).
func Boot(t testing.TB, sb *sandbox.Sandbox, socketPath, initScript string, timeout time.Duration) string {
	t.Helper()
	return Start(t, sb, socketPath, initScript).Wait(t, timeout)
}
