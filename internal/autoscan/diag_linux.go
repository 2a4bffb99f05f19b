package autoscan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// Diag reads the same sockets as [Tables] (bound, unconnected UDP sockets,
// listening TCP sockets, or both) through a sock_diag netlink socket, as
// ss(8) does. The kernel filters the sockets by state before answering, so
// a read costs in proportion to the sockets that count, not to all the
// sockets of the namespace: with 10,000 connected UDP sockets, rereading
// the procfs tables every second took most of gopasst's CPU, the dump
// almost none.
//
// The netlink socket answers for the network namespace it was created
// in, from any thread. Its methods are safe for concurrent use.
type Diag struct {
	mu      sync.Mutex
	fd      int
	seq     uint32
	buf     []byte
	queries []diagQuery
}

// diagQuery is one dump a [Diag.Read] asks for: the sockets of a family
// and protocol in a state.
type diagQuery struct {
	family, proto, state uint8
}

// Sizes of the kernel's structures (linux/inet_diag.h).
const (
	diagReqLen = 56 // struct inet_diag_req_v2
	diagMsgLen = 72 // struct inet_diag_msg
)

// OpenDiag opens a sock_diag socket in the calling thread's network
// namespace for the sockets [OpenTables] reads with the same udp and tcp:
// the bound UDP sockets if udp is set, the listening TCP sockets if tcp
// is set. It checks that the kernel answers those dumps (it may lack
// udp_diag, or tcp_diag), so that a caller can fall back to [OpenTables].
func OpenDiag(udp, tcp bool) (*Diag, error) {
	var queries []diagQuery
	if udp {
		queries = append(queries,
			diagQuery{unix.AF_INET, unix.IPPROTO_UDP, StateUDPBound},
			diagQuery{unix.AF_INET6, unix.IPPROTO_UDP, StateUDPBound})
	}
	if tcp {
		queries = append(queries,
			diagQuery{unix.AF_INET, unix.IPPROTO_TCP, StateTCPListen},
			diagQuery{unix.AF_INET6, unix.IPPROTO_TCP, StateTCPListen})
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	d := &Diag{fd: fd, buf: make([]byte, 1<<16), queries: queries}
	if _, err := d.Read(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Read returns the sockets [OpenDiag] was asked for, IPv4 and IPv6, as
// [Tables.Read] does.
func (d *Diag) Read() ([]Socket, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil, errors.New("sock_diag: closed")
	}
	var out []Socket
	for _, q := range d.queries {
		var err error
		if out, err = d.dump(out, q.family, q.proto, q.state); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// dump asks for the sockets of one family and protocol in state and
// appends them to out.
func (d *Diag) dump(out []Socket, family, proto, state uint8) ([]Socket, error) {
	d.seq++
	var req [unix.NLMSG_HDRLEN + diagReqLen]byte
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], d.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = family, proto
	binary.NativeEndian.PutUint32(r[4:], 1<<state)
	if err := unix.Sendto(d.fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		b := d.buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			typ := binary.NativeEndian.Uint16(b[4:])
			seq := binary.NativeEndian.Uint32(b[8:])
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return nil, errors.New("sock_diag: truncated message")
			}
			msg := b[unix.NLMSG_HDRLEN:l]
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
			if seq != d.seq {
				continue // the rest of an earlier, abandoned dump
			}
			switch typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(msg) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(msg)); e != 0 {
						return nil, fmt.Errorf("sock_diag (family %d, protocol %d): %w", family, proto, unix.Errno(-e))
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if s, ok := parseDiagMsg(msg); ok {
					out = append(out, s)
				}
			}
		}
	}
}

// parseDiagMsg reads the local address, port and inode of a struct
// inet_diag_msg; ok is false for a socket without a port.
func parseDiagMsg(m []byte) (Socket, bool) {
	if len(m) < diagMsgLen {
		return Socket{}, false
	}
	id := m[4:52] // struct inet_diag_sockid
	port := binary.BigEndian.Uint16(id[0:2])
	var addr netip.Addr
	switch m[0] {
	case unix.AF_INET:
		addr = netip.AddrFrom4([4]byte(id[4:8]))
	case unix.AF_INET6:
		addr = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
	default:
		return Socket{}, false
	}
	if port == 0 {
		return Socket{}, false
	}
	return Socket{Addr: addr, Port: port, Inode: uint64(binary.NativeEndian.Uint32(m[68:72]))}, true
}

// Close closes the netlink socket.
func (d *Diag) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}
