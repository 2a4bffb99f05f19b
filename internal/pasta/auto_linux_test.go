package pasta

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gopasst/gopasst/internal/autoscan"
	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
)

// fakeSockets is a socketReader returning what the test sets.
type fakeSockets struct {
	socks []autoscan.Socket
	err   error
}

func (f *fakeSockets) Read() ([]autoscan.Socket, error) { return slices.Clone(f.socks), f.err }
func (f *fakeSockets) Close() error                     { return nil }

// fakeEngine is a forwarder recording the forwards it holds and the calls
// it got; forwards with Splice set fail when noSplice is, as TCP's do
// while TCP splice does not exist.
type fakeEngine struct {
	noSplice bool
	own      map[uint64]bool
	open     map[fwd.Forward]bool
	adds     int
}

var errNoSplice = errors.New("splice not supported")

func (e *fakeEngine) AddForward(f fwd.Forward) error {
	e.adds++
	if e.noSplice && f.Splice {
		return errNoSplice
	}
	if e.open[f] {
		return errors.New("already open")
	}
	e.open[f] = true
	return nil
}

func (e *fakeEngine) RemoveForward(f fwd.Forward) error {
	if !e.open[f] {
		return errors.New("not open")
	}
	delete(e.open, f)
	return nil
}

func (e *fakeEngine) OwnInodes() map[uint64]bool { return e.own }

// forwards returns the open forwards, sorted by port then address.
func (e *fakeEngine) forwards() []fwd.Forward {
	var out []fwd.Forward
	for f := range e.open {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b fwd.Forward) int {
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return a.Addr.Compare(b.Addr)
	})
	return out
}

// logMu serialises the tests that capture the log.
var logMu sync.Mutex

// captureLog sends debug messages to the returned buffer until the test
// ends.
func captureLog(t *testing.T) *bytes.Buffer {
	logMu.Lock()
	var b bytes.Buffer
	log.SetOutput(&b)
	log.SetLevel(log.LevelDebug)
	t.Cleanup(func() {
		log.SetLevel(log.LevelInfo)
		log.SetOutput(os.Stderr)
		logMu.Unlock()
	})
	return &b
}

func listening(port uint16, ino uint64) autoscan.Socket {
	return autoscan.Socket{Addr: netip.IPv6Unspecified(), Port: port, Inode: ino}
}

func TestAutoOption(t *testing.T) {
	for _, tc := range []struct {
		proto  fwd.Proto
		splice bool
		want   string
	}{
		{fwd.TCP, false, "-t"}, {fwd.TCP, true, "-T"},
		{fwd.UDP, false, "-u"}, {fwd.UDP, true, "-U"},
	} {
		a := &autoForwarder{proto: tc.proto, splice: tc.splice}
		if got := a.option(); got != tc.want {
			t.Errorf("%v splice %v: option %q, want %q", tc.proto, tc.splice, got, tc.want)
		}
	}
}

// TestAutoTCP follows "-t auto" through the scans of a namespace whose
// listeners come and go: host listeners of both families open and close
// with them, gopasst's own sockets never count, and the log names TCP.
func TestAutoTCP(t *testing.T) {
	logs := captureLog(t)
	socks := &fakeSockets{}
	eng := &fakeEngine{own: map[uint64]bool{99: true}, open: map[fwd.Forward]bool{}}
	a := &autoForwarder{proto: fwd.TCP, rules: autoscan.RulesFor(&conf.Forward{Mode: conf.FwdAuto}), tables: socks}
	r := a.start(eng, true, true)

	r.step()
	if f := eng.forwards(); len(f) != 0 {
		t.Fatalf("nothing listens, yet forwards %v", f)
	}
	socks.socks = []autoscan.Socket{listening(8080, 1), listening(9090, 99)}
	r.step()
	want := []fwd.Forward{
		{Proto: fwd.TCP, Addr: netip.IPv4Unspecified(), Port: 8080, ToPort: 8080},
		{Proto: fwd.TCP, Addr: netip.IPv6Unspecified(), Port: 8080, ToPort: 8080},
	}
	if f := eng.forwards(); !slices.Equal(f, want) {
		t.Fatalf("forwards %v, want %v (not 9090, gopasst's own)", f, want)
	}
	r.step()
	if eng.adds != 2 {
		t.Errorf("%d AddForward calls for one port of two families, want 2", eng.adds)
	}
	socks.err = errors.New("transient")
	r.step()
	if f := eng.forwards(); !slices.Equal(f, want) {
		t.Fatalf("after a failed read: forwards %v, want %v kept", f, want)
	}
	socks.socks, socks.err = nil, nil
	r.step()
	if f := eng.forwards(); len(f) != 0 {
		t.Fatalf("the listener went, yet forwards %v", f)
	}
	for _, line := range []string{
		"TCP auto forwarding (-t): opened port 8080 -> 8080",
		"TCP auto forwarding (-t): transient",
		"TCP auto forwarding (-t): closed port 8080",
	} {
		if !strings.Contains(logs.String(), line) {
			t.Errorf("no %q in the log:\n%s", line, logs)
		}
	}
	if strings.Contains(logs.String(), "UDP") {
		t.Errorf("the TCP forwarder's log mentions UDP:\n%s", logs)
	}
}

// TestAutoSpliceUnsupported follows "-T auto" with an engine that cannot
// open the forwards (TCP before splice exists): each is tried again at
// every scan while the host listens, its failure logged once while it
// lasts and again if the port is bound anew, and nothing is closed.
func TestAutoSpliceUnsupported(t *testing.T) {
	logs := captureLog(t)
	socks := &fakeSockets{socks: []autoscan.Socket{listening(5432, 1)}}
	eng := &fakeEngine{noSplice: true, open: map[fwd.Forward]bool{}}
	a := &autoForwarder{proto: fwd.TCP, splice: true, rules: autoscan.RulesFor(&conf.Forward{Mode: conf.FwdAuto}), tables: socks}
	r := a.start(eng, true, true)
	failures := func() int { return strings.Count(logs.String(), errNoSplice.Error()) }

	for i := range 3 {
		r.step()
		if want := 2 * (i + 1); eng.adds != want {
			t.Fatalf("scan %d: %d AddForward calls, want %d (both families, every scan)", i, eng.adds, want)
		}
	}
	if n := failures(); n != 2 {
		t.Errorf("%d failures logged for one port of two families over three scans, want 2:\n%s", n, logs)
	}
	if strings.Contains(logs.String(), "opened") || strings.Contains(logs.String(), "closed") {
		t.Errorf("a forward that failed was reported open or closed:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "TCP auto forwarding (-T): ") {
		t.Errorf("failures not logged as TCP auto forwarding (-T):\n%s", logs)
	}

	socks.socks = nil
	r.step()
	if eng.adds != 6 {
		t.Errorf("%d AddForward calls after the host listener went, want still 6", eng.adds)
	}
	socks.socks = []autoscan.Socket{listening(5432, 2)}
	r.step()
	if n := failures(); n != 4 {
		t.Errorf("%d failures logged once the port was bound again, want 4:\n%s", n, logs)
	}
	if f := eng.forwards(); len(f) != 0 {
		t.Errorf("forwards %v, want none", f)
	}
}

// TestOpenSockets checks what counts for each protocol, on this process's
// own sockets: for TCP, listening TCP sockets only; for UDP, bound UDP
// sockets and, like the reference, listening TCP sockets too.
func TestOpenSockets(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Skip(err)
	}
	defer ln.Close()
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Skip(err)
	}
	defer uc.Close()
	tcpIno, err := autoscan.Inode(ln)
	if err != nil {
		t.Fatal(err)
	}
	udpIno, err := autoscan.Inode(uc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		proto    fwd.Proto
		tcp, udp bool
	}{
		{fwd.TCP, true, false},
		{fwd.UDP, true, true},
	} {
		s, err := openSockets(tc.proto, "/proc/self/net")
		if err != nil {
			t.Fatalf("%v: %v", tc.proto, err)
		}
		socks, err := s.Read()
		s.Close()
		if err != nil {
			t.Fatalf("%v: %v", tc.proto, err)
		}
		found := map[uint64]bool{}
		for _, so := range socks {
			found[so.Inode] = true
		}
		if found[tcpIno] != tc.tcp || found[udpIno] != tc.udp {
			t.Errorf("%v: TCP listener found %v, UDP socket found %v; want %v, %v",
				tc.proto, found[tcpIno], found[udpIno], tc.tcp, tc.udp)
		}
	}
}
