package pcap

import (
	"fmt"

	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/tap"
)

// batchWriter is the optional batch method of a tap endpoint (the UDP
// engine's udp.BatchWriter).
type batchWriter interface {
	WriteFrames(frames [][]byte) (int, error)
}

// Capture wraps ep so that every frame it carries is recorded to w: each
// frame ReadBatch returns (from the guest), and each frame WriteFrame (and
// WriteFrames) delivers (to the guest). A write that fails is not
// recorded, and of a batch only the frames that went out are, so the
// capture holds what the guest could have seen. Frames are recorded after
// the inner call returns; so a frame written to the guest and the guest's
// reply to it, recorded from two goroutines, may in rare cases appear
// swapped, by microseconds.
//
// The wrapper has a WriteFrames method if and only if ep has one, so type
// assertions for batch writing (udp.BatchWriter) see the same capability
// with and without capture. Close closes ep only: w belongs to the caller,
// who closes it once the endpoint is done with. A nil w returns ep itself.
func Capture(ep tap.Endpoint, w *Writer) tap.Endpoint {
	if w == nil {
		return ep
	}
	c := &capture{ep: ep, w: w}
	if bw, ok := ep.(batchWriter); ok {
		return &batchCapture{capture: c, bw: bw}
	}
	return c
}

// capture is a [tap.Endpoint] whose traffic is recorded.
type capture struct {
	ep tap.Endpoint
	w  *Writer
}

// ReadBatch reads from the inner endpoint and records the frames read,
// even when an error comes with them.
func (c *capture) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	n, err := c.ep.ReadBatch(bufs, lens)
	if m := min(n, len(bufs), len(lens)); m > 0 {
		c.w.record(m, func(i int) []byte {
			b := bufs[i]
			return b[:min(max(lens[i], 0), len(b))]
		})
	}
	return n, err
}

// WriteFrame writes frame to the inner endpoint and records it if that
// succeeded.
func (c *capture) WriteFrame(frame []byte) error {
	if err := c.ep.WriteFrame(frame); err != nil {
		return err
	}
	c.w.Frame(frame)
	return nil
}

// Close closes the inner endpoint (not the Writer).
func (c *capture) Close() error { return c.ep.Close() }

// batchCapture is a capture whose inner endpoint can write batches.
type batchCapture struct {
	*capture
	bw batchWriter
}

// WriteFrames writes frames with the inner endpoint and records those
// that went out.
func (c *batchCapture) WriteFrames(frames [][]byte) (int, error) {
	n, err := c.bw.WriteFrames(frames)
	if m := min(n, len(frames)); m > 0 {
		c.w.Frames(frames[:m])
	}
	return n, err
}

// Open wraps ep so that its frames are recorded in a pcap file created at
// path (-p); with an empty path it returns ep unchanged. The returned
// function closes the file, after the endpoint.
func Open(ep tap.Endpoint, path string) (tap.Endpoint, func(), error) {
	if path == "" {
		return ep, func() {}, nil
	}
	w, err := Create(path)
	if err != nil {
		return nil, nil, fmt.Errorf("packet capture: %w", err)
	}
	log.Infof("Saving packet capture to %s", path)
	return Capture(ep, w), func() { _ = w.Close() }, nil
}
