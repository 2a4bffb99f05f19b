package e2e_test

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

// ctlDir makes a directory every user may enter, for a control socket
// that another user tries to reach.
func ctlDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gopasst-ctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ctlRun runs "gopasst ctl SOCK ARGS" as uid (0: as the test) and returns
// its stdout, its stderr and whether it succeeded.
func ctlRun(t *testing.T, uid int, sock string, args ...string) (string, string, bool) {
	t.Helper()
	cmd := exec.Command(gopasst, append([]string{"ctl", sock}, args...)...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), err == nil
}

func ctlOK(t *testing.T, sock string, args ...string) string {
	t.Helper()
	out, stderr, ok := ctlRun(t, 0, sock, args...)
	if !ok {
		t.Fatalf("gopasst ctl %s: %s", strings.Join(args, " "), stderr)
	}
	return out
}

// ctlFails checks that a request fails with a one-line reason containing
// why and changes no rule.
func ctlFails(t *testing.T, sock, why string, args ...string) {
	t.Helper()
	before := ctlOK(t, sock, "list")
	_, stderr, ok := ctlRun(t, 0, sock, args...)
	if ok || !strings.Contains(stderr, why) || strings.Count(stderr, "\n") != 1 {
		t.Errorf("gopasst ctl %s: ok %v, stderr %q, want one line with %q", strings.Join(args, " "), ok, stderr, why)
	}
	if after := ctlOK(t, sock, "list"); after != before {
		t.Errorf("gopasst ctl %s changed the rules:\n%s\nto\n%s", strings.Join(args, " "), before, after)
	}
}

// TestControlSocket drives pasta's control socket (-c): TCP and UDP
// forwards added at run time carry traffic byte-exact; a deleted forward's
// port refuses connections while a connection through another rule goes
// on; refused requests change nothing; another user is refused; flows
// and counters are shown; the socket is gone after exit.
func TestControlSocket(t *testing.T) {
	sb := sandbox.New(t)
	sock := filepath.Join(ctlDir(t), "ctl.sock")
	t.Cleanup(func() {
		if _, err := os.Lstat(sock); !os.IsNotExist(err) {
			t.Errorf("control socket left behind after exit: %v", err)
		}
	})
	kept, added, busy := nextPort(), nextPort(), nextPort()
	udpPort, udpTo := nextPort(), nextPort()
	n := startTCPNS(t, sb, "-c", sock, "-t", fmt.Sprint(kept), "-u", "none")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v %v", fi, err)
	}

	// Servers in the namespace: the one behind the command line's rule
	// reads slowly, so that its connection lasts across the changes.
	ns := n.place()
	slow := ns.start(t, sb, "serve", "-l", fmt.Sprintf("0.0.0.0:%d", kept), "-mode", "echo", "-count", "1",
		"-sleep-per-read", "30ms", "-read-size", "16384")
	slow.WaitLine(t, "ready", 5*time.Second)
	srv := ns.start(t, sb, "serve", "-l", fmt.Sprintf("0.0.0.0:%d", added), "-mode", "echo", "-count", "1")
	srv.WaitLine(t, "ready", 5*time.Second)
	echo := sb.Start(t, "", "nsenter", "-t", n.pid, "-n", udptool, "echo", "-l", fmt.Sprintf("0.0.0.0:%d", udpTo), "-timeout", "20s")
	echo.WaitLine(t, "ready", 5*time.Second)

	list := ctlOK(t, sock, "list")
	if !strings.Contains(list, fmt.Sprintf("TCP [*]:%d  =>  %d", kept, kept)) || !strings.Contains(list, "SPLICE") {
		t.Fatalf("list:\n%s", list)
	}

	host := hostPlace(sb)
	ctlOK(t, sock, "add", "-t", fmt.Sprint(added))
	ctlOK(t, sock, "add", "-u", fmt.Sprintf("%d:%d", udpPort, udpTo))
	r := host.run(t, sb, 20*time.Second, "client", "-to", fmt.Sprintf("%s:%d", sandbox.HostAddr4, added), "-send", fmt.Sprint(mib))
	var c clientResult
	if err := jsonLine(r.stdout, "{", &c); err != nil || !c.OK || c.Received != mib || c.SHA256Sent != c.SHA256Received {
		t.Fatalf("TCP through the added rule: %v\n%s\n%s", err, r, n.diag())
	}
	// A connection through the command line's rule, lasting ~4 s.
	long := host.start(t, sb, "client", "-to", fmt.Sprintf("127.0.0.1:%d", kept), "-send", fmt.Sprint(2*mib))
	time.Sleep(300 * time.Millisecond)
	flows := ctlOK(t, sock, "flows")
	if !strings.Contains(flows, fmt.Sprintf(":%d", kept)) {
		t.Errorf("the long connection is not in the flows:\n%s", flows)
	}
	if stats := ctlOK(t, sock, "stats"); !strings.Contains(stats, tcpCreated) || !strings.Contains(stats, "control clients served") {
		t.Errorf("stats:\n%s", stats)
	}

	// Deleted: the port refuses connections, the other rule's goes on.
	ctlOK(t, sock, "del", "-t", fmt.Sprint(added))
	select {
	case <-long.Done():
		t.Log("the long connection ended before the deletion (a fast machine): it shows less")
	default:
	}
	r = host.run(t, sb, 10*time.Second, "client", "-to", fmt.Sprintf("%s:%d", sandbox.HostAddr4, added), "-send", "1", "-connect-timeout", "3s")
	if err := jsonLine(r.stdout, "{", &c); err != nil || c.OK || c.Errno != "ECONNREFUSED" {
		t.Errorf("connect to the deleted rule's port: %v\n%s", err, r)
	}
	out, err := sb.Command(sb.HostNS, udptool, "send", "-to", fmt.Sprintf("127.0.0.1:%d", udpPort),
		"-count", "20", "-size", "1200", "-echo", "-wait", "2s").CombinedOutput()
	if s := parseSend(t, string(out)); err != nil || s.Received != 20 || s.Bad != 0 {
		t.Fatalf("UDP through the added rule: %v\n%s\n%s", err, out, n.diag())
	}

	// Refused requests, each with its reason, changing nothing.
	hostSrv := host.start(t, sb, "serve", "-l", fmt.Sprintf("0.0.0.0:%d", busy), "-count", "1", "-timeout", "20s")
	hostSrv.WaitLine(t, "ready", 5*time.Second)
	ctlFails(t, sock, "address already in use", "add", "-t", fmt.Sprint(busy))
	ctlFails(t, sock, "overlaps", "add", "-t", fmt.Sprint(kept))
	ctlFails(t, sock, "out of range", "add", "-t", "70000")
	ctlFails(t, sock, "no rule", "del", "-t", fmt.Sprint(busy))
	ctlFails(t, sock, "fixed at start", "add", "-t", "auto")

	lr := finish(long, 30*time.Second)
	if err := jsonLine(lr.stdout, "{", &c); err != nil || !c.OK || c.Received != 2*mib {
		t.Errorf("connection through the kept rule: %v\n%s", err, lr)
	}

	// Another user: the socket's mode keeps it out; made reachable, the
	// peer check does.
	if _, stderr, ok := ctlRun(t, 65534, sock, "list"); ok || !strings.Contains(stderr, "permission denied") {
		t.Errorf("nobody through mode 0600: ok %v, %q", ok, stderr)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, stderr, ok := ctlRun(t, 65534, sock, "list"); ok || !strings.Contains(stderr, "closed the connection") {
		t.Errorf("nobody with mode 0666: ok %v, %q", ok, stderr)
	}
	if stats := ctlOK(t, sock, "stats"); !strings.Contains(stats, "control clients refused: 1") {
		t.Errorf("refusal not counted:\n%s", stats)
	}
	if !strings.Contains(n.p.Stderr(), "refused a client (uid 65534") {
		t.Errorf("refusal not logged:\n%s", n.p.Stderr())
	}
}

// TestControlSocketPasst adds and deletes a -t rule of passt at run time:
// the host port listens, then refuses.
func TestControlSocketPasst(t *testing.T) {
	sb := sandbox.New(t)
	sock := filepath.Join(ctlDir(t), "ctl.sock")
	port := nextPort()
	p, _ := passt(t, sb, "-c", sock)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Lstat(sock); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if list := ctlOK(t, sock, "list"); !strings.Contains(list, "HOST") || strings.Contains(list, "SPLICE") {
		t.Fatalf("list:\n%s", list)
	}
	ctlFails(t, sock, "no namespace side", "add", "-T", "9000")
	ctlOK(t, sock, "add", "-t", fmt.Sprint(port))
	probe := func() string {
		r := hostPlace(sb).run(t, sb, 10*time.Second, "client", "-to", fmt.Sprintf("127.0.0.1:%d", port),
			"-send", "0", "-connect-timeout", "2s", "-timeout", "300ms")
		var c clientResult
		_ = jsonLine(r.stdout, "{", &c)
		return c.Errno
	}
	// No guest: the kernel accepts, and nothing answers.
	if e := probe(); e == "ECONNREFUSED" {
		t.Errorf("added port refuses connections\n%s", p.Stderr())
	}
	ctlOK(t, sock, "del", "-t", fmt.Sprint(port))
	if e := probe(); e != "ECONNREFUSED" {
		t.Errorf("deleted port: %q, want ECONNREFUSED", e)
	}
	_ = p.Signal(syscall.SIGTERM)
	wait(t, p, 0)
}
