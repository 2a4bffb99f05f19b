package tap

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"
)

// Device is a tap device opened in the namespace, used as an Endpoint.
type Device struct {
	fd   int
	wake int
	once sync.Once

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

// NewDevice wraps the non-blocking file descriptor of an attached tap
// device (IFF_TAP|IFF_NO_PI). The Device owns fd from now on.
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

// ReadBatch implements Endpoint.
func (d *Device) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	pfd := []unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN}, {Fd: int32(d.wake), Events: unix.POLLIN}}
	for {
		n := 0
		for n < len(bufs) {
			r, err := d.read(n, bufs[n])
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if errors.Is(err, unix.EAGAIN) {
					break
				}
				return n, err
			}
			lens[n] = r
			n++
		}
		if n > 0 {
			return n, nil
		}
		if _, err := unix.Poll(pfd, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, err
		}
		if pfd[1].Revents != 0 {
			return 0, ErrClosed
		}
		if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 && pfd[0].Revents&unix.POLLIN == 0 {
			return 0, errors.New("tap device hung up")
		}
	}
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

// Close implements Endpoint. The descriptors stay open until the process
// exits, so a reader or writer that raced with Close never touches a reused
// descriptor.
func (d *Device) Close() error {
	d.once.Do(func() {
		var one = [8]byte{1}
		_, _ = unix.Write(d.wake, one[:])
	})
	return nil
}
