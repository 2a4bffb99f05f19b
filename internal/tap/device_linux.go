package tap

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Device is a tap device opened in the namespace, used as an Endpoint.
type Device struct {
	fd int
	// file is fd registered with the Go runtime's poller: ReadBatch
	// parks the goroutine there instead of blocking a thread in poll(2).
	// It is never closed (see Close).
	file   *os.File
	rc     syscall.RawConn
	once   sync.Once
	closed atomic.Bool

	// The batch being read, for fill (the reading goroutine's own).
	rbufs  [][]byte
	rlens  []int
	rn     int
	rerr   error
	fillFn func(uintptr) bool

	// With a virtio-net header (NewVnetDevice): vnet is set, uso when
	// the kernel took the offloads. The reader's headers, iovecs and the
	// segment sizes of its last batch belong to the reading goroutine;
	// writes share whdr and wiov under wmu.
	vnet, uso bool
	rhdr      [][VnetHdrLen]byte
	riov      [2]unix.Iovec
	gso       []uint16
	wmu       sync.Mutex
	whdr      [VnetHdrLen]byte
	wiov      [MaxSegments + 1]unix.Iovec
}

// NewDevice wraps the file descriptor of an attached tap device
// (IFF_TAP|IFF_NO_PI), making it non-blocking. The Device owns fd from
// now on.
func NewDevice(fd int) (*Device, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	d := &Device{fd: fd, file: os.NewFile(uintptr(fd), "tap")}
	if d.file == nil {
		return nil, errors.New("tap: invalid descriptor")
	}
	rc, err := d.file.SyscallConn()
	if err != nil {
		return nil, err
	}
	d.rc = rc
	d.fillFn = d.fill
	return d, nil
}

// ReadBatch implements Endpoint.
func (d *Device) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	d.rbufs, d.rlens, d.rn, d.rerr = bufs, lens, 0, nil
	err := d.rc.Read(d.fillFn)
	n := d.rn
	d.rbufs, d.rlens = nil, nil
	switch {
	case n > 0:
		return n, nil
	case d.closed.Load():
		return 0, ErrClosed
	case err != nil:
		return 0, err
	}
	return 0, d.rerr
}

// fill reads frames until the device is empty or the batch full; false
// (nothing read yet) makes the runtime wait until the device is readable.
func (d *Device) fill(uintptr) bool {
	for d.rn < len(d.rbufs) {
		r, err := d.read(d.rn, d.rbufs[d.rn])
		switch {
		case err == nil:
			d.rlens[d.rn] = r
			d.rn++
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			return d.rn > 0 || d.closed.Load()
		default:
			d.rerr = err
			return true
		}
	}
	return true
}

// read reads frame n of a batch into buf.
func (d *Device) read(n int, buf []byte) (int, error) {
	if !d.vnet {
		return unix.Read(d.fd, buf)
	}
	for len(d.rhdr) <= n {
		d.rhdr = append(d.rhdr, [VnetHdrLen]byte{})
		d.gso = append(d.gso, 0)
	}
	r, err := d.readVnet(&d.rhdr[n], buf)
	if err != nil {
		return 0, err
	}
	var h vnetHdr
	h.decode(d.rhdr[n][:])
	d.gso[n] = 0
	if h.gsoType&0x7f == vnetGSOUDPL4 {
		d.gso[n] = h.gsoSize
	}
	return r, nil
}

// WriteFrame implements Endpoint.
func (d *Device) WriteFrame(frame []byte) error {
	if d.vnet {
		return d.writeVnet(frame)
	}
	for {
		_, err := unix.Write(d.fd, frame)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err
	}
}

// Close implements Endpoint: it wakes a blocked ReadBatch, which returns
// ErrClosed. The descriptor stays open until the process exits, so a
// reader or writer that raced with Close never touches a reused
// descriptor.
func (d *Device) Close() error {
	d.once.Do(func() {
		d.closed.Store(true)
		_ = d.file.SetReadDeadline(time.Unix(1, 0))
	})
	return nil
}
