package tcp

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/sockaddr"
	"github.com/gopasst/gopasst/internal/stats"
)

// maxMSSClamp is the largest TCP_MAXSEG Linux takes (MAX_TCP_WINDOW);
// a guest MSS above it needs no clamp.
const maxMSSClamp = 32767

// pending is the in-order payload of a batch for one connection, written
// to its socket in one sendmsg.
type pending struct {
	idx  int32 // -1: none
	f    *flow.Flow
	c    *conn
	iov  []unix.Iovec
	n    int
	fin  bool // the guest's FIN follows the payload
	ack  bool // the guest must get an ACK
	grow bool // the guest's window grew: data may go out
}

// HandleTap takes a batch of the guest's TCP segments.
func (e *Engine) HandleTap(pkts []*packet.Parsed) {
	now := evloop.Now()
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	pd := &e.pend
	if pd.iov == nil {
		pd.iov = make([]unix.Iovec, 0, 64)
	}
	pd.idx = -1
	for _, p := range pkts {
		var s segment
		if r := parseSegment(p.L4, &s); r != segOK {
			e.st.Drop(stats.DropBadSegment)
			if log.Enabled(log.LevelTrace) {
				log.Tracef("TCP: dropping segment from %s: %d", p.Src4, r)
			}
			continue
		}
		if !p.CsumPartial && !checksumOK(p.L4, p.Src4, p.Dst4) {
			e.st.Drop(stats.DropChecksum)
			continue
		}
		key := flow.Key{Type: flow.TypeTCP, PIF: flow.PIFTap, EAddr: p.Src4, EPort: s.sport, FAddr: p.Dst4, FPort: s.dport}
		ref, found := e.tab.Lookup(key)
		if pd.idx >= 0 && (!found || ref.Index != pd.idx) {
			e.flush()
		}
		if !found {
			if s.flags&(flagSYN|flagACK|flagRST) == flagSYN {
				e.open(p, &s, now)
				continue
			}
			e.st.Drop(stats.DropNoConn)
			if s.flags&flagRST == 0 {
				e.rstNoConn(p, &s)
			}
			continue
		}
		f := e.tab.At(ref.Index)
		c := e.conns[ref.Index]
		if pd.idx < 0 {
			pd.idx, pd.f, pd.c = ref.Index, f, c
		}
		if !e.segment(ref.Index, f, c, p, &s, now) {
			pd.idx = -1
			pd.iov, pd.n, pd.fin, pd.ack, pd.grow = pd.iov[:0], 0, false, false, false
		}
	}
	if pd.idx >= 0 {
		e.flush()
	}
	e.tw.out.Flush()
}

// rstNoConn answers a segment for no connection with RST (RFC 9293
// 3.10.7.1).
func (e *Engine) rstNoConn(p *packet.Parsed, s *segment) {
	if !e.rules.GuestSource(p.Src4) || p.Dst4.IsMulticast() {
		return
	}
	side := flow.Side{EAddr: p.Src4, EPort: s.sport, FAddr: p.Dst4, FPort: s.dport}
	c := conn{rcvNxt: s.seq + s.seqLen()}
	seq, flags := uint32(0), uint8(flagRST|flagACK)
	if s.flags&flagACK != 0 {
		seq, flags = s.ack, flagRST
	}
	w := e.tw
	th := headroom - hdrLen
	putHeader(w.ctl[th:], side.FPort, side.EPort, seq, c.rcvNxt, flags, 0, false, 0, 0)
	if flags == flagRST {
		w.ctl[th+8], w.ctl[th+9], w.ctl[th+10], w.ctl[th+11] = 0, 0, 0, 0
	}
	w.out.WriteFrame(e.putFrame(w, w.ctl, th, hdrLen, 0, &side, false))
	e.st.TCPResets.Add(1)
}

// open starts a connection for the guest's SYN: a non-blocking connect
// towards where the rules send it.
func (e *Engine) open(p *packet.Parsed, s *segment, now int64) {
	ini := flow.Side{EAddr: p.Src4, EPort: s.sport, FAddr: p.Dst4, FPort: s.dport}
	tgt, v := e.rules.FromTap(ini)
	if v != fwd.OK {
		switch v {
		case fwd.BadSource:
			e.st.Drop(stats.DropBadSource)
		case fwd.BadDest:
			e.st.Drop(stats.DropMulticast)
		default:
			e.st.Drop(stats.DropNoFlow)
			e.rstNoConn(p, s)
		}
		return
	}
	idx, f, err := e.tab.Alloc()
	if err != nil {
		e.st.Drop(stats.DropTableFull)
		return
	}
	f.SetIni(flow.TypeTCP, flow.PIFTap, ini)
	c := e.conn(idx)
	*c = conn{tap: flow.Ini, fd: -1, iss: e.isn(&f.Side[flow.Ini], now), rcvNxt: s.seq + 1, guestISN: s.seq,
		sndWnd: uint32(s.wnd), lastAct: now, since: now, rto: int64(initialRTO), sack: s.sackOK}
	c.sndUna, c.sndNxt, c.sndMax = c.iss, c.iss+1, c.iss+1
	c.mss = e.mssFor(ini.EAddr)
	if s.mss != 0 {
		c.mss = min(c.mss, int(s.mss))
	} else {
		c.mss = min(c.mss, 536) // RFC 9293 3.7.1
	}
	if c.mss < 64 {
		c.mss = 64
	}
	if s.ws != noScale {
		c.sndScale, c.rcvScale = s.ws, ourScale
	}
	fd, connErr := e.connect(tgt, c.mss)
	if fd < 0 {
		e.tab.Free(idx)
		e.st.Drop(stats.DropSockErr)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("TCP: no socket for %s: %v", ini, connErr)
		}
		e.rstNoConn(p, s)
		return
	}
	c.fd = fd
	f.SetTgt(flow.PIFHost, tgt)
	f.Sock[flow.Tgt], f.Connected[flow.Tgt] = fd, true
	if err := e.tab.Activate(idx, flow.Ini); err != nil {
		unix.Close(fd)
		e.tab.Free(idx)
		e.st.Drop(stats.DropNoFlow)
		return
	}
	e.ps.FlowsCreated.Add(1)
	e.ps.Active.Add(1)
	if log.Enabled(log.LevelDebug) {
		log.Debugf("TCP flow %d: new: %s", idx, f)
	}
	switch {
	case connErr == nil:
		e.hostUp(e.tw, idx, f, c, now)
	case errors.Is(connErr, unix.EINPROGRESS):
		c.state = stConnecting
		e.setEvents(idx, f, c)
	default:
		if log.Enabled(log.LevelDebug) {
			log.Debugf("TCP flow %d: connect: %v", idx, connErr)
		}
		c.state = stConnecting
		if errUnreachable(connErr) {
			e.unreachable(e.tw, f, c)
		} else {
			e.sendRST(e.tw, f, c)
		}
		e.free(idx, f, c, false)
	}
}

// connect opens a non-blocking socket towards tgt.EAddr:EPort, from
// tgt.FAddr (an outbound address, or unspecified) and the outbound
// device, with its MSS clamped to mss, and starts connecting. It returns
// -1 if no socket could be made, else the socket and connect's error.
func (e *Engine) connect(tgt flow.Side, mss int) (int, error) {
	family := unix.AF_INET6
	if tgt.EAddr.Is4() {
		family = unix.AF_INET
	}
	fd, err := e.cfg.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) {
		unix.Close(fd)
		return -1, err
	}
	if ifname := e.rules.OutboundIf(tgt.EAddr); ifname != "" {
		if err := unix.BindToDevice(fd, ifname); err != nil {
			return fail(err)
		}
	}
	if !tgt.FAddr.IsUnspecified() && tgt.FAddr.IsValid() {
		if err := unix.Bind(fd, sockaddr.From(netip.AddrPortFrom(tgt.FAddr, 0))); err != nil {
			return fail(err)
		}
	}
	if mss <= maxMSSClamp {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if e.peekOff {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0)
	}
	return fd, unix.Connect(fd, sockaddr.From(netip.AddrPortFrom(tgt.EAddr, tgt.EPort)))
}

// segment handles one of the guest's segments for a connection, queueing
// its payload in e.pend. It reports false if it freed the connection.
func (e *Engine) segment(idx int32, f *flow.Flow, c *conn, p *packet.Parsed, s *segment, now int64) bool {
	pd := &e.pend
	c.lastAct = now
	if s.flags&flagRST != 0 {
		return e.guestRST(idx, f, c, s)
	}
	switch c.state {
	case stConnecting:
		return true // the guest's SYN again: it gets the SYN-ACK once connected
	case stSynSent:
		if s.flags&flagACK != 0 && s.ack != c.iss+1 {
			// It acknowledges something else, as a guest still
			// holding an older connection of these ports in
			// TIME-WAIT does: a RST at its ACK ends that one, and
			// our next SYN opens this (RFC 9293 3.10.7.3).
			e.sendSeg(e.tw, f, c, s.ack, flagRST)
			e.st.TCPResets.Add(1)
			return true
		}
		if s.flags&(flagSYN|flagACK) != flagSYN|flagACK {
			return true
		}
		c.rcvNxt, c.guestISN = s.seq+1, s.seq
		c.sndUna, c.sack = s.ack, s.sackOK
		c.mss = min(e.mssFor(f.Side[c.tap].EAddr), max(int(s.mss), 64))
		if s.mss == 0 {
			c.mss = min(e.mssFor(f.Side[c.tap].EAddr), 536)
		}
		if s.ws != noScale {
			c.sndScale, c.rcvScale = s.ws, ourScale
		}
		c.sndWnd = uint32(s.wnd)
		c.handshakeRTT(now)
		pd.ack, pd.grow = true, true
		return true
	case stSynAckSent:
		if s.flags&flagSYN != 0 {
			if s.seq == c.guestISN {
				e.sendSyn(e.tw, f, c) // our SYN-ACK was lost
			}
			return true
		}
		if s.flags&flagACK == 0 || s.ack != c.iss+1 {
			return true
		}
		c.handshakeRTT(now)
		c.sndUna = s.ack
		pd.grow = true
	}
	if s.flags&flagSYN != 0 {
		// RFC 5961 4.2: a SYN on an open connection gets a challenge ACK.
		pd.ack = true
		return true
	}
	if s.flags&flagACK == 0 {
		e.st.Drop(stats.DropBadSegment)
		return true
	}
	if seqLT(c.sndMax, s.ack) {
		// It acknowledges what was never sent: an ACK, and the
		// segment is dropped (RFC 9293 3.10.7.4).
		e.pend.ack = true
		e.st.Drop(stats.DropOutOfWindow)
		return true
	}
	if !e.ackFromGuest(idx, f, c, s) {
		return false
	}
	e.dataFromGuest(c, s)
	return true
}

// handshakeRTT establishes the connection, its handshake's round trip
// (from our SYN or SYN-ACK, unless sent again) its first sample.
func (c *conn) handshakeRTT(now int64) {
	if c.retries == 0 && c.rttAt != 0 {
		c.rttSample(now - c.rttAt)
	}
	c.state, c.rtoAt, c.retries, c.rttAt = stEstablished, 0, 0, 0
	c.rto = c.baseRTO()
}

// guestRST handles the guest's RST (RFC 5961 3.2): at the next expected
// sequence number it resets the host side, inside the window it gets a
// challenge ACK, elsewhere it is dropped.
func (e *Engine) guestRST(idx int32, f *flow.Flow, c *conn, s *segment) bool {
	switch {
	case c.state == stSynSent:
		if s.flags&flagACK == 0 || s.ack != c.iss+1 {
			e.st.Drop(stats.DropOutOfWindow)
			return true
		}
	case c.state == stConnecting:
		// Our SYN-ACK is not out yet: only a RST for the guest's SYN.
	case s.seq == c.rcvNxt+uint32(e.pendingFor(idx)):
	case seqLT(c.rcvNxt, s.seq) && seqLT(s.seq, c.rcvNxt+max(c.rcvWnd, 1)):
		e.pend.ack = true
		e.st.Drop(stats.DropOutOfWindow)
		return true
	default:
		e.st.Drop(stats.DropOutOfWindow)
		return true
	}
	if e.pend.idx == idx {
		e.flushData()
	}
	e.free(idx, f, c, true)
	return false
}

// pendingFor is the payload queued for flow idx.
func (e *Engine) pendingFor(idx int32) int {
	if e.pend.idx == idx {
		return e.pend.n
	}
	return 0
}

// ackFromGuest takes the guest's acknowledgement and window: it drops
// what was acknowledged from the socket, counts duplicate ACKs (three
// retransmit at once), and wakes the reader when the window grows. It
// reports false if it freed the connection.
func (e *Engine) ackFromGuest(idx int32, f *flow.Flow, c *conn, s *segment) bool {
	pd := &e.pend
	ack := s.ack
	wnd := uint32(s.wnd) << c.sndScale
	if seqLT(c.sndNxt, ack) {
		// A late ACK of data sent before a retransmission rewound.
		if c.finSent || c.sndMax == ack && c.hostEOF {
			c.finSent = c.finSent || c.finSeq+1 == ack
		}
		c.sndNxt = ack
		if e.peekOff {
			_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, int(ack-c.sndUna))
		}
	}
	oldRoom := c.room()
	if seqLT(c.sndUna, ack) {
		acked := ack - c.sndUna
		if c.finSent && !c.finAcked && seqLT(c.finSeq, ack) {
			c.finAcked = true
			acked--
		}
		if acked > 0 {
			if err := consume(c.fd, int(acked)); err != nil {
				e.sendRST(e.tw, f, c)
				e.free(idx, f, c, true)
				return false
			}
		}
		c.sndUna = ack
		now := evloop.Now()
		if c.rttAt != 0 && !seqLT(ack, c.rttSeq) {
			c.rttSample(now - c.rttAt)
			c.rttAt = 0
		}
		c.dupAcks, c.retries, c.rto = 0, 0, c.baseRTO()
		c.rtoAt = 0
		if c.sndNxt != c.sndUna {
			e.armRTO(c, now+c.rto)
		}
	} else if ack == c.sndUna && len(s.payload) == 0 && s.flags&flagFIN == 0 && wnd == c.sndWnd && c.sndNxt != c.sndUna {
		c.dupAcks++
		if c.dupAcks == 3 {
			e.retransmit(idx, f, c)
		}
	}
	switch {
	case c.sndNxt != c.sndUna || c.hostEOF:
	case wnd == 0 && c.rtoAt == 0:
		e.armRTO(c, evloop.Now()+c.rto) // the persist timer
	case wnd > 0 && c.sndWnd == 0:
		c.rtoAt, c.rto = 0, c.baseRTO() // the window is open again
	}
	c.sndWnd = wnd
	if c.stalled && c.room() > oldRoom {
		pd.grow = true // data may wait in the socket: look again
	}
	return true
}

// dataFromGuest queues the in-order payload (and FIN) of s; other
// segments get an ACK, so that a hole, a duplicate, a keepalive or a
// window probe is answered.
func (e *Engine) dataFromGuest(c *conn, s *segment) {
	pd := &e.pend
	if c.guestFIN || pd.fin {
		// Nothing follows the FIN, not even in the same batch (a
		// guest that sends data at or after its FIN's sequence number
		// gets an ACK of the FIN, its data is not taken).
		if s.seqLen() > 0 {
			pd.ack = true
		}
		return
	}
	expected := c.rcvNxt + uint32(pd.n)
	seq, pl := s.seq, s.payload
	fin := s.flags&flagFIN != 0
	if len(pl) == 0 && !fin {
		if seq != expected {
			pd.ack = true // a window probe or keepalive
			if seq == expected-1 && !c.keepalive {
				c.keepalive = true
				_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
			}
		}
		return
	}
	if seqLT(seq, expected) {
		d := expected - seq
		if int(d) >= len(pl) {
			// All old, but maybe a keepalive with one byte.
			if int(d) == len(pl) && fin {
				pl, seq = nil, expected
			} else {
				pd.ack = true
				if len(pl) <= 1 && !c.keepalive {
					c.keepalive = true
					_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
				}
				return
			}
		} else {
			pl, seq = pl[d:], expected
		}
	}
	if seq != expected {
		// Beyond a hole: kept for when the hole is filled, and a
		// duplicate ACK asks for the hole.
		pd.ack = true
		n, ok := c.held.add(seq, pl, fin, expected, heldTotal-e.heldBytes)
		if ok && len(pl) > 0 {
			c.sackLast = seq // its block comes first in the SACK
		}
		switch {
		case !ok:
			e.st.Drop(stats.DropOutOfOrder)
		case n != 0 || fin:
			e.heldBytes += n
			e.st.TCPHeld.Add(1)
		}
		return
	}
	if len(pl) > 0 {
		// Data beyond the window last advertised is taken too: the
		// guest may have sent it under a window that has shrunk since
		// (the send buffer's estimate moves), and dropping it would
		// leave the guest to its retransmission timeout. The socket
		// says what it takes (flushData).
		v := unix.Iovec{Base: &pl[0]}
		v.SetLen(len(pl))
		pd.iov = append(pd.iov, v)
		pd.n += len(pl)
	}
	if fin {
		pd.fin = true
	}
}

// flush writes the pending payload of the batch's current connection,
// takes its FIN, and acknowledges.
func (e *Engine) flush() {
	pd := &e.pend
	idx, f, c := pd.idx, pd.f, pd.c
	if !e.flushData() {
		pd.idx, pd.fin, pd.ack, pd.grow = -1, false, false, false
		return
	}
	if pd.fin && !c.guestFIN {
		c.guestFIN = true
		c.rcvNxt++
		_ = unix.Shutdown(c.fd, unix.SHUT_WR)
		pd.ack = true
	}
	switch {
	case len(c.held.segs) == 0:
	case c.guestFIN:
		e.heldBytes -= c.held.release() // nothing comes after the FIN
	default:
		e.heldBytes -= c.held.advance(c.rcvNxt)
	}
	if pd.ack {
		e.sendAck(e.tw, f, c, false)
	}
	if pd.grow {
		e.kick(idx, f, c)
	} else {
		e.setEvents(idx, f, c)
	}
	pd.idx, pd.fin, pd.ack, pd.grow = -1, false, false, false
	e.maybeClose(idx, f, c)
}

// unhold queues the held segments that continue the pending payload
// (the hole before them filled), FIN included.
func (e *Engine) unhold(c *conn) {
	pd := &e.pend
	expected := c.rcvNxt + uint32(pd.n)
	for {
		b, fin := c.held.next(expected)
		if len(b) > 0 {
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			pd.iov = append(pd.iov, v)
			pd.n += len(b)
			expected += uint32(len(b))
		}
		if fin {
			pd.fin = true
		}
		if fin || len(b) == 0 {
			return
		}
	}
}

// flushData writes the pending payload to the socket: what it takes is
// acknowledged, the rest the guest sends again. It reports false if it
// freed the connection.
func (e *Engine) flushData() bool {
	pd := &e.pend
	c, f := pd.c, pd.f
	if len(c.held.segs) > 0 && !pd.fin {
		e.unhold(c)
	}
	n := pd.n
	iov := pd.iov
	pd.iov, pd.n = pd.iov[:0], 0
	if n == 0 {
		return true
	}
	sent, err := sendmsg(c.fd, iov, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
		if log.Enabled(log.LevelDebug) {
			log.Debugf("TCP flow %d: send: %v", pd.idx, err)
		}
		e.sendRST(e.tw, f, c)
		e.free(pd.idx, f, c, true)
		return false
	}
	if sent < n {
		pd.fin = false // the guest sends it again with the rest
		c.wantOut, c.lost = true, true
	}
	c.rcvNxt += uint32(sent)
	pd.ack = true
	e.ps.ToHost.Add(uint64(len(iov)))
	e.ps.ToHostBytes.Add(uint64(sent))
	return true
}
