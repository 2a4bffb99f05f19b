package sandbox

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Addresses configured by [New].
var (
	// HostAddr4 is the IPv4 address of eth0 in the host namespace.
	HostAddr4 = netip.MustParseAddr("192.0.2.2")
	// HostAddr6 is the IPv6 address of eth0 in the host namespace.
	HostAddr6 = netip.MustParseAddr("2001:db8::2")
	// GatewayAddr4 is the IPv4 address of eth0 in the world namespace,
	// the IPv4 default gateway of the host namespace.
	GatewayAddr4 = netip.MustParseAddr("192.0.2.1")
	// GatewayAddr6 is the IPv6 address of eth0 in the world namespace,
	// the IPv6 default gateway of the host namespace.
	GatewayAddr6 = netip.MustParseAddr("2001:db8::1")
	// RemoteAddr4 is an IPv4 address on lo in the world namespace,
	// reachable from the host namespace through the default route.
	RemoteAddr4 = netip.MustParseAddr("198.51.100.1")
	// RemoteAddr6 is an IPv6 address on lo in the world namespace,
	// reachable from the host namespace through the default route.
	RemoteAddr6 = netip.MustParseAddr("2001:db8:1::1")
)

// Prefix lengths of the link between the host and world namespaces.
const (
	// LinkPrefixLen4 is the prefix length of HostAddr4 and GatewayAddr4.
	LinkPrefixLen4 = 24
	// LinkPrefixLen6 is the prefix length of HostAddr6 and GatewayAddr6.
	LinkPrefixLen6 = 64
)

// IfName is the name of the veth interface in both namespaces.
const IfName = "eth0"

// Name prefixes of the namespaces created by [New].
const (
	// HostNSPrefix starts the name of every host namespace.
	HostNSPrefix = "gp-host-"
	// WorldNSPrefix starts the name of every world namespace.
	WorldNSPrefix = "gp-world-"
)

// setupTimeout bounds each ip command and the wait for usable addresses.
const setupTimeout = 10 * time.Second

// Sandbox is a pair of network namespaces connected by a veth pair. See
// the package documentation for the topology. Its methods are safe for
// concurrent use.
type Sandbox struct {
	// HostNS is the ip-netns name of the host namespace.
	HostNS string
	// WorldNS is the ip-netns name of the world namespace.
	WorldNS string

	mu     sync.Mutex
	procs  []*Proc
	closed bool
}

// ErrUnavailable is wrapped by the errors [Create] returns when the
// machine cannot host a sandbox at all: not root, no ip command, or no
// permission to create network namespaces.
var ErrUnavailable = errors.New("sandbox unavailable")

// New creates a sandbox and registers a cleanup on t that kills the
// processes it started and deletes both namespaces. It skips t if not run
// as root or if the ip command is missing, and fails t if the setup fails.
func New(t testing.TB) *Sandbox {
	t.Helper()
	s, err := Create()
	if errors.Is(err, ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// Create creates a sandbox outside of a test; the caller must call
// [Sandbox.Close] when done. The error wraps [ErrUnavailable] if not run
// as root, if the ip command is missing or if network namespaces cannot
// be created.
func Create() (*Sandbox, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("sandbox: needs root: %w", ErrUnavailable)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("sandbox: ip command not found: %w", ErrUnavailable)
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	suffix := hex.EncodeToString(rnd[:])
	s := &Sandbox{HostNS: HostNSPrefix + suffix, WorldNS: WorldNSPrefix + suffix}

	if out, err := ipCmd("netns", "add", s.HostNS); err != nil {
		if strings.Contains(out, "Operation not permitted") || strings.Contains(out, "Permission denied") {
			return nil, fmt.Errorf("sandbox: cannot create network namespaces: %s: %w", out, ErrUnavailable)
		}
		return nil, fmt.Errorf("sandbox: ip netns add %s: %v: %s", s.HostNS, err, out)
	}
	fail := func(err error) (*Sandbox, error) {
		if cerr := s.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	if out, err := ipCmd("netns", "add", s.WorldNS); err != nil {
		return fail(fmt.Errorf("sandbox: ip netns add %s: %v: %s", s.WorldNS, err, out))
	}
	if err := s.setup(); err != nil {
		return fail(fmt.Errorf("sandbox: %w", err))
	}
	return s, nil
}

// setup configures interfaces, addresses and routes.
func (s *Sandbox) setup() error {
	h, w := s.HostNS, s.WorldNS
	for _, ns := range []string{h, w} {
		// Addresses, including link-local ones, are never tentative.
		for _, p := range []string{"all", "default"} {
			if err := setSysctl(ns, "net/ipv6/conf/"+p+"/accept_dad", "0"); err != nil {
				return err
			}
		}
	}
	cmds := [][]string{
		{"-n", h, "link", "add", IfName, "type", "veth", "peer", "name", IfName, "netns", w},
		{"-n", h, "link", "set", "lo", "up"},
		{"-n", w, "link", "set", "lo", "up"},
		{"-n", h, "addr", "add", prefix(HostAddr4, LinkPrefixLen4), "dev", IfName},
		{"-n", h, "addr", "add", prefix(HostAddr6, LinkPrefixLen6), "dev", IfName, "nodad"},
		{"-n", w, "addr", "add", prefix(GatewayAddr4, LinkPrefixLen4), "dev", IfName},
		{"-n", w, "addr", "add", prefix(GatewayAddr6, LinkPrefixLen6), "dev", IfName, "nodad"},
		{"-n", w, "addr", "add", prefix(RemoteAddr4, 32), "dev", "lo"},
		{"-n", w, "addr", "add", prefix(RemoteAddr6, 128), "dev", "lo", "nodad"},
		{"-n", h, "link", "set", IfName, "up"},
		{"-n", w, "link", "set", IfName, "up"},
		{"-n", h, "-4", "route", "add", "default", "via", GatewayAddr4.String(), "dev", IfName},
		{"-n", h, "-6", "route", "add", "default", "via", GatewayAddr6.String(), "dev", IfName},
	}
	for _, args := range cmds {
		if out, err := ipCmd(args...); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return s.waitUsable()
}

// waitUsable waits until eth0 is operationally up in both namespaces and
// no address is tentative. Carrier (LOWER_UP) alone is not enough: the
// kernel's link watcher, which may run up to a second later, sets the
// operational state and only then makes IPv6 neighbour discovery work.
func (s *Sandbox) waitUsable() error {
	deadline := time.Now().Add(setupTimeout)
	for {
		var problem string
		for _, ns := range []string{s.HostNS, s.WorldNS} {
			out, err := ipCmd("-n", ns, "-o", "link", "show", "dev", IfName)
			if err != nil {
				return fmt.Errorf("ip -n %s link show: %v: %s", ns, err, out)
			}
			if !strings.Contains(out, "state UP") {
				problem = fmt.Sprintf("%s: %s not up: %s", ns, IfName, out)
				continue
			}
			out, err = ipCmd("-n", ns, "addr", "show")
			if err != nil {
				return fmt.Errorf("ip -n %s addr show: %v: %s", ns, err, out)
			}
			if strings.Contains(out, "tentative") {
				problem = fmt.Sprintf("%s: tentative addresses:\n%s", ns, out)
			}
		}
		if problem == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("addresses not usable after %v: %s", setupTimeout, problem)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// prefix formats addr/bits.
func prefix(addr netip.Addr, bits int) string {
	return netip.PrefixFrom(addr, bits).String()
}

// ipCmd runs the ip command and returns its combined output.
func ipCmd(args ...string) (string, error) {
	cmd := exec.Command("ip", args...)
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return strings.TrimSpace(out.String()), err
	case <-time.After(setupTimeout):
		_ = cmd.Process.Kill()
		<-done
		return strings.TrimSpace(out.String()), fmt.Errorf("timed out after %v", setupTimeout)
	}
}

// setSysctl writes value to /proc/sys/<key> inside network namespace ns.
// It runs a shell in the namespace rather than switching a thread of the
// test process into it, which could leave the process itself (and so the
// namespace) behind.
func setSysctl(ns, key, value string) error {
	p := filepath.Join("/proc/sys", key)
	out, err := ipCmd("netns", "exec", ns, "sh", "-c", `printf '%s\n' "$1" > "$2"`, "sh", value, p)
	if err != nil {
		return fmt.Errorf("%s: set %s: %v: %s", ns, p, err, out)
	}
	return nil
}

// Command returns a command that runs name with args inside namespace ns
// (like "ip netns exec NS name args..."). ns is normally s.HostNS or
// s.WorldNS; an empty ns runs the command in the caller's namespace. The
// caller starts and waits for the command; processes still running in the
// sandbox at cleanup are killed.
func (s *Sandbox) Command(ns string, name string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Start starts name with args inside namespace ns (see [Sandbox.Command]),
// capturing its stdout and stderr. The process is killed by a cleanup
// registered on t, and at the latest by the sandbox cleanup. Start fails t
// if the process cannot be started.
func (s *Sandbox) Start(t testing.TB, ns string, name string, args ...string) *Proc {
	t.Helper()
	p, err := s.Spawn(ns, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop() })
	return p
}

// Spawn is [Sandbox.Start] for programs that are not tests: it returns
// an error instead of failing a test, and the process is killed by
// [Sandbox.Close] (or [Proc.Kill]).
func (s *Sandbox) Spawn(ns string, name string, args ...string) (*Proc, error) {
	p := newProc(s.Command(ns, name, args...))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("sandbox: Start after cleanup")
	}
	if err := p.start(); err != nil {
		return nil, fmt.Errorf("sandbox: start %s: %v", name, err)
	}
	s.procs = append(s.procs, p)
	return p, nil
}

// Close kills the processes started in the sandbox (with [Sandbox.Start],
// or with [Sandbox.Command] and not waited for) and deletes its
// namespaces. Processes in the sandbox that are not descendants of this
// process are reported as an error. Close may be called more than once.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	s.closed = true
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	for _, p := range procs {
		p.stop()
	}
	var errs []error
	for _, ns := range []string{s.HostNS, s.WorldNS} {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		if err := killNamespaceProcs(ns); err != nil {
			errs = append(errs, fmt.Errorf("sandbox: %v", err))
		}
		if out, err := ipCmd("netns", "del", ns); err != nil {
			errs = append(errs, fmt.Errorf("sandbox: ip netns del %s: %v: %s", ns, err, out))
		}
	}
	return errors.Join(errs...)
}

// foreignGrace is how long processes that do not descend from this one
// may take to end on their own: gopasst's sandbox helper, orphaned when
// gopasst is killed, removes its files and exits (see package
// internal/sandbox).
const foreignGrace = 3 * time.Second

// killNamespaceProcs kills the processes inside network namespace ns that
// descend from this process (started with Command and not waited for) and
// reports any others that do not end within foreignGrace.
func killNamespaceProcs(ns string) error {
	deadline := time.Now().Add(setupTimeout)
	graceEnd := time.Now().Add(foreignGrace)
	for {
		out, err := ipCmd("netns", "pids", ns)
		if err != nil {
			return fmt.Errorf("ip netns pids %s: %v: %s", ns, err, out)
		}
		var ours, foreign []int
		for _, f := range strings.Fields(out) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if isDescendant(pid, os.Getpid()) {
				ours = append(ours, pid)
			} else {
				foreign = append(foreign, pid)
			}
		}
		if len(foreign) > 0 && time.Now().After(graceEnd) {
			return fmt.Errorf("namespace %s: processes %v not started by this test are still running", ns, foreign)
		}
		if len(ours) == 0 && len(foreign) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s: processes %v survive SIGKILL", ns, ours)
		}
		for _, pid := range ours {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isDescendant reports whether pid is a descendant of ancestor.
func isDescendant(pid, ancestor int) bool {
	for i := 0; i < 64 && pid > 1; i++ {
		ppid, err := parentPID(pid)
		if err != nil {
			return false
		}
		if ppid == ancestor {
			return true
		}
		pid = ppid
	}
	return false
}

// parentPID reads the parent process id of pid from /proc.
func parentPID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return strconv.Atoi(f[1])
}
