// Package engine runs gopasst's data path: the core that every protocol
// shares. It reads frames from the guest's endpoint and hands each to the
// part that deals with it, and it runs the host side's event loop beside
// it. It knows no transport protocol: UDP, TCP and ICMP echo plug
// in as [Protocol]s (package protocols lists them).
//
// # Theory of operation
//
// Two paths move all traffic:
//
//   - the tap reader takes a batch of frames per wake-up,
//     parses each once (package packet), learns the guest's MAC and
//     addresses from them (package fwd), answers ARP and NDP (package l2)
//     and DHCP and DHCPv6 (package dhcp) on the spot, reassembles IP
//     fragments (package frag), answers packets whose TTL runs out at the
//     gateway with time-exceeded, and collects the rest of the batch per
//     protocol, by IP protocol number, for one call into each protocol,
//     which groups its packets by flow;
//   - the host event loop (package evloop) carries what arrives on host
//     sockets back to the guest: each protocol registers its sockets there
//     under kinds of its own, and its timers as tickers.
//
// Everything a protocol needs comes in an [Env]: the forwarding rules and
// what is known of the guest (package fwd), the one flow table of all
// protocols (package flow, bounded by --max-flows), the loop, and one
// guest writer (package toguest) for each path. Forwarding rules of
// every protocol go through one add/remove API ([Engine.AddForward]),
// which the command line, "auto" and a control socket all use.
//
// Threads. An endpoint an event loop can wait on ([tap.Pollable]:
// pasta's tap device) is one more registration of the host event loop,
// so that a single thread serves both paths, as the reference's single
// loop does. Other endpoints (passt's qemu socket, whose reader also
// accepts and reconnects) get a reader goroutine of their own beside the
// loop's, each waiting in poll(2) or epoll_wait(2) on its own thread
// (package yield tells why); GOPASST_THREADS=2 in the environment runs
// pasta's tap that way too. One thread against two, measured: ping to
// the gateway about twice as fast, TCP connection rate 1.6-2.2 times,
// request/response 1.0-1.3 times, bulk goodput and CPU per GB level (2
// cores shared with the sender and the receiver). Handing a batch from
// the tap reader to a third goroutine, to read the next batch while the
// first goes out, was measured and left out: on two cores it lost 10-30%
// of the tap goodput to the hand-off.
//
// A frame that fails parsing is counted by reason and dropped; nothing a
// guest sends can stop either loop.
package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/dhcp"
	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/frag"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/l2"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
	"github.com/gopasst/gopasst/internal/toguest"
)

// Batch is the most frames read from the endpoint per wake-up.
const Batch = 64

// MaxFrame is the largest frame read from the endpoint.
const MaxFrame = 1<<16 + 64

// Engine ties an endpoint to the L2 responder and the protocols.
type Engine struct {
	EP    tap.Endpoint
	L2    *l2.Responder
	DHCP  *dhcp.Server // answers DHCP and DHCPv6 before UDP sees them
	Frag  *frag.Reassembler
	Guest *fwd.Guest
	// Rules vet the source addresses the guest's address is learnt from
	// (see fwd.Rules.GuestSource) and say what stands for the host.
	Rules *fwd.Rules
	Stats *stats.Counters
	// IPv4 and IPv6 say which families are served.
	IPv4, IPv6 bool
	// Loop is the host event loop, Flows the flow table of every
	// protocol.
	Loop  *evloop.Loop
	Flows *flow.Table
	// TapOut writes to the guest for the tap reader (time-exceeded and
	// what protocols answer at once).
	TapOut *toguest.Writer
	// Router4 and Router6 are the guest's gateway addresses, where
	// time-exceeded comes from.
	Router4, Router6 netip.Addr

	// oneThread runs a Pollable endpoint's reads on the loop's thread
	// (GOPASST_THREADS=1, experimental: see the package documentation).
	oneThread bool

	// byProto is the protocol of each IP protocol number, byFwd the one
	// of each forwarding protocol; protos lists them once each.
	byProto [256]*served
	byFwd   [fwd.NumProtos]*served
	protos  []*served
}

// served is a protocol running in the engine, and its batch of the
// guest's packets.
type served struct {
	name  string
	h     Handler
	batch []*packet.Parsed
}

// Serves reports whether a protocol that forwards ports of p runs.
func (e *Engine) Serves(p fwd.Proto) bool { return p < fwd.NumProtos && e.byFwd[p] != nil }

// Splices reports whether the protocol that forwards ports of p also
// forwards them from the namespace to the host's loopback (-U, -T): its
// handler says so with a method Splices() bool, or has no such method
// and does.
func (e *Engine) Splices(p fwd.Proto) bool {
	if !e.Serves(p) {
		return false
	}
	s, ok := e.byFwd[p].h.(interface{ Splices() bool })
	return !ok || s.Splices()
}

// AddForward opens the listening socket of f, while the engine runs or
// before.
func (e *Engine) AddForward(f fwd.Forward) error {
	fw, err := e.forwarder(f)
	if err != nil {
		return err
	}
	return fw.AddForward(f)
}

// RemoveForward closes the listening socket of f.
func (e *Engine) RemoveForward(f fwd.Forward) error {
	fw, err := e.forwarder(f)
	if err != nil {
		return err
	}
	return fw.RemoveForward(f)
}

func (e *Engine) forwarder(f fwd.Forward) (fwd.Forwarder, error) {
	if !e.Serves(f.Proto) {
		return nil, fmt.Errorf("%s: %s is not served", f, f.Proto)
	}
	fw, ok := e.byFwd[f.Proto].h.(fwd.Forwarder)
	if !ok {
		return nil, fmt.Errorf("%s: %s has no forwarding", f, f.Proto)
	}
	return fw, nil
}

// GuestGone tells the protocols that the guest left (in passt mode, its
// connection to the qemu socket closed): one that keeps state only the
// guest can move on (TCP's connections through the tap) drops it, so
// that host peers are not left waiting. A handler takes part with a
// method GuestGone(). It runs on the tap reader's goroutine.
func (e *Engine) GuestGone() {
	for _, p := range e.protos {
		if g, ok := p.h.(interface{ GuestGone() }); ok {
			g.GuestGone()
		}
	}
}

// OwnInodes returns the inode numbers of the sockets the protocols hold
// (see udp.Engine.OwnInodes), which "auto" forwarding leaves alone.
func (e *Engine) OwnInodes() map[uint64]bool {
	m := map[uint64]bool{}
	for _, p := range e.protos {
		if o, ok := p.h.(interface{ OwnInodes() map[uint64]bool }); ok {
			for ino := range o.OwnInodes() {
				m[ino] = true
			}
		}
	}
	return m
}

// Run starts the host event loop and reads frames until the endpoint is
// closed or fails; then it stops the loop and releases every protocol's
// sockets. It returns nil after Close.
func (e *Engine) Run() error {
	if p, ok := e.onLoop(); ok {
		return e.runOne(p)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := e.Loop.Run(); err != nil {
			errc <- err
			e.EP.Close()
		}
	}()
	err := e.readLoop()
	if errors.Is(err, tap.ErrClosed) {
		err = nil
	}
	e.Loop.Close()
	wg.Wait()
	for _, p := range e.protos {
		p.h.Release()
	}
	select {
	case lerr := <-errc:
		if err == nil {
			err = lerr
		}
	default:
	}
	return err
}

// onLoop returns the endpoint if the loop's thread reads it too.
func (e *Engine) onLoop() (tap.Pollable, bool) {
	p, ok := e.EP.(tap.Pollable)
	return p, ok && e.oneThread
}

// runOne serves both directions on the event loop's thread: the
// endpoint's descriptor is one more registration of the loop, whose
// handler reads what is there and hands it on.
func (e *Engine) runOne(p tap.Pollable) error {
	r := e.newReader()
	var rerr error
	kind := e.Loop.Register("tap", evloop.HandlerFunc(func(_ evloop.Ref, _ uint32) {
		n, err := p.ReadReady(r.bufs, r.lens)
		if err != nil {
			if rerr == nil && !errors.Is(err, tap.ErrClosed) {
				rerr = fmt.Errorf("reading from guest: %w", err)
			}
			e.Loop.Del(p.PollFd())
			e.Loop.Close()
			return
		}
		if n > 0 {
			r.handle(n)
		}
	}))
	if err := e.Loop.Add(p.PollFd(), unix.EPOLLIN, evloop.Ref{Kind: kind}); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	err := e.Loop.Run()
	for _, sv := range e.protos {
		sv.h.Release()
	}
	if err == nil {
		err = rerr
	}
	return err
}

// fragment hands an IP fragment to the reassembler and returns the
// datagram it completes, if any.
func (e *Engine) fragment(p *packet.Parsed) *packet.Parsed {
	e.Stats.FragmentsIn.Add(1)
	if p.Src4.Is4() && !e.IPv4 || p.Src4.Is6() && !e.IPv6 {
		e.Stats.Drop(stats.DropUnsupported)
		return nil
	}
	whole, res := e.Frag.Add(p)
	switch res {
	case frag.Complete:
		e.Stats.Reassembled.Add(1)
		return whole
	case frag.Pending, frag.Duplicate:
	default:
		e.Stats.Drop(stats.DropFragment)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("dropping fragmented datagram from %s (%d)", p.Src4, res)
		}
	}
	return nil
}

// reply writes the first m bytes of buf, a frame that answers the guest,
// if m is not zero.
func (e *Engine) reply(m int, buf []byte) {
	if m == 0 {
		return
	}
	if e.TapOut.WriteFrame(buf[:m]) {
		e.Stats.L2Replies.Add(1)
	}
}

// seeAddr learns the guest's address from a packet's source, unless it
// is one the guest cannot have.
func (e *Engine) seeAddr(a netip.Addr) {
	if e.Rules.GuestSource(a) {
		e.Guest.SeeAddr(a)
	}
}

// Close stops Run.
func (e *Engine) Close() {
	e.EP.Close()
	if _, ok := e.onLoop(); ok {
		e.Loop.Close() // before Run too: Run then returns at once
	}
}

// toProtocol queues p, a packet for a host socket, for its protocol, or
// counts it as unsupported. Packets whose TTL runs out here are answered
// instead (reassembled ones have arrived: ttl false).
func (e *Engine) toProtocol(p *packet.Parsed, ttl bool) {
	sv := e.byProto[p.Proto]
	if sv == nil {
		e.Stats.Drop(stats.DropUnsupported)
		return
	}
	e.seeAddr(p.Src4)
	if ttl && e.TapOut.TimeExceeded(p, e.Rules, e.Router4, e.Router6) {
		return
	}
	sv.batch = append(sv.batch, p)
}

// isNDP reports whether an ICMPv6 packet is neighbour discovery (router
// and neighbour solicitations and advertisements, redirects), which the
// L2 responder answers.
func isNDP(p *packet.Parsed) bool {
	if len(p.L4) == 0 {
		return false
	}
	t := p.L4[0]
	return t >= 133 && t <= 137
}

// reader is the tap reader's state: its buffers, the parse results of a
// batch and the scratch for answers.
type reader struct {
	e      *Engine
	bufs   [][]byte
	lens   []int
	parsed []packet.Parsed
	reply  []byte
	seg    tap.Segmenter
}

func (e *Engine) newReader() *reader {
	r := &reader{e: e, bufs: make([][]byte, Batch), lens: make([]int, Batch),
		parsed: make([]packet.Parsed, Batch), reply: make([]byte, 2048)}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, MaxFrame)
	}
	for _, sv := range e.protos {
		sv.batch = make([]*packet.Parsed, 0, Batch)
	}
	r.seg, _ = e.EP.(tap.Segmenter)
	return r
}

func (e *Engine) readLoop() error {
	r := e.newReader()
	for {
		n, err := e.EP.ReadBatch(r.bufs, r.lens)
		if err != nil {
			return fmt.Errorf("reading from guest: %w", err)
		}
		r.handle(n)
	}
}

// handle takes the batch of n frames just read.
func (r *reader) handle(n int) {
	e, bufs, lens, parsed, reply, seg := r.e, r.bufs, r.lens, r.parsed, r.reply, r.seg
	e.Stats.TapRxFrames.Add(uint64(n))
	for i := 0; i < n; i++ {
		p := &parsed[i]
		if d := packet.Parse(bufs[i][:lens[i]], p); d != packet.DropNone {
			e.Stats.DropFrame(d)
			if log.Enabled(log.LevelTrace) {
				log.Tracef("dropping frame of %d bytes: %v", lens[i], d)
			}
			continue
		}
		e.Guest.SeeMAC(p.Src)
		p.GSOSize, p.CsumPartial = 0, false
		if seg != nil {
			p.GSOSize, p.CsumPartial = seg.SegmentSize(i), seg.ChecksumPartial(i)
		}
		if p.Fragment {
			if whole := e.fragment(p); whole != nil {
				e.toProtocol(whole, false)
			}
			continue
		}
		switch {
		case p.EtherType == packet.EtherTypeARP:
			if e.IPv4 {
				e.reply(e.L2.Handle(p, reply), reply)
			}
		case p.EtherType == packet.EtherTypeIPv4 && !e.IPv4, p.EtherType == packet.EtherTypeIPv6 && !e.IPv6:
			e.Stats.Drop(stats.DropUnsupported)
		case p.Proto == packet.ProtoUDP && e.DHCP != nil && dhcp.IsRequest(p):
			e.reply(e.DHCP.Handle(p, reply), reply)
		case p.Proto == packet.ProtoICMPv6 && isNDP(p):
			e.reply(e.L2.Handle(p, reply), reply)
		default:
			e.toProtocol(p, true)
		}
	}
	for _, sv := range e.protos {
		if len(sv.batch) > 0 {
			sv.h.HandleTap(sv.batch)
			sv.batch = sv.batch[:0]
		}
	}
	e.Frag.Release()
}
