package fwd

import (
	"fmt"
	"net/netip"
)

// Proto is the transport protocol of a forwarding rule.
type Proto uint8

// Protocols that have forwarding rules.
const (
	UDP Proto = iota + 1
	TCP
	NumProtos // one more than the last protocol
)

// String names the protocol.
func (p Proto) String() string {
	switch p {
	case UDP:
		return "UDP"
	case TCP:
		return "TCP"
	}
	return fmt.Sprintf("protocol %d", uint8(p))
}

// Forward is one forwarded port, a rule of -t/-u (host side) or -T/-U
// (Splice: the namespace side) expanded to one listening socket: on
// Addr:Port (Addr unspecified for any address of its family), optionally
// bound to device Ifname, whose traffic goes to port ToPort on the other
// side.
type Forward struct {
	Proto  Proto
	Addr   netip.Addr
	Ifname string
	Port   uint16
	ToPort uint16
	// Splice marks a listening socket in the namespace (-U, -T), whose
	// traffic goes to the host's loopback.
	Splice bool
}

// String describes the forward for logs and errors.
func (f Forward) String() string {
	where := ""
	if f.Splice {
		where = " in the namespace"
	}
	if f.Ifname != "" {
		where += "%" + f.Ifname
	}
	return fmt.Sprintf("%s port %s%s -> %d", f.Proto, netip.AddrPortFrom(f.Addr, f.Port), where, f.ToPort)
}

// Forwarder opens and closes the listening sockets of forwards at run
// time: the command line's at start, "auto" as ports come and go, and a
// control socket all call it.
type Forwarder interface {
	AddForward(Forward) error
	RemoveForward(Forward) error
}
