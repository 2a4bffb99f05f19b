// Package pcap captures the frames gopasst exchanges with the guest to a
// file in the classic libpcap format (-p, --pcap), as the reference's
// pcap.c does.
//
// # File format
//
// The file is what the reference writes: the classic libpcap savefile
// (pcap-savefile(5)), version 2.4, magic 0xa1b2c3d4 in host byte order,
// so microsecond timestamps; link type LINKTYPE_ETHERNET; snapshot length
// [SnapLen] (65535, the reference's tap_l2_max_len, USHRT_MAX in every
// mode). Each record holds one whole Ethernet frame as the guest sees it,
// without the 4-byte length prefix of the passt stream framing. A frame
// longer than SnapLen, which the tap endpoints never deliver, would be
// cut to SnapLen with its original length kept in the record header, as
// readers require.
//
// Timestamps are the wall clock (CLOCK_REALTIME, as the reference), so a
// capture lines up with one taken on the host, truncated to the
// microsecond. They never go backwards in file order: should the clock be
// stepped back, records keep the last timestamp until it catches up.
//
// # Flushing
//
// There is no user-space buffering: every call to [Writer.Frame] (and
// every [Writer.Frames] batch, in chunks of at most 256 KiB) is one write
// system call of whole records, made before the call returns. The data is
// then in the kernel's page cache, so tcpdump -r, tshark -r or a
// tail -f | tshark -i - sees every frame at once while gopasst runs, and a
// crash loses nothing that was recorded. The file is not fsync'ed: that
// would only matter if the machine went down. This costs a system call
// per frame (per batch, for batches), as in the reference, which writes
// each record unbuffered too; capturing is a debugging aid, and a timer
// driven flush would make the file lag and tear records at its end.
//
// # Concurrency and errors
//
// A [Writer] is safe for concurrent use. One mutex serialises the
// records, so records of concurrent writers never interleave, and file
// order is timestamp order.
//
// Errors never stop gopasst: a frame that cannot be written is dropped
// from the capture, counted ([Writer.Dropped]), and the first failure is
// logged as a warning. When the capture is a regular file, records are
// written at the offset where the last whole record ended, and a failed
// write is truncated away, so a transient failure (a full disk) leaves a
// valid file with frames missing rather than a torn record. Other files
// (a FIFO read by wireshark, /dev/stdout) are written sequentially; if a
// record is torn there, the stream can no longer be parsed and capturing
// stops.
package pcap

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopasst/gopasst/internal/log"
)

// SnapLen is the snapshot length of the capture: the reference's
// tap_l2_max_len (USHRT_MAX, the largest frame any tap endpoint carries).
const SnapLen = 65535

// LinkTypeEthernet is the link-layer header type of the capture
// (LINKTYPE_ETHERNET).
const LinkTypeEthernet = 1

const (
	magicMicro    = 0xa1b2c3d4 // classic format, microsecond timestamps
	versionMajor  = 2
	versionMinor  = 4
	fileHeaderLen = 24
	recHeaderLen  = 16
	// chunkMax is how many bytes of records a batch accumulates before
	// writing them, so a large batch costs few system calls but bounded
	// memory.
	chunkMax = 256 << 10
	// bufKeep is the largest record buffer kept between calls.
	bufKeep = chunkMax + recHeaderLen + SnapLen
)

// Writer writes frames to a pcap file. It is safe for concurrent use.
type Writer struct {
	path    string
	dropped atomic.Uint64

	mu       sync.Mutex
	f        *os.File // nil once closed
	regular  bool     // f is a regular file: write at off, truncate on error
	off      int64    // end of the last whole record (regular files)
	broken   bool     // a record was torn on a non-regular file
	warned   bool     // the first failure was logged
	lastUsec int64    // timestamp of the last record
	buf      []byte   // records being assembled
}

// Create creates the capture file at path (truncating it if it exists, as
// the reference does, with mode 0600 if it is new) and writes the pcap
// file header. Opening a FIFO blocks until a reader opens it.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pcap: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("pcap: %w", err)
	}
	w := &Writer{path: path, f: f, regular: fi.Mode().IsRegular()}
	var h [fileHeaderLen]byte
	e := binary.NativeEndian
	e.PutUint32(h[0:], magicMicro)
	e.PutUint16(h[4:], versionMajor)
	e.PutUint16(h[6:], versionMinor)
	// h[8:16]: thiszone and sigfigs, zero.
	e.PutUint32(h[16:], SnapLen)
	e.PutUint32(h[20:], LinkTypeEthernet)
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		return nil, fmt.Errorf("pcap: writing header to %s: %w", path, err)
	}
	w.off = fileHeaderLen
	return w, nil
}

// Frame records one Ethernet frame, stamped with the current time. It
// never fails: a frame that cannot be written is counted in
// [Writer.Dropped], and the first failure is logged. After Close it does
// nothing. b is not retained.
func (w *Writer) Frame(b []byte) {
	w.record(1, func(int) []byte { return b })
}

// Frames records a batch of frames, in order, all stamped with the same
// current time, with as few system calls as it can. Errors are handled as
// in [Writer.Frame]. The frames are not retained.
func (w *Writer) Frames(frames [][]byte) {
	w.record(len(frames), func(i int) []byte { return frames[i] })
}

// Dropped returns how many frames could not be written to the capture.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Close closes the capture file. Frames recorded afterwards are ignored.
// Closing again returns nil.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	if d := w.dropped.Load(); d > 0 {
		if w.regular {
			// Drop whatever a failed write may have left past
			// the last whole record.
			_ = w.f.Truncate(w.off)
		}
		log.Warnf("pcap: capture %s lacks %d frame(s) that could not be written", w.path, d)
	}
	err := w.f.Close()
	w.f, w.buf = nil, nil
	if err != nil {
		return fmt.Errorf("pcap: %w", err)
	}
	return nil
}

// record writes n frames, frame(i) being the i-th, as whole records.
func (w *Writer) record(n int, frame func(i int) []byte) {
	if n <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return
	}
	if w.broken {
		w.dropped.Add(uint64(n))
		return
	}
	// Read the clock under the lock, so file order is time order.
	usec := time.Now().UnixMicro()
	if usec < w.lastUsec {
		usec = w.lastUsec
	}
	w.lastUsec = usec
	sec, frac := uint32(usec/1e6), uint32(usec%1e6)

	buf := w.buf[:0]
	pending := 0
	for i := range n {
		b := frame(i)
		capLen := min(len(b), SnapLen)
		e := binary.NativeEndian
		buf = e.AppendUint32(buf, sec)
		buf = e.AppendUint32(buf, frac)
		buf = e.AppendUint32(buf, uint32(capLen))
		buf = e.AppendUint32(buf, uint32(len(b)))
		buf = append(buf, b[:capLen]...)
		pending++
		if len(buf) >= chunkMax && i < n-1 {
			w.write(buf, pending)
			buf, pending = buf[:0], 0
			if w.broken {
				w.dropped.Add(uint64(n - 1 - i))
				break
			}
		}
	}
	if pending > 0 {
		w.write(buf, pending)
	}
	if cap(buf) > bufKeep {
		buf = nil
	}
	w.buf = buf
}

// write writes buf, which holds recs whole records, to the file. Called
// with w.mu held.
func (w *Writer) write(buf []byte, recs int) {
	var (
		n   int
		err error
	)
	if w.regular {
		n, err = w.f.WriteAt(buf, w.off)
	} else {
		n, err = w.f.Write(buf)
	}
	if err == nil {
		w.off += int64(n)
		return
	}
	w.dropped.Add(uint64(recs))
	if w.regular {
		// The next write goes to w.off again; cut off what part of
		// this one got there, so readers never see a torn record.
		_ = w.f.Truncate(w.off)
	} else if n > 0 {
		w.broken = true
	}
	if !w.warned {
		w.warned = true
		log.Warnf("pcap: cannot write to %s, frames will be missing from the capture: %v", w.path, err)
	}
	if w.broken {
		log.Warnf("pcap: capture %s is torn, capturing stopped", w.path)
	}
}
