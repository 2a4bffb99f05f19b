package udp

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
	"github.com/gopasst/gopasst/internal/toguest"
)

// Forward is one forwarded port (see fwd.Forward).
type Forward = fwd.Forward

// Config is what an Engine needs.
type Config struct {
	Rules *fwd.Rules
	Guest *fwd.Guest
	// Loop is the host event loop the engine's sockets are registered
	// with, Flows the flow table it shares with the other protocols,
	// Out the writer to the guest of the loop's goroutine.
	Loop     *evloop.Loop
	Flows    *flow.Table
	Out      *toguest.Writer
	Stats    *stats.Counters
	Forwards []Forward
	// Timeout expires flows that saw traffic from one side only,
	// StreamTimeout flows that saw both.
	Timeout, StreamTimeout time.Duration
	// NSSocket creates sockets in the namespace (pasta); nil disables
	// the splice path.
	NSSocket SocketFunc
	// Offload sends runs of equal-size datagrams of a flow as one
	// UDP_SEGMENT message; if the guest also took the offloads
	// (Out.Partial), sockets receive with UDP_GRO, runs reach the guest
	// as segmented frames and single datagrams with a partial checksum.
	// IPv4 datagrams larger than the guest's MTU (Out.MTU) are
	// fragmented.
	Offload bool
}

// Batch is the most datagrams moved by one recvmmsg or sendmmsg.
const Batch = 64

const bufSize = packet.MaxHeadroom + 65535

type listener struct {
	fd     int        // -1 for a free slot
	addr   netip.Addr // bound address, unspecified for any
	ifname string
	port   uint16
	to     uint16
	pif    flow.PIF // where the socket lives: the host, or the namespace (splice)
}

// rxBatch holds the buffers of the socket loop: payloads land after the
// headroom, the sender's address in names.
type rxBatch struct {
	bufs  [][]byte
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	msgs  []unix.Mmsghdr
	ctl   []byte // groCmsgSpace bytes per message, for UDP_GRO
	seg   []int  // segment size of a buffer received whole (UDP_GRO), else 0
	dst   []dest
	more  [][]byte // payloads after the first of a segmented frame
}

// payload returns the datagram (or run of datagrams) in buffer i.
func (b *rxBatch) payload(i int) []byte {
	return b.bufs[i][packet.MaxHeadroom : packet.MaxHeadroom+int(b.msgs[i].Len)]
}

// Where a received datagram goes (dest.kind).
const (
	toNothing = iota // dropped
	toTap            // a frame to the guest, from side
	toSocket         // a flow's socket (splice, or back to a sender on a listener)
)

// dest is where one received datagram goes.
type dest struct {
	kind      uint8
	connected bool
	flow      int32
	fd        int
	side      flow.Side // the side the datagram goes to
}

// Engine is the UDP translation: it owns the UDP flows of the flow table
// and the listening and reply sockets, registered with the host event
// loop.
type Engine struct {
	cfg   Config
	st    *stats.Counters
	ps    *stats.Proto
	tab   *flow.Table
	loop  *evloop.Loop
	out   *toguest.Writer
	kList evloop.Kind // listening sockets: Index is the listener's
	kRepl evloop.Kind // reply sockets: a flow's side
	lst   []listener
	rx    rxBatch
	// tx sends the guest's datagrams (tap reader), sx what the socket
	// loop forwards socket to socket.
	tx, sx *segBatch
	// seg says the guest takes segmented frames and partial checksums,
	// gro that host and namespace sockets receive with UDP_GRO.
	seg bool
	gro bool
	// icmp holds the buffers of the error path.
	icmp *icmpState
	// split is the scratch buffer of splitToTap.
	split []byte
	clock func() int64

	// own counts, by inode, the sockets the engine holds: listening
	// sockets, the duplicates flows keep of them, and reply sockets,
	// counted from before their bind. See OwnInodes.
	ownMu sync.Mutex
	own   map[uint64]int
}

// New opens the listening sockets of cfg.Forwards, registers the engine's
// kinds and its expiry with the loop, and returns it. A forward whose port
// cannot be bound is an error.
func New(cfg Config) (*Engine, error) {
	e := &Engine{cfg: cfg, st: cfg.Stats, ps: &cfg.Stats.UDP, tab: cfg.Flows, loop: cfg.Loop, out: cfg.Out,
		clock: evloop.Now, icmp: &icmpState{}, own: map[uint64]int{}}
	e.kList = e.loop.Register("UDP listener", evloop.HandlerFunc(e.listenerEvent))
	e.kRepl = e.loop.Register("UDP socket", evloop.HandlerFunc(func(r evloop.Ref, ev uint32) {
		e.fromReply(r.Index, r.Side, r.Gen, ev)
	}))
	e.loop.Every(e.expire)
	if cfg.Offload && e.out.Partial() {
		e.seg, e.gro = true, true
	}
	for _, f := range cfg.Forwards {
		if err := e.openListener(f); err != nil {
			e.Release()
			return nil, err
		}
	}
	e.rx = newRxBatch()
	e.tx, e.sx = newSegBatch(), newSegBatch()
	return e, nil
}

func newRxBatch() rxBatch {
	b := rxBatch{
		bufs:  make([][]byte, Batch),
		iovs:  make([]unix.Iovec, Batch),
		names: make([]unix.RawSockaddrInet6, Batch),
		msgs:  make([]unix.Mmsghdr, Batch),
		ctl:   make([]byte, Batch*groCmsgSpace),
		seg:   make([]int, Batch),
		dst:   make([]dest, Batch),
		more:  make([][]byte, 0, Batch),
	}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, bufSize)
		b.iovs[i].Base = &b.bufs[i][packet.MaxHeadroom]
		b.iovs[i].SetLen(bufSize - packet.MaxHeadroom)
		b.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.msgs[i].Hdr.Iov = &b.iovs[i]
		b.msgs[i].Hdr.Iovlen = 1
	}
	return b
}

// openListener opens the listening socket of f. Called before Run or
// from the socket loop.
func (e *Engine) openListener(f Forward) error {
	mk, pif, where := SocketFunc(unix.Socket), flow.PIFHost, ""
	if f.Splice {
		if e.cfg.NSSocket == nil {
			return fmt.Errorf("UDP port %d: no namespace to listen in", f.Port)
		}
		mk, pif, where = e.cfg.NSSocket, flow.PIFSplice, " in the namespace"
	}
	fd, err := listenSocket(mk, f.Addr, f.Port, f.Ifname)
	if err != nil {
		return fmt.Errorf("UDP port %s%s: %w", netip.AddrPortFrom(f.Addr, f.Port), where, err)
	}
	if !f.Splice {
		enableRecvErr(fd, f.Addr.Is4())
	}
	if e.gro {
		enableGRO(fd)
	}
	idx := int32(len(e.lst))
	for i := range e.lst {
		if e.lst[i].fd < 0 {
			idx = int32(i)
			break
		}
	}
	l := listener{fd: fd, addr: f.Addr, ifname: f.Ifname, port: f.Port, to: f.ToPort, pif: pif}
	if int(idx) == len(e.lst) {
		e.lst = append(e.lst, l)
	} else {
		e.lst[idx] = l
	}
	if err := e.loop.Add(fd, unix.EPOLLIN, evloop.Ref{Kind: e.kList, Index: idx}); err != nil {
		unix.Close(fd)
		e.lst[idx].fd = -1
		return err
	}
	e.hold(fd, 1)
	return nil
}

// hold adds n (1 or -1) to the count of the engine's descriptors open on
// the socket of fd (see OwnInodes).
func (e *Engine) hold(fd, n int) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return
	}
	e.ownMu.Lock()
	defer e.ownMu.Unlock()
	if e.own[st.Ino] += n; e.own[st.Ino] <= 0 {
		delete(e.own, st.Ino)
	}
}

// OwnInodes returns the inode numbers of the sockets the engine holds:
// listening sockets, the duplicates of them that flows keep after a
// listener closes, and reply sockets, which count from before their bind,
// so that one caught bound but not yet connected is known as ours.
// Automatic forwarding leaves these ports alone, so that a port forwarded
// one way is not forwarded back.
func (e *Engine) OwnInodes() map[uint64]bool {
	e.ownMu.Lock()
	defer e.ownMu.Unlock()
	m := make(map[uint64]bool, len(e.own))
	for ino := range e.own {
		m[ino] = true
	}
	return m
}

// closeListener closes the listening socket of f. Flows it started keep
// their own duplicate of it and live on.
func (e *Engine) closeListener(f Forward) error {
	for i := range e.lst {
		l := &e.lst[i]
		if l.fd >= 0 && l.addr == f.Addr && l.port == f.Port && l.ifname == f.Ifname && (l.pif == flow.PIFSplice) == f.Splice {
			e.loop.Del(l.fd)
			e.hold(l.fd, -1)
			unix.Close(l.fd)
			l.fd = -1
			return nil
		}
	}
	return fmt.Errorf("UDP port %s: not forwarded", netip.AddrPortFrom(f.Addr, f.Port))
}

// AddForward opens a listening socket for f while the loop runs.
func (e *Engine) AddForward(f Forward) error {
	var err error
	if lerr := e.loop.Do(func() { err = e.openListener(f) }); lerr != nil {
		return lerr
	}
	return err
}

// RemoveForward closes the listening socket of f while the loop runs.
func (e *Engine) RemoveForward(f Forward) error {
	var err error
	if lerr := e.loop.Do(func() { err = e.closeListener(f) }); lerr != nil {
		return lerr
	}
	return err
}

// Release closes the engine's sockets and frees its flows; called once the
// loop has stopped.
func (e *Engine) Release() {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	e.tab.Each(func(i int32, f *flow.Flow) {
		if f.Type == flow.TypeUDP {
			e.closeFlow(i, f)
		}
	})
	for _, l := range e.lst {
		if l.fd >= 0 {
			unix.Close(l.fd)
		}
	}
	e.lst = nil
}

// Flows is the number of live UDP flows.
func (e *Engine) Flows() int { return int(e.ps.Active.Load()) }

// listenerEvent handles epoll events on listener r.Index.
func (e *Engine) listenerEvent(r evloop.Ref, ev uint32) {
	l := &e.lst[r.Index]
	if l.fd >= 0 && ev&unix.EPOLLERR != 0 {
		e.listenerErrors(l)
	}
	if l.fd >= 0 && ev&unix.EPOLLIN != 0 {
		e.fromListener(l)
	}
}

// HandleTap forwards a batch of UDP frames from the guest. Frames with the
// same addresses and ports that follow each other go out together.
func (e *Engine) HandleTap(pkts []*packet.Parsed) {
	now := e.clock()
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	for i := 0; i < len(pkts); {
		p := pkts[i]
		j := i + 1
		for j < len(pkts) && j-i < Batch && sameTuple(pkts[j], p) {
			j++
		}
		e.tapGroup(pkts[i:j], now)
		i = j
	}
}

func sameTuple(a, b *packet.Parsed) bool {
	return a.SrcPort == b.SrcPort && a.DstPort == b.DstPort && a.Src4 == b.Src4 && a.Dst4 == b.Dst4
}

// tapGroup sends datagrams of one flow from the guest. Called with mu held.
func (e *Engine) tapGroup(g []*packet.Parsed, now int64) {
	p := g[0]
	key := flow.Key{Type: flow.TypeUDP, PIF: flow.PIFTap, EAddr: p.Src4, EPort: p.SrcPort, FAddr: p.Dst4, FPort: p.DstPort}
	ref, ok := e.tab.Lookup(key)
	if !ok {
		ref = e.newFromTap(flow.Side{EAddr: p.Src4, EPort: p.SrcPort, FAddr: p.Dst4, FPort: p.DstPort}, now)
		if !ref.Valid() {
			return
		}
	}
	f := e.tab.At(ref.Index)
	f.LastSeen = now
	f.Seen[ref.Side] = true
	to := ref.Side ^ 1
	if f.PIF[to] != flow.PIFHost {
		e.st.Drops[stats.DropNoFlow].Add(uint64(len(g)))
		return
	}
	b := e.tx
	b.reset()
	for _, q := range g {
		b.add(q.Payload, q.GSOSize, e.cfg.Offload)
	}
	b.finish(b.dest(&f.Side[to], f.Connected[to]))
	sent, bytes, err := b.send(f.Sock[to])
	total := b.datagrams()
	if sent < total {
		e.st.Drops[stats.DropSockErr].Add(uint64(total - sent))
		if log.Enabled(log.LevelDebug) {
			log.Debugf("UDP flow %d: send to %s: %d of %d datagrams dropped: %v", ref.Index, f.PIF[to], total-sent, total, err)
		}
	}
	e.ps.ToHost.Add(uint64(sent))
	e.ps.ToHostBytes.Add(uint64(bytes))
}

// newFromTap creates a flow for a datagram the guest sent, with a reply
// socket on the host. Called with mu held.
func (e *Engine) newFromTap(ini flow.Side, now int64) flow.Ref {
	tgt, v := e.cfg.Rules.FromTap(ini)
	if v != fwd.OK {
		e.refuse(v, "from tap", ini)
		return flow.NoRef
	}
	idx, f, err := e.tab.Alloc()
	if err != nil {
		e.st.Drop(stats.DropTableFull)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("UDP: flow table full, dropping %s", ini)
		}
		return flow.NoRef
	}
	fd, local, err := replySocket(unix.Socket, netip.AddrPortFrom(tgt.FAddr, tgt.FPort), netip.AddrPortFrom(tgt.EAddr, tgt.EPort),
		e.cfg.Rules.OutboundIf(tgt.EAddr), e.hold)
	if err != nil {
		e.tab.Free(idx)
		e.st.Drop(stats.DropSockErr)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("UDP: no socket for flow %s: %v", ini, err)
		}
		return flow.NoRef
	}
	enableRecvErr(fd, tgt.EAddr.Is4())
	if e.gro {
		enableGRO(fd)
	}
	tgt.FPort = local.Port()
	f.SetIni(flow.TypeUDP, flow.PIFTap, ini)
	f.SetTgt(flow.PIFHost, tgt)
	f.Sock[flow.Tgt], f.Connected[flow.Tgt] = fd, true
	f.LastSeen = now
	if err := e.loop.Add(fd, unix.EPOLLIN, evloop.Ref{Kind: e.kRepl, Side: flow.Tgt, Index: idx, Gen: f.Gen}); err != nil {
		e.closeFlow(idx, f)
		e.st.Drop(stats.DropSockErr)
		return flow.NoRef
	}
	if err := e.tab.Activate(idx, flow.Ini); err != nil {
		e.closeFlow(idx, f)
		return flow.NoRef
	}
	e.created(idx, f)
	return flow.Ref{Index: idx, Side: flow.Ini}
}

// newFromHost creates a flow for a datagram that listener l received from
// src. Called with mu held.
func (e *Engine) newFromHost(l *listener, src netip.AddrPort, now int64) flow.Ref {
	ini := flow.Side{EAddr: src.Addr(), EPort: src.Port(), FAddr: l.addr, FPort: l.port}
	var tgtPIF flow.PIF
	var tgt flow.Side
	var v fwd.Verdict
	if l.pif == flow.PIFSplice {
		tgtPIF = flow.PIFHost
		tgt, v = e.cfg.Rules.FromSplice(ini, l.to)
	} else {
		tgtPIF, tgt, v = e.cfg.Rules.FromHost(ini, l.to, e.cfg.Guest)
		if tgtPIF == flow.PIFSplice && e.cfg.NSSocket == nil {
			v = fwd.BadDest
		}
	}
	if v != fwd.OK {
		e.refuse(v, "from "+l.pif.String(), ini)
		return flow.NoRef
	}
	idx, f, err := e.tab.Alloc()
	if err != nil {
		e.st.Drop(stats.DropTableFull)
		return flow.NoRef
	}
	f.SetIni(flow.TypeUDP, l.pif, ini)
	f.LastSeen = now
	dup, err := unix.FcntlInt(uintptr(l.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		e.tab.Free(idx)
		e.st.Drop(stats.DropSockErr)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("UDP: cannot duplicate listening socket: %v", err)
		}
		return flow.NoRef
	}
	f.Sock[flow.Ini] = dup
	e.hold(dup, 1)
	f.SetTgt(tgtPIF, tgt)
	sides := []uint8{flow.Ini, flow.Tgt}
	if tgtPIF != flow.PIFTap {
		// The target is a socket of its own, bound to the sender's
		// address and port where free and connected: its replies need
		// no lookup.
		mk := SocketFunc(unix.Socket)
		if tgtPIF == flow.PIFSplice {
			mk = e.cfg.NSSocket
		}
		fd, local, err := replySocket(mk, netip.AddrPortFrom(tgt.FAddr, tgt.FPort), netip.AddrPortFrom(tgt.EAddr, tgt.EPort), "", e.hold)
		if err != nil {
			e.closeFlow(idx, f)
			e.st.Drop(stats.DropSockErr)
			if log.Enabled(log.LevelDebug) {
				log.Debugf("UDP: no %s socket for flow %s: %v", tgtPIF, ini, err)
			}
			return flow.NoRef
		}
		if e.gro {
			enableGRO(fd)
		}
		f.Side[flow.Tgt].FAddr, f.Side[flow.Tgt].FPort = local.Addr(), local.Port()
		f.Sock[flow.Tgt], f.Connected[flow.Tgt] = fd, true
		if err := e.loop.Add(fd, unix.EPOLLIN, evloop.Ref{Kind: e.kRepl, Side: flow.Tgt, Index: idx, Gen: f.Gen}); err != nil {
			e.closeFlow(idx, f)
			e.st.Drop(stats.DropSockErr)
			return flow.NoRef
		}
		sides = sides[:1]
	}
	if err := e.tab.Activate(idx, sides...); err != nil {
		log.Debugf("UDP: %s: %v", f, err)
		e.closeFlow(idx, f)
		e.st.Drop(stats.DropNoFlow)
		return flow.NoRef
	}
	e.created(idx, f)
	return flow.Ref{Index: idx, Side: flow.Ini}
}

func (e *Engine) created(idx int32, f *flow.Flow) {
	e.ps.FlowsCreated.Add(1)
	e.ps.Active.Add(1)
	if isSplice(f) {
		e.ps.ActiveSplice.Add(1)
	}
	if log.Enabled(log.LevelDebug) {
		log.Debugf("UDP flow %d: new: %s", idx, f)
	}
}

// isSplice reports whether f joins two sockets (pasta's loopback bypass).
func isSplice(f *flow.Flow) bool {
	return f.PIF[flow.Ini] == flow.PIFSplice || f.PIF[flow.Tgt] == flow.PIFSplice
}

func (e *Engine) refuse(v fwd.Verdict, dir string, ini flow.Side) {
	switch v {
	case fwd.BadDest:
		e.st.Drop(stats.DropMulticast)
	case fwd.Unmappable:
		e.st.Drop(stats.DropUnmappable)
	case fwd.BadSource:
		e.st.Drop(stats.DropBadSource)
	default:
		e.st.Drop(stats.DropNoFlow)
	}
	if log.Enabled(log.LevelDebug) {
		log.Debugf("UDP: not forwarding datagram %s %s (verdict %d)", dir, ini, v)
	}
}

// closeFlow closes the flow's sockets and frees it. Called with mu held.
func (e *Engine) closeFlow(idx int32, f *flow.Flow) {
	for side := range f.Sock {
		fd := f.Sock[side]
		if fd < 0 {
			continue
		}
		if f.Connected[side] {
			e.loop.Del(fd)
		}
		e.hold(fd, -1)
		unix.Close(fd)
		f.Sock[side] = -1
	}
	e.tab.Free(idx)
}

// expire closes flows idle for longer than their timeout. Called from Run.
func (e *Engine) expire(now int64) {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	e.tab.EachOf(flow.TypeUDP, func(i int32, f *flow.Flow) {
		limit := e.cfg.Timeout
		if f.Seen[flow.Ini] && f.Seen[flow.Tgt] {
			limit = e.cfg.StreamTimeout
		}
		if now-f.LastSeen < int64(limit) {
			return
		}
		if log.Enabled(log.LevelDebug) {
			log.Debugf("UDP flow %d: expired: %s", i, f)
		}
		if isSplice(f) {
			e.ps.ActiveSplice.Add(-1)
		}
		e.closeFlow(i, f)
		e.ps.FlowsExpired.Add(1)
		e.ps.Active.Add(-1)
	})
}

// receive reads up to Batch datagrams from fd into the rx buffers.
func (e *Engine) receive(fd int) int {
	for i := range e.rx.msgs {
		h := &e.rx.msgs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet6
		if e.gro {
			h.Control = &e.rx.ctl[i*groCmsgSpace]
			h.SetControllen(groCmsgSpace)
		}
	}
	for {
		n, err := recvmmsg(fd, e.rx.msgs)
		if err == nil {
			for i := 0; i < n; i++ {
				e.rx.seg[i] = 0
				if e.gro {
					e.rx.seg[i] = groSize(&e.rx.msgs[i].Hdr)
				}
			}
			return n
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if !errors.Is(err, unix.EAGAIN) {
			// An ICMP error queued on the socket (e.g. port
			// unreachable on a connected socket) is reported here
			// and cleared by this call.
			e.st.Drop(stats.DropSockErr)
			if log.Enabled(log.LevelDebug) {
				log.Debugf("UDP: receive on socket %d: %v", fd, err)
			}
		}
		return 0
	}
}

// fromListener forwards what a listening socket received.
func (e *Engine) fromListener(l *listener) {
	n := e.receive(l.fd)
	if n == 0 {
		return
	}
	now := e.clock()
	e.tab.Mu.Lock()
	for i := 0; i < n; i++ {
		src := getSockaddr(&e.rx.names[i])
		key := flow.Key{Type: flow.TypeUDP, PIF: l.pif, EAddr: src.Addr(), EPort: src.Port(), FAddr: l.addr, FPort: l.port}
		ref, ok := e.tab.Lookup(key)
		if !ok {
			ref = e.newFromHost(l, src, now)
		}
		e.rx.dst[i] = dest{}
		if !ref.Valid() {
			continue
		}
		f := e.tab.At(ref.Index)
		f.LastSeen = now
		f.Seen[ref.Side] = true
		e.rx.dst[i] = destOf(f, ref.Index, ref.Side^1)
	}
	e.tab.Mu.Unlock()
	e.forward(n)
}

// destOf says how to reach side `to` of flow f (index idx).
func destOf(f *flow.Flow, idx int32, to uint8) dest {
	d := dest{flow: idx, side: f.Side[to], fd: f.Sock[to], connected: f.Connected[to]}
	switch {
	case f.PIF[to] == flow.PIFTap:
		d.kind = toTap
	case d.fd >= 0:
		d.kind = toSocket
	}
	return d
}

// forward sends the n datagrams in the rx buffers where rx.dst says:
// frames to the guest (in one batch), runs of datagrams of one flow to its
// socket (in one sendmmsg).
func (e *Engine) forward(n int) {
	mac := e.out.GuestMAC()
	for i := 0; i < n; {
		d := &e.rx.dst[i]
		switch d.kind {
		case toTap:
			j := i + 1
			if e.seg {
				j = e.tapRun(i, n)
				if (j-i > 1 || e.rx.seg[i] > 0) && e.toTapSegmented(i, j, &d.side, mac) {
					i = j
					continue
				}
			}
			for ; i < j; i++ {
				if e.rx.seg[i] > 0 {
					e.splitToTap(i, &d.side, mac)
					continue
				}
				e.toTap(e.rx.bufs[i], int(e.rx.msgs[i].Len), &d.side, mac)
			}
		case toSocket:
			j := i + 1
			for j < n && e.rx.dst[j].kind == toSocket && e.rx.dst[j].flow == d.flow {
				j++
			}
			e.toSocket(i, j, d)
			i = j
		default:
			i++ // no flow: counted where it was refused
		}
	}
	e.flush()
}

// toSocket sends the payloads in rx buffers i to j-1 through d's socket.
func (e *Engine) toSocket(i, j int, d *dest) {
	b := e.sx
	b.reset()
	for k := i; k < j; k++ {
		b.add(e.rx.payload(k), e.rx.seg[k], e.cfg.Offload)
	}
	b.finish(b.dest(&d.side, d.connected))
	sent, bytes, _ := b.send(d.fd)
	total := b.datagrams()
	if sent < total {
		e.st.Drops[stats.DropSockErr].Add(uint64(total - sent))
	}
	e.ps.Spliced.Add(uint64(sent))
	e.ps.SplicedBytes.Add(uint64(bytes))
}

// fromReply forwards what the reply socket of side `side` of flow idx
// received.
func (e *Engine) fromReply(idx int32, side uint8, gen uint32, events uint32) {
	e.tab.Mu.Lock()
	f := e.tab.At(idx)
	if !f.InUse() || f.Type != flow.TypeUDP || !evloop.SameGen(f.Gen, gen) {
		e.tab.Mu.Unlock()
		return
	}
	fd := f.Sock[side]
	e.tab.Mu.Unlock()

	if events&unix.EPOLLERR != 0 {
		// Errors first: a pending one would fail the receive.
		e.drainErrors(f, side, fd)
		_, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	}
	n := e.receive(fd)
	if n == 0 {
		return
	}
	now := e.clock()
	e.tab.Mu.Lock()
	f.LastSeen = now
	f.Seen[side] = true
	e.tab.Mu.Unlock()
	d := destOf(f, idx, side^1)
	for i := 0; i < n; i++ {
		e.rx.dst[i] = d
	}
	e.forward(n)
}

// toTap builds headers in front of the payload of plen bytes at
// buf[packet.MaxHeadroom:] and queues the frame for flush.
func (e *Engine) toTap(buf []byte, plen int, to *flow.Side, mac packet.MAC) {
	if to.EAddr.Is4() && plen > packet.MaxUDPPayload {
		e.st.Drop(stats.DropMalformed)
		return
	}
	// Fragments need the whole checksum; other frames leave it to the
	// guest's kernel where the guest takes offloads.
	fragment := to.EAddr.Is4() && e.out.NeedsFragments(packet.IPv4Len+packet.UDPLen+plen)
	start := e.putHeaders(buf, plen, to, mac, e.seg && !fragment)
	frame := buf[start : packet.MaxHeadroom+plen]
	if fragment {
		e.flush()
		if e.out.Fragment(frame) {
			e.ps.ToTap.Add(1)
			e.ps.ToTapBytes.Add(uint64(plen))
		}
		return
	}
	e.out.Queue(frame, packet.MaxHeadroom-start)
}

// putHeaders writes the Ethernet, IP and UDP headers for plen payload
// bytes at buf[packet.MaxHeadroom:] to side to, in front of them, and
// returns where the frame starts. partial leaves the UDP checksum for the
// guest's kernel to complete (a segmented frame).
func (e *Engine) putHeaders(buf []byte, plen int, to *flow.Side, mac packet.MAC, partial bool) int {
	put, start, et := packet.PutUDP6, 0, uint16(packet.EtherTypeIPv6)
	if to.EAddr.Is4() {
		put, start, et = packet.PutUDP4, packet.MaxHeadroom-packet.UDPLen-packet.IPv4Len-packet.EthLen, packet.EtherTypeIPv4
		if partial {
			put = packet.PutUDP4Partial
		}
	} else if partial {
		put = packet.PutUDP6Partial
	}
	put(buf[start+packet.EthLen:], to.FAddr, to.EAddr, to.FPort, to.EPort, plen)
	e.out.PutEthernet(buf[start:], mac, et)
	return start
}

// tapRun returns the end of the run of datagrams from rx buffer i to n-1
// that can reach the guest as one segmented frame: the same flow, the same
// size but for a shorter last one, within the limits of one frame, each
// segment within the guest's MTU.
func (e *Engine) tapRun(i, n int) int {
	size := int(e.rx.msgs[i].Len)
	if e.rx.seg[i] > 0 || size == 0 {
		return i + 1
	}
	v4 := e.rx.dst[i].side.EAddr.Is4()
	limit := 65535 - packet.UDPLen
	if v4 {
		limit = packet.MaxUDPPayload
	}
	if !e.segmentFits(size, v4) {
		return i + 1
	}
	total, j := size, i+1
	for j < n && j-i < maxSegments {
		d := &e.rx.dst[j]
		l := int(e.rx.msgs[j].Len)
		if d.kind != toTap || d.flow != e.rx.dst[i].flow || e.rx.seg[j] > 0 || l == 0 || l > size || total+l > limit {
			break
		}
		total += l
		j++
		if l < size {
			break
		}
	}
	return j
}

// segmentFits reports whether a datagram of size payload bytes fits the
// guest's MTU as one IP packet (v4: IPv4, else IPv6).
func (e *Engine) segmentFits(size int, v4 bool) bool {
	hdrs := packet.IPv6Len + packet.UDPLen
	if v4 {
		hdrs = packet.IPv4Len + packet.UDPLen
	}
	return !e.out.NeedsFragments(size + hdrs)
}

// toTapSegmented sends rx buffers i to j-1 (a run found by tapRun, or one
// buffer received whole with UDP_GRO) to the guest as one segmented
// frame. It reports false, having sent nothing, if the endpoint cannot.
func (e *Engine) toTapSegmented(i, j int, to *flow.Side, mac packet.MAC) bool {
	buf := e.rx.bufs[i]
	first := int(e.rx.msgs[i].Len)
	seg, count, plen := first, j-i, first
	if e.rx.seg[i] > 0 {
		seg = e.rx.seg[i]
		count = (first + seg - 1) / seg
		if !e.segmentFits(seg, to.EAddr.Is4()) {
			return false
		}
	}
	more := e.rx.more[:0]
	for k := i + 1; k < j; k++ {
		p := e.rx.payload(k)
		more = append(more, p)
		plen += len(p)
	}
	start := e.putHeaders(buf, plen, to, mac, true)
	e.flush() // frames queued before go first
	ok, sent := e.out.WriteSegmented(buf[start:packet.MaxHeadroom+first], packet.MaxHeadroom-start, seg, tap.GSOUDPL4, more, count)
	if !ok {
		return false
	}
	if sent {
		e.ps.ToTap.Add(uint64(count))
		e.ps.ToTapBytes.Add(uint64(plen))
	}
	return true
}

// splitToTap sends the datagrams of rx buffer i, received whole with
// UDP_GRO, to the guest one frame each, when they cannot go as one.
func (e *Engine) splitToTap(i int, to *flow.Side, mac packet.MAC) {
	if e.split == nil {
		e.split = make([]byte, bufSize)
	}
	p, seg := e.rx.payload(i), e.rx.seg[i]
	for off := 0; off < len(p); off += seg {
		end := min(off+seg, len(p))
		copy(e.split[packet.MaxHeadroom:], p[off:end])
		e.toTap(e.split, end-off, to, mac)
		e.flush() // the scratch buffer is reused
	}
}

// flush writes the queued frames to the guest.
func (e *Engine) flush() {
	sent, bytes := e.out.Flush()
	e.ps.ToTap.Add(uint64(sent))
	e.ps.ToTapBytes.Add(bytes)
}
