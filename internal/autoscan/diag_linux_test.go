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
// namespace and checks that the sock_diag dumps, read from outside the
// namespace, find exactly the sockets that count (bound unconnected UDP,
// listening TCP, or both, as asked) and the same ones, inodes included, as
// the procfs tables opened with the same choice.
func TestDiagMatchesTables(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	n, err := netns.New()
	if err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	defer n.Close()
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
	connect := func(port int) func(fd int) error {
		return func(fd int) error {
			return unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		}
	}
	mapped := [16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}
	type reader struct {
		name     string
		udp, tcp bool
		want     []string
		d        *Diag
		tb       *Tables
	}
	readers := []*reader{{
		name: "UDP and TCP", udp: true, tcp: true,
		want: []string{"0.0.0.0:5001", "0.0.0.0:5005", "127.0.0.1:5003", "[::]:5002", "[::]:5006"},
	}, {
		name: "UDP", udp: true,
		want: []string{"0.0.0.0:5001", "127.0.0.1:5003", "[::]:5002"},
	}, {
		name: "TCP", tcp: true,
		want: []string{"0.0.0.0:5005", "[::]:5006"},
	}}
	defer func() {
		for _, r := range readers {
			if r.d != nil {
				r.d.Close()
			}
			if r.tb != nil {
				r.tb.Close()
			}
		}
	}()
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
			sock(unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Port: 5004}, connect(9)),
			sock(unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: 5005}, listen),
			sock(unix.AF_INET6, unix.SOCK_STREAM, &unix.SockaddrInet6{Port: 5006}, listen),
			sock(unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: 5007}, nil),
			// A connection to 5005: both of its ends (this one on
			// 5008, the one waiting in 5005's queue) are
			// established, not listening.
			sock(unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: 5008}, connect(5005)),
		} {
			if e != nil {
				return e
			}
		}
		for _, r := range readers {
			if r.d, err = OpenDiag(r.udp, r.tcp); err != nil {
				return err
			}
			if r.tb, err = OpenTables("/proc/thread-self/net", r.udp, r.tcp); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	order := func(a, b Socket) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	}
	for _, r := range readers {
		fromDiag, err := r.d.Read()
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		fromProc, err := r.tb.Read()
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		slices.SortFunc(fromDiag, order)
		slices.SortFunc(fromProc, order)
		if !slices.Equal(fromDiag, fromProc) {
			t.Errorf("%s: sock_diag found %v, procfs %v", r.name, fromDiag, fromProc)
		}
		var want, got []netip.AddrPort
		for _, s := range r.want {
			want = append(want, netip.MustParseAddrPort(s))
		}
		for _, s := range fromDiag {
			got = append(got, netip.AddrPortFrom(s.Addr, s.Port))
			if s.Inode == 0 {
				t.Errorf("%s: %v: no inode", r.name, s)
			}
		}
		slices.SortFunc(want, netip.AddrPort.Compare)
		slices.SortFunc(got, netip.AddrPort.Compare)
		if !slices.Equal(got, want) {
			t.Errorf("%s: sock_diag found %v, want %v (not the connected UDP socket, nor the TCP sockets that do not listen)", r.name, got, want)
		}
	}
}

// TestDiagClosed checks that a closed Diag says so rather than reading.
func TestDiagClosed(t *testing.T) {
	d, err := OpenDiag(false, true)
	if err != nil {
		t.Skipf("no sock_diag: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if s, err := d.Read(); err == nil {
		t.Errorf("Read after Close = %v, want an error", s)
	}
}
