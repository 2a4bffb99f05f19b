package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const usageText = `usage: udptool <command> [flags]

commands:
  echo -l ADDR:PORT [-count N] [-timeout D] [-connect-first] [-no-pktinfo]
       [-v]
        Bind ADDR:PORT, print "listen ADDR:PORT" and "ready", echo every
        datagram back to its sender (from the address it was sent to).
        -count N    exit 0 after N datagrams (0: unlimited)
        -timeout D  idle timeout (default 30s); exit 0 when idle if -count
                    is 0, exit 1 if fewer than N datagrams were echoed
        -connect-first
                    on the first datagram, connect() the socket to its
                    sender and echo it and every later one with send/recv
                    through the connected socket, as socat UDP-LISTEN and
                    TFTP servers do: replies leave from the source the
                    kernel picked at connect(); datagrams of other senders
                    queued before connect() are dropped
        -no-pktinfo on a wildcard ADDR, reply with a plain sendto() and let
                    the kernel pick the source address
        -v          log every datagram on stderr
        On exit (count reached, idle, SIGTERM/SIGINT) print
        {"echoed":N,"peers":["ADDR:PORT",...]}.

  send -to ADDR:PORT [-from ADDR:PORT] [-size N] [-count K] [-echo]
       [-connect] [-flows F] [-wait D] [-interval D] [-timeout D]
        Send K datagrams of N bytes (0..65507 IPv4, 0..65527 IPv6) per flow
        with deterministic content.
        -echo       wait for each echo, verify it byte-exact and that it
                    came from the -to address and port
        -connect    use connect()+send/recv
        -flows F    F concurrent flows, each on its own socket; with -from
                    port P (P != 0) flow i binds port P+i
        -wait D     how long to wait for one echo (default 2s)
        -interval D pause between datagrams of a flow (default 0)
        -timeout D  bound on the whole run (default 5s)
        Prints {"sent":S,"received":R,"bad":B,"local":"ADDR:PORT",
        "peer":"ADDR:PORT"} (totals over all flows; local is the first
        flow's socket, peer the source of the first echo). Exits 1 if
        S != K*F, B > 0, or with -echo R != S.

  recv -l ADDR:PORT [-count K] [-timeout D]
        Bind ADDR:PORT, print "listen ADDR:PORT" and "ready", receive K
        datagrams (default 1) and print for each
        {"from":"ADDR:PORT","to":"ADDR:PORT","len":N,"ok":BOOL,"flow":F,"seq":S}
        (ok: payload matches the send pattern; flow/seq -1 if unknown).
        Exits 1 if K datagrams do not arrive within -timeout (default 5s).
`

// exitUsage is the exit status for command line errors.
const exitUsage = 2

// usageError marks errors caused by a bad command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "echo":
		err = cmdEcho(args[1:], stdout, stderr)
	case "send":
		err = cmdSend(args[1:], stdout, stderr)
	case "recv":
		err = cmdRecv(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return 0
	default:
		err = usageError{fmt.Sprintf("unknown command %q", args[0])}
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usageText)
		return 0
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Fprintf(stderr, "udptool: %s\n", msg)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return 1
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("udptool "+name, flag.ContinueOnError)
	// Errors are reported by run as one line; -h prints usageText.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args into fs and rejects positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() != 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// parseAddrPort parses a numeric ADDR:PORT; name is used in errors.
func parseAddrPort(name, s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, usageError{fmt.Sprintf("-%s is required", name)}
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, usageError{fmt.Sprintf("-%s: %v", name, err)}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// network returns "udp4" or "udp6" for addr. "udp6" sockets bound to the
// wildcard address are IPv6-only.
func network(addr netip.Addr) string {
	if addr.Is4() {
		return "udp4"
	}
	return "udp6"
}

// maxPayload is the largest UDP payload for the address family of addr.
func maxPayload(addr netip.Addr) int {
	if addr.Is4() {
		return 65535 - 20 - 8
	}
	return 65535 - 8
}

// sockBuf is the requested socket buffer size.
const sockBuf = 4 << 20

// readBufLen is large enough for any UDP datagram plus one byte, so that
// truncation is noticed even without MSG_TRUNC.
const readBufLen = 65536 + 1

// tuneSocket enlarges the socket buffers of c and, if pktinfo is set,
// enables reception of the destination address of each datagram.
func tuneSocket(c *net.UDPConn, v4, pktinfo bool) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		// SO_*BUFFORCE ignores rmem_max/wmem_max but needs CAP_NET_ADMIN.
		if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf) != nil {
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, sockBuf)
		}
		if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf) != nil {
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, sockBuf)
		}
		if pktinfo {
			if v4 {
				serr = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			} else {
				serr = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			}
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("enable pktinfo: %w", serr)
	}
	return nil
}

// oobLen is the size of the control message buffer for pktinfo.
const oobLen = 128

// pktDst extracts the destination address and interface index from the
// pktinfo control message in oob. ok is false if there is none.
func pktDst(oob []byte) (dst netip.Addr, ifindex int, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
			idx := int(int32(binary.NativeEndian.Uint32(m.Data[0:4])))
			return netip.AddrFrom4([4]byte(m.Data[8:12])), idx, true
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= 20:
			// struct in6_pktinfo { in6_addr addr; unsigned int ifindex; }
			idx := int(binary.NativeEndian.Uint32(m.Data[16:20]))
			return netip.AddrFrom16([16]byte(m.Data[0:16])), idx, true
		}
	}
	return netip.Addr{}, 0, false
}

// replyOOB builds a control message that makes a reply leave from src.
func replyOOB(src netip.Addr, ifindex int) []byte {
	if !src.IsValid() || src.IsMulticast() || src.IsUnspecified() {
		return nil
	}
	if src.Is4() {
		if src == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return nil
		}
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src.As4()})
	}
	info := &unix.Inet6Pktinfo{Addr: src.As16()}
	if src.IsLinkLocalUnicast() {
		info.Ifindex = uint32(ifindex)
	}
	return unix.PktInfo6(info)
}

// isTimeout reports whether err is a deadline expiry.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isRefused reports whether err is an ICMP port unreachable reported on a
// connected socket.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

// addrPortOf converts a net.Addr of a UDP socket to netip.AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	ua, ok := a.(*net.UDPAddr)
	if !ok || ua == nil {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// printReady announces the bound address and readiness on stdout.
func printReady(stdout io.Writer, c *net.UDPConn) {
	fmt.Fprintf(stdout, "listen %s\n", addrPortOf(c.LocalAddr()))
	fmt.Fprintln(stdout, "ready")
	if f, ok := stdout.(interface{ Sync() error }); ok {
		_ = f.Sync()
	}
}

// printJSON writes v as one JSON line without HTML escaping.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// durationFlag validates that a duration flag is positive.
func durationFlag(name string, d time.Duration) error {
	if d <= 0 {
		return usageError{fmt.Sprintf("-%s must be positive", name)}
	}
	return nil
}
