package sockaddr

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLocal binds sockets of both families to a loopback address and an
// ephemeral port, and checks that Local reads back what getsockname via
// golang.org/x/sys says.
func TestLocal(t *testing.T) {
	for _, a := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		for _, typ := range []int{unix.SOCK_DGRAM, unix.SOCK_STREAM} {
			fd, err := Socket(unix.Socket, a, typ, 0, "")
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.Bind(fd, From(netip.AddrPortFrom(a, 0))); err != nil {
				t.Fatal(err)
			}
			got, err := Local(fd)
			if err != nil {
				t.Fatal(err)
			}
			sa, err := unix.Getsockname(fd)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := To(sa)
			if got != want || got.Addr() != a || got.Port() == 0 {
				t.Errorf("%v type %d: Local %v, getsockname %v", a, typ, got, want)
			}
		}
	}
	if _, err := Local(-1); err == nil {
		t.Error("Local(-1) succeeded")
	}
}
