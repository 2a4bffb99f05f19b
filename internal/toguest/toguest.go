// Package toguest is the one way frames reach the guest: every protocol
// builds its L4 header (and the IP header in front of it, with package
// packet) in the headroom before its payload and hands the frame here.
//
// # Theory of operation
//
// A [Writer] belongs to one path (the host event loop has one, the tap
// reader another), used by one goroutine at a time, so its queue and
// scratch buffers need no lock; the endpoint below takes writes from both.
//
//   - Frames are queued ([Writer.Queue]) and written together by
//     [Writer.Flush]: with one system call where the endpoint takes
//     batches (the qemu socket), one write each otherwise. Where the guest
//     takes offloads (a tap with a virtio-net header), queued frames carry
//     a partial L4 checksum ([Writer.Partial]) and go out marked as such,
//     so neither gopasst nor the guest's kernel sums their payloads.
//   - A segmented frame ([Writer.WriteSegmented]) carries many packets of
//     one flow, with its segmentation type (UDP, TCP over IPv4 or IPv6),
//     for the guest's kernel to cut apart.
//   - An IPv4 packet larger than the guest's MTU is sent as fragments
//     ([Writer.Fragment]).
//   - ICMP and ICMPv6 errors ([Writer.ICMPError]), rate-limited, and
//     time-exceeded for packets whose TTL runs out at the gateway
//     ([Writer.TimeExceeded]), as a router would send them.
//
// The writer counts frames written and tap write failures; what a frame
// carried (a datagram, an echo reply) is counted by the protocol, with the
// numbers Flush returns.
package toguest

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
)

// FrameWriter sends one Ethernet frame to the guest.
type FrameWriter interface {
	WriteFrame(frame []byte) error
}

// BatchWriter is a FrameWriter that can also send many frames with one
// system call (the qemu stream socket). It returns how many went out.
type BatchWriter interface {
	WriteFrames(frames [][]byte) (int, error)
}

// SegmentWriter is a FrameWriter whose guest takes offloads (see
// tap.Segmenter): segmented frames and frames with partial checksums.
type SegmentWriter interface {
	// Offloads reports whether the guest took the offloads, TSO
	// whether TCP segmentation is among them.
	Offloads() bool
	TSO() bool
	WriteSegmented(frame []byte, hdrLen, segSize int, gso tap.GSO, more [][]byte) (bool, error)
	WritePartial(frame []byte, hdrLen int) (bool, error)
}

// Config is what a Writer needs.
type Config struct {
	EP     FrameWriter
	Guest  *fwd.Guest
	OurMAC packet.MAC
	Stats  *stats.Counters
	// MTU is the guest's; zero means no limit.
	MTU int
	// Offload uses the endpoint's offloads where the guest took them.
	Offload bool
}

// maxICMPPerSecond bounds the ICMP errors one writer sends the guest.
const maxICMPPerSecond = 100

// Writer writes frames to the guest for one goroutine.
type Writer struct {
	cfg  Config
	st   *stats.Counters
	seg  SegmentWriter // nil unless the guest takes offloads
	out  [][]byte
	hdrs []int
	// frag is the scratch frame for IPv4 fragments, fragID their
	// identification counter.
	frag   []byte
	fragID uint16
	icmp   *icmpBuf
	second int64 // the second the ICMP error count is for
	count  int
	clock  func() int64
}

type icmpBuf struct {
	frame [packet.EthLen + packet.MaxICMP6Error]byte
}

// New returns a Writer.
func New(cfg Config) *Writer {
	w := &Writer{cfg: cfg, st: cfg.Stats, clock: evloop.Now, out: make([][]byte, 0, 64), hdrs: make([]int, 0, 64)}
	if sw, ok := cfg.EP.(SegmentWriter); ok && cfg.Offload && sw.Offloads() {
		w.seg = sw
	}
	return w
}

// Partial reports whether queued frames carry partial L4 checksums (the
// guest takes offloads) and segmented frames can be written.
func (w *Writer) Partial() bool { return w.seg != nil }

// TSO reports whether segmented TCP frames can be written
// (WriteSegmented with tap.GSOTCPv4 or tap.GSOTCPv6).
func (w *Writer) TSO() bool { return w.seg != nil && w.seg.TSO() }

// MTU is the guest's MTU, zero for no limit.
func (w *Writer) MTU() int { return w.cfg.MTU }

// PutEthernet writes the Ethernet header of a frame to the guest at b[0:].
// mac is the guest's (Guest.MAC, read once per batch).
func (w *Writer) PutEthernet(b []byte, mac packet.MAC, etherType uint16) {
	packet.PutEthernet(b, mac, w.cfg.OurMAC, etherType)
}

// GuestMAC is the guest's MAC address as last seen.
func (w *Writer) GuestMAC() packet.MAC { return w.cfg.Guest.MAC() }

// Queue adds a frame of hdrLen bytes of headers and its payload to the
// next Flush. The frame must stay untouched until then.
func (w *Writer) Queue(frame []byte, hdrLen int) {
	w.out = append(w.out, frame)
	w.hdrs = append(w.hdrs, hdrLen)
}

// Flush writes the queued frames and returns how many went out and the
// payload bytes they carried; the others are counted as tap-write drops.
func (w *Writer) Flush() (sent int, bytes uint64) {
	out := w.out
	if len(out) == 0 {
		return 0, 0
	}
	var err error
	switch bw, ok := w.cfg.EP.(BatchWriter); {
	case w.seg != nil:
		for i, f := range out {
			if _, werr := w.seg.WritePartial(f, w.hdrs[i]); werr != nil {
				err = werr
				continue
			}
			sent++
			bytes += uint64(len(f) - w.hdrs[i])
		}
	case ok && len(out) > 1:
		sent, err = bw.WriteFrames(out)
		for i, f := range out[:sent] {
			bytes += uint64(len(f) - w.hdrs[i])
		}
	default:
		for i, f := range out {
			if werr := w.cfg.EP.WriteFrame(f); werr != nil {
				err = werr
				continue
			}
			sent++
			bytes += uint64(len(f) - w.hdrs[i])
		}
	}
	if sent < len(out) {
		w.st.Drops[stats.DropTapWrite].Add(uint64(len(out) - sent))
		if log.Enabled(log.LevelDebug) {
			log.Debugf("tap write: %d of %d frames dropped: %v", len(out)-sent, len(out), err)
		}
	}
	w.st.TapTxFrames.Add(uint64(sent))
	w.out, w.hdrs = w.out[:0], w.hdrs[:0]
	return sent, bytes
}

// WriteFrame writes one frame at once, after the queued ones, and reports
// whether it went out.
func (w *Writer) WriteFrame(frame []byte) bool {
	w.Flush()
	if err := w.cfg.EP.WriteFrame(frame); err != nil {
		w.st.Drop(stats.DropTapWrite)
		return false
	}
	w.st.TapTxFrames.Add(1)
	return true
}

// WriteSegmented writes a segmented frame of type gso after the queued
// ones (see tap.Segmenter). It reports false, having sent nothing, when
// the endpoint cannot; a write error counts count packets as dropped.
func (w *Writer) WriteSegmented(frame []byte, hdrLen, segSize int, gso tap.GSO, more [][]byte, count int) (ok, sent bool) {
	if w.seg == nil {
		return false, false
	}
	w.Flush()
	ok, err := w.seg.WriteSegmented(frame, hdrLen, segSize, gso, more)
	if !ok {
		return false, false
	}
	if err != nil {
		w.st.Drops[stats.DropTapWrite].Add(uint64(count))
		if log.Enabled(log.LevelDebug) {
			log.Debugf("tap write: segmented frame of %d packets dropped: %v", count, err)
		}
		return true, false
	}
	w.st.TapTxFrames.Add(1)
	return true, true
}

// NeedsFragments reports whether an IPv4 packet of ipLen bytes must be
// fragmented to reach the guest.
func (w *Writer) NeedsFragments(ipLen int) bool { return w.cfg.MTU > 0 && ipLen > w.cfg.MTU }

// Fragment writes an IPv4 frame (its headers with their full checksums)
// larger than the guest's MTU as fragments, after the queued frames. It
// reports whether every fragment went out.
func (w *Writer) Fragment(frame []byte) bool {
	w.Flush()
	mtu := w.cfg.MTU
	if w.frag == nil {
		w.frag = make([]byte, packet.EthLen+mtu)
	}
	hdr := frame[packet.EthLen : packet.EthLen+packet.IPv4Len]
	data := frame[packet.EthLen+packet.IPv4Len:]
	chunk := (mtu - packet.IPv4Len) &^ 7
	w.fragID++
	sent := 0
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		b := w.frag[:packet.EthLen+packet.IPv4Len+end-off]
		copy(b, frame[:packet.EthLen])
		h := b[packet.EthLen : packet.EthLen+packet.IPv4Len]
		copy(h, hdr)
		binary.BigEndian.PutUint16(h[2:4], uint16(packet.IPv4Len+end-off))
		binary.BigEndian.PutUint16(h[4:6], w.fragID)
		fo := uint16(off / 8)
		if end < len(data) {
			fo |= 0x2000 // more fragments
		}
		binary.BigEndian.PutUint16(h[6:8], fo)
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:12], packet.Fold(packet.Sum(h, 0)))
		copy(b[packet.EthLen+packet.IPv4Len:], data[off:end])
		if err := w.cfg.EP.WriteFrame(b); err != nil {
			w.st.Drop(stats.DropTapWrite)
			w.st.TapTxFrames.Add(uint64(sent))
			return false
		}
		sent++
	}
	w.st.TapTxFrames.Add(uint64(sent))
	return true
}

// allowICMP counts one ICMP error and reports whether it is within the
// rate limit.
func (w *Writer) allowICMP() bool {
	if sec := w.clock() / 1e9; sec != w.second {
		w.second, w.count = sec, 0
	}
	if w.count >= maxICMPPerSecond {
		return false
	}
	w.count++
	return true
}

// ICMPError sends the guest at dst an ICMP (dst IPv4) or ICMPv6 error of
// type typ and code from src, quoting quoted (the offending packet as the
// guest sent it). info is the extended error's info: the next-hop MTU of
// "fragmentation needed" and the MTU of "packet too big". Errors over
// the rate limit are dropped and counted.
func (w *Writer) ICMPError(src, dst netip.Addr, typ, code uint8, info uint32, quoted []byte) {
	if !w.allowICMP() {
		w.st.Drop(stats.DropRateLimited)
		return
	}
	if w.icmp == nil {
		w.icmp = &icmpBuf{}
	}
	frame := w.icmp.frame[:]
	var n int
	mac := w.cfg.Guest.MAC()
	if dst.Is4() {
		rest := uint32(0)
		if typ == 3 && code == 4 { // fragmentation needed: next-hop MTU
			rest = info & 0xffff
		}
		n = packet.PutICMP4Error(frame, src, dst, typ, code, rest, quoted)
		w.PutEthernet(frame, mac, packet.EtherTypeIPv4)
	} else {
		rest := uint32(0)
		if typ == 2 { // packet too big: MTU
			rest = info
		}
		n = packet.PutICMP6Error(frame, src, dst, typ, code, rest, quoted)
		w.PutEthernet(frame, mac, packet.EtherTypeIPv6)
	}
	if w.WriteFrame(frame[:packet.EthLen+n]) {
		w.st.ICMPToGuest.Add(1)
	}
}

// TimeExceeded answers a packet p from the guest whose TTL or hop limit
// runs out at its gateway, as a router does: with time-exceeded in transit
// from the gateway address (router4 or router6). It reports whether it
// consumed p. Packets to the host itself (the addresses that stand for it)
// have arrived and are not expired; none is sent about multicast or
// broadcast, nor to a source that is not a single host (RFC 1812 4.3.2.7,
// RFC 4443 2.4): those are dropped later, and counted.
func (w *Writer) TimeExceeded(p *packet.Parsed, r *fwd.Rules, router4, router6 netip.Addr) bool {
	if p.HopLimit > 1 || r.StandsForHost(p.Dst4) || p.Dst4.IsMulticast() ||
		p.Dst4 == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || !r.GuestSource(p.Src4) {
		return false
	}
	from, typ := router6, uint8(3)
	if p.Src4.Is4() {
		from, typ = router4, 11
	}
	if !from.IsValid() {
		return false
	}
	w.ICMPError(from, p.Src4, typ, 0, 0, p.L3)
	return true
}
