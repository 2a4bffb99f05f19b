package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// Ports of the echo servers.
const (
	hostEchoPort  = 7001 // on the host's loopback; -U forwards the namespace's
	worldEchoPort = 7002 // on the world's remote addresses
	nsEchoPort    = 7003 // in the namespace; -u forwards the host's
)

// The namespace's addresses: --config-net copies the host's.
var (
	nsAddr4 = sandbox.HostAddr4
	nsAddr6 = sandbox.HostAddr6
	lo4     = netip.MustParseAddr("127.0.0.1")
	lo6     = netip.IPv6Loopback()
)

// path is one kind of flow an agent starts: from a local address to an
// echo server, through one of gopasst's data paths.
type path struct {
	name string
	from netip.Addr
	to   netip.AddrPort
}

// rolePaths lists the flows each agent starts, and the source port range
// its workers bind from. The ranges are disjoint and below the ephemeral
// range, so that no two flows share a port (gopasst binds the namespace's
// source port on the host, and the host's loopback source port in the
// namespace) and a port comes back only minutes later, long after its
// last flow expired: a late echo can then only reach the flow it belongs
// to.
var rolePaths = map[string]struct {
	paths      []path
	portsFrom  int
	portsCount int
}{
	"ns": {[]path{
		{"ns>gw(tap)/4", nsAddr4, netip.AddrPortFrom(sandbox.GatewayAddr4, hostEchoPort)},
		{"ns>gw(tap)/6", nsAddr6, netip.AddrPortFrom(sandbox.GatewayAddr6, hostEchoPort)},
		{"ns>world(tap)/4", nsAddr4, netip.AddrPortFrom(sandbox.RemoteAddr4, worldEchoPort)},
		{"ns>world(tap)/6", nsAddr6, netip.AddrPortFrom(sandbox.RemoteAddr6, worldEchoPort)},
		{"ns>lo(splice)/4", lo4, netip.AddrPortFrom(lo4, hostEchoPort)},
		{"ns>lo(splice)/6", lo6, netip.AddrPortFrom(lo6, hostEchoPort)},
	}, 20000, 8000},
	"host": {[]path{
		{"host-lo>ns(splice)/4", lo4, netip.AddrPortFrom(lo4, nsEchoPort)},
		{"host-lo>ns(splice)/6", lo6, netip.AddrPortFrom(lo6, nsEchoPort)},
		{"host>ns(tap)/4", sandbox.HostAddr4, netip.AddrPortFrom(sandbox.HostAddr4, nsEchoPort)},
		{"host>ns(tap)/6", sandbox.HostAddr6, netip.AddrPortFrom(sandbox.HostAddr6, nsEchoPort)},
	}, 28000, 4000},
	"world": {[]path{
		{"world>ns(tap)/4", sandbox.RemoteAddr4, netip.AddrPortFrom(sandbox.HostAddr4, nsEchoPort)},
		{"world>ns(tap)/6", sandbox.RemoteAddr6, netip.AddrPortFrom(sandbox.HostAddr6, nsEchoPort)},
	}, 20000, 12000},
}

// roleServers lists the echo servers of each agent.
var roleServers = map[string][]netip.AddrPort{
	"ns":    {netip.AddrPortFrom(netip.IPv4Unspecified(), nsEchoPort), netip.AddrPortFrom(netip.IPv6Unspecified(), nsEchoPort)},
	"host":  {netip.AddrPortFrom(lo4, hostEchoPort), netip.AddrPortFrom(lo6, hostEchoPort)},
	"world": {netip.AddrPortFrom(sandbox.RemoteAddr4, worldEchoPort), netip.AddrPortFrom(sandbox.RemoteAddr6, worldEchoPort)},
}

// roleIDs number the roles in flow ids.
var roleIDs = map[string]uint64{"ns": 1, "host": 2, "world": 3}

// Control states, written by the controller to the state file.
const (
	stateRun  = "run"  // start flows
	stateStop = "stop" // stop starting flows, keep echoing
	stateExit = "exit" // print the summary and exit
)

// pathStats counts the flows and datagrams of one path (client side).
type pathStats struct {
	Name       string `json:"name"`
	Flows      uint64 `json:"flows"` // flows that sent at least one datagram
	Sent       uint64 `json:"sent"`
	Bytes      uint64 `json:"bytes"`
	Echoed     uint64 `json:"echoed"`
	Lost       uint64 `json:"lost"`
	Stray      uint64 `json:"stray"`   // a late echo of an earlier datagram of the flow
	Corrupt    uint64 `json:"corrupt"` // an echo that is not what was sent
	WrongPeer  uint64 `json:"wrong_peer"`
	Refused    uint64 `json:"refused"` // ICMP errors on connected sockets
	SendErrors uint64 `json:"send_errors"`
	BindErrors uint64 `json:"bind_errors"`
}

// serverStats counts what an echo server received.
type serverStats struct {
	Addr       string `json:"addr"`
	Received   uint64 `json:"received"`
	Corrupt    uint64 `json:"corrupt"`    // failed the datagram's own check: not echoed
	Unverified uint64 `json:"unverified"` // too short to check
}

// injectStats counts the frames the injector wrote to the tap, by the
// malformed-frame reason gopasst must count them under.
type injectStats struct {
	Malformed map[string]uint64 `json:"malformed"`
	Fragments uint64            `json:"fragments"` // first fragments of datagrams never completed
	// TCP counts the bad TCP segments by the drop counter gopasst must
	// count them under ("drop REASON").
	TCP    map[string]uint64 `json:"tcp,omitempty"`
	Errors uint64            `json:"errors"`
	// TapTxDropped is how many frames the namespace's kernel dropped on
	// the tap while the injector ran (its queue full): injected frames
	// may be among them.
	TapTxDropped uint64 `json:"tap_tx_dropped"`
}

// summary is what an agent prints on exit, on one line after summaryTag.
type summary struct {
	Role    string         `json:"role"`
	Paths   []*pathStats   `json:"paths"`
	Servers []*serverStats `json:"servers"`
	Inject  *injectStats   `json:"inject,omitempty"`
	// Corrupted holds a few corrupt datagrams, hex, for the report.
	Corrupted []string `json:"corrupted,omitempty"`

	TCPPaths   []*tcpPathStats   `json:"tcp_paths,omitempty"`
	TCPServers []*tcpServerStats `json:"tcp_servers,omitempty"`
	// TCPFailures describes the first few TCP connections that failed.
	TCPFailures []string `json:"tcp_failures,omitempty"`
}

const summaryTag = "soak-summary "

// agent is one load generator: echo servers and client workers.
type agent struct {
	role        string
	ctl         string
	tap         string
	workers     int
	pause       time.Duration
	wait        time.Duration
	injectEvery time.Duration
	seed        uint64
	udp, tcp    bool

	mu          sync.Mutex
	corrupted   []string
	tcpFailures []string
}

// agentMain runs an agent (the hidden "agent" subcommand) and returns its
// exit status.
func agentMain(args []string) int {
	fs := flag.NewFlagSet("soak agent", flag.ContinueOnError)
	a := &agent{}
	fs.StringVar(&a.role, "role", "", "ns, host or world")
	fs.StringVar(&a.ctl, "ctl", "", "control directory")
	fs.StringVar(&a.tap, "tap", "", "tap interface to inject malformed frames on (ns role)")
	fs.IntVar(&a.workers, "workers", 1, "concurrent flows per path")
	fs.DurationVar(&a.pause, "pause", 10*time.Millisecond, "mean pause between flows of a worker")
	fs.DurationVar(&a.wait, "wait", time.Second, "how long to wait for an echo")
	fs.DurationVar(&a.injectEvery, "inject-every", 100*time.Millisecond, "interval between bursts of malformed frames")
	fs.Uint64Var(&a.seed, "seed", 1, "random seed")
	proto := fs.String("proto", "udp", "protocols of the load: udp, tcp or udp,tcp")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if a.udp, a.tcp, err = parseProto(*proto); err != nil {
		fmt.Fprintln(os.Stderr, "soak agent:", err)
		return 2
	}
	if _, ok := rolePaths[a.role]; !ok || a.ctl == "" {
		fmt.Fprintln(os.Stderr, "soak agent: -role ns|host|world and -ctl are required")
		return 2
	}
	sum, err := a.run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak agent %s: %v\n", a.role, err)
		return 1
	}
	b, _ := json.Marshal(sum)
	fmt.Printf("%s%s\n", summaryTag, b)
	return 0
}

// state reads the control state.
func (a *agent) state() string {
	b, _ := os.ReadFile(filepath.Join(a.ctl, "state"))
	return strings.TrimSpace(string(b))
}

// waitState polls the control state until it is one of want.
func (a *agent) waitState(want ...string) string {
	for {
		s := a.state()
		for _, w := range want {
			if s == w {
				return s
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run serves until told to exit and returns the summary.
func (a *agent) run() (*summary, error) {
	sum := &summary{Role: a.role}
	var conns []*net.UDPConn
	var servers sync.WaitGroup
	var listeners []*net.TCPListener
	var handlers sync.WaitGroup
	if a.tcp {
		if err := setPortRange(a.role); err != nil {
			return nil, fmt.Errorf("ephemeral port range: %w", err)
		}
		for _, addr := range roleTCPServers[a.role] {
			l, err := listenTCP(addr)
			if err != nil {
				return nil, err
			}
			listeners = append(listeners, l)
			st := &tcpServerStats{Addr: addr.String()}
			sum.TCPServers = append(sum.TCPServers, st)
			servers.Go(func() { a.acceptTCP(l, st, &handlers) })
		}
	}
	for _, addr := range roleServers[a.role] {
		if !a.udp {
			break
		}
		c, err := listen(addr)
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
		st := &serverStats{Addr: addr.String()}
		sum.Servers = append(sum.Servers, st)
		servers.Go(func() { a.echo(c, addr.Addr().IsUnspecified(), st) })
	}
	fmt.Printf("ready %s pid %d\n", a.role, os.Getpid())

	if a.waitState(stateRun, stateExit) == stateRun {
		var stop atomic.Bool
		var load sync.WaitGroup
		rp := rolePaths[a.role]
		n := len(rp.paths) * a.workers
		span := rp.portsCount / n
		for i, p := range rp.paths {
			if !a.udp {
				break
			}
			st := &pathStats{Name: p.name}
			sum.Paths = append(sum.Paths, st)
			for w := 0; w < a.workers; w++ {
				k := i*a.workers + w
				c := &client{a: a, p: p, st: st, stop: &stop, id: roleIDs[a.role]<<56 | uint64(k)<<40,
					portFrom: rp.portsFrom + k*span, portCount: span,
					rng: rand.New(rand.NewPCG(a.seed, uint64(k)<<8|roleIDs[a.role]))}
				load.Go(c.run)
			}
		}
		for i, p := range roleTCPPaths[a.role] {
			if !a.tcp {
				break
			}
			st := &tcpPathStats{Name: p.name}
			sum.TCPPaths = append(sum.TCPPaths, st)
			for w := 0; w < a.workers; w++ {
				k := uint64(i*a.workers + w)
				c := &tcpClient{a: a, p: p, st: st, stop: &stop, id: roleIDs[a.role]<<56 | 1<<55 | k<<40,
					rng:  rand.New(rand.NewPCG(a.seed, k<<8|roleIDs[a.role]|1<<7)),
					wrng: rand.New(rand.NewPCG(a.seed, k<<8|roleIDs[a.role]|1<<6))}
				if p.bind {
					c.portCount = tcpPortsEach
					c.portFrom = tcpPortsFrom + int(k)*tcpPortsEach
				}
				load.Go(c.run)
			}
		}
		if a.role == "ns" && a.tap != "" {
			inj, err := newInjector(a.tap, a.seed, a.tcp)
			if err != nil {
				return nil, err
			}
			sum.Inject = &inj.st
			load.Go(func() { inj.run(&stop, a.injectEvery) })
		}
		a.waitState(stateStop, stateExit)
		stop.Store(true)
		load.Wait()
		a.waitState(stateExit)
	}
	for _, c := range conns {
		c.Close()
	}
	for _, l := range listeners {
		l.Close()
	}
	servers.Wait()
	handlers.Wait()
	a.mu.Lock()
	sum.Corrupted = a.corrupted
	sum.TCPFailures = a.tcpFailures
	a.mu.Unlock()
	return sum, nil
}

// noteCorrupt keeps the first few corrupt datagrams for the report.
func (a *agent) noteCorrupt(where string, b []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.corrupted) < 8 {
		a.corrupted = append(a.corrupted, fmt.Sprintf("%s: %d bytes: %x", where, len(b), b[:min(len(b), 48)]))
	}
}

// sockBuf is the socket buffer size of echo servers and clients.
const sockBuf = 4 << 20

// listen opens an echo server's socket; a wildcard one learns the
// destination of each datagram, to answer from it.
func listen(addr netip.AddrPort) (*net.UDPConn, error) {
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	var c *net.UDPConn
	var err error
	// The namespace's IPv6 address may still be on its way.
	for i := 0; i < 50; i++ {
		if c, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(addr)); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf)
		_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf)
		if addr.Addr().IsUnspecified() {
			if addr.Addr().Is4() {
				serr = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			} else {
				serr = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// echo answers every intact datagram on c from the address it was sent
// to, until c is closed.
func (a *agent) echo(c *net.UDPConn, pktinfo bool, st *serverStats) {
	buf := make([]byte, 65536)
	oob := make([]byte, 128)
	for {
		n, oobn, _, from, err := c.ReadMsgUDPAddrPort(buf, oob)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // e.g. an ICMP error for an earlier echo
		}
		atomic.AddUint64(&st.Received, 1)
		switch _, _, v := check(buf[:n]); v {
		case corrupt:
			atomic.AddUint64(&st.Corrupt, 1)
			a.noteCorrupt("server "+st.Addr+" from "+from.String(), buf[:n])
			continue
		case unverified:
			atomic.AddUint64(&st.Unverified, 1)
		}
		var reply []byte
		if pktinfo {
			reply = replyFrom(oob[:oobn])
		}
		_, _, _ = c.WriteMsgUDPAddrPort(buf[:n], reply, from)
	}
}

// replyFrom turns the destination a datagram arrived for (IP_PKTINFO,
// IPV6_PKTINFO) into a control message that sends the reply from it.
func replyFrom(oob []byte) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12:
			return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: [4]byte(m.Data[8:12])})
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= 20:
			return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte(m.Data[0:16])})
		}
	}
	return nil
}

// client is one worker of a path: it starts flows one after the other,
// each a new socket on the next port of its range sending one to four
// datagrams and waiting for each echo.
type client struct {
	a                   *agent
	p                   path
	st                  *pathStats
	stop                *atomic.Bool
	id                  uint64 // flow ids: id | counter
	portFrom, portCount int
	rng                 *rand.Rand
}

func (c *client) run() {
	out := make([]byte, 65536)
	in := make([]byte, 65537)
	scratch := make([]byte, 65536)
	maxSize := 65000
	network := "udp4"
	if c.p.to.Addr().Is6() {
		network = "udp6"
	}
	var flows, next uint64
	for !c.stop.Load() {
		port := c.portFrom + int(next%uint64(c.portCount))
		next++
		laddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.p.from, uint16(port)))
		connected := c.rng.IntN(2) == 0
		var conn *net.UDPConn
		var err error
		if connected {
			conn, err = net.DialUDP(network, laddr, net.UDPAddrFromAddrPort(c.p.to))
		} else {
			conn, err = net.ListenUDP(network, laddr)
		}
		if err != nil {
			atomic.AddUint64(&c.st.BindErrors, 1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		flow := c.id | flows
		flows++
		for seq := uint32(0); seq < uint32(1+c.rng.IntN(4)) && !c.stop.Load(); seq++ {
			size := randomSize(c.rng, maxSize)
			fill(out[:size], flow, seq)
			if connected {
				_, err = conn.Write(out[:size])
			} else {
				_, err = conn.WriteToUDPAddrPort(out[:size], c.p.to)
			}
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					atomic.AddUint64(&c.st.Refused, 1)
				} else {
					atomic.AddUint64(&c.st.SendErrors, 1)
				}
				continue
			}
			if seq == 0 {
				atomic.AddUint64(&c.st.Flows, 1)
			}
			atomic.AddUint64(&c.st.Sent, 1)
			atomic.AddUint64(&c.st.Bytes, uint64(size))
			c.await(conn, flow, seq, out[:size], in, scratch)
		}
		conn.Close()
		if c.a.pause > 0 {
			time.Sleep(time.Duration(c.rng.Int64N(int64(2 * c.a.pause))))
		}
	}
}

// await waits for the echo of datagram seq (sent, the bytes) of flow.
func (c *client) await(conn *net.UDPConn, flow uint64, seq uint32, sent, in, scratch []byte) {
	_ = conn.SetReadDeadline(time.Now().Add(c.a.wait))
	for {
		n, from, err := conn.ReadFromUDPAddrPort(in)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				atomic.AddUint64(&c.st.Lost, 1)
				return
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				atomic.AddUint64(&c.st.Refused, 1)
				continue
			}
			atomic.AddUint64(&c.st.SendErrors, 1)
			return
		}
		got := in[:n]
		if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != c.p.to {
			atomic.AddUint64(&c.st.WrongPeer, 1)
			continue
		}
		if bytes.Equal(got, sent) {
			atomic.AddUint64(&c.st.Echoed, 1)
			return
		}
		if c.earlier(got, flow, seq, scratch) {
			atomic.AddUint64(&c.st.Stray, 1)
			continue
		}
		atomic.AddUint64(&c.st.Corrupt, 1)
		c.a.noteCorrupt(fmt.Sprintf("client %s flow %x seq %d (sent %d bytes)", c.p.name, flow, seq, len(sent)), got)
	}
}

// earlier reports whether b is an intact earlier datagram of flow: a late
// echo.
func (c *client) earlier(b []byte, flow uint64, seq uint32, scratch []byte) bool {
	if f, s, v := check(b); v == valid {
		return f == flow && s < seq
	}
	for s := uint32(0); s < seq; s++ {
		if len(b) < headerLen && sameAs(b, flow, s, scratch) {
			return true
		}
	}
	return false
}

// injector writes malformed frames and never-completed fragments to the
// namespace's tap device through a packet socket: the kernel hands them
// to gopasst unchanged.
type injector struct {
	fd      int
	sa      unix.SockaddrLinklayer
	mac     net.HardwareAddr
	rng     *rand.Rand
	dropped func() uint64
	tcp     bool // inject bad TCP segments too
	st      injectStats
}

func newInjector(ifname string, seed uint64, tcp bool) (*injector, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// /proc/net/dev, not /sys/class/net: that shows the namespace /sys
	// was mounted in, not ours.
	dropped := func() uint64 {
		b, _ := os.ReadFile("/proc/net/dev")
		for _, line := range strings.Split(string(b), "\n") {
			name, rest, ok := strings.Cut(line, ":")
			// Receive: bytes packets errs drop fifo frame compressed
			// multicast; transmit: bytes packets errs drop ...
			if f := strings.Fields(rest); ok && strings.TrimSpace(name) == ifname && len(f) > 11 {
				n, _ := strconv.ParseUint(f[11], 10, 64)
				return n
			}
		}
		return 0
	}
	return &injector{fd: fd, sa: unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}, mac: ifi.HardwareAddr,
		rng: rand.New(rand.NewPCG(seed, 0x1417)), dropped: dropped, tcp: tcp,
		st: injectStats{Malformed: map[string]uint64{}, TCP: map[string]uint64{}}}, nil
}

// run injects a burst every interval until stop, then closes the socket.
func (in *injector) run(stop *atomic.Bool, every time.Duration) {
	defer unix.Close(in.fd)
	before := in.dropped()
	defer func() { in.st.TapTxDropped = in.dropped() - before }()
	for tick := 0; !stop.Load(); tick++ {
		for i := 0; i < 4; i++ {
			reason, frame := malformedFrame(in.rng, in.mac)
			if unix.Sendto(in.fd, frame, 0, &in.sa) != nil {
				in.st.Errors++
				continue
			}
			in.st.Malformed[reason]++
		}
		for i := 0; in.tcp && i < 2; i++ {
			reason, frame := malformedTCPFrame(in.rng, in.mac)
			if unix.Sendto(in.fd, frame, 0, &in.sa) != nil {
				in.st.Errors++
				continue
			}
			in.st.TCP[reason]++
		}
		// A few fragments that never complete: they hold reassembly
		// slots until the reassembler's timeout, so too many would
		// crowd out the namespace's real fragmented datagrams.
		if tick%20 == 0 {
			if unix.Sendto(in.fd, fragmentFrame(in.rng, in.mac), 0, &in.sa) != nil {
				in.st.Errors++
			} else {
				in.st.Fragments++
			}
		}
		time.Sleep(every)
	}
}

// gopasstMAC is any unicast MAC: gopasst takes every frame on its tap.
var gopasstMAC = net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}

// Ethernet and IP constants for the frames built here.
const (
	ethLen  = 14
	ip4Len  = 20
	ip6Len  = 40
	udpLen  = 8
	discard = 9 // destination port of the frames, should one get through
)

// udpFrame builds a well-formed UDP frame from the namespace's address to
// the gateway's discard port, IPv4 or IPv6, with payload bytes of
// payload.
func udpFrame(v6 bool, src net.HardwareAddr, payload int) []byte {
	l3 := ip4Len
	et := uint16(0x0800)
	if v6 {
		l3, et = ip6Len, 0x86dd
	}
	f := make([]byte, ethLen+l3+udpLen+payload)
	copy(f[0:6], gopasstMAC)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], et)
	ip := f[ethLen:]
	if v6 {
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:6], uint16(udpLen+payload))
		ip[6], ip[7] = unix.IPPROTO_UDP, 64
		a, b := nsAddr6.As16(), sandbox.GatewayAddr6.As16()
		copy(ip[8:24], a[:])
		copy(ip[24:40], b[:])
	} else {
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:4], uint16(ip4Len+udpLen+payload))
		ip[8], ip[9] = 64, unix.IPPROTO_UDP
		a, b := nsAddr4.As4(), sandbox.GatewayAddr4.As4()
		copy(ip[12:16], a[:])
		copy(ip[16:20], b[:])
		binary.BigEndian.PutUint16(ip[10:12], wirecheck.Checksum(ip[:ip4Len]))
	}
	u := ip[l3:]
	binary.BigEndian.PutUint16(u[0:2], 40000)
	binary.BigEndian.PutUint16(u[2:4], discard)
	binary.BigEndian.PutUint16(u[4:6], uint16(udpLen+payload))
	return f
}

// malformedFrame builds one malformed frame, chosen at random, and
// returns it with the reason gopasst counts it under ("malformed
// REASON").
func malformedFrame(r *rand.Rand, src net.HardwareAddr) (string, []byte) {
	v6 := r.IntN(2) == 0
	f := udpFrame(v6, src, r.IntN(256))
	l3 := ip4Len
	if v6 {
		l3 = ip6Len
	}
	ip := f[ethLen:]
	u := ip[l3:]
	switch r.IntN(6) {
	case 0: // IP header cut short
		return "short", f[:ethLen+r.IntN(l3)]
	case 1: // wrong IP version
		v := byte(r.IntN(16))
		for v == 4 || v == 6 {
			v = byte(r.IntN(16))
		}
		ip[0] = v<<4 | ip[0]&0x0f
		return "bad-header", f
	case 2: // IP length past the end of the frame
		if v6 {
			binary.BigEndian.PutUint16(ip[4:6], uint16(len(ip)-ip6Len+1+r.IntN(1000)))
		} else {
			binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)+1+r.IntN(1000)))
		}
		return "short", f
	case 3: // UDP length past the end of the datagram
		binary.BigEndian.PutUint16(u[4:6], uint16(len(u)+1+r.IntN(1000)))
		return "short", f
	case 4: // UDP length shorter than its header
		binary.BigEndian.PutUint16(u[4:6], uint16(r.IntN(udpLen)))
		return "bad-header", f
	default: // an EtherType nobody handles, random bytes after it
		et := uint16(0x0600 + r.IntN(0xfa00))
		for et == 0x0800 || et == 0x86dd || et == 0x0806 {
			et = uint16(0x0600 + r.IntN(0xfa00))
		}
		binary.BigEndian.PutUint16(f[12:14], et)
		for i := ethLen; i < len(f); i++ {
			f[i] = byte(r.Uint32())
		}
		return "unsupported", f
	}
}

// fragmentFrame builds a fragment, with "more fragments" set and a random
// identification, of a datagram whose other fragments never come.
func fragmentFrame(r *rand.Rand, src net.HardwareAddr) []byte {
	data := 8 * (1 + r.IntN(128))
	off := 8 * r.IntN(4096)
	if r.IntN(2) == 0 {
		f := udpFrame(false, src, data-udpLen)
		ip := f[ethLen:]
		binary.BigEndian.PutUint16(ip[4:6], uint16(r.Uint32()))
		binary.BigEndian.PutUint16(ip[6:8], 0x2000|uint16(off/8))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:12], wirecheck.Checksum(ip[:ip4Len]))
		return f
	}
	// IPv6: a fragment header between the IPv6 header and the data.
	f := udpFrame(true, src, data+8-udpLen)
	ip := f[ethLen:]
	ip[6] = unix.IPPROTO_FRAGMENT
	fh := ip[ip6Len:]
	fh[0], fh[1] = unix.IPPROTO_UDP, 0
	binary.BigEndian.PutUint16(fh[2:4], uint16(off)|1)
	binary.BigEndian.PutUint32(fh[4:8], r.Uint32())
	return f
}
