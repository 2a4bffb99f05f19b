package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// maxPeers bounds the list of distinct peers reported by echo.
const maxPeers = 256

// echoSummary is printed by echo when it exits normally.
type echoSummary struct {
	Echoed int      `json:"echoed"`
	Peers  []string `json:"peers"`
}

// cmdEcho implements "udptool echo".
func cmdEcho(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("echo")
	listen := fs.String("l", "", "listen address ADDR:PORT")
	count := fs.Int("count", 0, "exit after N datagrams (0: unlimited)")
	timeout := fs.Duration("timeout", 30*time.Second, "idle timeout")
	verbose := fs.Bool("v", false, "log every datagram on stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	laddr, err := parseAddrPort("l", *listen)
	if err != nil {
		return err
	}
	if *count < 0 {
		return usageError{"-count must not be negative"}
	}
	if err := durationFlag("timeout", *timeout); err != nil {
		return err
	}

	v4 := laddr.Addr().Is4()
	conn, err := net.ListenUDP(network(laddr.Addr()), net.UDPAddrFromAddrPort(laddr))
	if err != nil {
		return err
	}
	defer conn.Close()
	// Reply from the destination address of each request, which matters
	// when bound to a wildcard address on a host with several addresses.
	pktinfo := laddr.Addr().IsUnspecified()
	if err := tuneSocket(conn, v4, pktinfo); err != nil {
		return err
	}

	var stopped atomic.Bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; ok {
			stopped.Store(true)
			conn.Close()
		}
	}()

	printReady(stdout, conn)

	sum := echoSummary{Peers: []string{}}
	seen := map[netip.AddrPort]bool{}
	buf := make([]byte, readBufLen)
	oob := make([]byte, oobLen)
	var loopErr error
	for *count == 0 || sum.Echoed < *count {
		if err := conn.SetReadDeadline(time.Now().Add(*timeout)); err != nil {
			if stopped.Load() {
				break
			}
			return err
		}
		n, oobn, flags, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if stopped.Load() {
				break
			}
			if isTimeout(err) {
				if *count > 0 {
					loopErr = fmt.Errorf("echo: idle for %v after %d of %d datagrams", *timeout, sum.Echoed, *count)
				}
				break
			}
			if errors.Is(err, net.ErrClosed) {
				break
			}
			// Errors such as ECONNREFUSED from an earlier reply are
			// transient for an unconnected socket.
			if *verbose {
				fmt.Fprintf(stderr, "echo: read: %v\n", err)
			}
			continue
		}
		if flags&syscall.MSG_TRUNC != 0 || n >= readBufLen {
			fmt.Fprintf(stderr, "echo: truncated datagram from %s\n", from)
			continue
		}
		var reply []byte
		if pktinfo {
			if dst, idx, ok := pktDst(oob[:oobn]); ok {
				reply = replyOOB(dst, idx)
			}
		}
		if _, _, err := conn.WriteMsgUDPAddrPort(buf[:n], reply, from); err != nil {
			fmt.Fprintf(stderr, "echo: write to %s: %v\n", from, err)
			continue
		}
		sum.Echoed++
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if !seen[from] && len(sum.Peers) < maxPeers {
			seen[from] = true
			sum.Peers = append(sum.Peers, from.String())
		}
		if *verbose {
			fmt.Fprintf(stderr, "echo: %d bytes from %s\n", n, from)
		}
	}
	if err := printJSON(stdout, sum); err != nil {
		return err
	}
	return loopErr
}
