package netns

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testUser = "gopasst-test"

// ensureTestUser returns the UID and GID of testUser, creating it if needed.
func ensureTestUser(t *testing.T) (uid, gid uint32) {
	t.Helper()
	u, err := user.Lookup(testUser)
	if err != nil {
		out, err := exec.Command("useradd", "-M", "-s", "/usr/sbin/nologin", testUser).CombinedOutput()
		if err != nil {
			t.Skipf("cannot create user %s: %v: %s", testUser, err, out)
		}
		if u, err = user.Lookup(testUser); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := strconv.ParseUint(u.Uid, 10, 32)
	g, _ := strconv.ParseUint(u.Gid, 10, 32)
	return uint32(id), uint32(g)
}

// buildHelper builds testdata/userhelper into a world-readable directory.
func buildHelper(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the helper")
	}
	dir, err := os.MkdirTemp("", "gopasst-userns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "userhelper")
	out, err := exec.Command(gobin, "build", "-o", bin, "./testdata/userhelper").CombinedOutput()
	if err != nil {
		t.Fatalf("building helper: %v\n%s", err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// helperReport is the parsed "key=value ..." line of the helper.
type helperReport map[string]string

func parseReport(t *testing.T, out string) helperReport {
	t.Helper()
	line, _, _ := strings.Cut(out, "\n")
	r := helperReport{}
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		if ok {
			r[k] = v
		}
	}
	if r["euid"] == "" {
		t.Fatalf("no report in helper output %q", out)
	}
	return r
}

func TestUserNS(t *testing.T) {
	requireRoot(t, false)
	uid, gid := ensureTestUser(t)
	bin := buildHelper(t)
	dir := filepath.Dir(bin)
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

	// command prepares a command run as testUser (or as root if !asUser).
	command := func(asUser bool, name string, args ...string) *exec.Cmd {
		cmd := exec.Command(name, args...)
		cmd.Dir, cmd.Env = dir, env
		if asUser {
			cmd.SysProcAttr = &syscall.SysProcAttr{
				Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
			}
		}
		return cmd
	}
	helper := func(asUser bool, args ...string) *exec.Cmd {
		return command(asUser, bin, args...)
	}
	// run runs the helper and returns stdout and the exit code.
	run := func(t *testing.T, asUser bool, args ...string) (string, int) {
		t.Helper()
		cmd := helper(asUser, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatalf("running helper: %v", err)
		}
		if stderr.Len() > 0 {
			t.Logf("helper stderr: %s", stderr.String())
		}
		if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() {
			t.Fatalf("helper killed by %v", ws.Signal())
		}
		return stdout.String(), cmd.ProcessState.ExitCode()
	}
	hostUserNS, _ := os.Readlink("/proc/self/ns/user")

	// Probe: can the test user make user namespaces at all?
	if out, err := helper(true, "enter", "report", "0").CombinedOutput(); err != nil {
		t.Skipf("unprivileged user namespaces unavailable: %v: %s", err, out)
	}

	t.Run("enter", func(t *testing.T) {
		out, code := run(t, true, "enter", "report", "7")
		r := parseReport(t, out)
		if r["euid"] != "0" || r["egid"] != "0" || r["child"] != "true" {
			t.Errorf("inside: %v", r)
		}
		if r["argv0"] != bin || r["marker"] != `""` {
			t.Errorf("argv0 %q, marker %s", r["argv0"], r["marker"])
		}
		if r["userns"] == hostUserNS {
			t.Errorf("still in the initial user namespace %s", r["userns"])
		}
		if code != 7 {
			t.Errorf("exit code %d, want 7", code)
		}
	})

	t.Run("signal death", func(t *testing.T) {
		_, code := run(t, true, "enter", "kill", "0")
		if code != 128+int(syscall.SIGKILL) {
			t.Errorf("exit code %d, want %d", code, 128+int(syscall.SIGKILL))
		}
	})

	t.Run("signal relay", func(t *testing.T) {
		cmd := helper(true, "enter", "sleep", "0")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan bool, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if sc.Text() == "ready" {
					ready <- true
					for sc.Scan() { // drain
					}
					return
				}
			}
			ready <- false
		}()
		select {
		case ok := <-ready:
			if !ok {
				t.Fatal("helper ended before getting ready")
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatal("helper not ready")
		}
		// Signal only the outer process: it must relay to the copy.
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if ws.Signaled() || ws.ExitStatus() != 128+int(syscall.SIGTERM) {
			t.Errorf("outer process status %v, want exit %d", ws, 128+int(syscall.SIGTERM))
		}
	})

	t.Run("root is a no-op", func(t *testing.T) {
		out, code := run(t, false, "enter", "report", "3")
		r := parseReport(t, out)
		if r["child"] != "false" || r["userns"] != hostUserNS || code != 3 {
			t.Errorf("as root: %v, exit %d", r, code)
		}
	})

	t.Run("join", func(t *testing.T) {
		// A user namespace owned by the test user, mapping it to 0.
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("no unshare(1)")
		}
		holder := command(true, "unshare", "--user", "--map-root-user", "sleep", "60")
		if err := holder.Start(); err != nil {
			t.Skipf("unshare: %v", err)
		}
		defer func() { holder.Process.Kill(); holder.Wait() }()
		nsPath := fmt.Sprintf("/proc/%d/ns/user", holder.Process.Pid)
		var target string
		for i := 0; i < 200; i++ {
			target, _ = os.Readlink(nsPath)
			if target != "" && target != hostUserNS {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if target == "" || target == hostUserNS {
			t.Fatalf("holder never entered its user namespace (%q)", target)
		}

		for _, asUser := range []bool{true, false} {
			out, code := run(t, asUser, "join="+nsPath, "report", "5")
			r := parseReport(t, out)
			if r["userns"] != target {
				t.Errorf("asUser=%v: in %s, want %s", asUser, r["userns"], target)
			}
			if r["euid"] != "0" || r["egid"] != "0" || r["child"] != "true" || r["argv0"] != bin {
				t.Errorf("asUser=%v: inside: %v", asUser, r)
			}
			for _, fd := range []string{"fd3", "fd4"} {
				if v := r[fd]; v == bin || strings.HasPrefix(v, "user:[") {
					t.Errorf("asUser=%v: %s leaked: %s", asUser, fd, v)
				}
			}
			if code != 5 {
				t.Errorf("asUser=%v: exit code %d, want 5", asUser, code)
			}
		}
	})

	t.Run("join own namespace", func(t *testing.T) {
		out, code := run(t, true, "join=/proc/self/ns/user", "report", "4")
		r := parseReport(t, out)
		if r["child"] != "false" || r["userns"] != hostUserNS || code != 4 {
			t.Errorf("%v, exit %d", r, code)
		}
	})

	t.Run("join errors", func(t *testing.T) {
		if _, code := run(t, true, "join=/proc/self/ns/net", "report", "0"); code != 125 {
			t.Errorf("joining a network namespace as user namespace: exit %d, want 125", code)
		}
		if _, _, err := JoinUserNS("/nonexistent"); err == nil {
			t.Error("JoinUserNS accepted a missing path")
		}
	})
}
