package autoscan

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Socket states as printed in the "st" column, see the kernel's
// include/net/tcp_states.h. The reference calls them UDP_LISTEN and
// TCP_LISTEN.
const (
	// StateUDPBound is TCP_CLOSE, the state of a bound, unconnected UDP
	// socket. Connected UDP sockets are TCP_ESTABLISHED (01).
	StateUDPBound = 0x07
	// StateTCPListen is TCP_LISTEN.
	StateTCPListen = 0x0a
)

// Socket is a bound socket found in a procfs socket table.
type Socket struct {
	// Addr is the local address. IPv4-mapped IPv6 addresses (from IPv6
	// sockets bound to ::ffff:a.b.c.d) are unmapped to IPv4; the
	// wildcard addresses are 0.0.0.0 and ::.
	Addr netip.Addr
	// Port is the local port, never 0.
	Port uint16
	// Inode is the socket's inode number, as in /proc/PID/fd links and
	// fstat; 0 for kernel sockets that have no file.
	Inode uint64
}

// BoundPorts parses the contents of /proc/net/udp (v6 false) or
// /proc/net/udp6 (v6 true) and returns the sockets that are bound and not
// connected (state 07), the ones the reference counts for UDP "auto"
// forwarding. Connected sockets (state 01) are left out.
//
// The format is a header line, then one line per socket:
//
//	sl: local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//
// with addresses as hexadecimal ADDR:PORT, the address printed as the
// 32-bit words of the network-order address read in host byte order (one
// word for IPv4, four for IPv6). A line that doesn't follow the format is
// an error.
func BoundPorts(r io.Reader, v6 bool) ([]Socket, error) {
	return parseTable(r, v6, StateUDPBound)
}

// ListeningTCP is like [BoundPorts] for /proc/net/tcp and /proc/net/tcp6:
// it returns the listening sockets (state 0A).
func ListeningTCP(r io.Reader, v6 bool) ([]Socket, error) {
	return parseTable(r, v6, StateTCPListen)
}

// parseTable returns the sockets in state state from a procfs socket table.
func parseTable(r io.Reader, v6 bool, state uint8) ([]Socket, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<16)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, err
		}
		return nil, errors.New("socket table: missing header line")
	}
	if f := strings.Fields(sc.Text()); len(f) == 0 || f[0] != "sl" {
		return nil, fmt.Errorf("socket table: unexpected header %q", strings.TrimSpace(sc.Text()))
	}
	var out []Socket
	for line := 2; sc.Scan(); line++ {
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		s, st, err := parseLine(text, v6)
		if err != nil {
			return nil, fmt.Errorf("socket table line %d: %w", line, err)
		}
		if st == state && s.Port != 0 {
			out = append(out, s)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// parseLine parses one socket line of a procfs socket table.
func parseLine(text string, v6 bool) (Socket, uint8, error) {
	f := strings.Fields(text)
	if len(f) < 10 {
		return Socket{}, 0, fmt.Errorf("%d fields, want at least 10: %q", len(f), strings.TrimSpace(text))
	}
	if !strings.HasSuffix(f[0], ":") {
		return Socket{}, 0, fmt.Errorf("bad slot %q", f[0])
	}
	addr, port, err := parseAddrPort(f[1], v6)
	if err != nil {
		return Socket{}, 0, fmt.Errorf("local address: %w", err)
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return Socket{}, 0, fmt.Errorf("bad state %q", f[3])
	}
	ino, err := strconv.ParseUint(f[9], 10, 64)
	if err != nil {
		return Socket{}, 0, fmt.Errorf("bad inode %q", f[9])
	}
	return Socket{Addr: addr, Port: port, Inode: ino}, uint8(st), nil
}

// parseAddrPort decodes "0100007F:0035" (127.0.0.1 port 53 on a
// little-endian machine) or its 32-digit IPv6 counterpart.
func parseAddrPort(s string, v6 bool) (netip.Addr, uint16, error) {
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return netip.Addr{}, 0, fmt.Errorf("no port in %q", s)
	}
	hexAddr, hexPort := s[:i], s[i+1:]
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("bad port in %q", s)
	}
	words := 1
	if v6 {
		words = 4
	}
	if len(hexAddr) != 8*words {
		return netip.Addr{}, 0, fmt.Errorf("bad address length in %q", s)
	}
	var b [16]byte
	for w := range words {
		v, err := strconv.ParseUint(hexAddr[8*w:8*w+8], 16, 32)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("bad address in %q", s)
		}
		binary.NativeEndian.PutUint32(b[4*w:], uint32(v))
	}
	if !v6 {
		return netip.AddrFrom4([4]byte(b[:4])), uint16(port), nil
	}
	return netip.AddrFrom16(b).Unmap(), uint16(port), nil
}

// Read reads the UDP socket tables "udp" and "udp6" in netDir, a procfs
// net directory such as "/proc/PID/net" or "/proc/thread-self/net", and
// returns the bound, unconnected sockets of both (see [BoundPorts]). A
// missing udp6 (IPv6 disabled) is not an error.
//
// The tables describe the network namespace of the process or thread the
// directory belongs to, at the time the files are opened. "/proc/self/net"
// is the namespace of the thread group leader, the main thread, whatever
// thread the caller runs on; "/proc/thread-self/net" is the calling
// thread's, which in Go means a goroutine locked to a thread that entered
// the namespace. To keep reading a namespace no process of which is at
// hand, open the tables once from such a thread with [OpenTables] and keep
// them open, as the reference does.
func Read(netDir string) ([]Socket, error) {
	return readOnce(netDir, true, false)
}

// ReadTCP is like [Read] for the listening sockets of "tcp" and "tcp6".
func ReadTCP(netDir string) ([]Socket, error) {
	return readOnce(netDir, false, true)
}

func readOnce(netDir string, udp, tcp bool) ([]Socket, error) {
	t, err := OpenTables(netDir, udp, tcp)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	return t.Read()
}

// table is one open procfs socket table.
type table struct {
	f     *os.File
	v6    bool
	state uint8
}

// Tables is a set of procfs socket tables kept open for rereading, as the
// reference does: a procfs net file opened by a thread in a namespace keeps
// describing that namespace, from any thread, as long as it stays open.
// Its methods are safe for concurrent use.
type Tables struct {
	mu     sync.Mutex
	tables []table
}

// OpenTables opens the socket tables in netDir (see [Read]): "udp" and
// "udp6" if udp is set, "tcp" and "tcp6" if tcp is set. [Tables.Read]
// then returns the bound UDP sockets and the listening TCP sockets
// together; the reference's UDP scan uses both, so that UDP ports with
// the numbers of listening TCP ports are forwarded too. The IPv6 tables
// may be missing.
func OpenTables(netDir string, udp, tcp bool) (*Tables, error) {
	type spec struct {
		name  string
		v6    bool
		state uint8
	}
	var specs []spec
	if udp {
		specs = append(specs, spec{"udp", false, StateUDPBound}, spec{"udp6", true, StateUDPBound})
	}
	if tcp {
		specs = append(specs, spec{"tcp", false, StateTCPListen}, spec{"tcp6", true, StateTCPListen})
	}
	t := &Tables{}
	for _, s := range specs {
		f, err := os.Open(filepath.Join(netDir, s.name))
		if err != nil {
			if s.v6 && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			t.Close()
			return nil, err
		}
		t.tables = append(t.tables, table{f: f, v6: s.v6, state: s.state})
	}
	return t, nil
}

// Read rereads all the tables from the start and returns the sockets found.
func (t *Tables) Read() ([]Socket, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Socket
	for _, tb := range t.tables {
		if tb.f == nil {
			return nil, os.ErrClosed
		}
		if _, err := tb.f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		s, err := parseTable(tb.f, tb.v6, tb.state)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tb.f.Name(), err)
		}
		out = append(out, s...)
	}
	return out, nil
}

// Close closes the tables.
func (t *Tables) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for i := range t.tables {
		if t.tables[i].f != nil {
			errs = append(errs, t.tables[i].f.Close())
			t.tables[i].f = nil
		}
	}
	return errors.Join(errs...)
}

// FDInode returns the inode number of the file open on fd: for a socket,
// the number the socket tables show.
func FDInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Inode is [FDInode] for a socket wrapped in a Go type such as
// *net.UDPConn.
func Inode(c syscall.Conn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ino uint64
	var ferr error
	if err := rc.Control(func(fd uintptr) { ino, ferr = FDInode(int(fd)) }); err != nil {
		return 0, err
	}
	return ino, ferr
}
