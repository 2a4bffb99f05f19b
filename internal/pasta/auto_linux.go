package pasta

import (
	"time"

	"github.com/gopasst/gopasst/internal/autoscan"
	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/netns"
)

// autoInterval is how often the namespace's bound ports are read, as the
// reference does.
const autoInterval = time.Second

// autoForwarder keeps listening sockets open for the "auto" ports of one
// direction: for -u (splice false), host sockets for the ports bound in
// the namespace; for -U (splice true), sockets on the namespace's loopback
// for the ports bound on the host. Like the reference, TCP listeners count
// too (iperf3 and friends announce UDP ports that way). gopasst's own
// sockets never count, so a port forwarded one way is not forwarded back.
//
// What it reads is opened by newAutoForwarder, before the sandbox: a
// sock_diag socket, or, where the kernel has no UDP sock_diag, the procfs
// socket tables. gopasst's own sockets are those the UDP engine reports
// (engine.Engine.OwnInodes).
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

// openSockets opens a socketReader for the calling thread's network
// namespace; procDir is the procfs directory that describes it.
func openSockets(procDir string) (socketReader, error) {
	d, err := autoscan.OpenDiag()
	if err == nil {
		return d, nil
	}
	log.Debugf("UDP auto forwarding: %v: reading %s instead", err, procDir)
	return autoscan.OpenTables(procDir, true, true)
}

// newAutoForwarder opens what the forwards of f need, or returns nil if
// there are none or they cannot work (with a warning).
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
		tables, err = openSockets("/proc/self/net")
	} else {
		err = ns.Do(func() error {
			var err error
			// Opened from a thread inside the namespace, the netlink
			// socket and the files keep showing it from anywhere.
			tables, err = openSockets("/proc/thread-self/net")
			return err
		})
	}
	if err != nil {
		log.Warnf("UDP auto forwarding disabled: %v", err)
		return nil
	}
	return &autoForwarder{proto: proto, rules: rules, splice: splice, tables: tables}
}

// run keeps the forwards up to date until stop is closed, then closes
// what newAutoForwarder opened.
func (a *autoForwarder) run(eng forwarder, v4, v6 bool, stop <-chan struct{}) {
	defer a.tables.Close()
	splice := a.splice
	dir := "-u"
	if splice {
		dir = "-U"
	}
	sc := autoscan.NewScanner(a.rules, a.tables.Read)
	sc.Own = func() (map[uint64]bool, error) { return eng.OwnInodes(), nil }
	failed := map[autoscan.Fwd]bool{}
	tick := time.NewTicker(autoInterval)
	defer tick.Stop()
	for {
		open, closing, err := sc.Step()
		if err != nil {
			log.Debugf("UDP auto forwarding: %v", err)
		}
		for _, c := range closing {
			for _, uf := range netcfg.Listeners(a.proto, c.Addr, c.Ifname, c.Port, c.ToPort, v4, v6, splice) {
				_ = eng.RemoveForward(uf)
			}
			delete(failed, c)
			log.Debugf("UDP auto forwarding (%s): closed port %d", dir, c.Port)
		}
		for _, o := range open {
			ok := false
			for _, uf := range netcfg.Listeners(a.proto, o.Addr, o.Ifname, o.Port, o.ToPort, v4, v6, splice) {
				if err := eng.AddForward(uf); err != nil {
					if !failed[o] {
						log.Debugf("UDP auto forwarding: %v", err)
					}
				} else {
					ok = true
				}
			}
			if !ok {
				// Nothing could be bound (the host port is taken):
				// try again at the next scan, quietly.
				failed[o] = true
				sc.Forget(o)
				continue
			}
			delete(failed, o)
			log.Debugf("UDP auto forwarding (%s): opened port %d -> %d", dir, o.Port, o.ToPort)
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}
