package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// loadArg is the first argument that makes the benchmark binary run one
// of its load tools instead of the benchmark (see [loadMain]).
const loadArg = "__load"

// magic starts every datagram of the benchmark; a sequence number
// (little-endian uint64) follows it, then the fixed pattern.
var magic = [4]byte{'g', 'p', 'b', '1'}

// hdrLen is the length of the magic and the sequence number.
const hdrLen = 12

// maxDatagram bounds every receive buffer.
const maxDatagram = 65536

// Counters is what a load tool reports, on "snap" and when it stops. Each
// tool fills the fields that make sense for it.
type Counters struct {
	// Dgrams counts datagrams sent (senders) or received intact (sinks),
	// or echoed (echo server).
	Dgrams uint64 `json:"dgrams"`
	// Bytes counts the payload bytes of Dgrams.
	Bytes uint64 `json:"bytes"`
	// Bad counts datagrams received with the wrong size or content.
	Bad uint64 `json:"bad,omitempty"`
	// Msgs counts the messages a sink received, or a segmenting sender
	// sent: with UDP_GRO or UDP_SEGMENT, one message carries many
	// datagrams.
	Msgs uint64 `json:"msgs,omitempty"`
	// Errors counts failed system calls, LastErr names the last one.
	Errors  uint64 `json:"errors,omitempty"`
	LastErr string `json:"lastErr,omitempty"`
	// Lost counts requests of the round-trip client that got no answer in
	// time.
	Lost uint64 `json:"lost,omitempty"`
	// Secs is how long the timed part of the tool ran.
	Secs float64 `json:"secs,omitempty"`
	// P50us and P99us are round-trip latency percentiles, microseconds.
	P50us float64 `json:"p50us,omitempty"`
	P99us float64 `json:"p99us,omitempty"`
	// MeanUs is the mean round-trip time, microseconds (ping).
	MeanUs float64 `json:"meanUs,omitempty"`
}

// stats are a load tool's live counters, read by the control loop.
type stats struct {
	dgrams, bytes, bad, errors, msgs atomic.Uint64
	mu                               sync.Mutex
	lastErr                          string
}

func (s *stats) fail(err error) {
	s.errors.Add(1)
	s.mu.Lock()
	s.lastErr = err.Error()
	s.mu.Unlock()
}

func (s *stats) snapshot() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Counters{Dgrams: s.dgrams.Load(), Bytes: s.bytes.Load(), Bad: s.bad.Load(),
		Msgs: s.msgs.Load(), Errors: s.errors.Load(), LastErr: s.lastErr}
}

// loadOpts are the options of all load tools.
type loadOpts struct {
	listen, to, to6 netip.AddrPort
	size            int
	rate            float64
	dur             time.Duration
	flows           int
	batch           int
	// gro makes the sink receive with UDP_GRO; segs is the number of
	// segments per message of the segmenting sender.
	gro  bool
	segs int
}

// loadMain runs the load tool named by args[0] with the options in
// args[1:] and returns the exit status. Tools print "ready" when their
// sockets are set up, then obey "snap" (print the counters as a JSON line)
// and "stop" (or end of input: print the final counters and exit) on
// standard input. Timed tools (paced, rr) also stop by themselves after
// -dur.
//
//	sink   -l ADDR:PORT -size N [-gro]   count intact datagrams
//	blast  -to ADDR:PORT -size N  send as fast as the kernel allows
//	gso    -to ADDR:PORT -size N -segs K  the same, K datagrams per sendmsg (UDP_SEGMENT)
//	paced  -to ADDR:PORT -size N -rate R -dur D
//	echo   -l ADDR:PORT           send every datagram back
//	rr     -to ADDR:PORT -size N -dur D   one request outstanding
//	flows  -to ADDR:PORT -size N -flows N -rate R   round robin over N sockets
//	neigh  -to ADDR:PORT -to6 ADDR:PORT   resolve both gateways, then exit
//	ping   -to ADDR:0 -size N -dur D   ICMP echo, one request outstanding (ping.go)
//
// and the TCP tools of tcp.go (see [tcpTools]).
func loadMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "load: no tool")
		return 2
	}
	tool := args[0]
	fs := flag.NewFlagSet(tool, flag.ContinueOnError)
	var o loadOpts
	var listen, to string
	fs.StringVar(&listen, "l", "", "listen address")
	fs.StringVar(&to, "to", "", "destination address")
	to6 := fs.String("to6", "", "second destination (neigh)")
	fs.IntVar(&o.size, "size", 1372, "payload size")
	fs.Float64Var(&o.rate, "rate", 0, "datagrams per second")
	fs.DurationVar(&o.dur, "dur", 0, "duration (paced, rr)")
	fs.IntVar(&o.flows, "flows", 1, "sockets (flows)")
	fs.IntVar(&o.batch, "batch", 32, "datagrams per system call")
	fs.BoolVar(&o.gro, "gro", false, "receive with UDP_GRO (sink)")
	fs.IntVar(&o.segs, "segs", 47, "segments per message (gso)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var err error
	if listen != "" {
		if o.listen, err = netip.ParseAddrPort(listen); err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			return 2
		}
	}
	if to != "" {
		if o.to, err = netip.ParseAddrPort(to); err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			return 2
		}
	}
	if *to6 != "" {
		if o.to6, err = netip.ParseAddrPort(*to6); err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			return 2
		}
	}
	if err := errors.Join(checkTarget(o.to), checkTarget(o.to6)); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		return 2
	}
	if o.size < hdrLen || o.size > maxDatagram-100 {
		fmt.Fprintf(os.Stderr, "load: size %d out of range\n", o.size)
		return 2
	}
	run := map[string]func(loadOpts, *control) (Counters, error){
		"sink": runSink, "blast": runBlast, "gso": runGSO, "paced": runPaced,
		"echo": runEcho, "rr": runRR, "flows": runFlows, "neigh": runNeigh,
		"ping": runPing,
	}[tool]
	if run == nil {
		run = tcpTools[tool]
	}
	if run == nil {
		fmt.Fprintf(os.Stderr, "load: unknown tool %q\n", tool)
		return 2
	}
	c := newControl()
	final, err := run(o, c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "load %s: %v\n", tool, err)
		return 1
	}
	c.print(final)
	return 0
}

// checkTarget enforces the benchmark's traffic rule for every sender:
// destinations are loopback addresses or the sandbox's documentation
// addresses (192.0.2.0/24, 2001:db8::/32), which exist only inside the
// benchmark's own namespaces.
func checkTarget(ap netip.AddrPort) error {
	if !ap.IsValid() {
		return nil
	}
	a := ap.Addr().Unmap()
	if a.IsLoopback() || netip.MustParsePrefix("192.0.2.0/24").Contains(a) ||
		netip.MustParsePrefix("2001:db8::/32").Contains(a) {
		return nil
	}
	return fmt.Errorf("refusing to send to %v: only loopback and the sandbox's addresses", a)
}

// control reads commands from standard input and writes JSON lines to
// standard output.
type control struct {
	stop  chan struct{} // closed on "stop" or end of input
	snaps chan struct{} // one per "snap"
	out   *bufio.Writer // standard output
	mu    sync.Mutex    // serialises out
	once  sync.Once     // closes stop
	flag  atomic.Bool   // set with stop, for hot loops
	ready sync.Once     // prints "ready"
}

func newControl() *control {
	c := &control{stop: make(chan struct{}), snaps: make(chan struct{}, 16), out: bufio.NewWriter(os.Stdout)}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			switch sc.Text() {
			case "snap":
				c.snaps <- struct{}{}
			case "stop":
				c.halt()
			}
		}
		c.halt()
	}()
	return c
}

func (c *control) halt() {
	c.once.Do(func() {
		c.flag.Store(true)
		close(c.stop)
	})
}

// stopped reports whether the tool was told to stop.
func (c *control) stopped() bool { return c.flag.Load() }

// start prints "ready" and answers "snap" with stats() from now on.
func (c *control) start(stats func() Counters) {
	c.ready.Do(func() {
		c.mu.Lock()
		fmt.Fprintln(c.out, "ready")
		c.out.Flush()
		c.mu.Unlock()
		go func() {
			for {
				select {
				case <-c.snaps:
					c.print(stats())
				case <-c.stop:
					return
				}
			}
		}()
	})
}

func (c *control) print(v Counters) {
	b, _ := json.Marshal(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out.Write(b)
	c.out.WriteByte('\n')
	c.out.Flush()
}

// udpSocket returns a blocking UDP socket of ap's family (IPv6 sockets
// are IPv6-only).
func udpSocket(ap netip.AddrPort) (int, error) {
	family := unix.AF_INET
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
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

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	a := ap.Addr().Unmap()
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: int(ap.Port())}
}

// bound returns a socket bound to ap with a large receive buffer and a
// receive timeout, so that loops notice "stop".
func bound(ap netip.AddrPort) (int, error) {
	fd, err := udpSocket(ap)
	if err != nil {
		return -1, err
	}
	// SO_RCVBUFFORCE (root) lifts the sysctl cap: the receiver should not
	// be what drops datagrams.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<20)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	return fd, nil
}

// connected returns a socket connected to ap, bound to an ephemeral port.
func connected(ap netip.AddrPort) (int, error) {
	fd, err := udpSocket(ap)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sockaddr(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %v: %w", ap, err)
	}
	return fd, nil
}

// pattern returns size bytes of the benchmark's payload: the magic, room
// for a sequence number, then bytes that repeat with a prime period, so
// that data moved by any offset does not compare equal.
func pattern(size int) []byte {
	b := make([]byte, size)
	copy(b, magic[:])
	for i := hdrLen; i < size; i++ {
		b[i] = byte(i % 251)
	}
	return b
}

// batch is a set of messages for sendmmsg or recvmmsg, each with one
// buffer of its own.
type batch struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
	bufs [][]byte
}

// newBatch makes n messages. For sending, every buffer holds the pattern
// of length size; for receiving (size 0) every buffer is maxDatagram long.
func newBatch(n, size int) *batch {
	b := &batch{hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n), bufs: make([][]byte, n)}
	for i := range n {
		if size > 0 {
			b.bufs[i] = pattern(size)
		} else {
			b.bufs[i] = make([]byte, maxDatagram)
		}
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(len(b.bufs[i]))
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
	}
	return b
}

// mmsg calls sendmmsg or recvmmsg (trap) on the first n messages of b.
func (b *batch) mmsg(trap uintptr, fd, n, flags int) (int, error) {
	r, _, e := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(n), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// number writes sequence numbers seq, seq+1, ... into the first n
// buffers.
func (b *batch) number(seq uint64, n int) {
	for i := range n {
		binary.LittleEndian.PutUint64(b.bufs[i][4:hdrLen], seq+uint64(i))
	}
}

// transient reports whether a send error is one a flooding sender should
// count and carry on after: queues full, or an ICMP error reported on the
// connected socket for an earlier datagram.
func transient(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) ||
		errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EINTR)
}

// runSink counts the datagrams that arrive intact on o.listen: of size
// o.size, with the magic and the pattern. With o.gro it receives with
// UDP_GRO and splits every message at the segment size the kernel reports
// (the last segment of a message may be shorter, and then does not
// count): each segment is a datagram of its own.
func runSink(o loadOpts, c *control) (Counters, error) {
	fd, err := bound(o.listen)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	if o.gro {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1); err != nil {
			return Counters{}, fmt.Errorf("UDP_GRO: %w", err)
		}
	}
	var st stats
	want := pattern(o.size)
	intact := func(d []byte) bool {
		return len(d) == o.size && bytes.Equal(d[:4], magic[:]) && bytes.Equal(d[hdrLen:], want[hdrLen:])
	}
	b := newBatch(o.batch, 0)
	var oobs [][]byte
	if o.gro {
		oobs = make([][]byte, len(b.hdrs))
		for i := range oobs {
			oobs[i] = make([]byte, unix.CmsgSpace(4)*2)
		}
	}
	c.start(st.snapshot)
	for !c.stopped() {
		for i := range oobs {
			b.hdrs[i].Hdr.Control = &oobs[i][0]
			b.hdrs[i].Hdr.SetControllen(len(oobs[i]))
		}
		n, err := b.mmsg(unix.SYS_RECVMMSG, fd, len(b.hdrs), unix.MSG_WAITFORONE)
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				st.fail(err)
			}
			continue
		}
		var good, nbytes, bad uint64
		for i := range n {
			l := int(b.hdrs[i].Len)
			buf := b.bufs[i][:l]
			if l == 0 || b.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
				bad++
				continue
			}
			step := l
			if o.gro {
				if seg := groSize(oobs[i][:b.hdrs[i].Hdr.Controllen]); seg > 0 {
					step = seg
				}
			}
			for off := 0; off < l; off += step {
				if d := buf[off:min(off+step, l)]; intact(d) {
					good++
					nbytes += uint64(len(d))
				} else {
					bad++
				}
			}
		}
		st.msgs.Add(uint64(n))
		st.dgrams.Add(good)
		st.bytes.Add(nbytes)
		st.bad.Add(bad)
	}
	return st.snapshot(), nil
}

// groSize returns the segment size of a UDP_GRO control message in oob,
// or 0 if there is none (the message is one datagram).
func groSize(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_GRO && len(m.Data) >= 4 {
			return int(binary.NativeEndian.Uint32(m.Data))
		}
	}
	return 0
}

// runBlast sends datagrams of o.size to o.to as fast as sendmmsg returns,
// until stopped.
func runBlast(o loadOpts, c *control) (Counters, error) {
	fd, err := connected(o.to)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	var st stats
	b := newBatch(o.batch, o.size)
	var seq uint64
	c.start(st.snapshot)
	for !c.stopped() {
		b.number(seq, len(b.hdrs))
		n, err := b.mmsg(unix.SYS_SENDMMSG, fd, len(b.hdrs), 0)
		if err != nil {
			if !transient(err) {
				return st.snapshot(), err
			}
			st.fail(err)
			continue
		}
		seq += uint64(n)
		st.dgrams.Add(uint64(n))
		st.bytes.Add(uint64(n * o.size))
	}
	return st.snapshot(), nil
}

// runGSO sends like runBlast, but as a segmenting sender does: every
// sendmsg carries o.segs datagrams of o.size bytes in one buffer, with a
// UDP_SEGMENT control message of o.size, and the kernel (or the device)
// cuts it into datagrams. 47 segments of 1372 bytes make 64,484 bytes, a
// "64 KiB" write.
func runGSO(o loadOpts, c *control) (Counters, error) {
	if o.segs < 1 || o.segs*o.size > 65000 {
		return Counters{}, fmt.Errorf("gso: %d segments of %d bytes do not fit a datagram", o.segs, o.size)
	}
	fd, err := connected(o.to)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(o.size))
	one := pattern(o.size)
	buf := make([]byte, 0, o.segs*o.size)
	for range o.segs {
		buf = append(buf, one...)
	}
	var st stats
	var seq uint64
	c.start(st.snapshot)
	for !c.stopped() {
		for i := range o.segs {
			binary.LittleEndian.PutUint64(buf[i*o.size+4:i*o.size+hdrLen], seq+uint64(i))
		}
		if _, err := unix.SendmsgN(fd, buf, oob, nil, 0); err != nil {
			if !transient(err) {
				return st.snapshot(), fmt.Errorf("sendmsg with UDP_SEGMENT: %w", err)
			}
			st.fail(err)
			continue
		}
		seq += uint64(o.segs)
		st.msgs.Add(1)
		st.dgrams.Add(uint64(o.segs))
		st.bytes.Add(uint64(o.segs * o.size))
	}
	return st.snapshot(), nil
}

// runPaced sends o.rate datagrams a second for o.dur (or until stopped),
// in batches as large as the schedule allows, sleeping when ahead.
func runPaced(o loadOpts, c *control) (Counters, error) {
	fd, err := connected(o.to)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	if o.rate <= 0 {
		return Counters{}, errors.New("paced: -rate must be positive")
	}
	var st stats
	b := newBatch(o.batch, o.size)
	c.start(st.snapshot)
	start := time.Now()
	var sent uint64
	for !c.stopped() {
		el := time.Since(start)
		if o.dur > 0 && el >= o.dur {
			break
		}
		due := uint64(o.rate * el.Seconds())
		if due <= sent {
			time.Sleep(time.Duration(float64(time.Second) / o.rate))
			continue
		}
		n := int(min(due-sent, uint64(len(b.hdrs))))
		b.number(sent, n)
		m, err := b.mmsg(unix.SYS_SENDMMSG, fd, n, 0)
		if err != nil {
			if !transient(err) {
				return st.snapshot(), err
			}
			st.fail(err)
			// A datagram the kernel refused counts as sent and lost:
			// the schedule moves on.
			m = 1
		}
		sent += uint64(m)
		st.dgrams.Add(uint64(m))
		st.bytes.Add(uint64(m * o.size))
	}
	final := st.snapshot()
	final.Secs = time.Since(start).Seconds()
	return final, nil
}

// runEcho sends every datagram arriving on o.listen back to its sender.
func runEcho(o loadOpts, c *control) (Counters, error) {
	fd, err := bound(o.listen)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	var st stats
	buf := make([]byte, maxDatagram)
	c.start(st.snapshot)
	for !c.stopped() {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				st.fail(err)
			}
			continue
		}
		if err := unix.Sendto(fd, buf[:n], 0, from); err != nil {
			st.fail(err)
			continue
		}
		st.dgrams.Add(1)
		st.bytes.Add(uint64(n))
	}
	return st.snapshot(), nil
}

// rrTimeout is how long the round-trip client waits for an answer before
// it counts the request as lost and sends the next.
const rrTimeout = 200 * time.Millisecond

// rrWarmup is how many round trips the client makes before it starts
// measuring (flow set-up, neighbour resolution), rrWarmupMax how long it
// tries at most.
const (
	rrWarmup    = 200
	rrWarmupMax = 2 * time.Second
)

// runRR sends one o.size request at a time to o.to and waits for its
// echo; after the warm-up it measures for o.dur. Its socket is not
// connected, and answers count whatever their source address: the
// reference pasta of 2023 answers an IPv6 client in the namespace from
// its link-local address rather than from the address the client sent
// to.
func runRR(o loadOpts, c *control) (Counters, error) {
	fd, err := udpSocket(o.to)
	if err != nil {
		return Counters{}, err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(rrTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return Counters{}, err
	}
	to := sockaddr(o.to)
	var st stats
	req := pattern(o.size)
	resp := make([]byte, maxDatagram)
	var lost, seq uint64
	final, err := timed(o, c, &st, func() { lost = 0 }, func() (bool, error) {
		seq++
		binary.LittleEndian.PutUint64(req[4:hdrLen], seq)
		if err := unix.Sendto(fd, req, 0, to); err != nil {
			if !transient(err) {
				return false, err
			}
			st.fail(err)
			time.Sleep(time.Millisecond)
			return false, nil
		}
		for {
			n, _, err := unix.Recvfrom(fd, resp, 0)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if !errors.Is(err, unix.EAGAIN) {
					st.fail(err)
				}
				lost++
				return false, nil
			}
			if n != len(req) || binary.LittleEndian.Uint64(resp[4:hdrLen]) != seq {
				st.bad.Add(1) // a late answer to an earlier request
				continue
			}
			st.dgrams.Add(1)
			st.bytes.Add(uint64(n))
			return true, nil
		}
	})
	final.Lost = lost
	return final, err
}

// timed runs one transaction after another (once returns false for a
// failed one) for o.dur after a warm-up of rrWarmup good transactions
// (at most rrWarmupMax), and returns the counters: Msgs
// counts the good transactions, warm-up included; Dgrams, Secs, the mean
// and the percentiles cover the measured part. measuring, if not nil,
// runs when the measured part starts (to reset the caller's own counts).
func timed(o loadOpts, c *control, st *stats, measuring func(), once func() (bool, error)) (Counters, error) {
	lat := make([]time.Duration, 0, 1<<20)
	var start time.Time
	warm := time.Now()
	c.start(st.snapshot)
	for !c.stopped() {
		if start.IsZero() && (len(lat) >= rrWarmup || time.Since(warm) >= rrWarmupMax) {
			start = time.Now()
			lat = lat[:0]
			if measuring != nil {
				measuring()
			}
		}
		if !start.IsZero() && time.Since(start) >= o.dur {
			break
		}
		t0 := time.Now()
		ok, err := once()
		if err != nil {
			return st.snapshot(), err
		}
		if ok {
			lat = append(lat, time.Since(t0))
			st.msgs.Add(1)
		}
	}
	final := st.snapshot()
	final.Dgrams = uint64(len(lat))
	if !start.IsZero() {
		final.Secs = time.Since(start).Seconds()
	}
	if len(lat) > 0 {
		var sum time.Duration
		for _, d := range lat {
			sum += d
		}
		final.MeanUs = float64(sum.Nanoseconds()) / float64(len(lat)) / 1e3
		slices.Sort(lat)
		final.P50us = float64(lat[len(lat)/2].Nanoseconds()) / 1e3
		final.P99us = float64(lat[min(len(lat)-1, len(lat)*99/100)].Nanoseconds()) / 1e3
	}
	return final, nil
}

// runFlows opens o.flows sockets connected to o.to (so o.flows source
// ports, o.flows flows in the translator) and sends o.rate datagrams a
// second round robin over them, until stopped.
func runFlows(o loadOpts, c *control) (Counters, error) {
	if o.rate <= 0 {
		return Counters{}, errors.New("flows: -rate must be positive")
	}
	fds := make([]int, 0, o.flows)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for range o.flows {
		fd, err := connected(o.to)
		if err != nil {
			return Counters{}, fmt.Errorf("socket %d of %d: %w", len(fds)+1, o.flows, err)
		}
		fds = append(fds, fd)
	}
	var st stats
	buf := pattern(o.size)
	c.start(st.snapshot)
	start := time.Now()
	var sent uint64
	for !c.stopped() {
		due := uint64(o.rate * time.Since(start).Seconds())
		if due <= sent {
			time.Sleep(time.Duration(float64(time.Second) / o.rate))
			continue
		}
		// At most 256 datagrams between two looks at the clock and at
		// "stop".
		for n := 0; sent < due && n < 256; n, sent = n+1, sent+1 {
			binary.LittleEndian.PutUint64(buf[4:hdrLen], sent)
			if _, err := unix.Write(fds[sent%uint64(len(fds))], buf); err != nil {
				st.fail(err)
				continue
			}
			st.dgrams.Add(1)
			st.bytes.Add(uint64(o.size))
		}
	}
	return st.snapshot(), nil
}

// raiseNofile lifts the open-file limit (soft and hard) to n, for this
// process and the processes it starts, or, without the privilege to raise
// the hard limit, the soft limit to the hard one. It returns the soft
// limit in force. syscall.Setrlimit, unlike a raw system call, also tells
// os/exec not to restore the original soft limit in children.
func raiseNofile(n uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= n {
		return lim.Cur, nil
	}
	want := syscall.Rlimit{Cur: n, Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return n, nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}

// neighTimeout bounds the neighbour resolution of the gateways.
const neighTimeout = 5 * time.Second

// runNeigh makes sure the namespace has resolved the link-layer
// addresses of o.to and o.to6 (the gateways) before a trial starts, so
// that no trial measures the wait for ARP or NDP. It sends one-byte
// datagrams to them (a port nobody listens to on the host's loopback)
// every 20 ms until the kernel's neighbour table has a usable entry for
// both, and fails after neighTimeout.
func runNeigh(o loadOpts, c *control) (Counters, error) {
	var st stats
	c.start(st.snapshot)
	deadline := time.Now().Add(neighTimeout)
	pending := []netip.AddrPort{o.to, o.to6}
	for len(pending) > 0 {
		var still []netip.AddrPort
		for _, ap := range pending {
			if !ap.IsValid() {
				continue
			}
			ok, err := resolved(ap.Addr())
			if err != nil {
				return st.snapshot(), err
			}
			if ok {
				st.dgrams.Add(1)
				continue
			}
			still = append(still, ap)
			fd, err := udpSocket(ap)
			if err != nil {
				return st.snapshot(), err
			}
			if err := unix.Sendto(fd, []byte{0}, 0, sockaddr(ap)); err != nil {
				st.fail(err)
			}
			unix.Close(fd)
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) || c.stopped() {
			return st.snapshot(), fmt.Errorf("neighbours %v not resolved within %v", pending, neighTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return st.snapshot(), nil
}

// resolved reports whether the neighbour table has a link-layer address
// for a.
func resolved(a netip.Addr) (bool, error) {
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := netlink.NeighList(0, family)
	if err != nil {
		return false, err
	}
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if ok && ip.Unmap() == a && n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0 {
			return true, nil
		}
	}
	return false, nil
}
