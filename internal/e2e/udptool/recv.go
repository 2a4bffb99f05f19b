package main

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// recvLine is printed by recv for every datagram.
type recvLine struct {
	From string `json:"from"`
	To   string `json:"to,omitempty"`
	Len  int    `json:"len"`
	OK   bool   `json:"ok"`
	Flow int64  `json:"flow"`
	Seq  int64  `json:"seq"`
}

// cmdRecv implements "udptool recv".
func cmdRecv(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("recv")
	listen := fs.String("l", "", "listen address ADDR:PORT")
	count := fs.Int("count", 1, "number of datagrams to receive")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on the whole run")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	laddr, err := parseAddrPort("l", *listen)
	if err != nil {
		return err
	}
	if *count < 1 {
		return usageError{"-count must be at least 1"}
	}
	if err := durationFlag("timeout", *timeout); err != nil {
		return err
	}
	deadline := time.Now().Add(*timeout)

	conn, err := net.ListenUDP(network(laddr.Addr()), net.UDPAddrFromAddrPort(laddr))
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := tuneSocket(conn, laddr.Addr().Is4(), true); err != nil {
		return err
	}
	if err := conn.SetReadDeadline(deadline); err != nil {
		return err
	}
	local := addrPortOf(conn.LocalAddr())
	printReady(stdout, conn)

	buf := make([]byte, readBufLen)
	oob := make([]byte, oobLen)
	for i := 0; i < *count; i++ {
		n, oobn, flags, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if isTimeout(err) {
				return fmt.Errorf("recv: timeout after %v: received %d of %d datagrams", *timeout, i, *count)
			}
			return err
		}
		l := recvLine{
			From: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String(),
			Len:  n,
		}
		if dst, _, ok := pktDst(oob[:oobn]); ok {
			l.To = netip.AddrPortFrom(dst.Unmap(), local.Port()).String()
		}
		l.Flow, l.Seq, l.OK = verifyPayload(buf[:n])
		if flags&syscall.MSG_TRUNC != 0 || n >= readBufLen {
			l.OK = false
		}
		if err := printJSON(stdout, l); err != nil {
			return err
		}
	}
	return nil
}
