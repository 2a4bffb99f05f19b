package tap

import (
	"encoding/binary"
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VnetHdrLen is the size of the virtio-net header (struct virtio_net_hdr)
// in front of every frame on a tap opened with IFF_VNET_HDR.
const VnetHdrLen = 10

// Fields of the virtio-net header.
const (
	vnetNeedsCsum = 1 // flags: the checksum at CsumStart+CsumOffset is partial
	vnetGSONone   = 0 // gso_type: one packet
)

// GSO is the segmentation type of a segmented frame, as the virtio-net
// header's gso_type names it.
type GSO uint8

// Segmentation types.
const (
	GSOTCPv4 GSO = 1 // TCP over IPv4 (TSO)
	GSOTCPv6 GSO = 4 // TCP over IPv6
	GSOUDPL4 GSO = 5 // UDP over either family (USO)
)

// MaxSegments is the most datagrams one segmented frame may carry, the
// kernel's limit for UDP segmentation (UDP_MAX_SEGMENTS in older kernels).
const MaxSegments = 64

// Segmenter is an endpoint that carries segmented frames: one frame
// holding many packets of one flow, all of one size but the last, which
// the kernel on the other side cuts apart (segmentation offload).
type Segmenter interface {
	// SegmentSize returns the segment size of frame i of the last
	// ReadBatch, 0 for a frame holding one packet.
	SegmentSize(i int) int
	// ChecksumPartial reports whether frame i of the last ReadBatch
	// carries a partial L4 checksum (the pseudo-header's sum only),
	// which the sender's kernel left for the device to complete.
	ChecksumPartial(i int) bool
	// WriteSegmented sends a segmented frame of type gso: frame holds
	// the Ethernet, IP and L4 headers (hdrLen bytes, with the lengths
	// of the whole and a partial L4 checksum) and the first payload,
	// more the payloads that follow; every segment but the last has
	// segSize bytes. It reports false, sending nothing, when the
	// endpoint does not segment frames of that type (the tap device
	// takes GSOUDPL4 with offloads, GSOTCPv4 and GSOTCPv6 when TSO
	// reports true).
	WriteSegmented(frame []byte, hdrLen, segSize int, gso GSO, more [][]byte) (bool, error)
	// WritePartial sends a frame holding one UDP datagram or TCP
	// segment whose checksum is partial (the pseudo-header's sum, as
	// in a segmented frame): the receiving kernel takes it as checked,
	// so neither side reads the payload for its checksum. It reports
	// false, sending nothing, when the endpoint does not offload.
	WritePartial(frame []byte, hdrLen int) (bool, error)
}

// vnetHdr is a decoded virtio-net header.
type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

// The header's 16-bit fields are in the host's byte order (legacy
// virtio-net, as tun uses without TUNSETVNETLE/BE).
func (h *vnetHdr) decode(b []byte) {
	h.flags, h.gsoType = b[0], b[1]
	h.hdrLen = binary.NativeEndian.Uint16(b[2:])
	h.gsoSize = binary.NativeEndian.Uint16(b[4:])
	h.csumStart = binary.NativeEndian.Uint16(b[6:])
	h.csumOffset = binary.NativeEndian.Uint16(b[8:])
}

func (h *vnetHdr) encode(b []byte) {
	b[0], b[1] = h.flags, h.gsoType
	binary.NativeEndian.PutUint16(b[2:], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:], h.csumOffset)
}

// NewVnetDevice wraps the descriptor of a tap opened with IFF_VNET_HDR.
// With offload, it asks the kernel for checksum offload and segmentation
// offloads for UDP and TCP (TUN_F_CSUM|TUN_F_USO4|TUN_F_USO6|TUN_F_TSO4|
// TUN_F_TSO6), then without TCP's should the kernel refuse that set; a
// kernel that refuses UDP's too (before Linux 6.2) leaves a device that
// moves plain frames, as does offload false. With TCP segmentation, the
// namespace's kernel hands over TCP segments of up to 64 KiB whatever
// the MTU, and takes them from gopasst too. The Device owns fd from now
// on.
func NewVnetDevice(fd int, offload bool) (*Device, error) {
	d, err := NewDevice(fd)
	if err != nil {
		return nil, err
	}
	d.vnet = true
	if offload {
		const uso = unix.TUN_F_CSUM | unix.TUN_F_USO4 | unix.TUN_F_USO6
		err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, uso|unix.TUN_F_TSO4|unix.TUN_F_TSO6)
		d.uso, d.tso = err == nil, err == nil
		if !d.uso {
			d.uso = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, uso) == nil
		}
	}
	if !d.uso {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Offloads reports whether the device carries segmented frames.
func (d *Device) Offloads() bool { return d.uso }

// TSO reports whether the device carries segmented TCP frames too.
func (d *Device) TSO() bool { return d.tso }

// SegmentSize implements Segmenter.
func (d *Device) SegmentSize(i int) int {
	if !d.uso || i >= len(d.gso) {
		return 0
	}
	return int(d.gso[i])
}

// ChecksumPartial implements Segmenter.
func (d *Device) ChecksumPartial(i int) bool {
	return i < len(d.partial) && d.partial[i]
}

// readVnet reads one frame and its header into hdr and buf.
func (d *Device) readVnet(hdr *[VnetHdrLen]byte, buf []byte) (int, error) {
	d.riov[0].Base = &hdr[0]
	d.riov[0].SetLen(VnetHdrLen)
	d.riov[1].Base = &buf[0]
	d.riov[1].SetLen(len(buf))
	n, _, e := unix.Syscall(unix.SYS_READV, uintptr(d.fd), uintptr(unsafe.Pointer(&d.riov[0])), 2)
	if e != 0 {
		return 0, e
	}
	if int(n) < VnetHdrLen {
		return 0, errors.New("tap: short read of virtio-net header")
	}
	return int(n) - VnetHdrLen, nil
}

// writev writes the iovecs prepared in d.wiov[:n]; called with wmu held.
func (d *Device) writev(n int) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(d.fd), uintptr(unsafe.Pointer(&d.wiov[0])), uintptr(n))
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return e
	}
}

// writeVnet sends a plain frame behind an all-zero header.
func (d *Device) writeVnet(frame []byte) error {
	return d.writeHdr(vnetHdr{}, frame, nil)
}

// WriteSegmented implements Segmenter.
func (d *Device) WriteSegmented(frame []byte, hdrLen, segSize int, gso GSO, more [][]byte) (bool, error) {
	switch {
	case !d.uso || len(more)+1 > MaxSegments:
		return false, nil
	case gso == GSOTCPv4 || gso == GSOTCPv6:
		if !d.tso {
			return false, nil
		}
	case gso != GSOUDPL4:
		return false, nil
	}
	return true, d.writeHdr(partialHdr(frame, hdrLen, uint8(gso), segSize), frame, more)
}

// WritePartial implements Segmenter.
func (d *Device) WritePartial(frame []byte, hdrLen int) (bool, error) {
	if !d.uso {
		return false, nil
	}
	return true, d.writeHdr(partialHdr(frame, hdrLen, vnetGSONone, 0), frame, nil)
}

// partialHdr is the header of a frame of hdrLen bytes of headers whose L4
// checksum is partial. Where the L4 header starts and where its checksum
// lies come from the frame's IP header, which gopasst built (no IPv6
// extension headers).
func partialHdr(frame []byte, hdrLen int, gsoType uint8, segSize int) vnetHdr {
	const eth = 14
	l4, proto := eth+40, frame[eth+6]
	if frame[12] == 0x08 && frame[13] == 0x00 {
		l4, proto = eth+int(frame[eth]&0xf)*4, frame[eth+9]
	}
	off := uint16(6) // UDP
	if proto == unix.IPPROTO_TCP {
		off = 16
	}
	return vnetHdr{flags: vnetNeedsCsum, gsoType: gsoType, hdrLen: uint16(hdrLen), gsoSize: uint16(segSize),
		csumStart: uint16(l4), csumOffset: off}
}

// writeHdr sends h, frame and the non-empty buffers of more as one frame.
func (d *Device) writeHdr(h vnetHdr, frame []byte, more [][]byte) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	h.encode(d.whdr[:])
	d.wiov[0].Base = &d.whdr[0]
	d.wiov[0].SetLen(VnetHdrLen)
	d.wiov[1].Base = &frame[0]
	d.wiov[1].SetLen(len(frame))
	n := 2
	for _, p := range more {
		if len(p) == 0 {
			continue
		}
		d.wiov[n].Base = &p[0]
		d.wiov[n].SetLen(len(p))
		n++
	}
	return d.writev(n)
}
