package qemu_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/qemu"
	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// Ports of TestTCPGuest.
const (
	// tcpGatewayPort is where the test listens on the host's loopback
	// (127.0.0.1 and ::1) for the guest's connections to its gateway.
	tcpGatewayPort = 5321
	// tcpForwardPort4 and tcpForwardPort6 are forwarded by passt (-t)
	// to the guest, where busybox nc listens; the test connects to
	// 127.0.0.1 and ::1 respectively.
	tcpForwardPort4 = 5323
	tcpForwardPort6 = 5324
)

// tcpSize is how many bytes each flow moves each way.
const tcpSize = 10 << 20

// Timeouts of TestTCPGuest.
const (
	// tcpFlowTimeout bounds one connection, on both sides.
	tcpFlowTimeout = time.Minute
	// tcpGuestTimeout bounds the whole guest run.
	tcpGuestTimeout = 5 * time.Minute
)

// Console markers of the guest script of TestTCPGuest.
const (
	markTCPData   = "GUEST-TCP-DATA"   // "data" and the size of the guest's data
	markTCPReady  = "GUEST-TCP-READY"  // the guest's nc servers listen
	markTCPResult = "GUEST-TCP-RESULT" // name, then key=value pairs
	markTCPChunk  = "GUEST-TCP-CHUNK"  // name, MiB index, SHA-256 of that MiB
)

// tcpGuestFile is where the guest's data is in the initramfs.
const tcpGuestFile = "/tmp/up"

// tcpGuestData is what the guest sends on every connection, and
// tcpHostData what the test sends: tcpSize pseudo-random bytes each, from
// two fixed seeds, so that lost, repeated or reordered segments, and data
// sent back the way it came, change what arrives. The guest's copy is
// put in its initramfs (making it there with busybox takes seconds of
// emulated CPU); the guest checks the test's data by its SHA-256, passed
// in its script, and prints the SHA-256 of each MiB if it differs.
func tcpGuestData() []byte { return tcpData("gopasst qemu TCP test guest data") }
func tcpHostData() []byte  { return tcpData("gopasst qemu TCP test host data") }

func tcpData(seed string) []byte {
	b := make([]byte, tcpSize)
	var s [32]byte
	copy(s[:], seed)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestTCPGuest boots a guest against "gopasst passt -t 5323,5324" and
// moves tcpSize (10 MiB) bytes each way over four TCP connections, with
// busybox nc and the guest kernel's own TCP:
//
//   - gw4, gw6: the guest connects to its gateway (192.0.2.1 and
//     2001:db8::1), which passt maps to the host's loopback, where the test
//     listens (127.0.0.1 and ::1, port 5321); the guest sends its data and
//     half-closes, the test reads to the end, then sends its own data and
//     closes;
//   - fwd4, fwd6: the test connects to the forwarded ports on the host's
//     loopback (127.0.0.1:5323, [::1]:5324), nc listens in the guest; both
//     send at once and half-close when done.
//
// Each side must receive exactly the other's bytes and then the end of the
// stream: the test compares what it receives with the guest's data byte
// by byte; the guest prints the size and SHA-256 of what it received, which
// must be those of the test's data, and nc must exit 0 (it got the end of
// the stream before its timeout). gopasst's counters must then show four
// connections created and closed, none left, every byte sent to the host
// once, and no reset sent to the guest.
func TestTCPGuest(t *testing.T) {
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	bin := sandbox.BuildBinary(t, "github.com/gopasst/gopasst/cmd/gopasst")
	tcpGuest(t, []string{bin, "passt"}, true)
}

// TestTCPGuestReference runs the same transfers against the reference
// passt when GOPASST_QEMU_REFERENCE=1, for comparison. What the guest
// receives is only logged: the reference gets it wrong (see tcpGuest),
// and the run then takes minutes, until the guest's nc times out.
func TestTCPGuestReference(t *testing.T) {
	if os.Getenv(referenceEnv) != "1" {
		t.Skipf("set %s=1 to compare with the reference passt", referenceEnv)
	}
	if _, err := exec.LookPath(qemu.ReferencePasst[0]); err != nil {
		t.Skip(err)
	}
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	tcpGuest(t, qemu.ReferencePasst, false)
}

// tcpFlow is one of the four connections of TestTCPGuest.
type tcpFlow struct {
	name string
	// guestTo is what the guest connects to (gw4, gw6); host is the
	// test's end on the host: listening (gw) or connecting to (fwd).
	guestTo netip.AddrPort
	host    netip.AddrPort
}

var (
	tcpLoop4 = netip.MustParseAddr("127.0.0.1")
	tcpLoop6 = netip.IPv6Loopback()
)

var tcpGatewayFlows = []tcpFlow{
	{"gw4", netip.AddrPortFrom(sandbox.GatewayAddr4, tcpGatewayPort), netip.AddrPortFrom(tcpLoop4, tcpGatewayPort)},
	{"gw6", netip.AddrPortFrom(sandbox.GatewayAddr6, tcpGatewayPort), netip.AddrPortFrom(tcpLoop6, tcpGatewayPort)},
}

var tcpForwardFlows = []tcpFlow{
	{name: "fwd4", host: netip.AddrPortFrom(tcpLoop4, tcpForwardPort4)},
	{name: "fwd6", host: netip.AddrPortFrom(tcpLoop6, tcpForwardPort6)},
}

func tcpGuest(t *testing.T, command []string, gopasst bool) {
	guestData, hostData := tcpGuestData(), tcpHostData()
	hostSum := sha256Hex(hostData)

	sb := sandbox.New(t)

	// The test's servers on the sandbox host's loopback, before the
	// guest boots.
	served := map[string]chan tcpHostResult{}
	for _, f := range tcpGatewayFlows {
		var ln net.Listener
		err := inNetns(sb.HostNS, func() (err error) {
			ln, err = net.Listen("tcp", f.host.String())
			return err
		})
		if err != nil {
			t.Fatalf("[%s] listen on %v in %s: %v", f.name, f.host, sb.HostNS, err)
		}
		t.Cleanup(func() { ln.Close() })
		ch := make(chan tcpHostResult, 1)
		served[f.name] = ch
		go func() { ch <- tcpServe(ln.(*net.TCPListener), hostData) }()
	}

	passt := qemu.StartPasst(t, sb, command, "-t", fmt.Sprintf("%d,%d", tcpForwardPort4, tcpForwardPort6))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("qemu: passt stderr:\n%s", passt.Proc.Stderr())
		}
	})

	vm := qemu.Start(t, sb, passt.Socket, qemu.InitScript(qemu.InitOptions{
		NoDHCP6: true,
		Extra:   tcpGuestScript(hostSum),
	}), qemu.File{Path: tcpGuestFile, Data: guestData})

	// Host to guest, one connection after the other, once both nc
	// servers listen.
	vm.WaitLine(t, markTCPReady, tcpGuestTimeout)
	connected := map[string]tcpHostResult{}
	for _, f := range tcpForwardFlows {
		connected[f.name] = tcpConnect(sb.HostNS, f.host, hostData)
	}

	console := vm.Wait(t, tcpGuestTimeout)
	r := qemu.ParseConsole(console)
	results := tcpGuestResults(console)
	hosts := map[string]tcpHostResult{}
	for name, ch := range served {
		select {
		case hosts[name] = <-ch:
		case <-time.After(tcpFlowTimeout):
			hosts[name] = tcpHostResult{err: fmt.Errorf("server did not finish")}
		}
	}
	for name, h := range connected {
		hosts[name] = h
	}

	if !r.Done {
		t.Errorf("guest script did not finish")
	}
	for _, e := range r.Errors {
		t.Errorf("guest: %s", e)
	}
	if r.IPv4 != netip.PrefixFrom(sandbox.HostAddr4, sandbox.LinkPrefixLen4) || !r.HasGlobal6In(netip.MustParsePrefix("2001:db8::/64")) {
		t.Errorf("guest addresses %v %v: the connections need DHCPv4 and SLAAC", r.IPv4, r.IPv6)
	}
	if d := results["data"]; d.fields["bytes"] != strconv.Itoa(tcpSize) {
		t.Fatalf("guest data %s: %v, want %d bytes", tcpGuestFile, d.fields, tcpSize)
	}

	// The reference passt of Debian 12 (0.0~git20230309.7c7625d), with
	// Linux 6.18 on the host, sends the guest bytes the test never sent,
	// and more of them than it sent (until the guest's memory is full),
	// on the connections the guest opens to its gateway, which it
	// half-closes before the test sends: the first MiB already differs.
	// Once, on a forwarded connection, it did the same from the 9th MiB
	// on and never passed the end of the stream on. TestTCPGuestReference
	// only logs what the guest received.
	guestFail := t.Errorf
	if !gopasst {
		guestFail = func(format string, args ...any) { t.Logf(format+" (reference passt, known limitation)", args...) }
	}
	hostChunks := chunkSums(hostData)
	for _, f := range append(append([]tcpFlow{}, tcpGatewayFlows...), tcpForwardFlows...) {
		h, g := hosts[f.name], results[f.name]
		// What the test received: the guest's data, byte-exact, then
		// the end of the stream.
		switch {
		case h.err != nil:
			t.Errorf("[%s] host side (%v): %v; received %d bytes, sent %d", f.name, f.host, h.err, len(h.received), h.sent)
		case !bytes.Equal(h.received, guestData):
			t.Errorf("[%s] host received %d bytes, want the guest's %d: %s", f.name, len(h.received), tcpSize, firstDiff(h.received, guestData))
		}
		// What the guest received before the end of the stream: the
		// test's data.
		switch {
		case g.fields == nil:
			t.Errorf("[%s] no guest result", f.name)
		case g.fields["bytes"] != strconv.Itoa(tcpSize) || g.fields["sha256"] != hostSum:
			bad := ""
			for i, s := range hostChunks {
				if i >= len(g.chunks) || g.chunks[i] != s {
					bad = fmt.Sprintf("; first MiB that differs: %d", i)
					break
				}
			}
			guestFail("[%s] guest received %s bytes with SHA-256 %s (nc exit %s), want %d bytes with SHA-256 %s%s",
				f.name, g.fields["bytes"], g.fields["sha256"], g.fields["rc"], tcpSize, hostSum, bad)
		case g.fields["rc"] != "0":
			guestFail("[%s] guest nc exit status %s", f.name, g.fields["rc"])
		}
		t.Logf("[%s] host %v peer %v: received %d, sent %d in %v (%s both ways); guest: %s",
			f.name, f.host, h.peer, len(h.received), h.sent, h.elapsed.Round(time.Millisecond), rate(2*tcpSize, h.elapsed), g.summary())
	}
	accel := "tcg"
	if qemu.KVM() {
		accel = "kvm"
	}
	t.Logf("qemu: network up %v after boot, guest done at %v (accel %s)",
		r.NetUpTime.Round(10*time.Millisecond), r.DoneTime.Round(10*time.Millisecond), accel)

	if !gopasst {
		return
	}
	c, err := watch.Counters(passt.Proc)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range c {
		if strings.Contains(strings.ToLower(k), "tcp") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "\n\t%s: %d", k, c[k])
	}
	t.Logf("gopasst TCP counters:%s", b.String())
	n := int64(len(tcpGatewayFlows) + len(tcpForwardFlows))
	if c["tcp connections created"] != n || c["tcp connections closed"] != n || c["tcp connections active"] != 0 {
		t.Errorf("counters: %d connections created, %d closed, %d active; want %d, %d, 0",
			c["tcp connections created"], c["tcp connections closed"], c["tcp connections active"], n, n)
	}
	if c["tcp bytes to host"] != n*tcpSize || c["tcp bytes to tap"] < n*tcpSize {
		t.Errorf("counters: %d bytes to host, %d to tap; want %d and at least %d", c["tcp bytes to host"], c["tcp bytes to tap"], n*tcpSize, n*tcpSize)
	}
	if c["tcp resets to tap"] != 0 {
		t.Errorf("counters: %d resets to the guest, want none", c["tcp resets to tap"])
	}
}

// tcpGuestScript is the shell code run once the guest's network is up.
// hostSum is the SHA-256 of the test's data.
func tcpGuestScript(hostSum string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `echo "%[1]s data bytes=$(wc -c < %[2]s)"
# tcp_result NAME RC FILE START: what nc received into FILE.
tcp_result() {
	sum=$(sha256sum "$3" | cut -d' ' -f1)
	echo "%[3]s $1 rc=$2 bytes=$(wc -c < "$3") sha256=$sum start=$4 end=$(uptime_s)"
	if [ "$sum" != %[4]s ]; then
		i=0
		while [ $i -lt %[5]d ]; do
			echo "%[6]s $1 $i $(dd if="$3" bs=1048576 skip=$i count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
			i=$((i+1))
		done
	fi
	rm -f "$3"
}
`, markTCPData, tcpGuestFile, markTCPResult, hostSum, tcpSize>>20, markTCPChunk)
	// nc's stderr goes to the console, what it receives to a file.
	timeout := int(tcpFlowTimeout / time.Second)
	for _, f := range tcpGatewayFlows {
		fmt.Fprintf(&b, "s=$(uptime_s)\ntimeout %d nc %s %d < %s 2>&1 > /tmp/%s\ntcp_result %s $? /tmp/%s $s\n",
			timeout, f.guestTo.Addr(), f.guestTo.Port(), tcpGuestFile, f.name, f.name, f.name)
	}
	// The servers for the forwarded ports listen on [::], for IPv4 and
	// IPv6; the test connects to them one after the other.
	for _, f := range tcpForwardFlows {
		fmt.Fprintf(&b, "timeout %d nc -l -p %d < %s 2>&1 > /tmp/%s &\npid_%s=$!\n",
			len(tcpForwardFlows)*timeout, f.host.Port(), tcpGuestFile, f.name, f.name)
	}
	b.WriteString("i=0\nwhile [ $i -lt 100 ]; do\n\tn=0\n")
	for _, f := range tcpForwardFlows {
		fmt.Fprintf(&b, "\tnetstat -ltn | grep -q ':%d ' && n=$((n+1))\n", f.host.Port())
	}
	fmt.Fprintf(&b, "\t[ $n -eq %d ] && break\n\tsleep 0.1; i=$((i+1))\ndone\n", len(tcpForwardFlows))
	fmt.Fprintf(&b, "[ $n -eq %d ] || echo \"GUEST-ERROR nc servers not listening: $(netstat -ltn)\"\n", len(tcpForwardFlows))
	fmt.Fprintf(&b, "s=$(uptime_s)\necho \"%s $s\"\n", markTCPReady)
	for _, f := range tcpForwardFlows {
		fmt.Fprintf(&b, "wait $pid_%s\ntcp_result %s $? /tmp/%s $s\n", f.name, f.name, f.name)
	}
	return b.String()
}

// tcpGuestResult is a markTCPResult line with its chunk sums.
type tcpGuestResult struct {
	fields map[string]string
	chunks []string
}

func (g tcpGuestResult) summary() string {
	if g.fields == nil {
		return "no result"
	}
	start, _ := strconv.ParseFloat(g.fields["start"], 64)
	end, _ := strconv.ParseFloat(g.fields["end"], 64)
	d := time.Duration((end - start) * float64(time.Second))
	return fmt.Sprintf("received %s bytes, nc exit %s, %v including checksum", g.fields["bytes"], g.fields["rc"], d.Round(10*time.Millisecond))
}

// tcpGuestResults returns the markTCPData ("data") and markTCPResult
// lines of the console by name.
func tcpGuestResults(console string) map[string]tcpGuestResult {
	res := map[string]tcpGuestResult{}
	for _, line := range strings.Split(strings.ReplaceAll(console, "\r", ""), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case markTCPData, markTCPResult:
			g := res[f[1]]
			g.fields = map[string]string{}
			for _, kv := range f[2:] {
				k, v, _ := strings.Cut(kv, "=")
				g.fields[k] = v
			}
			res[f[1]] = g
		case markTCPChunk:
			if len(f) >= 4 {
				g := res[f[1]]
				g.chunks = append(g.chunks, f[3])
				res[f[1]] = g
			}
		}
	}
	return res
}

// tcpHostResult is what the test's end of one connection saw.
type tcpHostResult struct {
	received []byte
	sent     int
	peer     net.Addr
	elapsed  time.Duration
	err      error
}

// tcpServe accepts one connection on ln, reads to the end of the stream,
// then sends data, half-closes and waits for the peer to close.
func tcpServe(ln *net.TCPListener, data []byte) (r tcpHostResult) {
	defer ln.Close()
	if err := ln.SetDeadline(time.Now().Add(tcpGuestTimeout)); err != nil {
		return tcpHostResult{err: err}
	}
	c, err := ln.AcceptTCP()
	if err != nil {
		return tcpHostResult{err: fmt.Errorf("accept: %w", err)}
	}
	defer c.Close()
	start := time.Now()
	defer func() { r.elapsed = time.Since(start) }()
	r.peer = c.RemoteAddr()
	if err := c.SetDeadline(start.Add(tcpFlowTimeout)); err != nil {
		r.err = err
		return r
	}
	if r.received, err = readAll(c); err != nil {
		r.err = fmt.Errorf("read: %w", err)
		return r
	}
	n, err := c.Write(data)
	r.sent = n
	if err != nil {
		r.err = fmt.Errorf("write: %w", err)
		return r
	}
	if err := c.CloseWrite(); err != nil {
		r.err = fmt.Errorf("shutdown: %w", err)
		return r
	}
	if extra, err := readAll(c); err != nil || len(extra) > 0 {
		r.err = fmt.Errorf("after the end of the stream: %d more bytes, %v", len(extra), err)
	}
	return r
}

// tcpConnect connects to addr from namespace ns, sends data and
// half-closes while it reads to the end of the stream.
func tcpConnect(ns string, addr netip.AddrPort, data []byte) (r tcpHostResult) {
	start := time.Now()
	defer func() { r.elapsed = time.Since(start) }()
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), 10*time.Second)
		return err
	})
	if err != nil {
		r.err = fmt.Errorf("connect: %w", err)
		return r
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	r.peer = tc.LocalAddr()
	if err := tc.SetDeadline(start.Add(tcpFlowTimeout)); err != nil {
		r.err = err
		return r
	}
	type wres struct {
		n   int
		err error
	}
	wc := make(chan wres, 1)
	go func() {
		n, err := tc.Write(data)
		if err == nil {
			err = tc.CloseWrite()
		}
		wc <- wres{n, err}
	}()
	r.received, err = readAll(tc)
	if err != nil {
		r.err = fmt.Errorf("read: %w", err)
		tc.Close() // unblocks the writer
	}
	w := <-wc
	r.sent = w.n
	if w.err != nil && r.err == nil {
		r.err = fmt.Errorf("write: %w", w.err)
	}
	return r
}

// readAll reads c to the end of the stream, at most twice tcpSize.
func readAll(c io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(c, 2*tcpSize))
	if err == nil && len(b) == 2*tcpSize {
		err = fmt.Errorf("more than %d bytes", len(b))
	}
	return b, err
}

// inNetns runs f on a thread that has joined the network namespace ns (an
// ip-netns name), so that the sockets f opens are that namespace's; the
// sockets stay there when the thread moves on. The thread goes back to
// the test's namespace afterwards, or, if it cannot, ends with its
// goroutine (or, being the main thread, is never used again): either way
// no other goroutine runs in ns, and the sandbox finds no process of the
// test left in ns when it deletes it.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open namespace %s: %w", ns, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err == nil {
			err = f()
		} else {
			err = fmt.Errorf("setns %s: %w", ns, err)
		}
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// chunkSums returns the SHA-256 of each MiB of b.
func chunkSums(b []byte) []string {
	var sums []string
	for len(b) > 0 {
		n := min(len(b), 1<<20)
		sums = append(sums, sha256Hex(b[:n]))
		b = b[n:]
	}
	return sums
}

// firstDiff describes where got first differs from want.
func firstDiff(got, want []byte) string {
	n := min(len(got), len(want))
	for i := 0; i < n; i++ {
		if got[i] != want[i] {
			lo, hi := max(0, i-16), min(n, i+16)
			return fmt.Sprintf("first difference at offset %d: got %q, want %q", i, got[lo:min(len(got), hi)], want[lo:min(len(want), hi)])
		}
	}
	return fmt.Sprintf("identical for the first %d bytes", n)
}

// rate formats n bytes in d as MiB/s.
func rate(n int, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB/s", float64(n)/(1<<20)/d.Seconds())
}
