package autoscan

import (
	"errors"
	"net"
	"os"
	"slices"
	"testing"

	"github.com/gopasst/gopasst/internal/conf"
)

// fakeTable serves scripted reads and counts calls.
type fakeTable struct {
	reads   [][]Socket
	err     error
	n, owns int
	own     map[uint64]bool
}

func (f *fakeTable) read() ([]Socket, error) {
	if f.err != nil {
		return nil, f.err
	}
	if len(f.reads) == 0 {
		panic("unexpected read")
	}
	r := f.reads[0]
	if len(f.reads) > 1 {
		f.reads = f.reads[1:]
	}
	f.n++
	return r, nil
}

func (f *fakeTable) ownInodes() (map[uint64]bool, error) {
	f.owns++
	return f.own, nil
}

func TestScanner(t *testing.T) {
	ft := &fakeTable{own: map[uint64]bool{100: true}}
	s := NewScanner(autoRules(t, "auto"), ft.read)
	s.Own = ft.ownInodes

	step := func(name string, reads [][]Socket, wantOpen, wantClose []Fwd, wantReads, wantOwns int) {
		t.Helper()
		ft.reads, ft.n, ft.owns = reads, 0, 0
		open, close, err := s.Step()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.Equal(open, wantOpen) || !slices.Equal(close, wantClose) {
			t.Errorf("%s: open %v, close %v; want open %v, close %v", name, open, close, wantOpen, wantClose)
		}
		if ft.n != wantReads || ft.owns != wantOwns {
			t.Errorf("%s: %d reads, %d inode scans; want %d, %d", name, ft.n, ft.owns, wantReads, wantOwns)
		}
	}

	// Nothing relevant bound: one read, no need to look at our inodes.
	step("empty", [][]Socket{{sock("0.0.0.0", 40000, 1)}}, nil, nil, 1, 0)

	// A foreign and an own socket.
	both := []Socket{sock("0.0.0.0", 53, 1), sock("0.0.0.0", 8080, 100)}
	step("bound", [][]Socket{both, both}, []Fwd{fwd(53, 53)}, nil, 2, 1)
	step("unchanged", [][]Socket{both, both}, nil, nil, 2, 1)

	// A socket seen in one read only does not count yet, whichever read.
	extra := append(slices.Clone(both), sock("::", 5353, 2))
	step("new socket in second read", [][]Socket{both, extra}, nil, nil, 2, 1)
	step("socket gone in second read", [][]Socket{extra, both}, nil, nil, 2, 1)
	// Same port, other inode: not the same socket.
	reborn := append(slices.Clone(both), sock("::", 5353, 3))
	step("inode changed", [][]Socket{extra, reborn}, nil, nil, 2, 1)
	step("new socket stable", [][]Socket{extra, extra}, []Fwd{fwd(5353, 5353)}, nil, 2, 1)

	// Errors keep the current state.
	ft.err = errors.New("read failed")
	if _, _, err := s.Step(); err == nil {
		t.Error("no error from failing read")
	}
	ft.err = nil
	if want := []Fwd{fwd(53, 53), fwd(5353, 5353)}; !slices.Equal(s.Current(), want) {
		t.Errorf("after error: current %v, want %v", s.Current(), want)
	}

	// A forward that failed to open is reported again.
	s.Forget(fwd(5353, 5353), fwd(1, 1))
	step("retry", [][]Socket{extra, extra}, []Fwd{fwd(5353, 5353)}, nil, 2, 1)

	// Sockets going away close their forwards.
	step("closed", [][]Socket{both, both}, nil, []Fwd{fwd(5353, 5353)}, 2, 1)
	step("all closed", [][]Socket{nil}, nil, []Fwd{fwd(53, 53)}, 1, 0)

	step("again", [][]Socket{both, both}, []Fwd{fwd(53, 53)}, nil, 2, 1)
	if got := s.Reset(); !slices.Equal(got, []Fwd{fwd(53, 53)}) {
		t.Errorf("Reset = %v", got)
	}
	if len(s.Current()) != 0 {
		t.Errorf("after Reset: current %v", s.Current())
	}
	step("after reset", [][]Socket{both, both}, []Fwd{fwd(53, 53)}, nil, 2, 1)
}

// TestScannerLive runs a Scanner on this process's own namespace: a
// socket counts unless Own reports its inode.
func TestScannerLive(t *testing.T) {
	if _, err := os.Stat("/proc/self/net/udp"); err != nil {
		t.Skip("no /proc/self/net/udp:", err)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Skip(err)
	}
	defer c.Close()
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	rules := []conf.PortRule{{First: port, Last: port, ToFirst: port}}

	tb, err := OpenTables("/proc/self/net", true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()

	ino, err := Inode(c)
	if err != nil {
		t.Fatal(err)
	}
	s := NewScanner(rules, tb.Read)
	s.Own = func() (map[uint64]bool, error) { return map[uint64]bool{ino: true}, nil }
	open, close, err := s.Step()
	if err != nil || open != nil || close != nil {
		t.Errorf("own socket: open %v, close %v, err %v; want nothing", open, close, err)
	}

	s.Own = func() (map[uint64]bool, error) { return nil, nil }
	open, close, err = s.Step()
	if want := []Fwd{fwd(port, port)}; err != nil || !slices.Equal(open, want) || close != nil {
		t.Errorf("foreign socket: open %v, close %v, err %v; want open %v", open, close, err, want)
	}

	c.Close()
	open, close, err = s.Step()
	if want := []Fwd{fwd(port, port)}; err != nil || open != nil || !slices.Equal(close, want) {
		t.Errorf("socket closed: open %v, close %v, err %v; want close %v", open, close, err, want)
	}
}
