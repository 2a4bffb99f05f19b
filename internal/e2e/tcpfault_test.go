package e2e_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/pattern"
	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// The TCP limit and fault tests (this file, tcplimits_test.go and
// tcpfdlimit_test.go) use, beside tcptool, a few helpers of their own,
// built into the test binary:
// tcpHelperEnv, set to a command name, turns the binary into that helper,
// with the command line's arguments as its flags (see tcpHelperMain).
const tcpHelperEnv = "GOPASST_E2E_TCPHELPER"

// The helper runs from init, before TestMain (like the ping helper).
func init() {
	if cmd := os.Getenv(tcpHelperEnv); cmd != "" {
		os.Exit(tcpHelperMain(cmd, os.Args[1:]))
	}
}

// tcpHelperMain runs helper cmd with args and returns its exit status:
//
//	synflood -if IF -count N -dport P -src4 A -src6 B [-sport FIRST]
//	    writes N TCP SYNs to interface IF through a packet socket,
//	    alternating IPv4 (from A) and IPv6 (from B), to the gateway
//	    address port P, source ports FIRST, FIRST+1, ... (one per SYN of
//	    a family), built with gopacket; paced like floodMain, and ends
//	    with "flooded N dropped D" (D: dropped on the tap's queue).
//	acceptor -l ADDR[,ADDR...]
//	    listens, prints "ready", and closes every connection it accepts
//	    at once, until killed.
//	stream -to ADDR -stop FILE [-rate BYTES/S] [-seed S] [-abort-stall D]
//	    connects and sends the tcptool pattern of seed S at about the
//	    rate until FILE exists, then half-closes and reads to EOF. It
//	    prints "connected LOCAL", a "progress UNIXMS BYTES" line every
//	    200 ms, and a JSON streamResult. With -abort-stall, if no byte
//	    could be written for D it aborts the connection (SO_LINGER 0,
//	    so the peer sees RST) instead.
//	pausereader (-l ADDR | -to ADDR) [-rcvbuf B] [-pause D] [-peer-seed S]
//	    [-closewrite]
//	    accepts one connection or connects (with SO_RCVBUF B set before),
//	    half-closes at once with -closewrite, reads nothing for D, then
//	    reads to EOF checking the tcptool pattern of seed S, and prints a
//	    JSON readResult.
//	resetter -l ADDR [-after B] [-sleep D]
//	    accepts one connection, reads B bytes, stops reading for D (so
//	    that every buffer on the way fills up), then closes with
//	    SO_LINGER 0 (RST) and prints {"reset_ns":...}.
//	flood -to ADDR[,ADDR...] -n N [-size B] [-hold FILE] [-timeout D]
//	    [-connect-timeout D]
//	    opens N connections at once, to the addresses in turn; each
//	    sends the tcptool pattern of seed 1 (B bytes) and checks that
//	    the echo is that, byte-exact, then waits for FILE (if given),
//	    half-closes and expects EOF. While connections are still being
//	    opened or echoed it prints "status pending=P ok=K failed=F"
//	    whenever that changes, then "opened ok=K failed=F" once none is
//	    pending, a JSON floodConn per connection once all are closed,
//	    and "flood finished" (tcpfdlimit_test.go).
//	echoer -to ADDR -stop FILE [-rate BYTES/S] [-chunk B]
//	    one connection to an echo server: sends chunks of the pattern of
//	    seed 1, at about the rate, each read back and checked before the
//	    next, until FILE exists; then half-closes and expects EOF. It
//	    prints "connected LOCAL", "progress UNIXMS BYTES" lines and a
//	    JSON echoerResult (tcpfdlimit_test.go).
func tcpHelperMain(cmd string, args []string) int {
	var err error
	switch cmd {
	case "synflood":
		err = helperSynFlood(args)
	case "acceptor":
		err = helperAcceptor(args)
	case "stream":
		err = helperStream(args)
	case "pausereader":
		err = helperPauseReader(args)
	case "resetter":
		err = helperResetter(args)
	case "flood":
		err = helperFlood(args)
	case "echoer":
		err = helperEchoer(args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcphelper:", err)
		return 1
	}
	return 0
}

// helperNet is "tcp4" or "tcp6" for an ADDR:PORT literal.
func helperNet(addr string) (string, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", err
	}
	if ap.Addr().Is4() {
		return "tcp4", nil
	}
	return "tcp6", nil
}

// helperDial connects a helper to addr, of the family the address says,
// and prints "connected LOCALADDR" for the test.
func helperDial(addr string) (*net.TCPConn, error) {
	nw, err := helperNet(addr)
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout(nw, addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	fmt.Println("connected", tc.LocalAddr())
	return tc, nil
}

// rcvbufCtl sets SO_RCVBUF to n before a socket listens or connects (0:
// leaves it).
func rcvbufCtl(n int) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		if n == 0 {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n) })
		return errors.Join(err, serr)
	}
}

func helperSynFlood(args []string) error {
	fs := flag.NewFlagSet("synflood", flag.ContinueOnError)
	ifname := fs.String("if", "eth0", "interface")
	count := fs.Int("count", 0, "SYNs")
	dport := fs.Int("dport", 0, "destination port")
	src4 := fs.String("src4", "", "IPv4 source")
	src6 := fs.String("src6", "", "IPv6 source")
	first := fs.Int("sport", 10000, "first source port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s4, err := netip.ParseAddr(*src4)
	if err != nil {
		return err
	}
	s6, err := netip.ParseAddr(*src6)
	if err != nil {
		return err
	}
	if *first+(*count+1)/2 > 65536 {
		return fmt.Errorf("%d SYNs from port %d: not enough ports", *count, *first)
	}
	ifi, err := net.InterfaceByName(*ifname)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	droppedBefore := tapTxDropped(*ifname)
	lastDropped, pause := droppedBefore, time.Millisecond
	rng := rand.New(rand.NewPCG(17, 17))
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	for i := 0; i < *count; i++ {
		tcp := &layers.TCP{SrcPort: layers.TCPPort(*first + i/2), DstPort: layers.TCPPort(*dport), Seq: rng.Uint32(), SYN: true, Window: 64240,
			Options: []layers.TCPOption{
				{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
				{OptionType: layers.TCPOptionKindNop},
				{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
			}}
		var ls []gopacket.SerializableLayer
		if i%2 == 1 {
			ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: s6.AsSlice(), DstIP: sandbox.GatewayAddr6.AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(ip)
			ls = []gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: ifi.HardwareAddr, DstMAC: ourMAC, EthernetType: layers.EthernetTypeIPv6}, ip, tcp}
		} else {
			ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
				SrcIP: s4.AsSlice(), DstIP: sandbox.GatewayAddr4.AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(ip)
			ls = []gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: ifi.HardwareAddr, DstMAC: ourMAC, EthernetType: layers.EthernetTypeIPv4}, ip, tcp}
		}
		if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
			return err
		}
		if err := unix.Sendto(fd, buf.Bytes(), 0, sa); err != nil {
			return err
		}
		// Pace as floodMain does: slow down while gopasst falls behind
		// (the tap's queue overflows).
		if i%64 == 63 {
			if d := tapTxDropped(*ifname); d > lastDropped {
				pause, lastDropped = min(2*pause, 50*time.Millisecond), d
			} else {
				pause = max(pause*9/10, 200*time.Microsecond)
			}
			time.Sleep(pause)
		}
	}
	fmt.Printf("flooded %d dropped %d\n", *count, tapTxDropped(*ifname)-droppedBefore)
	return nil
}

func helperAcceptor(args []string) error {
	fs := flag.NewFlagSet("acceptor", flag.ContinueOnError)
	l := fs.String("l", "", "addresses")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, a := range strings.Split(*l, ",") {
		nw, err := helperNet(a)
		if err != nil {
			return err
		}
		ln, err := net.Listen(nw, a)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					fmt.Fprintln(os.Stderr, "tcphelper: accept:", err)
					os.Exit(1)
				}
				c.Close()
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

// streamResult is what the stream helper prints at the end.
type streamResult struct {
	Sent       int64   `json:"sent"`
	SHA256Sent string  `json:"sha256_sent"`
	MaxStallMs float64 `json:"max_stall_ms"` // longest time no byte could be written
	Aborted    bool    `json:"aborted"`
	Err        string  `json:"err"`
}

func helperStream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	to := fs.String("to", "", "address")
	stop := fs.String("stop", "", "stop file")
	rate := fs.Int64("rate", 2<<20, "bytes per second")
	seed := fs.Uint64("seed", 1, "pattern seed")
	abortStall := fs.Duration("abort-stall", 0, "abort after a stall this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tc, err := helperDial(*to)
	if err != nil {
		return err
	}
	defer tc.Close()
	h := sha256.New()
	chunk := make([]byte, 16<<10)
	var r streamResult
	pace := newPacedLoop(*stop, float64(*rate))
	lastProgress := pace.start
	stopped := false
	for !stopped {
		now, end, ahead := pace.step(r.Sent)
		if end {
			break
		}
		if ahead {
			continue
		}
		pattern.Fill(chunk, *seed, uint64(r.Sent))
		_ = tc.SetWriteDeadline(now.Add(100 * time.Millisecond))
		n, werr := tc.Write(chunk)
		h.Write(chunk[:n])
		r.Sent += int64(n)
		now = time.Now()
		if n > 0 {
			r.MaxStallMs = max(r.MaxStallMs, ms(now.Sub(lastProgress)))
			lastProgress = now
		}
		switch {
		case werr == nil:
		case errors.Is(werr, os.ErrDeadlineExceeded):
			if st := now.Sub(lastProgress); *abortStall > 0 && st >= *abortStall {
				r.MaxStallMs = max(r.MaxStallMs, ms(st))
				r.Aborted = true
				_ = tc.SetLinger(0)
				stopped = true
			}
		default:
			r.Err = werr.Error()
			stopped = true
		}
	}
	fmt.Printf("progress %d %d\n", time.Now().UnixMilli(), r.Sent)
	r.MaxStallMs = max(r.MaxStallMs, ms(time.Since(lastProgress)))
	if !stopped {
		_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
		if err := tc.CloseWrite(); err != nil {
			r.Err = err.Error()
		} else if _, err := io.Copy(io.Discard, tc); err != nil {
			r.Err = err.Error()
		}
	}
	r.SHA256Sent = hex.EncodeToString(h.Sum(nil))
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	return nil
}

// readResult is what the pausereader helper prints.
type readResult struct {
	Received       int64  `json:"received"`
	OK             bool   `json:"ok"`
	BadAt          int64  `json:"bad_at"`
	SHA256Received string `json:"sha256_received"`
	Err            string `json:"err"`
}

func helperPauseReader(args []string) error {
	fs := flag.NewFlagSet("pausereader", flag.ContinueOnError)
	l := fs.String("l", "", "listen address")
	to := fs.String("to", "", "address to connect to")
	rcvbuf := fs.Int("rcvbuf", 0, "SO_RCVBUF")
	pause := fs.Duration("pause", 0, "time before the first read")
	peerSeed := fs.Uint64("peer-seed", 2, "seed of what arrives")
	closeWrite := fs.Bool("closewrite", false, "half-close at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var c net.Conn
	if *l != "" {
		nw, err := helperNet(*l)
		if err != nil {
			return err
		}
		lc := net.ListenConfig{Control: rcvbufCtl(*rcvbuf)}
		ln, err := lc.Listen(context.Background(), nw, *l)
		if err != nil {
			return err
		}
		fmt.Println("ready")
		if c, err = ln.Accept(); err != nil {
			return err
		}
		ln.Close()
	} else {
		nw, err := helperNet(*to)
		if err != nil {
			return err
		}
		d := net.Dialer{Timeout: 5 * time.Second, Control: rcvbufCtl(*rcvbuf)}
		if c, err = d.Dial(nw, *to); err != nil {
			return err
		}
	}
	defer c.Close()
	fmt.Println("connected")
	if *closeWrite {
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
	}
	time.Sleep(*pause)
	fmt.Println("reading")
	r := readResult{BadAt: -1}
	h := sha256.New()
	buf, want := make([]byte, 64<<10), make([]byte, 64<<10)
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		n, err := c.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			pattern.Fill(want[:n], *peerSeed, uint64(r.Received))
			for i := 0; i < n && r.BadAt < 0; i++ {
				if buf[i] != want[i] {
					r.BadAt = r.Received + int64(i)
				}
			}
			r.Received += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			r.Err = err.Error()
			break
		}
	}
	r.OK = r.Err == "" && r.BadAt < 0
	r.SHA256Received = hex.EncodeToString(h.Sum(nil))
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	return nil
}

func helperResetter(args []string) error {
	fs := flag.NewFlagSet("resetter", flag.ContinueOnError)
	l := fs.String("l", "", "listen address")
	after := fs.Int64("after", 1<<20, "bytes to read first")
	sleep := fs.Duration("sleep", time.Second, "pause before the reset")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nw, err := helperNet(*l)
	if err != nil {
		return err
	}
	ln, err := net.Listen(nw, *l)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	ln.Close()
	if _, err := io.CopyN(io.Discard, c, *after); err != nil {
		return err
	}
	time.Sleep(*sleep)
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		return err
	}
	fmt.Printf("{\"reset_ns\":%d}\n", time.Now().UnixNano())
	return c.Close()
}

// startHelper starts helper cmd of the test binary at p; it is killed
// when t ends.
func (p place) startHelper(t *testing.T, sb *sandbox.Sandbox, cmd string, args ...string) *sandbox.Proc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a := append(append([]string{}, p.pre...), "env", tcpHelperEnv+"="+cmd, self)
	a = append(a, args...)
	return sb.Start(t, p.ns, a[0], a[1:]...)
}

// startNS is startTCPNS with a gopasst binary of choice (bin) and a
// command prefix (prlimit), and without the cleanup when noStop (the
// test ends gopasst itself).
func startNS(t *testing.T, sb *sandbox.Sandbox, bin string, prefix []string, noStop bool, args ...string) *tcpNS {
	t.Helper()
	if dir := os.Getenv(tcpPcapEnv); dir != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		args = append([]string{"--pcap", filepath.Join(dir, fmt.Sprintf("%s-%d.pcap", name, time.Now().UnixNano()))}, args...)
	}
	g := startGP(t, sb, bin, prefix, args, "echo up; exec sleep 1000")
	g.p.WaitLine(t, "up", 20*time.Second)
	n := &tcpNS{p: g.p, gpid: g.pid, sb: sb, pid: nsPID(t, g.p)}
	if !noStop {
		t.Cleanup(func() { stopPasta(t, g.p, n.pid) })
	}
	return n
}

// noForwards turns every automatic forwarding off, whose listeners and
// scans would move the descriptor count.
var noForwards = []string{"-u", "none", "-U", "none"}

// fwdArgs is noForwards with -t and -T set (to "none" if empty).
func fwdArgs(tcp, tcpNS string, extra ...string) []string {
	if tcp == "" {
		tcp = "none"
	}
	if tcpNS == "" {
		tcpNS = "none"
	}
	return append(append([]string{"-t", tcp, "-T", tcpNS}, noForwards...), extra...)
}

// idleFDs waits until gopasst's descriptor count holds still for half a
// second and returns it.
func (n *tcpNS) idleFDs(t *testing.T) int {
	t.Helper()
	prev := n.fds(t)
	for i := 0; i < 40; i++ {
		time.Sleep(250 * time.Millisecond)
		cur := n.fds(t)
		if cur == prev {
			return cur
		}
		prev = cur
	}
	t.Fatalf("gopasst's descriptors do not settle (%d)\n%s", prev, n.diag())
	return 0
}

// waitState waits up to limit until gopasst has active TCP connections
// (all of them), spliced ones and descriptors as wanted, and reports how
// long it took; it fails t (with what is left) otherwise.
func (n *tcpNS) waitState(t *testing.T, active, spliced int64, fds int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		c := n.counters(t)
		got := n.fds(t)
		if c[tcpActive] == active && c[tcpActiveSplice] == spliced && got == fds {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Errorf("after %v: %q %d, %q %d, %d descriptors; want %d, %d and %d\n%s",
				limit, tcpActive, c[tcpActive], tcpActiveSplice, c[tcpActiveSplice], got, active, spliced, fds, n.diag())
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nsRun runs a command in the pasta namespace.
func (n *tcpNS) nsRun(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"-t", n.pid, "-n"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in the namespace, %v: %v\n%s", args, err, out)
	}
}

// sbRun runs a command in sandbox namespace ns.
func sbRun(t *testing.T, sb *sandbox.Sandbox, ns string, args ...string) {
	t.Helper()
	out, err := sb.Command(ns, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s, %v: %v\n%s", ns, args, err, out)
	}
}

// bystander is a connection that keeps moving data while a test does
// harm elsewhere: the stream helper in the namespace sending to a tcptool
// sink on the host's loopback (through the gateway address, so through
// gopasst's TCP over the tap), the sink checking every byte.
type bystander struct {
	t          *testing.T
	stream     *sandbox.Proc
	sink       *sandbox.Proc
	stop       string
	start, end time.Time
}

// startBystander starts a bystander at rate bytes a second.
func startBystander(t *testing.T, n *tcpNS, rate int64) *bystander {
	t.Helper()
	port := nextPort()
	sink := hostPlace(n.sb).start(t, n.sb, "serve", "-l", ap(families[0].loopback, port), "-mode", "sink", "-count", "1",
		"-peer-seed", clientSeed, "-timeout", "300s")
	sink.WaitLine(t, "ready", 10*time.Second)
	b := &bystander{t: t, sink: sink, stop: filepath.Join(t.TempDir(), "stop-bystander")}
	b.stream = n.place().startHelper(t, n.sb, "stream", "-to", ap(families[0].gw, port), "-stop", b.stop,
		"-rate", strconv.FormatInt(rate, 10), "-seed", clientSeed)
	b.stream.WaitLine(t, "connected", 10*time.Second)
	b.start = time.Now()
	return b
}

// sentAt is what the stream had written by time tm (its progress lines).
func (b *bystander) sentAt(tm time.Time) int64 {
	var sent int64
	for _, line := range strings.Split(b.stream.Stdout(), "\n") {
		var at, n int64
		if _, err := fmt.Sscanf(line, "progress %d %d", &at, &n); err == nil && at <= tm.UnixMilli() {
			sent = n
		}
	}
	return sent
}

// running fails t unless the bystander's stream is still going.
func (b *bystander) running(what string) {
	b.t.Helper()
	select {
	case <-b.stream.Done():
		b.t.Errorf("the bystander ended before %s\nstdout:\n%s\nstderr:\n%s", what, b.stream.Stdout(), b.stream.Stderr())
	default:
	}
}

// finish stops the bystander and checks that the sink got every byte the
// stream sent, byte-exact, and that the stream never stalled for
// maxStall.
func (b *bystander) finish(maxStall time.Duration) streamResult {
	t := b.t
	t.Helper()
	b.running("the end of the test")
	touch(t, b.stop)
	line := b.stream.WaitLine(t, `{"sent"`, 40*time.Second)
	b.end = time.Now()
	var r streamResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("bystander: %v: %q", err, line)
	}
	sr := finish(b.sink, 20*time.Second)
	var s serveResult
	if err := jsonLine(sr.stdout, `{"conn"`, &s); err != nil {
		t.Errorf("bystander's sink: %v\n%s", err, sr)
		return r
	}
	switch {
	case r.Err != "" || r.Aborted:
		t.Errorf("bystander: %+v", r)
	case !s.OK || s.Received != r.Sent || s.SHA256Received != r.SHA256Sent:
		t.Errorf("bystander: sent %d bytes (SHA-256 %.16s), the sink received %d (%.16s), ok %v, bad byte at %d, err %q",
			r.Sent, r.SHA256Sent, s.Received, s.SHA256Received, s.OK, s.BadAt, s.Err)
	case time.Duration(r.MaxStallMs*float64(time.Millisecond)) > maxStall:
		t.Errorf("bystander stalled for %.0f ms, more than %v", r.MaxStallMs, maxStall)
	}
	return r
}

// TestTCPPeerFaults breaks connections from the host's side while a
// bystander connection (namespace to the host's loopback, through the
// tap) keeps moving data, both families:
//
//   - host-resets: the host's server reads 1 MiB of what the namespace's
//     client sends without end, stops reading for a second (so that its
//     receive queue, gopasst's socket and the tap are full), and resets
//     (SO_LINGER 0);
//   - splice-resets: the same across a -T port (the namespace's loopback
//     to the host's), spliced: after the second without reading, the
//     pipe from the client's socket holds what the server's socket could
//     not take when the reset comes;
//   - host-vanishes: the remote host's server stops answering mid-transfer
//     without a word (a blackhole route to it on the sandbox host: from
//     the host socket's view its peer went silent); the namespace's
//     client, stalled, gives up after 2 s and aborts (RST).
//
// Each time the victim must see ECONNRESET (within 2 s of the reset),
// gopasst must free the connection, its socket (and pipes) included:
// the descriptor count back to its idle count plus the bystander's one,
// within 3 s. gopasst keeps running, and the bystander gets every byte
// byte-exact, never stalling for 5 s.
func TestTCPPeerFaults(t *testing.T) {
	sb := sandbox.New(t)
	ports := newPortBlock(4)
	n := startNS(t, sb, gopasst, nil, false, fwdArgs("", ports.spec())...)
	base := n.idleFDs(t)
	by := startBystander(t, n, 2<<20)
	n.waitState(t, 1, 0, base+1, 5*time.Second)

	for _, f := range families {
		t.Run(f.name+"/host-resets", func(t *testing.T) {
			p := nextPort()
			peerReset(t, n, hostPlace(sb), n.place(), ap(f.loopback, p), ap(f.gw, p))
			n.waitState(t, 1, 0, base+1, 3*time.Second)
		})
		t.Run(f.name+"/splice-resets", func(t *testing.T) {
			p := ports.take(t)
			before := n.counters(t)
			peerReset(t, n, hostPlace(sb), n.place(), ap(f.loopback, p), ap(f.loopback, p))
			if c := n.counters(t); c[tcpSpliceBytes] == before[tcpSpliceBytes] {
				t.Errorf("%q did not move: the connection was not spliced", tcpSpliceBytes)
			}
			n.waitState(t, 1, 0, base+1, 3*time.Second)
		})
		t.Run(f.name+"/host-vanishes", func(t *testing.T) {
			p := nextPort()
			srv := worldPlace(sb).start(t, sb, "serve", "-l", ap(f.remote, p), "-mode", "sink", "-count", "1", "-timeout", "60s")
			srv.WaitLine(t, "ready", 10*time.Second)
			stop := filepath.Join(t.TempDir(), "stop")
			st := n.place().startHelper(t, sb, "stream", "-to", ap(f.remote, p), "-stop", stop, "-rate", "8388608", "-abort-stall", "2s")
			st.WaitLine(t, "connected", 10*time.Second)
			// Some data first, then the silence.
			deadline := time.Now().Add(10 * time.Second)
			for (&bystander{stream: st}).sentAt(time.Now()) < 1<<20 {
				if time.Now().After(deadline) {
					t.Fatalf("the stream to %s does not move\n%s\n%s", ap(f.remote, p), st.Stdout(), n.diag())
				}
				time.Sleep(50 * time.Millisecond)
			}
			bits := 32
			if f.remote.Is6() {
				bits = 128
			}
			route := netip.PrefixFrom(f.remote, bits).String()
			sbRun(t, sb, sb.HostNS, "ip", "route", "add", "blackhole", route)
			defer sbRun(t, sb, sb.HostNS, "ip", "route", "del", "blackhole", route)
			vanished := time.Now()
			line := st.WaitLine(t, `{"sent"`, 20*time.Second)
			aborted := time.Now()
			var r streamResult
			if err := json.Unmarshal([]byte(line), &r); err != nil || !r.Aborted {
				t.Fatalf("stream to a vanished peer: %q (%v), want it stalled and aborted\n%s", line, err, n.diag())
			}
			d := n.waitState(t, 1, 0, base+1, 3*time.Second)
			t.Logf("sent %d bytes, stalled %v after the peer vanished, aborted; connection freed %v after the abort",
				r.Sent, aborted.Sub(vanished).Round(time.Millisecond), d.Round(time.Millisecond))
		})
	}
	r := by.finish(5 * time.Second)
	t.Logf("bystander: %d bytes byte-exact, longest stall %.0f ms", r.Sent, r.MaxStallMs)
	n.waitState(t, 0, 0, base, 3*time.Second)
}

// peerReset runs the resetter helper at server, listening on listen, and
// tcptool's reset victim at client, connecting to to, and checks that
// the victim sees ECONNRESET within 2 s of the reset.
func peerReset(t *testing.T, n *tcpNS, server, client place, listen, to string) {
	t.Helper()
	srv := server.startHelper(t, n.sb, "resetter", "-l", listen, "-after", "1048576", "-sleep", "1s")
	srv.WaitLine(t, "ready", 10*time.Second)
	v := client.run(t, n.sb, 30*time.Second, "reset", "-to", to, "-role", "victim", "-timeout", "20s")
	line := srv.WaitLine(t, "reset_ns", 10*time.Second)
	var rs struct {
		ResetNs int64 `json:"reset_ns"`
	}
	var vs resetResult
	if err := errors.Join(json.Unmarshal([]byte(line), &rs), jsonLine(v.stdout, `{"role"`, &vs)); err != nil {
		t.Fatalf("%v\nvictim %s\n%s", err, v, n.diag())
	}
	d := time.Duration(vs.ErrorNs - rs.ResetNs)
	if !strings.Contains(vs.Errno, "ECONNRESET") || d > 2*time.Second {
		t.Errorf("victim saw %q %v after the reset, want ECONNRESET within 2 s\nvictim %s\n%s", vs.Errno, d, v, n.diag())
		return
	}
	t.Logf("victim sent %d bytes, saw %s %v after the reset", vs.Sent, vs.Errno, d.Round(time.Microsecond))
}

// gpExit waits for gopasst to exit after a fault and checks that it did
// so cleanly: within limit, with status want, no panic, no data race, its
// PID file removed.
func gpExit(t *testing.T, n *tcpNS, want int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	code, err := n.p.Wait(limit)
	took := time.Since(start)
	stderr := n.p.Stderr()
	if err != nil || code != want {
		t.Errorf("gopasst: exit %d (%v) after %v, want %d within %v\nstderr:\n%s", code, err, took, want, limit, stderr)
	}
	for _, bad := range []string{"panic:", "WARNING: DATA RACE", "fatal error:"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("gopasst's stderr has %q:\n%s", bad, stderr)
		}
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(n.gpid)); err == nil {
		t.Errorf("gopasst (pid %d) still exists", n.gpid)
	}
	return took
}

// TestTCPNamespaceGone takes the namespace away from under open
// connections, three of them mid-transfer: the namespace's client sending
// to a sink on the host's loopback (through the tap), a remote client
// sending to a sink in the namespace behind -t (through the tap), and the
// namespace's client sending to a sink on the host's loopback behind -T
// (spliced). Either every process in the namespace is killed ("killed":
// gopasst must exit with the command's status, 137), or the tap device
// is deleted in the namespace ("tap-deleted": the data path stops,
// gopasst must exit with status 1 and say so). Either way within 3 s,
// cleanly (no panic, no race), its PID file gone, and each host-side
// peer must see its connection end (EOF or reset) within 5 s, having
// received a byte-exact prefix of what was sent.
func TestTCPNamespaceGone(t *testing.T) {
	for _, how := range []string{"killed", "tap-deleted"} {
		t.Run(how, func(t *testing.T) {
			sb := sandbox.New(t)
			tPort, TPort := nextPort(), nextPort()
			n := startNS(t, sb, gopasst, nil, true, fwdArgs(strconv.Itoa(int(tPort)), strconv.Itoa(int(TPort)))...)
			f := families[0]
			var tools []*sandbox.Proc
			stop := filepath.Join(t.TempDir(), "never")

			// Out through the tap.
			p := nextPort()
			s1 := hostPlace(sb).start(t, sb, "serve", "-l", ap(f.loopback, p), "-mode", "sink", "-count", "1", "-timeout", "60s")
			s1.WaitLine(t, "ready", 10*time.Second)
			tools = append(tools, n.place().startHelper(t, sb, "stream", "-to", ap(f.gw, p), "-stop", stop, "-rate", "4194304"))
			// In through the tap, behind -t: the remote host's stream
			// into a sink in the namespace.
			s2 := n.place().start(t, sb, "serve", "-l", ap(f.anyAddr, tPort), "-mode", "sink", "-count", "1", "-timeout", "60s")
			s2.WaitLine(t, "ready", 10*time.Second)
			tools = append(tools, s2)
			c2 := worldPlace(sb).startHelper(t, sb, "stream", "-to", ap(f.host, tPort), "-stop", stop, "-rate", "4194304")
			// Spliced, behind -T.
			s3 := hostPlace(sb).start(t, sb, "serve", "-l", ap(f.loopback, TPort), "-mode", "sink", "-count", "1", "-timeout", "60s")
			s3.WaitLine(t, "ready", 10*time.Second)
			tools = append(tools, n.place().startHelper(t, sb, "stream", "-to", ap(f.loopback, TPort), "-stop", stop, "-rate", "4194304"))
			for _, tl := range []*sandbox.Proc{tools[0], c2, tools[2]} {
				tl.WaitLine(t, "connected", 10*time.Second)
			}
			time.Sleep(500 * time.Millisecond)
			c := n.counters(t)
			// The first counts every connection, spliced or not.
			if c[tcpActive] != 3 || c[tcpActiveSplice] != 1 {
				t.Fatalf("%q %d and %q %d, want 3 and 1\n%s", tcpActive, c[tcpActive], tcpActiveSplice, c[tcpActiveSplice], n.diag())
			}

			fault := time.Now()
			want := 1
			if how == "killed" {
				want = 128 + int(syscall.SIGKILL)
				for _, tl := range tools {
					tl.Kill()
				}
				pid, _ := strconv.Atoi(n.pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			} else {
				n.nsRun(t, "ip", "link", "del", "eth0")
			}
			took := gpExit(t, n, want, 3*time.Second)
			if how == "tap-deleted" && !strings.Contains(n.p.Stderr(), "data path stopped") {
				t.Errorf("gopasst did not say why it stopped:\n%s", n.p.Stderr())
			}
			t.Logf("gopasst exited %v after the fault", took.Round(time.Millisecond))

			// The host's side: the sinks end; the remote stream fails.
			for i, s := range []*sandbox.Proc{s1, s3} {
				line, err := s.AwaitLine(`{"conn"`, 5*time.Second-time.Since(fault))
				var r serveResult
				if err == nil {
					err = json.Unmarshal([]byte(line), &r)
				}
				if err != nil || r.BadAt >= 0 || r.Received == 0 {
					t.Errorf("host sink %d: %+v (%v), want the connection ended within 5 s, a byte-exact prefix received", i, r, err)
				} else {
					t.Logf("host sink %d: %d bytes byte-exact, then %q", i, r.Received, r.Err)
				}
			}
			line, err := c2.AwaitLine(`{"sent"`, 5*time.Second-time.Since(fault))
			var r streamResult
			if err == nil {
				err = json.Unmarshal([]byte(line), &r)
			}
			if err != nil || r.Err == "" {
				t.Errorf("remote stream into the namespace: %+v (%v), want it failed within 5 s", r, err)
			} else {
				t.Logf("remote stream: %d bytes sent, then %q", r.Sent, r.Err)
			}
		})
	}
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pacedLoop keeps a helper's transfer loop to a rate of bytes per
// second, prints "progress UNIXMS BYTES" every 200 ms for the test to
// follow, and looks every 20 ms for the file whose appearance ends it.
type pacedLoop struct {
	stop                       string
	rate                       float64
	start, lastPrint, lastStat time.Time
}

func newPacedLoop(stop string, rate float64) *pacedLoop {
	now := time.Now()
	return &pacedLoop{stop: stop, rate: rate, start: now, lastPrint: now, lastStat: now}
}

// step is called at the top of each round with the bytes moved so far.
// It returns the time, whether the stop file has appeared (end), and
// whether the loop is ahead of its rate: then step has slept a little
// and the round should start again.
func (p *pacedLoop) step(done int64) (now time.Time, end, ahead bool) {
	now = time.Now()
	if now.Sub(p.lastPrint) >= 200*time.Millisecond {
		fmt.Printf("progress %d %d\n", now.UnixMilli(), done)
		p.lastPrint = now
	}
	if now.Sub(p.lastStat) >= 20*time.Millisecond {
		p.lastStat = now
		if _, err := os.Stat(p.stop); err == nil {
			return now, true, false
		}
	}
	if due := p.start.Add(time.Duration(float64(done) / p.rate * float64(time.Second))); due.After(now) {
		time.Sleep(min(due.Sub(now), 20*time.Millisecond))
		return now, false, true
	}
	return now, false, false
}
