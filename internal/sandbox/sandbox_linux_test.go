//go:build linux && (amd64 || arm64)

package sandbox

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// The sandbox cannot be undone, so the tests apply it in a child: this
// test binary again, told so by childEnv. The child reports on standard
// output (one JSON line, then "ready") and waits for standard input to
// close before it exits.
const (
	childEnv        = "GOPASST_SANDBOX_TEST_CHILD"
	childRunAsEnv   = "GOPASST_SANDBOX_TEST_RUNAS"
	childRemoveEnv  = "GOPASST_SANDBOX_TEST_REMOVE"
	childCommandEnv = "GOPASST_SANDBOX_TEST_COMMAND"
	childModeEnv    = "GOPASST_SANDBOX_TEST_MODE"
)

func TestMain(m *testing.M) {
	// The helper first: it inherits the child's environment.
	if IsHelper() {
		os.Exit(HelperMain(os.Args[1:]))
	}
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// childReport is what the child prints.
type childReport struct {
	Error     string            `json:"error,omitempty"`
	Probes    map[string]string `json:"probes"`
	RoundTrip string            `json:"roundTrip"`
	Command   string            `json:"command,omitempty"`
}

func childMain() int {
	var rep childReport
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		rep.Error = err.Error()
		_ = out.Encode(rep)
		return 1
	}
	mode := Pasta
	if os.Getenv(childModeEnv) == "passt" {
		mode = Passt
	}
	sb, err := New(Config{Mode: mode, RunAs: os.Getenv(childRunAsEnv)})
	if err != nil {
		return fail(err)
	}
	defer sb.Close()
	// A socket from before, which must keep working.
	before, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return fail(err)
	}
	sb.RemoveAtExit(os.Getenv(childRemoveEnv))
	var cmd *exec.Cmd
	if os.Getenv(childCommandEnv) != "" {
		cmd = exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			return fail(err)
		}
		sb.SetCommand(cmd.Process)
	}
	if err := sb.Apply(); err != nil {
		return fail(err)
	}
	rep.Probes = runProbes()

	// A socket made in the sandbox, sending to the one from before.
	rep.RoundTrip = func() string {
		after, err := net.DialUDP("udp4", nil, before.LocalAddr().(*net.UDPAddr))
		if err != nil {
			return err.Error()
		}
		defer after.Close()
		if _, err := after.Write([]byte("ping")); err != nil {
			return err.Error()
		}
		_ = before.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		n, from, err := before.ReadFromUDP(buf)
		if err != nil {
			return err.Error()
		}
		if _, err := before.WriteToUDP(buf[:n], from); err != nil {
			return err.Error()
		}
		_ = after.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err = after.Read(buf); err != nil {
			return err.Error()
		}
		return string(buf[:n])
	}()
	if cmd != nil {
		_ = sb.Signal(cmd.Process, syscall.SIGTERM)
		rep.Command = fmt.Sprint(cmd.Wait())
	}
	if err := out.Encode(rep); err != nil {
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// child is a running child.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	report childReport
	errs   *strings.Builder
}

// startChild starts a child with env and waits for its report.
func startChild(t *testing.T, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	errs := &strings.Builder{}
	cmd.Stderr = errs
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, errs: errs}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatalf("child said nothing; stderr:\n%s", errs)
	}
	if err := json.Unmarshal(sc.Bytes(), &c.report); err != nil {
		t.Fatalf("child report %q: %v", sc.Text(), err)
	}
	if c.report.Error != "" {
		t.Fatalf("child: %s\nstderr:\n%s", c.report.Error, errs)
	}
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("child not ready: %q\nstderr:\n%s", sc.Text(), errs)
	}
	return c
}

// finish lets the child exit and waits for it.
func (c *child) finish(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child: %v\nstderr:\n%s", err, c.errs)
	}
}

// status returns the fields of /proc/PID/status of the child.
func (c *child) status(t *testing.T) map[string]string {
	t.Helper()
	st, err := watch.ProcStatus(c.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkProbes checks that the forbidden calls failed with EPERM and the
// allowed ones worked.
func checkProbes(t *testing.T, got map[string]string) {
	t.Helper()
	for _, p := range probes {
		want := "EPERM"
		if p.allowed {
			want = "ok"
		}
		if got[p.name] != want {
			t.Errorf("probe %s: %q, want %s", p.name, got[p.name], want)
		}
	}
}

// TestApply sandboxes a child as whoever runs the test: root (then the
// child becomes "nobody" and gets an empty root directory) or not (then
// only no_new_privs and the filter apply).
func TestApply(t *testing.T) {
	for _, mode := range []string{"pasta", "passt"} {
		t.Run(mode, func(t *testing.T) {
			c := startChild(t, childModeEnv+"="+mode)
			checkProbes(t, c.report.Probes)
			if c.report.RoundTrip != "ping" {
				t.Errorf("UDP round trip in the sandbox: %q", c.report.RoundTrip)
			}
			st := c.status(t)
			if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
				t.Errorf("NoNewPrivs %s, Seccomp %s; want 1 and 2", st["NoNewPrivs"], st["Seccomp"])
			}
			if os.Geteuid() == 0 {
				if st["Uid"] != "65534\t65534\t65534\t65534" || st["Gid"] != "65534\t65534\t65534\t65534" {
					t.Errorf("Uid %q, Gid %q: want nobody's", st["Uid"], st["Gid"])
				}
				if st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" {
					t.Errorf("CapEff %s, CapPrm %s: want none", st["CapEff"], st["CapPrm"])
				}
				root := fmt.Sprintf("/proc/%d/root", c.cmd.Process.Pid)
				if names, err := os.ReadDir(root); err != nil || len(names) != 0 {
					t.Errorf("root directory: %v, %v; want empty", names, err)
				}
				if err := os.WriteFile(filepath.Join(root, "x"), nil, 0o600); err == nil {
					t.Errorf("the root directory is writable")
				}
			}
			c.finish(t)
		})
	}
}

// TestHelper checks that files registered with RemoveAtExit are removed
// when the child exits, on its own or killed, but not a file that replaced
// them; and, as root, that a command the child no longer may signal gets
// its signal through the helper.
func TestHelper(t *testing.T) {
	dir := t.TempDir()
	t.Run("exit", func(t *testing.T) {
		path := filepath.Join(dir, "exit.pid")
		if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startChild(t, childRemoveEnv+"="+path)
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("removed too early: %v", err)
		}
		c.finish(t)
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("%s left behind: %v", path, err)
		}
	})
	t.Run("killed", func(t *testing.T) {
		path := filepath.Join(dir, "killed.pid")
		if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startChild(t, childRemoveEnv+"="+path)
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
		for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(path); os.IsNotExist(err) {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s left behind after SIGKILL", path)
			}
		}
	})
	t.Run("replaced", func(t *testing.T) {
		path := filepath.Join(dir, "replaced.pid")
		if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startChild(t, childRemoveEnv+"="+path)
		// Someone else's file now, at the same path (made before the
		// old one goes, so that it cannot reuse its inode number).
		if err := os.WriteFile(path+".new", []byte("2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
		c.finish(t)
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("the new file at %s was removed: %v", path, err)
		}
	})
	t.Run("signal", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root: the child must switch to another user")
		}
		c := startChild(t, childCommandEnv+"=1", childRunAsEnv+"=nobody")
		if c.report.Command != "signal: terminated" {
			t.Errorf("command: %q, want it terminated by the relayed SIGTERM", c.report.Command)
		}
		c.finish(t)
	})
}

// TestNewRunAs checks what New accepts.
func TestNewRunAs(t *testing.T) {
	if _, err := New(Config{Disabled: true, RunAs: "no such user"}); err != nil {
		t.Errorf("disabled: %v", err)
	}
	if s, _ := New(Config{Disabled: true}); s != nil {
		t.Errorf("disabled: got a sandbox")
	}
	if os.Geteuid() == 0 {
		if _, err := New(Config{RunAs: "gopasst-no-such-user"}); err == nil {
			t.Errorf("unknown user accepted")
		}
		s, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		if init, _ := initialUserNS(); init && (!s.change || s.uid == 0) {
			t.Errorf("root in the initial namespace: no switch to nobody")
		}
		return
	}
	if _, err := New(Config{RunAs: "0"}); err == nil {
		t.Errorf("unprivileged: --runas 0 accepted")
	}
	if _, err := New(Config{RunAs: fmt.Sprint(os.Getuid())}); err != nil {
		t.Errorf("unprivileged: --runas self: %v", err)
	}
}

func TestLookupRunAs(t *testing.T) {
	for _, c := range []struct {
		spec     string
		uid, gid int
	}{
		{"0", 0, 0},
		{"1000", 1000, 1000},
		{"1000:100", 1000, 100},
		{"0x10:010", 16, 8},
	} {
		uid, gid, err := LookupRunAs(c.spec)
		if err != nil || uid != c.uid || gid != c.gid {
			t.Errorf("%q: %d, %d, %v; want %d, %d", c.spec, uid, gid, err, c.uid, c.gid)
		}
	}
	for _, bad := range []string{"", ":1", "1:", "root", "gopasst-no-such-user", "1:gopasst-no-such-group", "4294967295"} {
		if _, _, err := LookupRunAs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if uid, _, err := LookupRunAs("nobody"); err == nil && uid == 0 {
		t.Errorf("nobody is UID 0")
	}
}
