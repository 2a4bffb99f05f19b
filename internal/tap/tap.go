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
// To let the layers above batch their work, [Device.ReadBatch] sleeps in
// poll until frames are there, then reads frames until the device is empty
// or the batch is full, so one wake-up yields many frames. A second
// descriptor in the same poll set (an eventfd) lets Close wake the reader.
//
// Writes come from two goroutines (the tap reader, for ARP and NDP replies,
// and the host socket loop); a tap write is atomic per frame, so they need
// no lock.
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
