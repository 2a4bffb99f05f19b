// Package sockaddr converts between netip addresses and the socket
// addresses of golang.org/x/sys/unix, for the protocols' sockets: what
// they bind and connect to, and what getsockname says they got. The hot
// paths decode raw sockaddrs of their batches themselves.
package sockaddr

import (
	"errors"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// From is ap as a socket address of its family.
func From(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// To is sa as an address and port (IPv4-mapped IPv6 addresses unmapped);
// it reports false for a socket address of another family.
func To(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), true
	}
	return netip.AddrPort{}, false
}

// Local is the address and port socket fd is bound to (for a ping
// socket, the port is its echo identifier). It asks getsockname(2)
// itself: unix.Getsockname also asks for the socket's protocol, a second
// system call per connection.
func Local(fd int) (netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return netip.AddrPort{}, e
	}
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(&sa.Port)), nil
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), netPort(&sa.Port)), nil
	}
	return netip.AddrPort{}, errors.New("getsockname: not an IP socket")
}

// netPort reads a port stored in network byte order.
func netPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// Socket opens, with mk (socket(2), or a namespace's factory), a
// non-blocking socket of type typ and protocol proto for addr's family,
// with SO_REUSEADDR, IPV6_V6ONLY for IPv6 (so that both families can
// listen on one port), and bound to device ifname if not empty: what
// listening and reply sockets of every protocol start from.
func Socket(mk func(domain, typ, proto int) (int, error), addr netip.Addr, typ, proto int, ifname string) (int, error) {
	family := unix.AF_INET6
	if addr.Is4() {
		family = unix.AF_INET
	}
	fd, err := mk(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if family == unix.AF_INET6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if ifname != "" {
		if err := unix.BindToDevice(fd, ifname); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}
