// Package engine runs gopasst's data path: it reads frames from the guest's
// endpoint and hands each to the part that deals with it, and it runs the
// host-side socket loop beside it.
//
// # Theory of operation
//
// Two goroutines move all traffic, one per direction, so the two directions
// use both cores:
//
//   - the tap reader ([Engine.Run]) takes a batch of frames per wake-up,
//     parses each once (package packet), learns the guest's MAC and
//     addresses from them (package fwd), answers ARP and NDP (package l2)
//     and DHCP and DHCPv6 (package dhcp) on the spot, reassembles IP
//     fragments (package frag), and collects the UDP
//     datagrams of the batch for one call into the UDP engine, which
//     groups them by flow;
//   - the UDP engine's epoll loop (package udp) carries datagrams from host
//     sockets back to the guest.
//
// Each goroutine waits in poll(2) or epoll_wait(2) on its own thread
// (package yield tells why). Handing a batch from the tap reader to a
// third goroutine, to read the next batch while the first goes out, was
// measured and left out: on two cores shared with the sender and the
// receiver it lost 10-30% of the tap goodput to the hand-off.
//
// A frame that fails parsing is counted by reason and dropped; nothing a
// guest sends can stop either loop.
package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/gopasst/gopasst/internal/dhcp"
	"github.com/gopasst/gopasst/internal/frag"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/l2"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
	"github.com/gopasst/gopasst/internal/udp"
)

// Batch is the most frames read from the endpoint per wake-up.
const Batch = 64

// MaxFrame is the largest frame read from the endpoint.
const MaxFrame = 1<<16 + 64

// Engine ties an endpoint to the L2 responder and the UDP engine.
type Engine struct {
	EP    tap.Endpoint
	L2    *l2.Responder
	DHCP  *dhcp.Server // answers DHCP and DHCPv6 before UDP sees them
	UDP   *udp.Engine  // nil with --no-udp
	Frag  *frag.Reassembler
	Guest *fwd.Guest
	// Rules, if set, vet the source addresses the guest's address is
	// learnt from (see fwd.Rules.GuestSource).
	Rules *fwd.Rules
	Stats *stats.Counters
	// IPv4 and IPv6 say which families are served.
	IPv4, IPv6 bool
}

// Run starts the UDP loop and reads frames until the endpoint is closed or
// fails. It returns nil after Close.
func (e *Engine) Run() error {
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	if e.UDP != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.UDP.Run(); err != nil {
				errc <- err
				e.EP.Close()
			}
		}()
	}
	err := e.readLoop()
	if errors.Is(err, tap.ErrClosed) {
		err = nil
	}
	if e.UDP != nil {
		e.UDP.Close()
	}
	wg.Wait()
	select {
	case uerr := <-errc:
		if err == nil {
			err = uerr
		}
	default:
	}
	return err
}

// fragment hands an IP fragment to the reassembler and returns the UDP
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
		if whole.Proto != packet.ProtoUDP || e.UDP == nil {
			e.Stats.Drop(stats.DropUnsupported)
			return nil
		}
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
	if err := e.EP.WriteFrame(buf[:m]); err != nil {
		e.Stats.Drop(stats.DropTapWrite)
		return
	}
	e.Stats.L2Replies.Add(1)
	e.Stats.TapTxFrames.Add(1)
}

// seeAddr learns the guest's address from a datagram's source, unless it
// is one the guest cannot have.
func (e *Engine) seeAddr(a netip.Addr) {
	if e.Rules == nil || e.Rules.GuestSource(a) {
		e.Guest.SeeAddr(a)
	}
}

// Close stops Run.
func (e *Engine) Close() {
	e.EP.Close()
}

func (e *Engine) readLoop() error {
	bufs := make([][]byte, Batch)
	for i := range bufs {
		bufs[i] = make([]byte, MaxFrame)
	}
	lens := make([]int, Batch)
	parsed := make([]packet.Parsed, Batch)
	udpPkts := make([]*packet.Parsed, 0, Batch)
	reply := make([]byte, 2048)
	seg, _ := e.EP.(tap.Segmenter)
	for {
		n, err := e.EP.ReadBatch(bufs, lens)
		if err != nil {
			return fmt.Errorf("reading from guest: %w", err)
		}
		e.Stats.TapRxFrames.Add(uint64(n))
		udpPkts = udpPkts[:0]
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
			p.GSOSize = 0
			if seg != nil {
				p.GSOSize = seg.SegmentSize(i)
			}
			if p.Fragment {
				if whole := e.fragment(p); whole != nil {
					e.seeAddr(whole.Src4)
					udpPkts = append(udpPkts, whole)
				}
				continue
			}
			switch {
			case p.EtherType == packet.EtherTypeARP:
				if !e.IPv4 {
					continue
				}
			case p.EtherType == packet.EtherTypeIPv4 && !e.IPv4, p.EtherType == packet.EtherTypeIPv6 && !e.IPv6:
				e.Stats.Drop(stats.DropUnsupported)
				continue
			case p.Proto == packet.ProtoUDP && e.DHCP != nil && dhcp.IsRequest(p):
				e.reply(e.DHCP.Handle(p, reply), reply)
				continue
			case p.Proto == packet.ProtoUDP:
				if e.UDP == nil {
					e.Stats.Drop(stats.DropUnsupported)
					continue
				}
				e.seeAddr(p.Src4)
				if e.UDP.Expired(p) {
					continue
				}
				udpPkts = append(udpPkts, p)
				continue
			case p.Proto != packet.ProtoICMPv6:
				e.Stats.Drop(stats.DropUnsupported)
				continue
			}
			e.reply(e.L2.Handle(p, reply), reply)
		}
		if len(udpPkts) > 0 {
			e.UDP.HandleTap(udpPkts)
		}
		e.Frag.Release()
	}
}
