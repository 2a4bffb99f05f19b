package netns

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// requireRoot skips tests needing root (and, if tun, /dev/net/tun).
func requireRoot(t *testing.T, tun bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if tun {
		if _, err := os.Stat(TunDevice); err != nil {
			t.Skipf("no %s: %v", TunDevice, err)
		}
	}
}

// newNS creates a namespace closed at the end of the test.
func newNS(t *testing.T) *NS {
	t.Helper()
	n, err := New()
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// nsInode returns the inode of a namespace file.
func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// runInNS runs a shell script inside n with StartCommand and returns its
// output.
func runInNS(t *testing.T, n *NS, script string) string {
	t.Helper()
	cmd := exec.Command("sh", "-ec", script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := n.StartCommand(cmd); err != nil {
		t.Fatalf("StartCommand: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("script failed: %v\n%s\n%s", err, script, out.String())
	}
	return out.String()
}

var (
	testMAC  = net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x00, 0x02}
	testCfg4 = netip.MustParsePrefix("192.0.2.2/24")
	testGw4  = netip.MustParseAddr("192.0.2.1")
	testCfg6 = netip.MustParsePrefix("2001:db8::2/64")
	testGw6  = netip.MustParseAddr("2001:db8::1")
)

// setupTap makes a namespace with a configured gptap0.
func setupTap(t *testing.T) (n *NS, fd, ifindex int) {
	t.Helper()
	n = newNS(t)
	fd, ifindex, err := n.CreateTap("gptap0", 65520, testMAC, false)
	if err != nil {
		t.Fatalf("CreateTap: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	err = n.Configure(IfConfig{
		Ifname:   "gptap0",
		Up:       true,
		Addr4:    testCfg4,
		Gateway4: testGw4,
		Addr6:    testCfg6,
		Gateway6: testGw6,
		MTU:      65520,
	})
	if err != nil {
		t.Fatalf("Configure: %v", err)
	}
	return n, fd, ifindex
}

func TestNewDoIsolation(t *testing.T) {
	requireRoot(t, false)
	n := newNS(t)
	host := nsInode(t, "/proc/self/ns/net")

	var inside uint64
	if err := n.Do(func() error {
		inside = nsInode(t, threadNetnsPath)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inside == host {
		t.Fatal("Do ran in the host namespace")
	}
	if !strings.HasPrefix(n.Path(), "net:[") {
		t.Errorf("Path() = %q", n.Path())
	}

	// Hammer: many concurrent Do calls, while other goroutines check
	// they never see a foreign namespace.
	var wg sync.WaitGroup
	errc := make(chan error, 200)
	for i := 0; i < 50; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			errc <- n.Do(func() error {
				var st unix.Stat_t
				if err := unix.Stat(threadNetnsPath, &st); err != nil {
					return err
				}
				if st.Ino != inside {
					return errors.New("Do not in namespace")
				}
				return nil
			})
		}()
		go func() {
			defer wg.Done()
			var st unix.Stat_t
			if err := unix.Stat(threadNetnsPath, &st); err != nil {
				errc <- err
				return
			}
			if st.Ino != host {
				errc <- errors.New("ordinary goroutine in a foreign namespace")
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}

	// Errors from fn come back unchanged.
	sentinel := errors.New("sentinel")
	if err := n.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want sentinel", err)
	}

	// Panics are propagated to the caller.
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		_ = n.Do(func() error { panic("boom") })
	}()

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	if err := n.Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close = %v", err)
	}
	if n.Fd() != -1 {
		t.Errorf("Fd after Close = %d", n.Fd())
	}
}

func TestOpen(t *testing.T) {
	requireRoot(t, false)
	n, err := Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.Path() != "/proc/self/ns/net" || n.Fd() < 0 {
		t.Errorf("Path %q Fd %d", n.Path(), n.Fd())
	}
	host := nsInode(t, "/proc/self/ns/net")
	ran := false
	if err := n.Do(func() error {
		ran = true
		if got := nsInode(t, threadNetnsPath); got != host {
			t.Errorf("inside Open(/proc/self/ns/net): inode %d, want %d", got, host)
		}
		return nil
	}); err != nil || !ran {
		t.Fatalf("Do: ran %v, err %v", ran, err)
	}

	if _, err := Open("/proc/self/ns/uts"); err == nil {
		t.Error("Open accepted a UTS namespace")
	}
	if _, err := Open("/nonexistent/netns"); err == nil {
		t.Error("Open accepted a missing path")
	}

	// A namespace made by New, reopened through its descriptor: same one.
	m := newNS(t)
	again, err := Open("/proc/self/fd/" + strconv.Itoa(m.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var a, b uint64
	m.Do(func() error { a = nsInode(t, threadNetnsPath); return nil })
	again.Do(func() error { b = nsInode(t, threadNetnsPath); return nil })
	if a != b || a == host {
		t.Errorf("reopened namespace inode %d, original %d, host %d", b, a, host)
	}
}

func TestOpenByName(t *testing.T) {
	requireRoot(t, false)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip(8)")
	}
	const name = "gopasst-test-ns"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	n, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.Path() != RunDir+"/"+name {
		t.Errorf("Path = %q", n.Path())
	}
	want := nsInode(t, RunDir+"/"+name)
	n.Do(func() error {
		if got := nsInode(t, threadNetnsPath); got != want {
			t.Errorf("inode %d, want %d", got, want)
		}
		return nil
	})
}

func TestCreateTapConfigure(t *testing.T) {
	requireRoot(t, true)
	n, _, ifindex := setupTap(t)

	err := n.Do(func() error {
		link, err := netlink.LinkByName("gptap0")
		if err != nil {
			return err
		}
		a := link.Attrs()
		if a.Index != ifindex {
			t.Errorf("ifindex %d, CreateTap said %d", a.Index, ifindex)
		}
		if link.Type() != "tuntap" {
			t.Errorf("link type %q", link.Type())
		}
		if a.MTU != 65520 {
			t.Errorf("MTU %d", a.MTU)
		}
		if !bytes.Equal(a.HardwareAddr, testMAC) {
			t.Errorf("MAC %v, want %v", a.HardwareAddr, testMAC)
		}
		if a.Flags&net.FlagUp == 0 {
			t.Errorf("gptap0 not up: %v", a.Flags)
		}
		if a.RawFlags&unix.IFF_NOARP != 0 {
			t.Error("IFF_NOARP left set")
		}

		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			t.Error("lo not up")
		}

		addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		var got4, got6, ll bool
		for _, ad := range addrs {
			switch ad.IPNet.String() {
			case testCfg4.String():
				got4 = true
			case testCfg6.String():
				got6 = true
				if ad.Flags&unix.IFA_F_NODAD == 0 || ad.Flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("%v flags %#x: want NODAD, not tentative", ad.IPNet, ad.Flags)
				}
			}
			if ad.Scope == unix.RT_SCOPE_LINK && ad.IP.To4() == nil {
				ll = true
				if ad.Flags&unix.IFA_F_NODAD == 0 {
					t.Errorf("link-local %v flags %#x: want NODAD", ad.IPNet, ad.Flags)
				}
			}
		}
		if !got4 || !got6 {
			t.Errorf("addresses %v: want %v and %v", addrs, testCfg4, testCfg6)
		}
		if !ll {
			t.Errorf("no IPv6 link-local address in %v", addrs)
		}

		for _, c := range []struct {
			fam int
			gw  netip.Addr
		}{{netlink.FAMILY_V4, testGw4}, {netlink.FAMILY_V6, testGw6}} {
			routes, err := netlink.RouteList(link, c.fam)
			if err != nil {
				return err
			}
			found := false
			for _, r := range routes {
				if isDefault(&r) && r.Gw.Equal(net.IP(c.gw.AsSlice())) && r.LinkIndex == ifindex {
					found = true
				}
			}
			if !found {
				t.Errorf("no default route via %v in %v", c.gw, routes)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Nothing leaked into the host namespace.
	if _, err := netlink.LinkByName("gptap0"); err == nil {
		t.Error("gptap0 exists in the host namespace")
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Errorf("host LinkByName: %v", err)
	}

	// Configure is repeatable.
	if err := n.Configure(IfConfig{Ifname: "gptap0", Up: true, Addr4: testCfg4, Gateway4: testGw4,
		Addr6: testCfg6, Gateway6: testGw6, MTU: 65520}); err != nil {
		t.Errorf("second Configure: %v", err)
	}

	mac, err := n.LinkMAC("gptap0")
	if err != nil || !bytes.Equal(mac, testMAC) {
		t.Errorf("LinkMAC = %v, %v", mac, err)
	}
}

func TestCreateTapErrors(t *testing.T) {
	requireRoot(t, true)
	n := newNS(t)
	if _, _, err := n.CreateTap("this-name-is-too-long", 0, nil, false); err == nil {
		t.Error("accepted a 21-byte name")
	}
	if _, _, err := n.CreateTap("gptap0", 0, net.HardwareAddr{1, 2, 3}, false); err == nil {
		t.Error("accepted a 3-byte MAC")
	}
	// Kernel-chosen name, kernel-chosen MAC.
	fd, idx, err := n.CreateTap("", 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Errorf("tap fd flags %#x, %v: want O_NONBLOCK", flags, err)
	}
	fdflags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || fdflags&unix.FD_CLOEXEC == 0 {
		t.Errorf("tap fd flags %#x, %v: want FD_CLOEXEC", fdflags, err)
	}
	n.Do(func() error {
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			t.Errorf("LinkByIndex(%d): %v", idx, err)
		} else if !strings.HasPrefix(l.Attrs().Name, "tap") {
			t.Errorf("kernel-chosen name %q", l.Attrs().Name)
		}
		return nil
	})
}

func TestConfigureOnlinkAndLinkLocalGateway(t *testing.T) {
	requireRoot(t, true)
	n := newNS(t)
	fd, ifindex, err := n.CreateTap("gptap1", 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// A /32 leaves the gateway off-link: needs the onlink retry. The IPv6
	// gateway is link-local: needs the output device.
	gw6 := netip.MustParseAddr("fe80::1")
	err = n.Configure(IfConfig{
		Ifname:   "gptap1",
		Up:       true,
		Addr4:    netip.MustParsePrefix("192.0.2.2/32"),
		Gateway4: testGw4,
		Addr6:    testCfg6,
		Gateway6: gw6,
		MTU:      1500,
	})
	if err != nil {
		t.Fatal(err)
	}
	n.Do(func() error {
		for _, gw := range []netip.Addr{testGw4, gw6} {
			fam := netlink.FAMILY_V4
			if gw.Is6() {
				fam = netlink.FAMILY_V6
			}
			routes, err := netlink.RouteList(nil, fam)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, r := range routes {
				if isDefault(&r) && r.LinkIndex == ifindex && r.Gw.Equal(net.IP(gw.AsSlice())) {
					found = true
					if gw.Is4() && r.Flags&int(netlink.FLAG_ONLINK) == 0 {
						t.Errorf("IPv4 default route without onlink: %v", r)
					}
				}
			}
			if !found {
				t.Errorf("no default route via %v: %v", gw, routes)
			}
		}
		return nil
	})

	if err := n.Configure(IfConfig{Ifname: "nonexistent0", Up: true}); err == nil {
		t.Error("Configure of a missing interface succeeded")
	}
	if err := n.Configure(IfConfig{Ifname: "gptap1", Addr4: testCfg6}); err == nil {
		t.Error("Configure accepted an IPv6 Addr4")
	}
}

func TestStartCommand(t *testing.T) {
	requireRoot(t, true)
	n, _, _ := setupTap(t)

	out := runInNS(t, n, "ip -o link; cat /proc/net/dev")
	if !strings.Contains(out, "gptap0") {
		t.Fatalf("command output lacks gptap0:\n%s", out)
	}

	// Further namespaces through SysProcAttr: a private hostname.
	host, _ := os.Hostname()
	cmd := exec.Command("sh", "-c", "hostname gopasst-uts-test && hostname && grep -c gptap0 /proc/net/dev")
	cmd.SysProcAttr = &unix.SysProcAttr{Cloneflags: unix.CLONE_NEWUTS}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := n.StartCommand(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	if buf.String() != "gopasst-uts-test\n1\n" {
		t.Errorf("output %q", buf.String())
	}
	if now, _ := os.Hostname(); now != host {
		t.Fatalf("host name changed from %q to %q", host, now)
	}

	bad := exec.Command("true")
	bad.SysProcAttr = &unix.SysProcAttr{Cloneflags: unix.CLONE_NEWNET}
	if err := n.StartCommand(bad); err == nil {
		bad.Wait()
		t.Error("StartCommand accepted CLONE_NEWNET")
	}
}

// readFrame waits up to the deadline for a frame on the non-blocking tap fd.
func readFrame(fd int, deadline time.Time) ([]byte, error) {
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, errors.New("timeout waiting for a frame")
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			return nil, err
		}
		nr, err := unix.Read(fd, buf)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:nr], nil
	}
}

func TestTapTraffic(t *testing.T) {
	requireRoot(t, true)
	n, fd, _ := setupTap(t)

	// From inside the namespace, send a datagram to the gateway: the
	// kernel first resolves it with ARP, out of the tap.
	payload := []byte("gopasst tap test")
	err := n.Do(func() error {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(s)
		return unix.Sendto(s, payload, 0, &unix.SockaddrInet4{Port: 9, Addr: testGw4.As4()})
	})
	if err != nil {
		t.Fatal(err)
	}

	gwMAC := net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
	deadline := time.Now().Add(10 * time.Second)
	sawARP := false
	for !sawARP {
		f, err := readFrame(fd, deadline)
		if err != nil {
			t.Fatalf("no ARP request for %v: %v", testGw4, err)
		}
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:14]) != 0x0806 {
			continue // IPv6 RS, MLD, ...
		}
		arp := f[14:]
		if binary.BigEndian.Uint16(arp[6:8]) != 1 {
			continue
		}
		if !bytes.Equal(arp[8:14], testMAC) || !bytes.Equal(arp[14:18], testCfg4.Addr().AsSlice()) ||
			!bytes.Equal(arp[24:28], testGw4.AsSlice()) {
			t.Fatalf("unexpected ARP request % x", arp[:28])
		}
		sawARP = true
	}

	// Answer from the init namespace through the fd: the queued datagram
	// must then come out.
	reply := make([]byte, 42)
	copy(reply[0:6], testMAC)
	copy(reply[6:12], gwMAC)
	binary.BigEndian.PutUint16(reply[12:14], 0x0806)
	a := reply[14:]
	binary.BigEndian.PutUint16(a[0:2], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:4], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], 2) // reply
	copy(a[8:14], gwMAC)
	copy(a[14:18], testGw4.AsSlice())
	copy(a[18:24], testMAC)
	copy(a[24:28], testCfg4.Addr().AsSlice())
	if _, err := unix.Write(fd, reply); err != nil {
		t.Fatalf("writing ARP reply to tap: %v", err)
	}

	for {
		f, err := readFrame(fd, deadline)
		if err != nil {
			t.Fatalf("no UDP datagram after ARP reply: %v", err)
		}
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != unix.IPPROTO_UDP || !bytes.Equal(ip[16:20], testGw4.AsSlice()) {
			continue
		}
		if !bytes.Equal(f[0:6], gwMAC) {
			t.Errorf("datagram to MAC %v, want %v", net.HardwareAddr(f[0:6]), gwMAC)
		}
		udp := ip[ihl:]
		if binary.BigEndian.Uint16(udp[2:4]) != 9 || !bytes.Equal(udp[8:], payload) {
			t.Fatalf("unexpected UDP datagram % x", udp)
		}
		return
	}
}

// TestSocketFactory checks that sockets from the factory live in the
// namespace: one bound to the namespace's loopback is reachable only from
// inside it.
func TestSocketFactory(t *testing.T) {
	requireRoot(t, false)
	n := newNS(t)
	if err := n.Configure(IfConfig{Ifname: "lo", Up: true}); err != nil {
		t.Fatal(err)
	}
	f, err := n.SocketFactory()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := f.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	// The socket's namespace, as SIOCGSKNS reports it, is n's.
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nsfd)
	var a, b unix.Stat_t
	if err := unix.Fstat(nsfd, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(n.Fd(), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino {
		t.Fatalf("socket in namespace %d, want %d", a.Ino, b.Ino)
	}
}
