package tcp

import (
	"encoding/binary"
	"errors"
	"hash/maphash"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/toguest"
)

// Timeouts, in the spirit of the reference's.
const (
	// ConnectTimeout bounds a host connect before the guest gets a RST.
	ConnectTimeout = 10 * time.Second
	// IdleTimeout resets a connection with no traffic either way.
	IdleTimeout = 2 * time.Hour
	// initialRTO is the first retransmission timeout, until a round
	// trip was measured (RFC 6298 2); it doubles per retry. Measured
	// round trips on a tap are far below minRTO, the timeout's floor
	// then (Linux's too).
	initialRTO = time.Second
	minRTO     = 200 * time.Millisecond
	maxRTO     = 30 * time.Second
	// maxRetries is the most retransmissions of one segment (and of a
	// SYN to the guest, synRetries) before the connection is reset.
	maxRetries = 8
	synRetries = 3
)

// ourScale is the window scale we announce: windows up to 16 MiB.
const ourScale = 8

// maxWindow is the most we advertise to the guest.
const maxWindow = 0xffff << ourScale

// Config is what an Engine needs.
type Config struct {
	// Rules decide where connections go.
	Rules *fwd.Rules
	Guest *fwd.Guest
	Loop  *evloop.Loop
	Flows *flow.Table
	// LoopOut writes to the guest from the loop's goroutine, TapOut from
	// the tap reader's.
	LoopOut, TapOut *toguest.Writer
	Stats           *stats.Counters
	// Forwards are the -t listening sockets opened at start.
	Forwards []fwd.Forward
	// MTU is the guest's (0: 65520).
	MTU int
	// Socket is socket(2) (unix.Socket if nil; tests may fail it).
	Socket func(domain, typ, proto int) (int, error)
	// NSSocket creates sockets in pasta's namespace, for TCP splice
	// (nil: no splice; loopback clients of -t ports go through the
	// guest's interface).
	NSSocket func(domain, typ, proto int) (int, error)
	// NoPeekOffset reads as on kernels without SO_PEEK_OFF for TCP
	// (tests).
	NoPeekOffset bool
}

// Engine is TCP translation.
type Engine struct {
	cfg   Config
	rules fwd.Rules
	st    *stats.Counters
	ps    *stats.Proto
	tab   *flow.Table
	loop  *evloop.Loop
	kConn evloop.Kind
	kLst  evloop.Kind
	// kSplice is the kind of spliced connections' sockets, spl their
	// state by flow index, pipeSize the pipes' size asked for.
	kSplice  evloop.Kind
	spl      []*splicer
	pipeSize int
	conns    []*conn
	// lw and tw are the loop's and the tap reader's output.
	lw, tw *writer
	lst    []listener
	// peekOff says the kernel keeps a peek offset for TCP sockets.
	peekOff bool
	discard []byte // without peekOff: where bytes in flight are peeked to
	mss4    int    // largest segment the guest's MTU takes, IPv4
	mss6    int    // and IPv6
	pend    pending
	isnKey  maphash.Seed // the secret of isn
	// rtx runs the retransmission and persist timers due before the
	// next tick.
	rtx *evloop.Timer
	// heldBytes is what the connections hold beyond holes, at most
	// heldTotal.
	heldBytes int
}

// writer is one goroutine's output to the guest and its scratch space.
type writer struct {
	out *toguest.Writer
	ctl []byte // a control segment's frame
	// data holds frames of segments read from sockets, each in a slot
	// of stride bytes with the payload at headroom; iov points at the
	// payloads of a read.
	data []byte
	iov  []unix.Iovec
}

// dataBuf is the room for segments read from one socket at once.
const dataBuf = 2 << 20

// maxSegs bounds the segments of one read.
const maxSegs = 256

// New opens the listening sockets of cfg.Forwards, registers the
// engine's kinds and timers with the loop and returns it.
func New(cfg Config) (*Engine, error) {
	if cfg.Socket == nil {
		cfg.Socket = unix.Socket
	}
	mtu := cfg.MTU
	if mtu <= 0 || mtu > 65520 {
		mtu = 65520
	}
	e := &Engine{cfg: cfg, rules: *cfg.Rules, st: cfg.Stats, ps: &cfg.Stats.TCP, tab: cfg.Flows, loop: cfg.Loop,
		mss4: min(mtu-packet.IPv4Len-hdrLen, 65535-packet.IPv4Len-hdrLen),
		mss6: min(mtu-packet.IPv6Len-hdrLen, 65535-hdrLen), isnKey: maphash.MakeSeed()}
	e.rules.Splice = cfg.NSSocket != nil && cfg.Rules.Splice
	e.pipeSize = maxPipeSize()
	e.lw = newWriter(cfg.LoopOut, true)
	e.tw = newWriter(cfg.TapOut, false)
	e.kConn = cfg.Loop.Register("TCP socket", evloop.HandlerFunc(e.connEvent))
	e.kLst = cfg.Loop.Register("TCP listener", evloop.HandlerFunc(e.listenerEvent))
	e.kSplice = cfg.Loop.Register("TCP splice socket", evloop.HandlerFunc(e.spliceEvent))
	cfg.Loop.Every(e.tick)
	e.rtx = cfg.Loop.NewTimer(e.rtxDue)
	e.peekOff = !cfg.NoPeekOffset && probePeekOffset()
	if !e.peekOff {
		e.discard = make([]byte, maxWindow)
	}
	for _, f := range cfg.Forwards {
		if err := e.openListener(f); err != nil {
			e.Release()
			return nil, err
		}
	}
	return e, nil
}

func newWriter(out *toguest.Writer, data bool) *writer {
	w := &writer{out: out, ctl: make([]byte, headroom+maxOptLen)}
	if data {
		w.data = make([]byte, dataBuf)
		w.iov = make([]unix.Iovec, maxSegs+1)
	}
	return w
}

// probePeekOffset reports whether this kernel keeps SO_PEEK_OFF for TCP
// sockets (Linux 6.9 and later).
func probePeekOffset() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0) == nil
}

// conn states.
const (
	stConnecting  = iota + 1 // guest's SYN: host connect in progress
	stSynAckSent             // host connected, SYN-ACK sent, waiting for the guest's ACK
	stSynSent                // accepted on a listener, SYN sent to the guest
	stEstablished            // data both ways (half-closes in the flags)
)

// conn is a connection's state towards the guest, beside its flow.
type conn struct {
	state uint8
	tap   uint8 // the flow side of the guest
	fd    int
	// events is what the socket is registered for, 0 when it is not.
	events uint32
	// Towards the guest: our initial sequence number, the oldest byte
	// not acknowledged, the next to send and the highest sent; the
	// guest's window (bytes from sndUna) and scale, the segment size.
	iss, sndUna, sndNxt, sndMax uint32
	sndWnd                      uint32
	sndScale                    uint8
	mss                         int
	// From the guest: the next byte expected, our scale (0 if the guest
	// did not scale) and the window last advertised.
	rcvNxt   uint32
	rcvScale uint8
	rcvWnd   uint32
	// sndbuf is the host socket's send buffer size as last read,
	// sndbufAge the window computations since (see window).
	sndbuf, sndbufAge int
	// Endings: the host's EOF was read, our FIN sent (at finSeq) and
	// acknowledged; the guest's FIN arrived (and the host socket was
	// shut for writing).
	hostEOF, finSent, finAcked, guestFIN bool
	finSeq                               uint32
	// wantOut waits for room in the host's send buffer to update the
	// window; lost says the socket did not take all the guest sent, so
	// the update comes with duplicate ACKs; keepalive is set once
	// SO_KEEPALIVE is on; stalled says the last read stopped at the end
	// of the guest's window.
	wantOut, lost, keepalive, stalled bool
	// Timers, in monotonic nanoseconds: the retransmission (or persist)
	// deadline (0: none) and timeout, retries of the current one,
	// duplicate ACKs seen, and the last traffic.
	rtoAt, rto int64
	retries    int
	dupAcks    int
	lastAct    int64
	since      int64
	// Round trips (RFC 6298): the smoothed time and its variation, and
	// the one being timed, when the segment up to rttSeq was sent
	// (rttAt, 0 if none is).
	srtt, rttvar, rttAt int64
	rttSeq              uint32
	// guestISN is the guest's initial sequence number (for quoting its
	// SYN in an ICMP error).
	guestISN uint32
	// held keeps the guest's segments that arrived beyond a hole; sack
	// says both SYNs permitted SACK, so that our ACKs tell the guest
	// what is held, the block of sackLast, the latest, first.
	held     held
	sack     bool
	sackLast uint32
}

// conn returns the conn of flow idx, reset when reset.
func (e *Engine) conn(idx int32) *conn {
	for int(idx) >= len(e.conns) {
		e.conns = append(e.conns, nil)
	}
	c := e.conns[idx]
	if c == nil {
		c = &conn{}
		e.conns[idx] = c
	}
	return c
}

// host is the flow side of the host socket.
func (c *conn) host() uint8 { return c.tap ^ 1 }

// room is what the guest's window leaves for new data.
func (c *conn) room() uint32 {
	used := c.sndNxt - c.sndUna
	if c.sndWnd <= used {
		return 0
	}
	return c.sndWnd - used
}

// isn chooses our initial sequence number towards the guest for the
// addresses and ports of side s (RFC 6528): a keyed hash of them, which
// an off-path attacker cannot guess, plus a clock ticking every 64 ns.
// A new connection with the addresses and ports of one the guest still
// keeps in TIME-WAIT so starts above it, and the guest takes its SYN.
func (e *Engine) isn(s *flow.Side, now int64) uint32 {
	var b [36]byte
	ea, fa := s.EAddr.As16(), s.FAddr.As16()
	copy(b[0:16], ea[:])
	copy(b[16:32], fa[:])
	binary.BigEndian.PutUint16(b[32:], s.EPort)
	binary.BigEndian.PutUint16(b[34:], s.FPort)
	return uint32(maphash.Bytes(e.isnKey, b[:])) + uint32(now>>6)
}

// setEvents registers the socket for what the connection waits for now.
// Established sockets are edge-triggered: data the guest's window cannot
// take yet stays in the receive queue without waking the loop, and kick
// asks for the event again when the window opens.
func (e *Engine) setEvents(idx int32, f *flow.Flow, c *conn) {
	e.setEventsKick(idx, f, c, false)
}

// kick makes the loop look at the socket again (re-arming an
// edge-triggered registration reports data already queued).
func (e *Engine) kick(idx int32, f *flow.Flow, c *conn) {
	e.setEventsKick(idx, f, c, c.state == stEstablished && !c.finSent)
}

func (e *Engine) setEventsKick(idx int32, f *flow.Flow, c *conn, kick bool) {
	want := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET)
	switch {
	case c.state == stConnecting:
		want = unix.EPOLLOUT
	case c.wantOut && !c.guestFIN:
		want |= unix.EPOLLOUT
	}
	if want == c.events && !kick {
		return
	}
	var err error
	ref := evloop.Ref{Kind: e.kConn, Side: c.host(), Index: idx, Gen: f.Gen & evloop.GenMask}
	if c.events == 0 {
		err = e.loop.Add(c.fd, want, ref)
	} else {
		err = e.loop.Mod(c.fd, want, ref)
	}
	if err != nil {
		log.Debugf("TCP flow %d: epoll: %v", idx, err)
		want = 0
	}
	c.events = want
}

// flowOf returns the live TCP flow and conn named by an event, or nil.
func (e *Engine) flowOf(r evloop.Ref) (*flow.Flow, *conn) {
	if int(r.Index) >= len(e.conns) {
		return nil, nil
	}
	f := e.tab.At(r.Index)
	if !f.InUse() || f.Type != flow.TypeTCP || !evloop.SameGen(f.Gen, r.Gen) {
		return nil, nil
	}
	return f, e.conns[r.Index]
}

// connEvent handles events on a connection's socket.
func (e *Engine) connEvent(r evloop.Ref, ev uint32) {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	f, c := e.flowOf(r)
	if f == nil {
		return
	}
	now := evloop.Now()
	switch c.state {
	case stConnecting:
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			e.connected(r.Index, f, c, now)
		}
		return
	case stEstablished:
	default:
		return // the guest's half of the handshake is not done: kick does it
	}
	if ev&unix.EPOLLERR != 0 {
		if err := sockError(c.fd); err != nil {
			e.hostFailed(r.Index, f, c, err)
			return
		}
	}
	if ev&unix.EPOLLOUT != 0 && c.wantOut {
		c.wantOut = false
		e.windowUpdate(e.lw, f, c, true)
	}
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
		if !e.toGuest(r.Index, f, c, now, ev&(unix.EPOLLHUP|unix.EPOLLRDHUP) != 0) {
			return
		}
	}
	e.setEvents(r.Index, f, c)
	e.maybeClose(r.Index, f, c)
}

// sockError returns the pending error of a socket, if any.
func sockError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}

// hostFailed resets the guest's side of a connection whose socket failed
// and frees it.
func (e *Engine) hostFailed(idx int32, f *flow.Flow, c *conn, err error) {
	if log.Enabled(log.LevelDebug) {
		log.Debugf("TCP flow %d: host socket: %v", idx, err)
	}
	e.sendRST(e.lw, f, c)
	e.free(idx, f, c, false)
}

// free closes the connection's socket (with a zero linger when reset, so
// the peer sees a RST) and frees the flow.
func (e *Engine) free(idx int32, f *flow.Flow, c *conn, reset bool) {
	if c.fd >= 0 {
		if c.events != 0 {
			e.loop.Del(c.fd)
		}
		if reset {
			_ = unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		unix.Close(c.fd)
	}
	c.fd, c.events, c.state = -1, 0, 0
	e.heldBytes -= c.held.release()
	if log.Enabled(log.LevelDebug) {
		log.Debugf("TCP flow %d: closed (reset %v): %s", idx, reset, f)
	}
	f.Sock = [2]int{-1, -1}
	e.tab.Free(idx)
	e.ps.FlowsExpired.Add(1)
	e.ps.Active.Add(-1)
}

// maybeClose frees a connection once both FINs are acknowledged.
func (e *Engine) maybeClose(idx int32, f *flow.Flow, c *conn) {
	if c.state == stEstablished && c.guestFIN && c.finAcked {
		e.free(idx, f, c, false)
	}
}

// tick runs the connections' timers.
func (e *Engine) tick(now int64) {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	e.resumeListeners()
	e.tab.EachOf(flow.TypeTCP, func(idx int32, f *flow.Flow) {
		c := e.conns[idx]
		if now-c.lastAct > int64(IdleTimeout) {
			e.sendRST(e.lw, f, c)
			e.free(idx, f, c, true)
			return
		}
		switch c.state {
		case stConnecting:
			if now-c.since > int64(ConnectTimeout) {
				e.sendRST(e.lw, f, c)
				e.free(idx, f, c, true)
			}
			return
		case stSynSent, stSynAckSent:
			if now < c.rtoAt {
				return
			}
			if !c.backoff(now, synRetries) {
				if c.state == stSynSent {
					e.sendRST(e.lw, f, c)
				}
				e.free(idx, f, c, true)
				return
			}
			e.sendSyn(e.lw, f, c)
			return
		}
		if !e.dataTimer(idx, f, c, now) {
			return
		}
		if (c.rcvWnd == 0 || c.lost) && !c.guestFIN {
			// The window update may have been lost, or EPOLLOUT
			// said nothing: send it again.
			e.windowUpdate(e.lw, f, c, false)
		}
	})
	e.lw.out.Flush()
}

// rtxDue runs the established connections' timers that are due, and
// arms the loop's timer again for those that are not (dataTimer arms it
// for the ones it ran).
func (e *Engine) rtxDue(now int64) {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	e.tab.EachOf(flow.TypeTCP, func(idx int32, f *flow.Flow) {
		c := e.conns[idx]
		switch {
		case c.state != stEstablished || c.rtoAt == 0:
		case now < c.rtoAt:
			e.rtx.Arm(c.rtoAt)
		default:
			e.dataTimer(idx, f, c, now)
		}
	})
	e.lw.out.Flush()
}

// dataTimer runs an established connection's timer, due at c.rtoAt:
// with data or a FIN unacknowledged, the retransmission timeout; with
// nothing in flight and the guest's window shut, the persist timer,
// whose ACK below the window asks the guest for its window again (its
// window update may have been lost), at the same intervals. It reports
// false if it freed the connection.
func (e *Engine) dataTimer(idx int32, f *flow.Flow, c *conn, now int64) bool {
	switch {
	case c.sndNxt != c.sndUna || c.finSent && !c.finAcked:
		if c.rtoAt == 0 || now < c.rtoAt {
			return true
		}
		if !c.backoff(now, maxRetries) {
			if log.Enabled(log.LevelDebug) {
				log.Debugf("TCP flow %d: no ACK after %d retransmissions", idx, c.retries)
			}
			e.sendRST(e.lw, f, c)
			e.free(idx, f, c, true)
			return false
		}
		e.retransmit(idx, f, c)
	case c.sndWnd == 0 && !c.hostEOF:
		switch {
		case c.rtoAt == 0:
			c.rtoAt = now + c.rto
		case now >= c.rtoAt:
			if pendingBytes(c.fd) > 0 {
				e.sendSeg(e.lw, f, c, c.sndNxt-1, flagACK)
			}
			c.rto = min(2*c.rto, int64(maxRTO))
			c.rtoAt = now + c.rto
		}
	default:
		c.rtoAt = 0
	}
	if c.rtoAt != 0 {
		e.rtx.Arm(c.rtoAt)
	}
	return true
}

// armRTO sets the connection's timer to at, and the loop's.
func (e *Engine) armRTO(c *conn, at int64) {
	c.rtoAt = at
	e.rtx.Arm(at)
}

// rttSample takes a round trip of r nanoseconds into the connection's
// estimate (RFC 6298 2).
func (c *conn) rttSample(r int64) {
	r = max(r, 1)
	if c.srtt == 0 {
		c.srtt, c.rttvar = r, r/2
		return
	}
	d := c.srtt - r
	if d < 0 {
		d = -d
	}
	c.rttvar = (3*c.rttvar + d) / 4
	c.srtt = (7*c.srtt + r) / 8
}

// baseRTO is the retransmission timeout before any retry: from the
// measured round trips, at least minRTO, or initialRTO before any.
func (c *conn) baseRTO() int64 {
	if c.srtt == 0 {
		return int64(initialRTO)
	}
	return min(max(c.srtt+4*c.rttvar, int64(minRTO)), int64(maxRTO))
}

// GuestGone resets every connection through the tap: the guest that had
// them left (passt: its qemu socket connection closed), so nothing will
// acknowledge or answer on them again. Each host peer sees a reset at
// once rather than after the retransmission timeouts or the idle timeout;
// spliced connections do not involve the guest and carry on.
func (e *Engine) GuestGone() {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	n := 0
	e.tab.EachOf(flow.TypeTCP, func(idx int32, f *flow.Flow) {
		e.free(idx, f, e.conns[idx], true)
		n++
	})
	if n > 0 {
		log.Infof("TCP: the guest left: %d connections reset", n)
	}
}

// backoff counts one more retry, doubling the retransmission timeout,
// and reports false, changing nothing, when max retries were made.
func (c *conn) backoff(now int64, max int) bool {
	if c.retries >= max {
		return false
	}
	c.retries++
	c.rto = min(2*c.rto, int64(maxRTO))
	c.rtoAt = now + c.rto
	return true
}

// pendingBytes is what the socket's receive queue holds.
func pendingBytes(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}

// retransmit rewinds what was sent to the guest to its last ACK, for the
// loop to send again.
func (e *Engine) retransmit(idx int32, f *flow.Flow, c *conn) {
	if c.state != stEstablished {
		return
	}
	e.st.TCPRetransmits.Add(1)
	c.sndNxt = c.sndUna
	c.rttAt = 0 // a retransmitted segment times nothing (Karn)
	if c.finSent && !c.finAcked {
		c.finSent = false
	}
	if e.peekOff {
		_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0)
	}
	c.dupAcks = 0
	e.kick(idx, f, c)
}

// Release closes every socket; called once the loop has stopped.
func (e *Engine) Release() {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	e.tab.Each(func(i int32, f *flow.Flow) {
		if f.Type == flow.TypeTCPSplice && int(i) < len(e.spl) && e.spl[i] != nil {
			s := e.spl[i]
			for side := range 2 {
				if s.fd[side] >= 0 {
					unix.Close(s.fd[side])
					s.fd[side] = -1
				}
			}
			e.closePipes(s)
			e.tab.Free(i)
			return
		}
		if f.Type == flow.TypeTCP && int(i) < len(e.conns) && e.conns[i] != nil {
			c := e.conns[i]
			if c.fd >= 0 {
				unix.Close(c.fd)
				c.fd = -1
			}
			e.tab.Free(i)
		}
	})
	for i := range e.lst {
		if e.lst[i].fd >= 0 {
			unix.Close(e.lst[i].fd)
			e.lst[i].fd = -1
		}
	}
}

// errUnreachable reports whether a connect error means the destination
// cannot be reached.
func errUnreachable(err error) bool {
	return errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH)
}

// mssFor is the largest segment the guest's MTU takes for family of a.
func (e *Engine) mssFor(a netip.Addr) int {
	if a.Is4() {
		return e.mss4
	}
	return e.mss6
}
