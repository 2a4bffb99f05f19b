package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// Variants of gopasst built on demand, next to the others: a pure-Go build
// (no cgo, so every per-thread step of the sandbox applies to every
// thread), and one with the "sandboxtest" tag, whose sandbox tries
// forbidden system calls when GOPASST_SANDBOX_PROBE is set.
var (
	variantsMu sync.Mutex
	variants   = map[string]string{}
)

func gopasstVariant(t *testing.T, name string, buildArgs ...string) string {
	t.Helper()
	variantsMu.Lock()
	defer variantsMu.Unlock()
	if bin, ok := variants[name]; ok {
		return bin
	}
	bin := filepath.Join(binDir, "gopasst-"+name)
	args := append(append([]string{"build", "-o", bin}, buildArgs...), "github.com/gopasst/gopasst/cmd/gopasst")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, out)
	}
	variants[name] = bin
	return bin
}

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	st, err := watch.ProcStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// sandboxedStatus waits until process pid has its seccomp filter (the
// last step of the sandbox) and returns its status.
func sandboxedStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		st := procStatus(t, pid)
		if st["Seccomp"] == "2" {
			return st
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("process %d not sandboxed: Seccomp %q", pid, st["Seccomp"])
		}
	}
}

// checkSandboxed checks what /proc shows of sandboxed process pid, which
// was started as root: it runs as nobody, with no capabilities,
// no_new_privs, a seccomp filter and an empty root directory; with
// pureGo, also an empty bounding set and its own IPC and UTS namespaces.
func checkSandboxed(t *testing.T, pid int, pureGo bool) {
	t.Helper()
	st := sandboxedStatus(t, pid)
	const nobody = "65534\t65534\t65534\t65534"
	want := map[string]string{
		"Uid": nobody, "Gid": nobody, "Groups": "",
		"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapInh": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2", "Seccomp_filters": "1",
	}
	if pureGo {
		want["CapBnd"] = "0000000000000000"
	}
	for k, v := range want {
		if st[k] != v {
			t.Errorf("/proc/%d/status %s: %q, want %q", pid, k, st[k], v)
		}
	}
	root := fmt.Sprintf("/proc/%d/root", pid)
	if names, err := os.ReadDir(root); err != nil || len(names) != 0 {
		t.Errorf("root directory of gopasst: %v %v, want empty", names, err)
	}
	if err := os.WriteFile(filepath.Join(root, "x"), nil, 0o600); err == nil {
		t.Errorf("root directory of gopasst is writable")
	}
	if pureGo {
		for _, ns := range []string{"ipc", "uts"} {
			mine, _ := os.Readlink("/proc/self/ns/" + ns)
			its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
			if its == "" || its == mine {
				t.Errorf("%s namespace of gopasst %q, the test's %q: want its own", ns, its, mine)
			}
		}
	}
}

// TestSandboxPasta runs pasta as root with --runas nobody, default and
// pure-Go builds: the data path works both ways (tap and splice) while
// /proc shows the process confined, and a SIGTERM for pasta still reaches
// the command, which runs as root (through the sandbox helper).
func TestSandboxPasta(t *testing.T) {
	sb := sandbox.New(t)
	for _, v := range []struct {
		name   string
		pureGo bool
	}{{"default", false}, {"pure Go", true}} {
		t.Run(v.name, func(t *testing.T) {
			bin := gopasst
			if v.pureGo {
				bin = gopasstVariant(t, "purego", "-tags", "netgo,osusergo")
			}
			echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5400", "-count", "1", "-timeout", "20s")
			echo.WaitLine(t, "ready", 5*time.Second)
			script := fmt.Sprintf("%[1]s echo -l 0.0.0.0:10400 -count 1 -timeout 20s & sleep 0.5; %[1]s send -to %[2]s -count 1 -echo -connect; wait",
				udptool, ap(sandbox.GatewayAddr4, 5400))
			p := sb.Start(t, sb.HostNS, bin, "pasta", "--config-net", "--runas", "nobody", "-u", "10400", "--", "sh", "-c", script)
			p.WaitLine(t, `"sent"`, 10*time.Second)
			checkSandboxed(t, p.Cmd.Process.Pid, v.pureGo)
			// Host to namespace, spliced, with a socket made in the
			// sandbox.
			if out, err := sb.Command(sb.HostNS, udptool, "send", "-to", "127.0.0.1:10400", "-count", "1", "-echo", "-connect").CombinedOutput(); err != nil {
				t.Fatalf("send to the namespace: %v\n%s\n%s", err, out, p.Stderr())
			}
			wait(t, p, 0)
			if r := parseSend(t, p.Stdout()); r.Received != 1 || r.Bad != 0 {
				t.Fatalf("namespace to host: %+v", r)
			}
			wait(t, echo, 0)

			p = sb.Start(t, sb.HostNS, bin, "pasta", "--config-net", "--", "sh", "-c", `trap "exit 3" TERM; echo started; sleep 30 & wait`)
			p.WaitLine(t, "started", 10*time.Second)
			sandboxedStatus(t, p.Cmd.Process.Pid)
			if err := p.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			wait(t, p, 3)
		})
	}
}

// TestSandboxPasst serves a guest from a sandboxed passt: DHCP, then UDP
// both ways (see TestPasstDHCP and TestPasstUDP for the details), with
// /proc showing the process confined.
func TestSandboxPasst(t *testing.T) {
	sb := sandbox.New(t)
	p, sock := passt(t, sb, "-u", "10401")
	checkSandboxed(t, p.Cmd.Process.Pid, false)
	g := connectGuest(t, sock)
	f := families[0]
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", ap(f.loopback, 5401), "-timeout", "20s")
	echo.WaitLine(t, "ready", 5*time.Second)
	src := netip.AddrPortFrom(f.host, 41001)
	dst := netip.AddrPortFrom(f.gw, 5401)
	payload := randomPayload(1372)
	g.sendUDP(src, dst, payload)
	if got := g.expectUDP(dst, src); string(got) != string(payload) {
		t.Fatal("echo through the sandboxed passt differs")
	}
	sender := sb.Start(t, sb.HostNS, udptool, "send", "-to", ap(f.loopback, 10401), "-from", ap(f.loopback, 46401),
		"-size", "100", "-count", "1", "-echo", "-connect", "-wait", "4s")
	from, to := netip.AddrPortFrom(f.gw, 46401), netip.AddrPortFrom(f.host, 10401)
	got := g.expectUDP(from, to)
	g.sendUDP(to, from, got)
	if code, err := sender.Wait(10 * time.Second); code != 0 || err != nil {
		t.Fatalf("host sender: %d %v\n%s%s", code, err, sender.Stdout(), sender.Stderr())
	}
}

// TestSandboxRefusesCalls runs gopasst built with the "sandboxtest" tag,
// whose sandbox, once applied, tries calls it must refuse (execve, open,
// packet, raw and netlink sockets, fork, namespaces, ptrace, executable
// memory...) and a few it must allow, and prints the results.
func TestSandboxRefusesCalls(t *testing.T) {
	bin := gopasstVariant(t, "probe", "-tags", "sandboxtest")
	sb := sandbox.New(t)
	allowed := map[string]bool{"socket AF_INET6 SOCK_DGRAM": true, "socket AF_INET SOCK_STREAM": true, "kill self": true}
	check := func(t *testing.T, stderr string) {
		t.Helper()
		_, line, ok := strings.Cut(stderr, "sandbox probe: ")
		if !ok {
			t.Fatalf("no probe results:\n%s", stderr)
		}
		line, _, _ = strings.Cut(line, "\n")
		var res map[string]string
		if err := json.Unmarshal([]byte(line), &res); err != nil || len(res) < 10 {
			t.Fatalf("probe results %q: %v", line, err)
		}
		for name, got := range res {
			want := "EPERM"
			if allowed[name] {
				want = "ok"
			}
			if got != want {
				t.Errorf("%s: %s, want %s", name, got, want)
			}
		}
		t.Logf("probes: %s", line)
	}
	t.Run("pasta", func(t *testing.T) {
		p := sb.Start(t, sb.HostNS, "env", "GOPASST_SANDBOX_PROBE=1", bin, "pasta", "--config-net", "--", "true")
		wait(t, p, 0)
		check(t, p.Stderr())
	})
	t.Run("passt", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "passt.socket")
		p := sb.Start(t, sb.HostNS, "env", "GOPASST_SANDBOX_PROBE=1", bin, "passt", "-f", "-1", "-s", sock)
		for start := time.Now(); !strings.Contains(p.Stderr(), "sandbox probe: "); time.Sleep(20 * time.Millisecond) {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("no probe results:\n%s", p.Stderr())
			}
		}
		check(t, p.Stderr())
	})
}

// TestNoSandbox checks that --no-sandbox leaves gopasst as it started.
func TestNoSandbox(t *testing.T) {
	sb := sandbox.New(t)
	p := sb.Start(t, sb.HostNS, gopasst, "pasta", "--config-net", "--no-sandbox", "--", "sh", "-c", "echo started; sleep 1")
	p.WaitLine(t, "started", 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	st := procStatus(t, p.Cmd.Process.Pid)
	if st["Seccomp"] != "0" || st["NoNewPrivs"] != "0" || !strings.HasPrefix(st["Uid"], "0\t") {
		t.Errorf("sandboxed anyway: Seccomp %s, NoNewPrivs %s, Uid %s", st["Seccomp"], st["NoNewPrivs"], st["Uid"])
	}
	wait(t, p, 0)
}

// TestSandboxAttached attaches a sandboxed pasta to existing namespaces,
// one named (ip-netns) and one of a process: the data path works, and
// pasta still notices when the namespace goes away, though it can no
// longer look up paths (it keeps a descriptor on the directory).
func TestSandboxAttached(t *testing.T) {
	sb := sandbox.New(t)
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5402", "-timeout", "30s")
	echo.WaitLine(t, "ready", 5*time.Second)
	roundTrip := func(t *testing.T, ns ...string) {
		t.Helper()
		args := append(append([]string{}, ns...), udptool, "send", "-to", ap(sandbox.GatewayAddr4, 5402), "-count", "1", "-echo", "-connect")
		var out []byte
		var err error
		// The namespace is configured while pasta starts.
		for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(100 * time.Millisecond) {
			if out, err = exec.Command(args[0], args[1:]...).CombinedOutput(); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("round trip from the namespace: %v\n%s", err, out)
		}
	}
	gone := func(t *testing.T, p *sandbox.Proc) {
		t.Helper()
		code, err := p.Wait(5 * time.Second)
		if err != nil || code != 0 {
			t.Fatalf("pasta did not exit when the namespace went away: %d %v\n%s", code, err, p.Stderr())
		}
		if !strings.Contains(p.Stderr(), "is gone") {
			t.Errorf("no word of the namespace going away:\n%s", p.Stderr())
		}
	}
	t.Run("named", func(t *testing.T) {
		name := sb.HostNS + "-target"
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		p := sb.Start(t, sb.HostNS, gopasst, "pasta", "--config-net", "-f", "--netns", name)
		sandboxedStatus(t, p.Cmd.Process.Pid)
		roundTrip(t, "ip", "netns", "exec", name)
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns del: %v %s", err, out)
		}
		gone(t, p)
	})
	t.Run("process", func(t *testing.T) {
		target := sb.Start(t, sb.HostNS, "unshare", "--net", "sleep", "60")
		pid := fmt.Sprint(target.Cmd.Process.Pid)
		// unshare has made the namespace once /proc shows another one.
		host, _ := os.Readlink("/proc/self/ns/net")
		for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
			if ns, _ := os.Readlink("/proc/" + pid + "/ns/net"); ns != "" && ns != host {
				if comm, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(comm)) == "sleep" {
					break
				}
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("target process has no namespace of its own")
			}
		}
		p := sb.Start(t, sb.HostNS, gopasst, "pasta", "--config-net", "-f", pid)
		sandboxedStatus(t, p.Cmd.Process.Pid)
		roundTrip(t, "nsenter", "-t", pid, "-n")
		target.Kill()
		gone(t, p)
	})
}
