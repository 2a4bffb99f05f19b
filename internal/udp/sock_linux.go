package udp

import (
	"errors"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/sockaddr"
)

// putSockaddr writes ap into sa as a sockaddr_in or sockaddr_in6 and returns
// its length.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port[0], port[1] = byte(ap.Port()>>8), byte(ap.Port())
	if ap.Addr().Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		sa4.Addr = ap.Addr().As4()
		sa4.Zero = [8]uint8{}
		return unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	sa.Flowinfo = 0
	sa.Addr = ap.Addr().As16()
	sa.Scope_id = 0
	return unix.SizeofSockaddrInet6
}

// getSockaddr reads the address a recvmmsg call stored in sa; IPv4-mapped
// IPv6 addresses are unmapped.
func getSockaddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port := uint16(p[0])<<8 | uint16(p[1])
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
}

func recvmmsg(fd int, msgs []unix.Mmsghdr) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
		uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func sendmmsg(fd int, msgs []unix.Mmsghdr) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
		uintptr(len(msgs)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// sockBufSize is what we ask for as send and receive buffers: room for a
// few dozen of the largest datagrams.
const sockBufSize = 4 << 20

// SocketFunc is socket(2): unix.Socket for the host, a namespace's
// factory for sockets that must live in the namespace.
type SocketFunc = func(domain, typ, proto int) (int, error)

// newSocket opens, with mk, a non-blocking UDP socket for addr's family,
// with SO_REUSEADDR, large buffers and, for IPv6, IPV6_V6ONLY.
func newSocket(mk SocketFunc, addr netip.Addr, ifname string) (int, error) {
	fd, err := sockaddr.Socket(mk, addr, unix.SOCK_DGRAM, unix.IPPROTO_UDP, ifname)
	if err != nil {
		return -1, err
	}
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], sockBufSize) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], sockBufSize)
		}
	}
	return fd, nil
}

// listenSocket opens a socket bound to addr:port.
func listenSocket(mk SocketFunc, addr netip.Addr, port uint16, ifname string) (int, error) {
	fd, err := newSocket(mk, addr, ifname)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, sockaddr.From(netip.AddrPortFrom(addr, port))); err != nil {
		unix.Close(fd)
		return -1, sockaddr.BindError(err, port)
	}
	return fd, nil
}

// replySocket opens a socket bound to local (its port kept if free, an
// ephemeral one otherwise), and to device ifname if not empty, and
// connected to remote. It returns the local address and port it got.
func replySocket(mk SocketFunc, local, remote netip.AddrPort, ifname string, hold func(fd, n int)) (int, netip.AddrPort, error) {
	fd, err := newSocket(mk, remote.Addr(), ifname)
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	hold(fd, 1)
	err = unix.Bind(fd, sockaddr.From(local))
	if err != nil && local.Port() != 0 && (errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EACCES)) {
		err = unix.Bind(fd, sockaddr.From(netip.AddrPortFrom(local.Addr(), 0)))
	}
	if err == nil {
		err = unix.Connect(fd, sockaddr.From(remote))
	}
	if err != nil {
		hold(fd, -1)
		unix.Close(fd)
		return -1, netip.AddrPort{}, err
	}
	if got, err := sockaddr.Local(fd); err == nil {
		local = got
	}
	// Anything that arrived between bind and connect came from another
	// peer: it is not part of this flow.
	var b [1]byte
	for range 64 {
		if _, _, err := unix.Recvfrom(fd, b[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC); err != nil {
			break
		}
	}
	return fd, local, nil
}
