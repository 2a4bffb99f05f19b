package e2e_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// ttlEnv, set to ADDR:PORT, turns the test binary into a traceroute-like
// probe: one datagram with TTL (hop limit) 1, then the error queue must
// report an ICMP time exceeded; it prints who sent it.
const ttlEnv = "GOPASST_E2E_TTL1"

func ttlMain() int {
	to := netip.MustParseAddrPort(os.Getenv(ttlEnv))
	family, level, ttlOpt, errOpt := unix.AF_INET, unix.IPPROTO_IP, unix.IP_TTL, unix.IP_RECVERR
	var sa unix.Sockaddr
	wantType := uint8(11)
	if to.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	} else {
		family, level, ttlOpt, errOpt = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, unix.IPV6_RECVERR
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
		wantType = 3
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM, 0)
	if err == nil {
		err = unix.SetsockoptInt(fd, level, ttlOpt, 1)
	}
	if err == nil {
		err = unix.SetsockoptInt(fd, level, errOpt, 1)
	}
	if err == nil {
		err = unix.Sendto(fd, []byte("probe"), 0, sa)
	}
	if err != nil {
		fmt.Println("probe:", err)
		return 1
	}
	pfd := []unix.PollFd{{Fd: int32(fd)}}
	if n, _ := unix.Poll(pfd, 3000); n == 0 {
		fmt.Println("no error queued")
		return 1
	}
	oob := make([]byte, 256)
	_, oobn, _, _, err := unix.Recvmsg(fd, make([]byte, 64), oob, unix.MSG_ERRQUEUE)
	if err != nil {
		fmt.Println("recvmsg:", err)
		return 1
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for _, m := range msgs {
		if len(m.Data) < 24 {
			continue
		}
		typ := m.Data[5]
		var from netip.Addr
		switch binary.NativeEndian.Uint16(m.Data[16:18]) {
		case unix.AF_INET:
			from = netip.AddrFrom4([4]byte(m.Data[20:24]))
		case unix.AF_INET6:
			from = netip.AddrFrom16([16]byte(m.Data[24:40]))
		}
		fmt.Printf("icmp type %d from %s\n", typ, from)
		if typ == wantType {
			return 0
		}
	}
	return 1
}

// TestTimeExceeded sends traceroute-like probes with TTL 1 from the
// namespace to a remote host: the gateway answers time exceeded, as the
// first router on a real path does, IPv4 and IPv6.
func TestTimeExceeded(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ to, from string }{
		{"198.51.100.1:33434", "192.0.2.1"},
		{"[2001:db8:1::1]:33434", "2001:db8::1"},
	} {
		p := pasta(t, sb, nil, "env", ttlEnv+"="+c.to, self)
		code, err := p.Wait(20 * time.Second)
		if code != 0 || err != nil {
			t.Fatalf("%s: %q (exit %d)\n%s", c.to, p.Stdout(), code, p.Stderr())
		}
		if want := fmt.Sprintf("from %s\n", c.from); len(p.Stdout()) < len(want) || p.Stdout()[len(p.Stdout())-len(want):] != want {
			t.Fatalf("%s: %q, want the error from the gateway %s", c.to, p.Stdout(), c.from)
		}
	}
}
