// Package tap is the guest end of gopasst: the endpoint that carries
// Ethernet frames to and from the guest.
//
// # Theory of operation
//
// In pasta mode the guest is a network namespace and the endpoint a tap
// device created inside it ([Device]); the device's file descriptor, once
// attached, works from any namespace, so gopasst reads and writes it from
// the host side. A read returns exactly one frame and a write sends one.
//
// To let the layers above batch their work, [Device.ReadBatch] reads
// frames until the device is empty or the batch is full, so one wake-up
// yields many frames. The descriptor is non-blocking; a reader with
// nothing to read waits in poll(2) on its own thread, beside an eventfd
// that Close makes readable (package yield tells why not in the Go
// runtime's poller). A Device is also [Pollable]: the engine's event loop
// can wait for its descriptor among the host sockets and take the frames
// with [Device.ReadReady], so that one thread serves both directions.
//
// Offloads. Opened with a virtio-net header ([NewVnetDevice]), the tap
// can carry UDP segmentation offload (USO, Linux 6.2 and later): the
// namespace's kernel may hand over one frame holding many datagrams of a
// flow, all of one size but a shorter last one, with a partial checksum
// ([Segmenter.SegmentSize] gives the size), and gopasst may write such
// frames ([Segmenter.WriteSegmented]), which the namespace's kernel cuts
// apart as late as it can — at the receiving socket, which takes the run
// whole if it asked for UDP_GRO. A run thus crosses the tap in one system
// call instead of one per datagram. Where the kernel refuses the offloads
// the device moves plain frames behind an all-zero header.
//
// Writes come from two goroutines (the tap reader, for ARP and NDP replies,
// and the host socket loop); a tap write is atomic per frame, so plain
// writes need no lock (writes behind a virtio-net header share a scratch
// header under a mutex).
package tap

import "errors"

// ErrClosed is returned by ReadBatch after Close.
var ErrClosed = errors.New("tap endpoint closed")

// Endpoint carries frames to and from the guest.
type Endpoint interface {
	// ReadBatch blocks until at least one frame arrives, then fills
	// bufs with frames, storing their lengths in lens, and returns how
	// many it read.
	ReadBatch(bufs [][]byte, lens []int) (int, error)
	// WriteFrame sends one frame to the guest.
	WriteFrame(frame []byte) error
	// Close releases the endpoint and wakes a blocked ReadBatch.
	Close() error
}

// Pollable is an endpoint whose reads an event loop can drive: it waits
// for PollFd to be readable (epoll, level-triggered) and then takes what
// is there with ReadReady, so that one thread serves both directions.
type Pollable interface {
	// PollFd is the descriptor that is readable when frames wait.
	PollFd() int
	// ReadReady reads the frames that are there, without waiting, as
	// ReadBatch does: 0 and no error when there are none, ErrClosed
	// after Close.
	ReadReady(bufs [][]byte, lens []int) (int, error)
}
