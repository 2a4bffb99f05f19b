package udp

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
)

// ICMP errors. A reply socket is connected to the guest's peer, so the
// kernel files the ICMP errors that peer (or a router on the way) sends
// back under that socket. With IP_RECVERR they are queued with what caused
// them: the payload of the datagram, the ICMP type and code, and the
// address of whoever complained. The socket loop reads them when epoll
// reports EPOLLERR and sends the guest the ICMP error its kernel would
// have got on a real network, quoting the datagram as the guest sent it
// (its addresses and ports), so a guest's connected socket reports
// ECONNREFUSED and traceroute sees time-exceeded.

// Origins of extended socket errors (linux/errqueue.h).
const (
	eeOriginICMP  = 2
	eeOriginICMP6 = 3
)

// enableRecvErr asks for ICMP errors in the socket's error queue.
func enableRecvErr(fd int, v4 bool) {
	if v4 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
	} else {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
	}
}

// icmpState holds the buffers of the error path (the guest writer sends
// the errors, and limits their rate).
type icmpState struct {
	payload [packet.MaxICMP6Error]byte
	oob     [256]byte
	quote   [packet.MaxICMP6Error]byte
}

// queuedError is one entry of a socket's error queue.
type queuedError struct {
	ee       unix.SockExtendedErr
	offender netip.Addr
	dst      netip.AddrPort // where the datagram that failed was going
	payload  []byte         // its payload, in the icmpState buffer
}

// readError reads the next ICMP error queued on fd. It returns false when
// the queue is empty.
func (e *Engine) readError(fd int) (queuedError, bool) {
	for {
		n, oobn, _, from, err := unix.Recvmsg(fd, e.icmp.payload[:], e.icmp.oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) {
				log.Debugf("UDP: error queue: %v", err)
			}
			return queuedError{}, false
		}
		ee, offender, ok := parseRecvErr(e.icmp.oob[:oobn])
		if !ok {
			continue
		}
		e.st.Drop(stats.DropSockErr)
		q := queuedError{ee: ee, offender: offender, payload: e.icmp.payload[:min(n, len(e.icmp.payload))]}
		switch sa := from.(type) {
		case *unix.SockaddrInet4:
			q.dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			q.dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
		}
		return q, true
	}
}

// drainErrors reads the error queue of the reply socket on side `side` of
// flow f and tells the guest. Called from the socket loop, which owns the
// socket.
func (e *Engine) drainErrors(f *flow.Flow, side uint8, fd int) {
	for range 16 {
		q, ok := e.readError(fd)
		if !ok {
			return
		}
		if log.Enabled(log.LevelDebug) {
			log.Debugf("UDP flow %s: ICMP type %d code %d from %s", f, q.ee.Type, q.ee.Code, q.offender)
		}
		if other := side ^ 1; f.PIF[other] == flow.PIFTap {
			e.icmpToGuest(&f.Side[other], &f.Side[side], q.ee, q.offender, q.payload)
		}
	}
}

// listenerErrors reads the error queue of a listening socket: errors for
// datagrams the guest sent back to host peers of the flows it started.
// The failed datagram's destination names the flow.
func (e *Engine) listenerErrors(l *listener) {
	for range 16 {
		q, ok := e.readError(l.fd)
		if !ok {
			return
		}
		key := flow.Key{Type: flow.TypeUDP, PIF: l.pif, EAddr: q.dst.Addr(), EPort: q.dst.Port(), FAddr: l.addr, FPort: l.port}
		e.tab.Mu.Lock()
		ref, found := e.tab.Lookup(key)
		var tapSide, hostSide flow.Side
		if found {
			f := e.tab.At(ref.Index)
			found = f.PIF[ref.Side^1] == flow.PIFTap
			tapSide, hostSide = f.Side[ref.Side^1], f.Side[ref.Side]
		}
		e.tab.Mu.Unlock()
		if found {
			e.icmpToGuest(&tapSide, &hostSide, q.ee, q.offender, q.payload)
		}
	}
}

// parseRecvErr finds the extended error and the offender's address in
// the control messages of an error-queue read.
func parseRecvErr(oob []byte) (unix.SockExtendedErr, netip.Addr, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return unix.SockExtendedErr{}, netip.Addr{}, false
	}
	for _, m := range msgs {
		if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR ||
			m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
			continue
		}
		const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
		if len(m.Data) < eeLen {
			continue
		}
		var ee unix.SockExtendedErr
		ee.Errno = binary.NativeEndian.Uint32(m.Data[0:4])
		ee.Origin, ee.Type, ee.Code = m.Data[4], m.Data[5], m.Data[6]
		ee.Info = binary.NativeEndian.Uint32(m.Data[8:12])
		ee.Data = binary.NativeEndian.Uint32(m.Data[12:16])
		if ee.Origin != eeOriginICMP && ee.Origin != eeOriginICMP6 {
			continue
		}
		// The offender's sockaddr follows (SO_EE_OFFENDER).
		var off netip.Addr
		if sa := m.Data[eeLen:]; len(sa) >= 8 {
			switch binary.NativeEndian.Uint16(sa[0:2]) {
			case unix.AF_INET:
				off = netip.AddrFrom4([4]byte(sa[4:8]))
			case unix.AF_INET6:
				if len(sa) >= 24 {
					off = netip.AddrFrom16([16]byte(sa[8:24])).Unmap()
				}
			}
		}
		return ee, off, true
	}
	return unix.SockExtendedErr{}, netip.Addr{}, false
}

// icmpToGuest sends the guest (tapSide: the guest's endpoint and the
// address it sent to) an ICMP error for a datagram it sent with payload,
// reported by offender on the host side (hostSide).
func (e *Engine) icmpToGuest(tapSide, hostSide *flow.Side, ee unix.SockExtendedErr, offender netip.Addr, payload []byte) {
	// Who complains, as the guest sees it: the peer it addressed, or a
	// router on the way (the host itself standing in for its loopback).
	src := tapSide.FAddr
	if offender.IsValid() && offender != hostSide.EAddr {
		src = offender
		if a, ok := e.cfg.Rules.Inbound(offender); ok {
			src = a
		} else {
			src = tapSide.FAddr
		}
	}
	if src.Is4() != tapSide.EAddr.Is4() {
		return
	}
	quoted := packet.QuoteUDP(e.icmp.quote[:], netip.AddrPortFrom(tapSide.EAddr, tapSide.EPort),
		netip.AddrPortFrom(tapSide.FAddr, tapSide.FPort), payload)
	e.out.ICMPError(src, tapSide.EAddr, ee.Type, ee.Code, ee.Info, quoted)
}
