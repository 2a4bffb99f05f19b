package podman

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestPodmanGopasst runs rootless podman 5 with gopasst as its pasta;
// every check must pass.
func TestPodmanGopasst(t *testing.T) {
	kv := requireSetup(t)
	h := newHarness(t, "gopasst", true, kv, "", nil)
	h.run()
	h.summary()
}

// TestPodmanReference runs the same checks with Debian 13's pasta, for
// comparison: failed checks are reported, not failed.
func TestPodmanReference(t *testing.T) {
	kv := requireSetup(t)
	if _, err := os.Stat(referencePath); err != nil {
		t.Skipf("Debian 13's pasta not installed (sudo bash bench/reference-trixie.sh): %v", err)
	}
	extra := map[string]string{}
	if _, err := os.Stat(referencePath + ".avx2"); err == nil {
		extra["pasta.avx2"] = referencePath + ".avx2" // it re-executes itself as argv[0].avx2
	}
	h := newHarness(t, "reference", false, kv, referencePath, extra)
	h.run()
	h.summary()
}

// Addresses of the sandbox, as the host and the remote peer have them.
var (
	lo4, lo6       = netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	host4, host6   = sandbox.HostAddr4, sandbox.HostAddr6
	remote4        = sandbox.RemoteAddr4
	remote6        = sandbox.RemoteAddr6
	gw4, gw6       = sandbox.GatewayAddr4, sandbox.GatewayAddr6
	dnsForward4    = "169.254.1.1" // podman's --dns-forward
	mapGuestAddr4  = "169.254.1.2" // podman's --map-guest-addr, host.containers.internal
	containerShell = fmt.Sprintf("udptool echo -timeout 10m -l 0.0.0.0:%d & udptool echo -timeout 10m -l [::]:%d & exec httpd -f -p %d -h /www",
		udpPort, udpPort, tcpCtrPort)
)

// run performs the checks in order, printing each result.
func (h *harness) run() {
	t := h.t
	sb := h.sb
	h.hostResolver()

	// What podman sees as its pasta (through helper_binaries_dir).
	out, err := h.podman(30*time.Second, "info", "--format", "{{.Host.Pasta.Executable}}|{{.Host.Pasta.Version}}|{{.Version.Version}}")
	if err == nil {
		exe, _, _ := strings.Cut(strings.TrimSpace(out), "|")
		if exe != filepath.Join(h.work, "bin/pasta") {
			err = fmt.Errorf("podman found pasta at %q, not in helper_binaries_dir", exe)
		}
	}
	h.record("podman 5 finds pasta through helper_binaries_dir", err, strings.TrimSpace(out))

	udptool, err := buildStatic(sandbox.UdptoolPackage, h.work)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.buildImage(udptool); err != nil {
		t.Fatalf("image: %v", err)
	}
	h.logf("image %s imported (busybox-static + udptool)", imageName)

	// The host's services, and the remote peer's.
	serveHTTP(t, sb.HostNS, fmt.Sprintf(":%d", hostTCPPort), hostBody)
	serveUDPEcho(t, sb.HostNS, netip.AddrPortFrom(netip.IPv4Unspecified(), hostUDPPort))
	serveHTTP(t, sb.WorldNS, fmt.Sprintf(":%d", remoteTCP), remoteBody)
	dnsHits := serveDNS(t, sb.HostNS, netip.AddrPortFrom(lo4, 53))
	h.pingGroupRange()

	// The container, with the published ports of the issue.
	t0 := time.Now()
	// NET_RAW: busybox ping opens raw sockets (no ping socket fallback).
	_, err = h.podman(60*time.Second, "run", "-d", "--name", ctrName, "--network", "pasta", "--cap-add", "NET_RAW",
		"-p", fmt.Sprintf("%d:%d/udp", udpPort, udpPort), "-p", fmt.Sprintf("%d:%d", tcpHostPort, tcpCtrPort),
		imageName, "sh", "-c", containerShell)
	h.record("podman run -d --network pasta -p 15353:15353/udp -p 18080:8080", err,
		fmt.Sprintf("started in %v", time.Since(t0).Round(time.Millisecond)))
	if err != nil {
		h.logPastaArgs()
		return
	}
	h.checkArgs()
	pids := h.userProcs(h.exes)
	var perr error
	if len(pids) == 0 {
		perr = errors.New("no pasta process of the test user in the sandbox's host namespace")
	}
	h.record("pasta process running for the container", perr, fmt.Sprintf("PIDs %v", pids))

	// Published ports, from the host's loopback, its own addresses and a
	// remote peer. The first waits for the servers to start.
	type from struct {
		what string
		ns   string
		src  netip.Addr
		dst  netip.Addr
	}
	froms := []from{
		{"host loopback 127.0.0.1", sb.HostNS, lo4, lo4},
		{"host loopback ::1", sb.HostNS, lo6, lo6},
		{"host address 192.0.2.2", sb.HostNS, host4, host4},
		{"host address 2001:db8::2", sb.HostNS, host6, host6},
		{"remote peer 198.51.100.1", sb.WorldNS, remote4, host4},
		{"remote peer 2001:db8:1::1", sb.WorldNS, remote6, host6},
	}
	// The container runs one UDP echo server per family, started at
	// once: the first datagram of each family may come before its
	// server is bound, and waits for it.
	ready := map[bool]bool{}
	for _, f := range froms {
		dst := netip.AddrPortFrom(f.dst, udpPort)
		wait := time.Duration(0)
		if !ready[f.dst.Is4()] {
			ready[f.dst.Is4()], wait = true, 5*time.Second
		}
		err := retry(wait, func() error { return udpEcho(f.ns, f.src, dst) })
		h.record(fmt.Sprintf("UDP -p %d/udp from %s to %s", udpPort, f.what, dst), err, "echoed")
	}
	for i, f := range froms {
		dst := netip.AddrPortFrom(f.dst, tcpHostPort)
		wait := time.Duration(0)
		if i == 0 {
			wait = 5 * time.Second
		}
		err := retry(wait, func() error { return httpGet(f.ns, f.src, dst, pageBody) })
		h.record(fmt.Sprintf("TCP -p %d:%d from %s to %s", tcpHostPort, tcpCtrPort, f.what, dst), err, "page served by busybox httpd")
	}

	// The container reaches the host, names and the outside.
	h.containerChecks(dnsHits)

	// Removal: no pasta process may be left 100 ms later.
	h.exitLatency()

	// A published port below 1024 without the right to bind it.
	h.lowPort()
}

// hostResolver makes 127.0.0.1 (the test's DNS responder) the resolver
// that podman and pasta read from /etc/resolv.conf (see podmanCmd).
func (h *harness) hostResolver() {
	if err := os.WriteFile(filepath.Join(h.work, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// pingGroupRange lets the test user open ping sockets in the host
// namespace (pasta forwards the container's echo requests through them),
// and restores the previous range at the end.
func (h *harness) pingGroupRange() {
	const key = "/proc/sys/net/ipv4/ping_group_range"
	var old []byte
	err := inNetns(h.sb.HostNS, func() error {
		var err error
		if old, err = os.ReadFile(key); err != nil {
			return err
		}
		return os.WriteFile(key, fmt.Appendf(nil, "%d %d\n", h.gid, h.gid), 0o644)
	})
	if err != nil {
		h.t.Fatalf("ping_group_range: %v", err)
	}
	h.t.Cleanup(func() {
		_ = inNetns(h.sb.HostNS, func() error { return os.WriteFile(key, old, 0o644) })
	})
	h.logf("net.ipv4.ping_group_range in the host namespace: %q -> \"%d %d\" (restored at the end)", strings.TrimSpace(string(old)), h.gid, h.gid)
}

// pastaArgs is podman's pasta command lines, one a line.
func (h *harness) pastaArgs() []string {
	b, _ := os.ReadFile(h.argsLog)
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func (h *harness) logPastaArgs() {
	for _, l := range h.pastaArgs() {
		h.logf("podman ran: pasta %s", l)
	}
}

// checkArgs checks that podman passed the options of its pasta mode.
func (h *harness) checkArgs() {
	lines := h.pastaArgs()
	var err error
	line := ""
	if len(lines) == 0 {
		err = errors.New("the pasta wrapper was not run")
	} else {
		line = lines[len(lines)-1]
		h.logf("podman ran: pasta %s", line)
		args := " " + line + " "
		var missing []string
		for _, want := range []string{
			"--config-net", "--dns-forward " + dnsForward4, "--no-map-gw", "--quiet", "--netns ",
			"--map-guest-addr " + mapGuestAddr4,
			fmt.Sprintf("-t %d-%d:%d-%d", tcpHostPort, tcpHostPort, tcpCtrPort, tcpCtrPort),
			fmt.Sprintf("-u %d-%d:%d-%d", udpPort, udpPort, udpPort, udpPort),
		} {
			if !strings.Contains(args, " "+want) {
				missing = append(missing, want)
			}
		}
		if len(missing) > 0 {
			err = fmt.Errorf("podman's command line lacks %q", missing)
		}
	}
	h.record("podman's pasta command line (--config-net --dns-forward --no-map-gw --map-guest-addr -t -u ...) accepted", err, "pasta "+line)
}

// containerChecks runs busybox applets in the container.
func (h *harness) containerChecks(dnsHits *atomic.Int32) {
	out, err := h.exec(20*time.Second, "grep host.containers.internal /etc/hosts")
	if err == nil && !strings.Contains(out, mapGuestAddr4) {
		err = fmt.Errorf("/etc/hosts: %q", trim(out))
	}
	if err == nil {
		out, err = h.exec(20*time.Second, fmt.Sprintf("timeout 10 wget -q -O - http://host.containers.internal:%d/", hostTCPPort))
		if err == nil && !strings.Contains(out, hostBody) {
			err = fmt.Errorf("got %q", trim(out))
		}
	}
	h.record(fmt.Sprintf("container: wget http://host.containers.internal:%d/ (%s, a host service on 0.0.0.0)", hostTCPPort, mapGuestAddr4), err, trim(out))

	// Debian's busybox nc has no -u: udptool, at the address of
	// host.containers.internal in /etc/hosts.
	out, err = h.exec(20*time.Second, fmt.Sprintf(
		`a=$(awk '/[[:space:]]host\.containers\.internal/ {print $1; exit}' /etc/hosts) && udptool send -to "$a:%d" -echo -count 3 -timeout 3s`, hostUDPPort))
	if err == nil && !strings.Contains(out, `"received":3`) {
		err = fmt.Errorf("not all echoed: %q", trim(out))
	}
	h.record(fmt.Sprintf("container: UDP to host.containers.internal:%d (echo on the host)", hostUDPPort), err, trim(out))

	before := dnsHits.Load()
	out, err = h.exec(20*time.Second, "cat /etc/resolv.conf; nslookup "+dnsName)
	if err == nil && !strings.Contains(out, "nameserver "+dnsForward4) {
		err = fmt.Errorf("resolv.conf has no nameserver %s", dnsForward4)
	}
	if err == nil && !strings.Contains(out, dnsAnswer4.String()) {
		err = fmt.Errorf("no %s in the answer", dnsAnswer4)
	}
	if err == nil && dnsHits.Load() == before {
		err = errors.New("the host's DNS responder saw no query")
	}
	h.record("container: nslookup "+dnsName+" through --dns-forward "+dnsForward4+" to the host's 127.0.0.1:53", err,
		strings.Join(strings.Fields(out), " "))

	for _, p := range []struct{ what, cmd string }{
		{"ping its IPv4 gateway " + gw4.String(), "ping -c 1 -W 3 " + gw4.String()},
		{"ping its IPv6 gateway " + gw6.String(), "ping -6 -c 1 -W 3 " + gw6.String()},
	} {
		out, err := h.exec(20*time.Second, p.cmd)
		if err == nil && !strings.Contains(out, "1 packets received") {
			err = fmt.Errorf("%q", trim(out))
		}
		h.record("container: "+p.what, err, lastLine(out))
	}

	for _, url := range []string{
		fmt.Sprintf("http://%s:%d/", remote4, remoteTCP),
		fmt.Sprintf("http://[%s]:%d/", remote6, remoteTCP),
	} {
		out, err := h.exec(20*time.Second, "timeout 10 wget -q -O - "+url)
		if err == nil && !strings.Contains(out, remoteBody) {
			err = fmt.Errorf("got %q", trim(out))
		}
		h.record("container: wget "+url+" (remote peer)", err, trim(out))
	}
}

// exitLatency removes the container and measures how long its pasta
// process outlives its network namespace and "podman rm".
func (h *harness) exitLatency() {
	pids := h.userProcs(h.exes)
	netns := ""
	if lines := h.pastaArgs(); len(lines) > 0 {
		f := strings.Fields(lines[len(lines)-1])
		for i := range f[:len(f)-1] {
			if f[i] == "--netns" {
				netns = f[i+1]
			}
		}
	}
	// Poll every millisecond for the namespace's file and the processes.
	type times struct{ nsGone, procsGone time.Time }
	done := make(chan times, 1)
	stop := make(chan struct{})
	go func() {
		var tm times
		for {
			now := time.Now()
			if tm.nsGone.IsZero() && netns != "" {
				if _, err := os.Stat(netns); err != nil {
					tm.nsGone = now
				}
			}
			if tm.procsGone.IsZero() {
				alive := false
				for _, pid := range pids {
					alive = alive || !zombie(pid)
				}
				if !alive {
					tm.procsGone = now
				}
			}
			select {
			case <-stop:
				done <- tm
				return
			default:
			}
			if !tm.procsGone.IsZero() && (!tm.nsGone.IsZero() || netns == "") {
				done <- tm
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	start := time.Now()
	_, err := h.podman(60*time.Second, "rm", "-f", "-t", "0", ctrName)
	rmDone := time.Now()
	if err != nil {
		close(stop)
		<-done
		h.record("podman rm -f", err, "")
		return
	}
	var tm times
	select {
	case tm = <-done:
	case <-time.After(2 * time.Second):
		close(stop)
		tm = <-done
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	detail := fmt.Sprintf("PIDs %v; podman rm took %s", pids, ms(rmDone.Sub(start)))
	var after time.Duration
	if !tm.procsGone.IsZero() {
		after = tm.procsGone.Sub(rmDone)
		detail += "; pasta gone " + ms(tm.procsGone.Sub(start)) + " after rm started"
		if !tm.nsGone.IsZero() {
			detail += ", " + ms(tm.procsGone.Sub(tm.nsGone)) + " after its netns file was removed"
		}
	}
	switch {
	case len(pids) == 0:
		err = errors.New("no pasta process was running")
	case tm.procsGone.IsZero():
		err = fmt.Errorf("pasta still running 2 s after podman rm")
	case after > maxExitDelay:
		err = fmt.Errorf("pasta exited %s after podman rm returned, more than %v", ms(after), maxExitDelay)
	}
	if err == nil {
		if others := h.userProcs(h.exes); len(others) > 0 {
			err = fmt.Errorf("pasta processes %v remain", others)
		}
	}
	h.record(fmt.Sprintf("no pasta process %v after the container is removed", maxExitDelay), err, detail)
}

// lowPort publishes a port below net.ipv4.ip_unprivileged_port_start,
// which the rootless user may not bind: podman run must fail with a
// clear one-line reason from pasta.
func (h *harness) lowPort() {
	const name = "gopasst-low"
	before := len(h.pastaArgs())
	_, err := h.podman(60*time.Second, "run", "-d", "--name", name, "--network", "pasta",
		"-p", fmt.Sprintf("%d:%d", lowPort, tcpCtrPort), imageName, "sleep", "30")
	_, _ = h.podman(30*time.Second, "rm", "-f", "-t", "0", name)
	var cerr error
	msg := ""
	switch {
	case err == nil:
		cerr = fmt.Errorf("podman run -p %d:%d succeeded", lowPort, tcpCtrPort)
	default:
		msg = err.Error()
		if len(h.pastaArgs()) == before {
			cerr = errors.New("pasta was not run")
		} else if !strings.Contains(msg, "ip_unprivileged_port_start") || !strings.Contains(msg, strconv.Itoa(lowPort)) {
			cerr = errors.New("the reason does not name the port and net.ipv4.ip_unprivileged_port_start")
		}
	}
	if i := strings.Index(msg, ": Error: "); i >= 0 {
		msg = msg[i+2:]
	}
	h.record(fmt.Sprintf("-p %d:%d refused with a clear reason", lowPort, tcpCtrPort), cerr, trim(msg))
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
