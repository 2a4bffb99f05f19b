package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// TCP ports of the TCP scenarios, which run the translators with
// "-t portTCPFwd -T portTCPNS" (see [translatorArgs]).
const (
	// portTCPFwd is forwarded from the host into the namespace (-t).
	portTCPFwd = 10011
	// portTCPNS is forwarded from the namespace's loopback to the
	// host's (-T).
	portTCPNS = 10012
	// portTCPHost is not forwarded: the namespace reaches it on the
	// host's loopback through the tap, as the gateway address.
	portTCPHost = 10013
)

// Sections of the TCP rows, after all the UDP ones.
const (
	secTCPGoodput = secRSS + 1 + iota
	secTCPPerCPU
	secTCPSleeps
	secTCPRR
	secTCPConn
	secTCPRSS
)

// The four TCP paths of a translator: connections the namespace opens to
// the gateway, and connections from a non-loopback address to the -t
// port on the host, cross the tap; loopback connections to the -T or -t
// port are spliced, socket to socket.
var (
	tcpTapNSHost = Path{Name: "tap-ns-host", Label: "tap ns→host", Via: "tap", Sender: InNS, Receiver: OnHost,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Gateway, portTCPHost) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portTCPHost) }}
	tcpTapHostNS = Path{Name: "tap-host-ns", Label: "tap host→ns", Via: "tap", Sender: OnHost, Receiver: InNS,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Host, portTCPFwd) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Any, portTCPFwd) }}
	tcpSpliceNSHost = Path{Name: "splice-ns-host", Label: "splice ns→host", Via: "splice", Sender: InNS, Receiver: OnHost,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portTCPNS) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portTCPNS) }}
	tcpSpliceHostNS = Path{Name: "splice-host-ns", Label: "splice host→ns", Via: "splice", Sender: OnHost, Receiver: InNS,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portTCPFwd) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Any, portTCPFwd) }}
)

// tcpScenarios returns the TCP scenarios, in the order of a repetition.
// Their names start with "tcp/" and end with the measurement, so that
// -run patterns written for the UDP scenarios ("goodput/tap", "rr/")
// do not select them.
func tcpScenarios() []Scenario {
	var out []Scenario
	for _, p := range []Path{tcpTapNSHost, tcpTapHostNS, tcpSpliceNSHost, tcpSpliceHostNS} {
		for _, f := range families {
			out = append(out, Scenario{Name: fmt.Sprintf("tcp/%s/%s/goodput", p.Name, f.Name), TCP: true,
				Variants: p.Via == "tap", Baseline: kernelBaseline(p),
				Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
					return b.tcpGoodput(ctx, in, t, p, f, 1)
				}})
		}
	}
	// The tap paths with parallel connections.
	for _, p := range []Path{tcpTapNSHost, tcpTapHostNS} {
		f := families[0]
		out = append(out, Scenario{Name: fmt.Sprintf("tcp/%s/%s/goodput-%dconn", p.Name, f.Name, goodputConns), TCP: true,
			Baseline: kernelVeth,
			Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
				return b.tcpGoodput(ctx, in, t, p, f, goodputConns)
			}})
	}
	// The tap paths again with the namespace's MTU at 1500, where
	// segmentation offload makes the difference.
	for _, p := range []Path{tcpTapNSHost, tcpTapHostNS} {
		p.Name += "-mtu1500"
		p.Label += ", MTU 1500"
		for _, f := range families {
			out = append(out, Scenario{Name: fmt.Sprintf("tcp/%s/%s/goodput", p.Name, f.Name), TCP: true,
				Variants: true, Args: []string{"-m", "1500"}, Baseline: kernelVeth,
				Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
					return b.tcpGoodput(ctx, in, t, p, f, 1)
				}})
		}
	}
	for _, p := range []Path{tcpTapNSHost, tcpSpliceNSHost} {
		for _, f := range families {
			out = append(out, Scenario{Name: fmt.Sprintf("tcp/%s/%s/rr", p.Name, f.Name), TCP: true,
				Baseline: kernelBaseline(p),
				Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
					return b.tcpRR(ctx, in, t, p, f)
				}})
		}
	}
	for _, f := range families {
		p := tcpTapNSHost
		out = append(out, Scenario{Name: fmt.Sprintf("tcp/%s/%s/conn", p.Name, f.Name), TCP: true,
			Baseline: kernelVeth,
			Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
				return b.tcpConn(ctx, in, t, p, f)
			}})
	}
	// The host connects to a -t port, the server in the namespace.
	for _, f := range families[:1] {
		p := tcpTapHostNS
		out = append(out, Scenario{Name: fmt.Sprintf("tcp/%s/%s/conn", p.Name, f.Name), TCP: true,
			Baseline: kernelVeth,
			Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
				return b.tcpConn(ctx, in, t, p, f)
			}})
	}
	return append(out, tcpConnsScenarios()...)
}

// tcpListening reports whether a socket in pid's network namespace
// listens on port (name "tcp" or "tcp6"), on any address or, with
// wildcard, on the unspecified address.
func tcpListening(pid int, name string, port int, wildcard bool) bool {
	suffix := fmt.Sprintf(":%04X", port)
	for _, f := range procLines(pid, name) {
		if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], suffix) &&
			(!wildcard || strings.Trim(strings.TrimSuffix(f[1], suffix), "0") == "") {
			return true
		}
	}
	return false
}

// tcpListeningBoth reports whether sockets in pid's network namespace
// listen on port for IPv4 and IPv6. The reference listens for -t with
// one dual-stack socket on [::] (it shows only in tcp6); gopasst with one
// socket per family.
func tcpListeningBoth(pid, port int) bool {
	return tcpListening(pid, "tcp6", port, false) &&
		(tcpListening(pid, "tcp", port, false) || tcpListening(pid, "tcp6", port, true))
}

// tcpGoodput streams over path p from conns connections as fast as the
// sender's sockets take the data, and measures, after the warm-up, the
// bytes that reach the sink intact per second, and the translator's CPU
// time per gigabyte.
func (b *Bench) tcpGoodput(ctx context.Context, in *Instance, t *Trial, p Path, f Family, conns int) error {
	p = in.route(p)
	t.Via = p.Via
	tap0, _ := in.TapBytes()
	sink, err := b.startLoad(p.Receiver, in, "tcpsink", "-l", p.Listen(f).String())
	if err != nil {
		return err
	}
	defer sink.Kill()
	sendArgs := []string{"tcpsend", "-to", p.To(f).String()}
	if conns > 1 {
		sendArgs = []string{"tcpsendn", "-to", p.To(f).String(), "-flows", strconv.Itoa(conns)}
	}
	send, err := b.startLoad(p.Sender, in, sendArgs...)
	if err != nil {
		return err
	}
	defer send.Kill()
	if err := sleep(ctx, b.opt.Warmup); err != nil {
		return err
	}
	m := &measured{}
	if m.w0, err = b.snapshot(in, sink, send); err != nil {
		return err
	}
	if err := sleep(ctx, b.opt.Dur); err != nil {
		return err
	}
	if m.w1, err = b.snapshot(in, sink, send); err != nil {
		return err
	}
	if m.sent, err = send.Stop(); err != nil {
		return err
	}
	if m.recv, err = sink.Stop(); err != nil {
		return err
	}
	tap1, _ := in.TapBytes()
	if err := in.Err(); err != nil {
		return err
	}
	m.rss = in.RSS()
	t.Moved = m.w1.sink.Bytes - m.w0.sink.Bytes
	t.TapBytes = tap1 - tap0
	t.checkVia(m.recv.Bytes)
	t.note("measured: sent %d B, received %d B intact, tap drops %d, translator CPU %.3f s in %.2f s",
		m.w1.send.Bytes-m.w0.send.Bytes, t.Moved, m.w1.drop-m.w0.drop, m.cpu(), m.secs())
	if m.recv.Msgs != uint64(conns) {
		t.note("sink accepted %d connections", m.recv.Msgs)
	}
	if t.Bad = m.recv.Bad; t.Bad > 0 {
		t.note("stream content wrong on %d connections", t.Bad)
	}
	if m.recv.Errors > 0 {
		t.note("sink errors %d (%s)", m.recv.Errors, m.recv.LastErr)
	}
	label := fmt.Sprintf("%s, %s", p.Label, f.Label)
	if conns > 1 {
		label += fmt.Sprintf(", %d connections", conns)
	}
	t.add(secTCPGoodput, "TCP goodput, "+label, "Mbit/s ↑", float64(t.Moved)*8/m.secs()/1e6)
	if t.Moved > 0 && m.cpu() > 0 {
		t.add(secTCPPerCPU, "TCP translator CPU time per GB, "+label, "ms/GB ↓", m.cpu()*1e3/(float64(t.Moved)/1e9))
	}
	if t.Moved > 0 {
		t.add(secTCPSleeps, "TCP translator wake-ups per MB (blocking waits of its threads), "+label, "1/MB ↓",
			float64(m.w1.sleeps-m.w0.sleeps)/(float64(t.Moved)/1e6))
	}
	t.add(secTCPRSS, "Peak RSS under TCP load (largest of the TCP goodput trials)", "MiB ↓", m.rss)
	t.Metrics[len(t.Metrics)-1].MaxPerRep = true
	return nil
}

// tcpFrameMin is the least a TCP segment takes on the tap (Ethernet,
// IPv4 and TCP headers, no options, no payload): the path check of the
// request/response and connection trials, which move almost no payload,
// counts this much per segment the tap must have carried.
const tcpFrameMin = 14 + 20 + 20

// tcpRR measures transactions of one byte each way, one at a time, on
// one connection from a client in the namespace to an echo server on the
// host, over path p (the tap or splice, namespace to host).
func (b *Bench) tcpRR(_ context.Context, in *Instance, t *Trial, p Path, f Family) error {
	p = in.route(p)
	t.Via = p.Via
	echo, err := b.startLoad(p.Receiver, in, "tcpecho", "-l", p.Listen(f).String())
	if err != nil {
		return err
	}
	defer echo.Kill()
	tap0, _ := in.TapBytes()
	rr, err := b.startLoad(p.Sender, in, "tcprr", "-to", p.To(f).String(), "-dur", b.opt.RRDur.String())
	if err != nil {
		return err
	}
	defer rr.Kill()
	res, err := rr.Final(b.opt.RRDur + time.Minute)
	if err != nil {
		return err
	}
	if _, err := echo.Stop(); err != nil {
		return err
	}
	if err := t.ended(in, tap0, res.Bytes); err != nil {
		return err
	}
	// Every transaction, warm-up included, is at least a request and an
	// answer segment on the tap.
	t.checkVia(res.Msgs * 2 * tcpFrameMin)
	t.note("%d transactions in %.2f s, p50 %.0f µs", res.Dgrams, res.Secs, res.P50us)
	label := fmt.Sprintf("1 B, %s, %s", p.Via, f.Label)
	if res.Secs > 0 {
		t.add(secTCPRR, "TCP transactions per second, "+label, "1/s ↑", float64(res.Dgrams)/res.Secs)
	}
	t.add(secTCPRR, "TCP round-trip time p99, "+label, "µs ↓", res.P99us)
	return nil
}

// tcpConn measures connections per second, one at a time, from a client
// in the namespace to a server on the host over path p: the client
// connects, the server accepts and closes, the client reads the end of
// the stream and closes.
func (b *Bench) tcpConn(_ context.Context, in *Instance, t *Trial, p Path, f Family) error {
	p = in.route(p)
	t.Via = p.Via
	srv, err := b.startLoad(p.Receiver, in, "tcpaccept", "-l", p.Listen(f).String())
	if err != nil {
		return err
	}
	defer srv.Kill()
	tap0, _ := in.TapBytes()
	cl, err := b.startLoad(p.Sender, in, "tcpconn", "-to", p.To(f).String(), "-dur", b.opt.RRDur.String())
	if err != nil {
		return err
	}
	defer cl.Kill()
	res, err := cl.Final(b.opt.RRDur + time.Minute)
	if err != nil {
		return err
	}
	acc, err := srv.Stop()
	if err != nil {
		return err
	}
	if err := in.Err(); err != nil {
		return err
	}
	tap1, _ := in.TapBytes()
	t.TapBytes = tap1 - tap0
	// SYN, SYN-ACK and the two FINs at least, per connection.
	t.checkVia(res.Msgs * 4 * tcpFrameMin)
	t.note("%d connections in %.2f s (%d in all, the server accepted %d)", res.Dgrams, res.Secs, res.Msgs, acc.Dgrams)
	if acc.Dgrams < res.Msgs {
		t.note("the server accepted fewer connections than the client completed")
	}
	if t.Bad = res.Bad; t.Bad > 0 {
		t.note("%d connections did not end in a clean end of stream", res.Bad)
	}
	if res.Errors > 0 {
		t.note("client errors %d (%s)", res.Errors, res.LastErr)
		// gopasst's counters say which of its paths the errors took.
		if m, err := in.gopasstCounters(); err == nil {
			for _, k := range slices.Sorted(maps.Keys(m)) {
				if m[k] != 0 && (strings.Contains(k, "drop") || strings.Contains(k, "reset") || strings.Contains(k, "superseded")) {
					t.note("%s %d", k, m[k])
				}
			}
		}
	}
	if res.Secs > 0 {
		t.add(secTCPConn, fmt.Sprintf("TCP connections per second (connect, server closes, client closes), %s, %s", p.Label, f.Label),
			"1/s ↑", float64(res.Dgrams)/res.Secs)
	}
	return nil
}

// The TCP load tools. Their options are those of [loadMain]:
//
//	tcpsink   -l ADDR:PORT       accept connections, count the bytes of the stream pattern that arrive intact
//	tcpsend   -to ADDR:PORT      one connection, write the stream pattern as fast as the socket takes it
//	tcpsendn  -to ADDR:PORT -flows N   the same on N connections at once (tcpmulti.go)
//	tcpecho   -l ADDR:PORT       accept connections, send back everything
//	tcprr     -to ADDR:PORT -dur D   one connection, one byte out and back at a time
//	tcpaccept -l ADDR:PORT       accept connections and close them at once
//	tcpconn   -to ADDR:PORT -dur D   connect, read the end of stream, close, again
//	tcpopen   -to ADDR:PORT -flows N   open N connections, a request and its answer each, hold them (tcpconns.go)
//	tcpkeep   -l ADDR:PORT       answer each connection's request, keep them open; on stop end them all
var tcpTools = map[string]func(loadOpts, *control) (Counters, error){
	"tcpsink": runTCPSink, "tcpsend": runTCPSend, "tcpsendn": runTCPSendN, "tcpecho": runTCPEcho,
	"tcprr": runTCPRR, "tcpaccept": runTCPAccept, "tcpconn": runTCPConn,
	"tcpopen": runTCPOpen, "tcpkeep": runTCPKeep,
}

// The stream pattern: byte i of every connection's stream is
// byte i mod tcpPeriod of a pseudo-random sequence from a fixed seed.
// The period is prime and not a multiple of any read or write size, so
// that data lost, repeated or moved compares unequal.
const (
	tcpPeriod = 999983
	// tcpChunk is the size of the sender's writes and the sink's
	// reads.
	tcpChunk = 256 << 10
)

var tcpSeed = [32]byte([]byte("gopasst bench: TCP stream, v1..."))

// tcpStream returns the pattern, tcpPeriod bytes and again the first
// tcpChunk of them, so that any chunk of the stream is one slice of it.
var tcpStream = sync.OnceValue(func() []byte {
	b := make([]byte, tcpPeriod+tcpChunk)
	_, _ = rand.NewChaCha8(tcpSeed).Read(b[:tcpPeriod])
	copy(b[tcpPeriod:], b[:tcpChunk])
	return b
})

// tcpSocket returns a TCP socket of ap's family (IPv6 sockets are
// IPv6-only).
func tcpSocket(ap netip.AddrPort) (int, error) {
	family := unix.AF_INET
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// setTimeouts sets the receive and send timeouts of fd (accept and
// connect obey them too), so that blocking loops notice "stop".
func setTimeouts(fd int, rcv, snd time.Duration) error {
	tv := unix.NsecToTimeval(rcv.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	tv = unix.NsecToTimeval(snd.Nanoseconds())
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

// tcpListen returns a socket listening on ap whose accept times out
// after 100 ms.
func tcpListen(ap netip.AddrPort) (int, error) {
	fd, err := tcpSocket(ap)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := setTimeouts(fd, 100*time.Millisecond, 0); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %v: %w", ap, err)
	}
	return fd, nil
}

// tcpDial returns a blocking socket connected to ap within timeout.
func tcpDial(ap netip.AddrPort, timeout time.Duration) (int, error) {
	if err := checkTarget(ap); err != nil {
		return -1, err
	}
	fd, err := tcpSocket(ap)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %v: %w", ap, err)
	}
	// Non-blocking, so that a signal cannot interrupt it halfway.
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail(err)
	}
	if err := unix.Connect(fd, sockaddr(ap)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fail(unix.ETIMEDOUT)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return fail(err)
		}
		break
	}
	if soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soerr != 0 {
		if err == nil {
			err = unix.Errno(soerr)
		}
		return fail(err)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return fail(err)
	}
	return fd, nil
}

// again reports whether a socket call timed out (so the loop looks at
// "stop") or was interrupted, and should just be retried.
func again(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR)
}

// serve accepts connections on o.listen until stopped and runs conn for
// each in a goroutine of its own, counting them in Msgs; it waits for
// every conn to return.
func serve(o loadOpts, c *control, st *stats, conn func(fd int)) (Counters, error) {
	lfd, err := tcpListen(o.listen)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(lfd)
	var wg sync.WaitGroup
	c.start(st.snapshot)
	for !c.stopped() {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			if !again(err) {
				st.fail(err)
				time.Sleep(time.Millisecond)
			}
			continue
		}
		st.msgs.Add(1)
		wg.Go(func() {
			defer unix.Close(fd)
			conn(fd)
		})
	}
	wg.Wait()
	return st.snapshot(), nil
}

// runTCPSink accepts connections on o.listen and counts, in Bytes, the
// bytes of each stream that arrive intact: equal to the stream pattern
// at their offset. A connection whose stream goes wrong counts once in
// Bad, and nothing of it counts from there on.
func runTCPSink(o loadOpts, c *control) (Counters, error) {
	var st stats
	want := tcpStream()
	return serve(o, c, &st, func(fd int) {
		if err := setTimeouts(fd, 100*time.Millisecond, 0); err != nil {
			st.fail(err)
			return
		}
		buf := make([]byte, tcpChunk)
		var pos uint64
		bad := false
		for !c.stopped() {
			n, err := unix.Read(fd, buf)
			if err != nil {
				if !again(err) {
					st.fail(err)
					return
				}
				continue
			}
			if n == 0 {
				return
			}
			if bad {
				continue
			}
			off := pos % tcpPeriod
			if !bytes.Equal(buf[:n], want[off:off+uint64(n)]) {
				bad = true
				st.bad.Add(1)
				continue
			}
			pos += uint64(n)
			st.bytes.Add(uint64(n))
		}
	})
}

// runTCPSend connects to o.to and writes the stream pattern as fast as
// the socket takes it, until stopped; Bytes counts what the socket took.
// A failed write (a reset, say) ends the tool with an error.
func runTCPSend(o loadOpts, c *control) (Counters, error) {
	fd, err := tcpDial(o.to, 5*time.Second)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	if err := setTimeouts(fd, 0, 100*time.Millisecond); err != nil {
		return Counters{}, err
	}
	var st stats
	src := tcpStream()
	var pos uint64
	c.start(st.snapshot)
	for !c.stopped() {
		off := pos % tcpPeriod
		n, err := unix.Write(fd, src[off:off+tcpChunk])
		if err != nil {
			if again(err) {
				continue
			}
			return st.snapshot(), fmt.Errorf("write after %d bytes: %w", pos, err)
		}
		pos += uint64(n)
		st.bytes.Add(uint64(n))
	}
	return st.snapshot(), nil
}

// writeAll writes all of b to the blocking socket fd.
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		b = b[n:]
	}
	return nil
}

// runTCPEcho accepts connections on o.listen and sends back everything
// each one receives, with TCP_NODELAY; Bytes counts what it echoed.
func runTCPEcho(o loadOpts, c *control) (Counters, error) {
	var st stats
	return serve(o, c, &st, func(fd int) {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			st.fail(err)
			return
		}
		if err := setTimeouts(fd, 100*time.Millisecond, 0); err != nil {
			st.fail(err)
			return
		}
		buf := make([]byte, 65536)
		for !c.stopped() {
			n, err := unix.Read(fd, buf)
			if err != nil {
				if !again(err) {
					st.fail(err)
					return
				}
				continue
			}
			if n == 0 {
				return
			}
			if err := writeAll(fd, buf[:n]); err != nil {
				st.fail(err)
				return
			}
			st.dgrams.Add(1)
			st.bytes.Add(uint64(n))
		}
	})
}

// runTCPAccept accepts connections on o.listen and closes each at once;
// Dgrams counts them.
func runTCPAccept(o loadOpts, c *control) (Counters, error) {
	var st stats
	return serve(o, c, &st, func(int) { st.dgrams.Add(1) })
}

// tcpRRTimeout bounds the wait for an answer, a connection or its end in
// the TCP request/response and connection clients; TCP loses nothing, so
// running into it is an error.
const tcpRRTimeout = 2 * time.Second

// runTCPRR connects to o.to (TCP_NODELAY) and sends one byte at a time,
// waiting for its echo before the next; Bytes counts the answers'
// bytes. A wrong answer, or none within tcpRRTimeout, ends the tool with
// an error.
func runTCPRR(o loadOpts, c *control) (Counters, error) {
	fd, err := tcpDial(o.to, 5*time.Second)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return Counters{}, err
	}
	if err := setTimeouts(fd, tcpRRTimeout, tcpRRTimeout); err != nil {
		return Counters{}, err
	}
	var st stats
	var seq byte
	req, resp := []byte{0}, make([]byte, 16)
	return timed(o, c, &st, nil, func() (bool, error) {
		seq++
		req[0] = seq
		if err := writeAll(fd, req); err != nil {
			return false, fmt.Errorf("write: %w", err)
		}
		for {
			n, err := unix.Read(fd, resp)
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EAGAIN):
				return false, fmt.Errorf("no answer within %v", tcpRRTimeout)
			case err != nil:
				return false, fmt.Errorf("read: %w", err)
			case n == 0:
				return false, errors.New("connection closed by the server")
			case n != 1 || resp[0] != seq:
				return false, fmt.Errorf("answer %x to request %x", resp[:n], seq)
			}
			st.dgrams.Add(1)
			st.bytes.Add(1)
			return true, nil
		}
	})
}

// runTCPConn connects to o.to, waits for the server to close (the end
// of the stream, with no data), closes, and again. Errors count; a
// connection that ends otherwise (data, a reset, a timeout) counts in
// Bad.
func runTCPConn(o loadOpts, c *control) (Counters, error) {
	var st stats
	buf := make([]byte, 16)
	return timed(o, c, &st, nil, func() (bool, error) {
		fd, err := tcpDial(o.to, tcpRRTimeout)
		if err != nil {
			st.fail(err)
			time.Sleep(time.Millisecond)
			return false, nil
		}
		defer unix.Close(fd)
		if err := setTimeouts(fd, tcpRRTimeout, tcpRRTimeout); err != nil {
			return false, err
		}
		for {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || n != 0 {
				if err != nil {
					st.fail(err)
				}
				st.bad.Add(1)
				return false, nil
			}
			st.dgrams.Add(1)
			return true, nil
		}
	})
}
