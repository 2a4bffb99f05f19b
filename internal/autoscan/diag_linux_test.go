package autoscan

import (
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/netns"
)

// TestDiagMatchesTables opens sockets of every kind in a new network
// namespace and checks that the sock_diag dump, read from outside the
// namespace, finds exactly the sockets that count (bound unconnected UDP,
// listening TCP) and the same ones, inodes included, as the procfs tables.
func TestDiagMatchesTables(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	n, err := netns.New()
	if err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	defer n.Close()
	var d *Diag
	var tb *Tables
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	sock := func(family, typ int, sa unix.Sockaddr, then func(fd int) error) error {
		fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
		if family == unix.AF_INET6 {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				return err
			}
		}
		if err := unix.Bind(fd, sa); err != nil {
			return err
		}
		if then != nil {
			return then(fd)
		}
		return nil
	}
	listen := func(fd int) error { return unix.Listen(fd, 1) }
	connect := func(fd int) error { return unix.Connect(fd, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}) }
	mapped := [16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}
	err = n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, e := range []error{
			sock(unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Port: 5001}, nil),
			sock(unix.AF_INET6, unix.SOCK_DGRAM, &unix.SockaddrInet6{Port: 5002}, nil),
			sock(unix.AF_INET6, unix.SOCK_DGRAM, &unix.SockaddrInet6{Port: 5003, Addr: mapped}, nil),
			sock(unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Port: 5004}, connect),
			sock(unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: 5005}, listen),
			sock(unix.AF_INET6, unix.SOCK_STREAM, &unix.SockaddrInet6{Port: 5006}, listen),
			sock(unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: 5007}, nil),
		} {
			if e != nil {
				return e
			}
		}
		if d, err = OpenDiag(); err != nil {
			return err
		}
		tb, err = OpenTables("/proc/thread-self/net", true, true)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	defer tb.Close()

	fromDiag, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	fromProc, err := tb.Read()
	if err != nil {
		t.Fatal(err)
	}
	order := func(a, b Socket) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	}
	slices.SortFunc(fromDiag, order)
	slices.SortFunc(fromProc, order)
	if !slices.Equal(fromDiag, fromProc) {
		t.Errorf("sock_diag found %v, procfs %v", fromDiag, fromProc)
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("0.0.0.0:5001"), netip.MustParseAddrPort("0.0.0.0:5005"),
		netip.MustParseAddrPort("127.0.0.1:5003"), netip.MustParseAddrPort("[::]:5002"),
		netip.MustParseAddrPort("[::]:5006"),
	}
	var got []netip.AddrPort
	for _, s := range fromDiag {
		got = append(got, netip.AddrPortFrom(s.Addr, s.Port))
		if s.Inode == 0 {
			t.Errorf("%v: no inode", s)
		}
	}
	slices.SortFunc(want, netip.AddrPort.Compare)
	slices.SortFunc(got, netip.AddrPort.Compare)
	if !slices.Equal(got, want) {
		t.Errorf("sock_diag found %v, want %v (not the connected UDP socket, nor the TCP socket that does not listen)", got, want)
	}
}
