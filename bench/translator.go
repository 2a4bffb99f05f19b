package main

import (
	"bytes"
	"context"
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
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// Ports the translators forward (see [translatorArgs]).
const (
	// portFwd is forwarded from the host into the namespace (-u).
	portFwd = 10001
	// portNS is forwarded from the namespace's loopback to the host's (-U).
	portNS = 10002
	// portHost is not forwarded: the namespace reaches it on the host's
	// loopback through the tap, as the gateway address.
	portHost = 10003
	// portDiscard is a port nobody listens to on the host, for the
	// datagrams that make the namespace resolve its gateways.
	portDiscard = 10009
)

// userHz is the unit of the times in /proc/PID/stat (USER_HZ, which the
// kernel ABI fixes at 100 on Linux).
const userHz = 100

// readyTimeout bounds the start of a translator, until the namespace is
// configured and the forwarded ports are bound.
const readyTimeout = 15 * time.Second

// noOffload is the name of the variant of gopasst without tap offloads.
const noOffload = "gopasst --no-offload"

// pasta2 is the name of the second reference (-pasta2).
const pasta2 = "pasta2"

// Translator is one of the programs under comparison.
type Translator struct {
	// Name is "gopasst", "pasta", pasta2, noOffload, kernelVeth or
	// kernelLoopback.
	Name string
	// Argv is the program and the arguments that come before the
	// options: the gopasst binary and "pasta" (and "--no-offload" for
	// the variant), or the reference pasta.
	Argv []string
	// Variant marks a variant of gopasst, run only in the scenarios that
	// ask for variants (see [Scenario]).
	Variant bool
	// Kernel marks a kernel baseline (Name kernelVeth or kernelLoopback,
	// no Argv): no program, run only in the scenarios whose Baseline it
	// is (see veth.go).
	Kernel bool
}

// translatorArgs are the options both translators get: configure the
// namespace, stay in the foreground, no TCP (with tcp: forward
// portTCPFwd from the host, -t, and portTCPNS from the namespace, -T),
// forward portFwd from the host (-u) and portNS from the namespace (-U),
// attach to process pid's namespaces.
func translatorArgs(pid int, tcp bool) []string {
	t, T := "none", "none"
	if tcp {
		t, T = strconv.Itoa(portTCPFwd), strconv.Itoa(portTCPNS)
	}
	return []string{"--config-net", "-f", "-q", "-t", t, "-T", T,
		"-u", strconv.Itoa(portFwd), "-U", strconv.Itoa(portNS), strconv.Itoa(pid)}
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// started is a process started by the benchmark, reaped by a goroutine.
type started struct {
	cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{}
}

func start(cmd *exec.Cmd) (*started, error) {
	s := &started{cmd: cmd, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = &s.out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &s.out
	}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

func (s *started) pid() int { return s.cmd.Process.Pid }

func (s *started) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to timeout, then kills the process.
func (s *started) stop(sig syscall.Signal, timeout time.Duration) {
	if s.exited() {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
		return
	case <-time.After(timeout):
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
	}
}

// Instance is one running translator serving a namespace of its own.
type Instance struct {
	tr     *Translator
	holder *started // "sleep infinity" in the namespace
	proc   *started // the translator
	// tree are the processes of the translator seen so far (it, its
	// threads' children, theirs).
	tree map[int]string
	// tcp is set if the translator forwards the TCP ports (-t, -T).
	tcp bool
	// down, if set, undoes what the bench set up for a kernel baseline
	// (the veth pair).
	down func()
}

// NSPid returns the process whose network namespace the translator serves.
func (in *Instance) NSPid() int { return in.holder.pid() }

// userCommand returns a command that runs argv as the benchmark's
// unprivileged user, with a minimal environment, in the sandbox's host
// namespace.
func (b *Bench) userCommand(argv ...string) *exec.Cmd {
	args := append([]string{"--reuid=" + strconv.Itoa(b.uid), "--regid=" + strconv.Itoa(b.gid),
		"--init-groups", "--"}, argv...)
	cmd := b.sb.Command(b.sb.HostNS, "setpriv", args...)
	cmd.Env = userEnv
	return cmd
}

// userEnv is the environment of the processes run as the user.
var userEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "LANG=C"}

// startInstance starts, as the unprivileged user and inside the sandbox's
// host namespace, a process holding a new user and network namespace,
// then tr attached to it, and waits until the namespace is configured and
// the forwarded ports are bound, and the namespace has resolved the
// link-layer addresses of its gateways. With tcp, the translator also
// forwards the TCP ports (see [translatorArgs]). Extra options come before
// the common ones.
func (b *Bench) startInstance(ctx context.Context, tr *Translator, tcp bool, extra ...string) (*Instance, error) {
	holder, err := start(b.userCommand("unshare", "--user", "--map-root-user", "--net", "sleep", "infinity"))
	if err != nil {
		return nil, fmt.Errorf("namespace holder: %w", err)
	}
	in := &Instance{tr: tr, holder: holder, tree: map[int]string{}, tcp: tcp}
	if err := in.waitHolder(b.probe.pid()); err != nil {
		in.Stop()
		return nil, err
	}
	// No duplicate address detection in the namespace: its link-local
	// address is usable at once. The reference sends IPv6 datagrams from
	// the host's own address to the namespace's link-local address, which
	// it learns from the namespace's first packet from that address.
	sysctl := exec.Command("nsenter", "-t", strconv.Itoa(holder.pid()), "-n", "--", "sh", "-c",
		"echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad && echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad")
	if out, err := sysctl.CombinedOutput(); err != nil {
		in.Stop()
		return nil, fmt.Errorf("namespace sysctl: %v: %s", err, out)
	}
	argv := append(append(append([]string{}, tr.Argv...), extra...), translatorArgs(holder.pid(), tcp)...)
	if in.proc, err = start(b.userCommand(argv...)); err != nil {
		in.Stop()
		return nil, fmt.Errorf("%s: %w", tr.Name, err)
	}
	if err := in.waitReady(ctx, b.probe.pid()); err != nil {
		in.Stop()
		return nil, err
	}
	neigh, err := b.startLoad(InNS, in, "neigh", "-to", netip.AddrPortFrom(families[0].Gateway, portDiscard).String(),
		"-to6", netip.AddrPortFrom(families[1].Gateway, portDiscard).String())
	if err == nil {
		_, err = neigh.Final(neighTimeout + 5*time.Second)
	}
	if err != nil {
		in.Stop()
		return nil, fmt.Errorf("%s: %w", tr.Name, err)
	}
	in.scan()
	return in, nil
}

// waitHolder waits until the holder has entered its new namespaces and
// runs sleep.
func (in *Instance) waitHolder(probe int) error {
	hostNet, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", probe))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		pid := in.holder.pid()
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		netns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if strings.TrimSpace(string(comm)) == "sleep" && netns != "" && netns != hostNet {
			return nil
		}
		if in.holder.exited() || time.Now().After(deadline) {
			return fmt.Errorf("namespace holder did not start: %s", in.holder.out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitReady waits until the namespace has its IPv4 and IPv6 default
// routes and a usable (not tentative) IPv6 address, the namespace side
// of the -U port is bound (both families) and the host side of the -u
// port is bound (both families, seen through probe, a process in the
// sandbox's host namespace), and, if the translator forwards TCP, the
// same for the TCP ports: portTCPNS listening in the namespace,
// portTCPFwd on the host.
func (in *Instance) waitReady(ctx context.Context, probe int) error {
	ns := in.NSPid()
	deadline := time.Now().Add(readyTimeout)
	var missing string
	for {
		missing = ""
		switch {
		case !hasDefaultRoute4(ns):
			missing = "IPv4 default route"
		case !hasDefaultRoute6(ns):
			missing = "IPv6 default route"
		case !hasUsableAddr6(ns):
			missing = "usable IPv6 address"
		case !udpBoundBoth(ns, portNS):
			missing = fmt.Sprintf("port %d bound in the namespace", portNS)
		case !udpBoundBoth(probe, portFwd):
			missing = fmt.Sprintf("port %d bound on the host", portFwd)
		case in.tcp && !tcpListeningBoth(ns, portTCPNS):
			missing = fmt.Sprintf("TCP port %d listening in the namespace", portTCPNS)
		case in.tcp && !tcpListeningBoth(probe, portTCPFwd):
			missing = fmt.Sprintf("TCP port %d listening on the host", portTCPFwd)
		}
		if missing == "" {
			return nil
		}
		if in.proc.exited() {
			return fmt.Errorf("%s exited before it was ready: %s", in.tr.Name, in.proc.out.String())
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v (no %s): %s", in.tr.Name, readyTimeout, missing, in.proc.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procLines returns the lines of /proc/PID/net/NAME after the header.
func procLines(pid int, name string) [][]string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, name))
	if err != nil {
		return nil
	}
	var out [][]string
	for i, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && (i > 0 || name == "if_inet6" || name == "ipv6_route") {
			out = append(out, f)
		}
	}
	return out
}

func hasDefaultRoute4(pid int) bool {
	for _, f := range procLines(pid, "route") {
		if len(f) > 7 && f[0] != "lo" && f[1] == "00000000" && f[7] == "00000000" {
			return true
		}
	}
	return false
}

func hasDefaultRoute6(pid int) bool {
	for _, f := range procLines(pid, "ipv6_route") {
		if len(f) == 10 && f[9] != "lo" && f[0] == strings.Repeat("0", 32) && f[1] == "00" {
			return true
		}
	}
	return false
}

// ifaTentative is IFA_F_TENTATIVE in the flags of /proc/net/if_inet6.
const ifaTentative = 0x40

// hasUsableAddr6 reports whether the namespace has a global IPv6 address
// that is not tentative.
func hasUsableAddr6(pid int) bool {
	for _, f := range procLines(pid, "if_inet6") {
		if len(f) == 6 && f[5] != "lo" && f[3] == "00" {
			if flags, err := strconv.ParseUint(f[4], 16, 32); err == nil && flags&ifaTentative == 0 {
				return true
			}
		}
	}
	return false
}

// udpBound reports whether a socket in pid's network namespace is bound to
// port (name "udp" or "udp6").
func udpBound(pid int, name string, port int, wildcard bool) bool {
	suffix := fmt.Sprintf(":%04X", port)
	for _, f := range procLines(pid, name) {
		if len(f) > 1 && strings.HasSuffix(f[1], suffix) &&
			(!wildcard || strings.Trim(strings.TrimSuffix(f[1], suffix), "0") == "") {
			return true
		}
	}
	return false
}

// udpBoundBoth reports whether sockets in pid's network namespace are
// bound to port for IPv4 and IPv6: one per family (gopasst), or one
// dual-stack socket on [::], which shows only in udp6 (the 2025
// reference).
func udpBoundBoth(pid, port int) bool {
	return udpBound(pid, "udp6", port, false) &&
		(udpBound(pid, "udp", port, false) || udpBound(pid, "udp6", port, true))
}

// TapBytes returns the bytes received plus sent on the namespace's
// interfaces other than lo (the tap device), and the packets dropped
// there (both directions: queue full, mostly).
func (in *Instance) TapBytes() (bytes, drops uint64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", in.NSPid()))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(name) == "lo" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 12 {
			continue
		}
		var n [12]uint64
		for i := range n {
			n[i], _ = strconv.ParseUint(f[i], 10, 64)
		}
		bytes += n[0] + n[8]
		drops += n[3] + n[11]
	}
	return bytes, drops
}

// scan adds the translator's current process tree to in.tree: the
// process, its children (of any thread), theirs.
func (in *Instance) scan() []int {
	if in.proc == nil || in.proc.exited() {
		return nil
	}
	pids := []int{in.proc.pid()}
	for i := 0; i < len(pids); i++ {
		if _, ok := in.tree[pids[i]]; !ok {
			in.tree[pids[i]] = cmdline(pids[i])
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pids[i]))
		for _, t := range tasks {
			b, _ := os.ReadFile(t)
			for _, f := range strings.Fields(string(b)) {
				if p, err := strconv.Atoi(f); err == nil {
					pids = append(pids, p)
				}
			}
		}
	}
	return pids
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return string(b)
}

// CPU returns the CPU seconds used so far by the translator's processes
// (all threads, user and system time): for each process of the tree, its
// CPU-time clock (clock_gettime of the process's CPUCLOCK_SCHED clock,
// precise to the nanosecond, unlike the clock ticks of /proc/PID/stat),
// plus the times of its children that it has reaped (cutime and cstime
// from /proc/PID/stat).
func (in *Instance) CPU() float64 {
	var secs float64
	for _, pid := range in.scan() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses:
		// utime, stime, cutime, cstime are fields 14-17 of the line,
		// 12-15 here.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 16 {
			continue
		}
		var ticks [4]uint64
		for k, s := range f[11:15] {
			ticks[k], _ = strconv.ParseUint(s, 10, 64)
		}
		secs += float64(ticks[2]+ticks[3]) / userHz
		if ns, err := processCPUClock(pid); err == nil {
			secs += float64(ns) / 1e9
		} else {
			secs += float64(ticks[0]+ticks[1]) / userHz
		}
	}
	return secs
}

// processCPUClock returns the CPU time of process pid, all threads, in
// nanoseconds: clock_gettime(2) of the clock that clock_getcpuclockid(3)
// returns, MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) in the kernel.
func processCPUClock(pid int) (int64, error) {
	const cpuclockSched = 2
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid<<3|cpuclockSched), &ts); err != nil {
		return 0, err
	}
	return ts.Nano(), nil
}

// Sleeps returns how often the translator's threads have blocked so far
// (voluntary context switches, summed over every thread of its
// processes): each wait in epoll_wait, poll or a futex that found
// nothing ready is one, so per byte moved it counts the wake-ups the
// data cost.
func (in *Instance) Sleeps() uint64 {
	var n uint64
	for _, pid := range in.scan() {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
					c, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
					n += c
				}
			}
		}
	}
	return n
}

// RSS returns the peak resident set size (VmHWM) of the translator's
// processes, summed, in MiB.
func (in *Instance) RSS() float64 {
	var kib int
	for _, pid := range in.scan() {
		if st, err := watch.ProcStatus(pid); err == nil {
			kib += watch.KiB(st, "VmHWM")
		}
	}
	return float64(kib) / 1024
}

// Stop ends the translator (SIGTERM, then SIGKILL), the namespace holder,
// and any process of the translator's tree still running.
func (in *Instance) Stop() {
	in.scan()
	if in.proc != nil {
		in.proc.stop(syscall.SIGTERM, 3*time.Second)
	}
	if in.down != nil {
		in.down()
		in.down = nil
	}
	in.holder.stop(syscall.SIGKILL, 0)
	for pid, cmd := range in.tree {
		// Only a process that still runs the same command line: the
		// PID may have been reused.
		if cmd != "" && cmdline(pid) == cmd {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Err returns what the translator printed if it exited, or nil (always
// nil for a kernel baseline, which has no process).
func (in *Instance) Err() error {
	if in.proc != nil && in.proc.exited() {
		return errors.New(in.tr.Name + " exited: " + in.proc.out.String())
	}
	return nil
}
