package tcp

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/sockaddr"
	"github.com/gopasst/gopasst/internal/stats"
)

// backlog is the listen(2) backlog of -t sockets.
const backlog = 1024

// acceptBatch bounds the connections accepted per event.
const acceptBatch = 64

// listener is one -t listening socket.
type listener struct {
	fd  int // -1: slot free
	fwd fwd.Forward
	// paused is set while accepting fails for want of descriptors; the
	// tick tries again.
	paused bool
}

// ErrNoSplice is returned for -T forwards without a namespace (passt, or
// --no-splice).
var ErrNoSplice = errors.New("no namespace to listen in for -T")

// Splices reports whether -T forwards can be served: with a namespace to
// listen in.
func (e *Engine) Splices() bool { return e.cfg.NSSocket != nil }

// AddForward opens the listening socket of f, while the loop runs or
// before.
func (e *Engine) AddForward(f fwd.Forward) error {
	var err error
	if lerr := e.loop.Do(func() { err = e.openListener(f) }); lerr != nil {
		return lerr
	}
	return err
}

// RemoveForward closes the listening socket of f.
func (e *Engine) RemoveForward(f fwd.Forward) error {
	var err error
	if lerr := e.loop.Do(func() { err = e.closeListener(f) }); lerr != nil {
		return lerr
	}
	return err
}

// OwnInodes returns the inode numbers of the listening sockets, which
// "auto" forwarding leaves alone.
func (e *Engine) OwnInodes() map[uint64]bool {
	m := map[uint64]bool{}
	_ = e.loop.Do(func() {
		for _, l := range e.lst {
			if l.fd < 0 {
				continue
			}
			var st unix.Stat_t
			if unix.Fstat(l.fd, &st) == nil {
				m[st.Ino] = true
			}
		}
	})
	return m
}

// openListener opens f's listening socket. Called before Run or on the
// loop's thread.
func (e *Engine) openListener(f fwd.Forward) error {
	mk := e.cfg.Socket
	if f.Splice {
		if e.cfg.NSSocket == nil {
			return fmt.Errorf("%s: %w", f, ErrNoSplice)
		}
		mk = e.cfg.NSSocket
	}
	for _, l := range e.lst {
		if l.fd >= 0 && l.fwd == f {
			return nil
		}
	}
	fd, err := listenSocket(mk, f)
	if err != nil {
		return fmt.Errorf("TCP port %s: %w", netip.AddrPortFrom(f.Addr, f.Port), err)
	}
	idx := len(e.lst)
	for i := range e.lst {
		if e.lst[i].fd < 0 {
			idx = i
			break
		}
	}
	if idx == len(e.lst) {
		e.lst = append(e.lst, listener{})
	}
	e.lst[idx] = listener{fd: fd, fwd: f}
	if err := e.loop.Add(fd, unix.EPOLLIN, evloop.Ref{Kind: e.kLst, Index: int32(idx)}); err != nil {
		unix.Close(fd)
		e.lst[idx].fd = -1
		return err
	}
	log.Debugf("TCP: listening on %s", f)
	return nil
}

// closeListener closes f's listening socket.
func (e *Engine) closeListener(f fwd.Forward) error {
	for i := range e.lst {
		if l := &e.lst[i]; l.fd >= 0 && l.fwd == f {
			unix.Close(l.fd)
			l.fd = -1
			return nil
		}
	}
	return fmt.Errorf("%s: not forwarded", f)
}

// listenSocket opens a listening socket for f.
func listenSocket(mk func(int, int, int) (int, error), f fwd.Forward) (int, error) {
	fd, err := sockaddr.Socket(mk, f.Addr, unix.SOCK_STREAM, unix.IPPROTO_TCP, f.Ifname)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, sockaddr.From(netip.AddrPortFrom(f.Addr, f.Port))); err != nil {
		unix.Close(fd)
		return -1, sockaddr.BindError(err, f.Port)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// listenerEvent accepts connections on a listening socket and offers
// each to the guest.
func (e *Engine) listenerEvent(r evloop.Ref, _ uint32) {
	if int(r.Index) >= len(e.lst) || e.lst[r.Index].fd < 0 {
		return
	}
	l := &e.lst[r.Index]
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	now := evloop.Now()
	for range acceptBatch {
		fd, sa, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM) {
				// The connection stays in the backlog and would wake
				// us at once again: wait for the tick.
				e.st.Drop(stats.DropSockErr)
				e.loop.Del(l.fd)
				l.paused = true
			}
			break
		}
		e.accepted(l, fd, sa, now)
	}
	e.lw.out.Flush()
}

// supersede makes way for a new connection from the host whose guest
// side is that of an older connection still in the table, and reports
// whether it did. The host kernel lets such a connection in only once
// the old socket is done both ways (its TIME-WAIT takes the new SYN). If
// the old connection waits for nothing but the guest's ACK of our FIN
// (lost on the tap, or on its way), it ends here: a RST at the sequence
// number after our FIN ends the guest's TIME-WAIT (or FIN-WAIT-2, had
// the FIN been lost) before our SYN for the new one arrives. An older
// connection with data or a FIN still to deliver stays, and the new one
// is reset.
func (e *Engine) supersede(nf *flow.Flow) bool {
	r, ok := e.tab.Lookup(flow.KeyOf(nf, flow.Tgt))
	if !ok {
		return false
	}
	f := e.tab.At(r.Index)
	if f.Type != flow.TypeTCP || int(r.Index) >= len(e.conns) {
		return false
	}
	c := e.conns[r.Index]
	if c == nil || c.state != stEstablished || !c.hostEOF || !c.guestFIN || !c.finSent || c.sndUna != c.finSeq {
		return false
	}
	e.sendSeg(e.lw, f, c, c.finSeq+1, flagRST|flagACK)
	e.st.TCPResets.Add(1)
	e.st.TCPSuperseded.Add(1)
	if log.Enabled(log.LevelDebug) {
		log.Debugf("TCP flow %d: superseded by a new connection from the host: %s", r.Index, f)
	}
	e.free(r.Index, f, c, false)
	return true
}

// resumeListeners re-registers listeners paused for want of descriptors.
func (e *Engine) resumeListeners() {
	for i := range e.lst {
		if l := &e.lst[i]; l.fd >= 0 && l.paused {
			l.paused = false
			_ = e.loop.Add(l.fd, unix.EPOLLIN, evloop.Ref{Kind: e.kLst, Index: int32(i)})
		}
	}
}

// accepted sends the SYN of a connection accepted on l to the guest, or
// resets the client when it cannot go there.
func (e *Engine) accepted(l *listener, fd int, sa unix.Sockaddr, now int64) {
	reset := func() {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	peer, ok := sockaddr.To(sa)
	local, err := sockaddr.Local(fd)
	if !ok || err != nil {
		reset()
		e.st.Drop(stats.DropSockErr)
		return
	}
	ini := flow.Side{EAddr: peer.Addr(), EPort: peer.Port(), FAddr: local.Addr(), FPort: local.Port()}
	if l.fwd.Splice {
		e.acceptedSplice(l, fd, ini, now)
		return
	}
	pif, tgt, v := e.rules.FromHost(ini, l.fwd.ToPort, e.cfg.Guest)
	if v == fwd.OK && pif == flow.PIFSplice {
		e.spliceAccepted(l, fd, ini, tgt, flow.PIFHost, flow.PIFSplice, e.cfg.NSSocket, now)
		return
	}
	if v != fwd.OK || pif != flow.PIFTap {
		reset()
		if v == fwd.Unmappable {
			e.st.Drop(stats.DropUnmappable)
		} else {
			e.st.Drop(stats.DropNoFlow)
		}
		return
	}
	idx, f, err := e.tab.Alloc()
	if err != nil {
		reset()
		e.st.Drop(stats.DropTableFull)
		return
	}
	f.SetIni(flow.TypeTCP, flow.PIFHost, ini)
	f.SetTgt(flow.PIFTap, tgt)
	f.Sock[flow.Ini], f.Connected[flow.Ini] = fd, true
	if err := e.tab.Activate(idx, flow.Tgt); err != nil && (!e.supersede(f) || e.tab.Activate(idx, flow.Tgt) != nil) {
		// The guest already has a live connection with these addresses.
		reset()
		e.tab.Free(idx)
		e.st.Drop(stats.DropNoFlow)
		return
	}
	c := e.conn(idx)
	*c = conn{state: stSynSent, tap: flow.Tgt, fd: fd, iss: e.isn(&f.Side[flow.Tgt], now), lastAct: now, since: now,
		rto: int64(initialRTO), rtoAt: now + int64(initialRTO), rttAt: now}
	c.sndUna, c.sndNxt, c.sndMax = c.iss, c.iss+1, c.iss+1
	c.mss = e.mssFor(tgt.EAddr)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if e.peekOff {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0)
	}
	e.setEvents(idx, f, c)
	e.ps.FlowsCreated.Add(1)
	e.ps.Active.Add(1)
	if log.Enabled(log.LevelDebug) {
		log.Debugf("TCP flow %d: new: %s", idx, f)
	}
	e.sendSyn(e.lw, f, c)
}
