package e2e_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
	"github.com/gopasst/gopasst/internal/frag"
)

// floodEnv, when set to "KIND IFNAME COUNT", turns the test binary into a
// flood injector (see floodMain): KIND "flows" writes COUNT UDP frames of
// distinct flows to the gateway address, "frags" COUNT fragments of
// distinct datagrams that never complete. Set to "sink ADDR:PORT...", it
// turns it into a UDP sink instead (see sinkMain).
const floodEnv = "GOPASST_E2E_FLOOD"

// The ports of the flow flood: the source port runs from floodSrcPort,
// the destination (on the host's loopback, through the gateway address)
// is floodDstPort, where nothing listens.
const (
	floodSrcPort = 1024
	floodDstPort = 6000
	floodPerPort = 50000 // flows per destination port and IP version
)

// floodMain writes the frames floodEnv asks for to the tap through a
// packet socket, alternating IPv4 and IPv6, then prints "flooded N
// dropped D": N frames written, D dropped meanwhile by the namespace's
// kernel on the tap, its queue full (the writes are paced to keep this
// low; the namespace's own frames may be among them).
func floodMain() int {
	if f := strings.Fields(os.Getenv(floodEnv)); len(f) > 0 && f[0] == "sink" {
		return sinkMain(f[1:])
	}
	var kind, ifname string
	var count int
	if _, err := fmt.Sscan(os.Getenv(floodEnv), &kind, &ifname, &count); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 1
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 1
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 1
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	droppedBefore := tapTxDropped(ifname)
	lastDropped, pause := droppedBefore, time.Millisecond
	rng := rand.New(rand.NewPCG(8, 8))
	ids4 := rng.Perm(1 << 16) // distinct IPv4 identifications
	ids6 := map[uint32]bool{}
	for i := 0; i < count; i++ {
		v6, j := i%2 == 1, i/2
		var frame []byte
		switch kind {
		case "flows":
			frame = floodUDP(v6, ifi.HardwareAddr, uint16(floodSrcPort+j%floodPerPort), uint16(floodDstPort+j/floodPerPort), 16)
		case "frags":
			id := uint32(ids4[j%len(ids4)])
			if v6 {
				for id = rng.Uint32(); ids6[id]; id = rng.Uint32() {
				}
				ids6[id] = true
			}
			frame = floodFragment(v6, ifi.HardwareAddr, id, 8*rng.IntN(7000), 1024)
		default:
			fmt.Fprintln(os.Stderr, "flood: unknown kind", kind)
			return 1
		}
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			fmt.Fprintln(os.Stderr, "flood:", err)
			return 1
		}
		// Pace the writes, so that the tap's queue (1000 frames) rarely
		// overflows: slow down while gopasst falls behind.
		if i%64 == 63 {
			if d := tapTxDropped(ifname); d > lastDropped {
				pause, lastDropped = min(2*pause, 50*time.Millisecond), d
			} else {
				pause = max(pause*9/10, 200*time.Microsecond)
			}
			time.Sleep(pause)
		}
	}
	fmt.Printf("flooded %d dropped %d\n", count, tapTxDropped(ifname)-droppedBefore)
	return 0
}

// sinkMain receives and discards datagrams on every address of addrs
// until killed, after printing "ready".
func sinkMain(addrs []string) int {
	for _, a := range addrs {
		c, err := net.ListenPacket("udp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sink:", err)
			return 1
		}
		go func() {
			b := make([]byte, 65536)
			for {
				if _, _, err := c.ReadFrom(b); err != nil {
					return
				}
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

// tapTxDropped reads how many frames the kernel dropped on interface
// ifname's transmit side (the tap's queue was full), from /proc/net/dev:
// /sys/class/net shows the namespace /sys was mounted in, not ours.
func tapTxDropped(ifname string) int {
	b, _ := os.ReadFile("/proc/net/dev")
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != ifname {
			continue
		}
		// Receive: bytes packets errs drop fifo frame compressed
		// multicast; transmit: bytes packets errs drop ...
		if f := strings.Fields(rest); len(f) > 11 {
			n, _ := strconv.Atoi(f[11])
			return n
		}
	}
	return 0
}

// floodIP builds an Ethernet frame with an IPv4 or IPv6 header from the
// namespace's address to the gateway, next header proto, and l4 bytes of
// room after it (returned as the second value).
func floodIP(v6 bool, src net.HardwareAddr, proto uint8, l4 int) (frame, after []byte) {
	if v6 {
		f := make([]byte, 14+40+l4)
		copy(f[0:6], ourMAC)
		copy(f[6:12], src)
		binary.BigEndian.PutUint16(f[12:14], 0x86dd)
		ip := f[14:]
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:6], uint16(l4))
		ip[6], ip[7] = proto, 64
		s, d := sandbox.HostAddr6.As16(), sandbox.GatewayAddr6.As16()
		copy(ip[8:24], s[:])
		copy(ip[24:40], d[:])
		return f, ip[40:]
	}
	f := make([]byte, 14+20+l4)
	copy(f[0:6], ourMAC)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+l4))
	ip[8], ip[9] = 64, proto
	s, d := sandbox.HostAddr4.As4(), sandbox.GatewayAddr4.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	return f, ip[20:]
}

// floodUDP builds a UDP frame from the namespace to the gateway (the
// host's loopback) with the given ports. gopasst does not check UDP
// checksums, so it is left zero (IPv4: none; IPv6: the host never sees
// it, gopasst sends the payload from a socket).
func floodUDP(v6 bool, src net.HardwareAddr, sport, dport uint16, payload int) []byte {
	f, u := floodIP(v6, src, unix.IPPROTO_UDP, 8+payload)
	binary.BigEndian.PutUint16(u[0:2], sport)
	binary.BigEndian.PutUint16(u[2:4], dport)
	binary.BigEndian.PutUint16(u[4:6], uint16(8+payload))
	return f
}

// floodFragment builds a fragment of data bytes at offset off, "more
// fragments" set, of datagram id: the rest never comes.
func floodFragment(v6 bool, src net.HardwareAddr, id uint32, off, data int) []byte {
	if v6 {
		f, fh := floodIP(true, src, unix.IPPROTO_FRAGMENT, 8+data)
		fh[0] = unix.IPPROTO_UDP
		binary.BigEndian.PutUint16(fh[2:4], uint16(off)|1)
		binary.BigEndian.PutUint32(fh[4:8], id)
		return f
	}
	f, _ := floodIP(false, src, unix.IPPROTO_UDP, data)
	ip := f[14:]
	binary.BigEndian.PutUint16(ip[4:6], uint16(id))
	binary.BigEndian.PutUint16(ip[6:8], 0x2000|uint16(off/8))
	return f
}

// gp is a running gopasst under observation.
type gp struct {
	t   *testing.T
	p   *sandbox.Proc
	pid int
}

// startGP runs "BIN pasta --config-net -P FILE ARGS -- sh -c SCRIPT" in
// the sandbox host, wrapped in prefix (e.g. prlimit) if given, and waits
// for its PID file. bin is gopasst, or gopasstPlain for tests that bound
// its memory.
func startGP(t *testing.T, sb *sandbox.Sandbox, bin string, prefix, args []string, script string) *gp {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "gopasst.pid")
	cmd := append(append([]string{}, prefix...), bin, "pasta", "--config-net", "-P", pidFile)
	cmd = append(append(cmd, args...), "--", "sh", "-c", script)
	p := sb.Start(t, sb.HostNS, cmd[0], cmd[1:]...)
	pid, err := watch.ReadPID(pidFile)
	if err != nil {
		t.Fatalf("%v\nstderr:\n%s", err, p.Stderr())
	}
	return &gp{t: t, p: p, pid: pid}
}

// counters dumps gopasst's counters.
func (g *gp) counters() map[string]int64 {
	g.t.Helper()
	c, err := watch.Counters(g.p)
	if err != nil {
		g.t.Fatal(err)
	}
	return c
}

// fds counts gopasst's descriptors.
func (g *gp) fds() int {
	g.t.Helper()
	n, err := watch.FDs(g.pid)
	if err != nil {
		g.t.Fatal(err)
	}
	return n
}

// fdsBelow counts gopasst's descriptors numbered below limit.
func (g *gp) fdsBelow(limit int) int {
	g.t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", g.pid))
	if err != nil {
		g.t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd < limit {
			n++
		}
	}
	return n
}

// rssMiB reads gopasst's resident memory.
func (g *gp) rssMiB() float64 {
	g.t.Helper()
	_, rss, err := watch.Status(g.pid)
	if err != nil {
		g.t.Fatal(err)
	}
	return float64(rss) / 1024
}

// settle dumps the counters until the frames read from the tap stop
// changing (gopasst has caught up with a flood) and returns the last
// dump.
func (g *gp) settle() map[string]int64 {
	g.t.Helper()
	prev := g.counters()
	for i := 0; i < 100; i++ {
		time.Sleep(200 * time.Millisecond)
		c := g.counters()
		if c["tap frames in"] == prev["tap frames in"] && c["udp flows active"] == prev["udp flows active"] {
			return c
		}
		prev = c
	}
	g.t.Fatalf("gopasst does not settle:\n%v", prev)
	return nil
}

// waitExpired waits up to timeout until no flow is active and the
// descriptors are back to fds, and returns the counters.
func (g *gp) waitExpired(fds int, timeout time.Duration) map[string]int64 {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := g.counters()
		n := g.fds()
		if c["udp flows active"] == 0 && n == fds {
			return c
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("after %v: %d flows active, %d descriptors (%d before)", timeout, c["udp flows active"], n, fds)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// flooded parses the "flooded N dropped D" line of floodMain.
func flooded(t *testing.T, p *sandbox.Proc) (n, dropped int64) {
	t.Helper()
	line := p.WaitLine(t, "flooded ", 60*time.Second)
	if _, err := fmt.Sscanf(line, "flooded %d dropped %d", &n, &dropped); err != nil {
		t.Fatalf("bad line %q: %v", line, err)
	}
	return n, dropped
}

// goFile is a file the test creates to let a namespace script go on.
func goFile(t *testing.T) (path, waitCmd string) {
	path = filepath.Join(t.TempDir(), "go")
	return path, fmt.Sprintf("while [ ! -e %s ]; do sleep 0.1; done", path)
}

// touch creates path.
func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// maxRSSMiB bounds gopasst's resident memory whatever the namespace sends
// (measured on gopasstPlain).
const maxRSSMiB = 64

// TestFlowTableFull makes the namespace attempt 100,000 flows (distinct
// source ports, IPv4 and IPv6, to the gateway address, that is the host's
// loopback) against a table of 1,000: exactly 1,000 are created, every
// other attempt is counted as "drop table-full", memory and descriptors
// stay bounded, and a real flow is refused while the table is full. Once
// the flows expire their sockets are gone (descriptors back to the idle
// count) and a real flow works again.
func TestFlowTableFull(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const maxFlows, attempts, timeout = 1000, 100000, 8
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5500", "-timeout", "60s")
	echo.WaitLine(t, "ready", 5*time.Second)
	go1, wait1 := goFile(t)
	go2, wait2 := goFile(t)
	send := udptool + " send -to 192.0.2.1:5500 -count 1 -echo -connect -wait 500ms >/dev/null 2>&1"
	script := fmt.Sprintf(`%[1]s; %[2]s='flows eth0 %[3]d' %[4]s || exit 1;
%[5]s; echo "full $?"; %[6]s; %[5]s; echo "after $?"`, wait1, floodEnv, attempts, self, send, wait2)
	g := startGP(t, sb, gopasstPlain, nil, []string{"--max-flows", strconv.Itoa(maxFlows), "--udp-timeout", strconv.Itoa(timeout)}, script)
	g.settle()
	baseFDs := g.fds()
	touch(t, go1)

	n, dropped := flooded(t, g.p)
	g.p.WaitLine(t, "full ", 10*time.Second)
	c := g.settle()
	fds, rss := g.fds(), g.rssMiB()
	t.Logf("%d attempts (%d dropped on the tap): %d flows created, %d active, %d table-full drops; %d descriptors (%d idle), RSS %.1f MiB",
		n, dropped, c["udp flows created"], c["udp flows active"], c["drop table-full"], fds, baseFDs, rss)
	if c["udp flows created"] != maxFlows || c["udp flows active"] != maxFlows {
		t.Errorf("created %d flows, %d active, want %d", c["udp flows created"], c["udp flows active"], maxFlows)
	}
	// Every other attempt, and the real datagram, hit the full table.
	// The tap's drops may include frames of the namespace's own.
	if got, want := c["drop table-full"], n-maxFlows+1; got < want-dropped || got > want {
		t.Errorf("drop table-full %d, want %d (%d dropped on the tap)", got, want, dropped)
	}
	if !strings.Contains(g.p.Stdout(), "full 1") {
		t.Errorf("a new flow worked while the table was full:\n%s", g.p.Stdout())
	}
	if fds > baseFDs+maxFlows+4 {
		t.Errorf("%d descriptors with %d flows, %d idle", fds, maxFlows, baseFDs)
	}
	if rss > maxRSSMiB {
		t.Errorf("RSS %.1f MiB, more than %d MiB", rss, maxRSSMiB)
	}

	c = g.waitExpired(baseFDs, (timeout+3)*time.Second)
	if c["udp flows expired"] != maxFlows {
		t.Errorf("%d flows expired, want %d", c["udp flows expired"], maxFlows)
	}
	touch(t, go2)
	wait(t, g.p, 0)
	if !strings.Contains(g.p.Stdout(), "after 0") {
		t.Errorf("no new flow once the table emptied:\n%s", g.p.Stdout())
	}
}

// TestFlowFloodDefaults makes the namespace attempt 100,000 flows against
// the default limits: the flow table's size (65,536) or the open-file
// limit, whichever is lower, stops them. Every attempt is accounted for:
// a flow, a "table-full" drop, or a "socket-error" drop when the flow's
// socket could not be made (a sink on the host's loopback takes the
// datagrams, so that no ICMP error counts as a socket error). Every
// descriptor beyond the idle ones belongs to a flow, and memory stays
// under maxRSSMiB.
func TestFlowFloodDefaults(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const attempts, tableSize = 100000, 65536
	sink := sb.Start(t, sb.HostNS, "env", fmt.Sprintf("%s=sink 127.0.0.1:%d [::1]:%d", floodEnv, floodDstPort, floodDstPort), self)
	sink.WaitLine(t, "ready", 5*time.Second)
	go1, wait1 := goFile(t)
	go2, wait2 := goFile(t)
	script := fmt.Sprintf(`%[1]s; %[2]s='flows eth0 %[3]d' %[4]s || exit 1; %[5]s`, wait1, floodEnv, attempts, self, wait2)
	g := startGP(t, sb, gopasstPlain, nil, []string{"--udp-timeout", "60"}, script)
	g.settle()
	baseFDs := g.fds()
	_, nofile, err := watch.NofileLimit(g.pid)
	if err != nil {
		t.Fatal(err)
	}
	touch(t, go1)

	n, dropped := flooded(t, g.p)
	c := g.settle()
	fds, rss := g.fds(), g.rssMiB()
	created, active, full, sockErr := c["udp flows created"], c["udp flows active"], c["drop table-full"], c["drop socket-error"]
	t.Logf("%d attempts (%d dropped on the tap), open-file limit %d: %d flows created, %d active, %d table-full drops, %d socket errors; %d descriptors (%d idle), RSS %.1f MiB",
		n, dropped, nofile, created, active, full, sockErr, fds, baseFDs, rss)
	if created != active || created > tableSize {
		t.Errorf("%d flows created, %d active, table size %d", created, active, tableSize)
	}
	if sum := created + full + sockErr; sum < n-dropped || sum > n {
		t.Errorf("%d flows + %d table-full + %d socket errors, %d attempts (%d dropped on the tap)", created, full, sockErr, n, dropped)
	}
	if nofile >= 0 && nofile < tableSize+int64(baseFDs) {
		// The open-file limit bites first: the table never fills.
		if full != 0 || sockErr == 0 || int64(fds) < nofile-8 {
			t.Errorf("open-file limit %d: %d descriptors, want the limit reached and every further flow refused by socket errors", nofile, fds)
		}
	} else if created != tableSize {
		t.Errorf("%d flows created, want the table's %d", created, tableSize)
	}
	if extra := int64(fds-baseFDs) - active; extra < 0 || extra > 2 {
		t.Errorf("%d descriptors, %d idle, %d flows: %d descriptors belong to no flow", fds, baseFDs, active, extra)
	}
	if rss > maxRSSMiB {
		t.Errorf("RSS %.1f MiB, more than %d MiB", rss, maxRSSMiB)
	}
	touch(t, go2)
	wait(t, g.p, 0)
}

// TestFragmentFlood makes the namespace send 20,000 fragments of as many
// datagrams (random identifications, IPv4 and IPv6) that never complete:
// the reassembler keeps frag.MaxPending of them and drops, and counts,
// every other; memory, descriptors and goroutines do not move, and
// ordinary datagrams still go through.
func TestFragmentFlood(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const count = 20000
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5510", "-timeout", "60s")
	echo.WaitLine(t, "ready", 5*time.Second)
	go1, wait1 := goFile(t)
	go2, wait2 := goFile(t)
	script := fmt.Sprintf(`%[1]s; %[2]s='frags eth0 %[3]d' %[4]s || exit 1
%[6]s; %[5]s send -to 192.0.2.1:5510 -count 3 -size 1000 -echo -connect`, wait1, floodEnv, count, self, udptool, wait2)
	g := startGP(t, sb, gopasstPlain, nil, nil, script)
	base := g.settle()
	baseFDs, baseRSS := g.fds(), g.rssMiB()
	touch(t, go1)

	n, dropped := flooded(t, g.p)
	c := g.settle()
	fds, rss := g.fds(), g.rssMiB()
	in, drops := c["ip fragments in"]-base["ip fragments in"], c["drop fragment"]-base["drop fragment"]
	t.Logf("%d fragments (%d dropped on the tap): %d read, %d dropped by the reassembler; RSS %.1f MiB (%.1f idle), %d descriptors (%d idle)",
		n, dropped, in, drops, rss, baseRSS, fds, baseFDs)
	if in < n-dropped || in > n {
		t.Errorf("gopasst read %d fragments of %d (%d dropped on the tap)", in, n, dropped)
	}
	if drops != in-frag.MaxPending {
		t.Errorf("drop fragment %d, want all but the %d pending of %d", drops, frag.MaxPending, in)
	}
	if c["ip datagrams reassembled"] != base["ip datagrams reassembled"] {
		t.Errorf("datagrams reassembled from fragments that never complete")
	}
	if rss > maxRSSMiB {
		t.Errorf("RSS %.1f MiB, more than %d MiB", rss, maxRSSMiB)
	}
	if fds != baseFDs || c["goroutines"] != base["goroutines"] {
		t.Errorf("%d descriptors and %d goroutines, %d and %d before", fds, c["goroutines"], baseFDs, base["goroutines"])
	}
	touch(t, go2)
	wait(t, g.p, 0)
	if r := parseSend(t, g.p.Stdout()); r.Received != 3 {
		t.Errorf("datagrams after the flood: %+v", r)
	}
}

// TestNofileRaised checks that gopasst raises its soft open-file limit to
// the hard one at start, in both modes: every flow holds a socket. (The Go
// runtime itself raises it to one less than the hard limit, so that it
// can tell whether the program changed it; only daemon.RaiseNofile makes
// the two equal.)
func TestNofileRaised(t *testing.T) {
	sb := sandbox.New(t)
	prlimit := []string{"prlimit", "--nofile=256:4096"}
	check := func(pid int) {
		t.Helper()
		soft, hard, err := watch.NofileLimit(pid)
		if err != nil {
			t.Fatal(err)
		}
		if soft != 4096 || hard != 4096 {
			t.Errorf("open-file limit %d (soft), %d (hard); want both 4096", soft, hard)
		}
	}
	t.Run("pasta", func(t *testing.T) {
		go1, wait1 := goFile(t)
		g := startGP(t, sb, gopasst, prlimit, nil, wait1)
		check(g.pid)
		touch(t, go1)
		wait(t, g.p, 0)
	})
	t.Run("passt", func(t *testing.T) {
		dir := t.TempDir()
		pidFile := filepath.Join(dir, "passt.pid")
		p := sb.Start(t, sb.HostNS, prlimit[0], append(prlimit[1:], gopasst, "passt", "-f", "-s", filepath.Join(dir, "sock"), "-P", pidFile)...)
		pid, err := watch.ReadPID(pidFile)
		if err != nil {
			t.Fatalf("%v\n%s", err, p.Stderr())
		}
		check(pid)
	})
}

// TestSocketErrors runs gopasst with an open-file limit it cannot raise
// (soft = hard = 64) and floods it with new flows while one flow is busy:
// the flows beyond the limit fail one by one, counted as socket errors,
// the busy flow goes on undisturbed, nothing crashes, and once the flood's
// flows expire their descriptors are gone and new flows work again.
func TestSocketErrors(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const nofile, flood, timeout = 64, 500, 2
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5520", "-timeout", "60s")
	echo.WaitLine(t, "ready", 5*time.Second)
	sink := sb.Start(t, sb.HostNS, "env", fmt.Sprintf("%s=sink 127.0.0.1:%d [::1]:%d", floodEnv, floodDstPort, floodDstPort), self)
	sink.WaitLine(t, "ready", 5*time.Second)
	go1, wait1 := goFile(t)
	go2, wait2 := goFile(t)
	long := filepath.Join(t.TempDir(), "long")
	script := fmt.Sprintf(`%[1]s
%[2]s send -to 192.0.2.1:5520 -count 40 -interval 100ms -echo -connect -timeout 20s >%[3]s &
sleep 1; %[4]s='flows eth0 %[5]d' %[6]s || exit 1
wait; cat %[3]s; %[7]s
%[2]s send -to 192.0.2.1:5520 -count 3 -echo -connect >/dev/null; echo "after $?"`,
		wait1, udptool, long, floodEnv, flood, self, wait2)
	g := startGP(t, sb, gopasst, []string{"prlimit", fmt.Sprintf("--nofile=%d:%d", nofile, nofile)}, []string{"--udp-timeout", strconv.Itoa(timeout)}, script)
	base := g.settle()
	baseFDs, baseLow := g.fds(), g.fdsBelow(nofile)
	touch(t, go1)

	n, dropped := flooded(t, g.p)
	// The busy flow keeps the tap busy: wait until every attempt that
	// reached gopasst is accounted for, or until it stops moving.
	var c map[string]int64
	var created, sockErr int64
	for i := 0; i < 50; i++ {
		c = g.counters()
		created, sockErr = c["udp flows created"]-base["udp flows created"], c["drop socket-error"]-base["drop socket-error"]
		if created-1+sockErr >= n-dropped {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fds, low := g.fds(), g.fdsBelow(nofile)
	t.Logf("%d descriptors idle, limit %d; flood of %d flows (%d dropped on the tap): %d flows created, %d socket errors, %d descriptors (%d below the limit)",
		baseFDs, nofile, n, dropped, created, sockErr, fds, low)
	// Descriptors inherited above the limit stay open, but no new one
	// goes past it.
	if sockErr == 0 || low != nofile || fds-low != baseFDs-baseLow {
		t.Errorf("want socket errors and the limit reached, not passed: %d socket errors, %d descriptors below %d, %d above (%d idle)",
			sockErr, low, nofile, fds-low, baseFDs-baseLow)
	}
	// The busy flow is one of the flows created.
	if sum := created - 1 + sockErr; sum < n-dropped || sum > n {
		t.Errorf("%d flows created (the busy one included) + %d socket errors, %d attempts (%d dropped on the tap)", created, sockErr, n, dropped)
	}
	line := g.p.WaitLine(t, `{"sent"`, 20*time.Second)
	if r := parseSend(t, line); r.Sent != 40 || r.Received != 40 || r.Bad != 0 {
		t.Errorf("the busy flow during the flood: %+v", r)
	}
	g.waitExpired(baseFDs, (timeout+4)*time.Second)
	touch(t, go2)
	wait(t, g.p, 0)
	if !strings.Contains(g.p.Stdout(), "after 0") {
		t.Errorf("no new flow once the flood's flows expired:\n%s", g.p.Stdout())
	}
}
