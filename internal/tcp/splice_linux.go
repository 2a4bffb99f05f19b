package tcp

import (
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/sockaddr"
	"github.com/gopasst/gopasst/internal/stats"
)

// TCP splice (pasta): a connection between the host's loopback and the
// namespace never enters the tap. A client of a -t port on the host's
// loopback is accepted and connected to the namespace (its address, or
// its loopback with --host-lo-to-ns-lo), a client of a -T port on the
// namespace's loopback to the host's loopback, and the bytes move between
// the two sockets with splice(2) through a pipe per direction, never
// entering user space. A socket whose pipe is full is not read (EPOLLIN is
// masked) until the other socket takes what the pipe holds (EPOLLOUT), so
// nothing is lost or duplicated when a write is partial. EOF on one side
// becomes shutdown(SHUT_WR) on the other once its pipe is drained; an
// error or reset on one side resets the other (zero linger). A connect
// that fails resets the accepted client at once.

// splicer is a spliced connection's state, beside its flow. Sides are
// flow sides: Ini the accepted socket, Tgt the one connected for it.
type splicer struct {
	fd [2]int
	// pipe[d] carries direction d, from side d to side d^1: its read
	// and write ends; held is what it holds.
	pipe [2][2]int
	held [2]int
	size int // the pipes' capacity
	// eof[d]: side d said it will send no more; shut[d]: the other side
	// was shut for writing after it.
	eof, shut  [2]bool
	events     [2]uint32
	connecting bool
}

// defaultPipeSize is what a pipe holds when it cannot be made larger.
const defaultPipeSize = 64 << 10

// maxPipeSize reads the largest pipe an unprivileged process may ask for
// (fs.pipe-max-size), before the sandbox hides /proc.
func maxPipeSize() int {
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return defaultPipeSize
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < defaultPipeSize {
		return defaultPipeSize
	}
	return n
}

// splicer returns the splicer of flow idx.
func (e *Engine) splicer(idx int32) *splicer {
	for int(idx) >= len(e.spl) {
		e.spl = append(e.spl, nil)
	}
	s := e.spl[idx]
	if s == nil {
		s = &splicer{}
		e.spl[idx] = s
	}
	return s
}

// newPipes opens the two pipes of s, as large as the system allows.
func (e *Engine) newPipes(s *splicer) error {
	s.size = 0
	for d := range 2 {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			if d == 1 {
				unix.Close(s.pipe[0][0])
				unix.Close(s.pipe[0][1])
				s.pipe[0] = [2]int{-1, -1}
			}
			return err
		}
		s.pipe[d] = p
		size, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, e.pipeSize)
		if err != nil {
			// Over the user's pipe memory: what it got.
			size, err = unix.FcntlInt(uintptr(p[1]), unix.F_GETPIPE_SZ, 0)
			if err != nil {
				size = defaultPipeSize
			}
		}
		if s.size == 0 || size < s.size {
			s.size = size
		}
	}
	return nil
}

// spliceAccepted connects a client accepted on l (fd, at side ini) to
// where the splice path sends it: tgt, reached with socket factory mk.
func (e *Engine) spliceAccepted(l *listener, fd int, ini, tgt flow.Side, iniPIF, tgtPIF flow.PIF, mk func(int, int, int) (int, error), now int64) {
	reset := func() {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	idx, f, err := e.tab.Alloc()
	if err != nil {
		reset()
		e.st.Drop(stats.DropTableFull)
		return
	}
	s := e.splicer(idx)
	*s = splicer{fd: [2]int{fd, -1}, pipe: [2][2]int{{-1, -1}, {-1, -1}}}
	f.SetIni(flow.TypeTCPSplice, iniPIF, ini)
	if err := e.newPipes(s); err != nil {
		reset()
		e.tab.Free(idx)
		e.st.Drop(stats.DropSockErr)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("TCP splice: no pipes for %s: %v", ini, err)
		}
		return
	}
	cfd, connErr := spliceConnect(mk, tgt)
	if cfd < 0 {
		e.closePipes(s)
		reset()
		e.tab.Free(idx)
		e.st.Drop(stats.DropSockErr)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("TCP splice: no socket for %s: %v", ini, connErr)
		}
		return
	}
	s.fd[flow.Tgt] = cfd
	if local, err := sockaddr.Local(cfd); err == nil {
		tgt.FAddr, tgt.FPort = local.Addr(), local.Port()
	}
	f.SetTgt(tgtPIF, tgt)
	f.Sock = [2]int{fd, cfd}
	f.Connected = [2]bool{true, true}
	if err := e.tab.Activate(idx); err != nil {
		e.freeSplice(idx, f, s, true)
		return
	}
	e.ps.FlowsCreated.Add(1)
	e.ps.Active.Add(1)
	e.ps.ActiveSplice.Add(1)
	if log.Enabled(log.LevelDebug) {
		log.Debugf("TCP splice flow %d: new: %s", idx, f)
	}
	switch {
	case connErr == nil:
		e.spliceUp(idx, f, s)
	case errors.Is(connErr, unix.EINPROGRESS):
		s.connecting = true
		e.spliceEvents(idx, f, s)
	default:
		if log.Enabled(log.LevelDebug) {
			log.Debugf("TCP splice flow %d: connect: %v", idx, connErr)
		}
		e.freeSplice(idx, f, s, true)
	}
}

// spliceConnect opens a socket with mk towards tgt.EAddr:EPort, bound to
// tgt.FAddr (unspecified: the kernel picks) and port tgt.FPort where it
// is free, and starts connecting. It returns -1 if no socket could be
// made, else the socket and connect's error.
func spliceConnect(mk func(int, int, int) (int, error), tgt flow.Side) (int, error) {
	family := unix.AF_INET6
	if tgt.EAddr.Is4() {
		family = unix.AF_INET
	}
	fd, err := mk(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, err
	}
	src := tgt.FAddr
	if !src.IsValid() {
		src = netip.IPv6Unspecified()
		if family == unix.AF_INET {
			src = netip.IPv4Unspecified()
		}
	}
	if err := unix.Bind(fd, sockaddr.From(netip.AddrPortFrom(src, tgt.FPort))); err != nil && tgt.FPort != 0 {
		if err := unix.Bind(fd, sockaddr.From(netip.AddrPortFrom(src, 0))); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	return fd, unix.Connect(fd, sockaddr.From(netip.AddrPortFrom(tgt.EAddr, tgt.EPort)))
}

// spliceUp starts moving data once the target connected.
func (e *Engine) spliceUp(idx int32, f *flow.Flow, s *splicer) {
	s.connecting = false
	_ = unix.SetsockoptInt(s.fd[flow.Ini], unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	e.spliceEvents(idx, f, s)
}

// spliceEvents registers each socket for what it waits for: EPOLLIN
// while it may send and its pipe has room, EPOLLOUT while the other
// direction's pipe holds data for it (or, the target, while connecting).
func (e *Engine) spliceEvents(idx int32, f *flow.Flow, s *splicer) {
	for side := range 2 {
		var want uint32
		switch {
		case s.connecting:
			if side == flow.Tgt {
				want = unix.EPOLLOUT
			}
		default:
			if !s.eof[side] && s.held[side] < s.size {
				want |= unix.EPOLLIN | unix.EPOLLRDHUP
			}
			if s.held[side^1] > 0 {
				want |= unix.EPOLLOUT
			}
		}
		if want == s.events[side] {
			continue
		}
		fd := s.fd[side]
		ref := evloop.Ref{Kind: e.kSplice, Side: uint8(side), Index: idx, Gen: f.Gen & evloop.GenMask}
		var err error
		switch {
		case want == 0:
			e.loop.Del(fd)
		case s.events[side] == 0:
			err = e.loop.Add(fd, want, ref)
		default:
			err = e.loop.Mod(fd, want, ref)
		}
		if err != nil {
			log.Debugf("TCP splice flow %d: epoll: %v", idx, err)
			want = 0
		}
		s.events[side] = want
	}
}

// spliceEvent handles events on a spliced connection's socket.
func (e *Engine) spliceEvent(r evloop.Ref, ev uint32) {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	if int(r.Index) >= len(e.spl) {
		return
	}
	f := e.tab.At(r.Index)
	if !f.InUse() || f.Type != flow.TypeTCPSplice || !evloop.SameGen(f.Gen, r.Gen) {
		return
	}
	s := e.spl[r.Index]
	side := int(r.Side)
	up := false
	if s.connecting {
		if err := sockError(s.fd[flow.Tgt]); err != nil || ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			if log.Enabled(log.LevelDebug) {
				log.Debugf("TCP splice flow %d: connect: %v", r.Index, err)
			}
			e.freeSplice(r.Index, f, s, true)
			return
		}
		if ev&unix.EPOLLOUT == 0 {
			return
		}
		e.spliceUp(r.Index, f, s)
		up = true
	}
	if ev&unix.EPOLLERR != 0 {
		if err := sockError(s.fd[side]); err != nil {
			if log.Enabled(log.LevelDebug) {
				log.Debugf("TCP splice flow %d: side %d: %v", r.Index, side, err)
			}
			e.freeSplice(r.Index, f, s, true)
			return
		}
	}
	// The directions the event is for: what this socket has to send
	// (readable, or ended), and what waits in the other direction's
	// pipe for room in it (writable); after a hang-up or an error, or
	// once the connect is done, both. The registrations are
	// level-triggered, so a direction with more to move than one call
	// took raises its event again.
	for d := range 2 {
		if ev&(unix.EPOLLHUP|unix.EPOLLERR) == 0 && !up &&
			!(d == side && ev&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0) && !(d != side && ev&unix.EPOLLOUT != 0) {
			continue
		}
		if err := e.spliceMove(s, d); err != nil {
			if log.Enabled(log.LevelDebug) {
				log.Debugf("TCP splice flow %d: direction %d: %v", r.Index, d, err)
			}
			e.freeSplice(r.Index, f, s, true)
			return
		}
	}
	if s.shut[0] && s.shut[1] {
		e.freeSplice(r.Index, f, s, false)
		return
	}
	e.spliceEvents(r.Index, f, s)
}

// spliceChunk bounds one splice(2) from a socket.
const spliceChunk = 1 << 20

// spliceMove moves what it can of direction d: from side d's socket into
// its pipe, from the pipe into the other socket, again while the socket
// filled what was asked of it (a shorter read emptied it) or the pipe,
// full before, made room; then after EOF with the pipe drained, it shuts
// the other socket for writing.
func (e *Engine) spliceMove(s *splicer, d int) error {
	from, to := s.fd[d], s.fd[d^1]
	for {
		more := false
		if !s.eof[d] && s.held[d] < s.size {
			want := min(spliceChunk, s.size-s.held[d])
			n, err := unix.Splice(from, nil, s.pipe[d][1], nil, want, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == nil && n == 0:
				s.eof[d] = true
			case err == nil:
				s.held[d] += int(n)
				more = int(n) == want
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			default:
				return err
			}
		}
		if s.held[d] > 0 {
			full := s.held[d] == s.size
			n, err := unix.Splice(s.pipe[d][0], nil, to, nil, s.held[d], unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == nil:
				s.held[d] -= int(n)
				e.ps.SplicedBytes.Add(uint64(n))
				more = more || full && n > 0 && !s.eof[d]
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
				more = false // the other socket is full: its EPOLLOUT goes on
			default:
				return err
			}
		}
		if !more {
			break
		}
	}
	if s.eof[d] && s.held[d] == 0 && !s.shut[d] {
		s.shut[d] = true
		_ = unix.Shutdown(to, unix.SHUT_WR)
	}
	return nil
}

// closePipes closes the pipes of s.
func (e *Engine) closePipes(s *splicer) {
	for d := range 2 {
		for _, p := range s.pipe[d] {
			if p >= 0 {
				unix.Close(p)
			}
		}
		s.pipe[d] = [2]int{-1, -1}
	}
}

// freeSplice closes a spliced connection's sockets (with a zero linger
// when reset, so both peers see a reset) and pipes, and frees the flow.
func (e *Engine) freeSplice(idx int32, f *flow.Flow, s *splicer, reset bool) {
	for side := range 2 {
		fd := s.fd[side]
		if fd < 0 {
			continue
		}
		if s.events[side] != 0 {
			e.loop.Del(fd)
		}
		if reset {
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		unix.Close(fd)
		s.fd[side], s.events[side] = -1, 0
	}
	e.closePipes(s)
	if log.Enabled(log.LevelDebug) {
		log.Debugf("TCP splice flow %d: closed (reset %v): %s", idx, reset, f)
	}
	active := f.State == flow.StateActive
	f.Sock = [2]int{-1, -1}
	e.tab.Free(idx)
	if active {
		e.ps.FlowsExpired.Add(1)
		e.ps.Active.Add(-1)
		e.ps.ActiveSplice.Add(-1)
	}
}

// acceptedSplice handles a connection accepted on a -T listener in the
// namespace: it goes to the host's loopback.
func (e *Engine) acceptedSplice(l *listener, fd int, ini flow.Side, now int64) {
	tgt, v := e.cfg.Rules.FromSplice(ini, l.fwd.ToPort)
	if v != fwd.OK {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
		e.st.Drop(stats.DropBadSource)
		return
	}
	e.spliceAccepted(l, fd, ini, tgt, flow.PIFSplice, flow.PIFHost, e.cfg.Socket, now)
}
