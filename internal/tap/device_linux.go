package tap

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/yield"
)

// Device is a tap device opened in the namespace, used as an Endpoint.
type Device struct {
	fd int
	// wake is an eventfd that Close makes readable, to end a wait in
	// ReadBatch.
	wake   int
	once   sync.Once
	closed atomic.Bool

	// The reading goroutine's own: mustPoll says the last read found the
	// device empty, so the next batch starts with a wait; pace gives the
	// scheduler its turns (see package yield).
	mustPoll bool
	pace     yield.Pacer

	// With a virtio-net header (NewVnetDevice): vnet is set, uso when
	// the kernel took the offloads, tso when TCP's among them. The reader's headers, iovecs and the
	// segment sizes of its last batch belong to the reading goroutine;
	// writes share whdr and wiov under wmu.
	vnet, uso, tso bool
	rhdr           [][VnetHdrLen]byte
	riov           [2]unix.Iovec
	gso            []uint16
	partial        []bool // per frame of the last batch: the L4 checksum is partial
	wmu            sync.Mutex
	whdr           [VnetHdrLen]byte
	wiov           [MaxSegments + 1]unix.Iovec
}

// NewDevice wraps the file descriptor of an attached tap device
// (IFF_TAP|IFF_NO_PI), making it non-blocking. The Device owns fd from
// now on.
func NewDevice(fd int) (*Device, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	return &Device{fd: fd, wake: wake}, nil
}

// ReadBatch implements Endpoint. It waits in poll(2) on its own thread
// (see package yield for why not in the runtime's poller).
func (d *Device) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	if len(lens) < len(bufs) {
		bufs = bufs[:len(lens)]
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	for {
		if d.closed.Load() {
			return 0, ErrClosed
		}
		if !d.mustPoll {
			n, err := d.fill(bufs, lens)
			if n > 0 {
				d.pace.Tick(yield.Now())
				return n, nil
			}
			if err != nil {
				return 0, err
			}
			continue
		}
		pfd := [2]unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN}, {Fd: int32(d.wake), Events: unix.POLLIN}}
		if _, err := unix.Ppoll(pfd[:], nil, nil); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, fmt.Errorf("poll: %w", err)
		}
		if pfd[1].Revents != 0 {
			return 0, ErrClosed
		}
		if pfd[0].Revents != 0 {
			d.mustPoll = false // frames, or an error the next read reports
		}
	}
}

// PollFd implements Pollable.
func (d *Device) PollFd() int { return d.fd }

// ReadReady implements Pollable.
func (d *Device) ReadReady(bufs [][]byte, lens []int) (int, error) {
	if d.closed.Load() {
		return 0, ErrClosed
	}
	if len(lens) < len(bufs) {
		bufs = bufs[:len(lens)]
	}
	n, err := d.fill(bufs, lens)
	if n > 0 {
		err = nil
	}
	return n, err
}

// fill reads frames into bufs until the device is empty (setting
// mustPoll) or the batch is full. An error after some frames is left for
// the next read to report.
func (d *Device) fill(bufs [][]byte, lens []int) (int, error) {
	n := 0
	for n < len(bufs) {
		r, err := d.read(n, bufs[n])
		switch {
		case err == nil:
			lens[n] = r
			n++
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			d.mustPoll = true
			return n, nil
		default:
			return n, err
		}
	}
	return n, nil
}

// read reads frame n of a batch into buf.
func (d *Device) read(n int, buf []byte) (int, error) {
	if !d.vnet {
		return unix.Read(d.fd, buf)
	}
	for len(d.rhdr) <= n {
		d.rhdr = append(d.rhdr, [VnetHdrLen]byte{})
		d.gso = append(d.gso, 0)
		d.partial = append(d.partial, false)
	}
	r, err := d.readVnet(&d.rhdr[n], buf)
	if err != nil {
		return 0, err
	}
	var h vnetHdr
	h.decode(d.rhdr[n][:])
	d.gso[n] = 0
	d.partial[n] = h.flags&vnetNeedsCsum != 0
	if h.gsoType&0x7f == uint8(GSOUDPL4) {
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
// ErrClosed. The descriptors stay open until the process exits, so a
// reader or writer that raced with Close never touches a reused
// descriptor.
func (d *Device) Close() error {
	d.once.Do(func() {
		d.closed.Store(true)
		one := [8]byte{1}
		_, _ = unix.Write(d.wake, one[:])
	})
	return nil
}
