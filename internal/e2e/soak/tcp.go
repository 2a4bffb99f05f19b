package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// TCP load: every agent runs TCP servers and, one connection after the
// other on each of its paths, TCP clients. The ports are the UDP echo
// ports again (TCP has its own): -T forwards the namespace's loopback
// port tcpHostPort to the host's, -t the host's tcpNSPort to the
// namespace.
const (
	tcpHostPort  = hostEchoPort  // on the host's loopback
	tcpWorldPort = worldEchoPort // on the world's remote addresses
	tcpNSPort    = nsEchoPort    // in the namespace, on every address
)

// tcpPath is one kind of connection an agent opens. bind: bind the
// source address and cycle through a few source ports (see tcpPortsFrom):
// every connection towards the namespace through a -t port does.
type tcpPath struct {
	name string
	from netip.Addr
	to   netip.AddrPort
	bind bool
}

// roleTCPPaths lists the connections each agent opens.
var roleTCPPaths = map[string][]tcpPath{
	"ns": {
		{"tcp ns>gw(tap)/4", nsAddr4, netip.AddrPortFrom(sandbox.GatewayAddr4, tcpHostPort), false},
		{"tcp ns>gw(tap)/6", nsAddr6, netip.AddrPortFrom(sandbox.GatewayAddr6, tcpHostPort), false},
		{"tcp ns>world(tap)/4", nsAddr4, netip.AddrPortFrom(sandbox.RemoteAddr4, tcpWorldPort), false},
		{"tcp ns>world(tap)/6", nsAddr6, netip.AddrPortFrom(sandbox.RemoteAddr6, tcpWorldPort), false},
		{"tcp ns>lo(splice)/4", lo4, netip.AddrPortFrom(lo4, tcpHostPort), false},
		{"tcp ns>lo(splice)/6", lo6, netip.AddrPortFrom(lo6, tcpHostPort), false},
	},
	"host": {
		{"tcp host-lo>ns(splice)/4", lo4, netip.AddrPortFrom(lo4, tcpNSPort), true},
		{"tcp host-lo>ns(splice)/6", lo6, netip.AddrPortFrom(lo6, tcpNSPort), true},
		{"tcp host>ns(tap)/4", sandbox.HostAddr4, netip.AddrPortFrom(sandbox.HostAddr4, tcpNSPort), true},
		{"tcp host>ns(tap)/6", sandbox.HostAddr6, netip.AddrPortFrom(sandbox.HostAddr6, tcpNSPort), true},
	},
	"world": {
		{"tcp world>ns(tap)/4", sandbox.RemoteAddr4, netip.AddrPortFrom(sandbox.HostAddr4, tcpNSPort), true},
		{"tcp world>ns(tap)/6", sandbox.RemoteAddr6, netip.AddrPortFrom(sandbox.HostAddr6, tcpNSPort), true},
	},
}

// tcpPortsFrom is the first source port of the clients of the world
// and the host (below both ephemeral ranges: gopasst binds a spliced
// host client's port in the namespace); each client cycles through
// tcpPortsEach of them, so that a four-tuple comes back seconds later,
// while the namespace may still hold the last connection with it in
// TIME_WAIT: gopasst's SYN must then open the new one at once (its
// initial sequence number is above the old connection's, or the
// namespace's ACK of the old one gets a RST that ends it). A port the
// client's own side still holds counts as a bind error.
const (
	tcpPortsFrom = 20000
	tcpPortsEach = 64
)

// roleTCPServers lists the TCP servers of each agent.
var roleTCPServers = map[string][]netip.AddrPort{
	"ns":    {netip.AddrPortFrom(netip.IPv4Unspecified(), tcpNSPort), netip.AddrPortFrom(netip.IPv6Unspecified(), tcpNSPort)},
	"host":  {netip.AddrPortFrom(lo4, tcpHostPort), netip.AddrPortFrom(lo6, tcpHostPort)},
	"world": {netip.AddrPortFrom(sandbox.RemoteAddr4, tcpWorldPort), netip.AddrPortFrom(sandbox.RemoteAddr6, tcpWorldPort)},
}

// rolePortRange is the ephemeral port range (net.ipv4.ip_local_port_range,
// IPv6 included) of the namespace's and the host's agents. gopasst binds
// a spliced client's port on the other side (the host's loopback for the
// namespace's clients, the namespace's address for the host's), so the
// two ranges must not meet or a splice could find its port taken.
var rolePortRange = map[string]string{"ns": "32768 45999", "host": "46000 60999"}

// tcpMode is what a connection does; the client says which in its
// request header.
type tcpMode uint8

const (
	modeShort           tcpMode = iota // small request, small response, close
	modeBulk                           // megabytes both ways at once
	modeHalfClose                      // the client shuts its write side after its bytes; the server answers after EOF
	modeServerHalfClose                // the server sends and shuts its write side first; the client sends after EOF
	modeClientReset                    // the client closes with a zero linger (RST) in the middle of the transfer
	modeServerReset                    // the server closes with a zero linger in the middle of the client's bytes
	modeSlowClient                     // the client reads the response in small bites with pauses
	modeSlowServer                     // the server reads the request in small bites with pauses
	numModes
)

var modeNames = [numModes]string{"short", "bulk", "half-close", "server-half-close", "client-reset", "server-reset", "slow-client", "slow-server"}

// tcpDeadline bounds every connection, on both ends: a connection that
// hangs fails instead of stalling its worker.
const tcpDeadline = 30 * time.Second

// The request header, client to server:
//
//	0:8   magic "SOAKTCP1"
//	8:16  connection id (unique per connection)
//	16:24 N, the bytes the client sends after the header
//	24:32 M, the bytes the server sends
//	32:40 K, the bytes the server reads before it resets (modeServerReset)
//	40    mode
//	44:48 CRC-32C of bytes 0:44
//
// The payload each way is a pseudo-random stream seeded by the connection
// id and the direction (stream), verified byte for byte as it is read.
// After its M bytes the server sends a trailer, except where it resets or
// shuts its write side first:
//
//	0:8   bytes of the client's it read, all intact
//	8:12  0, or 1 if any byte was not what the client sent
//	12:16 CRC-32C of bytes 0:12
const (
	tcpMagic   = "SOAKTCP1"
	tcpHdrLen  = 48
	trailerLen = 16
)

type tcpHeader struct {
	id      uint64
	n, m, k int64
	mode    tcpMode
}

func (h *tcpHeader) put(b []byte) {
	clear(b[:tcpHdrLen])
	copy(b, tcpMagic)
	binary.BigEndian.PutUint64(b[8:], h.id)
	binary.BigEndian.PutUint64(b[16:], uint64(h.n))
	binary.BigEndian.PutUint64(b[24:], uint64(h.m))
	binary.BigEndian.PutUint64(b[32:], uint64(h.k))
	b[40] = byte(h.mode)
	binary.BigEndian.PutUint32(b[44:], crc32.Checksum(b[:44], castagnoli))
}

// parseHeader reports whether b is an intact request header.
func parseHeader(b []byte, h *tcpHeader) bool {
	if string(b[:8]) != tcpMagic || binary.BigEndian.Uint32(b[44:]) != crc32.Checksum(b[:44], castagnoli) {
		return false
	}
	*h = tcpHeader{id: binary.BigEndian.Uint64(b[8:]), n: int64(binary.BigEndian.Uint64(b[16:])),
		m: int64(binary.BigEndian.Uint64(b[24:])), k: int64(binary.BigEndian.Uint64(b[32:])), mode: tcpMode(b[40])}
	return h.mode < numModes && h.n >= 0 && h.m >= 0 && h.k >= 0 && h.k <= h.n
}

func putTrailer(b []byte, got int64, bad bool) {
	binary.BigEndian.PutUint64(b[0:], uint64(got))
	binary.BigEndian.PutUint32(b[8:], 0)
	if bad {
		binary.BigEndian.PutUint32(b[8:], 1)
	}
	binary.BigEndian.PutUint32(b[12:], crc32.Checksum(b[:12], castagnoli))
}

// stream is the pseudo-random byte stream of one direction of one
// connection (xorshift64), produced in pieces of any size.
type stream struct {
	x   uint64
	w   [8]byte
	off int // bytes of w already produced
}

func newStream(id uint64, dir uint64) *stream {
	return &stream{x: id*0x9E3779B97F4A7C15 ^ (dir+1)*0xC2B2AE3D27D4EB4F | 1, off: 8}
}

func (s *stream) next() uint64 {
	s.x ^= s.x << 13
	s.x ^= s.x >> 7
	s.x ^= s.x << 17
	return s.x
}

// fill writes the next len(b) bytes of the stream into b.
func (s *stream) fill(b []byte) {
	for len(b) > 0 && s.off < 8 {
		b[0] = s.w[s.off]
		s.off++
		b = b[1:]
	}
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, s.next())
		b = b[8:]
	}
	if len(b) > 0 {
		binary.LittleEndian.PutUint64(s.w[:], s.next())
		s.off = copy(b, s.w[:])
	}
}

// check reports whether b are the next len(b) bytes of the stream.
func (s *stream) check(b, scratch []byte) bool {
	want := scratch[:len(b)]
	s.fill(want)
	return bytes.Equal(b, want)
}

// writeStream writes n bytes of s to c in writes of random sizes.
func writeStream(c net.Conn, s *stream, n int64, buf []byte, r *rand.Rand) (int64, error) {
	var done int64
	for done < n {
		k := int(min(n-done, int64(1+r.IntN(len(buf)))))
		s.fill(buf[:k])
		w, err := c.Write(buf[:k])
		done += int64(w)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// readStream reads n bytes of s from c and verifies them; slow reads in
// small bites with pauses. It returns how many intact bytes it read and
// whether a byte was wrong (it stops there).
func readStream(c net.Conn, s *stream, n int64, buf, scratch []byte, slow bool) (int64, bool, error) {
	var got int64
	bite := len(buf)
	if slow {
		bite = 4096
	}
	for got < n {
		k, err := c.Read(buf[:min(int64(bite), n-got)])
		if k > 0 {
			if !s.check(buf[:k], scratch) {
				return got, true, nil
			}
			got += int64(k)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return got, false, err
		}
		if slow {
			time.Sleep(time.Duration(1+rand.IntN(3)) * time.Millisecond)
		}
	}
	return got, false, nil
}

// expectEOF reads the end of the stream: any byte before it is wrong.
func expectEOF(c net.Conn, buf []byte) (bool, error) {
	k, err := c.Read(buf[:1])
	if k > 0 {
		return true, nil
	}
	if errors.Is(err, io.EOF) {
		return false, nil
	}
	if err == nil {
		err = errors.New("read returned nothing")
	}
	return false, err
}

// errClass names how an operation ended.
func errClass(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ENOTCONN):
		// ENOTCONN: shutdown(2) after the reset, reported elsewhere.
		return "reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "error"
}

// tcpPathStats counts the connections of one path (client side).
type tcpPathStats struct {
	Name          string           `json:"name"`
	Conns         uint64           `json:"conns"`     // connected
	Completed     uint64           `json:"completed"` // ended as their mode says
	Modes         [numModes]uint64 `json:"modes"`
	Sent          uint64           `json:"sent"`     // payload bytes written
	Received      uint64           `json:"received"` // payload bytes read and verified
	ResetsSent    uint64           `json:"resets_sent"`
	ResetsSeen    uint64           `json:"resets_seen"` // the server's, as expected
	Corrupt       uint64           `json:"corrupt"`     // connections with a byte not as sent
	Failed        uint64           `json:"failed"`      // ended otherwise than their mode says
	ConnectErrors uint64           `json:"connect_errors"`
	BindErrors    uint64           `json:"bind_errors"` // source port still taken: the next one is tried
}

// tcpServerStats counts what a TCP server saw.
type tcpServerStats struct {
	Addr       string `json:"addr"`
	Accepted   uint64 `json:"accepted"`
	Completed  uint64 `json:"completed"`
	Sent       uint64 `json:"sent"`
	Received   uint64 `json:"received"`
	ResetsSent uint64 `json:"resets_sent"`
	ResetsSeen uint64 `json:"resets_seen"`
	Corrupt    uint64 `json:"corrupt"` // bad headers and connections with a wrong byte
	Failed     uint64 `json:"failed"`
}

// noteFailure keeps the first few TCP failures for the report.
func (a *agent) noteFailure(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.tcpFailures) < 12 {
		a.tcpFailures = append(a.tcpFailures, fmt.Sprintf(format, args...))
	}
}

// setPortRange sets the role's ephemeral port range, if it has one.
func setPortRange(role string) error {
	r, ok := rolePortRange[role]
	if !ok {
		return nil
	}
	return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(r+"\n"), 0o644)
}

// listenTCP opens a TCP server's listener.
func listenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	var l *net.TCPListener
	var err error
	for i := 0; i < 50; i++ {
		if l, err = net.ListenTCP(network, net.TCPAddrFromAddrPort(addr)); err == nil {
			return l, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

// acceptTCP serves the connections of l until it is closed; handlers
// joins their handlers.
func (a *agent) acceptTCP(l *net.TCPListener, st *tcpServerStats, handlers *sync.WaitGroup) {
	for {
		c, err := l.AcceptTCP()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		atomic.AddUint64(&st.Accepted, 1)
		handlers.Go(func() { a.serveTCP(c, st) })
	}
}

// serveTCP serves one connection as its header says.
func (a *agent) serveTCP(c *net.TCPConn, st *tcpServerStats) {
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	_ = c.SetDeadline(time.Now().Add(tcpDeadline))
	buf := make([]byte, 64<<10)
	scratch := make([]byte, 64<<10)
	peer := c.RemoteAddr().String()
	var h tcpHeader
	if _, err := io.ReadFull(c, buf[:tcpHdrLen]); err != nil {
		atomic.AddUint64(&st.Failed, 1)
		a.noteFailure("server %s: header from %s: %v", st.Addr, peer, err)
		return
	}
	if !parseHeader(buf[:tcpHdrLen], &h) {
		atomic.AddUint64(&st.Corrupt, 1)
		a.noteCorrupt("tcp server "+st.Addr+" header from "+peer, buf[:tcpHdrLen])
		return
	}
	up, down := newStream(h.id, 0), newStream(h.id, 1)
	r := rand.New(rand.NewPCG(h.id, 0x7c9))
	var got, sent int64
	var bad bool
	var err error
	// A reset is reported once: to whichever of the reader and the
	// writer asks first; the other sees the end of the stream or EPIPE.
	reset := false
	first := func(errs ...error) error {
		var f error
		for _, e := range errs {
			reset = reset || errClass(e) == "reset"
			if f == nil {
				f = e
			}
		}
		return f
	}
	trailer := func() error {
		var t [trailerLen]byte
		putTrailer(t[:], got, bad)
		if _, err := c.Write(t[:]); err != nil {
			return err
		}
		if err := c.CloseWrite(); err != nil {
			return err
		}
		extra, err := expectEOF(c, buf)
		bad = bad || extra
		return err
	}
	switch h.mode {
	case modeShort, modeBulk, modeSlowClient, modeSlowServer, modeClientReset:
		wbuf := make([]byte, 64<<10)
		var werr error
		done := make(chan struct{})
		go func() {
			sent, werr = writeStream(c, down, h.m, wbuf, r)
			close(done)
		}()
		var rerr error
		got, bad, rerr = readStream(c, up, h.n, buf, scratch, h.mode == modeSlowServer)
		if bad || rerr != nil {
			// Whatever the writer waits for will not come.
			_ = c.SetDeadline(time.Now())
		}
		<-done
		err = first(rerr, werr)
		if !bad && err == nil {
			err = first(trailer())
		}
	case modeHalfClose:
		got, bad, err = readStream(c, up, h.n, buf, scratch, false)
		if !bad && err == nil {
			bad, err = expectEOF(c, buf)
		}
		if !bad && err == nil {
			sent, err = writeStream(c, down, h.m, buf, r)
		}
		if !bad && err == nil {
			err = trailer()
		}
	case modeServerHalfClose:
		sent, err = writeStream(c, down, h.m, buf, r)
		if err == nil {
			err = c.CloseWrite()
		}
		if err == nil {
			got, bad, err = readStream(c, up, h.n, buf, scratch, false)
		}
		if !bad && err == nil {
			bad, err = expectEOF(c, buf)
		}
	case modeServerReset:
		got, bad, err = readStream(c, up, h.k, buf, scratch, false)
		if !bad && err == nil {
			_ = c.SetLinger(0)
			c.Close()
			closed = true
			atomic.AddUint64(&st.ResetsSent, 1)
		}
	}
	atomic.AddUint64(&st.Received, uint64(got))
	atomic.AddUint64(&st.Sent, uint64(sent))
	switch {
	case bad:
		atomic.AddUint64(&st.Corrupt, 1)
		a.noteCorrupt(fmt.Sprintf("tcp server %s from %s: %s connection %x, byte %d of %d not as sent", st.Addr, peer, modeNames[h.mode], h.id, got, h.n), nil)
	case h.mode == modeClientReset:
		if reset || errClass(err) == "reset" {
			atomic.AddUint64(&st.ResetsSeen, 1)
			atomic.AddUint64(&st.Completed, 1)
		} else {
			atomic.AddUint64(&st.Failed, 1)
			a.noteFailure("server %s from %s: %s connection %x: the client's reset ended as %s (%v), %d of %d bytes read, %d of %d sent",
				st.Addr, peer, modeNames[h.mode], h.id, errClass(err), err, got, h.n, sent, h.m)
		}
	case err != nil:
		atomic.AddUint64(&st.Failed, 1)
		a.noteFailure("server %s from %s: %s connection %x: %s (%v), %d of %d bytes read, %d of %d sent",
			st.Addr, peer, modeNames[h.mode], h.id, errClass(err), err, got, h.n, sent, h.m)
	default:
		atomic.AddUint64(&st.Completed, 1)
	}
}

// tcpClient is one worker of a TCP path: it opens connections one after
// the other, each in a mode drawn at random.
type tcpClient struct {
	a    *agent
	p    tcpPath
	st   *tcpPathStats
	stop *atomic.Bool
	id   uint64 // connection ids: id | counter
	rng  *rand.Rand
	wrng *rand.Rand // the writer's, in its own goroutine
	// For paths that bind their source: the ports to cycle through
	// (see tcpPortsFrom).
	portFrom, portCount, next int

	rbuf, wbuf, scratch []byte
}

func (c *tcpClient) run() {
	c.rbuf, c.wbuf, c.scratch = make([]byte, 64<<10), make([]byte, 64<<10), make([]byte, 64<<10)
	for n := uint64(0); !c.stop.Load(); n++ {
		c.one(c.id | n)
		if c.a.pause > 0 {
			time.Sleep(time.Duration(c.rng.Int64N(int64(2 * c.a.pause))))
		}
	}
}

// logSize draws a size from lo..hi, uniform in its logarithm.
func logSize(r *rand.Rand, lo, hi int64) int64 {
	n := int64(math.Exp(math.Log(float64(lo)) + r.Float64()*(math.Log(float64(hi))-math.Log(float64(lo)))))
	return min(max(n, lo), hi)
}

// pickMode draws a mode and its sizes: the request header, how far a
// resetting client reads (cut) and writes (part).
func pickMode(r *rand.Rand, id uint64) (h tcpHeader, cut, part int64) {
	h.id = id
	switch p := r.IntN(100); {
	case p < 35:
		h.mode, h.n, h.m = modeShort, 1+r.Int64N(2000), 1+r.Int64N(4000)
	case p < 47:
		h.mode, h.n, h.m = modeBulk, logSize(r, 16<<10, 8<<20), logSize(r, 16<<10, 8<<20)
	case p < 59:
		h.mode, h.n, h.m = modeHalfClose, logSize(r, 1, 512<<10), logSize(r, 1, 512<<10)
	case p < 69:
		h.mode, h.n, h.m = modeServerHalfClose, logSize(r, 1, 512<<10), logSize(r, 1, 512<<10)
	case p < 78:
		h.mode, h.n, h.m = modeClientReset, logSize(r, 1, 1<<20), logSize(r, 2, 2<<20)
		cut, part = 1+r.Int64N(h.m-1), r.Int64N(h.n+1)
	case p < 87:
		h.mode, h.n = modeServerReset, logSize(r, 64<<10, 2<<20)
		h.k = r.Int64N(h.n)
	case p < 94:
		h.mode, h.n, h.m = modeSlowClient, logSize(r, 1, 64<<10), logSize(r, 256<<10, 1<<20)
	default:
		h.mode, h.n, h.m = modeSlowServer, logSize(r, 256<<10, 1<<20), logSize(r, 1, 64<<10)
	}
	return h, cut, part
}

// one opens and runs one connection.
func (c *tcpClient) one(id uint64) {
	h, cut, part := pickMode(c.rng, id)
	network := "tcp4"
	if c.p.to.Addr().Is6() {
		network = "tcp6"
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	if c.p.bind {
		port := c.portFrom + c.next%c.portCount
		c.next++
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(c.p.from, uint16(port)))
	}
	nc, err := d.Dial(network, c.p.to.String())
	if c.p.bind && errors.Is(err, syscall.EADDRINUSE) {
		atomic.AddUint64(&c.st.BindErrors, 1)
		return
	}
	if err != nil {
		atomic.AddUint64(&c.st.ConnectErrors, 1)
		c.a.noteFailure("client %s: connect: %v", c.p.name, err)
		time.Sleep(10 * time.Millisecond)
		return
	}
	conn := nc.(*net.TCPConn)
	_ = conn.SetDeadline(time.Now().Add(tcpDeadline))
	atomic.AddUint64(&c.st.Conns, 1)
	atomic.AddUint64(&c.st.Modes[h.mode], 1)
	local := conn.LocalAddr().String()
	up, down := newStream(id, 0), newStream(id, 1)

	var got, sent int64
	var bad bool
	var err1 error // the first error
	note := func(err error) {
		if err1 == nil {
			err1 = err
		}
	}
	// writer sends n bytes of the request (after the header) in its own
	// goroutine, then shuts the write side if shut; wait waits for it.
	var werr error
	done := make(chan struct{})
	writer := func(n int64, shut bool) {
		go func() {
			defer close(done)
			sent, werr = writeStream(conn, up, n, c.wbuf, c.wrng)
			if werr == nil && shut {
				werr = conn.CloseWrite()
			}
		}()
	}
	readTrailer := func() {
		var t [trailerLen]byte
		if _, err := io.ReadFull(conn, t[:]); err != nil {
			note(err)
			return
		}
		if binary.BigEndian.Uint32(t[12:]) != crc32.Checksum(t[:12], castagnoli) {
			bad = true
			return
		}
		if n, st := int64(binary.BigEndian.Uint64(t[0:])), binary.BigEndian.Uint32(t[8:]); n != h.n || st != 0 {
			note(fmt.Errorf("the server read %d intact bytes of %d (status %d)", n, h.n, st))
		}
	}

	var hdr [tcpHdrLen]byte
	h.put(hdr[:])
	if _, err := conn.Write(hdr[:]); err != nil {
		note(err)
		close(done)
	} else {
		switch h.mode {
		case modeShort, modeBulk, modeHalfClose, modeSlowClient, modeSlowServer:
			writer(h.n, h.mode == modeHalfClose)
			var rerr error
			got, bad, rerr = readStream(conn, down, h.m, c.rbuf, c.scratch, h.mode == modeSlowClient)
			note(rerr)
			if !bad && err1 == nil {
				readTrailer()
			}
			if !bad && err1 == nil {
				var extra bool
				extra, rerr = expectEOF(conn, c.rbuf)
				bad = bad || extra
				note(rerr)
			}
			if bad || err1 != nil {
				_ = conn.SetDeadline(time.Now())
			}
			<-done
			note(werr)
		case modeServerHalfClose:
			got, bad, err = readStream(conn, down, h.m, c.rbuf, c.scratch, false)
			note(err)
			if !bad && err1 == nil {
				bad, err = expectEOF(conn, c.rbuf)
				note(err)
			}
			if !bad && err1 == nil {
				writer(h.n, true)
				<-done
				note(werr)
			} else {
				close(done)
			}
		case modeClientReset:
			writer(part, false)
			got, bad, err = readStream(conn, down, cut, c.rbuf, c.scratch, false)
			note(err)
			_ = conn.SetLinger(0)
			conn.Close()
			<-done // the writer fails now, if it had not finished
			if !bad && err1 == nil {
				atomic.AddUint64(&c.st.ResetsSent, 1)
			}
		case modeServerReset:
			writer(h.n, false)
			// The server sends nothing: the read ends with its reset.
			k, err := conn.Read(c.rbuf)
			bad = k > 0
			<-done
			if !bad {
				// The reset is reported to the reader or the writer,
				// whichever asks first.
				if cl := errClass(err); cl == "reset" || errClass(werr) == "reset" {
					atomic.AddUint64(&c.st.ResetsSeen, 1)
				} else {
					note(fmt.Errorf("the server's reset ended as %s: %v (writer: %v)", cl, err, werr))
				}
			}
		}
	}
	if h.mode != modeClientReset {
		conn.Close()
	}
	atomic.AddUint64(&c.st.Received, uint64(got))
	atomic.AddUint64(&c.st.Sent, uint64(sent))
	switch {
	case bad:
		atomic.AddUint64(&c.st.Corrupt, 1)
		c.a.noteCorrupt(fmt.Sprintf("tcp client %s (%s): %s connection %x: byte %d of %d not as sent", c.p.name, local, modeNames[h.mode], id, got, h.m), nil)
	case err1 != nil:
		atomic.AddUint64(&c.st.Failed, 1)
		c.a.noteFailure("client %s (%s): %s connection %x: %s (%v); %d of %d bytes read, %d of %d sent",
			c.p.name, local, modeNames[h.mode], id, errClass(err1), err1, got, h.m, sent, h.n)
	default:
		atomic.AddUint64(&c.st.Completed, 1)
	}
}

// TCP segments the injector writes to the tap, by the drop counter
// gopasst must count them under ("drop REASON"): a wrong checksum, a
// header that does not parse, a segment for no connection.
var tcpInjectReasons = []string{"checksum", "tcp-bad-segment", "tcp-no-connection"}

// tcpFrame builds a well-formed TCP segment from the namespace's address
// and port sport, below any the namespace's clients use, to the gateway's
// discard port, IPv4 or IPv6, with flags and payload bytes of payload.
func tcpFrame(v6 bool, src net.HardwareAddr, sport uint16, seq, ack uint32, flags byte, payload int) []byte {
	f := udpFrame(v6, src, hdrTCP-udpLen+payload)
	l3 := ip4Len
	if v6 {
		l3 = ip6Len
		f[ethLen+6] = syscall.IPPROTO_TCP
	} else {
		ip := f[ethLen:]
		ip[9] = syscall.IPPROTO_TCP
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:12], wirecheck.Checksum(ip[:ip4Len]))
	}
	t := f[ethLen+l3:]
	clear(t)
	binary.BigEndian.PutUint16(t[0:2], sport)
	binary.BigEndian.PutUint16(t[2:4], discard)
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = hdrTCP / 4 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 0xffff)
	for i := hdrTCP; i < len(t); i++ {
		t[i] = byte(i)
	}
	tcpChecksum(f, v6)
	return f
}

// hdrTCP is the length of a TCP header without options.
const hdrTCP = 20

// tcpChecksum sets the checksum of the TCP segment in frame f.
func tcpChecksum(f []byte, v6 bool) {
	ip := f[ethLen:]
	var pseudo []byte
	var t []byte
	if v6 {
		t = ip[ip6Len:]
		pseudo = make([]byte, 40)
		copy(pseudo[0:32], ip[8:40])
		binary.BigEndian.PutUint32(pseudo[32:36], uint32(len(t)))
		pseudo[39] = syscall.IPPROTO_TCP
	} else {
		t = ip[ip4Len:]
		pseudo = make([]byte, 12)
		copy(pseudo[0:8], ip[12:20])
		pseudo[9] = syscall.IPPROTO_TCP
		binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(t)))
	}
	t[16], t[17] = 0, 0
	binary.BigEndian.PutUint16(t[16:18], ^uint16(wirecheck.Sum(t, wirecheck.Sum(pseudo, 0))))
}

// malformedTCPFrame builds one bad TCP segment, chosen at random, and
// returns it with the drop counter gopasst counts it under.
func malformedTCPFrame(r *rand.Rand, src net.HardwareAddr) (string, []byte) {
	v6 := r.IntN(2) == 0
	l3 := ip4Len
	if v6 {
		l3 = ip6Len
	}
	sport := uint16(100 + r.IntN(900))
	seq, ack := r.Uint32(), r.Uint32()
	payload := r.IntN(200)
	switch k := r.IntN(8); k {
	case 0, 1: // a wrong checksum
		f := tcpFrame(v6, src, sport, seq, ack, 0x10, payload)
		t := f[ethLen+l3:]
		binary.BigEndian.PutUint16(t[16:18], binary.BigEndian.Uint16(t[16:18])^uint16(1+r.IntN(0xfffe)))
		return "checksum", f
	case 2: // a data offset below the header
		f := tcpFrame(v6, src, sport, seq, ack, 0x10, payload)
		t := f[ethLen+l3:]
		t[12] = byte(r.IntN(5)) << 4
		tcpChecksum(f, v6)
		return "tcp-bad-segment", f
	case 3: // a data offset past the end of the segment
		f := tcpFrame(v6, src, sport, seq, ack, 0x10, r.IntN(8))
		t := f[ethLen+l3:]
		t[12] = byte(max(6, (len(t)+4)/4+r.IntN(16-(len(t)+4)/4))) << 4
		tcpChecksum(f, v6)
		return "tcp-bad-segment", f
	case 4: // flags no segment may carry: none of SYN, ACK, RST, or SYN with FIN or RST
		flags := []byte{0, 0x01, 0x08, 0x20, 0x03, 0x06, 0x17}[r.IntN(7)]
		f := tcpFrame(v6, src, sport, seq, ack, flags, payload)
		return "tcp-bad-segment", f
	case 5: // shorter than a TCP header
		n := r.IntN(hdrTCP)
		f := tcpFrame(v6, src, sport, seq, ack, 0x10, 0)
		f = f[:ethLen+l3+n]
		ip := f[ethLen:]
		if v6 {
			binary.BigEndian.PutUint16(ip[4:6], uint16(n))
		} else {
			binary.BigEndian.PutUint16(ip[2:4], uint16(ip4Len+n))
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:12], wirecheck.Checksum(ip[:ip4Len]))
		}
		return "tcp-bad-segment", f
	default: // for no connection: an ACK, with data, FIN or RST
		flags := []byte{0x10, 0x18, 0x11, 0x04, 0x14}[r.IntN(5)]
		if flags&0x04 != 0 {
			payload = 0
		}
		return "tcp-no-connection", tcpFrame(v6, src, sport, seq, ack, flags, payload)
	}
}
