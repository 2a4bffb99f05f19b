package udp

import (
	"errors"
	"net/netip"
	"unsafe"

	"github.com/gopasst/gopasst/internal/flow"

	"golang.org/x/sys/unix"
)

// UDP segmentation and receive offload on host and namespace sockets.
//
// Sending, a run of datagrams of one flow whose sizes are all equal but
// for a shorter last one goes out as one message with a UDP_SEGMENT
// control message: the kernel builds one GSO packet and cuts it as late as
// it can (on loopback, at the receiving socket), so a run costs about one
// datagram's trip through the stack. Receiving with UDP_GRO, the kernel
// hands over such runs whole, with their segment size.

// maxSegments is the most datagrams one UDP_SEGMENT message carries, and
// maxSegBytes the most payload bytes (what fits one IPv4 datagram).
const (
	maxSegments = 64
	maxSegBytes = 65535 - 20 - 8
)

// solUDP is the socket level of UDP options (SOL_UDP).
const solUDP = unix.IPPROTO_UDP

var (
	segCmsgLen   = unix.CmsgLen(2)
	segCmsgSpace = unix.CmsgSpace(2)
	groCmsgSpace = unix.CmsgSpace(4)
)

// segBatch builds the messages of one sendmmsg to one destination, with
// runs of equal-size datagrams merged into UDP_SEGMENT messages.
type segBatch struct {
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	ctl   []byte // segCmsgSpace bytes per message
	count []int  // datagrams in each message
	size  []int  // segment size of each message (after finish, 0: one datagram)
	bytes []int  // payload bytes of each message
	open  []bool // the message's run may take another datagram
	n     int    // messages
	niov  int    // iovecs in use
	name  unix.RawSockaddrInet6

	// split holds one message's datagrams one by one, for a kernel
	// that refuses to segment.
	split     []unix.Mmsghdr
	splitIovs []unix.Iovec
}

func newSegBatch() *segBatch {
	b := &segBatch{
		msgs: make([]unix.Mmsghdr, Batch), iovs: make([]unix.Iovec, Batch), ctl: make([]byte, Batch*segCmsgSpace),
		count: make([]int, Batch), size: make([]int, Batch), bytes: make([]int, Batch), open: make([]bool, Batch),
		split: make([]unix.Mmsghdr, maxSegments), splitIovs: make([]unix.Iovec, maxSegments),
	}
	for i := 0; i < Batch; i++ {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b.ctl[i*segCmsgSpace]))
		h.Level, h.Type = solUDP, unix.UDP_SEGMENT
		h.SetLen(segCmsgLen)
	}
	return b
}

func (b *segBatch) reset() { b.n, b.niov = 0, 0 }

// add appends a payload. seg > 0 marks a payload that is itself a run
// of datagrams of seg bytes (received with UDP_GRO, or a segmented frame
// from the guest); merge allows adding a single datagram to the open run:
// one of the run's size, or a shorter one, which closes it.
func (b *segBatch) add(p []byte, seg int, merge bool) {
	if b.niov == len(b.iovs) {
		return // cannot happen: at most Batch payloads per batch
	}
	if seg >= len(p) {
		seg = 0
	}
	iov := &b.iovs[b.niov]
	b.niov++
	iov.Base = nil
	if len(p) > 0 {
		iov.Base = &p[0]
	}
	iov.SetLen(len(p))
	if m := b.n - 1; merge && seg == 0 && m >= 0 && b.open[m] && len(p) > 0 && len(p) <= b.size[m] &&
		b.count[m] < maxSegments && b.bytes[m]+len(p) <= maxSegBytes {
		b.msgs[m].Hdr.Iovlen++
		b.count[m]++
		b.bytes[m] += len(p)
		b.open[m] = len(p) == b.size[m]
		return
	}
	m := b.n
	b.n++
	b.msgs[m].Hdr.Iov = iov
	b.msgs[m].Hdr.Iovlen = 1
	b.count[m], b.size[m], b.bytes[m], b.open[m] = 1, len(p), len(p), seg == 0 && len(p) > 0
	if seg > 0 {
		b.count[m], b.size[m] = (len(p)+seg-1)/seg, seg
	}
}

// datagrams returns how many datagrams the batch holds.
func (b *segBatch) datagrams() int {
	n := 0
	for m := 0; m < b.n; m++ {
		n += b.count[m]
	}
	return n
}

// dest returns the address to send to side s, nil when the socket is
// connected.
func (b *segBatch) dest(s *flow.Side, connected bool) (*byte, uint32) {
	if connected {
		return nil, 0
	}
	n := putSockaddr(&b.name, netip.AddrPortFrom(s.EAddr, s.EPort))
	return (*byte)(unsafe.Pointer(&b.name)), n
}

// finish sets destination and control messages; name is nil for a
// connected socket.
func (b *segBatch) finish(name *byte, namelen uint32) {
	for m := 0; m < b.n; m++ {
		h := &b.msgs[m].Hdr
		h.Name, h.Namelen = name, namelen
		if b.count[m] == 1 {
			b.size[m] = 0 // one datagram: no segmentation
			h.Control, h.Controllen = nil, 0
			continue
		}
		seg := b.size[m]
		c := b.ctl[m*segCmsgSpace : (m+1)*segCmsgSpace]
		*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])) = uint16(seg)
		h.Control = &c[0]
		h.SetControllen(segCmsgSpace)
	}
}

// send sends the batch on fd. A message the kernel will not segment goes
// again one datagram at a time; a message that fails otherwise is dropped.
// It returns the datagrams and payload bytes sent, and the last error.
func (b *segBatch) send(fd int) (sent, bytes int, err error) {
	msgs := b.msgs[:b.n]
	m := 0
	for m < len(msgs) {
		n, e := sendmmsg(fd, msgs[m:])
		if e == nil {
			for k := m; k < m+n; k++ {
				sent += b.count[k]
				bytes += b.bytes[k]
			}
			m += n
			continue
		}
		if errors.Is(e, unix.EINTR) {
			continue
		}
		err = e
		if b.size[m] > 0 && segRefused(e) {
			s, by := b.sendSplit(fd, m)
			sent += s
			bytes += by
		}
		m++
	}
	return sent, bytes, err
}

// segRefused tells the errors of a kernel or route that cannot segment
// (a segment larger than the path MTU, say) from those of the datagram.
func segRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EIO) || errors.Is(err, unix.EMSGSIZE) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOPROTOOPT)
}

// sendSplit sends message m one datagram per message.
func (b *segBatch) sendSplit(fd, m int) (sent, bytes int) {
	h := &b.msgs[m].Hdr
	iovs := unsafe.Slice(h.Iov, h.Iovlen)
	seg := b.size[m]
	k := 0
	for _, iov := range iovs {
		base := unsafe.Slice(iov.Base, iov.Len)
		for off := 0; off < len(base) && k < len(b.split); off += seg {
			end := min(off+seg, len(base))
			if len(iovs) > 1 {
				end = len(base) // merged run: one datagram per iovec
			}
			b.splitIovs[k].Base = &base[off]
			b.splitIovs[k].SetLen(end - off)
			s := &b.split[k].Hdr
			s.Iov, s.Iovlen = &b.splitIovs[k], 1
			s.Name, s.Namelen = h.Name, h.Namelen
			s.Control, s.Controllen = nil, 0
			k++
			if len(iovs) > 1 {
				break
			}
		}
	}
	msgs := b.split[:k]
	for len(msgs) > 0 {
		n, err := sendmmsg(fd, msgs)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			n = 1 // drop the refused one, go on
		} else {
			for _, s := range msgs[:n] {
				sent++
				bytes += int(s.Hdr.Iov.Len)
			}
		}
		msgs = msgs[n:]
	}
	return sent, bytes
}

// enableGRO asks fd to hand over runs of datagrams whole.
func enableGRO(fd int) {
	_ = unix.SetsockoptInt(fd, solUDP, unix.UDP_GRO, 1)
}

// groSize returns the segment size the kernel reported in a received
// message's control data, 0 if none.
func groSize(h *unix.Msghdr) int {
	if int(h.Controllen) < unix.CmsgLen(4) || h.Control == nil {
		return 0
	}
	c := (*unix.Cmsghdr)(unsafe.Pointer(h.Control))
	if c.Level != solUDP || c.Type != unix.UDP_GRO || int(c.Len) < unix.CmsgLen(4) {
		return 0
	}
	return int(*(*int32)(unsafe.Add(unsafe.Pointer(h.Control), unix.CmsgLen(0))))
}
