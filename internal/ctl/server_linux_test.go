package ctl

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/stats"
)

func startServer(t *testing.T) (*Server, *fakeEngine, string) {
	t.Helper()
	e := newFake()
	flows := flow.NewTable(16)
	i, f, err := flows.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	f.SetIni(flow.TypeTCP, flow.PIFHost, flow.Side{EAddr: netip.MustParseAddr("127.0.0.1"), EPort: 40000,
		FAddr: netip.MustParseAddr("127.0.0.1"), FPort: 7000})
	f.SetTgt(flow.PIFTap, flow.Side{EAddr: netip.MustParseAddr("192.0.2.2"), EPort: 7000,
		FAddr: netip.MustParseAddr("192.0.2.1"), FPort: 40000})
	if err := flows.Activate(i); err != nil {
		t.Fatal(err)
	}
	st := &stats.Counters{}
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Listen(path, Config{Mode: conf.ModePasst, Eng: e, IPv4: true, Flows: flows, Stats: st,
		Ephemeral: conf.DefaultEphemeral, TCP: mustForward(t, "7000", 't', conf.ModePasst)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	openStart(t, s.state, e)
	return s, e, path
}

func TestServer(t *testing.T) {
	s, e, path := startServer(t)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v", fi.Mode(), err)
	}
	do := func(op Op, arg string) (string, error) {
		t.Helper()
		cl, err := Dial(path, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.Do(op, arg)
	}
	cl, err := Dial(path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(cl.Tables) != 1 || cl.Tables[0].Name != "HOST" || len(cl.Tables[0].Rules) != 1 ||
		cl.Tables[0].Caps != CapIPv4|CapTCP|CapUDP|CapIfname {
		t.Fatalf("tables %+v", cl.Tables)
	}
	cl.Close()

	if out, err := do(OpAdd, "-u 5353:53"); err != nil || !strings.Contains(out, "UDP [*]:5353  =>  53") {
		t.Fatalf("add: %q, %v", out, err)
	}
	if got := e.ports(); got != "t4:7000>7000 u4:5353>53" {
		t.Fatalf("ports %q", got)
	}
	if _, err := do(OpAdd, "-u 5353"); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("overlap: %v", err)
	}
	if _, err := do(OpAdd, "-T 1"); err == nil || !strings.Contains(err.Error(), "no namespace side") {
		t.Fatalf("-T in passt: %v", err)
	}
	if out, err := do(OpFlows, ""); err != nil || !strings.Contains(out, "1 flows") || !strings.Contains(out, "40000") {
		t.Fatalf("flows: %q, %v", out, err)
	}
	if _, err := do(OpFlows, "x"); err == nil {
		t.Fatal("flows with an argument accepted")
	}
	if out, err := do(OpStats, ""); err != nil || !strings.Contains(out, "control clients served") {
		t.Fatalf("stats: %q, %v", out, err)
	}
	if _, err := do(OpStatus, ""); err == nil {
		t.Fatal("status without update accepted")
	}
	if _, err := do(Op(99), ""); err == nil || !strings.Contains(err.Error(), "unknown request") {
		t.Fatalf("unknown op: %v", err)
	}

	// A newer extension version is refused with a reason.
	cl, err = Dial(path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := AppendRequest(nil, Request{Version: ExtVersion + 1, Op: OpFlows})
	if _, err := cl.c.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.readReply(); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("newer version: %v", err)
	}
	cl.Close()

	// pesto's way, with the outcome asked for.
	cl, err = Dial(path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rules := cl.Tables[0].Rules
	if err := cl.Update([]Update{{PIF: PIFHost, Rules: rules[:1]}}); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if got := e.ports(); got != "t4:7000>7000" {
		t.Fatalf("after update %q", got)
	}
	cl, _ = Dial(path, 5*time.Second)
	bad := rules[0]
	bad.Auto = true
	if err := cl.Update([]Update{{PIF: PIFHost, Rules: []Rule{bad}}}); err == nil {
		t.Fatal("auto rule in passt accepted")
	}
	cl.Close()

	// Garbage after the tables: the server drops the client and goes on.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte{PIFHost, 0xff, 0xff, 0xff, 0xff})
	c.Close()
	if _, err := do(OpFlows, ""); err != nil {
		t.Fatalf("after garbage: %v", err)
	}

	// Another user is closed at once.
	s.uid.Add(1)
	if _, err := Dial(path, 5*time.Second); err == nil || !strings.Contains(err.Error(), "before its greeting") {
		t.Fatalf("other uid: %v", err)
	}
	if s.Refused() != 1 {
		t.Errorf("refused %d", s.Refused())
	}
	s.uid.Add(^uint32(0))

	s.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestListenRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Eng: newFake(), IPv4: true}
	if _, err := Listen(file, cfg); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
	live := filepath.Join(dir, "live")
	s, err := Listen(live, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(live, cfg); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("live socket: %v", err)
	}
	s.Close()
	// A socket left behind (nothing listens) is replaced.
	stale := filepath.Join(dir, "stale")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s, err = Listen(stale, cfg)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	s.Close()
}
