// Package sockaddr converts between netip addresses and the socket
// addresses of golang.org/x/sys/unix, for the protocols' sockets: what
// they bind and connect to, and what getsockname says they got. The hot
// paths decode raw sockaddrs of their batches themselves.
package sockaddr

import (
	"errors"
	"net/netip"

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
// socket, the port is its echo identifier).
func Local(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap, ok := To(sa)
	if !ok {
		return netip.AddrPort{}, errors.New("getsockname: not an IP socket")
	}
	return ap, nil
}
