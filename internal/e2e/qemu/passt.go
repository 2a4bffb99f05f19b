package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// ReferencePasst is the command of the reference implementation, the
// passt(1) of the Debian package "passt".
var ReferencePasst = []string{"passt"}

// PasstStartTimeout bounds the wait for passt to listen on its socket.
const PasstStartTimeout = 10 * time.Second

// Passt is a passt process (reference or gopasst) serving one socket.
type Passt struct {
	// Proc is the process: passt itself or, with [StartPasstAs], su.
	Proc *sandbox.Proc
	// Socket is the path of the UNIX domain socket qemu connects to.
	Socket string
}

// StartPasst runs command followed by "-f -s SOCKET" and args in the host
// namespace of sb, as root, and returns once the socket listens. command
// is [ReferencePasst], or {"/path/to/gopasst", "passt"} for gopasst.
// Started as root, both switch to user "nobody" after setting up. The
// process is stopped when t ends.
func StartPasst(t testing.TB, sb *sandbox.Sandbox, command []string, args ...string) *Passt {
	t.Helper()
	return StartPasstAs(t, sb, "", command, args...)
}

// StartPasstAs is [StartPasst] running passt as user (created with
// useradd if missing) through su; an empty user means root. The socket is
// in a new directory anyone may write (passt may bind it after dropping
// privileges); qemu, as root, can connect to it whatever its owner.
func StartPasstAs(t testing.TB, sb *sandbox.Sandbox, user string, command []string, args ...string) *Passt {
	t.Helper()
	if len(command) == 0 {
		t.Fatal("qemu: StartPasst: empty command")
	}
	dir, err := os.MkdirTemp("", "gopasst-qemu-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "passt.socket")
	full := append(append(append([]string{}, command...), "-f", "-s", sock), args...)

	// Started as root, the reference passt switches to "nobody" before
	// it binds the socket (and ignores the failure: it then never
	// listens), so the directory must be writable by anyone.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	var p *sandbox.Proc
	if user == "" {
		p = sb.Start(t, sb.HostNS, full[0], full[1:]...)
	} else {
		ensureUser(t, user)
		quoted := make([]string, len(full))
		for i, a := range full {
			quoted[i] = shellQuote(a)
		}
		p = sb.Start(t, sb.HostNS, "su", user, "-s", "/bin/sh", "-c", "exec "+strings.Join(quoted, " "))
		// su forwards SIGTERM to passt and waits for it; SIGKILL (the
		// sandbox's cleanup) would leave passt behind.
		t.Cleanup(func() {
			_ = p.Signal(syscall.SIGTERM)
			_, _ = p.Wait(5 * time.Second)
		})
	}
	deadline := time.Now().Add(PasstStartTimeout)
	for !listening(p.Cmd.Process.Pid, sock) {
		select {
		case <-p.Done():
			code, err := p.Wait(0)
			t.Fatalf("qemu: %s exited (status %d, %v) before listening\nstdout:\n%s\nstderr:\n%s",
				strings.Join(full, " "), code, err, p.Stdout(), p.Stderr())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu: %s did not listen on %s within %v\nstderr:\n%s",
				strings.Join(full, " "), sock, PasstStartTimeout, p.Stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Passt{Proc: p, Socket: sock}
}

// listening reports whether a UNIX socket bound to path listens in the
// network namespace of process pid, from /proc/PID/net/unix (whose Flags
// column has __SO_ACCEPTCON, 0x10000, for listening sockets). Looking
// rather than connecting keeps passt from seeing a probe connection as a
// guest.
func listening(pid int, path string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 8 && f[len(f)-1] == path && f[3] == "00010000" {
			return true
		}
	}
	return false
}

// ensureUser creates user (no home directory, shell /bin/sh) unless it
// exists; it skips t if that fails.
func ensureUser(t testing.TB, user string) {
	t.Helper()
	if exec.Command("id", user).Run() == nil {
		return
	}
	if out, err := exec.Command("useradd", "-M", "-s", "/bin/sh", user).CombinedOutput(); err != nil {
		t.Skipf("qemu: cannot create user %s: %v %s", user, err, out)
	}
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
