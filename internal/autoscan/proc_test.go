package autoscan

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The samples are in the kernel's format as seen on a little-endian machine
// (the address words are printed in host byte order).
func littleEndian() bool { return binary.NativeEndian.Uint16([]byte{1, 0}) == 1 }

func skipBigEndian(t *testing.T) {
	t.Helper()
	if !littleEndian() {
		t.Skip("samples are in little-endian host byte order")
	}
}

// Lines are padded with spaces as udp4_seq_show does.
const sampleUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
  133: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   104        0 21371 2 0000000000000000 0        
  151: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 19840 2 0000000000000000 0        
  160: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 40001 2 0000000000000000 0        
  215: 0F02000A:0044 0202000A:0043 01 00000000:00000000 00:00000000 00000000     0        0 40002 2 0000000000000000 0        
  301: 0F02000A:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 40003 2 0000000000000000 0        
  400: 00000000:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0        
`

const sampleUDP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  219: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   104        0 21377 2 0000000000000000 0
  220: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 50001 2 0000000000000000 0
  221: 0000000000000000FFFF00000100007F:2329 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 50002 2 0000000000000000 0
  222: B80D0120000000000000000001000000:232A B80D0120000000000000000002000000:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 50003 2 0000000000000000 0
  223: 000080FE000000002CFEFF5EFE7A3412:0222 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 50004 2 0000000000000000 0
`

const sampleTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 522 1 000000008cacd1aa 100 0 0 10 0                       
   1: 0100007F:1451 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 60001 1 0000000000000000 20 4 30 10 -1                    
`

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestBoundPortsUDP(t *testing.T) {
	skipBigEndian(t)
	got, err := BoundPorts(strings.NewReader(sampleUDP), false)
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{
		{mustAddr("0.0.0.0"), 5353, 21371},
		{mustAddr("127.0.0.53"), 53, 19840},
		{mustAddr("127.0.0.1"), 8080, 40001},
		// 10.0.2.15:68 connected to 10.0.2.2:67 (state 01) is left out.
		{mustAddr("10.0.2.15"), 50000, 40003},
		{mustAddr("0.0.0.0"), 4789, 0}, // kernel socket (VXLAN)
	}
	if !slices.Equal(got, want) {
		t.Errorf("BoundPorts(udp) =\n%v\nwant\n%v", got, want)
	}
}

func TestBoundPortsUDP6(t *testing.T) {
	skipBigEndian(t)
	got, err := BoundPorts(strings.NewReader(sampleUDP6), true)
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{
		{mustAddr("::"), 5353, 21377},
		{mustAddr("::1"), 9000, 50001},
		{mustAddr("127.0.0.1"), 9001, 50002}, // ::ffff:127.0.0.1, unmapped
		// 2001:db8::1 port 9002 connected to [2001:db8::2]:443: left out.
		{mustAddr("fe80::5eff:fe2c:1234:7afe"), 546, 50004},
	}
	if !slices.Equal(got, want) {
		t.Errorf("BoundPorts(udp6) =\n%v\nwant\n%v", got, want)
	}
}

func TestListeningTCP(t *testing.T) {
	skipBigEndian(t)
	got, err := ListeningTCP(strings.NewReader(sampleTCP), false)
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{{mustAddr("0.0.0.0"), 2024, 522}}
	if !slices.Equal(got, want) {
		t.Errorf("ListeningTCP = %v, want %v", got, want)
	}
	// The UDP parser applied to a TCP table finds nothing: no socket
	// there is in state 07.
	if got, err := BoundPorts(strings.NewReader(sampleTCP), false); err != nil || len(got) != 0 {
		t.Errorf("BoundPorts(tcp table) = %v, %v; want nothing", got, err)
	}
}

func TestBoundPortsHeaderOnly(t *testing.T) {
	hdr := strings.SplitAfter(sampleUDP, "\n")[0]
	got, err := BoundPorts(strings.NewReader(hdr), false)
	if err != nil || len(got) != 0 {
		t.Errorf("header only: %v, %v", got, err)
	}
}

func TestBoundPortsErrors(t *testing.T) {
	hdr := strings.SplitAfter(sampleUDP, "\n")[0]
	hdr6 := strings.SplitAfter(sampleUDP6, "\n")[0]
	line := "  133: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   104        0 21371 2 0000000000000000 0\n"
	line6 := strings.SplitAfter(sampleUDP6, "\n")[1]
	for _, tc := range []struct {
		name, text string
		v6         bool
	}{
		{"empty", "", false},
		{"no header", line, false},
		{"short line", hdr + "  1: 00000000:14E9 00000000:0000 07\n", false},
		{"bad slot", hdr + strings.Replace(line, "133:", "133", 1), false},
		{"no port", hdr + strings.Replace(line, "00000000:14E9", "0000000014E9", 1), false},
		{"bad port", hdr + strings.Replace(line, ":14E9", ":1G00", 1), false},
		{"port too big", hdr + strings.Replace(line, ":14E9", ":114E9", 1), false},
		{"bad address", hdr + strings.Replace(line, "00000000:14E9", "0000000X:14E9", 1), false},
		{"v6 line in v4 table", hdr + line6, false},
		{"v4 line in v6 table", hdr6 + line, true},
		{"bad state", hdr + strings.Replace(line, " 07 ", " zz ", 1), false},
		{"bad inode", hdr + strings.Replace(line, " 21371 ", " -5 ", 1), false},
	} {
		if got, err := BoundPorts(strings.NewReader(tc.text), tc.v6); err == nil {
			t.Errorf("%s: no error, got %v", tc.name, got)
		}
	}
}

// TestReadFake checks Read and OpenTables on a directory with hand-made
// tables, including a missing udp6.
func TestReadFake(t *testing.T) {
	skipBigEndian(t)
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("udp", sampleUDP)
	write("tcp", sampleTCP)

	got, err := Read(dir)
	if err != nil {
		t.Fatalf("Read without udp6: %v", err)
	}
	if len(got) != 5 {
		t.Errorf("Read without udp6: %d sockets, want 5: %v", len(got), got)
	}

	write("udp6", sampleUDP6)
	got, err = Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 9 {
		t.Errorf("Read: %d sockets, want 9: %v", len(got), got)
	}

	got, err = ReadTCP(dir)
	if err != nil || len(got) != 1 || got[0].Port != 2024 {
		t.Errorf("ReadTCP = %v, %v; want port 2024 only", got, err)
	}

	tb, err := OpenTables(dir, true, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // rereading gives the same result
		got, err := tb.Read()
		if err != nil || len(got) != 10 {
			t.Errorf("Tables.Read #%d = %d sockets, %v; want 10", i, len(got), err)
		}
	}
	if err := tb.Close(); err != nil {
		t.Error(err)
	}
	if _, err := tb.Read(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}

	if _, err := Read(t.TempDir()); err == nil {
		t.Error("Read of a directory without udp: no error")
	}
	write("udp6", "garbage\n")
	if _, err := Read(dir); err == nil {
		t.Error("Read with a garbled udp6: no error")
	}
}

// listenMapped binds an AF_INET6 UDP socket to ::ffff:127.0.0.1, port 0,
// which the net package has no way to do.
func listenMapped(t *testing.T) *net.UDPConn {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Log("AF_INET6 socket:", err)
		return nil
	}
	sa := &unix.SockaddrInet6{Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		t.Log("bind ::ffff:127.0.0.1:", err)
		return nil
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	c, err := net.FilePacketConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

func udpInode(t *testing.T, c *net.UDPConn) uint64 {
	t.Helper()
	ino, err := Inode(c)
	if err != nil {
		t.Fatal(err)
	}
	if ino == 0 {
		t.Fatal("socket inode 0")
	}
	return ino
}

func findSocket(socks []Socket, ino uint64) (Socket, bool) {
	for _, s := range socks {
		if s.Inode == ino {
			return s, true
		}
	}
	return Socket{}, false
}

// TestReadLive opens sockets in this process and looks for them in
// /proc/self/net.
func TestReadLive(t *testing.T) {
	if _, err := os.Stat("/proc/self/net/udp"); err != nil {
		t.Skip("no /proc/self/net/udp:", err)
	}
	type want struct {
		conn *net.UDPConn
		addr netip.Addr
	}
	var bound []want
	listen := func(network, addr string) *net.UDPConn {
		a, err := net.ResolveUDPAddr(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.ListenUDP(network, a)
		if err != nil {
			return nil
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c4 := listen("udp4", "127.0.0.1:0")
	if c4 == nil {
		t.Skip("cannot bind 127.0.0.1")
	}
	bound = append(bound, want{c4, mustAddr("127.0.0.1")})
	if c := listen("udp4", "0.0.0.0:0"); c != nil {
		bound = append(bound, want{c, mustAddr("0.0.0.0")})
	}
	if c := listen("udp6", "[::1]:0"); c != nil {
		bound = append(bound, want{c, mustAddr("::1")})
		// Dual-stack wildcard: an IPv6 socket on ::, in udp6.
		if c := listen("udp", ":0"); c != nil {
			bound = append(bound, want{c, mustAddr("::")})
		}
		// IPv6 socket bound to an IPv4-mapped address: listed in udp6,
		// reported unmapped.
		if c := listenMapped(t); c != nil {
			bound = append(bound, want{c, mustAddr("127.0.0.1")})
		}
	} else {
		t.Log("no IPv6 loopback, skipping the IPv6 sockets")
	}

	// A connected socket, to c4.
	conn, err := net.DialUDP("udp4", nil, c4.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connIno := udpInode(t, conn)

	// And a TCP listener for ReadTCP.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lnIno, err := Inode(ln.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}

	t.Logf("looking for %d bound UDP sockets", len(bound))
	socks, err := Read("/proc/self/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range bound {
		ino := udpInode(t, w.conn)
		port := uint16(w.conn.LocalAddr().(*net.UDPAddr).Port)
		s, ok := findSocket(socks, ino)
		switch {
		case !ok:
			t.Errorf("socket %v (inode %d) not found in /proc/self/net", w.conn.LocalAddr(), ino)
		case s.Port != port || s.Addr != w.addr:
			t.Errorf("socket inode %d: found %v:%d, want %v:%d", ino, s.Addr, s.Port, w.addr, port)
		}
	}
	if s, ok := findSocket(socks, connIno); ok {
		t.Errorf("connected socket %v listed as bound: %v", conn.LocalAddr(), s)
	}

	tcp, err := ReadTCP("/proc/self/net")
	if err != nil {
		t.Fatal(err)
	}
	s, ok := findSocket(tcp, lnIno)
	if !ok || s.Port != uint16(ln.Addr().(*net.TCPAddr).Port) || s.Addr != mustAddr("127.0.0.1") {
		t.Errorf("TCP listener %v (inode %d): found %v, %v", ln.Addr(), lnIno, s, ok)
	}

	// Kept open, the tables see sockets opened and closed later.
	tb, err := OpenTables("/proc/thread-self/net", true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	late := listen("udp4", "127.0.0.1:0")
	lateIno := udpInode(t, late)
	socks, err = tb.Read()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findSocket(socks, lateIno); !ok {
		t.Errorf("late socket (inode %d) not found through open tables", lateIno)
	}
	late.Close()
	socks, err = tb.Read()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findSocket(socks, lateIno); ok {
		t.Errorf("closed socket (inode %d) still found through open tables", lateIno)
	}
}

func TestFDInodeNotSocket(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := FDInode(int(f.Fd())); err != nil {
		t.Errorf("FDInode(/dev/null): %v", err)
	}
	if _, err := FDInode(-1); err == nil {
		t.Error("FDInode(-1): no error")
	}
}
