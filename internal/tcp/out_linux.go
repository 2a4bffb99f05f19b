package tcp

import (
	"encoding/binary"
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/sockaddr"
	"github.com/gopasst/gopasst/internal/tap"
)

// maxGSOPayload is the most payload of one segmented frame: what one
// IPv4 packet of 64 KiB holds behind its headers (IPv6 could hold 20
// bytes more).
const maxGSOPayload = 0xffff - packet.IPv4Len - hdrLen

// putFrame writes, in front of the TCP header of hl bytes at b[th:] and
// its plen bytes of payload, the IP and Ethernet headers of a segment
// from the flow's side s (FAddr:FPort) to the guest (EAddr:EPort), and
// the TCP checksum (partial: the pseudo-header's only). It returns the
// frame.
func (e *Engine) putFrame(w *writer, b []byte, th, hl, plen int, s *flow.Side, partial bool) []byte {
	l4 := hl + plen
	var start int
	var et uint16
	if s.EAddr.Is4() {
		start, et = th-packet.IPv4Len-packet.EthLen, packet.EtherTypeIPv4
		packet.PutIPv4(b[start+packet.EthLen:], s.FAddr, s.EAddr, packet.ProtoTCP, 64, packet.IPv4Len+l4, true)
	} else {
		start, et = th-packet.IPv6Len-packet.EthLen, packet.EtherTypeIPv6
		packet.PutIPv6(b[start+packet.EthLen:], s.FAddr, s.EAddr, packet.ProtoTCP, 64, l4)
	}
	w.out.PutEthernet(b[start:], w.out.GuestMAC(), et)
	seg := b[th : th+l4]
	binary.BigEndian.PutUint16(seg[16:18], checksum(seg, s.FAddr, s.EAddr, partial))
	return b[start : th+l4]
}

// sndbufRefresh is how many window computations may reuse the send
// buffer's size read before.
const sndbufRefresh = 64

// window computes the window to advertise to the guest: what the host
// socket's send buffer can still take, none below one segment (no silly
// windows), at most maxWindow. It sets wantOut when the room is small,
// so that EPOLLOUT sends the update.
//
// The buffer's limit is on memory, not payload: each queued skb costs
// its overhead too, and when the host's peer takes small segments (a
// small receive window) a byte of payload can cost two of memory. With
// little queued, three quarters of the buffer is a safe guess; beyond a
// quarter of it, SO_MEMINFO gives the buffer's size and the memory
// queued, and the free memory is turned into payload at the rate the
// queue shows. Advertising more than the socket takes would drop data
// the guest must then retransmit, slowly, after its timeout.
func (e *Engine) window(c *conn, atLeastOne bool) uint32 {
	if c.guestFIN {
		return maxWindow >> 4
	}
	outq, err := unix.IoctlGetInt(c.fd, unix.TIOCOUTQ)
	if err != nil {
		return 0
	}
	queued := 0 // memory the queue holds, when just read
	if c.sndbuf == 0 || outq >= c.sndbuf/4 || c.sndbufAge >= sndbufRefresh {
		if c.sndbuf, queued, err = meminfo(c.fd); err != nil {
			c.sndbuf = 0
			return 0
		}
		c.sndbufAge = 0
	}
	c.sndbufAge++
	free := c.sndbuf*3/4 - outq
	if queued > outq && outq > 0 {
		// Payload per byte of memory as queued now, with an eighth
		// kept back for the next skbs' overhead.
		free = int(int64(c.sndbuf-queued) * int64(outq) / int64(queued) * 7 / 8)
	}
	if least := min(c.mss, c.sndbuf/4); free < least {
		// Too little to be worth a segment: wait for EPOLLOUT.
		free = 0
		if atLeastOne {
			free = least
		}
		c.wantOut = true
	}
	return uint32(min(free, maxWindow))
}

// meminfo reads a socket's send buffer size and the memory its queue
// holds (SO_MEMINFO), without allocating.
func meminfo(fd int) (sndbuf, queued int, err error) {
	var mem [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(mem))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, 0, e
	}
	return int(mem[unix.SK_MEMINFO_SNDBUF]), int(mem[unix.SK_MEMINFO_WMEM_QUEUED]), nil
}

// sendSeg sends a segment without payload to the guest: seq, our ACK
// and the window, and, where SACK is on and segments are held beyond a
// hole, their blocks.
func (e *Engine) sendSeg(w *writer, f *flow.Flow, c *conn, seq uint32, flags uint8) {
	wnd := c.rcvWnd >> c.rcvScale
	if flags&flagRST != 0 {
		wnd = 0
	}
	th := headroom - hdrLen
	n := putHeader(w.ctl[th:], f.Side[c.tap].FPort, f.Side[c.tap].EPort, seq, c.rcvNxt, flags, uint16(min(wnd, 0xffff)), false, 0, 0)
	if c.sack && flags&flagRST == 0 && len(c.held.segs) > 0 {
		var blocks [maxSACKBlocks][2]uint32
		if k := c.held.sackBlocks(c.sackLast, &blocks); k > 0 {
			n = putSACK(w.ctl[th:], n, blocks[:k])
		}
	}
	w.out.WriteFrame(e.putFrame(w, w.ctl, th, n, 0, &f.Side[c.tap], false))
}

// sendAck sends an ACK with a fresh window (at least one segment when
// the host said it has room).
func (e *Engine) sendAck(w *writer, f *flow.Flow, c *conn, atLeastOne bool) {
	c.rcvWnd = e.window(c, atLeastOne)
	e.sendSeg(w, f, c, c.sndNxt, flagACK)
}

// windowUpdate sends the ACK that reopens the window once the host
// socket has room again (EPOLLOUT, or the timer). If the socket had
// refused some of the guest's data, three more of the same ACK follow:
// duplicates, on which the guest retransmits at once instead of after
// its timeout (RFC 5681 3.2).
func (e *Engine) windowUpdate(w *writer, f *flow.Flow, c *conn, atLeastOne bool) {
	e.sendAck(w, f, c, atLeastOne)
	if c.lost && c.rcvWnd > 0 {
		c.lost = false
		for range 3 {
			e.sendSeg(w, f, c, c.sndNxt, flagACK)
		}
	}
}

// sendRST resets the guest's side of the connection. Before our SYN-ACK,
// it acknowledges the guest's SYN, as a refused connect does.
func (e *Engine) sendRST(w *writer, f *flow.Flow, c *conn) {
	seq := c.sndNxt
	if c.state == stConnecting {
		seq = 0
	}
	e.sendSeg(w, f, c, seq, flagRST|flagACK)
	e.st.TCPResets.Add(1)
}

// sendSyn sends our SYN (to a connection accepted on a listener) or
// SYN-ACK (to the guest's SYN), with our MSS and window scale, and
// SACK-permitted in our SYN and in a SYN-ACK to a SYN that had it.
func (e *Engine) sendSyn(w *writer, f *flow.Flow, c *conn) {
	s := &f.Side[c.tap]
	flags, ack := uint8(flagSYN), uint32(0)
	ws := uint8(ourScale)
	wnd := uint32(0xffff)
	if c.state != stSynSent {
		flags |= flagACK
		ack = c.rcvNxt
		if c.rcvScale == 0 {
			ws = noScale
		}
		wnd = min(e.window(c, true), 0xffff)
	}
	c.rcvWnd = wnd
	th := headroom - hdrLen
	n := putHeader(w.ctl[th:], s.FPort, s.EPort, c.iss, ack, flags, uint16(wnd), true, uint16(e.mssFor(s.EAddr)), ws)
	if c.state == stSynSent || c.sack {
		n = addOption(w.ctl[th:], n, sackPermitted[:])
	}
	w.out.WriteFrame(e.putFrame(w, w.ctl, th, n, 0, s, false))
}

// toGuest sends what the host socket holds beyond what is in flight, as
// far as the guest's window goes, and the FIN after the end of file. It
// reports false if it freed the connection. With drain (the event said
// the peer closed or hung up), it reads until the socket has nothing
// more, so that the end of file behind the data is seen; otherwise a
// read that returns less than it asked for ends it, as whatever arrives
// later raises a new edge-triggered event.
func (e *Engine) toGuest(idx int32, f *flow.Flow, c *conn, now int64, drain bool) bool {
	w := e.lw
	s := &f.Side[c.tap]
	partial := w.out.Partial()
	mss := c.mss
	// A frame carries one segment, or, where the guest's kernel
	// segments TCP, as many as fit in one IP packet (gso_size mss).
	chunk, gso := mss, tap.GSO(0)
	if w.out.TSO() && 2*mss <= maxGSOPayload {
		chunk, gso = maxGSOPayload/mss*mss, tap.GSOTCPv4
		if s.EAddr.Is6() {
			gso = tap.GSOTCPv6
		}
	}
	stride := headroom + chunk
	c.stalled = false
	for !c.finSent {
		room := c.room()
		if room == 0 {
			c.stalled = true // the guest's ACK or window update kicks
			break
		}
		nseg := min(maxSegs, len(w.data)/stride, int((room+uint32(chunk)-1)/uint32(chunk)))
		want := min(int(room), nseg*chunk)
		iov := w.iov[:0]
		if !e.peekOff {
			skip := int(c.sndNxt - c.sndUna)
			if skip > len(e.discard) {
				c.stalled = true
				break
			}
			if skip > 0 {
				iov = append(iov, unix.Iovec{Base: &e.discard[0]})
				iov[0].SetLen(skip)
			}
		}
		for i, left := 0, want; left > 0; i++ {
			l := min(left, chunk)
			v := unix.Iovec{Base: &w.data[i*stride+headroom]}
			v.SetLen(l)
			iov = append(iov, v)
			left -= l
		}
		n, err := recvmsg(c.fd, iov, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		short := n < want
		if !e.peekOff && err == nil && n > 0 {
			short = n < want+int(c.sndNxt-c.sndUna)
			n -= int(c.sndNxt - c.sndUna)
			if n <= 0 {
				n = -1 // nothing beyond what is in flight yet
			}
		}
		switch {
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			n = -1
		case err != nil:
			e.hostFailed(idx, f, c, err)
			return false
		}
		if n < 0 {
			break
		}
		if n == 0 {
			c.hostEOF = true
			c.finSent, c.finSeq = true, c.sndNxt
			c.sndNxt++
			if seqLT(c.sndMax, c.sndNxt) {
				c.sndMax = c.sndNxt
			}
			e.sendSeg(w, f, c, c.finSeq, flagFIN|flagACK)
			if c.rtoAt == 0 {
				e.armRTO(c, now+c.rto)
			}
			break
		}
		c.rcvWnd = e.window(c, false)
		wnd := uint16(min(c.rcvWnd>>c.rcvScale, 0xffff))
		var sent int
		var bytes uint64
		for i, off := 0, 0; off < n; i, off = i+1, off+chunk {
			l := min(n-off, chunk)
			b := w.data[i*stride : (i+1)*stride]
			th := headroom - hdrLen
			flags := uint8(flagACK)
			if off+l == n {
				flags |= flagPSH
			}
			putHeader(b[th:], s.FPort, s.EPort, c.sndNxt+uint32(off), c.rcvNxt, flags, wnd, false, 0, 0)
			frame := e.putFrame(w, b, th, hdrLen, l, s, partial)
			if l <= mss {
				w.out.Queue(frame, len(frame)-l)
				continue
			}
			segs := (l + mss - 1) / mss
			if _, wrote := w.out.WriteSegmented(frame, len(frame)-l, mss, gso, nil, segs); wrote {
				sent += segs
				bytes += uint64(l)
			}
		}
		qs, qb := w.out.Flush()
		e.ps.ToTap.Add(uint64(sent + qs))
		e.ps.ToTapBytes.Add(bytes + qb)
		fresh := c.sndNxt == c.sndMax
		c.sndNxt += uint32(n)
		if seqLT(c.sndMax, c.sndNxt) {
			c.sndMax = c.sndNxt
		}
		if fresh && c.rttAt == 0 {
			c.rttAt, c.rttSeq = now, c.sndNxt
		}
		if c.rtoAt == 0 {
			e.armRTO(c, now+c.rto)
		}
		c.lastAct = now
		if short && !drain {
			break // the queue is empty: the next data raises an event
		}
	}
	return true
}

// recvmsg reads into iov with flags, without allocating.
func recvmsg(fd int, iov []unix.Iovec, flags int) (int, error) {
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(len(iov))
	n, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// sendmsg writes iov with flags, without allocating.
func sendmsg(fd int, iov []unix.Iovec, flags int) (int, error) {
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(len(iov))
	n, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// consume drops n acknowledged bytes from the socket's receive queue.
func consume(fd int, n int) error {
	for n > 0 {
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), 0, uintptr(n), uintptr(unix.MSG_TRUNC|unix.MSG_DONTWAIT), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		if r == 0 {
			return nil
		}
		n -= int(r)
	}
	return nil
}

// quoteSyn builds, in b, the IP header and first TCP bytes of the guest's
// SYN of flow side s (sent from EAddr:EPort to FAddr:FPort) with sequence
// number isn, to quote in an ICMP error, and returns it.
func quoteSyn(b []byte, s *flow.Side, isn uint32) []byte {
	var ip int
	if s.EAddr.Is4() {
		ip = packet.IPv4Len
		packet.PutIPv4(b, s.EAddr, s.FAddr, packet.ProtoTCP, 64, ip+hdrLen, true)
	} else {
		ip = packet.IPv6Len
		packet.PutIPv6(b, s.EAddr, s.FAddr, packet.ProtoTCP, 64, hdrLen)
	}
	putHeader(b[ip:], s.EPort, s.FPort, isn, 0, flagSYN, 0xffff, false, 0, 0)
	return b[:ip+hdrLen]
}

// unreachable tells the guest its connection's destination cannot be
// reached, as a router would: ICMP host unreachable or ICMPv6 address
// unreachable, from the destination.
func (e *Engine) unreachable(w *writer, f *flow.Flow, c *conn) {
	s := &f.Side[c.tap]
	var q [packet.IPv6Len + hdrLen]byte
	quoted := quoteSyn(q[:], s, c.guestISN)
	if s.EAddr.Is4() {
		w.out.ICMPError(s.FAddr, s.EAddr, 3, 1, 0, quoted)
	} else {
		w.out.ICMPError(s.FAddr, s.EAddr, 1, 3, 0, quoted)
	}
}

// connected finishes the host connect of a guest's SYN: SYN-ACK to the
// guest, or RST (ICMP unreachable) if it failed.
func (e *Engine) connected(idx int32, f *flow.Flow, c *conn, now int64) {
	if err := sockError(c.fd); err != nil {
		if log.Enabled(log.LevelDebug) {
			log.Debugf("TCP flow %d: connect: %v", idx, err)
		}
		if errUnreachable(err) {
			e.unreachable(e.lw, f, c)
		} else {
			e.sendRST(e.lw, f, c)
		}
		e.free(idx, f, c, false)
		return
	}
	e.hostUp(e.lw, idx, f, c, now)
}

// hostUp sends the SYN-ACK of a connection whose host socket connected.
func (e *Engine) hostUp(w *writer, idx int32, f *flow.Flow, c *conn, now int64) {
	c.state = stSynAckSent
	c.rtoAt, c.rto, c.retries, c.rttAt = now+int64(initialRTO), int64(initialRTO), 0, now
	if local, err := sockaddr.Local(c.fd); err == nil {
		f.Side[c.host()].FAddr, f.Side[c.host()].FPort = local.Addr(), local.Port()
	}
	e.setEvents(idx, f, c)
	e.sendSyn(w, f, c)
}
