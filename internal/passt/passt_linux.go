// Package passt runs gopasst in passt mode: it serves one qemu guest at a
// time over a UNIX stream socket.
//
// # Theory of operation
//
// qemu (7.2 and later) connects to the socket with
// "-netdev stream,...,addr.type=unix,addr.path=SOCKET" and exchanges
// Ethernet frames, each preceded by its 32-bit big-endian length
// (tap.Stream). The guest is not configured in advance: it learns its
// address, gateway, resolvers and MTU from gopasst's DHCP server, its IPv6
// prefix from router advertisements (SLAAC) and its IPv6 address also from
// DHCPv6 — all copied from the host (package netcfg). From there on, UDP
// works exactly as in pasta mode: the same engine, flows and forwarding
// rules; only the endpoint differs.
//
// When the guest disconnects, gopasst waits for the next one, or exits with
// -1 (--one-off) or -F (a socket passed in by the parent).
//
// Once the socket listens, gopasst confines itself (package sandbox)
// before going to the background: another user if started as root, an
// empty root directory, no capabilities, a seccomp allow-list. Accepting
// the next guest needs none of what it loses.
package passt

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/ctl"
	"github.com/gopasst/gopasst/internal/daemon"
	"github.com/gopasst/gopasst/internal/engine"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/pcap"
	"github.com/gopasst/gopasst/internal/sandbox"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
)

// Run runs passt mode with cfg, serving protos, and returns the process
// exit status.
func Run(cfg *conf.Config, protos []engine.Protocol) int {
	sb, err := sandbox.New(sandbox.Config{Mode: sandbox.Passt, RunAs: cfg.RunAs, Disabled: cfg.NoSandbox})
	if err != nil {
		log.Errorf("%v", err)
		return 1
	}
	if !cfg.Foreground && !daemon.InBackground() {
		return daemon.Background()
	}
	if err := run(cfg, sb, protos); err != nil {
		log.Errorf("%v", err)
		return 1
	}
	return 0
}

func run(cfg *conf.Config, sb *sandbox.Sandbox, protos []engine.Protocol) error {
	defer sb.Close()
	daemon.RaiseNofile()
	n, err := netcfg.Derive(cfg)
	if err != nil {
		return err
	}
	var eng *engine.Engine
	stream, err := tap.ListenStream(tap.StreamConfig{
		Path: cfg.Socket, FD: cfg.FD, OneOff: cfg.OneOff,
		OnConnect: func() { log.Infof("guest connected") },
		OnDisconnect: func() {
			log.Infof("guest disconnected")
			if eng != nil {
				eng.Guest.ForgetMAC()
				eng.GuestGone()
			}
		},
	})
	if err != nil {
		return fmt.Errorf("guest socket: %w", err)
	}
	defer stream.Close()
	sb.RemoveAtExit(stream.Path())
	st := &stats.Counters{}
	ep, closeCapture, err := pcap.Open(stream, cfg.PcapFile)
	if err != nil {
		return err
	}
	defer closeCapture()
	eng, err = engine.Build(ep, n, cfg, st, nil, protos)
	if err != nil {
		return err
	}
	if cfg.FD < 0 {
		log.Infof("UNIX domain socket bound at %s", stream.Path())
		log.Infof("Start qemu (7.2 or later) with:\n    qemu-system-x86_64 ... -device virtio-net-pci,netdev=s -netdev stream,id=s,server=off,addr.type=unix,addr.path=%s", stream.Path())
	}
	log.Infof("Outbound interface: %s", n.HostIfname)
	n.Log()
	// The control socket (-c), bound before the sandbox.
	ctlSrv, err := ctl.Start(cfg, eng, false)
	if err != nil {
		return err
	}
	defer ctlSrv.Close()
	sb.RemoveAtExit(cfg.ConfPath)
	removePID, err := daemon.WritePID(cfg.PIDFile)
	if err != nil {
		return err
	}
	defer removePID()
	sb.RemoveAtExit(cfg.PIDFile)
	if err := sb.Apply(); err != nil {
		return err
	}
	if daemon.InBackground() {
		daemon.Ready()
	}

	defer st.DumpOnSIGUSR1()()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- eng.Run() }()
	select {
	case err = <-done:
	case sig := <-sigs:
		log.Infof("%v: exiting", sig)
		eng.Close()
		err = <-done
	}
	if log.Enabled(log.LevelDebug) {
		log.Debugf("counters:\n%s", st)
	}
	if errors.Is(err, tap.ErrClosed) {
		err = nil
	}
	return err
}
