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
			r, err := unix.Read(d.fd, bufs[n])
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

// WriteFrame implements Endpoint.
func (d *Device) WriteFrame(frame []byte) error {
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
