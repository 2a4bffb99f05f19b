// Package pasta runs gopasst in pasta mode: it gives a network namespace,
// new or existing, a tap device whose traffic gopasst translates to host
// sockets.
//
// # Theory of operation
//
// Start-up, in order:
//
//  1. Privileges. Unprivileged, gopasst re-executes itself inside a new
//     user namespace where it is root (or, to join an existing namespace,
//     inside that namespace's owner); it stays in the host's network
//     namespace, so its sockets are ordinary host sockets. As root none of
//     this is needed.
//  2. Host view. The uplink (the interface of the default route, or -i)
//     gives the addresses, gateways and interface name the namespace copies.
//  3. Namespace. A new network namespace, or the target's; the tap device is
//     created inside it, and with --config-net it gets the host's
//     addresses and default routes over netlink.
//  4. Data path. The UDP engine opens the -u listening sockets; the tap
//     reader and the socket loop start (package engine).
//  5. The command (default: the user's shell) is started inside the
//     namespace; gopasst exits with its exit status when it ends. Joining
//     an existing namespace, gopasst instead runs until the namespace goes
//     away (unless --no-netns-quit) or it is told to stop: inotify on the
//     directory of a namespace file, a pidfd on a process whose namespace
//     it is, tell at once (see targetWatch).
//  6. Sandbox. Once the command runs (or, attached to a namespace, before
//     going to the background), gopasst confines itself (package
//     sandbox): another user if started as root, an empty root directory,
//     no capabilities (but CAP_NET_BIND_SERVICE when it stays root in its
//     own user namespace), a seccomp allow-list. SIGTERM and SIGHUP still
//     reach the command, through the sandbox's helper if need be.
//     Everything the data path rereads later (the "auto" forwarding
//     tables, the namespace file it watches, the inotify instance or
//     pidfd) is opened before.
package pasta

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/ctl"
	"github.com/gopasst/gopasst/internal/daemon"
	"github.com/gopasst/gopasst/internal/engine"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/netns"
	"github.com/gopasst/gopasst/internal/pcap"
	"github.com/gopasst/gopasst/internal/sandbox"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
)

// Run runs pasta mode with cfg, serving protos, and returns the process
// exit status.
func Run(cfg *conf.Config, protos []engine.Protocol) int {
	// Checked before anything else, --runas included, also by the
	// unprivileged parent of a user namespace.
	sb, err := sandbox.New(sandbox.Config{Mode: sandbox.Pasta, RunAs: cfg.RunAs, Disabled: cfg.NoSandbox,
		InOwnUserNS: netns.InUserNSChild()})
	if err != nil {
		log.Errorf("%v", err)
		return 1
	}
	if targetNetns(cfg) == "" {
		// The command owns the terminal: like the reference, say
		// nothing unless asked to.
		if !cfg.Debug {
			log.SetLevel(log.LevelWarn)
		}
	} else if !cfg.Foreground && !daemon.InBackground() {
		return daemon.Background()
	}
	if code, done, err := enterUserNS(cfg); err != nil {
		log.Errorf("%v", err)
		return 1
	} else if done {
		return code
	}
	code, err := run(cfg, sb, protos)
	if err != nil {
		log.Errorf("%v", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// enterUserNS re-executes gopasst in the right user namespace when it is
// not root.
func enterUserNS(cfg *conf.Config) (int, bool, error) {
	if os.Geteuid() == 0 || netns.InUserNSChild() {
		return 0, false, nil
	}
	target := targetNetns(cfg)
	if target == "" {
		return netns.EnterUserNS()
	}
	userns := cfg.Userns
	if userns == "" && cfg.TargetPID > 0 && !cfg.NetnsOnly {
		userns = fmt.Sprintf("/proc/%d/ns/user", cfg.TargetPID)
	}
	if userns == "" {
		// --netns-only (implied by a path without --userns): the
		// caller must already be allowed to enter the namespace.
		return 0, false, nil
	}
	return netns.JoinUserNS(userns)
}

// targetNetns is the path of the namespace to join, "" to create one.
func targetNetns(cfg *conf.Config) string {
	switch {
	case cfg.Netns != "":
		return cfg.Netns
	case cfg.TargetPID > 0:
		return fmt.Sprintf("/proc/%d/ns/net", cfg.TargetPID)
	}
	return ""
}

func run(cfg *conf.Config, sb *sandbox.Sandbox, protos []engine.Protocol) (int, error) {
	defer sb.Close()
	daemon.RaiseNofile()
	// Unset forwarding directions get pasta's default, "auto".
	eph, err := conf.SystemEphemeralRange()
	if err != nil {
		eph = conf.DefaultEphemeral
	}
	if err := cfg.ApplyForwardDefaults(eph); err != nil {
		return 1, err
	}
	n, err := netcfg.Derive(cfg)
	if err != nil {
		return 1, err
	}
	var ns *netns.NS
	if path := targetNetns(cfg); path != "" {
		ns, err = netns.Open(path)
	} else {
		ns, err = netns.New()
		if err == nil && !cfg.NoICMP {
			openPingSockets(ns)
		}
	}
	if err != nil {
		return 1, fmt.Errorf("network namespace: %w", err)
	}
	defer ns.Close()

	// Offloads need the virtio-net header; a capture wants frames as
	// the guest sees them, one datagram each.
	offload := !cfg.NoOffload && cfg.PcapFile == ""
	tapfd, _, err := ns.CreateTap(n.Ifname, n.MTU, cfg.NSMAC, offload)
	if err != nil {
		return 1, fmt.Errorf("tap device %s: %w", n.Ifname, err)
	}
	ifc := netns.IfConfig{Ifname: n.Ifname, MTU: n.MTU, Up: cfg.ConfigNet}
	if cfg.ConfigNet {
		if n.IPv4 {
			ifc.Addr4, ifc.Gateway4 = n.Addr4, n.Gateway4
		}
		if n.IPv6 {
			ifc.Addr6, ifc.Gateway6 = n.Addr6, n.Gateway6
		}
	}
	if err := ns.Configure(ifc); err != nil {
		return 1, fmt.Errorf("configuring namespace: %w", err)
	}

	var dev *tap.Device
	if offload {
		dev, err = tap.NewVnetDevice(tapfd, true)
	} else {
		dev, err = tap.NewDevice(tapfd)
	}
	if err != nil {
		return 1, err
	}
	if offload && !dev.Offloads() {
		log.Debugf("tap: the kernel refused UDP segmentation offload: plain frames")
	}
	st := &stats.Counters{}
	var nsSocket engine.SocketFunc
	if !cfg.NoSplice {
		factory, err := ns.SocketFactory()
		if err != nil {
			return 1, fmt.Errorf("namespace sockets: %w", err)
		}
		defer factory.Close()
		nsSocket = factory.Socket
	}
	ep, closeCapture, err := pcap.Open(dev, cfg.PcapFile)
	if err != nil {
		return 1, err
	}
	defer closeCapture()
	eng, err := engine.Build(ep, n, cfg, st, nsSocket, protos)
	if err != nil {
		return 1, err
	}
	log.Infof("Outbound interface: %s, namespace interface: %s, namespace: %s", orNone(n.HostIfname), n.Ifname, ns.Path())
	n.Log()
	removePID, err := daemon.WritePID(cfg.PIDFile)
	if err != nil {
		return 1, err
	}
	defer removePID()
	sb.RemoveAtExit(cfg.PIDFile)

	// "auto" forwarding of each protocol the engine serves: -t and -u
	// towards the namespace, and, with sockets in the namespace to
	// listen on (not --no-splice), -T and -U towards the host.
	var autos []*autoForwarder
	for _, d := range []struct {
		proto   fwd.Proto
		out, in *conf.Forward
		opt     byte
	}{
		{fwd.TCP, &cfg.TCPFwd, &cfg.TCPNSFwd, 'T'},
		{fwd.UDP, &cfg.UDPFwd, &cfg.UDPNSFwd, 'U'},
	} {
		if !eng.Serves(d.proto) {
			continue
		}
		autos = append(autos, newAutoForwarder(ns, d.proto, d.out, false))
		switch {
		case nsSocket == nil:
		case eng.Splices(d.proto):
			autos = append(autos, newAutoForwarder(ns, d.proto, d.in, true))
		case d.in.Mode == conf.FwdAuto:
			log.Debugf("%s auto forwarding (-%c): not served yet (no %s splice)", d.proto, d.opt, d.proto)
		}
	}
	engErr := make(chan error, 1)
	go func() { engErr <- eng.Run() }()
	stopAuto := make(chan struct{})
	var autoDone sync.WaitGroup
	for _, a := range autos {
		if a != nil {
			autoDone.Go(func() { a.run(eng, n.IPv4, n.IPv6, stopAuto) })
		}
	}
	defer func() { close(stopAuto); autoDone.Wait() }()
	defer func() {
		eng.Close()
		<-engErr
		if log.Enabled(log.LevelDebug) {
			log.Debugf("counters:\n%s", st)
		}
	}()

	// The control socket (-c), bound before the sandbox.
	ctlSrv, err := ctl.Start(cfg, eng, nsSocket != nil)
	if err != nil {
		return 1, err
	}
	defer ctlSrv.Close()
	sb.RemoveAtExit(cfg.ConfPath)

	defer st.DumpOnSIGUSR1()()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	if targetNetns(cfg) != "" {
		watch, err := watchTarget(cfg)
		if err != nil {
			return 1, err
		}
		defer watch.close()
		if err := sb.Apply(); err != nil {
			return 1, err
		}
		if daemon.InBackground() {
			daemon.Ready()
		}
		return waitTarget(watch, engErr, sigs)
	}
	return runCommand(cfg, ns, sb, engErr, sigs)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// runCommand starts the command in the namespace, applies the sandbox and
// waits for the command.
func runCommand(cfg *conf.Config, ns *netns.NS, sb *sandbox.Sandbox, engErr chan error, sigs chan os.Signal) (int, error) {
	argv := cfg.Command
	if len(argv) == 0 {
		sh := os.Getenv("SHELL")
		if sh == "" {
			sh = "/bin/sh"
		}
		argv = []string{sh}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 1, fmt.Errorf("command %q: %w", argv[0], err)
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	if len(cfg.Command) == 0 {
		cmd.Args = []string{"-" + filepath.Base(path)} // a login shell, as the reference starts it
	}
	if err := ns.StartCommand(cmd); err != nil {
		return 1, fmt.Errorf("starting %q: %w", argv[0], err)
	}
	sb.SetCommand(cmd.Process)
	if err := sb.Apply(); err != nil {
		_ = sb.Signal(cmd.Process, syscall.SIGKILL)
		_ = cmd.Wait()
		return 1, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var kill <-chan time.Time
	for {
		select {
		case err := <-done:
			return daemon.ExitStatus(cmd, err), nil
		case err := <-engErr:
			engErr <- err // for the deferred wait
			_ = sb.Signal(cmd.Process, syscall.SIGKILL)
			<-done
			return 1, fmt.Errorf("data path stopped: %v", err)
		case sig := <-sigs:
			if sig == syscall.SIGINT {
				// The terminal sent it to the command too: its
				// choice whether to end.
				continue
			}
			log.Infof("%v: stopping the command", sig)
			_ = sb.Signal(cmd.Process, sig.(syscall.Signal))
			kill = time.After(2 * time.Second)
		case <-kill:
			_ = sb.Signal(cmd.Process, syscall.SIGKILL)
		}
	}
}

// waitTarget serves an existing namespace until it disappears or a signal.
func waitTarget(watch *targetWatch, engErr chan error, sigs chan os.Signal) (int, error) {
	// The watch (inotify, pidfd) says at once; the look-up every second
	// is for what it cannot see, or when it could not be had.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case exited := <-watch.events:
			if exited || watch.gone() {
				log.Infof("Namespace %s is gone, exiting", watch.path)
				return 0, nil
			}
		case err := <-engErr:
			engErr <- err
			return 1, fmt.Errorf("data path stopped: %v", err)
		case sig := <-sigs:
			log.Infof("%v: exiting", sig)
			return 0, nil
		case <-tick.C:
			if watch.gone() {
				log.Infof("Namespace %s is gone, exiting", watch.path)
				return 0, nil
			}
		}
	}
}

// openPingSockets lets root of a namespace pasta created open ping sockets
// (net.ipv4.ping_group_range is per network namespace, and closed in a new
// one), so that ping works there without raw sockets, as with the
// reference.
func openPingSockets(ns *netns.NS) {
	err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 0"), 0)
	})
	if err != nil {
		log.Debugf("namespace: ping sockets stay closed: %v", err)
	}
}
