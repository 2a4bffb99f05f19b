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

	"golang.org/x/sys/unix"
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
	connectFirst := fs.Bool("connect-first", false, "connect() to the first sender and echo through the connected socket")
	noPktinfo := fs.Bool("no-pktinfo", false, "on a wildcard address, let the kernel pick the source of replies")
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
	// A connected socket (-connect-first) replies from the source the
	// kernel picked at connect(), as does a plain wildcard server
	// (-no-pktinfo) for each reply.
	pktinfo := laddr.Addr().IsUnspecified() && !*noPktinfo && !*connectFirst
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
	// peer is the address the socket is connected to (-connect-first),
	// once the first datagram has arrived.
	var peer netip.AddrPort
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
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if *connectFirst {
			// As socat UDP-LISTEN and TFTP servers do: connect to the
			// first sender, then talk to it with send/recv only.
			if !peer.IsValid() {
				if err := connectTo(conn, from); err != nil {
					return fmt.Errorf("echo: connect to %s: %w", from, err)
				}
				peer = from
				if *verbose {
					fmt.Fprintf(stderr, "echo: connected to %s, local %s\n", peer, localAddr(conn))
				}
			}
			if from != peer {
				// Queued before connect(): not for this conversation.
				fmt.Fprintf(stderr, "echo: dropped datagram from %s, connected to %s\n", from, peer)
				continue
			}
			if _, err := conn.Write(buf[:n]); err != nil {
				fmt.Fprintf(stderr, "echo: write to %s: %v\n", peer, err)
				continue
			}
		} else {
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
		}
		sum.Echoed++
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

// connectTo connects the socket of c to peer, as connect(2) on a UDP socket
// does: from then on it receives only peer's datagrams, and sends go to
// peer from the local address the kernel picked (for a wildcard-bound
// socket, the one it would use towards peer).
func connectTo(c *net.UDPConn, peer netip.AddrPort) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var sa unix.Sockaddr
	if a := peer.Addr(); a.Is4() && addrPortOf(c.LocalAddr()).Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(peer.Port()), Addr: a.As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(peer.Port()), Addr: a.As16()}
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sa) }); err != nil {
		return err
	}
	return cerr
}

// localAddr returns the local address of c's socket as the kernel has it
// now (net.UDPConn caches the one it had when bound).
func localAddr(c *net.UDPConn) netip.AddrPort {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}
	}
	var sa unix.Sockaddr
	_ = rc.Control(func(fd uintptr) { sa, _ = unix.Getsockname(int(fd)) })
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
