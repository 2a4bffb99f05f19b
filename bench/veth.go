package main

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The kernel baselines: "translators" that are no program at all. They
// run the same load tools, with the same options but for the addresses,
// between the same two namespaces (the sandbox's host namespace and a new
// one held by the user, as for a translator), connected by the kernel
// alone, so that the table can show what the kernel does on the same
// machine in the same run.
const (
	// kernelVeth connects the namespace to the host namespace by a veth
	// pair (vethHostIf, vethNSIf), with the MTU the translators give the
	// namespace: the baseline of the tap paths.
	kernelVeth = "veth"
	// kernelLoopback runs both ends in the namespace, over its loopback:
	// the baseline of the splice paths, whose translators join two
	// loopback sockets.
	kernelLoopback = "loopback"
)

// The interfaces of the veth pair: vethHostIf in the sandbox's host
// namespace, vethNSIf in the namespace.
const (
	vethHostIf = "veth-bench"
	vethNSIf   = "veth0"
)

// Addresses of the veth pair, inside the sandbox's documentation
// prefixes but apart from the addresses of the host namespace's link to
// the world namespace (192.0.2.0/24, 2001:db8::/64): for IPv4 a /30, more
// specific than the host's /24, so that the host namespace routes it to
// the pair; for IPv6 a /64 of its own.
var (
	vethHost4 = netip.MustParsePrefix("192.0.2.129/30")
	vethNS4   = netip.MustParsePrefix("192.0.2.130/30")
	vethHost6 = netip.MustParsePrefix("2001:db8:2::1/64")
	vethNS6   = netip.MustParsePrefix("2001:db8:2::2/64")
)

// vethHostAddr is the host end's address of family f: where the
// namespace reaches the host over the veth pair, in place of the gateway
// address that the translators map to the host's loopback.
func vethHostAddr(f Family) netip.Addr {
	if f.Gateway.Is4() {
		return vethHost4.Addr()
	}
	return vethHost6.Addr()
}

// vethNSAddr is the namespace end's address of family f: where the host
// reaches the namespace over the veth pair, in place of its own address,
// which the translators forward from.
func vethNSAddr(f Family) netip.Addr {
	if f.Gateway.Is4() {
		return vethNS4.Addr()
	}
	return vethNS6.Addr()
}

// defaultMTU is the MTU the translators give the namespace without -m,
// and the veth pair's without "-m" in the scenario's options.
const defaultMTU = 65520

// scenarioMTU returns the MTU that the options args (a scenario's Args)
// give the translators' namespace: the value of "-m", or defaultMTU.
func scenarioMTU(args []string) (int, error) {
	mtu := defaultMTU
	for i, a := range args {
		if a == "-m" && i+1 < len(args) {
			n, err := strconv.Atoi(args[i+1])
			if err != nil {
				return 0, fmt.Errorf("bad -m %q", args[i+1])
			}
			mtu = n
		}
	}
	return mtu, nil
}

// route returns path p as the load tools of instance in take it. Through
// a translator, that is p itself. Through the veth pair, the namespace
// reaches the host at the host end's address instead of its gateway, and
// the server there listens on that address instead of the loopback (for
// the tap paths from the namespace to the host); the host reaches the
// namespace at the namespace end's address instead of its own (the tap
// paths from the host); the clients are the same. Over the loopback
// (the splice paths), both ends run in the namespace, at the same
// addresses.
func (in *Instance) route(p Path) Path {
	switch in.tr.Name {
	case kernelVeth:
		to, listen := p.To, p.Listen
		if p.Sender == InNS {
			p.To = func(f Family) netip.AddrPort { return netip.AddrPortFrom(vethHostAddr(f), to(f).Port()) }
			p.Listen = func(f Family) netip.AddrPort { return netip.AddrPortFrom(vethHostAddr(f), listen(f).Port()) }
		} else {
			p.To = func(f Family) netip.AddrPort { return netip.AddrPortFrom(vethNSAddr(f), to(f).Port()) }
		}
	case kernelLoopback:
		p.Sender, p.Receiver = InNS, InNS
	}
	return p
}

// startBaseline starts the kernel baseline tr (kernelVeth or
// kernelLoopback) for scenario s: a namespace held by the user, as for
// a translator, with its loopback up, and for kernelVeth a veth pair from
// the sandbox's host namespace into it, with the MTU of s, both ends up
// and the namespace's neighbours (the host end) resolved. Stopping the
// instance deletes the pair.
func (b *Bench) startBaseline(_ context.Context, tr *Translator, s Scenario) (*Instance, error) {
	mtu, err := scenarioMTU(s.Args)
	if err != nil {
		return nil, err
	}
	holder, err := start(b.userCommand("unshare", "--user", "--map-root-user", "--net", "sleep", "infinity"))
	if err != nil {
		return nil, fmt.Errorf("namespace holder: %w", err)
	}
	in := &Instance{tr: tr, holder: holder, tree: map[int]string{}}
	fail := func(err error) (*Instance, error) {
		in.Stop()
		return nil, fmt.Errorf("%s: %w", tr.Name, err)
	}
	if err := in.waitHolder(b.probe.pid()); err != nil {
		return fail(err)
	}
	pid := strconv.Itoa(holder.pid())
	inNS := func(args ...string) error {
		return run(exec.Command("nsenter", append([]string{"-t", pid, "-n", "--"}, args...)...))
	}
	onHost := func(args ...string) error {
		return run(exec.Command("ip", append([]string{"-n", b.sb.HostNS}, args...)...))
	}
	if err := inNS("ip", "link", "set", "lo", "up"); err != nil {
		return fail(err)
	}
	if tr.Name == kernelLoopback {
		return in, nil
	}
	// As for the translators: no duplicate address detection.
	if err := inNS("sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad && echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad"); err != nil {
		return fail(err)
	}
	if err := onHost("link", "add", vethHostIf, "type", "veth", "peer", "name", vethNSIf, "netns", pid); err != nil {
		return fail(err)
	}
	in.down = func() {
		if err := onHost("link", "del", vethHostIf); err != nil {
			fmt.Fprintln(b.log, "bench:", err)
		}
	}
	m := strconv.Itoa(mtu)
	steps := [][]string{
		{"ip", "-n", b.sb.HostNS, "link", "set", vethHostIf, "mtu", m},
		{"ip", "-n", b.sb.HostNS, "addr", "add", vethHost4.String(), "dev", vethHostIf},
		{"ip", "-n", b.sb.HostNS, "addr", "add", vethHost6.String(), "dev", vethHostIf, "nodad"},
		{"ip", "-n", b.sb.HostNS, "link", "set", vethHostIf, "up"},
		{"nsenter", "-t", pid, "-n", "--", "ip", "link", "set", vethNSIf, "mtu", m},
		{"nsenter", "-t", pid, "-n", "--", "ip", "addr", "add", vethNS4.String(), "dev", vethNSIf},
		{"nsenter", "-t", pid, "-n", "--", "ip", "addr", "add", vethNS6.String(), "dev", vethNSIf, "nodad"},
		{"nsenter", "-t", pid, "-n", "--", "ip", "link", "set", vethNSIf, "up"},
	}
	for _, argv := range steps {
		if err := run(exec.Command(argv[0], argv[1:]...)); err != nil {
			return fail(err)
		}
	}
	// Carrier is not enough: IPv6 neighbour discovery works once the
	// link watcher has set the operational state (see the sandbox).
	deadline := time.Now().Add(readyTimeout)
	for {
		host, err1 := exec.Command("ip", "-n", b.sb.HostNS, "-o", "link", "show", "dev", vethHostIf).CombinedOutput()
		ns, err2 := exec.Command("nsenter", "-t", pid, "-n", "--", "ip", "-o", "link", "show", "dev", vethNSIf).CombinedOutput()
		if err1 == nil && err2 == nil && strings.Contains(string(host), "state UP") && strings.Contains(string(ns), "state UP") {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("veth pair not up after %v: %s %s", readyTimeout, host, ns))
		}
		time.Sleep(20 * time.Millisecond)
	}
	neigh, err := b.startLoad(InNS, in, "neigh", "-to", netip.AddrPortFrom(vethHost4.Addr(), portDiscard).String(),
		"-to6", netip.AddrPortFrom(vethHost6.Addr(), portDiscard).String())
	if err == nil {
		_, err = neigh.Final(neighTimeout + 5*time.Second)
	}
	if err != nil {
		return fail(err)
	}
	return in, nil
}

// run runs cmd and returns an error with its output if it fails.
func run(cmd *exec.Cmd) error {
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// translatorCost reports whether the rows of a section measure the
// translator itself (its CPU time, its memory), which a kernel baseline
// does not have: the table shows "—" there in the baselines' columns.
func translatorCost(section int) bool {
	return slices.Contains([]int{secPerCPU, secFlows, secRSS, secTCPPerCPU, secTCPSleeps, secTCPRSS}, section)
}

// dropCosts removes from a kernel baseline's trial the metrics of the
// translator itself (see [translatorCost]): the peak RSS of no process.
func (t *Trial) dropCosts() {
	t.Metrics = slices.DeleteFunc(t.Metrics, func(m Metric) bool { return translatorCost(m.Section) })
}

// kernelBaseline returns the kernel baseline of path p: the veth pair
// for the tap paths, the loopback for the splice paths.
func kernelBaseline(p Path) string {
	if p.Via == "tap" {
		return kernelVeth
	}
	return kernelLoopback
}
