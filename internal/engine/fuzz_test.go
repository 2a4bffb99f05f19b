package engine_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/dhcp"
	"github.com/gopasst/gopasst/internal/engine"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/netcfg"
	"github.com/gopasst/gopasst/internal/netns"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/protocols"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/tap"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// FuzzEngine runs the whole data path on frames from the fuzzer: an
// Engine assembled by Build, as gopasst runs it in passt mode, with a fake
// guest endpoint that hands it the frames in batches and checks every
// frame the engine writes back, and real UDP sockets.
//
// # Where the datagrams go
//
// The guest's datagrams leave through real host sockets, so the fuzzer
// must not be able to send anything anywhere but a loopback interface:
//
//   - As root (CI), every exec runs in a network namespace the test
//     created (one per fuzzing process), holding only lo and a dummy
//     device (which drops whatever is routed to it) with default routes.
//     Build, which opens the listening sockets, and the engine's tap
//     reader, which opens the sockets for the guest's datagrams, run on
//     a thread inside it, and each batch checks that the reader still
//     does; the socket loop opens sockets only for the splice path, which
//     is off. Nothing sent there can leave the namespace.
//   - Otherwise, frames are filtered before the engine sees them: only
//     UDP to the gateway address or a loopback address, on the ports of
//     the test's own sockets, passes, and so only those sockets on the
//     host's loopback receive anything; fragments and everything else
//     that could reach a socket are dropped.
//
// # What is checked
//
//   - nothing panics, and Run ends when the guest goes away;
//   - every frame written to the guest is well formed to gopacket, with
//     right checksums (package wirecheck), comes from our MAC address,
//     never from a loopback address, and UDP and ICMP errors go to an
//     address the guest has;
//   - bounded work: the tap reader writes at most one frame per frame it
//     read, and all frames written are no more than the frames read, the
//     guest's datagrams sent (one ICMP error each at most), the frames of
//     the echoes and probes the test sent back;
//   - every datagram that reaches the test's sockets carries a payload the
//     guest sent, whole or as fragments;
//   - what the test's sockets echo back reaches the guest unchanged, and
//     nothing else does (but for datagrams to the gateway on the port they
//     come from, which the flow's own socket, bound to that port, gets
//     back).
//
// # Input
//
// The first byte holds flags (fuzzProbe: first send a datagram from the
// host to the forwarded port). Then frames, each preceded by its length
// as 16 bits, big endian; a length of 0 ends a batch.
func FuzzEngine(f *testing.F) {
	for _, s := range engineSeeds(f) {
		f.Add(s)
	}
	h, err := newHarness()
	if err != nil {
		f.Skip(err)
	}
	f.Cleanup(h.close)
	f.Fuzz(func(t *testing.T, data []byte) {
		h.run(t, data)
	})
}

// Addresses and ports of the test network.
var (
	ourMAC   = netcfg.DefaultMAC
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	guest4   = netip.MustParsePrefix("192.0.2.2/24")
	gw4      = netip.MustParseAddr("192.0.2.1")
	guest6   = netip.MustParsePrefix("2001:db8::2/64")
	gw6      = netip.MustParseAddr("2001:db8::1")
	lo4      = netip.MustParseAddr("127.0.0.1")
	lo6      = netip.IPv6Loopback()
)

const (
	sinkPort  = 47777 // the test's echo sockets, on the loopback
	fwdPort   = 47778 // the forwarded port (-u), on the loopback
	probePort = 47779 // where probes come from
	fuzzMTU   = 1500
	maxFrames = 256 // frames per exec at most

	fuzzProbe = 1 << 0 // input flag: send probes first
)

// harness holds what outlives one exec: the namespace, if any.
type harness struct {
	ns *netns.NS // nil: filter mode
}

func newHarness() (*harness, error) {
	log.SetOutput(io.Discard)
	h := &harness{}
	if os.Geteuid() != 0 {
		return h, nil
	}
	ns, err := netns.New()
	if err != nil {
		return h, nil // filter mode
	}
	if err := setupNS(ns); err != nil {
		ns.Close()
		return nil, err
	}
	h.ns = ns
	return h, nil
}

// setupNS brings lo up and adds a dummy device with addresses and
// default routes, so that datagrams to anywhere can be sent (and are
// dropped by the device) instead of failing for want of a route.
func setupNS(ns *netns.NS) error {
	nl, err := ns.NetlinkHandle()
	if err != nil {
		return err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := nl.LinkSetUp(lo); err != nil {
		return err
	}
	if err := nl.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "dummy0"}}); err != nil {
		return nil // no dummy driver: datagrams to other addresses fail with ENETUNREACH
	}
	d, err := nl.LinkByName("dummy0")
	if err != nil {
		return err
	}
	for _, a := range []string{"203.0.113.1/24", "2001:db8:ffff::1/64"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = unix.IFA_F_NODAD
		if err := nl.AddrAdd(d, addr); err != nil {
			return err
		}
	}
	if err := nl.LinkSetUp(d); err != nil {
		return err
	}
	for _, dst := range []string{"0.0.0.0/0", "::/0"} {
		_, n, _ := net.ParseCIDR(dst)
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Dst: n, Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) close() {
	if h.ns != nil {
		h.ns.Close()
	}
}

// run is one exec: in the namespace if there is one, otherwise on a
// locked thread (so that the tap reader's frames can be told by thread).
func (h *harness) run(t *testing.T, data []byte) {
	flags, batches := decodeInput(data)
	var r result
	if h.ns == nil {
		runtime.LockOSThread()
		r = h.exec(flags, batches, nil)
		runtime.UnlockOSThread()
	} else {
		var st unix.Stat_t
		if err := unix.Fstat(h.ns.Fd(), &st); err != nil {
			t.Fatal(err)
		}
		if err := h.ns.Do(func() error {
			r = h.exec(flags, batches, func() error { return inNS(st.Ino) })
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if r.skip != "" {
		t.Skip(r.skip)
	}
	if r.fail != "" {
		t.Fatal(r.fail)
	}
}

// result is how an exec went: exec runs on a thread of its own, where
// t.Fatal and t.Skip cannot be called.
type result struct{ skip, fail string }

// inNS checks that the calling thread is in the namespace of inode ino.
func inNS(ino uint64) error {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return err
	}
	if st.Ino != ino {
		return fmt.Errorf("tap reader in network namespace %d, not the test's %d", st.Ino, ino)
	}
	return nil
}

// decodeInput splits the fuzzer's bytes into flags and batches of frames.
func decodeInput(data []byte) (flags byte, batches [][][]byte) {
	if len(data) == 0 {
		return 0, nil
	}
	flags, data = data[0], data[1:]
	var cur [][]byte
	frames := 0
	for len(data) >= 2 && frames < maxFrames {
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		if n > 0 {
			n = min(n, len(data))
			cur = append(cur, data[:n])
			data = data[n:]
			frames++
		}
		if n == 0 || len(cur) == engine.Batch {
			if len(cur) > 0 {
				batches = append(batches, cur)
			}
			cur = nil
		}
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
	}
	return flags, batches
}

// encodeInput is decodeInput's inverse, for the seeds.
func encodeInput(flags byte, batches ...[][]byte) []byte {
	b := []byte{flags}
	for i, batch := range batches {
		if i > 0 {
			b = append(b, 0, 0)
		}
		for _, f := range batch {
			b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
			b = append(b, f...)
		}
	}
	return b
}

// exec builds an engine, runs the batches through it and checks what
// came out. check, if set, is called on the tap reader's thread before
// each batch.
func (h *harness) exec(flags byte, batches [][][]byte, check func() error) result {
	x, err := newExec()
	if err != nil {
		return result{skip: fmt.Sprintf("test sockets: %v", err)} // ports taken on the host's loopback
	}
	defer x.close()
	st := &stats.Counters{}
	cfg, err := conf.Parse(conf.ModePasst, []string{"-m", fmt.Sprint(fuzzMTU), "--max-flows", "16"})
	if err != nil {
		return result{fail: err.Error()}
	}
	n := &netcfg.Net{MTU: fuzzMTU, Addr4: guest4, Gateway4: gw4, Addr6: guest6, Gateway6: gw6, IPv4: true, IPv6: true,
		OurMAC: ourMAC, DNS4: []netip.Addr{gw4}, DNS6: []netip.Addr{gw6}, Search: []string{"example.com"},
		MapHostLoopback4: gw4, MapHostLoopback6: gw6,
		Forwards: []fwd.Forward{{Proto: fwd.UDP, Addr: lo4, Port: fwdPort, ToPort: fwdPort}, {Proto: fwd.UDP, Addr: lo6, Port: fwdPort, ToPort: fwdPort}},
		Timeout:  30 * time.Second, StreamTimeout: 120 * time.Second}
	ep := &fuzzTap{x: x, st: st, flags: flags, check: check, guestAddrs: map[netip.Addr]bool{guest4.Addr(): true, guest6.Addr(): true}}
	for _, b := range batches {
		if h.ns != nil {
			ep.batches = append(ep.batches, b)
		} else {
			ep.batches = append(ep.batches, filter(b))
		}
	}
	ep.learn(batches)
	e, err := engine.Build(ep, n, cfg, st, nil, protocols.All)
	if err != nil {
		return result{skip: fmt.Sprintf("Build: %v", err)} // the forwarded port is taken on the host's loopback
	}
	if err := e.Run(); err != nil {
		return result{fail: fmt.Sprintf("Run: %v", err)}
	}
	return result{fail: ep.finish()}
}

// exec state: the test's sockets.
type execSocks struct {
	sink  [2]int // echo sockets, IPv4 and IPv6, on sinkPort
	probe [2]int // probe sockets on probePort
}

func newExec() (*execSocks, error) {
	x := &execSocks{sink: [2]int{-1, -1}, probe: [2]int{-1, -1}}
	for i, a := range []netip.Addr{lo4, lo6} {
		var err error
		if x.sink[i], err = bound(a, sinkPort); err != nil {
			x.close()
			return nil, err
		}
		if x.probe[i], err = bound(a, probePort); err != nil {
			x.close()
			return nil, err
		}
	}
	return x, nil
}

// bound opens a non-blocking UDP socket bound to a:port.
func bound(a netip.Addr, port uint16) (int, error) {
	family := unix.AF_INET
	if a.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if a.Is6() {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(a, port))); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func (x *execSocks) close() {
	for _, fd := range append(x.sink[:], x.probe[:]...) {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// filter keeps the frames that can only make the engine send to the
// test's own sockets on the loopback (filter mode, without a namespace).
// isNDPFrame reports whether an ICMPv6 packet is neighbour discovery,
// which the engine answers itself.
func isNDPFrame(p *packet.Parsed) bool {
	return len(p.L4) > 0 && p.L4[0] >= 133 && p.L4[0] <= 137
}

func filter(batch [][]byte) [][]byte {
	var out [][]byte
	for _, f := range batch {
		var p packet.Parsed
		if packet.Parse(f, &p) != packet.DropNone {
			out = append(out, f) // dropped by the engine as well
			continue
		}
		if p.Proto == packet.ProtoTCP || p.Proto == packet.ProtoICMP || p.Proto == packet.ProtoICMPv6 && !isNDPFrame(&p) {
			// TCP connects and echo requests open sockets towards
			// their destination: only the loopback's may pass.
			if !p.Fragment && (p.Dst4 == gw4 || p.Dst4 == gw6 || p.Dst4.IsLoopback()) {
				out = append(out, f)
			}
			continue
		}
		if p.EtherType == packet.EtherTypeARP || p.Proto != packet.ProtoUDP && !p.Fragment {
			out = append(out, f) // no sockets for these
			continue
		}
		if p.Fragment {
			continue // the port is not known until reassembly
		}
		if dhcp.IsRequest(&p) {
			out = append(out, f)
			continue
		}
		if p.Dst4 != gw4 && p.Dst4 != gw6 && !p.Dst4.IsLoopback() {
			continue
		}
		if p.DstPort != sinkPort && p.DstPort != probePort {
			continue
		}
		// The same mapping the engine's rules make, as a second
		// opinion: the target must be the loopback.
		r := fwd.Rules{MapHostLoopback4: gw4, MapHostLoopback6: gw6, IPv4: true, IPv6: true}
		tgt, v := r.FromTap(flow.Side{EAddr: p.Src4, EPort: p.SrcPort, FAddr: p.Dst4, FPort: p.DstPort})
		if v == fwd.OK && !tgt.EAddr.IsLoopback() {
			continue
		}
		out = append(out, f)
	}
	return out
}

// fuzzTap is the guest endpoint of one exec.
type fuzzTap struct {
	x       *execSocks
	st      *stats.Counters
	flags   byte
	check   func() error
	batches [][][]byte
	next    int
	started bool
	closed  bool

	readerTid int // the tap reader's thread, locked for the exec
	lastBatch int // frames in the batch last returned
	framesIn  int

	// Payloads the guest sent, whole datagrams by content and fragments
	// by name, to recognise what reaches the test's sockets.
	sentWhole map[string]bool
	sentFrags map[fragKey][]fragPiece
	// guestAddrs are the addresses the guest has or used.
	guestAddrs map[netip.Addr]bool

	mu         sync.Mutex
	out        int            // frames written
	syncOut    int            // of which by the tap reader since the last ReadBatch
	echoed     map[string]int // payloads the test sent towards the guest and the guest did not get yet
	pending    int            // how many of them
	echoFrames int            // frames the echoes and probes take
	sinkRecv   int            // datagrams the test's sockets received
	fragBuf    map[uint16][]byte
	errs       []string
}

type fragKey struct {
	src, dst netip.Addr
	id       uint32
}

type fragPiece struct {
	off  int
	data []byte
}

// learn records what the guest sends, to recognise it later.
func (ep *fuzzTap) learn(batches [][][]byte) {
	ep.sentWhole = map[string]bool{}
	ep.sentFrags = map[fragKey][]fragPiece{}
	for _, b := range batches {
		for _, f := range b {
			var p packet.Parsed
			if packet.Parse(f, &p) == packet.DropNone && (p.EtherType == packet.EtherTypeIPv4 || p.EtherType == packet.EtherTypeIPv6) {
				if p.Src4.IsValid() && !p.Src4.IsMulticast() && !p.Src4.IsUnspecified() {
					ep.guestAddrs[p.Src4] = true
				}
				if p.Fragment {
					k := fragKey{p.Src4, p.Dst4, p.FragID}
					ep.sentFrags[k] = append(ep.sentFrags[k], fragPiece{p.FragOffset, p.L4})
				} else if p.Proto == packet.ProtoUDP {
					ep.sentWhole[string(p.Payload)] = true
				}
			}
			// And as gopacket sees it.
			pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.DecodeOptions{NoCopy: true, Lazy: true})
			if u, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
				ep.sentWhole[string(u.Payload)] = true
			}
		}
	}
}

// fromGuest reports whether payload is one the guest sent, whole or as
// fragments: every byte of the datagram (UDP header at offset 0) must be
// the byte of a fragment covering it.
func (ep *fuzzTap) fromGuest(payload []byte) bool {
	if ep.sentWhole[string(payload)] {
		return true
	}
next:
	for _, pieces := range ep.sentFrags {
		for i := range payload {
			at := packet.UDPLen + i
			found := false
			for _, fp := range pieces {
				if at >= fp.off && at < fp.off+len(fp.data) && fp.data[at-fp.off] == payload[i] {
					found = true
					break
				}
			}
			if !found {
				continue next
			}
		}
		return true
	}
	return false
}

func (ep *fuzzTap) fail(format string, args ...any) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if len(ep.errs) < 5 {
		ep.errs = append(ep.errs, fmt.Sprintf(format, args...))
	}
}

// ReadBatch hands the engine the next batch, after checking the work
// done for the last one and echoing what reached the test's sockets.
func (ep *fuzzTap) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	if ep.closed {
		return 0, tap.ErrClosed
	}
	if !ep.started {
		ep.started = true
		ep.readerTid = unix.Gettid()
		if ep.flags&fuzzProbe != 0 {
			ep.sendProbes()
		}
	}
	if ep.check != nil {
		if err := ep.check(); err != nil {
			ep.fail("%v", err)
			return 0, tap.ErrClosed
		}
	}
	ep.mu.Lock()
	if ep.syncOut > ep.lastBatch {
		ep.errs = append(ep.errs, fmt.Sprintf("the tap reader wrote %d frames for a batch of %d", ep.syncOut, ep.lastBatch))
	}
	ep.syncOut = 0
	ep.mu.Unlock()
	ep.pump()
	if ep.next == len(ep.batches) {
		ep.settle()
		return 0, tap.ErrClosed
	}
	b := ep.batches[ep.next]
	ep.next++
	n := min(len(b), len(bufs))
	for i := range n {
		lens[i] = copy(bufs[i], b[i])
	}
	ep.lastBatch = n
	ep.framesIn += n
	return n, nil
}

// sendProbes sends a datagram from the host's loopback to the forwarded
// port, per family, and waits (a little) for the engine to pass them on.
func (ep *fuzzTap) sendProbes() {
	for i, a := range []netip.Addr{lo4, lo6} {
		payload := []byte(fmt.Sprintf("probe %d", i))
		ep.expect(payload, a.Is4())
		_ = sendto(ep.x.probe[i], payload, netip.AddrPortFrom(a, fwdPort))
	}
	ep.wait(time.Second)
}

// expect records a payload the test sends towards the guest.
func (ep *fuzzTap) expect(payload []byte, v4 bool) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.echoed == nil {
		ep.echoed = map[string]int{}
	}
	ep.echoed[string(payload)]++
	ep.pending++
	frames := 1
	if ip := packet.IPv4Len + packet.UDPLen + len(payload); v4 && ip > fuzzMTU {
		chunk := (fuzzMTU - packet.IPv4Len) &^ 7
		frames = (packet.UDPLen + len(payload) + chunk - 1) / chunk
	}
	ep.echoFrames += frames
}

func sendto(fd int, payload []byte, to netip.AddrPort) error {
	return unix.Sendto(fd, payload, unix.MSG_DONTWAIT, sockaddr(to))
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// pump reads what reached the test's sockets, checks it came from the
// guest, and echoes what the echo sockets got.
func (ep *fuzzTap) pump() {
	buf := make([]byte, 65536)
	for i, fd := range append(ep.x.sink[:], ep.x.probe[:]...) {
		for {
			n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			if err != nil {
				break
			}
			payload := buf[:n]
			ep.mu.Lock()
			ep.sinkRecv++
			ep.mu.Unlock()
			if !ep.fromGuest(payload) {
				ep.fail("a socket got %d bytes the guest never sent: %x", n, payload[:min(n, 64)])
				continue
			}
			if i >= 2 {
				continue // probe sockets do not echo
			}
			var to netip.AddrPort
			switch sa := from.(type) {
			case *unix.SockaddrInet4:
				to = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
			case *unix.SockaddrInet6:
				to = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
			default:
				continue
			}
			ep.expect(payload, i == 0)
			_ = sendto(fd, payload, to)
		}
	}
}

// wait waits until the frames of the echoes and probes sent so far have
// reached the guest, or for at most d.
func (ep *fuzzTap) wait(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		ep.mu.Lock()
		done := ep.pending == 0
		ep.mu.Unlock()
		if done {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// settle lets the last batch's datagrams reach the test's sockets and
// their echoes reach the guest, within limits.
func (ep *fuzzTap) settle() {
	if ep.st.UDP.ToHost.Load() == 0 {
		return
	}
	for range 3 {
		ep.pump()
		ep.wait(200 * time.Millisecond)
	}
}

// WriteFrame checks a frame the engine sends to the guest.
func (ep *fuzzTap) WriteFrame(frame []byte) error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.out++
	if unix.Gettid() == ep.readerTid {
		ep.syncOut++
	}
	if err := ep.checkFrame(frame); err != nil {
		if len(ep.errs) < 5 {
			ep.errs = append(ep.errs, fmt.Sprintf("frame %x: %v", frame[:min(len(frame), 128)], err))
		}
	}
	return nil
}

// WriteFrames lets the engine use its batch path.
func (ep *fuzzTap) WriteFrames(frames [][]byte) (int, error) {
	for _, f := range frames {
		_ = ep.WriteFrame(f)
	}
	return len(frames), nil
}

// Close ends the exec.
func (ep *fuzzTap) Close() error {
	ep.closed = true
	return nil
}

// checkFrame checks one frame to the guest; called with mu held.
func (ep *fuzzTap) checkFrame(frame []byte) error {
	w, err := wirecheck.Check(frame)
	if err != nil {
		return err
	}
	if !bytes.Equal(w.Src, ourMAC[:]) {
		return fmt.Errorf("from MAC %v", w.Src)
	}
	if w.ARP != nil {
		return nil
	}
	if w.SrcIP.IsLoopback() {
		return fmt.Errorf("from the loopback address %v", w.SrcIP)
	}
	isDHCP := w.Proto == layers.IPProtocolUDP && (w.SrcPort == dhcp.ServerPort4 || w.SrcPort == dhcp.ServerPort6)
	isNDP := w.Proto == layers.IPProtocolICMPv6 && w.ICMPType >= 133 && w.ICMPType <= 137
	if !isDHCP && !isNDP && !ep.guestAddrs[w.DstIP] {
		return fmt.Errorf("to %v, not an address of the guest", w.DstIP)
	}
	payload, sport, dport := w.Payload, w.SrcPort, w.DstPort
	if w.Fragment {
		if ep.fragBuf == nil {
			ep.fragBuf = map[uint16][]byte{}
		}
		if w.FragOffset != len(ep.fragBuf[w.FragID]) {
			return fmt.Errorf("fragment at %d after %d bytes", w.FragOffset, len(ep.fragBuf[w.FragID]))
		}
		ep.fragBuf[w.FragID] = append(ep.fragBuf[w.FragID], w.FragData...)
		if w.MoreFrags {
			return nil
		}
		d := ep.fragBuf[w.FragID]
		delete(ep.fragBuf, w.FragID)
		if len(d) < packet.UDPLen || int(binary.BigEndian.Uint16(d[4:6])) != len(d) {
			return fmt.Errorf("reassembled datagram of %d bytes has UDP length %d", len(d), binary.BigEndian.Uint16(d[4:6]))
		}
		payload = d[packet.UDPLen:]
		sport, dport = binary.BigEndian.Uint16(d[0:2]), binary.BigEndian.Uint16(d[2:4])
	} else if w.Proto != layers.IPProtocolUDP || isDHCP {
		return nil
	}
	// Two ways a guest's own datagram comes back to it, checked before
	// the echoes are counted so that such a frame never uses up an echo
	// the test expects: a datagram to the gateway from and to the same
	// port goes to the host's loopback from the flow's socket, bound to
	// that port where it is free, and so to the socket itself; one to
	// the gateway's forwarded port reaches the engine's own listening
	// socket of that port, which forwards it back, from the gateway and
	// the guest's source port. Echoes and probes come from sinkPort and
	// probePort, which such frames never do.
	if (w.SrcIP == gw4 || w.SrcIP == gw6) && sport != sinkPort && sport != probePort &&
		(sport == dport || dport == fwdPort) && ep.fromGuest(payload) {
		return nil
	}
	if ep.echoed[string(payload)] == 0 {
		return fmt.Errorf("UDP payload of %d bytes the host never sent", len(payload))
	}
	ep.echoed[string(payload)]--
	ep.pending--
	return nil
}

// finish reports what went wrong, checking the totals, or "".
func (ep *fuzzTap) finish() string {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if len(ep.errs) > 0 {
		return strings.Join(ep.errs, "\n")
	}
	if ep.next != len(ep.batches) {
		return fmt.Sprintf("Run returned after %d of %d batches", ep.next, len(ep.batches))
	}
	// Each frame read gets one reply at most, each datagram sent one
	// ICMP error at most, and echoes and probes their own frames.
	if bound := ep.framesIn + int(ep.st.UDP.ToHost.Load()) + ep.echoFrames; ep.out > bound {
		return fmt.Sprintf("%d frames written to the guest, more than %d (%d read, %d datagrams sent, %d frames of echoes)",
			ep.out, bound, ep.framesIn, ep.st.UDP.ToHost.Load(), ep.echoFrames)
	}
	if ep.sinkRecv > ep.framesIn {
		return fmt.Sprintf("the test's sockets got %d datagrams from %d frames", ep.sinkRecv, ep.framesIn)
	}
	return ""
}

// engineSeeds are inputs of every kind, built with gopacket: UDP to the
// echo sockets, to closed ports, to the world, with a TTL running out,
// fragmented, large enough to come back fragmented, multicast, from many
// ports (the flow table holds 16); ARP, NDP, DHCP and DHCPv6; replies to
// a probe; a TCP connect to a closed port and a segment for no
// connection.
func engineSeeds(tb testing.TB) [][]byte {
	g4, g6 := guest4.Addr(), guest6.Addr()
	ap := netip.AddrPortFrom
	u := func(src, dst netip.AddrPort, ttl uint8, payload []byte) []byte {
		return udpFrame(tb, src, dst, ttl, payload)
	}
	hello := []byte("hello, world")
	big := bytes.Repeat([]byte("0123456789"), 300)
	var manyPorts [][]byte
	for p := range 20 {
		manyPorts = append(manyPorts, u(ap(g4, uint16(40000+p)), ap(gw4, sinkPort), 64, hello))
	}
	fr4 := fragments(tb, g4, gw4, 0x77, udpBytes(tb, ap(g4, 40001), ap(gw4, sinkPort), big), 1000)
	fr6 := fragments(tb, g6, gw6, 0x7777, udpBytes(tb, ap(g6, 40001), ap(gw6, sinkPort), big), 1000)
	return [][]byte{
		encodeInput(0, [][]byte{u(ap(g4, 40000), ap(gw4, sinkPort), 64, hello), u(ap(g6, 40000), ap(gw6, sinkPort), 64, hello)}),
		encodeInput(0, [][]byte{u(ap(g4, 40000), ap(gw4, 9), 64, hello), u(ap(g6, 40000), ap(gw6, 9), 64, hello)}),
		encodeInput(0, [][]byte{u(ap(g4, 40000), netip.MustParseAddrPort("198.51.100.1:53"), 64, hello),
			u(ap(g6, 40000), netip.MustParseAddrPort("[2001:db8:1::1]:53"), 64, hello)}),
		encodeInput(0, [][]byte{u(ap(g4, 40000), netip.MustParseAddrPort("198.51.100.1:33434"), 1, hello),
			u(ap(g6, 40000), netip.MustParseAddrPort("[2001:db8:1::1]:33434"), 1, hello)}),
		encodeInput(0, fr4, fr6),
		encodeInput(0, [][]byte{u(ap(g4, 40000), ap(gw4, sinkPort), 64, big), u(ap(g6, 40000), ap(gw6, sinkPort), 64, big)}),
		encodeInput(0, [][]byte{u(ap(g4, 5353), netip.MustParseAddrPort("224.0.0.251:5353"), 255, hello),
			u(ap(g4, 40000), ap(lo4, sinkPort), 64, hello)}),
		encodeInput(0, manyPorts),
		encodeInput(fuzzProbe, [][]byte{u(ap(g4, fwdPort), ap(gw4, probePort), 64, hello), u(ap(g6, fwdPort), ap(gw6, probePort), 64, hello)}),
		encodeInput(0, [][]byte{arpRequest(tb), neighborSolicit(tb), routerSolicit(tb), dhcpDiscover(tb), dhcp6Solicit(tb)}),
		encodeInput(0, [][]byte{tcpFrame(tb, ap(g4, 40000), ap(gw4, sinkPort), &layers.TCP{SYN: true, Seq: 7, Window: 1024}, nil),
			tcpFrame(tb, ap(g6, 40000), ap(gw6, sinkPort), &layers.TCP{ACK: true, Seq: 7, Ack: 9, Window: 1024}, hello)}),
	}
}

// tcpFrame is a TCP segment from src to dst with the flags and numbers
// of t.
func tcpFrame(tb testing.TB, src, dst netip.AddrPort, t *layers.TCP, payload []byte) []byte {
	ip, e := netLayer(src.Addr(), dst.Addr(), 64, layers.IPProtocolTCP)
	t.SrcPort, t.DstPort = layers.TCPPort(src.Port()), layers.TCPPort(dst.Port())
	_ = t.SetNetworkLayerForChecksum(ip)
	return serialize(tb, e, ip.(gopacket.SerializableLayer), t, gopacket.Payload(payload))
}

func eth(typ layers.EthernetType, dst net.HardwareAddr) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: guestMAC, DstMAC: dst, EthernetType: typ}
}

func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// netLayer is the IP header of a datagram from src to dst.
func netLayer(src, dst netip.Addr, ttl uint8, proto layers.IPProtocol) (gopacket.NetworkLayer, *layers.Ethernet) {
	if src.Is4() {
		return &layers.IPv4{Version: 4, TTL: ttl, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
			eth(layers.EthernetTypeIPv4, net.HardwareAddr(ourMAC[:]))
	}
	return &layers.IPv6{Version: 6, HopLimit: ttl, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
		eth(layers.EthernetTypeIPv6, net.HardwareAddr(ourMAC[:]))
}

func udpFrame(tb testing.TB, src, dst netip.AddrPort, ttl uint8, payload []byte) []byte {
	ip, e := netLayer(src.Addr(), dst.Addr(), ttl, layers.IPProtocolUDP)
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = u.SetNetworkLayerForChecksum(ip)
	return serialize(tb, e, ip.(gopacket.SerializableLayer), u, gopacket.Payload(payload))
}

// udpBytes is a UDP header and payload, with its checksum.
func udpBytes(tb testing.TB, src, dst netip.AddrPort, payload []byte) []byte {
	ip, _ := netLayer(src.Addr(), dst.Addr(), 64, layers.IPProtocolUDP)
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = u.SetNetworkLayerForChecksum(ip)
	return serialize(tb, u, gopacket.Payload(payload))
}

// fragments cuts a UDP datagram into fragments of chunk bytes.
func fragments(tb testing.TB, src, dst netip.Addr, id uint32, data []byte, chunk int) [][]byte {
	var out [][]byte
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		more := end < len(data)
		if src.Is4() {
			ip, e := netLayer(src, dst, 64, layers.IPProtocolUDP)
			ip4 := ip.(*layers.IPv4)
			ip4.Id, ip4.FragOffset = uint16(id), uint16(off/8)
			if more {
				ip4.Flags = layers.IPv4MoreFragments
			}
			out = append(out, serialize(tb, e, ip4, gopacket.Payload(data[off:end])))
			continue
		}
		ip, e := netLayer(src, dst, 64, layers.IPProtocolIPv6Fragment)
		fh := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, FragmentOffset: uint16(off / 8), MoreFragments: more, Identification: id}
		out = append(out, serialize(tb, e, ip.(*layers.IPv6), fh, gopacket.Payload(data[off:end])))
	}
	return out
}

func arpRequest(tb testing.TB) []byte {
	return serialize(tb, eth(layers.EthernetTypeARP, layers.EthernetBroadcast),
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: guestMAC, SourceProtAddress: guest4.Addr().AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: gw4.AsSlice()})
}

func icmp6(tb testing.TB, src, dst netip.Addr, typ uint8, msg gopacket.SerializableLayer) []byte {
	ip, e := netLayer(src, dst, 255, layers.IPProtocolICMPv6)
	e.DstMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	_ = ic.SetNetworkLayerForChecksum(ip)
	return serialize(tb, e, ip.(gopacket.SerializableLayer), ic, msg)
}

func neighborSolicit(tb testing.TB) []byte {
	return icmp6(tb, guest6.Addr(), netip.MustParseAddr("ff02::1:ff00:1"), layers.ICMPv6TypeNeighborSolicitation,
		&layers.ICMPv6NeighborSolicitation{TargetAddress: gw6.AsSlice(),
			Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: guestMAC}}})
}

func routerSolicit(tb testing.TB) []byte {
	return icmp6(tb, netip.MustParseAddr("fe80::5054:ff:fe12:3456"), netip.MustParseAddr("ff02::2"), layers.ICMPv6TypeRouterSolicitation,
		&layers.ICMPv6RouterSolicitation{})
}

func dhcpDiscover(tb testing.TB) []byte {
	d := &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6, Xid: 0x1234,
		ClientIP: net.IPv4zero, YourClientIP: net.IPv4zero, NextServerIP: net.IPv4zero, RelayAgentIP: net.IPv4zero, ClientHWAddr: guestMAC,
		Options: []layers.DHCPOption{layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(layers.DHCPMsgTypeDiscover)})}}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4zero, DstIP: net.IPv4bcast}
	u := &layers.UDP{SrcPort: 68, DstPort: 67}
	_ = u.SetNetworkLayerForChecksum(ip)
	return serialize(tb, eth(layers.EthernetTypeIPv4, layers.EthernetBroadcast), ip, u, d)
}

func dhcp6Solicit(tb testing.TB) []byte {
	duid := (&layers.DHCPv6DUID{Type: layers.DHCPv6DUIDTypeLL, HardwareType: []byte{0, 1}, LinkLayerAddress: guestMAC}).Encode()
	d := &layers.DHCPv6{MsgType: layers.DHCPv6MsgTypeSolicit, TransactionID: []byte{1, 2, 3},
		Options: layers.DHCPv6Options{layers.NewDHCPv6Option(layers.DHCPv6OptClientID, duid),
			layers.NewDHCPv6Option(layers.DHCPv6OptIANA, make([]byte, 12))}}
	src, dst := netip.MustParseAddr("fe80::5054:ff:fe12:3456"), netip.MustParseAddr("ff02::1:2")
	ip := &layers.IPv6{Version: 6, HopLimit: 1, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	u := &layers.UDP{SrcPort: 546, DstPort: 547}
	_ = u.SetNetworkLayerForChecksum(ip)
	return serialize(tb, eth(layers.EthernetTypeIPv6, net.HardwareAddr{0x33, 0x33, 0, 1, 0, 2}), ip, u, d)
}
