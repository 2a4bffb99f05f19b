package ctl

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
)

// fakeEngine records the listening sockets open; ports in busy cannot be
// bound.
type fakeEngine struct {
	mu    sync.Mutex
	open  map[fwd.Forward]bool
	busy  map[uint16]bool
	noUDP bool
}

func newFake() *fakeEngine {
	return &fakeEngine{open: map[fwd.Forward]bool{}, busy: map[uint16]bool{}}
}

func (e *fakeEngine) AddForward(f fwd.Forward) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.busy[f.Port] || e.open[f] {
		return fmt.Errorf("%s: address already in use", f)
	}
	e.open[f] = true
	return nil
}

func (e *fakeEngine) RemoveForward(f fwd.Forward) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.open[f] {
		return errors.New("not forwarded")
	}
	delete(e.open, f)
	return nil
}

func (e *fakeEngine) Serves(p fwd.Proto) bool  { return p == fwd.TCP || !e.noUDP }
func (e *fakeEngine) Splices(p fwd.Proto) bool { return e.Serves(p) }

// ports lists the open sockets as "t4:8080>80" (protocol, family, splice
// "T"/"U"), sorted.
func (e *fakeEngine) ports() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for f := range maps.Keys(e.open) {
		p := "t"
		if f.Proto == fwd.UDP {
			p = "u"
		}
		if f.Splice {
			p = strings.ToUpper(p)
		}
		fam := "4"
		if f.Addr.Is6() {
			fam = "6"
		}
		out = append(out, fmt.Sprintf("%s%s:%d>%d", p, fam, f.Port, f.ToPort))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func mustForward(t *testing.T, spec string, opt byte, mode conf.Mode) conf.Forward {
	t.Helper()
	f, err := conf.ParseForward(spec, conf.SpecOptions{Opt: opt, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// newTestState is pasta with -t 7000 and -U auto, both families, with
// the command line's sockets open.
func newTestState(t *testing.T) (*state, *fakeEngine) {
	e := newFake()
	cfg := Config{Mode: conf.ModePasta, Eng: e, IPv4: true, IPv6: true, Splice: true,
		Ephemeral: conf.DefaultEphemeral,
		TCP:       mustForward(t, "7000", 't', conf.ModePasta),
		UDPNS:     mustForward(t, "auto", 'U', conf.ModePasta),
	}
	s := newState(cfg)
	openStart(t, s, e)
	return s, e
}

// openStart opens the command line's sockets, as engine.Build does.
func openStart(t *testing.T, s *state, e *fakeEngine) {
	t.Helper()
	for _, tb := range s.tables {
		for _, en := range tb.entries {
			for _, f := range en.fwds {
				if err := e.AddForward(f); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func TestAddDelete(t *testing.T) {
	s, e := newTestState(t)
	if got, want := e.ports(), "t4:7000>7000 t6:7000>7000"; got != want {
		t.Fatalf("at start %q, want %q", got, want)
	}
	if _, err := s.add("-t 8080:80"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.add("-u 0.0.0.0/5353:53"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.add("-T9000"); err != nil {
		t.Fatal(err)
	}
	want := "T4:9000>9000 T6:9000>9000 t4:7000>7000 t4:8080>80 t6:7000>7000 t6:8080>80 u4:5353>53"
	if got := e.ports(); got != want {
		t.Fatalf("after adding %q, want %q", got, want)
	}
	tabs := s.Tables()
	if len(tabs) != 2 || len(tabs[0].Rules) != 3 || tabs[1].Name != "SPLICE" || len(tabs[1].Rules) != 3 {
		t.Fatalf("tables %+v", tabs)
	}
	if _, err := s.del("-t 8080:80"); err != nil {
		t.Fatal(err)
	}
	want = "T4:9000>9000 T6:9000>9000 t4:7000>7000 t6:7000>7000 u4:5353>53"
	if got := e.ports(); got != want {
		t.Fatalf("after deleting %q, want %q", got, want)
	}
}

// TestRefusedChangesNothing checks that every refused request leaves the
// tables and the sockets as they were, with a reason.
func TestRefusedChangesNothing(t *testing.T) {
	s, e := newTestState(t)
	if _, err := s.add("-t 8000-8002"); err != nil {
		t.Fatal(err)
	}
	e.busy[9001] = true
	before, tables := e.ports(), s.Tables()
	for _, c := range []struct{ op, arg, why string }{
		{"add", "-t 9000-9002", "in use"},    // the middle port is busy: the others are closed again
		{"add", "-t 7000", "overlaps"},       // the command line's rule
		{"add", "-t 8001", "overlaps"},       // inside a rule
		{"add", "-U 5000", "overlaps"},       // the auto rule covers it
		{"add", "-t auto", "fixed at start"}, // auto
		{"add", "-t 70000", "out of range"},  // the parser's refusal
		{"add", "-x 1", "expected -t"},       // no such option
		{"add", "-t", "missing"},             // no spec
		{"add", "-t none", "no ports"},       // nothing
		{"add", "-T 127.0.0.1/99", "not allowed"},
		{"del", "-t 8001", "does not match"}, // part of a rule
		{"del", "-t 6000", "no rule"},        // not there
		{"del", "-t 8000-8002:9000-9002", "does not match"},
		{"del", "-U auto", "fixed at start"},
	} {
		f := s.add
		if c.op == "del" {
			f = s.del
		}
		_, err := f(c.arg)
		if err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s %s: %v, want an error with %q", c.op, c.arg, err, c.why)
		}
		if got := e.ports(); got != before {
			t.Errorf("%s %s: sockets %q, were %q", c.op, c.arg, got, before)
		}
		if got := s.Tables(); fmt.Sprint(got) != fmt.Sprint(tables) {
			t.Errorf("%s %s: tables changed: %v", c.op, c.arg, got)
		}
	}
}

// TestReplace is pesto's way: whole tables.
func TestReplace(t *testing.T) {
	s, e := newTestState(t)
	host := s.Tables()[0].Rules
	keep := host[0] // -t 7000
	add := rule(fwd.UDP, "", 6000, 6001, 7000)
	if err := s.replace([]Update{{PIF: PIFHost, Rules: []Rule{keep, add}}}); err != nil {
		t.Fatal(err)
	}
	if got, want := e.ports(), "t4:7000>7000 t6:7000>7000 u4:6000>7000 u4:6001>7001 u6:6000>7000 u6:6001>7001"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	// The same port, another target: the old socket goes first.
	moved := add
	moved.ToFirst = 8000
	if err := s.replace([]Update{{PIF: PIFHost, Rules: []Rule{moved, keep}}}); err != nil {
		t.Fatal(err)
	}
	if got, want := e.ports(), "t4:7000>7000 t6:7000>7000 u4:6000>8000 u4:6001>8001 u6:6000>8000 u6:6001>8001"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	before := e.ports()
	for name, us := range map[string][]Update{
		"auto removed":  {{PIF: PIFSplice}},
		"no table":      {{PIF: PIFTap}},
		"overlap":       {{PIF: PIFHost, Rules: []Rule{keep, rule(fwd.TCP, "::", 7000, 7000, 1)}}},
		"target":        {{PIF: PIFHost, Rules: []Rule{{Proto: fwd.TCP, PortRule: conf.PortRule{Addr: mustAddr("192.0.2.1"), First: 1, Last: 1, ToFirst: 1, ToAddr: mustAddr("192.0.2.9")}}}}},
		"splice ifname": {{PIF: PIFSplice, Rules: append(s.Tables()[1].Rules, Rule{Proto: fwd.TCP, PortRule: conf.PortRule{Ifname: "eth0", First: 5, Last: 5, ToFirst: 5}})}},
	} {
		if err := s.replace(us); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if got := e.ports(); got != before {
			t.Errorf("%s: sockets %q, were %q", name, got, before)
		}
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
