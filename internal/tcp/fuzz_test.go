//go:build linux

package tcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// Fuzz target of one connection from the guest to a real server socket:
// segments in, sends to the server and frames out. testdata/fuzz holds
// any crashers.

// fuzzPort is where the servers of fuzzNS listen.
const fuzzPort = 8080

// fuzzNS is the network namespace of one fuzzing process: a thread of its
// own, locked for good, in a new namespace with lo up, where the servers
// listen and where the guest's SYN of each input is handed to its engine
// (which opens the host socket there). The rest of an input runs on the
// test's goroutine: the engine's other work needs no namespace.
var fuzzNS struct {
	once sync.Once
	do   chan func()
	err  error
	ln   [2]*net.TCPListener // IPv4, IPv6 loopback
}

// inFuzzNS runs fn on fuzzNS's thread, setting the namespace up on first
// use.
func inFuzzNS(fn func()) error {
	fuzzNS.once.Do(func() {
		fuzzNS.do = make(chan func())
		errc := make(chan error)
		go func() {
			runtime.LockOSThread() // never unlocked
			errc <- setupFuzzNS()
			for fn := range fuzzNS.do {
				fn()
			}
		}()
		fuzzNS.err = <-errc
	})
	if fuzzNS.err != nil {
		return fuzzNS.err
	}
	done := make(chan struct{})
	fuzzNS.do <- func() { defer close(done); fn() }
	<-done
	return nil
}

// setupFuzzNS moves the calling thread to a new namespace, brings lo up
// and opens the servers' listeners.
func setupFuzzNS() error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
	}
	if err := loUp(); err != nil {
		return err
	}
	for i, v6 := range []bool{false, true} {
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(loopback(v6), fuzzPort)))
		if err != nil {
			return err
		}
		fuzzNS.ln[i] = ln
	}
	return nil
}

// fuzzReader hands out an input's bytes, zeros past its end.
type fuzzReader struct {
	b []byte
	i int
}

func (r *fuzzReader) more() bool { return r.i < len(r.b) }

func (r *fuzzReader) byte() byte {
	if r.i >= len(r.b) {
		return 0
	}
	r.i++
	return r.b[r.i-1]
}

func (r *fuzzReader) u16() uint16 { return uint16(r.byte())<<8 | uint16(r.byte()) }
func (r *fuzzReader) u32() uint32 { return uint32(r.u16())<<16 | uint32(r.u16()) }

// The input's layout. A header of four bytes: flags (fzV6, fzEcho,
// fzNoWS, fzNoMSS, and the high nibble seeds the guest's bytes), the MSS
// of the guest's SYN (0: 1460, else 40+6n), its window scale (low
// nibble) and its window (0: 65535, else n*257). Then up to fzMaxOps
// operations, each an opcode byte (modulo 16) and its arguments:
//
//	0-6  a guest segment, sent at once (with those queued before)
//	7-8  a guest segment, queued to go with the next in one batch
//	9    the server writes (n+1)*64 bytes
//	10   the server reads up to n*256 bytes (0: all there is)
//	11   the server shuts its side down for writing
//	12   the server closes
//	13   the server resets (linger 0)
//	14+  wait n%8+1 ms for the engine's output (30 ms at most in all)
//
// A segment is six bytes, some followed by more: flags (see segFlags),
// seq (mode in the top two bits: at the guest's next byte; the same;
// near its next byte (bit 5 clear) or near the point we acknowledged
// (set), offset by an int8 that follows times 16^(low two bits); a wild
// number that follows), ack (everything received; the guest's previous
// ACK; near everything received, as seq; wild), window (the previous; 65535;
// 0; a uint16 that follows), payload length (<128: as is; <192:
// (n-127)*256; else 0) and options (<192: none; else by the low three
// bits MSS, window scale, timestamps, SACK permitted, a SACK block,
// timestamps with the length byte that follows, a bad checksum, a data
// offset below 5).
const (
	fzV6    = 1 << 0
	fzEcho  = 1 << 1
	fzNoWS  = 1 << 2
	fzNoMSS = 1 << 3

	fzMaxOps  = 64
	fzMaxWait = 30 * time.Millisecond
)

// Opcodes, for the seeds.
const (
	opSend     = 0
	opQueue    = 7
	opWrite    = 9
	opRead     = 10
	opShutdown = 11
	opClose    = 12
	opReset    = 13
	opWait     = 14
)

// segFlags decodes a segment's flag byte: ACK unless the top three bits
// are 100, FIN with the low two bits set, PSH with bit 2, RST with bits
// 3 to 5 all set, SYN (with ACK) when the top three bits are 011.
func segFlags(b byte) uint8 {
	var f uint8
	if b&0xe0 != 0x80 {
		f |= flagACK
	}
	if b&0x03 == 0x03 {
		f |= flagFIN
	}
	if b&0x04 != 0 {
		f |= flagPSH
	}
	if b&0x38 == 0x38 {
		f |= flagRST
	}
	if b&0xe0 == 0x60 {
		f |= flagSYN
	}
	return f
}

// streamByte is the guest's byte at offset pos of its stream, seeded.
func streamByte(pos uint32, seed byte) byte {
	x := (pos + uint32(seed)<<24) * 2654435761
	return byte(x>>24) ^ byte(pos>>8)
}

// serverByte is the server's byte at offset pos of what it writes.
func serverByte(pos int) byte { return byte(pos*13+pos>>9) ^ 0xa5 }

// connModel is the test's view of one fuzzed connection: what the guest
// sent and received, what the server read and wrote, and the checks.
type connModel struct {
	t      *testing.T
	h      *harness
	c      *guestConn
	seed   byte
	iss    uint32 // the engine's ISN
	mss    int    // the largest segment the engine may send
	batch  []*packet.Parsed
	ended  bool // the flow is gone: only RSTs may follow
	frames int

	// The guest, in offsets from its ISN+1 and ours.
	gNxt   int64 // the next new byte it sends
	hiSent int64 // the highest end of what it ever sent (FIN included)
	rNxt   int64 // what it received in order (FIN included)
	una    int64 // the highest of its ACKs the engine must have taken
	bound  int64 // una as of the previous batch: where our segments may start
	// From the engine: the highest ACK and end of segment.
	ackHi  int64
	maxEnd int64
	finOff int64 // our FIN's offset, -1 before

	// The server.
	srv                    *net.TCPConn
	raw                    syscall.RawConn
	echo                   bool
	out                    []byte // what it wrote
	read                   int    // what it read, checked against the guest's stream
	eof, rdErr             bool
	shut, closed, wasReset bool
	// rstQueued: the batch being built holds a RST of the guest's;
	// guestReset: such a RST ended the flow.
	rstQueued, guestReset bool
	waited                time.Duration
}

// fail reports a broken rule with the connection's state.
func (m *connModel) fail(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("%s\n(state: guest next %d, sent %d, received %d, una %d; engine ack %d, end %d, FIN %d; server read %d, wrote %d, eof %v shut %v closed %v reset %v; %d frames)",
		fmt.Sprintf(format, args...), m.gNxt, m.hiSent, m.rNxt, m.una, m.ackHi, m.maxEnd, m.finOff,
		m.read, len(m.out), m.eof, m.shut, m.closed, m.wasReset, m.frames)
}

// rx decodes and checks a frame to the guest.
func (m *connModel) rx(frame []byte) {
	m.t.Helper()
	m.frames++
	if _, err := wirecheck.Check(frame); err != nil {
		m.fail("frame to the guest: %v", err)
	}
	s, err := decodeFrame(frame)
	if err != nil {
		m.fail("frame to the guest: %v", err)
	}
	c := m.c
	if s.src != c.gw || s.dst != c.guest || s.sport != c.port || s.dport != c.gport {
		m.fail("%v, not on the connection", s)
	}
	if s.flags&flagRST != 0 {
		// Ours or an answer to a segment for no connection (whose
		// numbers are the segment's): the end either way.
		if len(s.payload) != 0 || s.flags&flagSYN != 0 {
			m.fail("reset %v", s)
		}
		m.ended = true
		return
	}
	if m.ended {
		m.fail("%v after the connection ended", s)
	}
	if s.flags&flagACK == 0 || s.flags&flagSYN != 0 {
		m.fail("%v: flags", s)
	}
	ack := int64(int32(s.ack - (guestISN + 1)))
	if ack < m.ackHi {
		m.fail("%v: ACK %d went back from %d", s, ack, m.ackHi)
	}
	if ack > m.hiSent {
		m.fail("%v: ACK %d beyond all the guest sent (%d)", s, ack, m.hiSent)
	}
	m.ackHi = ack
	off := int64(int32(s.seq - (m.iss + 1)))
	n := int64(len(s.payload))
	fin := s.flags&flagFIN != 0
	switch {
	case n > 0 || fin:
		if off < m.bound {
			m.fail("%v: offset %d below the guest's ACK %d", s, off, m.bound)
		}
		if off > m.maxEnd {
			m.fail("%v: offset %d leaves a hole after %d", s, off, m.maxEnd)
		}
		if n > int64(m.mss) {
			m.fail("%v: %d bytes, more than the MSS %d", s, n, m.mss)
		}
		if off+n > int64(len(m.out)) {
			m.fail("%v: data up to %d, the server wrote %d", s, off+n, len(m.out))
		}
		if !bytes.Equal(s.payload, m.out[off:off+n]) {
			m.fail("%v: data at %d differs from what the server wrote", s, off)
		}
		if m.finOff >= 0 && off+n > m.finOff {
			m.fail("%v: data beyond our FIN at %d", s, m.finOff)
		}
		if fin {
			if !m.shut {
				m.fail("%v: FIN, the server did not shut down", s)
			}
			if off+n != int64(len(m.out)) || m.finOff >= 0 && m.finOff != off+n {
				m.fail("%v: FIN at %d, the server wrote %d (FIN before at %d)", s, off+n, len(m.out), m.finOff)
			}
			m.finOff = off + n
		}
		end := off + n
		if fin {
			end++
		}
		m.maxEnd = max(m.maxEnd, end)
		if off <= m.rNxt && m.rNxt < off+n {
			m.rNxt = off + n
		}
		if fin && m.rNxt == off+n {
			m.rNxt++
		}
	default:
		// A bare ACK is at our next byte, or one below for a window
		// probe.
		if off < m.bound-1 || off > m.maxEnd {
			m.fail("%v: ACK at %d outside [%d, %d]", s, off, m.bound-1, m.maxEnd)
		}
	}
}

// poll takes the frames that reached the guest, waiting up to d for the
// first and then as long as more come within gap (at most d in all).
func (m *connModel) poll(d, gap time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(d)
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case f := <-m.h.tap.frames:
			m.rx(f)
			continue
		default:
		}
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		if gap > 0 && gap < left {
			left = gap
		}
		timer.Reset(left)
		select {
		case f := <-m.h.tap.frames:
			m.rx(f)
		case <-timer.C:
			if gap > 0 || time.Now().After(deadline) {
				return
			}
		}
	}
}

// drain takes the frames queued for the guest, without waiting.
func (m *connModel) drain() {
	m.t.Helper()
	for {
		select {
		case f := <-m.h.tap.frames:
			m.rx(f)
		default:
			return
		}
	}
}

// conn is the engine's state of the flow, if it has one.
func (m *connModel) conn() (conn, bool) {
	e := m.h.e
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	c := m.c
	ref, ok := e.tab.Lookup(flow.Key{Type: flow.TypeTCP, PIF: flow.PIFTap, EAddr: c.guest, EPort: c.gport, FAddr: c.gw, FPort: c.port})
	if !ok {
		return conn{}, false
	}
	return *e.conns[ref.Index], true
}

// flush hands the queued segments to the engine in one batch and takes
// what it answered. Our segments after it may start at the guest's ACKs
// so far; those already queued only at its ACKs before.
func (m *connModel) flush() {
	m.t.Helper()
	if len(m.batch) == 0 {
		return
	}
	m.h.e.HandleTap(m.batch)
	m.batch = m.batch[:0]
	_, alive := m.conn()
	m.drain()
	m.bound = m.una
	if !alive {
		// A RST of the guest's that ended the flow aborts the
		// connection: the socket is closed with linger 0, and what
		// the server had not read yet may be lost (as with any
		// RST).
		m.guestReset = m.guestReset || !m.ended && m.rstQueued
		m.ended = true
	}
	m.rstQueued = false
}

// mults scale the offsets of near sequence and acknowledgement numbers.
var mults = [4]int64{1, 16, 256, 4096}

// segment decodes a guest segment from r and queues it.
func (m *connModel) segment(r *fuzzReader) {
	m.t.Helper()
	c := m.c
	flags := segFlags(r.byte())
	sq := r.byte()
	var seq uint32
	wild := false
	switch sq >> 6 {
	case 0, 1:
		seq = guestISN + 1 + uint32(m.gNxt)
	case 2:
		base := m.gNxt
		if sq&0x20 != 0 {
			base = m.ackHi
		}
		seq = guestISN + 1 + uint32(base+int64(int8(r.byte()))*mults[sq&3])
	case 3:
		seq, wild = r.u32(), true
	}
	ak := r.byte()
	switch ak >> 6 {
	case 0:
		c.ack = m.iss + 1 + uint32(m.rNxt)
	case 1:
	case 2:
		c.ack = m.iss + 1 + uint32(m.rNxt+int64(int8(r.byte()))*mults[ak&3])
	case 3:
		c.ack = r.u32()
	}
	switch wn := r.byte(); wn >> 6 {
	case 1:
		c.wnd = 0xffff
	case 2:
		c.wnd = 0
	case 3:
		c.wnd = r.u16()
	}
	n := 0
	switch ln := int(r.byte()); {
	case ln < 0x80:
		n = ln
	case ln < 0xc0:
		n = (ln - 0x7f) * 256
	}
	off := uint32(seq - (guestISN + 1))
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = streamByte(off+uint32(i), m.seed)
	}
	tl := c.tcp(flags, seq)
	opt := r.byte()
	broken := false
	var patch func(p *packet.Parsed)
	if opt >= 0xc0 {
		switch opt & 7 {
		case 0:
			tl.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x02, 0x00}}}
		case 1:
			tl.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{14}}}
		case 2, 5:
			tl.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}}}
			if opt&7 == 5 {
				l := r.byte()
				patch = func(p *packet.Parsed) { p.L4[hdrLen+1] = l; setChecksum(p) }
				broken = true // maybe
			}
		case 3:
			tl.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}}
		case 4:
			tl.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindSACK, OptionLength: 10, OptionData: make([]byte, 8)}}
		case 6:
			patch = func(p *packet.Parsed) { p.L4[16] ^= 0x5a }
			broken = true
		case 7:
			d := r.byte() % 5
			patch = func(p *packet.Parsed) { p.L4[12] = d<<4 | p.L4[12]&0x0f; setChecksum(p) }
			broken = true
		}
	}
	p := c.frame(tl, payload)
	if patch != nil {
		patch(p)
	}
	m.batch = append(m.batch, p)

	rel := int64(int32(seq - (guestISN + 1)))
	end := rel + int64(n)
	if flags&flagSYN != 0 {
		end++
	}
	if flags&flagFIN != 0 {
		end++
	}
	m.hiSent = max(m.hiSent, end)
	if !wild && !broken {
		m.gNxt = max(m.gNxt, end)
	}
	if flags&flagRST != 0 && !broken && !m.ended {
		m.rstQueued = true
	}
	if flags&(flagACK|flagSYN|flagRST) == flagACK && !broken && !m.ended {
		// The engine takes an ACK of no more than it sent.
		if a := int64(int32(c.ack - (m.iss + 1))); a <= m.maxEnd {
			m.una = max(m.una, a)
		}
	}
}

// srvRead reads up to limit bytes (0: all there is) that the server has,
// without waiting, checking them against the guest's stream; an echo
// server writes them back.
func (m *connModel) srvRead(limit int) {
	m.t.Helper()
	if m.closed || m.eof || m.rdErr {
		return
	}
	buf := make([]byte, 16<<10)
	got := 0
	for limit == 0 || got < limit {
		b := buf
		if limit > 0 {
			b = buf[:min(len(buf), limit-got)]
		}
		n, err := m.rawRead(b)
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) {
				m.rdErr = true
			}
			return
		}
		if n == 0 {
			m.eof = true
			return
		}
		m.gotData(b[:n])
		got += n
		if m.echo {
			m.srvWrite(b[:n])
		}
	}
}

// gotData checks what the server read against the guest's stream.
func (m *connModel) gotData(b []byte) {
	m.t.Helper()
	for i, x := range b {
		if want := streamByte(uint32(m.read+i), m.seed); x != want {
			m.fail("server read %#02x at offset %d of the guest's stream, want %#02x", x, m.read+i, want)
		}
	}
	m.read += len(b)
}

// rawRead reads from the server's socket without waiting.
func (m *connModel) rawRead(b []byte) (n int, err error) {
	if cerr := m.raw.Read(func(fd uintptr) bool {
		n, err = unix.Read(int(fd), b)
		return true
	}); cerr != nil {
		return 0, cerr
	}
	if err != nil {
		n = 0
	}
	return n, err
}

// srvWrite writes what the server's socket takes of b at once.
func (m *connModel) srvWrite(b []byte) {
	if m.shut || m.closed {
		return
	}
	var n int
	var err error
	if cerr := m.raw.Write(func(fd uintptr) bool {
		n, err = unix.SendmsgN(int(fd), b, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	}); cerr != nil || err != nil {
		return
	}
	m.out = append(m.out, b[:n]...)
}

// finish ends the input's connection: the frames still coming, the
// server drained and checked against what the guest was told, a RST of
// the guest's if the flow is still there, and then no flow.
func (m *connModel) finish() {
	m.t.Helper()
	m.flush()
	m.poll(20*time.Millisecond, 2*time.Millisecond)
	// The server's data reaches a guest that acknowledges it all and
	// opens its window, round by round while it makes progress.
	all := int64(len(m.out))
	if m.shut {
		all++ // and the FIN after a shutdown
	}
	for prev, stuck := int64(-1), 0; !m.ended && !m.closed && m.rNxt < all; {
		ec, alive := m.conn()
		if !alive {
			break
		}
		if m.rNxt == prev {
			if stuck++; stuck == 5 {
				m.fail("the server's data (and FIN after a shutdown: %v) stops at %d of %d after the guest's ACK", m.shut, m.rNxt, all)
			}
		} else {
			stuck = 0
		}
		prev = m.rNxt
		m.c.ack, m.c.wnd = m.iss+1+uint32(m.rNxt), 0xffff
		m.batch = append(m.batch, m.c.frame(m.c.tcp(flagACK, ec.rcvNxt), nil))
		if a := m.rNxt; a <= m.maxEnd {
			m.una = max(m.una, a)
		}
		m.flush()
		m.poll(30*time.Millisecond, time.Duration(stuck+1)*3*time.Millisecond)
	}
	ec, alive := m.conn()
	if !m.closed && !m.eof && !m.rdErr {
		// What the server must read: what the engine took, which is
		// what it acknowledged; after the guest's FIN, or without a
		// flow (its socket closed), the server reads to the end.
		want := -1
		if alive && !ec.guestFIN {
			want = int(int32(ec.rcvNxt - (guestISN + 1)))
		}
		_ = m.srv.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 64<<10)
		for want < 0 || m.read < want {
			b := buf
			if want >= 0 {
				b = buf[:min(len(buf), want-m.read)]
			}
			n, err := m.srv.Read(b)
			m.gotData(b[:n])
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					m.fail("server read %d of %d bytes the guest was told were taken", m.read, want)
				}
				if n == 0 && errors.Is(err, io.EOF) {
					m.eof = true
				} else {
					m.rdErr = true
				}
				break
			}
		}
		m.srvRead(0)
	}
	if !m.closed && !m.rdErr && !m.wasReset && !m.guestReset {
		// Nothing reset: everything acknowledged reached the server,
		// and the FIN as end of file.
		fin := int64(0)
		if m.eof {
			fin = 1
		}
		if m.ackHi > int64(m.read)+fin {
			m.fail("the guest was told %d were taken, the server read %d (end of file %v)", m.ackHi, m.read, m.eof)
		}
	}
	if alive {
		m.h.e.HandleTap([]*packet.Parsed{m.c.frame(m.c.tcp(flagRST, ec.rcvNxt), nil)})
	}
	if n, a := m.h.flows(); n != 0 || a != 0 {
		m.fail("%d flows, %d active TCP connections after the guest's RST", n, a)
	}
	// What the loop sent before the RST; nothing can follow.
	m.drain()
	ps := &m.h.st.TCP
	if c, x := ps.FlowsCreated.Load(), ps.FlowsExpired.Load(); c != 1 || x != 1 {
		m.fail("%d flows created, %d ended; want 1", c, x)
	}
}

// openFDs counts the process's open file descriptors.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// runConn runs one input (see the layout above) against an engine of its
// own and a server socket in fuzzNS.
func runConn(t *testing.T, in []byte) {
	r := &fuzzReader{b: in}
	h0 := r.byte()
	v6 := h0&fzV6 != 0
	mssB, wsB, wndB := r.byte(), r.byte(), r.byte()
	fdsBefore := openFDs()

	h := startHarness(t, nil)
	c := newGuestConn(h, v6, 40100, fuzzPort)
	m := &connModel{t: t, h: h, c: c, seed: h0 >> 4, echo: h0&fzEcho != 0, finOff: -1}

	syn := c.tcp(flagSYN, guestISN)
	c.wnd = 0xffff
	if wndB != 0 {
		c.wnd = uint16(wndB) * 257
	}
	syn.Window = c.wnd
	m.mss = 1460
	if v6 {
		m.mss = 1440
	}
	if h0&fzNoMSS == 0 {
		mss := 1460
		if mssB != 0 {
			mss = 40 + 6*int(mssB)
		}
		syn.Options = append(syn.Options, layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: binary.BigEndian.AppendUint16(nil, uint16(mss))})
		m.mss = max(min(m.mss, mss), 64)
	} else {
		m.mss = min(m.mss, 536)
	}
	if h0&fzNoWS == 0 {
		syn.Options = append(syn.Options, layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{wsB & 15}})
	}
	p := c.frame(syn, nil)
	if err := inFuzzNS(func() { c.send(p) }); err != nil {
		t.Fatal(err)
	}
	var sa *rxSeg
	select {
	case f := <-h.tap.frames:
		if _, err := wirecheck.Check(f); err != nil {
			t.Fatalf("SYN-ACK: %v", err)
		}
		var err error
		if sa, err = decodeFrame(f); err != nil {
			t.Fatalf("SYN-ACK: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("no SYN-ACK")
	}
	wantWS := -1
	if h0&fzNoWS == 0 {
		wantWS = ourScale
	}
	if sa.flags != flagSYN|flagACK || sa.ack != guestISN+1 || sa.ws != wantWS || sa.mss != h.e.mssFor(c.guest) {
		t.Fatalf("SYN-ACK %v; want ack %d, MSS %d, window scale %d", sa, uint32(guestISN+1), h.e.mssFor(c.guest), wantWS)
	}
	ln := fuzzNS.ln[0]
	if v6 {
		ln = fuzzNS.ln[1]
	}
	m.srv = accept(t, ln)
	var err error
	if m.raw, err = m.srv.SyscallConn(); err != nil {
		t.Fatal(err)
	}
	m.iss = sa.seq
	c.seq, c.ack = guestISN+1, sa.seq+1
	c.send(c.seg(flagACK, nil))
	m.drain()

	for ops := 0; r.more() && ops < fzMaxOps; ops++ {
		op := r.byte() % 16
		switch {
		case op < opQueue:
			m.segment(r)
			m.flush()
		case op < opWrite:
			m.segment(r)
		default:
			m.flush()
			switch op {
			case opWrite:
				n := (int(r.byte()) + 1) * 64
				b := make([]byte, n)
				for i := range b {
					b[i] = serverByte(len(m.out) + i)
				}
				m.srvWrite(b)
			case opRead:
				m.srvRead(int(r.byte()) * 256)
			case opShutdown:
				if !m.closed && !m.shut {
					_ = m.srv.CloseWrite()
					m.shut = true
				}
			case opClose:
				if !m.closed {
					m.srv.Close()
					m.closed, m.shut = true, true
				}
			case opReset:
				if !m.closed {
					_ = m.srv.SetLinger(0)
					m.srv.Close()
					m.closed, m.wasReset = true, true
				}
			default:
				d := min(time.Duration(r.byte()%8+1)*time.Millisecond, fzMaxWait-m.waited)
				m.waited += d
				m.poll(d, 0)
			}
			m.drain()
		}
	}
	m.finish()

	m.srv.Close()
	h.stop()
	for i := 0; ; i++ {
		fds := openFDs()
		if fds == fdsBefore {
			break
		}
		if i == 100 {
			t.Fatalf("%d open descriptors after the input, %d before", fds, fdsBefore)
		}
		time.Sleep(time.Millisecond)
	}
}

// FuzzConn drives one connection from the guest to a real server socket
// in a namespace of the test's own: a handshake with the SYN's options
// from the input, then the guest's segments (mostly near the
// connection's real numbers, sometimes wild, with payloads that are its
// byte stream at their sequence numbers), the server's writes, reads,
// shutdown, close and reset, and short waits for the engine's output.
// It checks, against a model of the connection, that
//
//   - every frame to the guest is well formed (wirecheck), on the
//     connection, and only RSTs follow its end;
//   - our data and FINs never start below what the guest acknowledged
//     (as of its batch before), leave no hole, fit the MSS, and carry
//     the server's bytes at their offsets; the FIN comes after all of
//     them, once the server shut down; bare ACKs are at our next byte
//     or one below;
//   - our ACK numbers never go back nor beyond what the guest sent;
//   - at the end, on an open connection, what the server wrote reaches
//     a guest that acknowledges everything and opens its window;
//   - the server reads a prefix of the guest's stream, and once drained
//     (nothing reset) at least all we acknowledged (the FIN as end of
//     file);
//   - after a final RST of the guest's no flow is left, exactly one was
//     made and ended, and no descriptor leaks.
func FuzzConn(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	if err := inFuzzNS(func() {}); err != nil {
		f.Skipf("no network namespace of our own: %v", err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		runConn(t, in)
	})
}

// seedBuilder writes inputs in the layout of runConn.
type seedBuilder struct{ b []byte }

func newSeed(h0, mss, ws, wnd byte) *seedBuilder {
	return &seedBuilder{b: []byte{h0, mss, ws, wnd}}
}

func (s *seedBuilder) op(op byte, args ...byte) *seedBuilder {
	s.b = append(append(s.b, op), args...)
	return s
}

// Segment argument bytes for the seeds.
const (
	sfACK    = 0x00
	sfPSH    = 0x04
	sfFIN    = 0x03
	sfRST    = 0x38
	sqNext   = 0x00
	akAll    = 0x00
	akSame   = 0x40
	wnKeep   = 0x00
	wnFull   = 0x40
	wnZero   = 0x80
	lnNone   = 0xc0
	optNone  = 0x00
	lnKilo   = 0x83 // 4*256 bytes
	lnSmall  = 100
	sqNearUn = 0xa0 // near what we acknowledged, offset times 1
)

func (s *seedBuilder) seg(op, flags, sq byte, sqArg []byte, ak, wn, ln, opt byte) *seedBuilder {
	s.b = append(s.b, op, flags, sq)
	s.b = append(s.b, sqArg...)
	s.b = append(s.b, ak, wn, ln, opt)
	return s
}

func fuzzSeeds() [][]byte {
	var seeds [][]byte
	for _, h0 := range []byte{0, fzV6 | 0x30} {
		// A clean exchange: data both ways, the guest's FIN, the
		// server's shutdown.
		seeds = append(seeds, newSeed(h0, 0, 7, 0).
			seg(opSend, sfPSH, sqNext, nil, akAll, wnKeep, lnKilo, optNone).
			seg(opSend, sfPSH, sqNext, nil, akAll, wnKeep, lnSmall, optNone).
			op(opRead, 0).
			op(opWrite, 40).
			op(opWait, 2).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).
			seg(opSend, sfFIN, sqNext, nil, akAll, wnKeep, lnNone, optNone).
			op(opRead, 0).
			op(opShutdown).
			op(opWait, 2).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).b)
		// A half-close: the guest's FIN first, then the server's data
		// and close.
		seeds = append(seeds, newSeed(h0|fzEcho, 0, 7, 0).
			seg(opSend, sfPSH, sqNext, nil, akAll, wnKeep, lnSmall, optNone).
			op(opRead, 0).
			seg(opSend, sfFIN, sqNext, nil, akAll, wnKeep, lnNone, optNone).
			op(opWrite, 100).
			op(opWait, 3).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).
			op(opClose).
			op(opWait, 2).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).b)
		// Resets: the guest's, in the middle of data, and the server's.
		seeds = append(seeds, newSeed(h0, 0, 7, 0).
			seg(opSend, sfPSH, sqNext, nil, akAll, wnKeep, lnKilo, optNone).
			op(opWrite, 10).
			seg(opSend, sfRST, sqNext, nil, akAll, wnKeep, lnNone, optNone).
			op(opWait, 1).b)
		seeds = append(seeds, newSeed(h0, 0, 7, 0).
			op(opWrite, 10).
			op(opWait, 1).
			op(opReset).
			op(opWait, 2).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnSmall, optNone).b)
		// A zero window, opened again.
		seeds = append(seeds, newSeed(h0, 0, 0, 0).
			seg(opSend, sfACK, sqNext, nil, akAll, wnZero, lnNone, optNone).
			op(opWrite, 200).
			op(opWait, 2).
			seg(opSend, sfACK, sqNext, nil, akAll, wnFull, lnNone, optNone).
			op(opWait, 3).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).b)
		// Duplicate ACKs: three retransmit at once.
		seeds = append(seeds, newSeed(h0, 0, 7, 0).
			op(opWrite, 60).
			op(opWait, 2).
			seg(opSend, sfACK, sqNext, nil, akSame, wnKeep, lnNone, optNone).
			seg(opSend, sfACK, sqNext, nil, akSame, wnKeep, lnNone, optNone).
			seg(opSend, sfACK, sqNext, nil, akSame, wnKeep, lnNone, optNone).
			op(opWait, 2).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).b)
		// Out of order: a segment beyond a hole, the hole, the segment
		// again; then a batch of two.
		seeds = append(seeds, newSeed(h0, 0, 7, 0).
			seg(opSend, sfPSH, 0x80, []byte{100}, akAll, wnKeep, lnSmall, optNone).
			seg(opSend, sfPSH, sqNearUn, []byte{0}, akAll, wnKeep, lnSmall, optNone).
			seg(opSend, sfPSH, sqNearUn, []byte{0}, akAll, wnKeep, lnSmall, optNone).
			seg(opQueue, sfPSH, sqNext, nil, akAll, wnKeep, lnSmall, optNone).
			seg(opSend, sfPSH, sqNext, nil, akAll, wnKeep, lnSmall, optNone).
			op(opRead, 0).b)
		// A partial ACK, then all.
		seeds = append(seeds, newSeed(h0, 0, 7, 0).
			op(opWrite, 60).
			op(opWait, 2).
			op(opSend, sfACK, sqNext, 0x82, 0xfc, wnKeep, lnNone, optNone). // 1024 below all
			op(opWait, 1).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).b)
		// Three duplicate ACKs and, in the same batch, a late ACK of
		// all.
		seeds = append(seeds, newSeed(h0, 0, 7, 0).
			op(opWrite, 60).
			op(opWait, 2).
			seg(opQueue, sfACK, sqNext, nil, akSame, wnKeep, lnNone, optNone).
			seg(opQueue, sfACK, sqNext, nil, akSame, wnKeep, lnNone, optNone).
			seg(opQueue, sfACK, sqNext, nil, akSame, wnKeep, lnNone, optNone).
			seg(opSend, sfACK, sqNext, nil, akAll, wnKeep, lnNone, optNone).
			op(opWait, 2).b)
		// A keepalive, then an upload that fills the host's buffers.
		up := newSeed(h0, 0, 7, 0).
			seg(opSend, sfACK, 0x80, []byte{0xff}, akAll, wnKeep, lnNone, optNone)
		for range 40 {
			up.seg(opSend, sfPSH, sqNext, nil, akAll, wnKeep, 0xbf, optNone)
		}
		seeds = append(seeds, up.op(opRead, 0).op(opWait, 2).
			seg(opSend, sfPSH, sqNearUn, []byte{0}, akAll, wnKeep, 0xbf, optNone).b)
	}
	return seeds
}
