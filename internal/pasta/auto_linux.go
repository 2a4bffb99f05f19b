package pasta

import (
	"strings"
	"time"

	"github.com/gopasst/gopasst/internal/autoscan"
	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/netns"
)

// autoInterval is how often the ports bound on the other side are read,
// as the reference does.
const autoInterval = time.Second

// autoForwarder keeps listening sockets open for the "auto" ports of one
// protocol and direction: for -t and -u (splice false), host sockets for
// the ports bound in the namespace; for -T and -U (splice true), sockets
// on the namespace's loopback for the ports bound on the host. For TCP,
// listening TCP sockets count; for UDP, bound UDP sockets and, like the
// reference, listening TCP sockets too (iperf3 and friends announce UDP
// ports that way). gopasst's own sockets never count, so a port forwarded
// one way is not forwarded back.
//
// What it reads is opened by newAutoForwarder, before the sandbox: a
// sock_diag socket, or, where the kernel has no sock_diag for the
// protocols read, the procfs socket tables. gopasst's own sockets are
// those the engine reports (engine.Engine.OwnInodes).
type autoForwarder struct {
	proto  fwd.Proto
	rules  []conf.PortRule
	splice bool
	tables socketReader
}

// forwarder is what an autoForwarder changes: the engine's forwards, and
// the sockets it holds itself.
type forwarder interface {
	fwd.Forwarder
	OwnInodes() map[uint64]bool
}

// socketReader is autoscan.Diag or, failing that, autoscan.Tables.
type socketReader interface {
	Read() ([]autoscan.Socket, error)
	Close() error
}

// openSockets opens a socketReader of the sockets that count for proto's
// forwards, for the calling thread's network namespace; procDir is the
// procfs directory that describes it.
func openSockets(proto fwd.Proto, procDir string) (socketReader, error) {
	udp := proto == fwd.UDP // TCP listeners count for both
	d, err := autoscan.OpenDiag(udp, true)
	if err == nil {
		return d, nil
	}
	log.Debugf("%s auto forwarding: %v: reading %s instead", proto, err, procDir)
	return autoscan.OpenTables(procDir, udp, true)
}

// newAutoForwarder opens what the forwards of f, for proto, need, or
// returns nil if there are none or they cannot work (with a warning).
func newAutoForwarder(ns *netns.NS, proto fwd.Proto, f *conf.Forward, splice bool) *autoForwarder {
	rules := autoscan.RulesFor(f)
	if len(rules) == 0 {
		return nil
	}
	var tables socketReader
	var err error
	if splice {
		// The host's sockets: only threads locked in ns.Do leave the
		// host's network namespace, and the main thread never does.
		tables, err = openSockets(proto, "/proc/self/net")
	} else {
		err = ns.Do(func() error {
			var err error
			// Opened from a thread inside the namespace, the netlink
			// socket and the files keep showing it from anywhere.
			tables, err = openSockets(proto, "/proc/thread-self/net")
			return err
		})
	}
	if err != nil {
		log.Warnf("%s auto forwarding disabled: %v", proto, err)
		return nil
	}
	return &autoForwarder{proto: proto, rules: rules, splice: splice, tables: tables}
}

// option is the command-line option of a's direction: -t, -T, -u or -U.
func (a *autoForwarder) option() string {
	opt := "-u"
	if a.proto == fwd.TCP {
		opt = "-t"
	}
	if a.splice {
		opt = strings.ToUpper(opt)
	}
	return opt
}

// run keeps the forwards up to date until stop is closed, then closes
// what newAutoForwarder opened.
func (a *autoForwarder) run(eng forwarder, v4, v6 bool, stop <-chan struct{}) {
	defer a.tables.Close()
	s := a.start(eng, v4, v6)
	tick := time.NewTicker(autoInterval)
	defer tick.Stop()
	for {
		s.step()
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// autoRun is the state of a running autoForwarder.
type autoRun struct {
	a      *autoForwarder
	eng    forwarder
	v4, v6 bool
	sc     *autoscan.Scanner
	// failed holds the forwards that could not be opened at the last
	// scan, whose errors were logged.
	failed map[autoscan.Fwd]bool
	// what and opt start the log messages.
	what, opt string
}

// start returns the state of a run that changes eng's forwards, for the
// families v4 and v6, starting with none.
func (a *autoForwarder) start(eng forwarder, v4, v6 bool) *autoRun {
	sc := autoscan.NewScanner(a.rules, a.tables.Read)
	sc.Own = func() (map[uint64]bool, error) { return eng.OwnInodes(), nil }
	return &autoRun{
		a: a, eng: eng, v4: v4, v6: v6, sc: sc,
		failed: map[autoscan.Fwd]bool{},
		what:   a.proto.String() + " auto forwarding", opt: a.option(),
	}
}

// step rescans, closes the forwards no longer wanted and opens the new
// ones. A forward none of whose listeners could be opened (the port is
// taken, or the engine cannot serve it, as for TCP splice before it
// exists) is logged once, at debug level, and tried again at every step
// while it is still wanted.
func (r *autoRun) step() {
	open, closing, err := r.sc.Step()
	if err != nil {
		log.Debugf("%s (%s): %v", r.what, r.opt, err)
	}
	for _, c := range closing {
		for _, f := range r.listeners(c) {
			_ = r.eng.RemoveForward(f)
		}
		log.Debugf("%s (%s): closed port %d", r.what, r.opt, c.Port)
	}
	failed := map[autoscan.Fwd]bool{}
	for _, o := range open {
		ok := false
		for _, f := range r.listeners(o) {
			if err := r.eng.AddForward(f); err != nil {
				if !r.failed[o] {
					log.Debugf("%s (%s): %v", r.what, r.opt, err)
				}
			} else {
				ok = true
			}
		}
		if !ok {
			// Nothing could be opened: try again at the next
			// step, quietly.
			failed[o] = true
			r.sc.Forget(o)
			continue
		}
		log.Debugf("%s (%s): opened port %d -> %d", r.what, r.opt, o.Port, o.ToPort)
	}
	if err == nil {
		// A forward no longer wanted is forgotten: if its port is
		// bound again later, a failure is logged again.
		r.failed = failed
	}
}

// listeners expands f to the listening sockets of the engine's forwards.
func (r *autoRun) listeners(f autoscan.Fwd) []fwd.Forward {
	return netcfg.Listeners(r.a.proto, f.Addr, f.Ifname, f.Port, f.ToPort, r.v4, r.v6, r.a.splice)
}
