package podman

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// Where .ci/podman.sh puts podman, and Debian 13's pasta
// (bench/reference-trixie.sh).
const (
	defaultPrefix = "/opt/podman-trixie"
	referencePath = "/opt/passt-trixie/usr/bin/pasta"
	imageName     = "localhost/gopasst-busybox:test"
	ctrName       = "gopasst-ctr"
)

// Ports of the test; the published ones are those of the issue.
const (
	udpPort      = 15353 // -p 15353:15353/udp
	tcpHostPort  = 18080 // -p 18080:8080
	tcpCtrPort   = 8080
	hostTCPPort  = 18081 // host service for host.containers.internal
	hostUDPPort  = 18082
	remoteTCP    = 18083 // services of the remote peer
	lowPort      = 80    // below ip_unprivileged_port_start
	dnsName      = "gopasst-test.example"
	pageBody     = "gopasst-podman-ok"
	hostBody     = "host-service-ok"
	remoteBody   = "remote-peer-ok"
	maxExitDelay = 100 * time.Millisecond
)

var (
	dnsAnswer4 = netip.MustParseAddr("203.0.113.7")
	dnsAnswer6 = netip.MustParseAddr("2001:db8:53::7")
)

// loadSetup reads what .ci/podman.sh left: its READY file, or the reason
// it could not.
func loadSetup() (map[string]string, string) {
	prefix := os.Getenv("GOPASST_PODMAN_PREFIX")
	if prefix == "" {
		prefix = defaultPrefix
	}
	if b, err := os.ReadFile(prefix + ".unavailable"); err == nil {
		return nil, "podman setup unavailable: " + strings.TrimSpace(string(b))
	}
	b, err := os.ReadFile(filepath.Join(prefix, "READY"))
	if err != nil {
		return nil, fmt.Sprintf("podman 5 not set up in %s (run: sudo bash .ci/podman.sh): %v", prefix, err)
	}
	kv := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	for _, k := range []string{"podman", "crun", "conmon", "user", "uid", "gid", "busybox"} {
		if kv[k] == "" {
			return nil, fmt.Sprintf("%s/READY has no %s (rerun .ci/podman.sh)", prefix, k)
		}
	}
	return kv, ""
}

// requireSetup skips t unless podman 5 and root are available.
func requireSetup(t *testing.T) map[string]string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (sandbox namespaces, the rootless podman user)")
	}
	kv, reason := loadSetup()
	if reason != "" {
		t.Skip(reason)
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "setpriv", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (uidmap, util-linux, iproute2; see .ci/podman.sh)", tool)
		}
	}
	return kv
}

// check is the outcome of one step.
type check struct {
	name   string
	ok     bool
	detail string
}

// harness runs podman as the unprivileged user inside a sandbox's host
// namespace, with pasta being the binary under test.
type harness struct {
	t        *testing.T
	label    string // "gopasst" or "reference"
	strict   bool   // failing checks fail the test
	sb       *sandbox.Sandbox
	kv       map[string]string
	uid, gid int
	work     string
	env      []string
	argsLog  string
	exes     map[string]bool // what /proc/PID/exe of the pasta process may be
	checks   []check
	start    time.Time
}

// newHarness prepares the sandbox, the user's directories, the
// configuration and the image; pasta is the binary podman runs as pasta
// (extra: more files linked next to it, as pasta.avx2 for the reference).
// pasta may be "" for gopasst, built into the work directory.
func newHarness(t *testing.T, label string, strict bool, kv map[string]string, pasta string, extra map[string]string) *harness {
	t.Helper()
	h := &harness{t: t, label: label, strict: strict, kv: kv, exes: map[string]bool{}, start: time.Now()}
	var err error
	if h.uid, err = strconv.Atoi(kv["uid"]); err != nil {
		t.Fatalf("READY uid: %v", err)
	}
	if h.gid, err = strconv.Atoi(kv["gid"]); err != nil {
		t.Fatalf("READY gid: %v", err)
	}
	h.sb = sandbox.New(t)
	// Registered after the sandbox's cleanup, so run before it: the
	// user's processes (podman's pause process, conmon) must be gone
	// before the sandbox deletes the namespaces.
	t.Cleanup(h.killUserProcs)

	h.work, err = os.MkdirTemp("/var/tmp", "gopasst-podman-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(h.work); err != nil {
			t.Logf("removing %s: %v", h.work, err)
		}
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(h.work, 0o755))
	for _, d := range []string{"bin/real", "home/.config/containers", "home/storage", "run", "tmp"} {
		must(os.MkdirAll(filepath.Join(h.work, d), 0o755))
	}
	for _, d := range []string{"home", "home/.config", "home/.config/containers", "home/storage", "run", "tmp"} {
		p := filepath.Join(h.work, d)
		must(os.Chown(p, h.uid, h.gid))
		must(os.Chmod(p, 0o700))
	}

	if pasta == "" {
		bin, err := sandbox.Build("github.com/gopasst/gopasst/cmd/gopasst", filepath.Join(h.work, "bin"))
		must(err)
		pasta = bin
	}
	// pasta: a wrapper that records podman's command line, then the
	// binary itself under the name pasta.
	real := filepath.Join(h.work, "bin/real/pasta")
	must(os.Symlink(pasta, real))
	h.exes[resolve(pasta)] = true
	for name, target := range extra {
		must(os.Symlink(target, filepath.Join(h.work, "bin/real", name)))
		h.exes[resolve(target)] = true
	}
	h.argsLog = filepath.Join(h.work, "tmp/pasta-args")
	wrapper := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$*\" >>%s\nexec %s \"$@\"\n", h.argsLog, real)
	must(os.WriteFile(filepath.Join(h.work, "bin/pasta"), []byte(wrapper), 0o755))
	// podman 5 refuses to start without a netavark binary, though
	// containers on pasta never run it: a stub that says so.
	stub := "#!/bin/sh\n# podman 5 wants netavark to exist; the gopasst test uses pasta only.\n" +
		"[ \"$1\" = --version ] && { echo 'netavark 0.0.0 (stub: pasta networking only)'; exit 0; }\n" +
		"echo 'netavark stub: pasta networking only' >&2\nexit 1\n"
	must(os.WriteFile(filepath.Join(h.work, "bin/netavark"), []byte(stub), 0o755))

	prefix := kv["prefix"]
	conf := fmt.Sprintf(`# gopasst podman test (internal/e2e/podman)
[containers]
cgroups = "disabled"
default_sysctls = ["net.ipv4.ping_group_range=0 0"] # as Debian's containers.conf
log_driver = "k8s-file"
netns = "pasta"
seccomp_profile = %q

[network]
default_rootless_network_cmd = "pasta"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
helper_binaries_dir = [%q, %q]
conmon_path = [%q]
runtime = "crun"
static_dir = %q
tmp_dir = %q

[engine.runtimes]
crun = [%q]
`, kv["seccomp"], filepath.Join(h.work, "bin"), filepath.Join(prefix, "usr/libexec/podman"),
		kv["conmon"], filepath.Join(h.work, "home/storage/libpod"), filepath.Join(h.work, "run/libpod"), kv["crun"])
	must(os.WriteFile(filepath.Join(h.work, "containers.conf"), []byte(conf), 0o644))
	storage := fmt.Sprintf("[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(h.work, "home/storage"), filepath.Join(h.work, "run/storage"))
	must(os.WriteFile(filepath.Join(h.work, "storage.conf"), []byte(storage), 0o644))
	policy := filepath.Join(h.work, "home/.config/containers/policy.json")
	must(os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`+"\n"), 0o644))
	must(os.Chown(policy, h.uid, h.gid))
	h.env = []string{
		"HOME=" + filepath.Join(h.work, "home"),
		"USER=" + kv["user"],
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", // not bin/: podman must find pasta by helper_binaries_dir
		"XDG_RUNTIME_DIR=" + filepath.Join(h.work, "run"),
		"XDG_CONFIG_HOME=" + filepath.Join(h.work, "home/.config"),
		"XDG_DATA_HOME=" + filepath.Join(h.work, "home/.local/share"),
		"TMPDIR=" + filepath.Join(h.work, "tmp"),
		"CONTAINERS_CONF=" + filepath.Join(h.work, "containers.conf"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(h.work, "storage.conf"),
		"PODMAN_IGNORE_CGROUPSV1_WARNING=1",
	}
	return h
}

// resolve follows symbolic links (to compare with /proc/PID/exe).
func resolve(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// logf prints a line prefixed with the elapsed time.
func (h *harness) logf(format string, args ...any) {
	h.t.Helper()
	h.t.Logf("[%s %5.1fs] %s", h.label, time.Since(h.start).Seconds(), fmt.Sprintf(format, args...))
}

// record notes the result of a step and prints it.
func (h *harness) record(name string, err error, detail string) bool {
	h.t.Helper()
	c := check{name: name, ok: err == nil, detail: detail}
	if err != nil {
		c.detail = err.Error()
		if detail != "" {
			c.detail += " (" + detail + ")"
		}
	}
	h.checks = append(h.checks, c)
	status := "ok  "
	if !c.ok {
		status = "FAIL"
	}
	h.logf("check %2d %s %s: %s", len(h.checks), status, name, c.detail)
	if !c.ok && h.strict {
		h.t.Errorf("%s: %s", name, c.detail)
	}
	return c.ok
}

// summary prints how many checks passed.
func (h *harness) summary() (passed, total int) {
	var failed []string
	for _, c := range h.checks {
		if c.ok {
			passed++
		} else {
			failed = append(failed, c.name)
		}
	}
	total = len(h.checks)
	h.logf("SUMMARY %s as podman's pasta: %d/%d checks passed in %.1fs", h.label, passed, total, time.Since(h.start).Seconds())
	if len(failed) > 0 {
		h.logf("failed: %s", strings.Join(failed, "; "))
	}
	return passed, total
}

// podmanCmd is podman with args, as the user, in the sandbox's host
// namespace, with the test's resolv.conf (its DNS responder on the host's
// loopback) bound over /etc/resolv.conf in a mount namespace of its own.
// Not "ip netns exec": it mounts a sysfs of the namespace over /sys,
// which hides /sys/fs/cgroup from crun. On a host with cgroups v1 and an
// empty v2 hierarchy beside them ("hybrid", which crun refuses), the v2
// one is unmounted in that mount namespace, so crun sees plain v1.
func (h *harness) podmanCmd(ctx context.Context, args ...string) *exec.Cmd {
	argv := []string{"--net=" + filepath.Join("/run/netns", h.sb.HostNS), "--",
		"unshare", "--mount", "--",
		"sh", "-c", `mount --bind "$0" /etc/resolv.conf && { ! mountpoint -q /sys/fs/cgroup/unified || umount -l /sys/fs/cgroup/unified; } && exec "$@"`,
		filepath.Join(h.work, "resolv.conf"),
		"setpriv", "--reuid=" + strconv.Itoa(h.uid), "--regid=" + strconv.Itoa(h.gid), "--clear-groups", "--",
		"env", "-i"}
	argv = append(argv, h.env...)
	argv = append(argv, h.kv["podman"])
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.Dir = "/"
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// podman runs podman and returns its stdout, and an error with stderr if
// it fails.
func (h *harness) podman(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := h.podmanCmd(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// exec runs a shell command in the container.
func (h *harness) exec(timeout time.Duration, script string) (string, error) {
	return h.podman(timeout, "exec", ctrName, "sh", "-c", script)
}

// killUserProcs kills, by PID, the test user's processes left in the
// sandbox's host namespace (podman's pause process, conmon, pasta).
func (h *harness) killUserProcs() {
	for range 50 {
		pids := h.userProcs(nil)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// userProcs lists the processes of the test user whose network namespace
// is the sandbox's host namespace (any namespace if the host one cannot
// be read) and, if exes is not nil, whose executable is one of exes.
func (h *harness) userProcs(exes map[string]bool) []int {
	var nsIno uint64
	var st unix.Stat_t
	if unix.Stat(filepath.Join("/run/netns", h.sb.HostNS), &st) == nil {
		nsIno = st.Ino
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var ps unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d", pid), &ps) != nil || int(ps.Uid) != h.uid {
			continue
		}
		if nsIno != 0 {
			var ns unix.Stat_t
			if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &ns) != nil || ns.Ino != nsIno {
				continue
			}
		}
		if exes != nil {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if err != nil || !exes[strings.TrimSuffix(exe, " (deleted)")] {
				continue
			}
		}
		if zombie(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// zombie reports whether pid has exited (or is gone).
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// inNetns runs f on a thread inside the ip-netns namespace ns (the
// sockets f opens stay there), then moves the thread back; a thread that
// cannot move back is not reused.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %v", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %v", err))
			return // the thread stays locked and ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// buildImage writes a root file system tarball: busybox-static with a
// link per applet, udptool, /www/index.html, and imports it.
func (h *harness) buildImage(udptool string) error {
	bb := h.kv["busybox"]
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %v", bb, err)
	}
	tarPath := filepath.Join(h.work, "rootfs.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	now := time.Now()
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: now})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: now}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "root", "www", "run", "var"} {
		if err := dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return err
	}
	for _, src := range []struct{ path, name string }{{bb, "bin/busybox"}, {udptool, "bin/udptool"}} {
		b, err := os.ReadFile(src.path)
		if err != nil {
			return err
		}
		if err := file(src.name, 0o755, b); err != nil {
			return err
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(list))
	for sc.Scan() {
		a := strings.TrimSpace(sc.Text())
		if a == "" || a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
			return err
		}
	}
	for _, fl := range []struct {
		name, data string
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"},
		{"etc/group", "root:x:0:\nnogroup:x:65534:\n"},
		{"www/index.html", pageBody + "\n"},
	} {
		if err := file(fl.name, 0o644, []byte(fl.data)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tarPath, 0o644); err != nil {
		return err
	}
	_, err = h.podman(60*time.Second, "import", "--quiet", tarPath, imageName)
	return err
}

// buildStatic builds a Go main package without cgo (the image has no C
// library) into dir.
func buildStatic(pkg, dir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command(goTool, "build", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}

// retry calls f until it succeeds or d has passed.
func retry(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readAll reads r until EOF or the deadline set on it.
func readAll(r io.Reader) string {
	b, _ := io.ReadAll(r)
	return string(b)
}
